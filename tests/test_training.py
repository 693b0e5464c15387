"""Data generation and training: labels vs EMT, batching vs single structures, resume, data parallelism."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from atomsim.potentials.base import build_graph, evaluate_potential
from atomsim.training.datagen import KINDS, generate_structures, write_dataset
from atomsim.training.trainer import (
    TrainConfig,
    collate,
    fit_species_energies,
    load_config,
    predict,
    read_samples,
    train,
)

VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("data") / "emt.extxyz"
    write_dataset(path, 24, seed=3, elements=["Cu", "Au", "Ni"])
    return path


def test_datagen_labels_equal_emt_and_cover_kinds():
    from ase.calculators.emt import EMT

    frames = list(generate_structures(40, seed=2, elements=["Cu", "Pt"]))
    assert len(frames) == 40
    kinds = {a.info["config_type"] for a in frames}
    assert set(KINDS) == kinds
    assert {s for a in frames for s in a.get_chemical_symbols()} == {"Cu", "Pt"}
    for a in frames[::8]:
        e, f = a.get_potential_energy(), a.get_forces()
        b = a.copy()
        b.calc = EMT()
        assert abs(b.get_potential_energy() - e) < 1e-10
        np.testing.assert_allclose(b.get_forces(), f, atol=1e-10)
    assert any(any(np.abs(a.cell.array[2]) > 0) and a.info["config_type"] == "surface" for a in frames)
    again = list(generate_structures(40, seed=2, elements=["Cu", "Pt"]))  # the seed fixes the data set
    for a, b in zip(frames, again):
        assert (a.numbers == b.numbers).all() and np.array_equal(a.positions, b.positions)


def test_batched_graph_equals_single_structures(dataset):
    from atomsim.potentials.egnn import build_egnn

    samples = read_samples(dataset, 4.0, index=":5")
    torch.manual_seed(0)
    model = build_egnn([28, 29, 79], width=8, depth=2, n_rbf=4, cutoff=4.0).double()
    b = collate(samples, torch.float64)
    e, f, s = predict(model, b, training=False, want_stress=True)
    off = 0
    for k, smp in enumerate(samples):
        n = smp.n_atoms
        g = build_graph(torch.zeros(n, 3), torch.eye(3), smp.receivers, smp.senders, torch.zeros(len(smp.senders), 3,
                        dtype=torch.int64), n, torch.float64)
        g.edge_vectors = smp.vectors.clone()  # the same vectors, built per structure
        ref = evaluate_potential(model, smp.numbers, g)
        assert abs(float(e[k].detach()) - ref.energy) < 1e-10
        np.testing.assert_allclose(f[off:off + n].detach().numpy(), ref.forces.numpy(), atol=1e-10)
        if smp.stress is not None:
            np.testing.assert_allclose(s[k].detach().numpy(), ref.virial.numpy() / smp.volume, atol=1e-10)
        off += n


def test_species_energies_least_squares_recovers_shifts(dataset):
    samples = read_samples(dataset, 4.0, index=":12")
    true = {28: -1.3, 29: -2.7, 79: 0.4}
    for s in samples:
        s.energy = sum(true[int(z)] for z in s.numbers)
    e0 = fit_species_energies(samples, [28, 29, 79])
    present = sorted({int(z) for s in samples for z in s.numbers})
    for k, z in enumerate([28, 29, 79]):
        if z in present:
            assert abs(e0[k] - true[z]) < 1e-6


def _cfg(dataset, out, **kw) -> TrainConfig:
    base = dict(data=str(dataset), output=str(out), model={"width": 8, "depth": 2, "n_rbf": 4, "cutoff": 4.0,
                "readout_hidden": 4}, batch_size=4, epochs=2, val_fraction=0.2, test_fraction=0.0,
                lr=5e-3, stress_weight=1.0, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def test_training_reduces_validation_error_and_resume_is_exact(dataset, tmp_path):
    samples = read_samples(dataset, 4.0)
    cfg = _cfg(dataset, tmp_path / "a", epochs=4)
    full = train(cfg, samples=samples, log=lambda *_: None)
    hist = full["history"]
    assert hist[-1]["val_F_mae_meV_A"] < hist[0]["val_F_mae_meV_A"]
    # 2 epochs + resume for 2 more == 4 epochs in one go (optimizer, EMA, schedule, data order)
    half = _cfg(dataset, tmp_path / "b", epochs=4)
    steps_per_epoch = -(-len(full["train"]) // half.batch_size)
    train(half, samples=samples, log=lambda *_: None, max_steps=2 * steps_per_epoch)
    resumed = train(half, samples=samples, log=lambda *_: None, resume=True)
    assert len(resumed["history"]) == 4
    for p, q in zip(full["model"].parameters(), resumed["model"].parameters()):
        assert torch.equal(p, q)
    for p, q in zip(full["ema"].parameters(), resumed["ema"].parameters()):
        assert torch.equal(p, q)


def test_equivariant_variant_trains_and_its_forces_are_the_energy_gradient(dataset, tmp_path):
    """model.equivariant reaches EGNNConfig; the trained model's forces equal -dE/dx (finite differences)."""
    from ase.build import bulk

    from atomsim.calculator import AtomsimCalculator

    samples = read_samples(dataset, 4.0)
    cfg = _cfg(dataset, tmp_path / "eq", epochs=3, model={"width": 8, "depth": 2, "n_rbf": 4, "cutoff": 4.0,
                                                       "readout_hidden": 4, "equivariant": True, "coord_hidden": 4})
    out = train(cfg, samples=samples, log=lambda *_: None)
    model = out["ema"]
    assert model.config.equivariant and model.config.coord_hidden == 4
    hist = out["history"]
    assert hist[-1]["val_F_mae_meV_A"] < hist[0]["val_F_mae_meV_A"]
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms[1].symbol, atoms[5].symbol = "Au", "Ni"
    atoms.rattle(0.08, seed=1)
    atoms.calc = AtomsimCalculator(model.double())
    f = atoms.get_forces()
    h, i = 1e-4, 3
    for k in range(3):
        p = atoms.copy()
        p.calc = atoms.calc
        p.positions[i, k] += h
        ep = p.get_potential_energy()
        p.positions[i, k] -= 2 * h
        em = p.get_potential_energy()
        assert f[i, k] == pytest.approx(-(ep - em) / (2 * h), rel=1e-5, abs=1e-7)


def test_bad_config_names_the_key(tmp_path):
    (tmp_path / "t.yaml").write_text("data: x.extxyz\nbatch_size: 0\n")
    with pytest.raises(ValueError, match="batch_size"):
        load_config(tmp_path / "t.yaml")
    (tmp_path / "u.yaml").write_text("data: x.extxyz\nlearning_rate: 1\n")
    with pytest.raises(ValueError, match="learning_rate"):
        load_config(tmp_path / "u.yaml")


DP_SCRIPT = textwrap.dedent("""
    import sys, numpy as np, torch
    torch.set_num_threads(1)
    from atomsim.training.trainer import TrainConfig, train
    data, out, npz = sys.argv[1:4]
    cfg = TrainConfig(data=data, output=out, model={"width": 8, "depth": 2, "n_rbf": 4, "cutoff": 4.0,
                      "readout_hidden": 4}, batch_size=6, epochs=1, val_fraction=0.0, test_fraction=0.0,
                      lr=5e-3, stress_weight=1.0, seed=0, ema_decay=0.5)
    res = train(cfg, log=lambda *_: None, max_steps=2)
    if res["rank"] == 0:
        np.savez(npz, *[p.detach().numpy() for p in res["model"].parameters()], size=res["size"])
""")


@pytest.mark.mpi
@pytest.mark.timeout(300)
def test_two_ranks_take_the_same_steps_as_one(dataset, tmp_path):
    """2 ranks x half of each global batch, gradient allreduce: parameters after 2 steps equal 1 rank's."""
    script = tmp_path / "dp.py"
    script.write_text(DP_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    one = subprocess.run([sys.executable, str(script), str(dataset), str(tmp_path / "o1"), str(tmp_path / "p1.npz")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([str(VENV_BIN / "mpiexec"), "-n", "2", sys.executable, str(script), str(dataset),
                          str(tmp_path / "o2"), str(tmp_path / "p2.npz")],
                         env=env, capture_output=True, text=True, timeout=240)
    assert two.returncode == 0, two.stderr[-2000:]
    p1, p2 = np.load(tmp_path / "p1.npz"), np.load(tmp_path / "p2.npz")
    assert int(p1["size"]) == 1 and int(p2["size"]) == 2  # really ran data-parallel
    for k in (f for f in p1.files if f != "size"):
        np.testing.assert_allclose(p2[k], p1[k], rtol=1e-5, atol=1e-6)


def test_extra_train_data_only_grows_the_training_split(dataset, tmp_path):
    """extra_train_data: its structures train; the val/test split of `data` is the same as without it."""
    extra = tmp_path / "more.extxyz"
    write_dataset(extra, 5, seed=11, elements=["Cu", "Ni"])
    base = _cfg(dataset, tmp_path / "a", test_fraction=0.2)
    grown = _cfg(dataset, tmp_path / "b", test_fraction=0.2, extra_train_data=[str(extra)])
    a = train(base, log=lambda *_: None, max_steps=1)
    logs = []
    b = train(grown, log=logs.append, max_steps=1)
    assert len(b["train"]) == len(a["train"]) + 5
    for part in ("val", "test"):
        assert [s.energy for s in b[part]] == [s.energy for s in a[part]] and len(a[part]) > 0
    extra_energies = {s.energy for s in read_samples(extra, 4.0)}
    assert extra_energies <= {s.energy for s in b["train"]}
    assert not extra_energies & {s.energy for s in b["val"] + b["test"]}
    assert any("extra_train_data: 5 structures" in str(m) for m in logs)
    with pytest.raises(ValueError, match="extra_train_data: .*does not exist"):
        train(_cfg(dataset, tmp_path / "c", extra_train_data=[str(tmp_path / "missing.extxyz")]),
              log=lambda *_: None, max_steps=1)
