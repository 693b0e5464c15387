"""Distributed setup, count probe, no all-to-all, thin sub-domains: one launch, rank counts 1..N inside it.

Usage: mpiexec -n 4 python distrib_probe.py OUTDIR FILE.extxyz

For k = 1..N a sub-communicator of the first k ranks (Comm.split) runs:
- ``build``: build_local_state of every case in setup_cases(FILE); each rank records the most atoms it
  held while building (probe); the system gathered by id goes to OUTDIR/build_<case>_<k>.npz;
- ``thin``: a hot LJ run (migrations, rebuilds) on the grid [k, 1, 1], sub-boxes thinner than the halo
  for k >= 3; final positions/velocities by id to OUTDIR/thin_<k>.npz.
Then all N ranks run ``probe``: a 4000-atom LJ run through Simulation whose communicator counts every
mpi4py call by name, and whose force provider records owned + ghost atoms after every evaluation.
Summary in OUTDIR/probe.json (rank 0).
"""
import collections
import json
import sys
from pathlib import Path

import numpy as np

import atomsim.engine.structure as structure
from atomsim.engine.comm import Comm, world_comm
from atomsim.engine.config import RunConfig
from atomsim.engine.parallel_forces import ParallelForces
from atomsim.engine.simulation import Simulation

ALL_TO_ALL = ("alltoall", "alltoallv", "alltoallw", "allgather", "allgatherv",
              "ineighbor_alltoall", "ialltoall", "iallgather")


def setup_cases(file):
    """name -> system section (shared with tests/test_distrib.py, which builds the serial references)."""
    return {
        "alloy": {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "repeat": [6, 5, 4],
                                "alloy": {"Au": 0.3, "Ag": 0.1}}, "temperature_K": 300, "seed": 7},
        "slab": {"structure": {"lattice": "hcp", "symbols": "Mg", "repeat": [3, 4, 3], "vacuum_A": 5.0,
                               "pbc": [True, True, False], "alloy": {"Al": 0.2}}, "temperature_K": 500,
                 "seed": 2},
        "triclinic": {"structure": {"lattice": "fcc", "symbols": "Cu", "repeat": [5, 4, 3], "cubic": False},
                      "temperature_K": 100, "seed": 3},
        "file": {"structure": {"file": str(file), "repeat": [2, 1, 1], "alloy": {"Ni": 0.25}},
                 "temperature_K": 200, "seed": 4},
    }


def run_config(system, directory, steps, grid=None, skin=0.6, cutoff=5.0):
    return RunConfig.model_validate({
        "system": system,
        "potential": {"model": "lj", "params": {"epsilon": 0.4, "sigma": 2.3, "cutoff": cutoff},
                      "dtype": "float64", "device": "cpu"},
        "dynamics": {"integrator": "nve", "timestep_fs": 2.0, "steps": steps},
        "neighbor": {"skin": skin},
        "parallel": {"halo": "full", "grid": grid or "auto", "threads": 1},
        "output": {"directory": str(directory), "thermo_every": 5, "trajectory_every": 0, "restart_every": 0,
                   "progress": False},
    })


class Counting:
    """An mpi4py communicator that counts the calls of each method (all else passes through)."""

    def __init__(self, comm):
        self._c = comm
        self.calls = collections.Counter()

    def __getattr__(self, name):
        attr = getattr(self._c, name)
        if callable(attr) and not name.startswith("Get_"):
            def counted(*a, **k):
                self.calls[name.lower()] += 1
                return attr(*a, **k)
            return counted
        return attr


class Most:
    """A probe: the largest count it was called with."""

    def __init__(self):
        self.n = 0

    def __call__(self, n):
        self.n = max(self.n, int(n))


def build_all(sub: Comm, k: int, out: Path, file) -> dict:
    stats = {}
    for name, system in setup_cases(file).items():
        cfg = run_config(system, out / "unused", 1)
        most = Most()
        state, fix = structure.build_local_state(cfg, sub, probe=most)
        g = sub.gather_by_id(state.ids.numpy(), positions=state.positions.numpy(),
                             velocities=state.velocities.numpy(), numbers=state.numbers.numpy(),
                             masses=state.masses.numpy())
        held = sub.gather(most.n)
        if sub.rank == 0:
            np.savez(out / f"build_{name}_{k}.npz", cell=state.cell.numpy(), pbc=np.array(state.pbc),
                     fix=np.array(fix.indices, dtype=np.int64), **g)
            stats[name] = {"held": held, "n": state.n_atoms_global}
    return stats


def thin_run(sub: Comm, k: int, out: Path) -> None:
    system = {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "cubic": True, "repeat": [4, 3, 3]},
              "temperature_K": 2500, "seed": 11}
    sim = Simulation(run_config(system, out / f"thin{k}", 30, grid=[k, 1, 1]), comm=sub)
    sim.run()
    st = sim.state
    g = sub.gather_by_id(st.ids.numpy(), positions=st.positions.numpy(), velocities=st.velocities.numpy())
    builds, migrated = sim.forces.n_builds, sub.allreduce_sum(getattr(sim.forces, "n_migrated", 0))
    if sub.rank == 0:
        np.savez(out / f"thin_{k}.npz", builds=builds, migrated=migrated, **g)


def probe_run(world: Comm, out: Path) -> dict:
    counting = Counting(world._comm)
    comm = Comm(counting)
    system = {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "cubic": True,
                            "repeat": [10, 10, 10]},
              "temperature_K": 3000, "seed": 5}
    held = {"build": 0, "owned": 0, "ghost": 0, "owned+ghost": 0}
    original_build = structure.build_local_state

    def probed_build(*a, **kw):  # Simulation builds through the module attribute: record what it holds
        def note(n):
            held["build"] = max(held["build"], n)
        return original_build(*a, probe=note, **kw)

    original_compute = ParallelForces.compute

    def probed_compute(self, state, **kw):
        res = original_compute(self, state, **kw)
        n_own, n_ghost = state.n_local, self.ghosts.n
        held["owned"] = max(held["owned"], n_own)
        held["ghost"] = max(held["ghost"], n_ghost)
        held["owned+ghost"] = max(held["owned+ghost"], n_own + n_ghost)
        return res

    structure.build_local_state = probed_build
    ParallelForces.compute = probed_compute
    try:
        cfg = run_config(system, out / "probe", 40, skin=0.3, cutoff=4.0)
        sim = Simulation(cfg, comm=comm)
        setup_calls = collections.Counter(counting.calls)
        counting.calls.clear()
        summary = sim.run()
        loop_calls = collections.Counter(counting.calls)
    finally:
        structure.build_local_state = original_build
        ParallelForces.compute = original_compute
    box = sim.state.cell.numpy().diagonal()
    return {"held": world.gather(held), "setup_calls": world.gather(dict(setup_calls)),
            "loop_calls": world.gather(dict(loop_calls)), "n_global": sim.state.n_atoms_global,
            "builds": summary["n_neighbor_builds"], "migrated": world.allreduce_sum(sim.forces.n_migrated),
            "dims": list(sim.forces.decomp.dims), "box": box.tolist(), "depth": sim.forces.depth}


def main(out: Path, file: str) -> None:
    world = world_comm()
    world.install_abort_handler()
    res = {"size": world.size, "build": {}}
    for k in range(1, world.size + 1):
        sub = world.split(0 if world.rank < k else None)
        if sub is not None:
            stats = build_all(sub, k, out, file)
            thin_run(sub, k, out)
            if sub.rank == 0:
                res["build"][k] = stats
        world.barrier()
    res["probe"] = probe_run(world, out)
    if world.rank == 0:
        (out / "probe.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
