"""Integrators against independent references: ASE's implementations of the same
algorithms (step by step where deterministic), the dt^2 law of velocity Verlet,
finite differences, and bit-for-bit restarts. Statistical ensemble checks are in
test_integrators_ensembles.py.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.calculators.lj import LennardJones

from atomsim.engine.forces import SerialForces
from atomsim.engine.state import MDState
from atomsim.integrators import make_integrator
from atomsim.kernels.neighbor_list import NeighborList
from atomsim.potentials.base import Potential

EPS, SIGMA, RC = 0.0104, 3.4, 8.5  # LJ argon (eV, Å, Å)


# every thread pool to 1 (tests/conftest.py): ASE's 3x3 linear algebra crawls when threads fight over cores
pytestmark = pytest.mark.usefixtures("one_thread_pools")


class ShiftedLJ(Potential):
    """Truncated-and-shifted LJ, the same function as ase LennardJones(smooth=False)."""

    def __init__(self, epsilon=EPS, sigma=SIGMA, cutoff=RC):
        super().__init__()
        self.epsilon, self.sigma, self.cutoff = epsilon, sigma, cutoff
        self._dtype = torch.float64
        sr6 = (sigma / cutoff) ** 6
        self.shift = 4 * epsilon * (sr6 * sr6 - sr6)

    def per_atom_energy(self, numbers, graph):
        r2 = (graph.edge_vectors**2).sum(1)
        sr6 = (self.sigma**2 / r2) ** 3
        e = torch.where(r2 < self.cutoff**2, 4 * self.epsilon * (sr6 * sr6 - sr6) - self.shift, torch.zeros_like(r2))
        return torch.zeros(graph.n_nodes, dtype=e.dtype).index_add(0, graph.receivers, 0.5 * e)


def ase_lj():
    return LennardJones(epsilon=EPS, sigma=SIGMA, rc=RC, smooth=False)


def argon(rep=2, a=5.26, temperature_K=60.0, seed=1, rattle=0.0):
    """fcc argon, rep^3 conventional cells, Maxwell–Boltzmann velocities with zero momentum."""
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat((rep, rep, rep))
    rng = np.random.default_rng(seed)
    if rattle:
        atoms.positions += rng.normal(scale=rattle, size=atoms.positions.shape)
    m = atoms.get_masses()[:, None]
    v = rng.normal(size=(len(atoms), 3)) * np.sqrt(units.kB * temperature_K / m)
    v -= (m * v).sum(0) / m.sum()
    atoms.set_velocities(v)
    return atoms


class AffineNeighborList(NeighborList):
    """A Verlet list that survives small cell changes (barostats, cell relaxation).

    Pair vectors deform affinely with the cell, so the list built at cutoff + skin stays
    complete while  max|non-affine displacement| + (cutoff + skin) ||A - 1|| / 2 < skin / 2,
    where A maps the reference cell to the current one (h = h_ref A). With a fixed cell this
    is NeighborList's own criterion; it only saves list rebuilds (CPU time of these tests).
    """

    def needs_rebuild(self, positions, cell, pbc) -> bool:
        ref = self.reference_positions
        if ref is None or ref.shape != positions.shape or tuple(bool(p) for p in pbc) != self.reference_pbc:
            return True
        A = torch.linalg.solve(self.reference_cell, cell)
        strain = float(torch.linalg.matrix_norm(A - torch.eye(3, dtype=A.dtype), ord=2))
        disp = positions - ref @ A
        dmax = float((disp**2).sum(1).max().sqrt())
        return dmax + 0.5 * self.list_cutoff * strain > 0.5 * self.skin


def AffineSerialForces(potential, skin=1.0) -> SerialForces:
    """SerialForces over an :class:`AffineNeighborList` (edge vectors use the current cell)."""
    return SerialForces(potential, skin=skin, neighbor_list=AffineNeighborList(float(potential.cutoff), skin))


class Runner:
    """A tiny serial MD loop: the engine's contract with an integrator."""

    def __init__(self, atoms, integ, skin=1.0):
        self.state = MDState.from_atoms(atoms)
        self.forces = AffineSerialForces(ShiftedLJ(), skin=skin)
        self.integ = integ
        self.compute()
        integ.setup(self.state)

    def compute(self, state=None):
        """Forces at the current positions into the state (what engine/step.py's md_step does)."""
        state = self.state if state is None else state
        state.apply_forces(self.forces.compute(state))

    def step(self, n=1, every=None, fn=None):
        out = []
        s = self.state
        for k in range(n):
            self.integ.initial_integrate(s)
            self.compute()
            self.integ.final_integrate(s)
            s.step += 1
            if fn is not None and (k + 1) % every == 0:
                out.append(fn(self))
        return out

    def etot(self):
        s = self.state
        return s.energy + s.kinetic_energy() + self.integ.conserved_energy_extra(s)


# --------------------------------------------------------------------------- NVE
def test_verlet_energy_error_scales_as_dt_squared():
    """Velocity Verlet's shadow-Hamiltonian error: max |E - E0| over a fixed time ∝ dt^2."""
    errs = []
    for dt in (4.0, 2.0, 1.0):
        r = Runner(argon(temperature_K=60, seed=3), make_integrator("nve", dt))
        e0 = r.etot()
        n = int(round(400 / dt))  # 400 fs of dynamics
        e = np.array(r.step(n, every=1, fn=Runner.etot))
        errs.append(np.sqrt(np.mean((e - e0) ** 2)))
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    for q in ratios:
        assert abs(q - 4.0) < 0.8, (errs, ratios)


# ------------------------------------------------------- deterministic vs ASE
def _ase_run(atoms, md_cls, n, **kw):
    atoms = atoms.copy()
    atoms.calc = ase_lj()
    md = md_cls(atoms, **kw)
    md.run(n)
    return atoms, md


def test_nose_hoover_chain_matches_ase_step_by_step():
    from ase.md.nose_hoover_chain import NoseHooverChainNVT

    atoms = argon(temperature_K=20, seed=2)  # starts cold: the chain must heat it to 60 K
    n, dt, tdamp = 150, 5.0, 100.0
    ref, md = _ase_run(atoms, NoseHooverChainNVT, n, timestep=dt * units.fs, temperature_K=60.0,
                       tdamp=tdamp * units.fs, tchain=3)
    integ = make_integrator("nose-hoover", dt, temperature_K=60.0, tdamp_fs=tdamp, chain_length=3,
                            remove_com=False)  # ASE thermostats 3N dof
    r = Runner(atoms, integ)
    r.step(n)
    np.testing.assert_allclose(r.state.positions.numpy(), ref.positions, atol=1e-8)
    np.testing.assert_allclose(r.state.velocities.numpy(), ref.get_velocities(), atol=1e-9)
    assert abs(r.etot() - md.get_conserved_energy()) < 1e-8


def test_nose_hoover_conserved_quantity_is_flat():
    r = Runner(argon(temperature_K=20, seed=4), make_integrator("nose-hoover", 5.0, temperature_K=60.0,
                                                                tdamp_fs=100.0))
    e0 = r.etot()
    e = np.array(r.step(400, every=5, fn=Runner.etot))
    ke = np.array(r.step(50, every=1, fn=lambda rr: rr.state.kinetic_energy()))
    # the thermostat moved a lot of energy into the system, yet the extended energy stays put
    assert ke.mean() > 2.0 * 0.5 * 93 * units.kB * 20
    assert np.abs(e - e0).max() < 2e-3 * abs(e0) and np.abs(e - e0).max() < 0.02 * ke.mean()
    assert abs(np.polyfit(np.arange(len(e)), e, 1)[0] * len(e)) < 0.01 * ke.mean()  # no drift


@pytest.mark.parametrize("barostat", ["isotropic", "anisotropic", "triclinic"])
def test_mtk_npt_matches_ase_step_by_step(barostat):
    from ase.md.nose_hoover_chain import MTKNPT, IsotropicMTKNPT, MaskedMTKNPT

    atoms = argon(a=5.3, temperature_K=60, seed=5, rattle=0.02)
    atoms.set_cell(atoms.cell.array + np.array([[0, 0.2, 0.1], [0.1, 0, 0.0], [0, 0.1, 0]]), scale_atoms=True)
    n, dt = 60, 5.0
    p_gpa = 0.05
    kw = dict(timestep=dt * units.fs, temperature_K=60.0, tdamp=100 * units.fs, pdamp=500 * units.fs,
              pressure_au=p_gpa * units.GPa)
    if barostat == "isotropic":
        ref, md = _ase_run(atoms, IsotropicMTKNPT, n, **kw)
    elif barostat == "anisotropic":
        ref, md = _ase_run(atoms, MaskedMTKNPT, n, mask=(True, True, True), **kw)
    else:
        ref, md = _ase_run(atoms, MTKNPT, n, **kw)
    integ = make_integrator("npt", dt, temperature_K=60.0, tdamp_fs=100.0, pdamp_fs=500.0,
                            pressure_GPa=p_gpa, barostat=barostat, remove_com=False)
    r = Runner(atoms, integ)
    r.step(n)
    assert np.abs(ref.cell.array - atoms.cell.array).max() > 1e-3  # the cell did move
    np.testing.assert_allclose(r.state.cell.numpy(), ref.cell.array, atol=1e-9)
    np.testing.assert_allclose(r.state.positions.numpy(), ref.positions, atol=1e-8)
    np.testing.assert_allclose(r.state.velocities.numpy(), ref.get_velocities(), atol=1e-9)
    assert abs(r.etot() - md.get_conserved_energy()) < 1e-8


def test_berendsen_nvt_and_npt_match_ase_step_by_step():
    from ase.md.nptberendsen import NPTBerendsen
    from ase.md.nvtberendsen import NVTBerendsen

    atoms = argon(a=5.35, temperature_K=30, seed=6)
    n, dt = 100, 5.0
    ref, _ = _ase_run(atoms, NVTBerendsen, n, timestep=dt * units.fs, temperature_K=60.0,
                      taut=100 * units.fs, fixcm=False)
    r = Runner(atoms, make_integrator("berendsen", dt, temperature_K=60.0, tdamp_fs=100.0, remove_com=False))
    r.step(n)
    np.testing.assert_allclose(r.state.positions.numpy(), ref.positions, atol=1e-8)
    np.testing.assert_allclose(r.state.velocities.numpy(), ref.get_velocities(), atol=1e-9)

    # NPT: ASE re-evaluates forces after scaling the cell (two evaluations per step); atomsim
    # keeps one per step, so the trajectories agree to O(dt/tau_P) rather than to round-off.
    n = 60
    ref, _ = _ase_run(atoms, NPTBerendsen, n, timestep=dt * units.fs, temperature_K=60.0,
                      taut=100 * units.fs, pressure_au=0.1 * units.GPa, taup=200 * units.fs,
                      compressibility_au=0.3 / units.GPa, fixcm=False)
    r = Runner(atoms, make_integrator("berendsen", dt, temperature_K=60.0, tdamp_fs=100.0, remove_com=False,
                                      pressure_GPa=0.1, pdamp_fs=200.0, compressibility_per_GPa=0.3))
    r.step(n)
    v0 = atoms.get_volume()
    assert abs(ref.get_volume() - v0) > 5.0  # the barostat moved the volume by several Å^3 ...
    assert abs(r.state.volume - ref.get_volume()) < 0.02 * abs(ref.get_volume() - v0)  # ... as ASE's did
    np.testing.assert_allclose(r.state.positions.numpy(), ref.positions, atol=2e-3)


# ----------------------------------------------------------------- restarts
def _all_integrators():
    common = dict(temperature_K=60.0, tdamp_fs=100.0)
    return {
        "nve": {},
        "langevin": dict(common, seed=7),
        "nose-hoover": dict(common, chain_length=4),
        "npt-iso": dict(common, pressure_GPa=0.05, pdamp_fs=300.0, barostat="isotropic", _name="npt"),
        "npt-aniso": dict(common, pressure_GPa=[0.1, 0.0, 0.0], pdamp_fs=300.0, barostat="anisotropic",
                          _name="npt"),
        "npt-tri": dict(common, pressure_GPa=0.05, pdamp_fs=300.0, barostat="triclinic", _name="npt"),
        "berendsen": dict(common, pressure_GPa=0.05, pdamp_fs=300.0, compressibility_per_GPa=0.3),
        "fire": dict(fmax_eV_per_A=1e-6, relax_cell=True, _name="fire"),
    }


def save_restart(runner: "Runner", directory) -> None:
    """Write the runner's state through engine/restart.py, as Simulation.write_restart does."""
    from atomsim.engine.restart import write_restart

    st = runner.state
    arrays = {"positions": st.positions, "velocities": st.velocities, "masses": st.masses,
              "numbers": st.numbers, "ids": st.ids, "cell": st.cell, "pbc": torch.tensor(st.pbc)}
    ref = runner.forces.reference_state(st)
    nl = {"positions": ref["positions"], "cell": ref["cell"]} if ref else {}
    write_restart(directory, arrays, runner.integ.name, runner.integ.state_dict(), nl, st.step,
                  {"test": "restart"}, runner.forces.n_builds)


def resume_runner(directory, integ, skin: float = 1.0) -> "Runner":
    """A Runner continuing the newest restart in ``directory`` (what Simulation does with --resume)."""
    from atomsim.engine.restart import find_restart

    rs = find_restart(directory)
    r = Runner.__new__(Runner)
    r.state = rs.to_state()
    r.forces = AffineSerialForces(ShiftedLJ(), skin=skin)
    r.integ = integ
    ref = rs.neighbor_state
    if "positions" in ref:
        r.forces.restore_reference(r.state, ref["positions"], ref["cell"])
    r.compute()
    integ.load_state_dict(rs.integrator_state)
    integ.setup(r.state)
    return r


@pytest.mark.parametrize("key", list(_all_integrators()))
def test_restart_is_bit_for_bit(key, tmp_path):
    """Run 2N steps, or N steps + the restart FILE (engine/restart.py) + N steps: the same bits
    (positions, velocities, cell, and the integrator's state: thermostat chains, barostat momenta,
    FIRE's cell and mixing state, Langevin's noise counter)."""
    params = dict(_all_integrators()[key])
    name = params.pop("_name", key)
    atoms = argon(a=5.3, temperature_K=60, seed=8, rattle=0.03)
    N = 25
    full = Runner(atoms, make_integrator(name, 5.0, **params))
    full.step(2 * N)

    first = Runner(atoms, make_integrator(name, 5.0, **params))
    first.step(N)
    save_restart(first, tmp_path)
    del first
    resumed = resume_runner(tmp_path, make_integrator(name, 5.0, **params))
    assert resumed.state.step == N
    resumed.step(N)
    for attr in ("positions", "velocities", "cell"):
        assert torch.equal(getattr(full.state, attr), getattr(resumed.state, attr)), attr
    assert full.integ.state_dict().keys() == resumed.integ.state_dict().keys()
    for k, v in full.integ.state_dict().items():
        w = resumed.integ.state_dict()[k]
        if isinstance(v, (np.ndarray, torch.Tensor)):
            assert np.array_equal(np.asarray(v), np.asarray(w)), k
        else:
            assert v == w, k


# ----------------------------------------------------------------- fixed atoms
@pytest.mark.parametrize("name,params", [
    ("nve", {}), ("langevin", dict(temperature_K=60.0, seed=3)),
    ("nose-hoover", dict(temperature_K=60.0)), ("berendsen", dict(temperature_K=60.0)),
    ("fire", dict(fmax_eV_per_A=1e-3)),
])
def test_fixed_atoms_stay_put_and_reduce_dof(name, params):
    from atomsim.integrators.constraints import fixed_mask

    atoms = argon(a=5.3, temperature_K=60, seed=9, rattle=0.05)
    r = Runner(atoms, make_integrator(name, 5.0, **params))
    s = r.state
    s.fixed = fixed_mask(s.ids, s.positions, indices=[0, 5], z_range_A=[-0.1, 1.0])
    s.velocities[s.fixed] = 0.0
    n_fixed = int(s.fixed.sum())
    z = atoms.positions[:, 2]
    expected = set(np.flatnonzero((z >= -0.1) & (z <= 1.0))) | {0, 5}
    assert set(np.flatnonzero(s.fixed.numpy())) == expected and n_fixed > 2
    r.integ.setup(s)
    x0 = s.positions[s.fixed].clone()
    r.step(60)
    assert torch.equal(s.positions[s.fixed], x0)
    assert torch.all(s.velocities[s.fixed] == 0)
    assert s.degrees_of_freedom() == 3 * (len(atoms) - n_fixed)


# ----------------------------------------------------------------- FIRE vs ASE
def test_fire_cell_gradient_matches_finite_differences():
    """The generalised cell force is -dH/d(dof): check it against central differences of E + pV."""
    from atomsim.integrators.fire import FIRE

    atoms = argon(a=5.2, temperature_K=0, seed=10, rattle=0.05)
    f = FIRE(fmax_eV_per_A=1e-3, relax_cell=True, pressure_GPa=0.2, exp_cell_factor=3.0)
    r = Runner(atoms, f)
    f.log_f = np.array([[0.01, 0.003, 0.0], [0.002, -0.02, 0.001], [0.0, 0.004, 0.015]])
    s = r.state
    cell0, r0 = f.cell0.copy(), s.positions.clone()  # r0 taken as reference positions

    def enthalpy(logf):
        F = __import__("scipy.linalg", fromlist=["expm"]).expm(logf)
        s.cell.copy_(torch.as_tensor(cell0 @ F.T))
        s.positions.copy_(r0 @ torch.as_tensor(F.T))
        r.compute(s)
        return s.energy + 0.2 * units.GPa * s.volume

    enthalpy(f.log_f)
    _, _, g = f._forces(s)
    h = 1e-5
    num = np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            d = np.zeros((3, 3))
            d[i, j] = h
            num[i, j] = -(enthalpy(f.log_f + d) - enthalpy(f.log_f - d)) / (2 * h) / 3.0
    np.testing.assert_allclose(g, num, atol=1e-7)


@pytest.mark.parametrize("relax_cell", [False, True])
def test_fire_matches_ase_fire_frechet(relax_cell):
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE as AseFIRE

    atoms = argon(a=5.45, temperature_K=0, seed=11, rattle=0.08)
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.02, 0], [0, 0.98, 0.01], [0, 0, 1.03]]),
                   scale_atoms=True)
    ref = atoms.copy()
    ref.calc = ase_lj()
    opt = AseFIRE(FrechetCellFilter(ref) if relax_cell else ref, logfile=None)
    opt.run(fmax=1e-5, steps=5000)

    integ = make_integrator("fire", 1.0, fmax_eV_per_A=1e-5, relax_cell=relax_cell)
    r = Runner(atoms, integ)
    for _ in range(5000):
        r.step(1)
        if integ.converged:
            break
    assert integ.converged
    ref_e = ref.get_potential_energy()
    assert abs(r.state.energy - ref_e) < 1e-4
    if relax_cell:
        # same lattice (compare invariants: lengths and angles, and the volume)
        from ase.geometry import cell_to_cellpar

        np.testing.assert_allclose(cell_to_cellpar(r.state.cell.numpy()), cell_to_cellpar(ref.cell.array),
                                   atol=1e-4)
        assert abs(r.state.volume - ref.get_volume()) < 1e-3
        # and it really relaxed the stress: fcc LJ argon at zero pressure
        assert np.abs(r.state.virial.numpy()).max() / r.state.volume < 1e-6


# ----------------------------------------------------------------- config plumbing
def test_config_keys_reach_the_integrators():
    from atomsim.engine.config import DynamicsConfig
    from atomsim.integrators import integrator_kwargs
    from atomsim.integrators.constraints import fixed_from_config

    dyn = DynamicsConfig(integrator="npt", pressure_GPa=[0.2, 0.0, 0.1], barostat="anisotropic", pdamp_fs=400,
                         chain_length=5, fix={"indices": [1, 2], "z_range_A": [0.0, 0.5]})
    integ = make_integrator(dyn.integrator, 2.0, **integrator_kwargs(dyn, 50.0, 3))
    np.testing.assert_allclose(np.diag(integ.p_ext) / units.GPa, [0.2, 0.0, 0.1])
    assert integ.pdamp == 400 * units.fs and integ.chain_length == 5 and integ.changes_cell

    atoms = argon(temperature_K=60)
    state = MDState.from_atoms(atoms)
    fixed_from_config(state, dyn.fix)
    z = atoms.positions[:, 2]
    assert set(np.flatnonzero(state.fixed.numpy())) == set(np.flatnonzero(z <= 0.5)) | {1, 2}
    assert torch.all(state.velocities[state.fixed] == 0)
    with pytest.raises(ValueError, match="dynamics.fix"):
        integ.setup(state)  # a barostat cannot move a cell with pinned atoms
    fixed_from_config(state, DynamicsConfig().fix)  # default: nothing fixed
    with pytest.raises(ValueError, match="dynamics.fix.indices"):
        fixed_from_config(state, DynamicsConfig(fix={"indices": [len(atoms)]}).fix)
    with pytest.raises(ValueError, match="dynamics.barostat"):
        make_integrator("npt", 1.0, barostat="semi")
    with pytest.raises(ValueError, match="dynamics.pressure_GPa"):
        make_integrator("npt", 1.0, pressure_GPa=[1.0, 0.0, 0.0], barostat="isotropic")


def test_nose_hoover_removes_com_drift():
    atoms = argon(temperature_K=60, seed=12)
    atoms.set_velocities(atoms.get_velocities() + np.array([1e-3, -2e-3, 5e-4]))  # a drifting box
    r = Runner(atoms, make_integrator("nose-hoover", 5.0, temperature_K=60.0))
    p0 = (r.state.masses[:, None] * r.state.velocities).sum(0)
    r.step(50)
    p = (r.state.masses[:, None] * r.state.velocities).sum(0)
    assert float(p0.abs().max()) < 1e-12 and float(p.abs().max()) < 1e-10
    assert r.state.degrees_of_freedom() == 3 * len(atoms) - 3


def test_every_integrator_records_its_registered_name():
    """Restart files record ``integrator.name``: it must be the name the integrator is made by."""
    from atomsim.integrators.base import _REGISTRY

    make_integrator("nve", 1.0)  # imports (registers) every built-in integrator
    assert {"nve", "langevin", "nose-hoover", "npt", "berendsen", "fire"} <= set(_REGISTRY)
    for key, cls in _REGISTRY.items():
        assert cls.name == key, (key, cls.name)
