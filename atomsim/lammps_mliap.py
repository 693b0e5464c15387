"""Any atomsim Potential as a LAMMPS ``pair_style mliap unified`` model.

Why: LAMMPS users keep their input files and run atomsim's GNNs through the
pair style they know. LAMMPS hands the model a full pair list (``pair_i`` the
center, ``pair_j`` the neighbor, ``rij = x_j - x_i``) over owned + ghost atoms;
that is exactly atomsim's graph convention (receiver i, sender j, edge vector
x_j - x_i), so no positions, cell or shifts are needed. ``evaluate_potential``
returns dE/dr_ij per pair, which ``data.update_pair_forces`` turns into forces
(f_i += dE/dr_ij, f_j -= dE/dr_ij, ghost forces reverse-communicated by LAMMPS)
and into LAMMPS's own virial tally.

Two ways to get multi-layer message passing right across LAMMPS's ghosts:

* per-layer exchange (``data.forward_exchange``/``reverse_exchange``, only in
  newer LAMMPS builds with KOKKOS): node features of ghosts are refreshed from
  their owners after every layer and their gradients sent back. Used
  automatically when ``data`` offers both. NOT TESTED here: the Debian
  20250204 build has neither method.
* deep halo (every other build): LAMMPS must list neighbors of ghost atoms too
  (``pair_style mliap unified FILE 1``) and keep ghosts out to
  ``receptive_field * cutoff + skin`` (``comm_modify cutoff``). Energies count
  only the first ``nlocal`` atoms; ghost-centered edges still carry messages.
  The graph is pruned to the edges within ``receptive_field - 1`` hops of a
  local atom (exact; LAMMPS's halo is much larger than what the model reads).
  Either setting missing gives silently wrong forces: see
  :func:`lammps_input_problems` (behind ``atomsim lammps check``).
"""
from __future__ import annotations

import math
import pickle
import re
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from atomsim.kernels.graph import Graph, csr_row_ptr
from atomsim.potentials.base import Potential, evaluate_potential

try:  # the LAMMPS python module is optional: the class also works (and pickles) without it
    from lammps.mliap.mliap_unified_abc import MLIAPUnified as _Base
except Exception:  # noqa: BLE001  (ImportError, or OSError from lammps.mliap's libpython probe)
    _Base = object


class _LammpsLayerExchange(torch.autograd.Function):
    """Ghost rows <- owners after a layer (forward); ghost gradients -> owners (backward)."""

    @staticmethod
    def forward(ctx, feats: Tensor, data) -> Tensor:  # type: ignore[override]
        ctx.data = data
        out = torch.empty_like(feats)
        data.forward_exchange(feats, out, feats.shape[-1])
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        out = torch.empty_like(grad)
        ctx.data.reverse_exchange(grad.contiguous(), out, grad.shape[-1])
        return out, None


def has_layer_exchange(data) -> bool:
    """True when this LAMMPS build offers per-layer ghost exchange (KOKKOS ML-IAP, newer than 20250204)."""
    return hasattr(data, "forward_exchange") and hasattr(data, "reverse_exchange")


class AtomsimMLIAP(_Base):
    """ML-IAP unified model wrapping an atomsim :class:`Potential`.

    ``element_types`` are the element symbols in the order of ``pair_coeff * *``
    (LAMMPS type -> element through that line). ``num_threads`` sets torch's
    intra-op threads inside the callback (1 by default: measured 3.5x faster
    than torch's default there, because LAMMPS ranks already own the cores);
    None leaves torch alone. ``exchange``: "auto" (per-layer when the build has
    it, else deep halo), "per-layer" or "deep-halo".
    """

    def __init__(self, potential: Potential, element_types: Sequence[str],
                 num_threads: Optional[int] = 1, exchange: str = "auto"):
        from ase.data import atomic_numbers

        if exchange not in ("auto", "per-layer", "deep-halo"):
            raise ValueError(f"exchange: 'auto', 'per-layer' or 'deep-halo', got {exchange!r}")
        unknown = [s for s in element_types if s not in atomic_numbers]
        if unknown or not element_types:
            raise ValueError(f"element_types: element symbols expected (e.g. ['Cu']), got {list(element_types)}")
        if potential.species is not None:
            missing = [s for s in element_types if atomic_numbers[s] not in set(int(z) for z in potential.species)]
            if missing:
                raise ValueError(f"the potential does not cover element(s) {', '.join(missing)}")
        # LAMMPS: pair cutoff = 2 * rcutfac for every element pair (radelem = 1)
        init_args = dict(interface=None, element_types=list(element_types), ndescriptors=1, nparams=1,
                         rcutfac=0.5 * float(potential.cutoff))
        if _Base is object:
            for k, v in init_args.items():
                setattr(self, k, v)
        else:
            super().__init__(**init_args)
        self.potential = potential.eval()
        self.numbers_of_type = torch.tensor([atomic_numbers[s] for s in element_types], dtype=torch.int64)
        self.num_threads = num_threads
        self.exchange = exchange
        self.last_energies: Optional[np.ndarray] = None

    # -- what the export prints ---------------------------------------------------------
    @property
    def cutoff(self) -> float:
        return float(self.potential.cutoff)

    @property
    def receptive_field(self) -> int:
        return int(getattr(self.potential, "receptive_field", 1))

    def needs_ghost_neighbors(self) -> bool:
        """Deep halo: a message-passing model needs the neighbors of ghost atoms listed."""
        return self.receptive_field > 1

    def comm_cutoff(self, skin: float) -> float:
        """The smallest ``comm_modify cutoff`` (Å) that keeps the deep-halo forces exact."""
        return self.receptive_field * self.cutoff + float(skin)

    # -- pickling: LAMMPS attaches a (non-picklable) interface object after loading ------
    def __getstate__(self):
        state = dict(self.__dict__)
        state["interface"] = None
        state["last_energies"] = None
        return state

    # -- the ML-IAP unified callbacks ------------------------------------------------------
    def compute_descriptors(self, data) -> None:
        """Unused: the model maps pairs straight to energies."""

    def compute_gradients(self, data) -> None:
        """Unused: forces come from compute_forces."""

    def compute_forces(self, data) -> None:
        """Energies of local atoms, dE/dr_ij per pair -> LAMMPS (forces and virial tally)."""
        if self.num_threads is not None and torch.get_num_threads() != self.num_threads:
            from atomsim.kernels.threads import configure_threads

            configure_threads(int(self.num_threads))  # torch, numba and BLAS alike
        nlocal, ntotal = int(data.nlocal), int(data.ntotal)
        npairs = int(data.npairs)
        per_layer = self.exchange == "per-layer" or (self.exchange == "auto" and has_layer_exchange(data))
        if npairs:
            pi = np.asarray(data.pair_i, dtype=np.int64)
            pj = np.asarray(data.pair_j, dtype=np.int64)
            rij = np.asarray(data.rij, dtype=np.float64)
        else:
            pi = pj = np.zeros(0, dtype=np.int64)
            rij = np.zeros((0, 3))
        elems = np.asarray(data.elems, dtype=np.int64)[:ntotal]
        if per_layer:
            # only local receivers: ghost features come from their owners, layer by layer
            edge_keep = pi < nlocal
            nodes = None
        else:
            edge_keep, nodes = _receptive_subgraph(pi, pj, nlocal, ntotal, self.receptive_field)
        index = None if edge_keep is None else np.flatnonzero(edge_keep)
        if index is not None:
            pi, pj, rij = pi[index], pj[index], rij[index]
        n_nodes = ntotal
        if nodes is not None:  # renumber the nodes that matter; locals stay 0..nlocal-1
            remap = np.full(ntotal, -1, dtype=np.int64)
            remap[nodes] = np.arange(len(nodes))
            pi, pj, elems, n_nodes = remap[pi], remap[pj], elems[nodes], len(nodes)
        order = None
        if len(pi) > 1 and bool((pi[1:] < pi[:-1]).any()):
            order = np.argsort(pi, kind="stable")  # receiver-sorted, as the Graph contract says
            pi, pj, rij = pi[order], pj[order], rij[order]
        pot = self.potential
        dev = pot.device
        receivers = torch.from_numpy(np.ascontiguousarray(pi)).to(dev)
        halo = (lambda feats: _LammpsLayerExchange.apply(feats, data)) if per_layer else None
        graph = Graph(receivers=receivers, senders=torch.from_numpy(np.ascontiguousarray(pj)).to(dev),
                      edge_vectors=torch.from_numpy(np.ascontiguousarray(rij)).to(device=dev, dtype=pot.dtype),
                      n_nodes=n_nodes, n_local=nlocal, row_ptr=csr_row_ptr(receivers, n_nodes), halo_update=halo)
        numbers = self.numbers_of_type[torch.from_numpy(elems)].to(dev)
        out = evaluate_potential(pot, numbers, graph, compute_virial=False, keep_edge_gradients=True)
        g = out.edge_gradients.to(device="cpu", dtype=torch.float64).numpy()
        if order is not None:
            back = np.empty_like(g)
            back[order] = g
            g = back
        if index is not None and len(index) != npairs:
            full = np.zeros((npairs, 3))
            full[index] = g
            g = full
        data.update_pair_forces(np.ascontiguousarray(g, dtype=np.float64))
        energies = np.asarray(out.energies, dtype=np.float64)
        self.last_energies = energies
        # eatoms rows follow the list's local atoms (iatoms[:nlistatoms]); energy = sum over local atoms
        n_list = int(data.nlistatoms)
        if n_list:
            iat = np.asarray(data.iatoms)[:n_list]
            data.eatoms = np.ascontiguousarray(energies[iat])
        data.energy = float(energies.sum())


def _receptive_subgraph(pi: np.ndarray, pj: np.ndarray, nlocal: int, ntotal: int, layers: int):
    """Edges and nodes that can change local energies in ``layers`` message-passing layers.

    A local atom's energy reads node states of atoms up to ``layers`` hops away;
    a node k hops out needs its own incoming edges only while k <= layers - 1.
    LAMMPS's deep halo (ghosts out to layers*cutoff + skin, all with neighbor
    lists) is much larger than that, so the pruned graph is exact and smaller.
    Returns (edge mask or None for all, sorted node indices or None for all).
    """
    if len(pi) == 0:
        return None, None
    within = np.zeros(ntotal, dtype=bool)  # nodes at most k hops from a local atom
    within[:nlocal] = True
    for _ in range(max(layers - 1, 0)):
        within[pj[within[pi]]] = True
    edge_keep = within[pi]
    nodes_mask = within.copy()
    nodes_mask[pj[edge_keep]] = True
    nodes = np.flatnonzero(nodes_mask)
    return (None if edge_keep.all() else edge_keep), (None if len(nodes) == ntotal else nodes)


# ---------------------------------------------------------------- export and checks --

def export_model(potential: Potential, element_types: Sequence[str], path: Union[str, Path],
                 num_threads: Optional[int] = 1) -> AtomsimMLIAP:
    """Write the ML-IAP unified model file (pickle; ``.pt`` via torch.save) and return the model.

    LAMMPS 20250204 loads ``.pt``/``.pth`` with a bare ``torch.load`` (weights_only
    since torch 2.6, which refuses this class), anything else with ``pickle.load``:
    ``.pkl`` is the extension that works. Loading either runs the class's code
    from the installed atomsim, like every ML-IAP unified model.
    """
    model = AtomsimMLIAP(potential, element_types, num_threads=num_threads)
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        torch.save(model, path)
    else:
        with open(path, "wb") as fh:
            pickle.dump(model, fh)
    return model


def lammps_lines(model: AtomsimMLIAP, path: Union[str, Path], skin: float = 2.0) -> List[str]:
    """The exact input lines that run ``model`` from ``path`` (metal units; skin = LAMMPS's default 2 Å)."""
    ghost = 1 if model.needs_ghost_neighbors() else 0
    lines = [
        "units metal",
        "newton on",
        f"neighbor {skin:g} bin",
        f"pair_style mliap unified {path} {ghost}",
        f"pair_coeff * * {' '.join(model.element_types)}",
    ]
    if ghost:
        lines.append(f"comm_modify cutoff {_ceil3(model.comm_cutoff(skin))}")
    return lines


def _ceil3(x: float) -> str:
    return f"{math.ceil(x * 1000 - 1e-9) / 1000:g}"


def lammps_input_problems(text: str, receptive_field: int, cutoff: float) -> List[str]:
    """What is wrong, for a model of ``receptive_field`` layers and ``cutoff`` Å, in a LAMMPS input.

    Reads ``pair_style mliap unified FILE [0|1]``, ``neighbor SKIN``,
    ``comm_modify cutoff X`` and ``newton``. Returns one message per problem,
    each saying what to set; [] when the input is consistent (or uses no
    mliap unified pair style). Variables (``${...}``) are not expanded: those
    lines are reported as unchecked.
    """
    lines = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            lines.append(line.split())
    problems: List[str] = []
    skin = 2.0  # LAMMPS metal default
    ghost = None
    comm_cut = None
    pair_seen = False
    for words in lines:
        cmd = words[0]
        if cmd == "neighbor" and len(words) >= 2:
            try:
                skin = float(words[1])
            except ValueError:
                problems.append(f"could not check the skin: `neighbor {words[1]}` is not a number")
        elif cmd == "pair_style" and words[1:3] == ["mliap", "unified"]:
            pair_seen = True
            ghost = words[4] if len(words) >= 5 else "0"
        elif cmd == "pair_style" and "mliap" in words[1:] and "unified" in words[1:]:
            pair_seen = True  # hybrid: take the word after the file name
            k = words.index("unified")
            ghost = words[k + 2] if len(words) > k + 2 and re.fullmatch(r"[01]|yes|no|true|false", words[k + 2]) \
                else "0"
        elif cmd == "comm_modify":
            for k in range(1, len(words) - 1):
                if words[k] == "cutoff":
                    try:
                        comm_cut = float(words[k + 1])
                    except ValueError:
                        problems.append(f"could not check `comm_modify cutoff {words[k + 1]}`: not a number")
        elif cmd == "newton" and len(words) >= 2 and words[1] in ("off", "no", "0", "false"):
            problems.append("`newton off`: pair_style mliap needs `newton on` (the default); remove the line")
    if not pair_seen:
        return problems
    need = receptive_field * cutoff + skin
    if receptive_field > 1:
        if ghost not in ("1", "yes", "true", "on"):
            problems.append(
                f"pair_style mliap unified FILE {ghost}: this model passes messages over {receptive_field} "
                f"layers, so LAMMPS must list neighbors of ghost atoms; without them the forces are silently "
                f"wrong. Set `pair_style mliap unified FILE 1`.")
        if comm_cut is None or comm_cut < need - 1e-9:
            have = "LAMMPS's default (pair cutoff + skin)" if comm_cut is None else f"{comm_cut:g} Å"
            problems.append(
                f"comm_modify cutoff is {have}, but a {receptive_field}-layer model with cutoff {cutoff:g} Å "
                f"and skin {skin:g} Å needs ghosts out to receptive_field*cutoff + skin = {need:g} Å; "
                f"otherwise the forces are silently wrong. Set `comm_modify cutoff {_ceil3(need)}` "
                f"(after the neighbor line).")
    return problems


def build_for_export(model: str, dtype: str = "float64", elements: Optional[Sequence[str]] = None,
                     params: Optional[dict] = None) -> tuple:
    """(potential, element symbols) for ``atomsim lammps export``: the model by name, cast to ``dtype``."""
    from ase.data import chemical_symbols

    from atomsim.kernels.dtypes import torch_dtype
    from atomsim.potentials.registry import load_potential

    try:
        potential = load_potential(model, **(params or {}))
    except (TypeError, ValueError) as exc:  # e.g. --param epsilon=abc: name what was given
        if not params:
            raise
        given = " ".join(f"{k}={v!r}" for k, v in params.items())
        raise ValueError(f"--param {given} for model {model!r}: {exc}") from None
    potential = potential.to(torch_dtype(dtype)).eval()
    if elements:
        symbols = list(elements)
    elif potential.species is not None:
        symbols = [chemical_symbols[int(z)] for z in sorted(potential.species)]
    else:
        raise ValueError(f"model {model!r} takes any element: name the LAMMPS types in order with "
                         f"--elements (e.g. --elements Ar or --elements Cu,Ag)")
    return potential, symbols


def model_shape(model: str, params: Optional[dict] = None) -> tuple:
    """(receptive_field, cutoff Å) of a model name/path or of an exported ``.pkl``/``.pt`` model file."""
    path = Path(model)
    if path.suffix in (".pkl", ".pt", ".pth") and path.is_file():
        if path.suffix == ".pkl":
            with open(path, "rb") as fh:
                obj = pickle.load(fh)  # an exported ML-IAP model file: the user's own, like LAMMPS loads it
        else:
            obj = torch.load(path, weights_only=False)
        return int(obj.receptive_field), float(obj.cutoff)
    from atomsim.potentials.registry import load_potential

    pot = load_potential(model, **(params or {}))
    return int(getattr(pot, "receptive_field", 1)), float(pot.cutoff)


# ------------------------------------------------------------- python driver --

METAL_BAR_PER_EV_A3 = 1.602176634e6  # LAMMPS metal pressure (bar) per eV/Å^3


def activate_mliappy_once(lmp) -> None:
    """``lammps.mliap.activate_mliappy``, once per process: the coupling modules live in
    liblammps (one per process) and a Cython module cannot be initialised twice."""
    import sys

    if "mliap_unified_couple" not in sys.modules:
        from lammps.mliap import activate_mliappy

        activate_mliappy(lmp)


def lammps_from_atoms(atoms, model: AtomsimMLIAP, *, skin: float = 1.0, cmdargs: Optional[List[str]] = None,
                      comm_cutoff: Optional[float] = None, ghost_neighbors: Optional[bool] = None):
    """A ``lammps.lammps`` (metal units) holding ``atoms`` (velocities too) with ``model`` as its pair style.

    The cell must be in LAMMPS's form (a along x, b in the xy plane: lower
    triangular) with tilts within LAMMPS's limits. ``comm_cutoff`` and
    ``ghost_neighbors`` default to what the model needs; they are exposed so
    tests can show what a wrong setting does. Call on every MPI rank.
    """
    import lammps
    from lammps.mliap import load_unified

    cell = np.asarray(atoms.cell.array, dtype=np.float64)
    if abs(cell[0, 1]) > 1e-12 or abs(cell[0, 2]) > 1e-12 or abs(cell[1, 2]) > 1e-12:
        raise ValueError("cell: LAMMPS needs a lower-triangular cell (a along x, b in the xy plane); "
                         "rotate it first, e.g. with ase.calculators.lammps.Prism")
    elements = list(model.element_types)
    symbols = atoms.get_chemical_symbols()
    missing = sorted(set(symbols) - set(elements))
    if missing:
        raise ValueError(f"element(s) {', '.join(missing)} are not in the model's element_types {elements}")
    lmp = lammps.lammps(cmdargs=cmdargs if cmdargs is not None else ["-log", "none", "-screen", "none", "-nocite"])
    activate_mliappy_once(lmp)  # must come before load_unified and pair_style
    load_unified(model)
    ghost = model.needs_ghost_neighbors() if ghost_neighbors is None else bool(ghost_neighbors)
    create_box_and_atoms(lmp, atoms, elements, velocities=True)
    lmp.commands_list([
        f"neighbor {float(skin)!r} bin", "neigh_modify every 1 delay 0 check yes",
        f"pair_style mliap unified EXISTS {1 if ghost else 0}",
        f"pair_coeff * * {' '.join(elements)}",
        "thermo_style custom step pe ke pxx pyy pzz pyz pxz pxy", "thermo_modify norm no",
    ])
    cut = model.comm_cutoff(skin) if comm_cutoff is None and ghost else comm_cutoff
    if cut is not None:
        lmp.command(f"comm_modify cutoff {float(cut)!r}")
    return lmp


def create_box_and_atoms(lmp, atoms, elements: Sequence[str], velocities: bool = False) -> None:
    """Metal units, a triclinic box of ``atoms``' (lower-triangular) cell, one type per element, the atoms.

    Atom ids are 1..N in ``atoms``' order, types follow ``elements``, positions are wrapped
    into the box; ``velocities`` copies ASE's velocities (converted to Å/ps).
    """
    from ase import units
    from ase.data import atomic_masses, atomic_numbers

    (lx, _, _), (xy, ly, _), (xz, yz, lz) = np.asarray(atoms.cell.array, dtype=np.float64).tolist()
    lmp.commands_list([
        "units metal", "atom_style atomic", "atom_modify map yes", "boundary p p p", "newton on",
        f"region box prism 0 {lx!r} 0 {ly!r} 0 {lz!r} {xy!r} {xz!r} {yz!r} units box",
        f"create_box {len(elements)} box",
        *[f"mass {k + 1} {float(atomic_masses[atomic_numbers[s]])!r}" for k, s in enumerate(elements)],
    ])
    wrapped = atoms.copy()
    wrapped.wrap(eps=0.0)
    n = len(atoms)
    types = [list(elements).index(s) + 1 for s in atoms.get_chemical_symbols()]
    v = (atoms.get_velocities() * (1000.0 * units.fs)).ravel().tolist() if velocities else None  # Å/ps
    lmp.create_atoms(n, list(range(1, n + 1)), types, wrapped.positions.ravel().tolist(), v)


def lammps_results(lmp) -> dict:
    """Energy (eV), forces (eV/Å, by atom id), ASE stress (Voigt, eV/Å^3) and positions of the current state."""
    lmp.command("run 0")
    n = int(lmp.get_natoms())
    forces = np.array(lmp.gather_atoms("f", 1, 3)[:], dtype=np.float64).reshape(n, 3)
    positions = np.array(lmp.gather_atoms("x", 1, 3)[:], dtype=np.float64).reshape(n, 3)
    # thermo pressure includes the kinetic part; stress = -(virial pressure): ask for the virial only
    p = np.array([lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pyz", "pxz", "pxy")])
    ke = lmp.get_thermo("ke")
    nktv2p = lmp.extract_global("nktv2p") or METAL_BAR_PER_EV_A3  # LAMMPS's own (rounded) bar per eV/Å^3
    return {"energy": float(lmp.get_thermo("pe")), "forces": forces, "pressure_bar": p, "ke": float(ke),
            "stress": -p / nktv2p, "positions": positions,
            "nprocs": int(lmp.extract_setting("world_size")), "nlocal": int(lmp.extract_setting("nlocal"))}
