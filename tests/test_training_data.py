"""Training data plumbing: compressed extxyz, the parse cache, least-squares references over many
elements, chemistry families, per-family errors and the structure split."""
from __future__ import annotations

import bz2
import gzip
import lzma

import numpy as np
import pytest
import torch

from atomsim.training.data import (
    ActiveClock,
    chemistry_family,
    error_summary,
    grouped_errors,
    load_samples,
    read_frames,
    save_samples,
    split_by_structure,
)
from atomsim.training.datagen import write_dataset
from atomsim.training.trainer import Sample, fit_species_energies, read_samples


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "emt.extxyz"
    write_dataset(path, 10, seed=5, elements=["Cu", "Au"])
    return path


@pytest.mark.parametrize("ext,opener", [(".xz", lzma.open), (".gz", gzip.open), (".bz2", bz2.open)])
def test_compressed_extxyz_equals_plain_read(plain, tmp_path, ext, opener):
    from ase.io import read

    comp = tmp_path / f"emt.extxyz{ext}"
    with opener(comp, "wb") as fh:
        fh.write(plain.read_bytes())
    ref = read(str(plain), index=":")
    got = read_frames(comp)
    assert len(got) == len(ref) == 10
    for a, b in zip(ref, got):
        assert np.array_equal(a.numbers, b.numbers) and np.array_equal(a.positions, b.positions)
        assert np.array_equal(a.cell.array, b.cell.array) and a.info == b.info
        assert a.get_potential_energy() == b.get_potential_energy()
        assert np.array_equal(a.get_forces(), b.get_forces()) and np.array_equal(a.get_stress(), b.get_stress())
    # the samples (neighbor graphs, labels) are the same too
    sp, sc = read_samples(plain, 4.0), read_samples(comp, 4.0)
    for a, b in zip(sp, sc):
        assert torch.equal(a.vectors, b.vectors) and a.energy == b.energy and a.family == b.family == "metals"


def test_parse_cache_round_trip_is_exact(plain, tmp_path):
    samples = read_samples(plain, 4.0)
    samples[0].config_type, samples[1].data_family = "md", "intermetallic"
    save_samples(samples, tmp_path / "c.npz", key="k1")
    assert load_samples(tmp_path / "c.npz", key="other") is None  # made for other data: ignored
    assert load_samples(tmp_path / "missing.npz", key="k1") is None
    back = load_samples(tmp_path / "c.npz", key="k1")
    assert len(back) == len(samples)
    for a, b in zip(samples, back):
        for f in ("numbers", "vectors", "receivers", "senders", "forces"):
            assert torch.equal(getattr(a, f), getattr(b, f)), f
        assert (a.stress is None) == (b.stress is None)
        assert a.stress is None or torch.equal(a.stress, b.stress)
        assert (a.energy, a.volume, a.system, a.family, a.config_type, a.data_family) == \
            (b.energy, b.volume, b.system, b.family, b.config_type, b.data_family)


def _sample(numbers, energy) -> Sample:
    n = len(numbers)
    return Sample(numbers=torch.tensor(numbers), vectors=torch.zeros(0, 3, dtype=torch.float64),
                  receivers=torch.zeros(0, dtype=torch.int64), senders=torch.zeros(0, dtype=torch.int64),
                  energy=float(energy), forces=torch.zeros(n, 3, dtype=torch.float64), stress=None,
                  volume=1.0, system="")


def test_least_squares_references_recover_89_elements_including_rare_ones():
    rng = np.random.default_rng(0)
    species = list(range(1, 90))
    true = rng.uniform(-10, -0.5, size=90)  # eV per element, index = Z
    samples = []
    for _ in range(600):  # 1-3 element structures over the first 88 elements
        els = rng.choice(88, size=rng.integers(1, 4), replace=False) + 1
        nums = rng.choice(els, size=rng.integers(1, 20))
        samples.append(_sample(nums, true[nums].sum()))
    samples.append(_sample([89, 8, 8], true[[89, 8, 8]].sum()))  # Z=89 in a single structure
    present = sorted({int(z) for s in samples for z in s.numbers})
    e0 = fit_species_energies(samples, species)
    for z in present:
        assert abs(e0[z - 1] - true[z]) < 1e-6, z
    # an element in no structure (rank-deficient) gets the mean energy per atom, not garbage
    e0 = fit_species_energies(samples, species + [90])
    mean = sum(s.energy for s in samples) / sum(s.n_atoms for s in samples)
    assert abs(e0[-1] - mean) < 1e-6
    assert max(abs(e0[z - 1] - true[z]) for z in present) < 1e-6
    # two elements only ever together 1:1: finite values whose sum is right
    pair = [_sample([3, 9] * k, k * (true[3] + true[9])) for k in (1, 2, 3)]
    e = fit_species_energies(pair, [3, 9])
    assert np.isfinite(e).all() and abs(e.sum() - (true[3] + true[9])) < 1e-6


@pytest.mark.parametrize("formula,family", [
    ("Cu", "metals"), ("CuAu3", "metals"), ("Fe2Al", "metals"), ("UPu", "metals"), ("PbSn", "metals"),
    ("Fe2O3", "oxides"), ("SrTiO3", "oxides"), ("SiO2", "oxides"), ("CO2Li", "oxides"),
    ("NaCl", "halides"), ("CsPbI3", "halides"), ("SiF4Na", "halides"),
    ("Si", "covalent"), ("SiC", "covalent"), ("GaAs", "covalent"), ("MoS2", "covalent"), ("TiN", "covalent"),
    ("C", "covalent"),
    ("H2O", "molecular/H-containing"), ("LiH", "molecular/H-containing"), ("O2", "molecular/H-containing"),
    ("NF3", "molecular/H-containing"), ("Cl2", "molecular/H-containing"),
    ("Ar", "noble gases"), ("XeF2", "noble gases"), ("HeH", "noble gases"),
])
def test_family_classifier(formula, family):
    from ase.formula import Formula

    assert chemistry_family(Formula(formula).count()) == family


def test_per_family_metrics_on_a_toy_prediction():
    # two metals with energy errors 10 and 30 meV/atom, one oxide with 20; force errors known per row
    f0 = np.zeros((2, 3))
    rows = [("Cu", 2, -3.0, -2.99, f0, f0 + 0.1, "metals", "bulk_fcc"),
            ("Au", 1, -3.0, -3.03, f0[:1], f0[:1] - 0.3, "metals", "bulk_fcc"),
            ("Fe-O", 2, -5.0, -5.02, f0, f0 + np.array([0.2, 0.0, 0.4]), "oxides", "binary_rocksalt")]
    g = grouped_errors(rows, 6)
    assert set(g) == {"metals", "oxides"}
    assert g["metals"]["energy_mae_meV_per_atom"] == pytest.approx(20.0)
    assert g["metals"]["energy_rmse_meV_per_atom"] == pytest.approx(np.sqrt((10**2 + 30**2) / 2))
    assert g["metals"]["force_mae_meV_per_A"] == pytest.approx((6 * 100 + 3 * 300) / 9)
    assert g["metals"]["n_atoms"] == 3 and g["metals"]["n_structures"] == 2
    assert g["oxides"]["energy_mae_meV_per_atom"] == pytest.approx(20.0)
    assert g["oxides"]["force_mae_meV_per_A"] == pytest.approx(200.0)
    allm = error_summary(np.array([-3.0, -3.0, -5.0]), np.array([-2.99, -3.03, -5.02]),
                         np.zeros(15), np.concatenate([np.full(6, 0.1), np.full(3, -0.3), [0.2, 0, 0.4] * 2]),
                         np.array([2, 1, 2]))
    assert allm["energy_mae_meV_per_atom"] == pytest.approx(20.0)
    assert allm["force_mae_meV_per_A"] == pytest.approx((600 + 900 + 1200) / 15)


def test_evaluate_groups_by_family_like_an_independent_recount(plain):
    from atomsim.potentials.egnn import build_egnn
    from atomsim.training.trainer import evaluate

    samples = read_samples(plain, 4.0)
    for k, s in enumerate(samples):  # pretend two families and two generators
        s.family, s.config_type = ("metals", "bulk_fcc") if k % 3 else ("oxides", "md")
    torch.manual_seed(0)
    model = build_egnn([29, 79], width=8, depth=1, n_rbf=4, cutoff=4.0).double()
    m = evaluate(model, samples, per_system=False, per_family=True)
    rows = m["_pairs"]
    for fam in ("metals", "oxides"):
        sub = [r for r in rows if r[6] == fam]
        mae = 1000 * np.mean([abs(r[2] - r[3]) for r in sub])
        assert m[f"family: {fam}"]["energy_mae_meV_per_atom"] == pytest.approx(mae)
        assert m[f"family: {fam}"]["n_structures"] == len(sub)
    assert m["config_type: md"]["n_structures"] == m["family: oxides"]["n_structures"]
    assert m["config_type: bulk"]["n_structures"] == m["family: metals"]["n_structures"]


def test_split_is_disjoint_complete_and_seed_reproducible():
    a = split_by_structure(1000, 0.1, 0.15, seed=3)
    assert [len(a[k]) for k in ("train", "val", "test")] == [750, 100, 150]
    sets = [set(a[k].tolist()) for k in ("train", "val", "test")]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    assert set().union(*sets) == set(range(1000))
    b = split_by_structure(1000, 0.1, 0.15, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    c = split_by_structure(1000, 0.1, 0.15, seed=4)
    assert not np.array_equal(a["test"], c["test"])
    d = split_by_structure(1000, 0.1, 0.15, seed=3, max_structures=200)
    assert sum(len(v) for v in d.values()) == 200


def test_active_clock_does_not_count_a_stopped_process(monkeypatch):
    import atomsim.training.data as data

    now = {"wall": 100.0, "cpu": 5.0}
    monkeypatch.setattr(data.time, "time", lambda: now["wall"])
    monkeypatch.setattr(data.time, "process_time", lambda: now["cpu"])
    clock = ActiveClock(start=10.0)
    now["wall"] += 20
    now["cpu"] += 19  # running: wall time counts
    assert clock.tick() == pytest.approx(30.0)
    now["wall"] += 600
    now["cpu"] += 2  # SIGSTOPped for ~10 minutes: only its CPU time counts
    assert clock.tick() == pytest.approx(32.0)
    now["wall"] += 40
    now["cpu"] += 12  # slow but running (shared machine, nice 19): counts in full
    assert clock.tick() == pytest.approx(72.0)


def test_huber_loss_is_the_squared_error_below_delta_and_linear_above(plain):
    from atomsim.potentials.egnn import build_egnn
    from atomsim.training.trainer import TrainConfig, batch_loss, collate

    samples = read_samples(plain, 4.0, index=":4")
    torch.manual_seed(0)
    model = build_egnn([29, 79], width=8, depth=1, n_rbf=4, cutoff=4.0).double()
    batch = collate(samples, torch.float64)
    totals = {"structures": 4, "atoms": sum(s.n_atoms for s in samples), "stress": 4}
    base = dict(data="x", energy_weight=3.0, force_weight=2.0, stress_weight=5.0)
    mse = batch_loss(model, batch, TrainConfig(**base), totals)
    wide = TrainConfig(**base, loss="huber", huber_delta_energy=1e6, huber_delta_force=1e6, huber_delta_stress=1e6)
    assert float(batch_loss(model, batch, wide, totals)) == pytest.approx(float(mse), rel=1e-12)
    # with tiny deltas every term is linear: 2 * delta * |err| (minus delta^2), far below the MSE here
    tiny = TrainConfig(**base, loss="huber", huber_delta_energy=1e-9, huber_delta_force=1e-9, huber_delta_stress=1e-9)
    assert 0 < float(batch_loss(model, batch, tiny, totals)) < 1e-6


def test_time_limits_stop_inside_an_epoch_and_keep_a_checkpoint(plain, tmp_path):
    from atomsim.training.trainer import TrainConfig, train

    samples = read_samples(plain, 4.0)
    base = dict(data=str(plain), model={"width": 8, "depth": 1, "n_rbf": 4, "cutoff": 4.0, "readout_hidden": 4},
                batch_size=1, epochs=5, val_fraction=0.2, test_fraction=0.0, seed=0)
    past = train(TrainConfig(**base, output=str(tmp_path / "a"), stop_at="2000-01-01T00:00:00"), samples=samples,
                 log=lambda *_: None)
    assert past["stopped"] == "stop_at" and past["history"][0]["step"] == 0 and past["history"][0]["partial_epoch"]
    assert (tmp_path / "a" / "best" / "model.safetensors").is_file()
    full = train(TrainConfig(**{**base, "epochs": 1}, output=str(tmp_path / "b")), samples=samples,
                 log=lambda *_: None)
    short = train(TrainConfig(**base, output=str(tmp_path / "c"), max_minutes=1e-9), samples=samples,
                  log=lambda *_: None)
    assert short["stopped"] == "time budget" and len(short["history"]) == 1
    assert short["history"][0]["step"] < full["history"][0]["step"]  # stopped inside the first epoch


def test_train_fraction_keeps_val_and_test_and_takes_a_prefix_of_train(plain, tmp_path):
    from atomsim.training.trainer import TrainConfig, train

    samples = read_samples(plain, 4.0)
    base = dict(data=str(plain), model={"width": 4, "depth": 1, "n_rbf": 2, "cutoff": 4.0, "readout_hidden": 2},
                batch_size=4, epochs=1, val_fraction=0.2, test_fraction=0.2, seed=1)
    full = train(TrainConfig(**base, output=str(tmp_path / "a")), samples=samples, log=lambda *_: None)
    half = train(TrainConfig(**base, output=str(tmp_path / "b"), train_fraction=0.5), samples=samples,
                 log=lambda *_: None)
    assert np.array_equal(full["split"]["val"], half["split"]["val"])
    assert np.array_equal(full["split"]["test"], half["split"]["test"])
    assert np.array_equal(half["split"]["train"], full["split"]["train"][:3]) and len(full["split"]["train"]) == 6


def test_val_max_structures_validates_on_a_prefix_of_val_only(plain, tmp_path):
    from atomsim.training.trainer import TrainConfig, evaluate, train

    samples = read_samples(plain, 4.0)
    base = dict(data=str(plain), model={"width": 4, "depth": 1, "n_rbf": 2, "cutoff": 4.0, "readout_hidden": 2},
                batch_size=4, epochs=1, val_fraction=0.3, test_fraction=0.2, seed=1)
    full = train(TrainConfig(**base, output=str(tmp_path / "a")), samples=samples, log=lambda *_: None)
    capped = train(TrainConfig(**base, output=str(tmp_path / "b"), val_max_structures=1), samples=samples,
                   log=lambda *_: None)
    assert np.array_equal(full["split"]["train"], capped["split"]["train"])
    assert np.array_equal(full["split"]["test"], capped["split"]["test"])
    assert len(full["split"]["val"]) == 3 and np.array_equal(capped["split"]["val"], full["split"]["val"][:1])
    # the epoch's validation error is the (end-of-epoch) EMA model's error on that one structure
    again = evaluate(capped["ema"], capped["val"], per_system=False)["all"]
    assert capped["history"][0]["val_F_mae_meV_A"] == pytest.approx(again["force_mae_meV_per_A"], rel=1e-6)


@pytest.mark.parametrize("name", ["train_universal.yaml", "train_universal_v1.yaml", "train_emt.yaml"])
def test_training_examples_validate(name):
    from pathlib import Path

    from atomsim.training.trainer import load_config

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(root / "examples" / name)
    assert cfg.model.cutoff == 5.0 and cfg.threads in (1, 2)  # set: a run must not take every core unasked
    if name.startswith("train_universal"):  # long runs: output outside the repository, bounded cost
        assert not Path(cfg.output).resolve().is_relative_to(root) and (cfg.max_minutes or cfg.epochs <= 100)
    if name == "train_universal_v1.yaml":  # stage 2 starts from stage 1, bundled by name
        from atomsim.training.warm_start import load_source

        assert cfg.init_from == "egnn-universal-v0" and len(load_source(cfg.init_from).species) == 89
