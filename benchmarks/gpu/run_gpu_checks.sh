#!/usr/bin/env bash
# The project's one GPU check, made for a single device-machine call (~2-6 min by budgets).
# Used on 2026-11-27 (H100) as:
#   OUT=$OUT BENCH_BUDGET=35 SWEEP_BUDGET=0 IEEE=0 NEIGHBORS=0 bash benchmarks/gpu/run_gpu_checks.sh
# (107 s; results in benchmarks/results/kernels_*_h100.*). Steps:
#   1. the machine: nvidia-smi, python / torch / triton / cupy versions;
#   2. tests/test_triton_kernels.py on the real GPU (no interpreter; adds bf16), and alongside
#      it the bf16/fp16 force error against float32 on an EGNN;
#   3. the fused message-passing kernel benchmark (issue sizes, time-boxed), a launch-parameter
#      sweep at the headline point (SWEEP_BUDGET=0 skips it), the headline point with IEEE fp32;
#   4. benchmarks/neighbors/bench_neighbors_gpu.py, when it exists;
#   5. benchmarks/gpu/md_end_to_end.py (E2E=1, the default; budget E2E_BUDGET s, default 420): GPU tests
#      (neighbors_torch, graph_capture, neighbors_gpu, triton) then end-to-end md_step throughput, step
#      breakdown and peak memory from 1e4 to 1e7 atoms, fp32/bf16, eager vs CUDA graph (docs/gpu.md).
# ONLY_E2E=1 skips steps 2-4 (md_end_to_end runs those tests itself): the one call for issue 15's run:
#   OUT=$OUT ONLY_E2E=1 E2E_BUDGET=420 DRIFT_TIMEOUT=60 bash benchmarks/gpu/run_gpu_checks.sh
# Everything lands in $OUT (at most 8 files come back). Run from the repo root:
#   OUT=/tmp/gpu_out BENCH_BUDGET=150 SWEEP_BUDGET=60 bash benchmarks/gpu/run_gpu_checks.sh
# The bare GPU image lacks atomsim's pure-Python deps (ase): carry them as wheels in
# .whl/ (see /work/.library/device/README.md); atomsim itself is put on PYTHONPATH.
set -u
OUT=${OUT:-/tmp/gpu_out}
BENCH_BUDGET=${BENCH_BUDGET:-150}
SWEEP_BUDGET=${SWEEP_BUDGET:-60}
IEEE=${IEEE:-1}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_checks.log") 2>&1
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
T0=$(date +%s)
step() { echo; echo "=== +$(( $(date +%s) - T0 ))s $*"; }

step "machine"
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
$PY - <<'EOF'
import platform, torch, triton
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda,
      "triton", triton.__version__)
p = torch.cuda.get_device_properties(0)
print(p.name, "SMs", p.multi_processor_count, "mem GiB", round(p.total_memory / 2**30, 1))
try:
    import cupy
    print("cupy", cupy.__version__, "devices", cupy.cuda.runtime.getDeviceCount())
except Exception as exc:
    print("cupy unavailable:", exc)
EOF

step "atomsim on PYTHONPATH"
SITE=/tmp/atomsim_site
mkdir -p "$SITE/atomsim"
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$SITE" .whl/*.whl || echo "wheel install failed"
fi
for f in atomsim/*.py; do ln -sf "$PWD/$f" "$SITE/atomsim/"; done
for pkg in engine kernels potentials integrators; do ln -sfn "$PWD/$pkg" "$SITE/atomsim/$pkg"; done
ln -sfn "$PWD/atomsim/bench" "$SITE/atomsim/bench"  # machine_info for the benchmarks' JSON
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
(cd /tmp && $PY -c "import atomsim.kernels.triton_message_passing as m; print('ok', m.__file__)")

if [ "${ONLY_E2E:-0}" != 1 ]; then
step "triton kernel tests on the GPU (+ mixed-precision force error alongside: both untimed)"
timeout 120 $PY benchmarks/gpu/mixed_precision_forces.py --out "$OUT/mixed_precision_forces.json" \
  > /tmp/mixed_precision.log 2>&1 &
MIXED_PID=$!
ATOMSIM_TRITON_REPORT="$OUT/gpu_tests.json" timeout 200 $PY -m pytest -q -p no:cacheprovider \
  tests/test_triton_kernels.py 2>&1 | tail -25
head -c 3000 "$OUT/gpu_tests.json" 2>/dev/null
step "GPU neighbor lists, incl. the engine's NeighborList on CUDA tensors (tests/test_neighbors_gpu.py)"
timeout 120 $PY -m pytest -q -p no:cacheprovider tests/test_neighbors_gpu.py 2>&1 | tail -8
wait $MIXED_PID
step "mixed precision force error"
tail -45 /tmp/mixed_precision.log

step "kernel benchmark (budget ${BENCH_BUDGET}s)"
timeout $((BENCH_BUDGET + 60)) $PY benchmarks/kernels/bench_message_passing.py --profile \
  --budget-s "$BENCH_BUDGET" --repeats 5 --out "$OUT/kernels_message_passing_h100.json"

if [ "${NEIGHBORS:-1}" = 1 ] && [ -f benchmarks/neighbors/bench_neighbors_gpu.py ]; then
  step "neighbor-list GPU benchmark"
  # it writes its JSON to $OUT itself (benchmarks/results when OUT is unset)
  OUT="$OUT" timeout "${NB_TIMEOUT:-100}" $PY benchmarks/neighbors/bench_neighbors_gpu.py \
    ${NB_ARGS:-} 2>&1 | tail -40
else
  step "neighbor-list GPU benchmark skipped (NEIGHBORS=0 or no benchmarks/neighbors/bench_neighbors_gpu.py)"
fi

if [ "$SWEEP_BUDGET" -gt 0 ]; then
  step "launch-parameter sweep (budget ${SWEEP_BUDGET}s)"
  timeout $((SWEEP_BUDGET + 40)) $PY benchmarks/kernels/bench_message_passing.py --sweep \
    --budget-s "$SWEEP_BUDGET" --repeats 3 --out "$OUT/kernels_sweep_h100.json"
fi

if [ "$IEEE" = 1 ]; then
  step "headline point with IEEE fp32 matmuls"
  timeout 60 $PY benchmarks/kernels/bench_message_passing.py --ieee --repeats 3 \
    --configs 5e6:128:fp32:md --out "$OUT/kernels_message_passing_h100_ieee.json"
fi

fi  # ONLY_E2E

if [ "${E2E:-1}" = 1 ]; then
  step "end-to-end MD (benchmarks/gpu/md_end_to_end.py, budget ${E2E_BUDGET:-420}s)"
  timeout $(( ${E2E_BUDGET:-420} + 60 )) $PY benchmarks/gpu/md_end_to_end.py --out "$OUT" \
    --budget-s "${E2E_BUDGET:-420}" ${E2E_ARGS:-} 2>&1 | tail -60
  step "NVE energy drift per dtype on the GPU (benchmarks/precision/nve_drift.py, short)"
  timeout "${DRIFT_TIMEOUT:-90}" $PY benchmarks/precision/nve_drift.py --device cuda --steps 300 --budget-s 8 \
    --dtypes float64,float32,bfloat16,float16,bfloat16+f32edges \
    --out "$OUT/precision_nve_drift_gpu.json" 2>&1 | tail -8
fi

step "done"
ls -la "$OUT"
