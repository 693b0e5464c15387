"""Ensemble checks: the thermostats sample the canonical kinetic-energy distribution, the
barostat the isothermal–isobaric ensemble (physical_validation-style, small LJ argon).

Each test's body is a function of one seed that returns its z-scores and p-values
(``*_stats(seed)``); the test runs it for a fixed seed and applies the limits in ``check``.
benchmarks/seed_sweep/run_sweep.py runs the same functions over many seeds and reports how
often each test fails, to show the failure rate matches the nominal false-alarm rate.

Error bars come from the statistical inefficiency of each series (tests/stats_util.py), and each
test's limits share a family-wise false-alarm rate FAMILY_ALPHA across the numbers it checks
(Bonferroni). Barostatted pressures are the exception: see ``barostat_pressure_z``.
"""
from __future__ import annotations

import numpy as np
import pytest
from ase import units
from scipy import stats
from test_integrators import Runner, argon, ase_lj

from atomsim.integrators import make_integrator

from stats_util import (
    difference_z,
    mean_z,
    p_limit,
    standard_error,
    statistical_inefficiency,
    thin,
    variance_z,
    z_limit,
)

pytestmark = pytest.mark.usefixtures("one_thread_pools")  # tests/conftest.py: 1 BLAS/OpenMP thread

T0 = 70.0  # K: solid LJ argon, anharmonic enough to mix
P0_GPA = 0.1
KS_SAMPLES = 80  # fixed sample count for the KS test, whatever the run's autocorrelation


def check(result: dict) -> None:
    """Apply a test's limits: every |z| within the Bonferroni bound, every p above its share of alpha,
    and the design checks (e.g. thinned samples at least 2 g apart) true."""
    n = len(result["z"]) + len(result["p"])
    for name, z in result["z"].items():
        assert abs(z) < z_limit(n), (name, z, z_limit(n), result)
    for name, p in result["p"].items():
        assert p > p_limit(n), (name, p, p_limit(n), result)
    for name, ok in result.get("design", {}).items():
        assert ok, (name, result)


def canonical_ke(ke: np.ndarray, dof: int, temperature_K: float) -> dict:
    """z of the mean and variance of the kinetic energy against the canonical (gamma) law, and the
    KS p-value of KS_SAMPLES equally spaced samples."""
    kT = units.kB * temperature_K
    g = statistical_inefficiency(ke)
    sample, stride = thin(ke, KS_SAMPLES)
    return {
        "z": {"ke_mean": mean_z(ke, 0.5 * dof * kT), "ke_var": variance_z(ke, 0.5 * dof * kT**2)},
        "p": {"ke_ks": float(stats.kstest(sample, stats.gamma(a=0.5 * dof, scale=kT).cdf).pvalue)},
        # at a stride of 2 g (4 exponential correlation times) neighbours correlate by < 2 %
        "design": {"ks_stride_ge_2g": stride >= 2 * g},
        "g": g, "stride": stride,
    }


def langevin_ke_stats(seed: int) -> dict:
    atoms = argon(rep=2, a=5.3, temperature_K=T0, seed=seed)
    r = Runner(atoms, make_integrator("langevin", 5.0, temperature_K=T0, tdamp_fs=200.0, seed=seed + 10_000))
    r.step(400)
    ke = np.array(r.step(12000, every=1, fn=lambda rr: rr.state.kinetic_energy()))
    return canonical_ke(ke, 3 * len(atoms), T0)  # Langevin heats all 3N dof (no COM constraint)


@pytest.mark.slow
def test_langevin_samples_canonical_kinetic_energy():
    check(langevin_ke_stats(21))


def nose_hoover_ke_stats(seed: int) -> dict:
    atoms = argon(rep=2, a=5.3, temperature_K=T0, seed=seed)
    r = Runner(atoms, make_integrator("nose-hoover", 5.0, temperature_K=T0, tdamp_fs=200.0, chain_length=3))
    r.step(400)
    e0 = r.etot()
    out = np.array(r.step(12000, every=1, fn=lambda rr: (rr.state.kinetic_energy(), rr.etot())))
    ke, econs = out[:, 0], out[:, 1]
    res = canonical_ke(ke, 3 * len(atoms) - 3, T0)  # momentum conserved: 3N - 3 dof
    res["design"]["conserved_flat"] = bool(np.abs(econs - e0).max() < 0.05 * ke.std())  # not statistical
    return res


@pytest.mark.slow
def test_nose_hoover_chain_samples_canonical_kinetic_energy():
    check(nose_hoover_ke_stats(22))


def langevin_vs_ase_stats(seed: int) -> dict:
    """Same system, ASE's Langevin (a different splitting of the same SDE): mean PE and KE agree."""
    from ase.md.langevin import Langevin

    atoms = argon(rep=2, a=5.3, temperature_K=T0, seed=seed)
    r = Runner(atoms, make_integrator("langevin", 5.0, temperature_K=T0, tdamp_fs=100.0, seed=seed + 10_000))
    r.step(400)
    ours = np.array(r.step(8000, every=1, fn=lambda rr: (rr.state.energy, rr.state.kinetic_energy())))

    a = atoms.copy()
    a.calc = ase_lj()
    md = Langevin(a, 5.0 * units.fs, temperature_K=T0, friction=1.0 / (100.0 * units.fs),
                  fixcm=False, rng=np.random.default_rng(seed + 20_000))  # both thermalise all 3N dof
    md.run(400)
    ref = []
    md.attach(lambda: ref.append((a.get_potential_energy(), a.get_kinetic_energy())), interval=1)
    md.run(8000)
    ref = np.array(ref)
    return {"z": {"pe_mean": difference_z(ours[:, 0], ref[:, 0]),
                  "ke_mean": difference_z(ours[:, 1], ref[:, 1])},
            "p": {}}


@pytest.mark.slow
def test_langevin_averages_match_ase_langevin():
    check(langevin_vs_ase_stats(23))


def barostat_pressure_z(vp_minus_target: np.ndarray, kin_per_dof: np.ndarray, friction_term: np.ndarray,
                        p_cell: np.ndarray, kT: float, duration: float) -> float:
    """z of <V (P - P_target)> = -kT (per barostat degree of freedom), the MTK virial theorem.

    Why not the plain standard error of the mean pressure: the barostat feeds the pressure back
    into the volume, so the fluctuations of P cancel over a barostat period (its autocorrelation
    integrates to ~0 and block means cancel); their error bar says nothing about the mean's error.
    The equation of motion of the cell momentum p says exactly where the mean's error comes from,
        dp/dt = V (P - P_target) + 2 KE / N_f - xi p      (xi: the barostat's own thermostat),
    so  mean[V (P - P_target)] = -mean[2 KE / N_f - xi p] + (p(end) - p(start)) / duration.
    In equilibrium <2 KE / N_f> = kT and <xi p> = 0; the error is that of the series 2 KE/N_f - xi p
    (ordinary, it does not cancel) plus the end-point term (sqrt(2) std(p) / duration).
    """
    u = kin_per_dof - friction_term
    se = np.hypot(standard_error(u), np.sqrt(2.0) * p_cell.std() / duration)
    return float((vp_minus_target.mean() + kT) / se)


def _barostat_sample(rr, target_eV: np.ndarray) -> list:
    """Per step: diag V (P - P_target) (eV), 2 KE / N_f, xi p_cell per component, p_cell, volume, cell."""
    s, integ = rr.state, rr.integ
    ktens = s.kinetic_tensor().numpy()
    vp = np.diag(ktens - s.virial.numpy()) - s.volume * target_eV
    xi = integ.baro.p_eta[0] / integ.baro.Q[0]
    p = np.broadcast_to(integ.p_cell, (3,)) if integ.p_cell.size == 1 else integ.p_cell
    return [*vp, np.trace(ktens) / integ.n_dof, *(xi * p), *p, s.volume, *s.cell.numpy().diagonal()]


def npt_stats(seed: int) -> dict:
    """MTK NPT: <V (P - P0)> = -kT (the NPT virial theorem), and NVT at the NPT mean volume gives the
    pressure the NPT run implies. (Step-by-step agreement with ASE's MTK is in test_integrators.py.)"""
    atoms = argon(rep=2, a=5.35, temperature_K=T0, seed=seed)
    integ = make_integrator("npt", 5.0, temperature_K=T0, tdamp_fs=100.0, pressure_GPa=P0_GPA, pdamp_fs=500.0)
    r = Runner(atoms, integ)
    r.step(1000)  # equilibrate the volume
    n = 12000
    target = np.full(3, P0_GPA * units.GPa)
    out = np.array(r.step(n, every=1, fn=lambda rr: _barostat_sample(rr, target)))
    kT = units.kB * T0
    # isotropic: one cell momentum driven by the trace, i.e. 3 V (P - P0) + 3 * 2 KE / N_f - xi p
    z_p = barostat_pressure_z(out[:, 0:3].sum(1) / 3, out[:, 3], out[:, 4] / 3, out[:, 7] / 3, kT,
                              n * integ.dt)
    vol = out[:, 10]

    # NVT (Nose-Hoover chain) at the NPT mean volume
    v_mean, v_se = vol.mean(), standard_error(vol)
    a_nvt = 5.35 * (v_mean / atoms.get_volume()) ** (1 / 3)
    nvt_atoms = argon(rep=2, a=a_nvt, temperature_K=T0, seed=seed + 1)
    q = Runner(nvt_atoms, make_integrator("nose-hoover", 5.0, temperature_K=T0, tdamp_fs=100.0))
    q.step(400)
    p_nvt = np.array(q.step(6000, every=1, fn=lambda rr: rr.state.pressure() / units.GPa))
    # the NPT mean volume is itself uncertain: propagate its error through the bulk modulus,
    # which the volume fluctuations give (B = kT <V> / var V)
    bulk_GPa = kT * v_mean / vol.var() / units.GPa
    # finite-size ensemble difference: <V P_NVT(V)>_NPT = P0 <V> - kT (as above), so to second order
    # P_NVT(<V>) = P0 - P''(V) var(V) / 2 = P0 - (1 + B') kT / (2 <V>), with B' = dB/dP. B' is not
    # measured here: it is taken to lie in [5, 11] (LJ solids: ~8), a systematic band, not noise,
    # so the test allows the band's half-width plus the statistical bound.
    kt_v = kT / v_mean / units.GPa
    lo, hi = P0_GPA - 0.5 * (1 + 11.0) * kt_v, P0_GPA - 0.5 * (1 + 5.0) * kt_v
    se = np.hypot(standard_error(p_nvt), bulk_GPa * v_se / v_mean)
    d = p_nvt.mean() - 0.5 * (lo + hi)
    z_nvt = float(np.sign(d) * max(0.0, abs(d) - 0.5 * (hi - lo)) / se)  # 0 inside the band
    return {"z": {"npt_virial": z_p, "nvt_pressure_at_mean_volume": z_nvt}, "p": {},
            "design": {"bulk_modulus_few_GPa": bool(0.5 < bulk_GPa < 10)},  # LJ argon near 70 K
            "bulk_GPa": bulk_GPa}


@pytest.mark.slow
def test_npt_mean_pressure_and_volume_consistent_with_nvt():
    check(npt_stats(24))


def anisotropic_stats(seed: int) -> dict:
    """Per-axis targets [Pxx, 0, 0] with Pxx < 0 (uniaxial tension): x stretches relative to y and z,
    and each diagonal pressure component averages to its own target (MTK virial theorem per axis).
    (Compressing a 32-atom fcc cell along [100] by ~1 eps/sigma^3 = 0.04 GPa already sends it down
    the Bain path to a new crystal; tension at 20 K stays elastic.)"""
    T = 20.0
    atoms = argon(rep=2, a=5.3, temperature_K=T, seed=seed)
    target_gpa = [-0.03, 0.0, 0.0]  # pull along x only
    integ = make_integrator("npt", 5.0, temperature_K=T, tdamp_fs=100.0, pressure_GPa=target_gpa,
                            pdamp_fs=300.0, barostat="anisotropic")
    r = Runner(atoms, integ)
    r.step(400)
    n = 3000
    target = np.array(target_gpa) * units.GPa
    out = np.array(r.step(n, every=1, fn=lambda rr: _barostat_sample(rr, target)))
    lengths = out[:, 11:14]
    ratio = lengths[:, 0] / lengths[:, 1:].mean(1)
    z = {f"p{'xyz'[k]}{'xyz'[k]}": barostat_pressure_z(out[:, k], out[:, 3], out[:, 4 + k], out[:, 7 + k],
                                                       units.kB * T, n * integ.dt) for k in range(3)}
    return {"z": z, "p": {},
            "design": {  # not statistical: 10 standard errors and 1 % (x longer), < 6 % (same crystal)
                "x_longer": bool(ratio.mean() > 1 + 10 * standard_error(ratio) and ratio.mean() > 1.01),
                "yz_same_crystal": bool(np.abs(lengths[:, 1:] / (2 * 5.3) - 1).max() < 0.06)},
            "ratio": float(ratio.mean())}


@pytest.mark.slow
def test_anisotropic_barostat_under_uniaxial_target_changes_cell_shape():
    check(anisotropic_stats(26))


# the functions benchmarks/seed_sweep/run_sweep.py runs over many seeds, with the seeds the tests use
STATISTICAL_TESTS = {
    "langevin_canonical_ke": (langevin_ke_stats, 21),
    "nose_hoover_canonical_ke": (nose_hoover_ke_stats, 22),
    "langevin_vs_ase": (langevin_vs_ase_stats, 23),
    "npt_virial_and_nvt": (npt_stats, 24),
    "anisotropic_barostat": (anisotropic_stats, 26),
}
