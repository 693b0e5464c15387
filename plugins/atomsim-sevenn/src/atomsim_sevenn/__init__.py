"""atomsim-sevenn: SevenNet-0 (and other single-modal sevenn checkpoints) as an atomsim potential.

Installed, it registers ``sevennet-0`` (alias ``7net-0``) under the entry-point
group ``atomsim.potentials``, so ``atomsim.load_potential("sevennet-0")``,
``AtomsimCalculator(model="sevennet-0")`` and ``potential: {model: sevennet-0}``
in an input file all find it.
"""
from __future__ import annotations

from .checkpoint import NUMPY_ALLOW_LIST, load_sevenn_checkpoint, safe_torch_load
from .malloc import tune_glibc_malloc
from .potential import SevenNetPotential

__all__ = ["load_sevennet", "SevenNetPotential", "load_sevenn_checkpoint", "safe_torch_load", "NUMPY_ALLOW_LIST",
           "tune_glibc_malloc"]
__version__ = "0.1.0"


def load_sevennet(checkpoint: str = "7net-0", malloc_tuning: bool = True, **params) -> SevenNetPotential:
    """The entry-point factory: a sevenn checkpoint name or path -> :class:`SevenNetPotential`.

    ``checkpoint`` is what ``sevenn.util.load_checkpoint`` accepts (``7net-0`` is
    SevenNet-0, 11Jul2024, shipped inside the sevenn wheel). Loading uses
    ``torch.load(weights_only=True)`` with :data:`NUMPY_ALLOW_LIST`.
    ``malloc_tuning`` applies :func:`atomsim_sevenn.malloc.tune_glibc_malloc`
    (process-wide; also off with ``ATOMSIM_SEVENN_MALLOC=0``).
    """
    if params:
        raise ValueError(f"potential.params: sevennet-0 takes only 'checkpoint' and 'malloc_tuning', "
                         f"got {sorted(params)}")
    if malloc_tuning:
        tune_glibc_malloc()
    cp = load_sevenn_checkpoint(checkpoint)
    config = cp.config
    model = cp.build_model()  # e3nn backend; accelerators (cuEquivariance, FlashTP) stay off
    return SevenNetPotential(model, type_map=config["_type_map"], cutoff=float(config["cutoff"]))
