#!/usr/bin/env bash
# What the whole test suite needs beyond `pip install -e ".[all]"`: the SevenNet-0
# plugin (a separate package, registered through the atomsim.potentials entry point
# exactly as a third party's would be) and a LAMMPS built with ML-IAP + PYTHON + MPI
# (~11 min on 2 cores the first time, then reused from ~/.cache/atomsim).
# Tests whose extra is missing skip with the reason; this script makes none skip.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${ATOMSIM_VENV:-$PWD/.venv}"
"$VENV/bin/python" -m pip install -q -e plugins/atomsim-sevenn
ATOMSIM_VENV="$VENV" bash scripts/build_lammps.sh \
  || echo "atomsim: LAMMPS build failed; tests/test_lammps_mliap.py will skip its LAMMPS runs" >&2
