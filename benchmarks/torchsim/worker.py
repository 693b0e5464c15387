"""One engine (atomsim or TorchSim) held warm in a process, driven line by line by bench.py.

Runs under either venv: ``--engine atomsim`` in the project's .venv, ``--engine torchsim`` in the
TorchSim venv (setup_venv.sh). Commands arrive as JSON lines on stdin; each answer is one line
``@@ {json}`` on stdout (anything else a library prints is ignored by the driver):

- ``{"cmd": "setup", "system": "lj"|"sevennet", "npz": path, "forces_out": path, "dt_fs": float}``:
  build the model and state from the npz (positions, cell, numbers, masses, ASE velocities), take
  one untimed step (JIT, first neighbor list, allocator warm-up) and answer that step's energy,
  saving its forces to ``forces_out`` (the perfect fcc start has zero forces: no test);
- ``{"cmd": "run", "steps": n}``: n timed MD steps, continuing the trajectory;
- ``{"cmd": "final", "npz_out": path}``: save the current positions;
- ``{"cmd": "quit"}``.

Both engines integrate NVE with velocity Verlet from the same positions and velocities, so the
final positions also agree (a check that both ran the same dynamics, not only the same forces).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
LJ = {"epsilon": 0.0104, "sigma": 3.4, "cutoff": 8.5}  # benchmarks/lj_vs_lammps/bench_lj.py's argon
SKIN = 1.0  # Å, atomsim's Verlet skin (TorchSim builds a fresh list every step)


def _atoms(data):
    from ase import Atoms

    atoms = Atoms(numbers=data["numbers"], positions=data["positions"], cell=data["cell"], pbc=True,
                  masses=data["masses"])
    atoms.set_velocities(data["velocities"])
    return atoms


class AtomsimEngine:
    """``atomsim.engine.simulation.Simulation``: what ``atomsim run`` executes."""

    def setup(self, system: str, data, dt_fs: float, threads: int):
        from rich.console import Console

        from atomsim.engine.config import RunConfig
        from atomsim.engine.simulation import Simulation

        if system == "lj":
            pot = {"model": "lj", "params": {**LJ, "shift": False}, "dtype": "float64", "device": "cpu"}
        else:
            pot = {"model": "sevennet-0", "dtype": "float32", "device": "cpu"}
        self._tmp = tempfile.TemporaryDirectory()
        cfg = RunConfig.model_validate({
            "system": {"structure": {"lattice": "fcc", "symbols": "Ar", "a": 5.0, "repeat": [1, 1, 1]},
                       "temperature_K": 0.0, "seed": 1},  # replaced by the atoms passed below
            "potential": pot,
            "dynamics": {"integrator": "nve", "timestep_fs": dt_fs, "steps": 10**9},
            "neighbor": {"skin": SKIN},
            "parallel": {"threads": threads},
            "output": {"directory": self._tmp.name, "thermo_every": 10**8, "trajectory_every": 0,
                       "restart_every": 0, "progress": False},
        })
        self.sim = Simulation(cfg, atoms=_atoms(data), console=Console(quiet=True))
        self.sim.run(0)  # first neighbor list + forces

    def run(self, steps: int):
        self.sim.run(steps)

    def energy_forces(self):
        st = self.sim.state
        return float(st.energy), st.forces.detach().double().numpy()

    def positions(self):
        return self.sim.state.positions.detach().double().numpy()


class TorchSimEngine:
    """TorchSim's model (LennardJonesModel, or SevenNetModel through sevenn_shim.py) and its
    ``integrators.nve`` velocity-Verlet update, stepped as its examples do."""

    def setup(self, system: str, data, dt_fs: float, threads: int):
        import torch
        import torch_sim as ts
        from ase import units
        from torch_sim.integrators import MDState

        sys.path.insert(0, str(HERE))
        from shims import sevennet0_torchsim_model, torchsim_lj_model

        if system == "lj":  # forces halved: TorchSim 0.3.0 doubles them (shims.py)
            dtype = torch.float64
            model = torchsim_lj_model(LJ["sigma"], LJ["epsilon"], LJ["cutoff"], dtype)
        else:
            dtype = torch.float32
            model = sevennet0_torchsim_model()
        atoms = _atoms(data)
        state = ts.io.atoms_to_state(atoms, device=torch.device("cpu"), dtype=dtype)
        out = model(state)
        # ASE units = TorchSim's metal units (Å, eV, amu; time in Å sqrt(amu/eV)): momenta = m v as is
        momenta = torch.as_tensor(atoms.get_momenta(), dtype=dtype)
        self.state = MDState(positions=state.positions, momenta=momenta, energy=out["energy"],
                             forces=out["forces"], masses=state.masses, cell=state.cell, pbc=state.pbc,
                             system_idx=state.system_idx, atomic_numbers=state.atomic_numbers)
        dt = torch.tensor(dt_fs * units.fs, dtype=dtype)
        _, self.update = ts.integrators.nve(model=model, dt=dt, kT=torch.tensor(0.0, dtype=dtype))

    def energy_forces(self):
        return float(self.state.energy.sum()), self.state.forces.detach().double().numpy()

    def run(self, steps: int):
        for _ in range(steps):
            self.state = self.update(self.state)

    def positions(self):
        return self.state.positions.detach().double().numpy()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--engine", choices=["atomsim", "torchsim"], required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    if args.engine == "atomsim":
        from atomsim.kernels.threads import configure_threads

        configure_threads(args.threads)
    else:  # the TorchSim venv has no atomsim: torch and the BLAS/OpenMP pools directly
        torch.set_num_threads(args.threads)
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    engine = AtomsimEngine() if args.engine == "atomsim" else TorchSimEngine()

    def answer(obj) -> None:
        sys.stdout.write("@@ " + json.dumps(obj) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg["cmd"]
        if cmd == "quit":
            break
        t0 = time.perf_counter()
        if cmd == "setup":
            data = dict(np.load(msg["npz"]))
            engine.setup(msg["system"], data, msg["dt_fs"], args.threads)
            engine.run(1)
            energy, forces = engine.energy_forces()
            np.save(msg["forces_out"], forces)
            answer({"energy_eV": energy, "setup_s": time.perf_counter() - t0,
                    "threads": torch.get_num_threads()})
        elif cmd == "run":
            c0 = time.process_time()
            engine.run(int(msg["steps"]))
            answer({"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0,
                    "load_avg": os.getloadavg()})
        elif cmd == "final":
            np.save(msg["npz_out"], engine.positions())
            answer({"ok": True})


if __name__ == "__main__":
    main()
