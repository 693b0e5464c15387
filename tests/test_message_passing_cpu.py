"""The fused CPU (Numba) EGNN edge kernel against the torch reference (the specification).

Forward and every first derivative (a, b, edge vectors, w_rbf, b1, w2, b2) in float32 and
float64 on receiver-sorted graphs with empty receivers, a receiver spanning several blocks,
edges past the cutoff, several thread groups, zero edges and unsorted input; float64 gradcheck
(finite differences); double backward (a loss on forces) through the reference fallback; the
bundled egnn-emt-v1 model through both paths (energy, forces, virial) on triclinic, small,
mixed-pbc multi-element cells, and its forces against central differences.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from atomsim.kernels import message_passing_cpu as mpc
from atomsim.kernels.message_passing import edge_message_aggregate, edge_message_aggregate_reference
from atomsim.kernels.neighbors import neighbor_list
from atomsim.potentials import load_potential
from atomsim.potentials.base import build_graph, evaluate_potential

KEYS = ("a", "b", "edge_vectors", "w_rbf", "b1", "w2", "b2")
TOL = {torch.float32: 2e-5, torch.float64: 1e-12}  # max-norm relative error vs the reference


def _problem(n_nodes, n_edges, F, K, dtype, seed, cutoff=3.0, sort=True):
    """Random graph: isolated nodes (no edges), one receiver with more edges than a block,
    edges past the cutoff; inputs at the EGNN's init scale."""
    g = torch.Generator().manual_seed(seed)
    recv = torch.randint(0, n_nodes - 2, (n_edges,), generator=g)  # last 2 nodes: no edges
    recv[: max(n_edges // 3, 1)] = 1
    if sort:
        recv, _ = torch.sort(recv)
    send = (recv + torch.randint(1, n_nodes, (n_edges,), generator=g)) % n_nodes
    direction = torch.randn(n_edges, 3, generator=g, dtype=torch.float64)
    direction /= direction.norm(dim=1, keepdim=True)
    dist = 0.7 + (cutoff * 1.15 - 0.7) * torch.rand(n_edges, 1, generator=g, dtype=torch.float64)
    f = dict(generator=g, dtype=torch.float64)
    p = dict(a=torch.randn(n_nodes, F, **f), b=torch.randn(n_nodes, F, **f), edge_vectors=direction * dist,
             w_rbf=torch.randn(K, F, **f) * K**-0.5, b1=0.1 * torch.randn(F, **f),
             w2=torch.randn(F, F, **f) * F**-0.5, b2=0.1 * torch.randn(F, **f))
    return {k: v.to(dtype) for k, v in p.items()}, send, recv, cutoff


def _call(fn, p, send, recv, cutoff):
    return fn(p["a"], p["b"], p["edge_vectors"], send, recv, p["w_rbf"], p["b1"], p["w2"], p["b2"], cutoff)


def _out_and_grads(fn, p, send, recv, cutoff, seed=7):
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in p.items()}
    out = _call(fn, leaves, send, recv, cutoff)
    G = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    grads = torch.autograd.grad(out, [leaves[k] for k in KEYS], G.to(out.dtype))
    return out.detach(), dict(zip(KEYS, grads))


def _rel(x, ref) -> float:
    x, ref = x.detach().double(), ref.detach().double()
    return float((x - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("groups", [0, 3])
def test_forward_and_all_gradients_equal_reference(dtype, groups, monkeypatch):
    monkeypatch.setattr(mpc, "GROUPS", groups)  # 3 groups: per-group partial sums of da, dW
    p, send, recv, cutoff = _problem(60, 1500, 32, 6, dtype, seed=1)
    assert int((recv == 1).sum()) > 2 * mpc.BLOCK_EDGES  # one receiver spans several blocks
    out_f, g_f = _out_and_grads(mpc.edge_message_aggregate_cpu, p, send, recv, cutoff)
    out_r, g_r = _out_and_grads(edge_message_aggregate_reference, p, send, recv, cutoff)
    assert out_f.dtype == dtype and out_f[-2:].abs().max() == 0  # isolated nodes get nothing
    assert _rel(out_f, out_r) < TOL[dtype]
    for k in KEYS:
        assert g_f[k].dtype == dtype and g_f[k].shape == p[k].shape, k
        assert _rel(g_f[k], g_r[k]) < TOL[dtype], (k, _rel(g_f[k], g_r[k]))


def test_only_needed_gradients_and_unsorted_edges():
    p, send, recv, cutoff = _problem(30, 400, 16, 4, torch.float64, seed=2, sort=False)
    assert bool((recv[1:] < recv[:-1]).any())
    leaves = {k: v.clone().requires_grad_(k in ("edge_vectors", "w2")) for k, v in p.items()}
    out = _call(mpc.edge_message_aggregate_cpu, leaves, send, recv, cutoff)
    ref = _call(edge_message_aggregate_reference, leaves, send, recv, cutoff)
    assert _rel(out, ref) < 1e-12
    gf = torch.autograd.grad(out.sum(), [leaves["edge_vectors"], leaves["w2"]])
    gr = torch.autograd.grad(ref.sum(), [leaves["edge_vectors"], leaves["w2"]])
    for x, y in zip(gf, gr):
        assert _rel(x, y) < 1e-12


def test_zero_edges():
    p, _, _, cutoff = _problem(5, 10, 8, 3, torch.float64, seed=3)
    p["edge_vectors"] = p["edge_vectors"][:0]
    empty = torch.zeros(0, dtype=torch.int64)
    out, grads = _out_and_grads(mpc.edge_message_aggregate_cpu, p, empty, empty, cutoff)
    assert out.shape == (5, 8) and out.abs().max() == 0
    for k in KEYS:
        assert grads[k].shape == p[k].shape and bool((grads[k] == 0).all()), k


def test_gradcheck_float64():
    p, send, recv, cutoff = _problem(7, 20, 4, 3, torch.float64, seed=4)
    leaves = [p[k].clone().requires_grad_(True) for k in KEYS]

    def fn(a, b, ev, w_rbf, b1, w2, b2):
        return mpc.edge_message_aggregate_cpu(a, b, ev, send, recv, w_rbf, b1, w2, b2, cutoff)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_double_backward_force_loss_equals_reference():
    """Training on forces: d/dW of a loss on d(out)/d(edge vectors) (create_graph=True)."""
    p, send, recv, cutoff = _problem(20, 200, 16, 4, torch.float64, seed=5)
    G = torch.randn(20, 16, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    def weight_grads(fn):
        leaves = {k: v.clone().requires_grad_(True) for k, v in p.items()}
        energy = (_call(fn, leaves, send, recv, cutoff) * G).sum()
        (dr,) = torch.autograd.grad(energy, leaves["edge_vectors"], create_graph=True)
        loss = (dr**2).sum() + energy
        return torch.autograd.grad(loss, [leaves[k] for k in KEYS])

    for k, x, y in zip(KEYS, weight_grads(mpc.edge_message_aggregate_cpu),
                       weight_grads(edge_message_aggregate_reference)):
        assert _rel(x, y) < 1e-12, k


def test_dispatch_default_cpu_is_numba(monkeypatch):
    p, send, recv, cutoff = _problem(10, 50, 8, 3, torch.float32, seed=6)
    calls = []
    entry = mpc.edge_message_aggregate_cpu
    monkeypatch.setattr(mpc, "edge_message_aggregate_cpu", lambda *a, **k: calls.append(1) or entry(*a, **k))
    monkeypatch.delenv("ATOMSIM_KERNELS", raising=False)
    _call(edge_message_aggregate, p, send, recv, cutoff)
    assert calls == [1]
    monkeypatch.setenv("ATOMSIM_KERNELS", "reference")
    _call(edge_message_aggregate, p, send, recv, cutoff)
    assert calls == [1]
    monkeypatch.setenv("ATOMSIM_KERNELS", "bogus")
    with pytest.raises(ValueError, match="ATOMSIM_KERNELS"):
        _call(edge_message_aggregate, p, send, recv, cutoff)


# ------------------------------------------------------------- the bundled model, both paths --
def _cells() -> dict:
    rng = np.random.default_rng(0)
    tri = Atoms("CuAgCuAuCuNi", cell=[[4.2, 0.0, 0.0], [2.9, 3.8, 0.0], [-2.1, 1.7, 4.4]], pbc=True)
    base = np.array([[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5], [0.25, 0.75, 0.25]])
    tri.set_scaled_positions(base + 0.03 * rng.normal(size=(6, 3)))
    small = bulk("Cu", "fcc", a=3.61)  # 1 atom, 2.55 Å cell vectors: the 5 Å cutoff sees many images
    small = small.repeat((2, 1, 1))
    small.numbers[1] = 47
    small.rattle(0.05, seed=1)
    slab = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    slab.numbers[[0, 9, 20]] = [79, 46, 47]
    slab.center(vacuum=4.0, axis=2)
    slab.pbc = (True, True, False)
    slab.rattle(0.08, seed=2)
    return {"triclinic": tri, "small_cell": small, "mixed_pbc": slab}


def _evaluate(model, atoms, backend, monkeypatch, dtype):
    monkeypatch.setenv("ATOMSIM_KERNELS", backend)
    i, j, S = (torch.from_numpy(x) for x in neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc,
                                                          model.cutoff + 0.8))
    g = build_graph(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array), i, j, S, len(atoms), dtype)
    return evaluate_potential(model, torch.tensor(atoms.numbers), g)


@pytest.fixture(scope="module")
def emt_model():
    return load_potential("egnn-emt-v1")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["triclinic", "small_cell", "mixed_pbc"])
def test_bundled_model_equals_reference_path(emt_model, name, dtype, monkeypatch):
    atoms = _cells()[name]
    model = emt_model.to(dtype)
    fused = _evaluate(model, atoms, "numba", monkeypatch, dtype)
    ref = _evaluate(model, atoms, "reference", monkeypatch, dtype)
    tol = 1e-5 if dtype == torch.float32 else 1e-11
    assert abs(fused.energy - ref.energy) <= tol * max(1.0, abs(ref.energy))
    assert _rel(fused.forces, ref.forces) < tol
    if atoms.pbc.all():
        assert _rel(fused.virial, ref.virial) < tol


def test_bundled_model_forces_match_finite_differences(emt_model, monkeypatch):
    model = emt_model.to(torch.float64)
    atoms = _cells()["triclinic"]
    forces = _evaluate(model, atoms, "numba", monkeypatch, torch.float64).forces.numpy()
    h = 1e-5
    for a, c in [(0, 0), (2, 1), (5, 2)]:
        e = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[a, c] += sign * h
            e.append(_evaluate(model, moved, "numba", monkeypatch, torch.float64).energy)
        assert abs(-(e[0] - e[1]) / (2 * h) - forces[a, c]) < 1e-6 * max(1.0, abs(forces[a, c]))


def test_bundled_model_training_gradients_equal_reference(emt_model, monkeypatch):
    """Parameter gradients of an energy + force loss (double backward) through both paths."""
    model = emt_model.to(torch.float64)
    atoms = _cells()["triclinic"]
    i, j, S = (torch.from_numpy(x) for x in neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc,
                                                          model.cutoff))
    grads = {}
    for backend in ("numba", "reference"):
        monkeypatch.setenv("ATOMSIM_KERNELS", backend)
        pos = torch.tensor(atoms.positions, requires_grad=True)
        g = build_graph(pos, torch.tensor(atoms.cell.array), i, j, S, len(atoms), torch.float64)
        energy = model.per_atom_energy(torch.tensor(atoms.numbers), g).sum()
        (dpos,) = torch.autograd.grad(energy, pos, create_graph=True)
        loss = energy**2 + (dpos**2).sum()
        params = [p for p in model.parameters()]
        grads[backend] = torch.autograd.grad(loss, params, allow_unused=True)
    for x, y in zip(grads["numba"], grads["reference"]):
        if y is None:
            assert x is None
        else:
            assert _rel(x, y) < 1e-10
