"""Ensemble checks: the thermostats sample the canonical kinetic-energy distribution, the
barostat the isothermal–isobaric ensemble (physical_validation-style, small LJ argon).

Standard errors come from block averages (they account for autocorrelation); the KS
test uses samples thinned to roughly independent ones.
"""
from __future__ import annotations

import numpy as np
import pytest
from ase import units
from scipy import stats

from atomsim.integrators import make_integrator
from test_integrators import Runner, argon, ase_lj, one_blas_thread  # noqa: F401  (autouse fixture)


def block_se(x: np.ndarray, n_blocks: int = 20) -> float:
    """Standard error of the mean of a correlated series from block means."""
    m = len(x) // n_blocks
    b = np.asarray(x[: m * n_blocks]).reshape(n_blocks, m).mean(1)
    return float(b.std(ddof=1) / np.sqrt(n_blocks))


def block_var_se(x: np.ndarray, n_blocks: int = 20) -> float:
    m = len(x) // n_blocks
    xb = np.asarray(x[: m * n_blocks]).reshape(n_blocks, m)
    v = ((xb - np.mean(x)) ** 2).mean(1)
    return float(v.std(ddof=1) / np.sqrt(n_blocks))


def integrated_act(x: np.ndarray, max_lag: int = 400) -> float:
    """Integrated autocorrelation time (in samples), summed until the ACF first drops below 0."""
    x = np.asarray(x) - np.mean(x)
    var = np.dot(x, x) / len(x)
    tau = 1.0
    for k in range(1, min(max_lag, len(x) // 4)):
        c = np.dot(x[:-k], x[k:]) / (len(x) * var)
        if c <= 0:
            break
        tau += 2 * c
    return tau


def check_canonical_ke(ke: np.ndarray, dof: int, temperature_K: float) -> None:
    kT = units.kB * temperature_K
    mean_ref, var_ref = 0.5 * dof * kT, 0.5 * dof * kT**2
    assert abs(ke.mean() - mean_ref) < 3 * block_se(ke), (ke.mean(), mean_ref, block_se(ke))
    var = ke.var()
    assert abs(var - var_ref) < 3 * block_var_se(ke), (var, var_ref, block_var_se(ke))
    stride = int(np.ceil(2 * integrated_act(ke)))
    thin = ke[::stride]
    assert len(thin) > 150, (stride, len(thin))
    p = stats.kstest(thin, stats.gamma(a=0.5 * dof, scale=kT).cdf).pvalue
    assert p > 0.01, (p, stride, len(thin))


T0 = 70.0  # K: solid LJ argon, anharmonic enough to mix


@pytest.mark.slow
def test_langevin_samples_canonical_kinetic_energy():
    atoms = argon(rep=2, a=5.3, temperature_K=T0, seed=21)
    r = Runner(atoms, make_integrator("langevin", 5.0, temperature_K=T0, tdamp_fs=200.0, seed=5))
    r.step(400)
    ke = np.array(r.step(12000, every=1, fn=lambda rr: rr.state.kinetic_energy()))
    check_canonical_ke(ke, 3 * len(atoms), T0)  # Langevin heats all 3N dof (no COM constraint)


@pytest.mark.slow
def test_nose_hoover_chain_samples_canonical_kinetic_energy():
    atoms = argon(rep=2, a=5.3, temperature_K=T0, seed=22)
    r = Runner(atoms, make_integrator("nose-hoover", 5.0, temperature_K=T0, tdamp_fs=200.0, chain_length=3))
    r.step(400)
    e0 = r.etot()
    out = np.array(r.step(12000, every=1, fn=lambda rr: (rr.state.kinetic_energy(), rr.etot())))
    ke, econs = out[:, 0], out[:, 1]
    check_canonical_ke(ke, 3 * len(atoms) - 3, T0)  # momentum conserved: 3N - 3 dof
    assert np.abs(econs - e0).max() < 0.05 * ke.std()  # conserved quantity flat


@pytest.mark.slow
def test_langevin_averages_match_ase_langevin():
    """Same system, ASE's Langevin (a different splitting of the same SDE): mean PE and KE agree."""
    from ase.md.langevin import Langevin

    atoms = argon(rep=2, a=5.3, temperature_K=T0, seed=23)
    r = Runner(atoms, make_integrator("langevin", 5.0, temperature_K=T0, tdamp_fs=100.0, seed=9))
    r.step(400)
    ours = np.array(r.step(8000, every=1, fn=lambda rr: (rr.state.energy, rr.state.kinetic_energy())))

    a = atoms.copy()
    a.calc = ase_lj()
    md = Langevin(a, 5.0 * units.fs, temperature_K=T0, friction=1.0 / (100.0 * units.fs),
                  fixcm=False, rng=np.random.default_rng(4))  # both thermalise all 3N dof
    md.run(400)
    ref = []
    md.attach(lambda: ref.append((a.get_potential_energy(), a.get_kinetic_energy())), interval=1)
    md.run(8000)
    ref = np.array(ref)
    for k in range(2):
        se = np.hypot(block_se(ours[:, k]), block_se(ref[:, k]))
        assert abs(ours[:, k].mean() - ref[:, k].mean()) < 3 * se, (k, ours[:, k].mean(), ref[:, k].mean(), se)


P0_GPA = 0.1


@pytest.mark.slow
def test_npt_mean_pressure_and_volume_consistent_with_nvt():
    """MTK NPT: <P> = P0 (the NPT virial theorem), and NVT at the NPT mean volume gives <P> = P0 too.

    (Step-by-step agreement with ASE's MTK is in test_integrators.py.)"""
    atoms = argon(rep=2, a=5.35, temperature_K=T0, seed=24)
    r = Runner(atoms, make_integrator("npt", 5.0, temperature_K=T0, tdamp_fs=100.0, pressure_GPa=P0_GPA,
                                          pdamp_fs=500.0))
    r.step(1000)  # equilibrate the volume
    out = np.array(r.step(12000, every=1, fn=lambda rr: (rr.state.pressure() / units.GPa, rr.state.volume)))
    p, vol = out[:, 0], out[:, 1]
    assert abs(p.mean() - P0_GPA) < 3 * block_se(p), (p.mean(), block_se(p))

    # NVT (Nose-Hoover chain) at the NPT mean volume
    v_mean, v_se = vol.mean(), block_se(vol)
    nvt_atoms = argon(rep=2, a=5.35 * (v_mean / atoms.get_volume()) ** (1 / 3), temperature_K=T0, seed=25)
    q = Runner(nvt_atoms, make_integrator("nose-hoover", 5.0, temperature_K=T0, tdamp_fs=100.0))
    q.step(400)
    p_nvt = np.array(q.step(6000, every=1, fn=lambda rr: rr.state.pressure() / units.GPa))
    # the NPT mean volume is itself uncertain: propagate its error through the bulk modulus,
    # which the volume fluctuations give (B = kT <V> / var V)
    bulk_GPa = units.kB * T0 * v_mean / vol.var() / units.GPa
    # finite-size ensemble difference: <P_NVT(V)>_NPT = P0, so P_NVT(<V>) = P0 - P''(V) var(V) / 2
    # = P0 - (1 + B') kT / (2 <V>) to second order; B' = dB/dP ~ 8 +- 3 for LJ solids
    kt_v = units.kB * T0 / v_mean / units.GPa
    expected = P0_GPA - 0.5 * (1 + 8.0) * kt_v
    se = np.sqrt(block_se(p_nvt) ** 2 + (bulk_GPa * v_se / v_mean) ** 2 + (0.5 * 3.0 * kt_v) ** 2)
    assert 0.5 < bulk_GPa < 10, bulk_GPa  # LJ argon near 70 K: a few GPa
    assert abs(p_nvt.mean() - expected) < 3 * se, (p_nvt.mean(), expected, se, bulk_GPa)


@pytest.mark.slow
def test_anisotropic_barostat_under_uniaxial_target_changes_cell_shape():
    """Per-axis targets [Pxx, 0, 0] with Pxx < 0 (uniaxial tension): x stretches relative to y and z,
    and each diagonal pressure component averages to its own target. (Compressing a 32-atom fcc
    cell along [100] by ~1 eps/sigma^3 = 0.04 GPa already sends it down the Bain path to a new
    crystal; tension at 20 K stays elastic.)"""
    T = 20.0
    atoms = argon(rep=2, a=5.3, temperature_K=T, seed=26)
    target = [-0.03, 0.0, 0.0]  # GPa: pull along x only
    r = Runner(atoms, make_integrator("npt", 5.0, temperature_K=T, tdamp_fs=100.0, pressure_GPa=target,
                                      pdamp_fs=300.0, barostat="anisotropic"))
    r.step(400)

    def sample(rr):
        s = rr.state
        ptens = (s.kinetic_tensor() - s.virial).numpy() / s.volume / units.GPa
        return [*np.diag(ptens), *s.cell.numpy().diagonal()]

    out = np.array(r.step(3000, every=1, fn=sample))
    ptens, lengths = out[:, :3], out[:, 3:]
    ratio = lengths[:, 0] / lengths[:, 1:].mean(1)
    assert ratio.mean() > 1 + 10 * block_se(ratio) and ratio.mean() > 1.01, ratio.mean()  # x longer
    assert np.abs(lengths[:, 1:] / (2 * 5.3) - 1).max() < 0.06  # y and z: the same crystal, not a new one
    for k in range(3):
        se = block_se(ptens[:, k])
        assert abs(ptens[:, k].mean() - target[k]) < 3 * se, (k, ptens[:, k].mean(), se)
