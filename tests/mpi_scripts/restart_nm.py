"""Run (or resume) a small hot LJ simulation through atomsim.Simulation on however many ranks.

Usage: mpiexec -n N python restart_nm.py DIR STEPS [--resume] [--write-shards PATH | --check-shards PATH]
Used to show that a restart written on 4 ranks resumes on 2 ranks and follows
the trajectory of the uninterrupted 4-rank run; the final state also goes
through per-rank shards (engine.parallel_io) written on N ranks, read on M.
"""
import json
import sys

import numpy as np

from atomsim.engine.config import RunConfig
from atomsim.engine.simulation import Simulation


def config(directory: str, steps: int) -> RunConfig:
    return RunConfig.model_validate({
        "system": {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "repeat": [3, 3, 3]},
                   "temperature_K": 2000, "seed": 5},
        "potential": {"model": "lj", "params": {"epsilon": 0.4, "sigma": 2.3, "cutoff": 5.0},
                      "dtype": "float64", "device": "cpu"},
        "dynamics": {"integrator": "nve", "timestep_fs": 2.0, "steps": steps},
        "neighbor": {"skin": 0.6},
        "parallel": {"halo": "full"},
        "output": {"directory": directory, "thermo_every": 5, "trajectory_every": 5,
                   "restart_every": 10, "progress": False},
    })


if __name__ == "__main__":
    directory, steps = sys.argv[1], int(sys.argv[2])
    resume = "--resume" in sys.argv[3:]
    sim = Simulation.from_config(config(directory, steps), resume=resume)
    summary = sim.run()
    st, comm = sim.state, sim.comm.comm
    opts = sys.argv[3:]
    if "--write-shards" in opts:
        from atomsim.engine.parallel_io import write_shards

        write_shards(comm, opts[opts.index("--write-shards") + 1],
                     {"ids": st.ids.numpy(), "positions": st.positions.numpy(),
                      "velocities": st.velocities.numpy()}, {"step": st.step})
    if "--check-shards" in opts:
        from atomsim.engine.parallel_io import read_shards_owned

        path = opts[opts.index("--check-shards") + 1]
        mine = st.ids.numpy()
        got = read_shards_owned(path, lambda a: np.isin(a["ids"], mine))
        order = np.argsort(mine)
        assert np.array_equal(got["ids"], mine[order])
        dpos = float(np.abs(got["positions"] - st.positions.numpy()[order]).max()) if mine.size else 0.0
        n = comm.allreduce(int(got["ids"].shape[0]))
        dpos = comm.allreduce(dpos, op=__import__("mpi4py.MPI", fromlist=["MPI"]).MAX)
        if sim.is_root:
            with open(path + ".check.json", "w") as fh:
                json.dump({"n_atoms": n, "max_dpos_A": dpos}, fh)
    if sim.is_root:
        print("builds", summary["n_neighbor_builds"], "final", summary["final_step"],
              "ranks", getattr(sim.comm, "size", 1), flush=True)
