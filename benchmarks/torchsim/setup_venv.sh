#!/usr/bin/env bash
# The TorchSim venv for benchmarks/torchsim/bench.py, made reproducibly.
#
#   benchmarks/torchsim/setup_venv.sh                   # -> benchmarks/torchsim/.venv
#   TORCHSIM_VENV=/some/dir benchmarks/torchsim/setup_venv.sh
#
# Why a separate venv: TorchSim (PyPI: torch-sim-atomistic) is a benchmark reference, not an atomsim
# dependency, and it pulls packages (tables, blosc2, vesin-torch, ...) the project does not need.
# Why it sees the project venv's packages: the comparison should differ by engine only, so TorchSim
# runs on the very same torch, numpy, ase, sevenn and e3nn builds. A .pth file appends the project
# venv's site-packages to this venv's path (this venv's own packages come first), and pip installs
# under constraints pinning every package the project venv has: it adds what TorchSim needs and can
# change nothing the project venv holds (checked below: the project's torch is unchanged).
# Needs the project venv (.venv, `pip install -e .[all,bench]` and the SevenNet plugin for the
# SevenNet-0 half) and network or a local index for torch-sim-atomistic and its few extra wheels.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
MAIN_VENV="${MAIN_VENV:-$ROOT/.venv}"
VENV="${TORCHSIM_VENV:-$ROOT/benchmarks/torchsim/.venv}"
TORCHSIM_SPEC="${TORCHSIM_SPEC:-torch-sim-atomistic==0.3.0}"
MAIN_PY="$MAIN_VENV/bin/python"

[ -x "$MAIN_PY" ] || { echo "setup_venv.sh: no project venv at $MAIN_VENV (set MAIN_VENV)" >&2; exit 1; }
torch_before="$("$MAIN_PY" -c 'import torch; print(torch.__version__)')"
base_py="$("$MAIN_PY" -c 'import sys; print(sys._base_executable)')"  # the interpreter the project venv uses

echo "creating $VENV with $base_py"
"$base_py" -m venv "$VENV"
main_site="$("$MAIN_PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
ts_site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
echo "$main_site" > "$ts_site/atomsim_project_venv.pth"

# every package of the project venv pinned (editable and local-path installs left out: not on an index)
"$MAIN_VENV/bin/pip" freeze --exclude-editable | grep -v ' @ ' > "$VENV/project-constraints.txt"
"$VENV/bin/pip" install --disable-pip-version-check "$TORCHSIM_SPEC" -c "$VENV/project-constraints.txt"

torch_after="$("$MAIN_PY" -c 'import torch; print(torch.__version__)')"
if [ "$torch_before" != "$torch_after" ]; then
    echo "setup_venv.sh: the project venv's torch changed ($torch_before -> $torch_after)" >&2
    exit 1
fi
"$VENV/bin/python" - <<'EOF'
import warnings

warnings.filterwarnings("ignore")
import importlib.metadata as m

import torch
import torch_sim  # noqa: F401

print("TorchSim venv ready:", {d: m.version(d) for d in ("torch-sim-atomistic", "torch", "vesin-torch")},
      "torch from", torch.__file__)
EOF
