"""The device-resident step (engine/device_checks.py, engine/deferred_loop.py) against the per-step path.

References: the same run with per-step host checks (``neighbor.check_every: 1``, the path every run
took before the deferred checks existed), ASE's VelocityVerlet driven by ASE's own Lennard-Jones
(independent integrator and forces), the numpy noise (integrators/noise.py), and the 1-rank run for
2 MPI ranks. The sync test replaces every torch method that reads a device value into Python (or
needs the device's answer to size a result) by a recorder, and fails on any call inside ``md_step``
for a step that neither rebuilds nor writes output: on a GPU each of them would stall the step.
``.numpy()`` is not among them: on a GPU tensor it raises instead of waiting, so it only appears in
CPU-only branches (the Numba kernels), which a GPU step never takes.
"""
from __future__ import annotations

import traceback
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import units
from ase.calculators.lj import LennardJones as AseLJ
from ase.io import read
from ase.md.verlet import VelocityVerlet
from rich.console import Console

from atomsim.engine.config import RunConfig
from atomsim.engine.device_checks import DeferredChecks
from atomsim.engine.simulation import Simulation, SimulationError
from atomsim.engine.step import md_step

EPS, SIG, RC = 0.0104, 3.4, 8.5


def _config(outdir: Path, model: str = "egnn-emt-v1", **sections) -> RunConfig:
    """Small fcc Cu (bundled GNN, float64) or Ar (LJ); ``sections`` update the defaults section by section."""
    if model == "lj":
        structure = {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "cubic": True, "repeat": [3, 3, 3]}
        potential = {"model": "lj", "params": {"epsilon": EPS, "sigma": SIG, "cutoff": RC}}
    else:
        structure = {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "cubic": True, "repeat": [3, 3, 3]}
        potential = {"model": model}
    d = {
        "system": {"structure": structure, "temperature_K": 900.0, "seed": 11},
        "potential": {**potential, "dtype": "float64", "device": "cpu"},
        "dynamics": {"integrator": "nve", "timestep_fs": 2.0, "steps": 60, "temperature_K": 900.0,
                     "tdamp_fs": 50.0},
        "neighbor": {"skin": 0.25},
        "output": {"directory": str(outdir), "thermo_every": 30, "trajectory_every": 0, "restart_every": 0,
                   "progress": False},
        "parallel": {"threads": 1},
    }
    for key, upd in sections.items():
        d[key] = {**d[key], **upd}
    return RunConfig.model_validate(d)


def _run(cfg: RunConfig, atoms=None):
    sim = Simulation(cfg, atoms=None if atoms is None else atoms.copy(), console=Console(quiet=True))
    return sim, sim.run()


def _thermo(sim) -> str:
    return (Path(sim.config.output.directory) / "thermo.csv").read_text()


# ------------------------------------------------------------ same trajectory --

@pytest.mark.parametrize("integrator", ["nve", "langevin"])
def test_deferred_checks_follow_the_per_step_path(tmp_path, integrator):
    """Bundled GNN, float64: the list goes stale several times and a late check forces a replay;
    positions, velocities, energies and the rebuild count are those of the per-step host path."""
    dyn, out = {"integrator": integrator, "steps": 40}, {"thermo_every": 20}
    host, s_host = _run(_config(tmp_path / "host", dynamics=dyn, output=out, neighbor={"check_every": 1}))
    dev, s_dev = _run(_config(tmp_path / "dev", dynamics=dyn, output=out, neighbor={"check_every": 15}))
    assert s_host["deferred_checks"] is None
    stats = s_dev["deferred_checks"]
    assert stats["deferred_steps"] > stats["reads"] > 0
    assert stats["replays"] >= 1  # the first interval outlived the list: rolled back and replayed
    assert s_dev["n_neighbor_builds"] == s_host["n_neighbor_builds"] >= 3
    assert (dev.state.positions - host.state.positions).abs().max() <= 1e-10
    assert (dev.state.velocities - host.state.velocities).abs().max() <= 1e-10
    assert float(dev.state.energy) == pytest.approx(float(host.state.energy), abs=1e-10)
    strip = lambda text: [r.split(",")[:9] for r in text.splitlines()]  # noqa: E731  (machine columns out)
    assert strip(_thermo(dev)) == strip(_thermo(host))


def test_npt_keeps_per_step_checks_and_its_trajectory(tmp_path):
    """NPT moves the cell every step, so every step rebuilds: it keeps the per-step path (a barostat
    reads the kinetic tensor and virial on the host anyway); asking for deferred checks changes nothing."""
    dyn = {"integrator": "npt", "pressure_GPa": 1.0, "pdamp_fs": 200.0, "steps": 20}
    host, s_host = _run(_config(tmp_path / "host", dynamics=dyn, neighbor={"check_every": 1}))
    dev, s_dev = _run(_config(tmp_path / "dev", dynamics=dyn, neighbor={"check_every": 10}))
    assert s_dev["deferred_checks"] is None
    assert s_dev["n_neighbor_builds"] == s_host["n_neighbor_builds"] == 21  # set-up + every step
    assert abs(float(dev.state.cell[0, 0]) - 3 * 3.61) > 1e-4  # the box moved
    assert (dev.state.positions - host.state.positions).abs().max() <= 1e-10
    assert (dev.state.cell - host.state.cell).abs().max() <= 1e-10


def test_deferred_nve_matches_ase_velocity_verlet(tmp_path):
    """Independent reference: ASE's VelocityVerlet + ASE's LJ from the same start (LJ's direct path)."""
    cfg = _config(tmp_path / "run", model="lj", dynamics={"steps": 100},
                  neighbor={"skin": 0.4, "check_every": 20}, output={"thermo_every": 50})
    sim = Simulation(cfg, console=Console(quiet=True))
    start = sim.state.to_atoms()
    summary = sim.run()
    assert summary["deferred_checks"]["deferred_steps"] > 50 and summary["n_neighbor_builds"] >= 2
    ref = start.copy()
    ref.calc = AseLJ(epsilon=EPS, sigma=SIG, rc=RC)
    VelocityVerlet(ref, timestep=2.0 * units.fs).run(100)
    assert np.abs(sim.state.positions.numpy() - ref.positions).max() < 1e-8
    assert np.abs(sim.state.velocities.numpy() - ref.get_velocities()).max() < 1e-9


def test_deferred_resume_is_bit_for_bit(tmp_path):
    """Langevin with deferred checks: 60 steps in one go == 30 + --resume + 30, and == the per-step path."""
    def cfg(name, steps, every=20):
        return _config(tmp_path / name, model="lj", dynamics={"integrator": "langevin", "steps": steps},
                       neighbor={"skin": 0.3, "check_every": every},
                       output={"thermo_every": 15, "restart_every": 30})

    full, s_full = _run(cfg("full", 60))
    _run(cfg("split", 30))
    resumed = Simulation.from_config(cfg("split", 60), resume=True, console=Console(quiet=True))
    s_resumed = resumed.run()
    host, _ = _run(cfg("host", 60, every=1))
    assert s_full["deferred_checks"]["deferred_steps"] > 0
    assert s_resumed["deferred_checks"]["deferred_steps"] > 0
    for sim in (resumed, host):
        assert torch.equal(sim.state.positions, full.state.positions)
        assert torch.equal(sim.state.velocities, full.state.velocities)
    assert resumed.forces.n_builds == full.forces.n_builds == host.forces.n_builds >= 3


HOT = {"temperature_K": 2000.0, "seed": 4,
       "structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "repeat": [2, 2, 2]}}


def test_late_blow_up_stops_where_the_per_step_path_stops(tmp_path):
    """A blow-up found at a later check: replayed from the last verified state, the run stops at the
    same step, names the same atom, writes the same failing frame and keeps the same good state."""
    dyn = {"timestep_fs": 5.0, "steps": 100, "max_force_eV_per_A": 1.0}
    out = {"thermo_every": 50}
    errors, frames = {}, {}
    for name, every in (("host", 1), ("dev", 50)):
        cfg = _config(tmp_path / name, model="lj", system=HOT, dynamics=dyn, output=out,
                      neighbor={"skin": 0.5, "check_every": every})
        sim = Simulation(cfg, console=Console(quiet=True))
        with pytest.raises(SimulationError) as exc:
            sim.run()
        errors[name] = str(exc.value).replace(str(tmp_path / name), "OUT")
        frames[name] = read(tmp_path / name / "blowup.extxyz", index=":")
    assert "blow-up at step" in errors["host"] and int(errors["host"].split("step ")[1].split(":")[0]) >= 2
    assert errors["dev"] == errors["host"]
    assert [f.info["state"] for f in frames["dev"]] == ["last_good", "blowup"]
    for a, b in zip(frames["dev"], frames["host"], strict=True):
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.get_forces(), b.get_forces())


# ------------------------------------------------------------------ no sync --

_READS = ("item", "tolist", "cpu", "__bool__", "__float__", "__int__", "__index__", "__complex__", "nonzero",
          "masked_select", "unique")
_TORCH_READS = ("equal", "nonzero", "masked_select", "unique", "is_nonzero")


class HostReads:
    """Records every call that would wait for a GPU (a device value read on the host, or a result whose
    size the device decides: boolean-mask indexing, nonzero, unique, masked_select)."""

    def __init__(self, monkeypatch):
        self.calls: list = []
        for name in _READS:
            self._patch(monkeypatch, torch.Tensor, name)
        for name in _TORCH_READS:
            self._patch(monkeypatch, torch, name)
        for name in ("__getitem__", "__setitem__"):
            self._patch_index(monkeypatch, name)

    def _record(self, name: str) -> None:
        self.calls.append((name, "".join(traceback.format_stack(limit=8)[:-2])))

    def _patch(self, monkeypatch, owner, name: str) -> None:
        orig = getattr(owner, name)

        def recorder(*args, **kwargs):
            self._record(name)
            return orig(*args, **kwargs)

        monkeypatch.setattr(owner, name, recorder)

    def _patch_index(self, monkeypatch, name: str) -> None:
        orig = getattr(torch.Tensor, name)

        def recorder(tensor, index, *rest):
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts):
                self._record(f"{name}[bool mask]")
            return orig(tensor, index, *rest)

        monkeypatch.setattr(torch.Tensor, name, recorder)

    def outside(self, *allowed: str) -> list:
        """The calls none of whose stack frames lie in one of the ``allowed`` files."""
        return [c for c in self.calls if not any(a in c[1] for a in allowed)]


def _ready(tmp_path, model: str, integrator: str):
    """A run after its set-up and one step, with a list whose skin the next steps cannot outrun."""
    params = {"model": "lj", "params": {"epsilon": EPS, "sigma": SIG, "cutoff": RC, "backend": "torch"}}
    cfg = _config(tmp_path / "run", model=model, dynamics={"integrator": integrator, "temperature_K": 300.0},
                  neighbor={"skin": 2.0, "check_every": 1000}, output={"thermo_every": 1000},
                  **({"potential": {**params, "dtype": "float64", "device": "cpu"}} if model == "lj" else {}))
    sim = Simulation(cfg, console=Console(quiet=True))
    sim.run(1)
    checks = DeferredChecks(sim.state.positions.device, sim.forces.nlist.stale_threshold, 1e3)
    return sim, checks


def _steps(sim, checks, n: int = 4) -> list:
    return [md_step(sim.state, sim.integrator, sim.forces, virial=False, max_force=1e3, checks=checks).rebuilt
            for _ in range(n)]


@pytest.mark.parametrize("integrator", ["nve", "langevin"])
def test_non_rebuild_step_reads_nothing_back(tmp_path, monkeypatch, integrator):
    """A device-generic model (LJ through autograd, torch ops only): the whole step, neighbor check,
    forces, blow-up check, integrator and thermostat noise included, makes no host read."""
    sim, checks = _ready(tmp_path, "lj", integrator)
    builds = sim.forces.n_builds
    reads = HostReads(monkeypatch)
    assert _steps(sim, checks) == [False] * 4
    assert reads.calls == [], reads.calls[0][1]
    # the recorder can fail: the per-step host path reads the skin and force verdicts every step
    md_step(sim.state, sim.integrator, sim.forces, virial=False, max_force=1e3)
    assert {name for name, _ in reads.calls} & {"__float__", "__bool__", "item"}
    monkeypatch.undo()
    assert sim.forces.n_builds == builds
    verdict = checks.read()  # and the deferred verdicts were really computed on the device
    assert verdict.ok and 0 < verdict.max_disp_sq < 1.0 and verdict.max_force_sq > 0


def test_bundled_gnn_step_reads_nothing_back_outside_cpu_kernels(tmp_path, monkeypatch):
    """The default GNN: no host read in the engine, the integrator or the model's torch code; the only
    one left is inside the fused Numba kernel's CPU entry point (kernels/message_passing_cpu.py),
    a branch a GPU never takes (kernels/message_passing.py dispatches it by device)."""
    sim, checks = _ready(tmp_path, "egnn-emt-v1", "langevin")
    reads = HostReads(monkeypatch)
    assert _steps(sim, checks) == [False] * 4
    left = reads.outside("message_passing_cpu.py")
    assert left == [], left[0][1]


def test_gpu_noise_has_the_reference_bits():
    """integrators/noise.py: the torch hash gives the numpy hash's bits; normals agree to rounding."""
    from atomsim.integrators import noise

    ids = torch.randperm(5000)
    keys = np.arange(20000, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    u_np = noise._uniform(keys)
    u_t = noise._uniform_torch(torch.from_numpy(keys.view(np.int64)))
    assert np.array_equal(u_np, u_t.numpy())
    for seed, step in ((1, 0), (7, 123456), (2**40 + 3, 99)):
        ref = noise.gaussian_noise(seed, step, ids)
        got = noise.gaussian_noise_torch(seed, step, ids).numpy()
        assert np.abs(got - ref).max() < 1e-14


def test_edge_vectors_off_the_cpu_read_nothing_back(monkeypatch):
    """kernels/edge_ops.py edge_vectors_csr's torch branch (what a GPU runs; on CPU taken under
    autograd) with the receivers the force provider keeps between rebuilds: no host read, and the
    vectors of the Numba branch."""
    from ase.build import bulk

    from atomsim.kernels.edge_ops import edge_vectors_csr, rows_int32
    from atomsim.kernels.neighbor_list import NeighborList

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 3))
    atoms.rattle(0.05, seed=1)
    pos, cell = torch.tensor(atoms.positions), torch.tensor(atoms.cell.array)
    nl = NeighborList(5.0, 0.5, compact=True)
    nl.build(pos, cell, (True, True, True))
    receivers = rows_int32(nl.row_ptr)  # once per rebuild (SerialForces._receivers)
    ref = edge_vectors_csr(pos, cell, nl.row_ptr, nl.senders, nl.cell_shifts, torch.float64)
    leaf = pos.clone().requires_grad_(True)
    reads = HostReads(monkeypatch)
    got = edge_vectors_csr(leaf, cell, nl.row_ptr, nl.senders, nl.cell_shifts, torch.float64,
                           receivers=receivers)
    assert reads.calls == [], reads.calls[0][1]
    monkeypatch.undo()
    assert got.shape == ref.shape and (got.detach() - ref).abs().max() < 1e-12
