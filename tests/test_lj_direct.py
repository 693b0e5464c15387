"""LJ's direct path (one fused numba pass over a half list: potentials/lj_kernels.lj_direct)
against independent references: ASE's LennardJones (energy, per-atom energies, forces,
stress, per-atom stresses), the autograd path over a full list, finite differences of
the energy (forces and strain derivative), and itself on 1 vs 2 threads."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.calculators.lj import LennardJones as AseLJ

from atomsim.calculator import AtomsimCalculator
from atomsim.engine.forces import SerialForces, direct_pairs
from atomsim.engine.state import MDState
from atomsim.kernels.neighbor_list import NeighborList
from atomsim.potentials import lj_kernels
from atomsim.potentials.base import PairList
from atomsim.potentials.lj import LennardJones
from atomsim.testing import conformance_tests

from conftest import AR_EPSILON, AR_SIGMA, STRUCTURES

EPS = {"Ar": 0.0104, "Kr": 0.0140, "Xe": 0.0200}
SIG = {"Ar": 3.40, "Kr": 3.65, "Xe": 3.98}
SKIN = 0.6


def _alloy(cell_scale=1.0, seed=3, pbc=True):
    """Ar/Kr/Xe, rattled, sheared triclinic cell; ``cell_scale`` < 1 packs it below 2 x cutoff."""
    atoms = bulk("Ar", "fcc", a=5.9 * cell_scale).repeat((2, 2, 2))
    rng = np.random.default_rng(seed)
    atoms.symbols = rng.choice(["Ar", "Kr", "Xe"], size=len(atoms))
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.07, 0.0], [0.0, 1.02, -0.04], [0.03, 0.0, 0.97]]),
                   scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    atoms.pbc = pbc
    return atoms


def _direct(pot, atoms, atom_virial=True, skin=SKIN):
    forces = SerialForces(pot, skin=skin)
    out = forces.compute(MDState.from_atoms(atoms), atom_virial=atom_virial)
    assert forces.direct and forces.nlist.half and forces.nlist.senders.dtype == torch.int32
    return out


def _autograd(pot, atoms, skin=SKIN):
    """The autograd path over a full list: the same potential, direct path switched off."""
    forces = SerialForces(pot, skin=skin, neighbor_list=NeighborList(pot.cutoff, skin))
    forces.direct = False
    return forces.compute(MDState.from_atoms(atoms), atom_virial=True)


def _assert_same(got, ref, rtol=1e-11):
    # ForceResult.energy may be a 0-d tensor (engine/forces.py keeps it on the device): compare as floats
    assert float(got.energy) == pytest.approx(float(ref.energy), rel=1e-12, abs=1e-13)
    scale = float(ref.forces.abs().max())
    assert scale > 1e-4  # not trivially zero
    np.testing.assert_allclose(got.energies, ref.energies, rtol=rtol, atol=1e-13)
    np.testing.assert_allclose(got.forces.numpy(), ref.forces.numpy(), rtol=rtol, atol=1e-12 * scale)
    np.testing.assert_allclose(got.virial.numpy(), ref.virial.numpy(), rtol=rtol, atol=1e-13)
    np.testing.assert_allclose(got.atom_virials.numpy(), ref.atom_virials.numpy(), rtol=rtol, atol=1e-14)


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("name", ["triclinic", "small_cell", "mixed_pbc", "cluster"])
def test_direct_matches_ase(name, smooth):
    """Through the ASE calculator (SerialForces' direct path): every result ASE's LJ gives."""
    atoms = STRUCTURES[name]()
    calc = AtomsimCalculator(LennardJones(epsilon=AR_EPSILON, sigma=AR_SIGMA, smooth=smooth,
                                          ase_compatible=True), skin=SKIN)
    props = ["energy", "energies", "forces"] + (["stress", "stresses"] if atoms.cell.rank == 3 else [])
    calc.calculate(atoms, props)
    assert calc._forces.direct
    ref = atoms.copy()
    ref.calc = AseLJ(epsilon=AR_EPSILON, sigma=AR_SIGMA, smooth=smooth)
    ref.calc.calculate(ref, props)
    assert np.abs(ref.calc.results["forces"]).max() > 1e-4
    for key in props:
        np.testing.assert_allclose(calc.results[key], ref.calc.results[key], rtol=1e-10, atol=1e-13,
                                   err_msg=f"{name}: {key}")


@pytest.mark.parametrize("options", [{}, {"smooth": True}, {"shift": False}, {"smooth": True, "ro": 4.0}])
@pytest.mark.parametrize("case", ["triclinic", "small", "mixed_pbc"])
def test_direct_matches_autograd_multi_species(case, options):
    """Half list + fused kernel == full list + autograd, per-element Lorentz-Berthelot tables.

    "small": cell faces ~8 Å apart with a 9 Å cutoff: many periodic images, self-images too.
    """
    atoms = {"triclinic": lambda: _alloy(), "small": lambda: _alloy(cell_scale=0.72),
             "mixed_pbc": lambda: _alloy(pbc=(True, False, True))}[case]()
    pot = LennardJones(epsilon=EPS, sigma=SIG, cutoff=9.0, **options)
    got = _direct(pot, atoms)
    _assert_same(got, _autograd(pot, atoms))
    np.testing.assert_allclose(got.atom_virials.sum(0).numpy(), got.virial.numpy(), rtol=1e-12, atol=1e-14)


def test_direct_finite_differences():
    """Forces = -dE/dx and virial = dE/d(strain) by central differences (small, sheared, 3 species)."""
    atoms = _alloy(cell_scale=0.8, seed=5)
    pot = LennardJones(epsilon=EPS, sigma=SIG, cutoff=8.0, smooth=True)
    out = _direct(pot, atoms, atom_virial=False, skin=0.0)
    h = 1e-5

    def energy(a):
        return _direct(pot, a, atom_virial=False, skin=0.0).energy

    rng = np.random.default_rng(0)
    for a_idx in rng.choice(len(atoms), 4, replace=False):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[a_idx, k] += h
            minus.positions[a_idx, k] -= h
            fd = -(energy(plus) - energy(minus)) / (2 * h)
            assert float(out.forces[a_idx, k]) == pytest.approx(fd, rel=1e-6, abs=1e-8)
    for p, q in ((0, 0), (1, 2), (2, 0)):
        eps = np.zeros((3, 3))
        eps[p, q] = h
        plus, minus = atoms.copy(), atoms.copy()
        for a, sign in ((plus, 1), (minus, -1)):
            deform = np.eye(3) + sign * eps
            a.set_cell(a.cell.array @ deform, scale_atoms=False)
            a.positions = a.positions @ deform
        fd = (energy(plus) - energy(minus)) / (2 * h)
        assert float(out.virial[p, q]) == pytest.approx(fd, rel=1e-6, abs=1e-8)


def test_threads_agree(monkeypatch):
    """Per-thread force buffers: 2 threads (parallel twin) equal 1 thread to rounding."""
    atoms = _alloy().repeat((2, 2, 1))
    pot = LennardJones(epsilon=EPS, sigma=SIG, cutoff=9.0)
    nl = NeighborList(pot.cutoff, SKIN, half=True, compact=True)
    st = MDState.from_atoms(atoms)
    nl.build(st.positions, st.cell, st.pbc)
    monkeypatch.setattr(lj_kernels, "PARALLEL_MIN_NODES", 1)
    n_threads = torch.get_num_threads()
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        try:
            outs.append(pot.direct_forces(st.numbers, st.positions, st.cell, direct_pairs(nl), st.n_local,
                                          atom_virial=True))
        finally:
            torch.set_num_threads(n_threads)
    one, two = outs
    assert one.energy == pytest.approx(two.energy, rel=1e-13)
    np.testing.assert_allclose(two.energies, one.energies, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(two.forces.numpy(), one.forces.numpy(), rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(two.virial.numpy(), one.virial.numpy(), rtol=1e-12)
    np.testing.assert_allclose(two.atom_virials.numpy(), one.atom_virials.numpy(), rtol=1e-11, atol=1e-15)


@pytest.mark.parametrize("half", [False, True])
def test_ghost_layout_counts_each_pair_once(half):
    """The MPI layout (engine/parallel_forces.py): explicit ghost images, edges into owned atoms
    only, no cell; folding ghost forces back onto their owners gives the periodic result.
    Full list: every owned pair twice at weight 1/2. Half list: owned pairs once, owned-ghost
    pairs at weight 1/2 (the ghost's owner holds the mirror pair)."""
    atoms = _alloy(seed=8)
    pot = LennardJones(epsilon=EPS, sigma=SIG, cutoff=9.0)
    ref = _direct(pot, atoms)
    n, cell = len(atoms), atoms.cell.array
    full = NeighborList(pot.cutoff, 0.0)
    full.build(torch.from_numpy(atoms.positions), cell, atoms.pbc)
    images = {}
    for jj, s in zip(full.senders.numpy(), full.cell_shifts.numpy()):
        if s.any():
            images.setdefault((jj, tuple(s)), n + len(images))
    owner = np.array([jj for jj, _ in images])
    ghost_pos = np.array([atoms.positions[jj] + np.array(s) @ cell for jj, s in images])
    pos = torch.from_numpy(np.vstack([atoms.positions, ghost_pos]))
    numbers = torch.from_numpy(np.concatenate([atoms.numbers, atoms.numbers[owner]]))
    local = NeighborList(pot.cutoff, 0.0, half=half)
    local.build(pos, np.zeros((3, 3)), (False, False, False))
    local.keep_edges(local.receivers < n)
    pairs = PairList(row_ptr=local.row_ptr, senders=local.senders, cell_shifts=local.cell_shifts, half=half)
    no_cell = torch.zeros((3, 3), dtype=torch.float64)
    out = pot.direct_forces(numbers, pos, no_cell, pairs, n, atom_virial=True)
    forces = out.forces[:n].numpy().copy()
    np.add.at(forces, owner, out.forces[n:].numpy())
    atom_v = out.atom_virials[:n].numpy().copy()
    np.add.at(atom_v, owner, out.atom_virials[n:].numpy())
    assert out.energy == pytest.approx(ref.energy, rel=1e-12)
    np.testing.assert_allclose(out.energies, ref.energies, rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(forces, ref.forces.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(out.virial.numpy(), ref.virial.numpy(), rtol=1e-11)
    np.testing.assert_allclose(atom_v, ref.atom_virials.numpy(), rtol=1e-10, atol=1e-14)


def test_only_float64_cpu_numba_takes_the_direct_path():
    assert LennardJones().direct_list() == "half"
    assert LennardJones(backend="numba").direct_list() == "half"
    for pot in (LennardJones(dtype="float32"), LennardJones(backend="torch"),
                LennardJones(backend="autograd")):
        assert pot.direct_list() is None
        assert not SerialForces(pot).direct
    with pytest.raises(ValueError, match="full neighbor list"):
        SerialForces(LennardJones(dtype="float32"), neighbor_list=NeighborList(3.0, 0.5, half=True))


# The autograd path keeps its own kit run (the kit takes the direct path for float64 LJ, tests/test_lj.py).
test_conformance_autograd_path = conformance_tests(
    lambda: LennardJones(epsilon=EPS, sigma=SIG, cutoff=9.0, smooth=True, backend="torch"),
    lambda: {"alloy": _alloy(), "small": _alloy(cell_scale=0.72)},
    fd_points=6, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("case", ["triclinic", "small", "mixed_pbc"])
def test_compact_half_list_has_each_pair_once(case):
    """The bin-order half list (kernels/neighbors_numba.build_csr_newton) vs ASE's full list:
    every ordered pair of ASE's is in it exactly once, as itself or as its mirror (j, i, -S)."""
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    atoms = {"triclinic": lambda: _alloy(), "small": lambda: _alloy(cell_scale=0.72),
             "mixed_pbc": lambda: _alloy(pbc=(True, False, True))}[case]()
    atoms.positions += np.array([7.0, -4.0, 3.0])  # atoms outside the cell: shifts carry the wrap
    nl = NeighborList(8.0, 0.0, half=True, compact=True)
    nl.build(torch.from_numpy(atoms.positions), atoms.cell.array, atoms.pbc)
    assert nl.senders.dtype == torch.int32 and nl.cell_shifts.dtype == torch.int8
    half = [(int(i), int(j), tuple(int(x) for x in s))
            for i, j, s in zip(nl.receivers, nl.senders, nl.cell_shifts)]
    assert len(set(half)) == len(half)
    mirrored = set(half) | {(j, i, tuple(-x for x in s)) for i, j, s in half}
    i, j, S = ase_neighbor_list("ijS", atoms, 8.0)
    ref = {(int(a), int(b), tuple(int(x) for x in s)) for a, b, s in zip(i, j, S)}
    assert len(ref) == 2 * len(half) and mirrored == ref


_MPI_SCRIPT = '''
import json, sys
import numpy as np
import torch
from atomsim.engine.forces import SerialForces
from atomsim.engine.parallel_forces import ParallelForces
from mpi_common import grid_for, lj, mpi, state_of, systems

comm = mpi()
errors = {}
for name, (atoms, kind) in systems().items():
    for halo in ("full", "per-layer"):
        pot = lj(torch.float64)
        st = state_of(atoms)
        prov = ParallelForces(pot, comm, skin=1.0, halo=halo, grid=grid_for(kind, comm.size))
        prov.prepare(st)
        out = prov.compute(st, atom_virial=True)
        g = comm.gather_by_id(st.ids.numpy(), forces=out.forces.numpy(), energies=np.asarray(out.energies),
                              atoms=out.atom_virials.numpy().reshape(-1, 9))
        if comm.rank == 0:
            ref = SerialForces(pot, skin=1.0).compute(state_of(atoms), atom_virial=True)
            assert prov.potential.direct_list() == "half"
            got = {"energy": out.energy, "virial": out.virial.numpy(), **g}
            want = {"energy": ref.energy, "virial": ref.virial.numpy(), "forces": ref.forces.numpy(),
                    "energies": ref.energies, "atoms": ref.atom_virials.numpy().reshape(-1, 9)}
            errors[f"{name}/{halo}"] = {k: float(np.abs(np.asarray(got[k]) - want[k]).max()
                                              / max(np.abs(want[k]).max(), 1e-300)) for k in want}
if comm.rank == 0:
    json.dump(errors, open(sys.argv[1], "w"))
'''


@pytest.mark.mpi
@pytest.mark.timeout(300)
def test_two_ranks_equal_one_rank_with_per_atom_virials(tmp_path):
    """ParallelForces' direct path (half list over owned + ghost atoms: owned-ghost pairs at weight
    1/2 on each rank, ghost forces and per-atom virials sent back to their owners) on 2 ranks equals
    the 1-rank run, both halo schemes, every system of tests/mpi_scripts/mpi_common.py
    (orthorhombic, triclinic, slab with an empty rank, small box)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    mpiexec = Path(sys.executable).parent / "mpiexec"
    if not mpiexec.exists():
        pytest.skip(f"no mpiexec next to {sys.executable} (install atomsim[mpi])")
    script, out = tmp_path / "lj_direct_mpi.py", tmp_path / "errors.json"
    script.write_text(_MPI_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore",
           "PYTHONPATH": str(Path(__file__).parent / "mpi_scripts")}
    proc = subprocess.run([str(mpiexec), "-n", "2", sys.executable, str(script), str(out)], env=env,
                          capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stderr[-3000:]
    errors = json.loads(out.read_text())
    assert len(errors) == 8
    for case, errs in errors.items():
        for q, e in errs.items():
            assert e < 1e-10, f"{case}: {q} rel. error {e:.2e}"
