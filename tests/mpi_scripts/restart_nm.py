"""Run (or resume) a small hot LJ simulation through atomsim.Simulation on however many ranks.

Usage: mpiexec -n N python restart_nm.py DIR STEPS [--resume]
Used to show that a restart written on 4 ranks resumes on 2 ranks and follows
the trajectory of the uninterrupted 4-rank run. Output is gathered to rank 0
(``output.parallel: gather``, single files); mpi_scripts/sharded_restart.py runs
the same system with per-rank shards.
"""
import sys

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
                   "restart_every": 10, "progress": False, "parallel": "gather"},  # single-file output
    })


if __name__ == "__main__":
    directory, steps = sys.argv[1], int(sys.argv[2])
    resume = "--resume" in sys.argv[3:]
    sim = Simulation.from_config(config(directory, steps), resume=resume)
    summary = sim.run()
    if sim.is_root:
        print("builds", summary["n_neighbor_builds"], "final", summary["final_step"],
              "ranks", sim.comm.size, flush=True)
