"""A stage's state handed to the next stage from sharded restarts: each rank reads only its own atoms.

Usage: mpiexec -n K python stage_handover.py OUTDIR

An LJ stage on K ranks (output.parallel: sharded) runs a few steps and writes its restart; then
``engine/stages.py`` ``_state_from`` reads it for the next stage, as a multi-stage run does. Each
rank saves the ids it holds, its positions and velocities (OUTDIR/handover_<rank>.npz), and the
whole system read from the same restart with no owner (OUTDIR/whole_<rank>.npz) for comparison.
"""
import sys
from pathlib import Path

import numpy as np

from atomsim.engine.comm import world_comm
from atomsim.engine.config import RunConfig
from atomsim.engine.restart import find_restart
from atomsim.engine.simulation import Simulation
from atomsim.engine.stages import _state_from


def main(out: Path) -> None:
    comm = world_comm()
    run_dir = out / "stage1"
    cfg = RunConfig.model_validate({
        "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.26, "cubic": True,
                                 "repeat": [6, 4, 4]}, "temperature_K": 60, "seed": 3},
        "potential": {"model": "lj", "params": {"epsilon": 0.0104, "sigma": 3.40, "cutoff": 6.0},
                      "dtype": "float64", "device": "cpu"},
        "dynamics": {"integrator": "nve", "timestep_fs": 2.0, "steps": 6},
        "parallel": {"threads": 1},
        "output": {"directory": str(run_dir), "thermo_every": 3, "trajectory_every": 0, "restart_every": 6,
                   "progress": False, "parallel": "sharded"},
    })
    Simulation(cfg, comm=comm).run()
    comm.barrier()
    st = _state_from(run_dir, "cpu", comm, "auto")
    np.savez(out / f"handover_{comm.rank}.npz", ids=st.ids.numpy(), positions=st.positions.numpy(),
             velocities=st.velocities.numpy(), n_global=st.n_atoms_global)
    whole = find_restart(run_dir, "cpu").to_state("cpu", comm)
    np.savez(out / f"whole_{comm.rank}.npz", ids=whole.ids.numpy(), positions=whole.positions.numpy(),
             velocities=whole.velocities.numpy())


if __name__ == "__main__":
    main(Path(sys.argv[1]))
