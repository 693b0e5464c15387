#!/usr/bin/env bash
# How the neighbor benchmarks were run on a lent GPU machine (no network there):
# wheels for the comparison codes travel in .whl/ (see /work/.library/device/README.md),
# atomsim is put on the path through a shim instead of an install.
# Usage (repo root): OUT=dir CPU_ARGS="..." bash benchmarks/neighbors/run_on_gpu_machine.sh
set -u
OUT=${OUT:-benchmarks/results}
CPU_ARGS=${CPU_ARGS:---threads 1 2 8 --repeats 3 --codes atomsim-numba vesin matscipy}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
  .whl/array_api_compat-1.16.0-*.whl .whl/vesin-0.6.2-*.whl .whl/matscipy-1.3.1-*.whl .whl/ase-3.29.0-*.whl || exit 1
mkdir -p /tmp/shim/atomsim && cp atomsim/__init__.py /tmp/shim/atomsim/ && ln -sfn "$PWD/kernels" /tmp/shim/atomsim/kernels
export PYTHONPATH=/tmp/shim:/tmp/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import numba, numpy, cupy; print('numba', numba.__version__, 'numpy', numpy.__version__, 'cupy', cupy.__version__)"
timeout 170 python3 benchmarks/neighbors/bench_neighbors_gpu.py 2>&1 | tee "$OUT/gpu_log.txt"
# from tests/: `python3 -m pytest` in the repo root would import ./atomsim instead of the shim
(cd tests && timeout 90 python3 -m pytest -q -p no:cacheprovider --rootdir=. test_neighbors_gpu.py 2>&1 | tail -15) | tee "$OUT/gpu_pytest.txt"
# shellcheck disable=SC2086
timeout 170 python3 benchmarks/neighbors/bench_neighbors.py --out "$OUT" --tag gpu-host-cpu $CPU_ARGS 2>&1 | tee "$OUT/cpu_log.txt"
