"""Shims that let TorchSim 0.3.0 run the benchmark's two models correctly.

SevenNet: torch-sim-atomistic 0.3.0's ``torch_sim/models/sevennet.py`` imports ``torch_script_type``
from ``sevenn.calculator``; sevenn 0.13 no longer defines it, so the import fails and TorchSim
replaces ``SevenNetModel`` with a stub that raises. The name was ``torch.jit.ScriptModule`` (the
wrapper uses it in an ``isinstance`` check for deployed, TorchScript models); defining it before
the import is all the shim does. The model itself is SevenNet-0 from the sevenn wheel, unpickled
with ``weights_only=True`` through the plugin's own loader
(plugins/atomsim-sevenn/src/atomsim_sevenn/checkpoint.py, imported by file path: this venv has no
atomsim), so both engines run the very same weights.

Lennard-Jones: 0.3.0's ``LennardJonesModel`` (neighbor-list path) sums ``index_add_`` of the pair
force onto both atoms of every pair of vesin's FULL list, which holds each pair twice: forces
(and the stress) come out exactly 2x the true ones while the energy (halved) is right. Measured
here: force ratio 2.000000 against ASE's LennardJones and atomsim. :func:`torchsim_lj_model`
halves them after the call (one N x 3 multiply, negligible next to the step), so both engines
integrate the same trajectory.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

CHECKPOINT_PY = (Path(__file__).resolve().parents[2] / "plugins" / "atomsim-sevenn" / "src" / "atomsim_sevenn"
                 / "checkpoint.py")


def patch_sevenn() -> None:
    """Give ``sevenn.calculator`` the name TorchSim 0.3.0 imports from it."""
    import sevenn.calculator

    if not hasattr(sevenn.calculator, "torch_script_type"):
        sevenn.calculator.torch_script_type = torch.jit.ScriptModule


def load_sevennet0():
    """SevenNet-0 (``7net-0``) as an ``AtomGraphSequential``, loaded without executing pickled code."""
    spec = importlib.util.spec_from_file_location("_atomsim_sevenn_checkpoint", CHECKPOINT_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.load_sevenn_checkpoint("7net-0").build_model()


def torchsim_lj_model(sigma: float, epsilon: float, cutoff: float, dtype=torch.float64):
    """TorchSim's ``LennardJonesModel`` with its forces (and stress) halved back to the true ones."""
    from torch_sim.models.lennard_jones import LennardJonesModel

    class HalvedForcesLJ(LennardJonesModel):
        def forward(self, state):
            out = super().forward(state)
            for name in ("forces", "stress", "stresses"):
                if name in out:
                    out[name] = 0.5 * out[name]
            return out

    return HalvedForcesLJ(sigma=sigma, epsilon=epsilon, cutoff=cutoff, dtype=dtype,
                          device=torch.device("cpu"), compute_stress=False)


def sevennet0_torchsim_model(device: str = "cpu"):
    """TorchSim's ``SevenNetModel`` around SevenNet-0, float32 (the only dtype it supports)."""
    patch_sevenn()
    from torch_sim.models.sevennet import SevenNetModel

    return SevenNetModel(model=load_sevennet0(), device=torch.device(device), dtype=torch.float32)


__all__ = ["patch_sevenn", "load_sevennet0", "sevennet0_torchsim_model", "torchsim_lj_model"]
