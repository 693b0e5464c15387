"""Lennard-Jones reference potential, registered as ``"lj"``.

Why it exists: a cheap, exactly known potential to validate the engine, the
MPI halo, the ASE calculator and the benchmarks against ASE and LAMMPS.

With the defaults it reproduces ``ase.calculators.lj.LennardJones`` exactly:
cutoff ``rc = 3 * sigma``, pair energy shifted to zero at ``rc`` (pairs with
``r <= rc`` count), and with ``smooth=True`` the pair energy is multiplied by
ASE's (JAX-MD's) cutoff function between ``ro = 0.66 * rc`` and ``rc`` instead
of being shifted. ``shift=False`` gives LAMMPS ``lj/cut`` (no shift).

Per-element ``epsilon``/``sigma`` (dicts keyed by element symbol) are mixed
with Lorentz-Berthelot rules: ``eps_ij = sqrt(eps_i eps_j)``,
``sigma_ij = (sigma_i + sigma_j) / 2``.

Speed: on CPU in float64 (backend ``auto`` or ``numba``) the engine takes the
direct path (``direct_forces``): one fused numba pass over a half neighbor list
gives energy, per-atom energies, forces (Newton's third law) and the virial, as
LAMMPS ``lj/cut`` does (``lj_kernels.lj_direct``). Otherwise (float32, GPU, the
``torch``/``autograd`` backends, the conformance kit's graph path) the pair
energy and its analytic derivative are one fused pass (a custom autograd
Function; numba kernels on CPU) and forces and the virial come from
``evaluate_potential`` (autograd w.r.t. edge vectors), as for every model.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

from atomsim.kernels.dtypes import torch_dtype
from atomsim.kernels.graph import Graph, csr_row_ptr

from .base import PairList, Potential, PotentialOutput
from .registry import register_potential

Scalar = Union[float, int]
PerElement = Union[Scalar, Mapping[str, Scalar]]

def _element_numbers(values: Mapping[str, Scalar], key: str) -> Dict[int, float]:
    from ase.data import atomic_numbers

    out = {}
    for sym, v in values.items():
        if sym not in atomic_numbers:
            raise ValueError(f"lj: {key} names unknown element {sym!r}; use symbols like 'Ar'")
        out[atomic_numbers[sym]] = float(v)
    return out


def _pair_coefficients(r2: Tensor, eps, sig2, rc2: float, ro2: float, e0, smooth: bool,
                       shift: bool):
    """Half pair energy 0.5*phi(r) per edge and k with d(0.5*phi)/d(vec) = k * vec.

    Same operations as ASE's LennardJones so float64 results agree to round-off.
    """
    inside = r2 <= rc2
    c6 = (sig2 / r2) ** 3
    c6 = torch.where(inside, c6, torch.zeros_like(c6))
    c12 = c6 * c6
    e = 4.0 * eps * (c12 - c6)
    du = -24.0 * eps * (2.0 * c12 - c6) / r2  # (dphi/dr)/r = 2 dphi/d(r2)
    if smooth:
        denom = (rc2 - ro2) ** 3
        fc = torch.where(r2 < ro2, torch.ones_like(r2),
                         torch.where(inside & (r2 < rc2),
                                     (rc2 - r2) ** 2 * (rc2 + 2.0 * r2 - 3.0 * ro2) / denom,
                                     torch.zeros_like(r2)))
        dfc = torch.where((r2 >= ro2) & (r2 < rc2), 6.0 * (rc2 - r2) * (ro2 - r2) / denom,
                          torch.zeros_like(r2))
        du = fc * du + 2.0 * dfc * e
        e = e * fc
    elif shift:
        e = e - torch.where(inside, e0 * torch.ones_like(e), torch.zeros_like(e))
    return 0.5 * e, 0.5 * du


class _LJAtomEnergy(torch.autograd.Function):
    """Per-node energies from edge vectors with the analytic edge gradient in backward."""

    @staticmethod
    def forward(ctx, vec, receivers, n_nodes, eps, sig2, rc2, ro2, e0, smooth, shift):
        r2 = (vec * vec).sum(1)
        e_half, k = _pair_coefficients(r2, eps, sig2, rc2, ro2, e0, smooth, shift)
        ctx.save_for_backward(vec, receivers, k)
        out = torch.zeros(n_nodes, dtype=vec.dtype, device=vec.device)
        out.index_add_(0, receivers, e_half)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_nodes):
        vec, receivers, k = ctx.saved_tensors
        w = grad_nodes.index_select(0, receivers).mul_(k)
        return vec * w.unsqueeze(1), None, None, None, None, None, None, None, None, None


class _LJAtomEnergyNumba(torch.autograd.Function):
    """CPU version of :class:`_LJAtomEnergy`: one numba pass each way over receiver-sorted edges."""

    @staticmethod
    def forward(ctx, vec, row_ptr, senders, types, lj: "LennardJones"):
        from . import lj_kernels

        v = vec.detach().contiguous()
        n_nodes = row_ptr.shape[0] - 1
        energies = torch.empty(n_nodes, dtype=v.dtype)
        k = torch.empty(v.shape[0], dtype=v.dtype)
        lj_kernels.lj_forward(torch.get_num_threads(), v.numpy(), row_ptr.numpy(), senders.numpy(),
                              types.numpy(), lj.n_types, lj.eps_pair.numpy(), lj.sig2_pair.numpy(),
                              lj.e0_pair.numpy(), lj.cutoff**2, lj.ro**2, lj.smooth, lj.shift,
                              energies.numpy(), k.numpy())
        ctx.save_for_backward(v, row_ptr, k)
        return energies

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_nodes):
        from . import lj_kernels

        v, row_ptr, k = ctx.saved_tensors
        grad_vec = torch.empty_like(v)
        g = grad_nodes.detach().to(v.dtype).contiguous()
        lj_kernels.lj_backward(torch.get_num_threads(), v.numpy(), row_ptr.numpy(), k.numpy(),
                               g.numpy(), grad_vec.numpy())
        return grad_vec, None, None, None, None


class LennardJones(Potential):
    """12-6 Lennard-Jones; energies in eV, lengths in Å.

    Parameters
    ----------
    epsilon, sigma: scalars (any element) or per-element dicts ``{"Ar": 0.0104}``.
        With dicts, ``species`` is the elements given and others are rejected.
    cutoff: Å; default ``3 * max(sigma)`` (ASE's default). Alias ``rc``.
    smooth: multiply by ASE's smooth cutoff function between ``ro`` and ``cutoff``.
    ro: onset of the smooth cutoff, default ``0.66 * cutoff`` (ASE's).
    shift: shift each pair energy to zero at the cutoff; default ``not smooth``
        (ASE's behaviour). ``shift=False, smooth=False`` is LAMMPS ``lj/cut``.
    ase_compatible: insist on a setting ``ase.calculators.lj.LennardJones`` can
        express (scalar epsilon/sigma, ``shift == not smooth``); raise otherwise.
    dtype: float64 (default) or float32.
    backend: ``"auto"`` (numba kernels on CPU, fused torch elsewhere),
        ``"numba"``, ``"torch"`` (fused energy + analytic derivative in torch ops)
        or ``"autograd"`` (plain torch autograd: slower, but supports higher
        derivatives). All but ``"autograd"`` give first derivatives only.
    """

    receptive_field = 1

    def __init__(self, epsilon: PerElement = 1.0, sigma: PerElement = 1.0,
                 cutoff: Optional[float] = None, smooth: bool = False, ro: Optional[float] = None,
                 shift: Optional[bool] = None, ase_compatible: bool = False,
                 dtype="float64", backend: str = "auto", rc: Optional[float] = None):
        super().__init__()
        if rc is not None:
            if cutoff is not None and float(cutoff) != float(rc):
                raise ValueError("lj: give either 'cutoff' or its ASE alias 'rc', not both")
            cutoff = rc
        per_element = isinstance(epsilon, Mapping) or isinstance(sigma, Mapping)
        if ase_compatible:
            if per_element:
                raise ValueError("lj: ase_compatible=True needs scalar epsilon and sigma "
                                 "(ASE's LennardJones has no per-element parameters)")
            if shift is not None and bool(shift) == bool(smooth):
                raise ValueError("lj: ase_compatible=True shifts exactly when smooth=False; "
                                 "drop 'shift'")
        if shift is None:
            shift = not smooth
        if smooth and shift:
            raise ValueError("lj: smooth=True already takes the energy to zero at the cutoff; "
                             "set shift=False (or leave it out)")
        self.smooth = bool(smooth)
        self.shift = bool(shift)
        if backend not in ("auto", "numba", "torch", "autograd"):
            raise ValueError(f"lj: unknown backend {backend!r}; use auto, numba, torch or autograd")
        self.backend = backend
        dt = torch_dtype(dtype, "lj")

        if per_element:
            eps_map = _element_numbers(epsilon, "epsilon") if isinstance(epsilon, Mapping) else None
            sig_map = _element_numbers(sigma, "sigma") if isinstance(sigma, Mapping) else None
            if eps_map is not None and sig_map is not None and set(eps_map) != set(sig_map):
                from ase.data import chemical_symbols
                diff = sorted(set(eps_map) ^ set(sig_map))
                names = ", ".join(chemical_symbols[z] for z in diff)
                raise ValueError("lj: epsilon and sigma must name the same elements; "
                                 f"only one of them gives {names}")
            zs = sorted(eps_map or sig_map)
            eps_el = np.array([eps_map[z] if eps_map else float(epsilon) for z in zs])
            sig_el = np.array([sig_map[z] if sig_map else float(sigma) for z in zs])
            self.species = zs
        else:
            zs = []
            eps_el = np.array([float(epsilon)])
            sig_el = np.array([float(sigma)])
            self.species = None
        if np.any(eps_el < 0) or np.any(sig_el <= 0):
            raise ValueError("lj: epsilon must be >= 0 and sigma > 0 (eV, Å)")

        # Lorentz-Berthelot pair tables (n_types x n_types), flattened.
        eps_pair = np.sqrt(np.outer(eps_el, eps_el))
        sig_pair = 0.5 * (sig_el[:, None] + sig_el[None, :])
        self.cutoff = float(cutoff) if cutoff is not None else 3.0 * float(sig_el.max())
        if not self.cutoff > 0:
            raise ValueError(f"lj: cutoff must be > 0 Å, got {self.cutoff}")
        self.ro = float(ro) if ro is not None else 0.66 * self.cutoff
        if self.smooth and not 0 <= self.ro < self.cutoff:
            raise ValueError(f"lj: ro ({self.ro} Å) must lie in [0, cutoff={self.cutoff} Å)")
        rc = self.cutoff
        e0_pair = 4.0 * eps_pair * ((sig_pair / rc) ** 12 - (sig_pair / rc) ** 6)

        self.n_types = len(eps_el)
        self._scalar = not per_element
        if self._scalar:  # python floats: the hot loop needs no gathers
            self._eps, self._sig2 = float(eps_el[0]), float(sig_el[0]) ** 2
            self._e0 = float(e0_pair[0, 0])
        type_of = np.full(119, -1, dtype=np.int64)
        for t, z in enumerate(zs):
            type_of[z] = t
        self.register_buffer("type_of_number", torch.from_numpy(type_of), persistent=False)
        self.register_buffer("eps_pair", torch.as_tensor(eps_pair.ravel(), dtype=dt))
        self.register_buffer("sig2_pair", torch.as_tensor((sig_pair**2).ravel(), dtype=dt))
        self.register_buffer("e0_pair", torch.as_tensor(e0_pair.ravel(), dtype=dt))

    def extra_repr(self) -> str:
        return (f"cutoff={self.cutoff}, smooth={self.smooth}, shift={self.shift}, "
                f"n_types={self.n_types}, dtype={self.dtype}")

    def _types(self, numbers: Tensor) -> Tensor:
        """Type index per node; unknown elements raise (naming them) instead of reading garbage."""
        types = self.type_of_number.index_select(0, numbers.to(torch.int64))
        if bool((types < 0).any()):
            self.check_species(numbers.cpu().numpy())
        return types

    def _edge_params(self, numbers: Tensor, graph: Graph):
        if self._scalar:
            return self._eps, self._sig2, self._e0
        types = self._types(numbers)
        pair = types.index_select(0, graph.receivers) * self.n_types + types.index_select(0, graph.senders)
        return (self.eps_pair.index_select(0, pair), self.sig2_pair.index_select(0, pair),
                self.e0_pair.index_select(0, pair))

    def _numba_energy(self, numbers: Tensor, graph: Graph) -> Tensor:
        row_ptr = graph.row_ptr
        if row_ptr is None:
            row_ptr = csr_row_ptr(graph.receivers, graph.n_nodes)
        if self._scalar:
            types = torch.zeros(graph.n_nodes, dtype=torch.int64)
        else:
            types = self._types(numbers).cpu()
        return _LJAtomEnergyNumba.apply(graph.edge_vectors, row_ptr.cpu(), graph.senders.cpu(), types,
                                        self)

    def direct_list(self) -> Optional[str]:
        """``"half"`` on CPU in float64 with the numba kernels (``auto``/``numba``); else None (autograd)."""
        if self.backend in ("auto", "numba") and self.dtype == torch.float64 and self.device.type == "cpu":
            return "half"
        return None

    def direct_forces(self, numbers: Tensor, positions: Tensor, cell: Tensor, pairs: PairList,
                      n_local: int, *, virial: bool = True, atom_virial: bool = False) -> PotentialOutput:
        """One fused numba pass (``lj_kernels.lj_direct``); see ``Potential.direct_forces``."""
        from . import lj_kernels

        n = int(positions.shape[0])
        if self._scalar:
            types = np.zeros(n, dtype=np.int64)
        else:
            types = self._types(numbers).cpu().numpy()
        pos = positions.detach().to(torch.float64).cpu().contiguous().numpy()
        cel = np.ascontiguousarray(cell.detach().to(torch.float64).cpu().numpy())
        energies, forces, vir, atoms = lj_kernels.lj_direct(
            torch.get_num_threads(), pos, cel, pairs.row_ptr.numpy(), pairs.senders.numpy(),
            pairs.cell_shifts.numpy(), types, self.n_types, self.eps_pair.numpy(), self.sig2_pair.numpy(),
            self.e0_pair.numpy(), self.cutoff**2, self.ro**2, self.smooth, self.shift, bool(pairs.half),
            int(n_local), bool(virial), bool(atom_virial))
        own = energies[:n_local]
        return PotentialOutput(
            energy=float(own.sum()), energies=own, forces=torch.from_numpy(forces),
            virial=torch.from_numpy(vir) if virial else None,
            atom_virials=None if atoms is None else torch.from_numpy(atoms))

    def per_atom_energy(self, numbers: Tensor, graph: Graph) -> Tensor:
        """Half of each pair energy to each atom of the pair (full edge list: 0.5 phi per edge).

        Edges beyond the cutoff (the engine's list reaches cutoff + skin) contribute zero.
        """
        vec = graph.edge_vectors
        backend = self.backend
        if backend == "auto":
            on_cpu = vec.device.type == "cpu" and vec.dtype in (torch.float32, torch.float64)
            backend = "numba" if on_cpu else "torch"
        if backend == "numba":
            return self._numba_energy(numbers, graph)
        eps, sig2, e0 = self._edge_params(numbers, graph)
        rc2, ro2 = self.cutoff**2, self.ro**2
        if backend == "torch":
            return _LJAtomEnergy.apply(vec, graph.receivers, graph.n_nodes, eps, sig2, rc2, ro2,
                                       e0, self.smooth, self.shift)
        r2 = (vec * vec).sum(1)
        e_half, _ = _pair_coefficients(r2, eps, sig2, rc2, ro2, e0, self.smooth, self.shift)
        out = torch.zeros(graph.n_nodes, dtype=vec.dtype, device=vec.device)
        return out.index_add(0, graph.receivers, e_half)


def _factory(**params) -> LennardJones:
    return LennardJones(**params)


register_potential("lj", _factory)
