"""engine/graph_capture.py: the fixed-shape force step against the engine's own paths.

CPU: the static (padded-buffer) evaluation equals ``evaluate_potential`` on the Numba list,
the CUDA-graph mode falls back to eager with identical numbers, and an NVE trajectory through
``md_step`` with the static provider equals the serial provider's. CUDA (skipped here; run by
benchmarks/gpu/md_end_to_end.py): the replayed graph equals the eager evaluation.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from atomsim.engine.forces import SerialForces
from atomsim.engine.graph_capture import GraphCapture, StaticGraphForces, static_forces
from atomsim.engine.state import MDState
from atomsim.engine.step import evaluate_forces, md_step
from atomsim.integrators.base import make_integrator
from atomsim.kernels import neighbors_torch as nt
from atomsim.kernels.neighbor_list import NeighborList
from atomsim.potentials.base import build_graph, evaluate_potential
from atomsim.potentials.registry import load_potential


def _model(device="cpu", dtype=torch.float64):
    return load_potential("egnn-emt-v1").to(device=device, dtype=dtype)


def _atoms(seed=1):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)  # 32 atoms, cell < 2 x cutoff: images
    atoms.rattle(0.08, seed=seed)
    return atoms


def test_static_forces_equal_evaluate_potential():
    model = _model()
    atoms = _atoms()
    pos = torch.from_numpy(atoms.positions.copy())
    cell = torch.from_numpy(atoms.cell.array.copy())
    numbers = torch.from_numpy(atoms.numbers.astype(np.int64))
    cutoff = model.cutoff + 0.8  # a skin: edges past the cutoff as in MD
    buf = nt.allocate(pos, cell, True, cutoff, capacity_multiplier=1.3)
    assert buf.capacity > int(buf.n_edges)  # padded edges present
    got = static_forces(model, numbers, buf, pos, cell, virial=True)
    nl = NeighborList(cutoff, backend="numba")
    nl.build(pos, cell, True)
    graph = build_graph(pos, cell, nl.receivers, nl.senders, nl.cell_shifts, len(atoms), torch.float64)
    ref = evaluate_potential(model, numbers, graph, compute_virial=True)
    assert abs(float(got.energy) - ref.energy) < 1e-10
    assert torch.allclose(got.forces, ref.forces, atol=1e-10, rtol=0)
    assert torch.allclose(got.virial, ref.virial, atol=1e-10, rtol=0)
    assert np.allclose(got.energies.numpy(), ref.energies, atol=1e-12, rtol=0)


def test_cuda_graph_mode_falls_back_on_cpu_with_identical_results():
    model = _model()
    atoms = _atoms(2)
    pos = torch.from_numpy(atoms.positions.copy())
    cell = torch.from_numpy(atoms.cell.array.copy())
    numbers = torch.from_numpy(atoms.numbers.astype(np.int64))
    buf = nt.allocate(pos, cell, True, model.cutoff)

    def fn(p, c):
        return static_forces(model, numbers, buf, p, c)

    eager = GraphCapture(fn, (pos, cell), mode="eager")
    graph = GraphCapture(fn, (pos, cell), mode="cuda-graph")
    assert graph.mode == "eager" and "CUDA" in graph.fallback_reason and eager.fallback_reason is None
    a, b = eager(pos, cell), graph(pos, cell)
    assert torch.equal(a.forces, b.forces) and torch.equal(a.energy, b.energy)
    with pytest.raises(ValueError, match="mode"):
        GraphCapture(fn, (pos, cell), mode="fast")


def _state(atoms, device="cpu"):
    rng = np.random.default_rng(0)
    atoms = atoms.copy()
    atoms.set_velocities(rng.normal(0, 0.02, (len(atoms), 3)))
    return MDState.from_atoms(atoms, device=device)


def test_md_trajectory_static_provider_equals_serial():
    """Same NVE trajectory (float64) through md_step; the small skin forces several rebuilds."""
    model = _model()
    atoms = _atoms(3)
    ref_state, st_state = _state(atoms), _state(atoms)
    ref = SerialForces(model, skin=0.1)
    static = StaticGraphForces(model, skin=0.1, mode="cuda-graph", capacity_multiplier=1.0)
    for state, prov in ((ref_state, ref), (st_state, static)):
        integ = make_integrator("nve", timestep_fs=4.0)
        evaluate_forces(state, prov, virial=False, max_force=100.0)
        for _ in range(15):
            md_step(state, integ, prov, virial=False, max_force=100.0)
    assert static.n_builds > 2 and static.capture.mode == "eager"
    assert torch.allclose(st_state.positions, ref_state.positions, atol=1e-10, rtol=0)
    assert abs(st_state.energy - ref_state.energy) < 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replay_equals_eager(dtype):
    model = _model("cuda", dtype)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(4)
    atoms.rattle(0.05, seed=4)
    pos = torch.from_numpy(atoms.positions.copy()).cuda()
    cell = torch.from_numpy(atoms.cell.array.copy()).cuda()
    numbers = torch.from_numpy(atoms.numbers.astype(np.int64)).cuda()
    buf = nt.allocate(pos, cell, True, model.cutoff + 1.0)

    def fn(p, c):
        return static_forces(model, numbers, buf, p, c)

    cap = GraphCapture(fn, (pos, cell), mode="cuda-graph")
    assert cap.mode == "cuda-graph", cap.fallback_reason
    moved = pos + 0.01
    want = fn(moved, cell)
    got = cap(moved, cell)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    scale = float(want.forces.abs().max())
    assert float((got.forces - want.forces).abs().max()) <= tol * scale


def test_static_provider_reallocates_on_overflow():
    """A compressed cell lists more pairs than the buffers hold: re-allocate, same forces as serial."""
    model = _model()
    state = _state(_atoms(5))
    static = StaticGraphForces(model, skin=0.5, capacity_multiplier=1.0)
    static.compute(state, virial=False)
    cap = static.buffers.capacity
    state.positions *= 0.93
    state.cell *= 0.93
    got = static.compute(state, virial=True)
    ref = SerialForces(model, skin=0.5).compute(state, virial=True)
    assert got.rebuilt and static.n_reallocations == 1 and static.buffers.capacity > cap
    assert abs(got.energy - ref.energy) < 1e-10
    assert torch.allclose(got.forces, ref.forces, atol=1e-10, rtol=0)
    assert torch.allclose(got.virial, ref.virial, atol=1e-10, rtol=0)


def test_deferred_checks_on_the_static_provider():
    """md_step(checks=): the static provider folds the skin check in on the device (no rebuild, energy a
    device tensor) and follows the serial provider's deferred steps; the running maximum equals the
    displacement measured independently."""
    from atomsim.engine.device_checks import DeferredChecks

    model = _model()
    atoms = _atoms(6)
    ref_state, st_state = _state(atoms), _state(atoms)
    ref = SerialForces(model, skin=1.0)
    static = StaticGraphForces(model, skin=1.0)
    start = st_state.positions.clone()
    for state, prov in ((ref_state, ref), (st_state, static)):
        integ = make_integrator("nve", timestep_fs=2.0)
        evaluate_forces(state, prov, virial=False, max_force=100.0)
        threshold = static.stale_threshold if prov is static else ref.nlist.stale_threshold
        assert threshold == ref.nlist.stale_threshold
        checks = DeferredChecks(state.positions.device, threshold, 100.0)
        for _ in range(5):
            md_step(state, integ, prov, virial=False, max_force=100.0, checks=checks)
        verdict = checks.read()
        assert verdict.ok and prov.n_builds == 1
    assert torch.allclose(st_state.positions, ref_state.positions, atol=1e-10, rtol=0)
    disp = float(((st_state.positions - start) ** 2).sum(1).max())  # the last verdict is the static run's
    assert 0 < verdict.max_disp_sq and abs(verdict.max_disp_sq - disp) < 1e-12
