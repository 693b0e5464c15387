"""`atomsim train train.yaml`: fit an EGNN potential to extxyz energies/forces(/stress).

Recipe (what makes small GNN potentials train reliably): per-species reference
energies fitted first by least squares so the network learns only the
interaction energy; an energy scale from the residual spread; loss
w_E * MSE(E/atom) + w_F * MSE(F) (+ w_S * MSE(stress)); AdamW with cosine or
plateau LR; an exponential moving average (EMA) of the weights used for
validation and the saved model; early stopping; a resumable training state.

Batches are disjoint unions of several structures in one graph. Data
parallelism: under ``mpiexec -n R`` each rank takes a slice of every global
batch, losses are normalised by global counts and gradients summed over the
ranks by the engine's Comm (``engine/comm.py``: one buffer allreduce per step),
so R ranks compute the same update as one.
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Optional, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from atomsim.engine.comm import Comm, world_comm
from atomsim.kernels.graph import Graph, csr_row_ptr
from atomsim.kernels.neighbors import neighbor_list
from atomsim.kernels.threads import configure_threads, ranks_per_node
from atomsim.potentials.egnn import EGNNConfig, EGNNPotential, count_parameters

from .data import ActiveClock


# --------------------------------------------------------------------------- config
class ModelSection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    width: int = Field(64, ge=1)
    depth: int = Field(3, ge=1)
    n_rbf: int = Field(8, ge=1)
    cutoff: float = Field(5.0, gt=0)
    readout_hidden: int = Field(32, ge=1)
    # the E(n)-equivariant coordinate update (potentials/egnn_equivariant.py) and its edge MLP width
    equivariant: bool = False
    coord_hidden: int = Field(16, ge=1)
    species: Optional[list[str]] = None  # default: every element in the data


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data: str  # extxyz with energy, forces (and stress) per frame
    # where each frame keeps its labels: calculator results, else atoms.info (energy, stress) or
    # atoms.arrays (forces); MACE-style data sets use REF_energy / REF_forces / REF_stress
    energy_key: str = Field("energy", min_length=1)
    forces_key: str = Field("forces", min_length=1)
    stress_key: str = Field("stress", min_length=1)
    output: str = "train_out"
    name: str = "egnn"
    model: ModelSection = ModelSection()
    energy_weight: float = Field(1.0, ge=0)
    force_weight: float = Field(10.0, ge=0)
    stress_weight: float = Field(0.0, ge=0)
    # "huber": squared error below delta, linear above (per-atom energy, force component, stress
    # component): teacher labels far from equilibrium (|F| up to ~50 eV/Å) then do not dominate the fit
    loss: Literal["mse", "huber"] = "mse"
    huber_delta_energy: float = Field(0.1, gt=0)  # eV/atom
    huber_delta_force: float = Field(1.0, gt=0)  # eV/Å
    huber_delta_stress: float = Field(0.05, gt=0)  # eV/Å^3
    batch_size: int = Field(8, ge=1)  # structures per global batch
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-6, ge=0)
    schedule: Literal["cosine", "plateau"] = "cosine"
    epochs: int = Field(50, ge=1)
    # training-time budget over all resumes; time while the process is stopped (SIGSTOP) is not counted
    max_minutes: Optional[float] = Field(None, gt=0)
    stop_at: Optional[datetime] = None  # absolute wall-clock stop (ISO 8601, e.g. 2026-12-02T06:05:00Z)
    cache: bool = True  # keep the parsed data + neighbor graphs as <output>/data_cache.npz
    ema_decay: float = Field(0.99, ge=0, lt=1)
    val_fraction: float = Field(0.1, ge=0, lt=1)
    test_fraction: float = Field(0.1, ge=0, lt=1)
    max_structures: Optional[int] = Field(None, ge=1)  # use only the first N (after shuffle)
    # train on this fraction of the training split; val/test stay the same (learning curves L(D))
    train_fraction: float = Field(1.0, gt=0, le=1)
    # validate each epoch on only the first N of the val split: short runs (scaling-law sweeps) would
    # otherwise spend more time validating than training; train/test splits are unchanged
    val_max_structures: Optional[int] = Field(None, ge=1)
    patience: int = Field(20, ge=1)  # epochs without validation improvement
    seed: int = 0
    dtype: Literal["float32", "float64"] = "float32"
    threads: Optional[int] = Field(None, ge=1)
    # message-passing kernels while training (ATOMSIM_KERNELS, unless that is set): the force loss
    # needs a double backward, which the fused CPU kernel hands to the reference anyway, so its
    # forward is extra work (measured 2x the CPU time per step of "reference" on this data)
    kernels: Literal["reference", "numba", "triton", "auto"] = "reference"
    card: dict = Field(default_factory=dict)  # extra model-card sections (description, data_command, ...)
    # start from a trained EGNN (bundled name or checkpoint folder) instead of random weights: fine-tuning,
    # or growing n_rbf / depth / species function-preservingly (atomsim/training/warm_start.py)
    init_from: Optional[str] = None
    # more labelled files whose structures only ever train (grown data: more generator jobs, active-learning
    # snapshots); the val/test split of `data` is unchanged, so held-out errors stay comparable across runs
    extra_train_data: list[str] = Field(default_factory=list)


def load_config(path: str | Path) -> TrainConfig:
    import yaml
    from pydantic import ValidationError

    raw = yaml.safe_load(Path(path).read_text()) or {}
    try:
        cfg = TrainConfig(**raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(k) for k in err["loc"])
        raise ValueError(f"{path}: {key}: {err['msg']}") from None
    base = Path(path).resolve().parent
    if not Path(cfg.data).is_absolute():
        cfg.data = str(base / cfg.data)
    if not Path(cfg.output).is_absolute():
        cfg.output = str(base / cfg.output)
    return cfg


# --------------------------------------------------------------------------- data
@dataclass
class Sample:
    numbers: torch.Tensor  # (n,)
    vectors: torch.Tensor  # (E, 3) float64 edge vectors x_j - x_i + S@cell
    receivers: torch.Tensor
    senders: torch.Tensor
    energy: float
    forces: torch.Tensor  # (n, 3)
    stress: Optional[torch.Tensor]  # (3, 3) ASE sign, eV/Å^3
    volume: float
    system: str  # sorted element symbols joined by '-'
    family: str = ""  # chemistry family from the elements (atomsim.training.data.chemistry_family)
    config_type: str = ""  # the data set's generator label, when it has one
    data_family: str = ""  # the data set's own ``family`` label, when it has one

    @property
    def n_atoms(self) -> int:
        return int(self.numbers.shape[0])


def read_samples(path: str | Path, cutoff: float, index: str = ":", energy_key: str = "energy",
                 forces_key: str = "forces", stress_key: str = "stress") -> list[Sample]:
    """Read labelled frames and precompute their neighbor graphs (positions are fixed).

    The ``*_key`` names say where the labels are (see :func:`frame_label`), e.g. ``REF_energy``.
    Compressed files (.xz, .gz, .bz2) are read through :func:`atomsim.training.data.read_frames`.
    """
    from .data import read_frames

    frames = read_frames(path, index=index)
    keys = dict(energy_key=energy_key, forces_key=forces_key, stress_key=stress_key)
    return [atoms_to_sample(a, cutoff, frame=k, **keys) for k, a in enumerate(frames)]


def frame_label(atoms, key: str, per_atom: bool):
    """A frame's label ``key``: the calculator's result, else ``atoms.arrays`` (per-atom) or ``atoms.info``.

    Why both: ASE's extxyz reader puts the standard names (energy, forces, stress) into a
    SinglePointCalculator and any other name (MACE's REF_energy, REF_forces) into info/arrays.
    """
    res = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    if key in res:
        return res[key]
    store = atoms.arrays if per_atom else atoms.info
    return store.get(key)


def _missing(atoms, frame: int, what: str, key: str) -> ValueError:
    res = sorted(getattr(atoms.calc, "results", {}) if atoms.calc is not None else {})
    info = sorted(k for k in atoms.info if k not in ("step",))
    arrays = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
    return ValueError(f"training data: frame {frame} ({atoms.get_chemical_formula()}) has no {what} under "
                      f"`{key}` ({what}_key); its calculator results: {res or 'none'}, info keys: "
                      f"{info or 'none'}, per-atom arrays: {arrays or 'none'}. Set {what}_key to the name the "
                      "data set uses (e.g. REF_energy / REF_forces for MACE-style files)")


def atoms_to_sample(atoms, cutoff: float, *, frame: int = 0, energy_key: str = "energy",
                    forces_key: str = "forces", stress_key: str = "stress") -> Sample:
    pos = atoms.get_positions()
    cell = atoms.cell.array
    i, j, S = neighbor_list(pos, cell, atoms.pbc, cutoff)
    vec = pos[j] - pos[i] + S @ cell
    energy = frame_label(atoms, energy_key, per_atom=False)
    if energy is None:
        raise _missing(atoms, frame, "energy", energy_key)
    forces = frame_label(atoms, forces_key, per_atom=True)
    if forces is None:
        raise _missing(atoms, frame, "forces", forces_key)
    stress = None
    s = frame_label(atoms, stress_key, per_atom=False)
    if s is not None and all(atoms.pbc):
        s = np.asarray(s, dtype=np.float64)
        if s.shape == (6,):
            from ase.stress import voigt_6_to_full_3x3_stress

            s = voigt_6_to_full_3x3_stress(s)
        elif s.shape == (9,):  # MACE/extxyz writes a 3x3 stress as 9 numbers
            s = s.reshape(3, 3)
        if s.shape != (3, 3):
            raise ValueError(f"training data: frame {frame}: `{stress_key}` (stress_key) has shape "
                             f"{s.shape}; expected 6 (Voigt), 9 or 3x3 values in eV/Å^3")
        stress = torch.tensor(s, dtype=torch.float64)
    syms = sorted(set(atoms.get_chemical_symbols()))
    from .data import chemistry_family

    return Sample(
        numbers=torch.tensor(atoms.numbers, dtype=torch.int64),
        vectors=torch.tensor(vec, dtype=torch.float64),
        receivers=torch.tensor(i, dtype=torch.int64), senders=torch.tensor(j, dtype=torch.int64),
        energy=float(energy), forces=torch.tensor(np.asarray(forces), dtype=torch.float64),
        stress=stress, volume=float(abs(atoms.cell.volume)) if all(atoms.pbc) else 0.0,
        system="-".join(syms), family=chemistry_family(syms),
        config_type=str(atoms.info.get("config_type", "")), data_family=str(atoms.info.get("family", "")),
    )


@dataclass
class Batch:
    numbers: torch.Tensor
    graph: Graph
    node_batch: torch.Tensor  # (N,) structure index of each node
    edge_batch: torch.Tensor  # (E,)
    n_atoms: torch.Tensor  # (B,) float64
    energy: torch.Tensor  # (B,) float64
    forces: torch.Tensor  # (N, 3) float64
    stress: torch.Tensor  # (B, 3, 3) float64 (zeros where absent)
    has_stress: torch.Tensor  # (B,) bool
    volume: torch.Tensor  # (B,)


def collate(samples: Sequence[Sample], dtype: torch.dtype) -> Batch:
    """Disjoint union of structures: node indices offset, receivers stay sorted."""
    offs, o = [], 0
    for s in samples:
        offs.append(o)
        o += s.n_atoms
    n = o
    recv = torch.cat([s.receivers + k for s, k in zip(samples, offs)]) if samples else torch.zeros(0, dtype=torch.int64)
    send = torch.cat([s.senders + k for s, k in zip(samples, offs)])
    vec = torch.cat([s.vectors for s in samples]).to(dtype)
    graph = Graph(receivers=recv, senders=send, edge_vectors=vec, n_nodes=n, n_local=n,
                  row_ptr=csr_row_ptr(recv, n))
    idx = torch.arange(len(samples))
    return Batch(
        numbers=torch.cat([s.numbers for s in samples]), graph=graph,
        node_batch=torch.repeat_interleave(idx, torch.tensor([s.n_atoms for s in samples])),
        edge_batch=torch.repeat_interleave(idx, torch.tensor([int(s.receivers.shape[0]) for s in samples])),
        n_atoms=torch.tensor([s.n_atoms for s in samples], dtype=torch.float64),
        energy=torch.tensor([s.energy for s in samples], dtype=torch.float64),
        forces=torch.cat([s.forces for s in samples]),
        stress=torch.stack([s.stress if s.stress is not None else torch.zeros(3, 3, dtype=torch.float64)
                            for s in samples]),
        has_stress=torch.tensor([s.stress is not None for s in samples]),
        volume=torch.tensor([max(s.volume, 1e-12) for s in samples], dtype=torch.float64),
    )


def predict(model: EGNNPotential, batch: Batch, training: bool, want_stress: bool = False):
    """Per-structure energies (B,), forces (N, 3), stress (B, 3, 3) via autograd on edge vectors."""
    g = batch.graph
    vec = g.edge_vectors.detach().requires_grad_(True)
    graph = Graph(receivers=g.receivers, senders=g.senders, edge_vectors=vec, n_nodes=g.n_nodes,
                  n_local=g.n_local, row_ptr=g.row_ptr)
    with torch.enable_grad():
        e_atoms = model.per_atom_energy(batch.numbers, graph)
        energy = torch.zeros(len(batch.energy), dtype=torch.float64).index_add_(0, batch.node_batch, e_atoms)
        (grad,) = torch.autograd.grad(energy.sum(), vec, create_graph=training)
    grad = grad.to(torch.float64)
    forces = torch.zeros((g.n_nodes, 3), dtype=torch.float64)
    forces = forces.index_add(0, g.receivers, grad).index_add(0, g.senders, -grad)
    stress = None
    if want_stress:
        outer = (vec.to(torch.float64).unsqueeze(-1) * grad.unsqueeze(-2)).reshape(-1, 9)
        vir = torch.zeros((len(batch.energy), 9), dtype=torch.float64).index_add(0, batch.edge_batch, outer)
        vir = vir.reshape(-1, 3, 3)
        stress = 0.5 * (vir + vir.transpose(1, 2)) / batch.volume[:, None, None]
    return energy, forces, stress


def batch_loss(model, batch: Batch, cfg: TrainConfig, totals: dict, training: bool = True):
    """Loss whose sums are divided by GLOBAL counts, so rank contributions add up exactly."""
    want_stress = cfg.stress_weight > 0 and bool(batch.has_stress.any())
    energy, forces, stress = predict(model, batch, training, want_stress)
    huber = cfg.loss == "huber"

    def sq(err: torch.Tensor, delta: float) -> torch.Tensor:  # 2 x Huber = err^2 below delta
        if not huber:
            return err**2
        return 2.0 * torch.nn.functional.huber_loss(err, torch.zeros_like(err), reduction="none", delta=delta)
    de = (energy - batch.energy) / batch.n_atoms
    loss = cfg.energy_weight * sq(de, cfg.huber_delta_energy).sum() / totals["structures"]
    loss = loss + cfg.force_weight * sq(forces - batch.forces, cfg.huber_delta_force).sum() / (3.0 * totals["atoms"])
    if want_stress:
        ds = (stress - batch.stress)[batch.has_stress]
        loss = loss + cfg.stress_weight * sq(ds, cfg.huber_delta_stress).sum() / (9.0 * max(totals["stress"], 1))
    return loss


# --------------------------------------------------------------------------- fitting helpers
def fit_species_energies(samples: Sequence[Sample], species: Sequence[int], ridge: float = 1e-8) -> np.ndarray:
    """Least-squares E ≈ sum_Z count_Z E0[Z], ridge-regularised towards the mean energy per atom.

    The ridge (in atom counts squared) only matters where the counts are rank-deficient: an element
    in no structure gets the mean energy per atom, and elements that always appear together in a
    fixed ratio get finite values with the right weighted sum instead of diverging.
    """
    col = {z: k for k, z in enumerate(species)}
    A = np.zeros((len(samples), len(species)))
    y = np.array([s.energy for s in samples], dtype=np.float64)
    for r, s in enumerate(samples):
        for z, c in zip(*np.unique(s.numbers.numpy(), return_counts=True)):
            if int(z) not in col:
                raise ValueError(f"model.species: element Z={int(z)} is in the data but not in the species list")
            A[r, col[int(z)]] = c
    prior = float(y.sum() / max(A.sum(), 1.0))
    # ridge as extra rows sqrt(ridge) * I (lstsq on the stacked system: no squared condition number)
    stacked = np.vstack([A, np.sqrt(ridge) * np.eye(len(species))])
    rhs = np.concatenate([y - A.sum(1) * prior, np.zeros(len(species))])
    delta = np.linalg.lstsq(stacked, rhs, rcond=None)[0]
    return prior + delta


def init_model(cfg: TrainConfig, samples: Sequence[Sample],
               all_samples: Optional[Sequence[Sample]] = None) -> EGNNPotential:
    """A fresh model whose references/scale are fitted on ``samples`` (the training split).

    Its species are ``model.species`` or every element in ``all_samples`` (default ``samples``),
    so an element seen only in validation/test data still has an embedding row.
    """
    from ase.data import atomic_numbers

    if cfg.model.species:
        bad = [s for s in cfg.model.species if s not in atomic_numbers]
        if bad:
            raise ValueError(f"model.species: unknown element(s) {bad}")
        species = sorted(atomic_numbers[s] for s in cfg.model.species)
    else:
        species = sorted({int(z) for s in (all_samples or samples) for z in s.numbers.tolist()})
    e0 = fit_species_energies(samples, species)
    resid = [(s.energy - sum(e0[species.index(int(z))] for z in s.numbers.tolist())) / s.n_atoms for s in samples]
    scale = float(np.std(resid)) if len(resid) > 1 else 1.0
    avg_nn = float(np.mean([s.receivers.shape[0] / max(s.n_atoms, 1) for s in samples]))
    m = cfg.model
    model = EGNNPotential(EGNNConfig(species=species, width=m.width, depth=m.depth, n_rbf=m.n_rbf,
                                     cutoff=m.cutoff, readout_hidden=m.readout_hidden,
                                     equivariant=m.equivariant, coord_hidden=m.coord_hidden,
                                     avg_num_neighbors=max(avg_nn, 1.0)))
    model.species_energy.copy_(torch.tensor(e0, dtype=torch.float64))
    model.energy_scale.fill_(max(scale, 1e-3))
    return model


def split_indices(n: int, cfg: TrainConfig) -> dict[str, np.ndarray]:
    """Train/val/test by whole structure (see :func:`atomsim.training.data.split_by_structure`);
    ``train_fraction`` keeps a prefix of the training part, val/test unchanged;
    ``val_max_structures`` keeps a prefix of the val part, train/test unchanged."""
    from .data import split_by_structure

    split = split_by_structure(n, cfg.val_fraction, cfg.test_fraction, cfg.seed, cfg.max_structures)
    if cfg.train_fraction < 1.0:
        split["train"] = split["train"][: max(1, int(round(cfg.train_fraction * len(split["train"]))))]
    if cfg.val_max_structures:
        split["val"] = split["val"][: cfg.val_max_structures]
    return split


def load_training_samples(cfg: TrainConfig, log=print, write_cache: bool = True) -> list[Sample]:
    """Parse ``cfg.data`` (or reuse ``<output>/data_cache.npz`` made from the same file and settings).

    ``write_cache``: whether this process writes the cache (one MPI rank does).
    """
    from .data import cache_key, load_samples, save_samples

    t = time.time()
    cache = Path(cfg.output) / "data_cache.npz"
    key = cache_key(cfg.data, cutoff=cfg.model.cutoff, energy_key=cfg.energy_key,
                    forces_key=cfg.forces_key, stress_key=cfg.stress_key, version=1)
    samples = load_samples(cache, key) if cfg.cache else None
    if samples is not None:
        log(f"data: {len(samples)} structures from the cache {cache} ({time.time() - t:.1f} s)")
        return samples
    samples = read_samples(cfg.data, cfg.model.cutoff, energy_key=cfg.energy_key,
                           forces_key=cfg.forces_key, stress_key=cfg.stress_key)
    log(f"data: {len(samples)} structures, {sum(s.n_atoms for s in samples)} atoms parsed from {cfg.data} "
        f"with neighbor graphs ({time.time() - t:.1f} s)")
    if cfg.cache and write_cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_samples(samples, cache, key)
    return samples


def check_extra_data(cfg: TrainConfig) -> None:
    """Name a missing ``extra_train_data`` file before the (long) parse of ``data``, not after it."""
    for path in cfg.extra_train_data:
        if not Path(path).is_file():
            raise ValueError(f"extra_train_data: {path} does not exist")


def load_extra_samples(cfg: TrainConfig, path: str) -> list[Sample]:
    """One ``extra_train_data`` file, parsed with the run's cutoff and label keys."""
    return read_samples(path, cfg.model.cutoff, energy_key=cfg.energy_key, forces_key=cfg.forces_key,
                        stress_key=cfg.stress_key)


# --------------------------------------------------------------------------- distributed
def allreduce_gradients(model: torch.nn.Module, comm: Comm) -> None:
    """Sum every parameter's gradient over the ranks in ONE buffer allreduce (no-op on one rank)."""
    if comm.size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    flat = comm.allreduce_sum(torch.cat([g.reshape(-1) for g in grads]))
    k = 0
    for p in model.parameters():
        n = p.numel()
        p.grad = flat[k:k + n].view_as(p).clone()
        k += n


def allreduce_scalar(x: float, comm: Comm) -> float:
    if comm.size == 1:
        return x
    return float(comm.allreduce_sum(np.array([x], dtype=np.float64))[0])


# --------------------------------------------------------------------------- evaluation
@torch.no_grad()
def _copy_params(dst: torch.nn.Module, src: torch.nn.Module) -> None:
    for pd, ps in zip(dst.parameters(), src.parameters()):
        pd.copy_(ps)


def evaluate(model: EGNNPotential, samples: Sequence[Sample], batch_size: int = 16,
             per_system: bool = True, per_family: bool = False) -> dict:
    """MAE of energy per atom (meV/atom) and force components (meV/Å), overall and per element system.

    ``per_family`` adds one entry per chemistry family (``family: <name>``) and per generator
    (``config_type: <kind>``). ``_pairs`` holds one row per structure: (system, n_atoms, E_ref/atom,
    E_model/atom, F_ref, F_model, family, config_type).
    """
    from .data import grouped_errors

    dtype = model.dtype
    rows = []
    for k in range(0, len(samples), batch_size):
        chunk = samples[k:k + batch_size]
        b = collate(chunk, dtype)
        e, f, _ = predict(model, b, training=False)
        e, f = e.detach(), f.detach()
        fo = 0
        for s, ep in zip(chunk, e.tolist()):
            n = s.n_atoms
            rows.append((s.system, n, s.energy / n, ep / n, s.forces.numpy(), f[fo:fo + n].numpy(),
                         s.family, s.config_type))
            fo += n
    if not rows:
        return {"_pairs": rows}
    out = {"all": grouped_errors([r[:6] + ("all",) for r in rows], 6)["all"]}
    if per_family:
        for name, m in grouped_errors(rows, 6).items():
            out[f"family: {name}"] = m
        kinds = [r[:7] + (r[7].split("_")[0] or "unlabelled",) for r in rows]
        for name, m in grouped_errors(kinds, 7).items():
            out[f"config_type: {name}"] = m
    if per_system:
        unary = [r for r in rows if "-" not in r[0]]
        out.update(grouped_errors(unary, 0))
        alloys = [r[:6] + ("alloys (2-3 elements)",) for r in rows if "-" in r[0]]
        if alloys:
            out.update(grouped_errors(alloys, 6))
    out["_pairs"] = rows
    return out


def parity_plot(rows, path: str | Path, title: str) -> None:
    """Energy and force parity of evaluate()'s rows, coloured by chemistry family when rows carry one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .data import FAMILIES

    fig, ax = plt.subplots(1, 2, figsize=(9, 4.2), dpi=90)
    groups = sorted({r[6] for r in rows if len(r) > 6 and r[6]}, key=lambda f: (f not in FAMILIES, f))
    sets = [(g, [r for r in rows if r[6] == g]) for g in groups] or [("", list(rows))]
    for label, rs in sets:
        et, ep = np.array([r[2] for r in rs]), np.array([r[3] for r in rs])
        ft, fp = np.concatenate([r[4].ravel() for r in rs]), np.concatenate([r[5].ravel() for r in rs])
        ax[0].scatter(et, ep, s=3, alpha=0.5, label=f"{label} ({len(rs)})" if label else None)
        ax[1].scatter(ft, fp, s=2, alpha=0.4)
    for a, k, lab in ((ax[0], (2, 3), "energy (eV/atom)"), (ax[1], (4, 5), "force component (eV/Å)")):
        vals = np.concatenate([np.ravel(r[j]) for r in rows for j in k])
        lo, hi = float(vals.min()), float(vals.max())
        a.plot([lo, hi], [lo, hi], "k--", lw=0.8)
        a.set_xlabel(f"reference {lab}")
        a.set_ylabel(f"model {lab}")
    if groups:
        ax[0].legend(fontsize=7, markerscale=3, loc="upper left")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(str(path))
    plt.close(fig)


def family_table(metrics_by_split: dict[str, dict]) -> str:
    """Markdown table of energy/force MAE per split and chemistry family (evaluate(per_family=True))."""
    lines = ["| split | group | structures | atoms | energy MAE (meV/atom) | force MAE (meV/Å) |",
             "|---|---|---|---|---|---|"]
    for split, metrics in metrics_by_split.items():
        for key, m in metrics.items():
            if key == "all" or key.startswith(("family: ", "config_type: ")):
                lines.append(f"| {split} | {key} | {m['n_structures']} | {m['n_atoms']} | "
                             f"{m['energy_mae_meV_per_atom']:.1f} | {m['force_mae_meV_per_A']:.0f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- training loop
def _warmup(total: int) -> int:
    return max(1, min(100, total // 20))


def _lr_factor(cfg: TrainConfig, step: int, total: int, time_fraction: float = 0.0) -> float:
    """Linear warm-up, then cosine to 2% over the steps or the time budget, whichever ends first."""
    warm = _warmup(total)
    if step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        frac = min(1.0, max((step - warm) / max(1, total - warm), time_fraction))
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * frac))
    return 1.0


def train(cfg: TrainConfig, resume: bool = False, log=print, samples: Optional[list[Sample]] = None,
          max_steps: Optional[int] = None) -> dict:
    """Train per ``cfg``; returns metrics. ``max_steps`` stops early (tests)."""
    forced = os.environ.get("ATOMSIM_KERNELS")
    if cfg.kernels != "auto" and not forced:
        os.environ["ATOMSIM_KERNELS"] = cfg.kernels
    try:
        return _train(cfg, resume, log, samples, max_steps)
    finally:
        if cfg.kernels != "auto" and not forced:
            os.environ.pop("ATOMSIM_KERNELS", None)


def _train(cfg: TrainConfig, resume: bool, log, samples: Optional[list[Sample]], max_steps: Optional[int]) -> dict:
    comm = world_comm()  # serial (size 1) unless launched on several MPI ranks
    comm.install_abort_handler()  # a rank that fails must not leave the others waiting
    rank, size = comm.rank, comm.size
    # torch, numba and BLAS alike; unset: the cores available / ranks on this node (kernels/threads.py)
    configure_threads(cfg.threads or "auto", ranks_per_node=ranks_per_node(comm))
    torch.manual_seed(cfg.seed)
    dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
    out = Path(cfg.output)
    check_extra_data(cfg)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
    if samples is None:
        samples = load_training_samples(cfg, log=log if rank == 0 else (lambda *a, **k: None),
                                        write_cache=rank == 0)
    split = split_indices(len(samples), cfg)
    train_s = [samples[k] for k in split["train"]]
    for path in cfg.extra_train_data:
        extra = load_extra_samples(cfg, path)
        train_s += extra
        if rank == 0:
            log(f"extra_train_data: {len(extra)} structures from {path} (training only)")
    val_s = [samples[k] for k in split["val"]]
    test_s = [samples[k] for k in split["test"]]
    if not train_s:
        raise ValueError(f"data: {cfg.data} leaves no training structures after the val/test split")

    model = init_model(cfg, train_s, samples).to(dtype)
    ema = init_model(cfg, train_s, samples).to(dtype)
    state_file = out / "train_state.pt"
    if cfg.init_from and not (resume and state_file.exists()):
        from .warm_start import load_source, warm_start

        grown = warm_start(model, load_source(cfg.init_from))
        ema.load_state_dict(model.state_dict())
        if rank == 0:
            log(f"init_from {cfg.init_from}: weights copied (n_rbf {grown['source_n_rbf']} -> {cfg.model.n_rbf}, "
                f"depth {grown['source_depth']} -> {cfg.model.depth}, new species {grown['new_species'] or 'none'})")
    _copy_params(ema, model)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=max(2, cfg.patience // 4)) \
        if cfg.schedule == "plateau" else None
    steps_per_epoch = math.ceil(len(train_s) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    start_epoch, step, best, bad_epochs, history, active0, cpu0 = 0, 0, float("inf"), 0, [], 0.0, 0.0
    if resume and state_file.exists():
        st = torch.load(state_file, weights_only=True)
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        if plateau is not None and "plateau" in st:
            plateau.load_state_dict(st["plateau"])
        start_epoch, step, best, bad_epochs = int(st["epoch"]), int(st["step"]), float(st["best"]), int(st["bad"])
        history = json.loads(st["history"])
        active0 = float(st.get("active_s", 0.0))
        cpu0 = float(st.get("cpu_s", 0.0))
        log(f"resumed from {state_file} at epoch {start_epoch}")
    if rank == 0:
        log(f"{cfg.name}: {count_parameters(model):,} parameters, {len(train_s)} train / {len(val_s)} val / "
            f"{len(test_s)} test structures, {size} rank(s)")

    t0, clock, cpu_start = time.time(), ActiveClock(active0), time.process_time()
    budget = 60 * cfg.max_minutes if cfg.max_minutes else None
    stop_at = None
    if cfg.stop_at:  # a time without a zone is UTC
        at = cfg.stop_at if cfg.stop_at.tzinfo else cfg.stop_at.replace(tzinfo=timezone.utc)
        stop_at = at.timestamp()
    stopped = "epochs"

    def _time_fraction() -> float:
        """Fraction of the time budget used (the larger of the two limits); rank 0's clock decides."""
        if not budget and not stop_at:
            return 0.0
        frac = 0.0
        if rank == 0:
            active = clock.tick()
            if budget:
                frac = active / budget
            if stop_at:  # counts from the start of this run; the cosine ends at the stop time
                frac = max(frac, (time.time() - t0) / max(stop_at - t0, 1.0) if stop_at > t0 else 1.0)
        return allreduce_scalar(frac, comm)
    for epoch in range(start_epoch, cfg.epochs):
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(train_s))
        model.train()
        ep_loss, out_of_time, step0 = 0.0, False, step
        for k in range(0, len(order), cfg.batch_size):
            glob = [train_s[q] for q in order[k:k + cfg.batch_size]]
            totals = {"structures": len(glob), "atoms": sum(s.n_atoms for s in glob),
                      "stress": sum(s.stress is not None for s in glob)}
            mine = glob[rank::size]
            frac = _time_fraction()
            if frac >= 1.0:  # the time budget or stop_at ran out inside the epoch: stop here
                out_of_time = True
                break
            if plateau is None or step <= _warmup(total_steps):
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * _lr_factor(cfg, step, total_steps, frac)
            opt.zero_grad(set_to_none=True)
            if mine:
                loss = batch_loss(model, collate(mine, dtype), cfg, totals)
                loss.backward()
                lval = float(loss.detach())
            else:
                lval = 0.0
            allreduce_gradients(model, comm)
            opt.step()
            with torch.no_grad():
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))
                for pe, pm in zip(ema.parameters(), model.parameters()):
                    pe.mul_(decay).add_(pm, alpha=1 - decay)
            ep_loss += allreduce_scalar(lval, comm)
            step += 1
            if max_steps is not None and step >= max_steps:
                break
        # validation with EMA weights (every rank computes it: cheap and keeps ranks in step)
        vm = evaluate(ema, val_s, per_system=False) if val_s else {}
        vloss = (vm["all"]["energy_rmse_meV_per_atom"] ** 2 * cfg.energy_weight
                 + vm["all"]["force_rmse_meV_per_A"] ** 2 * cfg.force_weight) if vm else ep_loss
        if plateau is not None and step > _warmup(total_steps):
            plateau.step(vloss)
        improved = vloss < best
        if improved:
            best, bad_epochs = vloss, 0
        else:
            bad_epochs += 1
        active = clock.tick()
        elapsed = active - active0
        per_epoch = elapsed / (epoch - start_epoch + 1)
        eta = per_epoch * (cfg.epochs - epoch - 1)  # capped by the time limits, which end the run first
        if budget:
            eta = min(eta, max(budget - active, 0.0))
        if stop_at:
            eta = min(eta, max(stop_at - time.time(), 0.0))
        rec = {"epoch": epoch + 1, "step": step, "train_loss": ep_loss / max(step - step0, 1),
               "lr": opt.param_groups[0]["lr"], "elapsed_s": round(elapsed, 1), "active_s": round(active, 1),
               "cpu_s": round(cpu0 + time.process_time() - cpu_start, 3),  # process CPU over all resumes
               "wall_time": datetime.now(timezone.utc).strftime("%H:%M:%S")}
        if vm:
            rec.update({"val_E_mae_meV_atom": vm["all"]["energy_mae_meV_per_atom"],
                        "val_F_mae_meV_A": vm["all"]["force_mae_meV_per_A"]})
        if out_of_time:
            rec["partial_epoch"] = True
        history.append(rec)
        if rank == 0:
            msg = (f"epoch {epoch + 1}/{cfg.epochs} loss {rec['train_loss']:.4g} lr {rec['lr']:.2e}"
                   + (f" val E {rec['val_E_mae_meV_atom']:.2f} meV/atom F {rec['val_F_mae_meV_A']:.1f} meV/Å"
                      if vm else "") + f" | {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min, {rec['wall_time']} UTC")
            log(msg)
            if improved:
                from atomsim.potentials.checkpoint import save_checkpoint

                save_checkpoint(ema, out / "best", {"name": cfg.name})
            torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(),
                        **({"plateau": plateau.state_dict()} if plateau is not None else {}),
                        "epoch": epoch + 1, "step": step, "best": best, "bad": bad_epochs,
                        "history": json.dumps(history), "active_s": active, "cpu_s": rec["cpu_s"]},
                       str(state_file) + ".tmp")
            os.replace(str(state_file) + ".tmp", state_file)
        if max_steps is not None and step >= max_steps:
            stopped = "max_steps"
            break
        if bad_epochs >= cfg.patience:
            stopped = "early stopping"
            break
        if out_of_time or (budget and active + per_epoch > budget):
            stopped = "time budget" if budget and active + per_epoch > budget else "stop_at"
            break
        if stop_at and time.time() + per_epoch > stop_at:
            stopped = "stop_at"
            break
    result = {"stopped": stopped, "epochs": len(history), "history": history, "model": model, "ema": ema,
              "split": split, "test": test_s, "val": val_s, "train": train_s, "rank": rank, "size": size}
    if rank == 0:
        log(f"stopped: {stopped} after {len(history)} epochs")
    return result


def finalize(cfg: TrainConfig, result: dict, card: Optional[dict] = None, log=print) -> dict:
    """Evaluate the best EMA model on the test split, write checkpoint + card + parity plot."""
    from atomsim.potentials.checkpoint import load_checkpoint, save_checkpoint, write_reference

    out = Path(cfg.output)
    best_dir = out / "best"
    model = load_checkpoint(best_dir) if best_dir.exists() else result["ema"]
    test = result["test"] or result["val"]
    metrics = evaluate(model, test, per_family=True)
    rows = metrics.pop("_pairs")
    by_split = {"test" if result["test"] else "val": metrics}
    if result["test"] and result["val"]:
        val = evaluate(model, result["val"], per_system=False, per_family=True)
        val.pop("_pairs")
        by_split = {"val": val, "test": metrics}
    final = out / "model"
    card = {**cfg.card, **(card or {})}
    card.setdefault("name", cfg.name)
    card["metrics"] = metrics
    card["held_out_errors_by_family"] = family_table(by_split)
    card.setdefault("training", {"epochs": len(result["history"]), "stopped": result["stopped"],
                                 "train/val/test structures":
                                     f"{len(result['train'])}/{len(result['val'])}/{len(result['test'])}",
                                 "loss": f"{cfg.energy_weight} * MSE(E/atom) + {cfg.force_weight} * MSE(F)"
                                         + (f" + {cfg.stress_weight} * MSE(stress)" if cfg.stress_weight else "")})
    save_checkpoint(model, final, card)
    parity_plot(rows, final / "parity.png", f"{cfg.name}: held-out test split ({len(test)} structures)")
    write_reference(model, final)
    (out / "history.json").write_text(json.dumps(result["history"], indent=1))
    log(f"test: E MAE {metrics['all']['energy_mae_meV_per_atom']:.2f} meV/atom, "
        f"F MAE {metrics['all']['force_mae_meV_per_A']:.1f} meV/Å -> {final}")
    return metrics


def main(config_path: str, resume: bool = False) -> int:
    """Entry point of `atomsim train`."""
    cfg = load_config(config_path)
    from rich.console import Console

    console = Console(stderr=False)
    res = train(cfg, resume=resume, log=console.print)
    if res["rank"] == 0:
        finalize(cfg, res, {"training_command": f"atomsim train {config_path}"}, log=console.print)
    return 0
