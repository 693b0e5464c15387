"""`atomsim plot run/` and `atomsim analyze run/ --rdf --msd --vacf`: what a run's files say.

Libraries, and why:

- RDF: ASE's ``ase.geometry.rdf.get_rdf`` (the maintained, LAMMPS-consistent one,
  partial RDFs included), averaged over the frames here so ASE >= 3.23 works.
- MSD and VACF: numpy, written out below. Both are time-origin-averaged
  autocorrelations computed with FFTs (the algorithm of nMoldyn, freud's and
  tidynamics' "window" MSD): ~40 lines. MDAnalysis or freud would bring a
  compiled dependency and their own trajectory readers for no gain here; the
  tests check these functions against direct double loops.

Frames come from the run's trajectory in any format (engine/trajectory.py);
positions are unwrapped from frame to frame (minimum image of each step's
displacement, fractional coordinates), so frames must be written often enough
that no atom moves half a box between two of them. Fixed atoms are left out of
MSD and VACF. Units: Å, ps; D in Å²/ps (1 Å²/ps = 1e-4 cm²/s).
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from atomsim.engine.trajectory import TRAJECTORY_FILES, read_trajectory

# D from the MSD: a straight line fitted over lag times in this fraction of the trajectory's length
# (short lags are ballistic, long ones have few time origins)
MSD_FIT = (0.1, 0.5)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _write_csv(path: Path, header: Sequence[str], columns: Sequence[np.ndarray]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for row in zip(*columns):
            w.writerow([repr(float(x)) for x in row])


def _plot(path: Path, x: np.ndarray, curves: dict, xlabel: str, ylabel: str, title: str,
          zero_line: bool = False) -> None:
    """One PNG of named curves over ``x`` (a legend when any curve has a name)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, y in curves.items():
        ax.plot(x, y, label=name or None)
    if zero_line:
        ax.axhline(0.0, color="k", lw=0.5)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if any(curves):
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ---------------------------------------------------------------- thermo plot --

_PANELS = (("temperature_K", "temperature (K)"), ("etotal_eV", "energy (eV)"),
           ("pressure_GPa", "pressure (GPa)"), ("volume_A3", "volume (Å³)"))


def plot_thermo(run_dir, output: Optional[Path] = None) -> Path:
    """Temperature, energies, pressure and volume against time from ``run_dir/thermo.csv`` -> a PNG."""
    run_dir = Path(run_dir)
    path = run_dir / "thermo.csv"
    if not path.is_file():
        raise ValueError(f"{run_dir}: no thermo.csv here; give the output.directory of a run")
    data = np.genfromtxt(path, delimiter=",", names=True)
    if data.size == 0 or data.ndim == 0 and data.size == 1 and not data.dtype.names:
        raise ValueError(f"{path}: no rows yet")
    data = np.atleast_1d(data)
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(9, 6), dpi=100, sharex=True)
    t = data["time_ps"]
    for ax, (col, label) in zip(axes.ravel(), _PANELS):
        if col == "etotal_eV":
            for name, style in (("etotal_eV", "-"), ("pe_eV", "--"), ("conserved_eV", ":")):
                if name in data.dtype.names:
                    ax.plot(t, data[name], style, label=name.removesuffix("_eV"))
            ax.legend(fontsize=8)
        elif col in data.dtype.names:
            ax.plot(t, data[col], "-")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("time (ps)")
    fig.suptitle(str(run_dir), fontsize=10)
    fig.tight_layout()
    output = Path(output) if output is not None else run_dir / "thermo.png"
    fig.savefig(output)
    plt.close(fig)
    return output


# ------------------------------------------------------------------- frames --

def find_trajectory(run_dir) -> Path:
    """The trajectory file of a run folder (whichever of the three formats is there, newest first)."""
    run_dir = Path(run_dir)
    found = [run_dir / name for name in TRAJECTORY_FILES.values() if (run_dir / name).is_file()]
    if not found:
        raise ValueError(f"{run_dir}: no trajectory ({', '.join(TRAJECTORY_FILES.values())}); "
                         "run with output.trajectory_every > 0, or give --trajectory FILE")
    return max(found, key=lambda p: p.stat().st_mtime)


def frame_times_ps(frames) -> np.ndarray:
    """Each frame's time in ps (``info['time_ps']``, written by the engine)."""
    try:
        return np.array([float(a.info["time_ps"]) for a in frames])
    except KeyError:
        raise ValueError("the trajectory frames carry no time_ps; analyze trajectories written by atomsim") \
            from None


def _uniform_spacing(times: np.ndarray) -> float:
    if len(times) < 2:
        raise ValueError("MSD and VACF need at least two frames")
    dt = np.diff(times)
    if not np.allclose(dt, dt[0], rtol=1e-6, atol=1e-12) or dt[0] <= 0:
        raise ValueError("MSD and VACF need frames evenly spaced in time (one output.trajectory_every); "
                         f"the spacings here range from {dt.min():g} to {dt.max():g} ps")
    return float(dt[0])


def unwrap_positions(frames) -> np.ndarray:
    """(T, N, 3) positions continuous in time: each step's displacement taken as its minimum image.

    Along non-periodic axes positions are used as they are.
    """
    pos = np.array([a.positions for a in frames], dtype=np.float64)
    out = pos.copy()
    for k in range(1, len(frames)):
        cell = frames[k].cell.array
        step = pos[k] - pos[k - 1]
        pbc = np.asarray(frames[k].pbc, dtype=bool)
        if pbc.any():
            frac = np.linalg.solve(cell.T, step.T).T
            frac[:, pbc] -= np.round(frac[:, pbc])
            step = frac @ cell
        out[k] = out[k - 1] + step
    return out


def _mobile(frames) -> np.ndarray:
    """Atoms not held by a FixAtoms in the first frame."""
    from ase.constraints import FixAtoms

    mask = np.ones(len(frames[0]), dtype=bool)
    for c in frames[0].constraints:
        if isinstance(c, FixAtoms):
            mask[c.index] = False
    return mask


# --------------------------------------------------------------- estimators --

def _autocorrelation(x: np.ndarray) -> np.ndarray:
    """sum over the trailing axes of <x(k) . x(k + m)>_k for every lag m, x of shape (T, ...): (T,)."""
    T = x.shape[0]
    n = 1 << int(np.ceil(np.log2(2 * T)))  # zero padding: a linear, not circular, correlation
    f = np.fft.rfft(x.reshape(T, -1), n=n, axis=0)
    s = np.fft.irfft(f * f.conj(), n=n, axis=0)[:T].sum(axis=1)
    return s / (T - np.arange(T))


def msd(positions: np.ndarray) -> np.ndarray:
    """Mean squared displacement, averaged over atoms and every time origin: (T,) in Å² for (T, N, 3).

    MSD(m) = <|x(k + m) - x(k)|^2> = <x(k+m)^2 + x(k)^2>_k - 2 <x(k) . x(k+m)>_k; the first
    term by a running sum, the second by FFT (:func:`_autocorrelation`).
    """
    T, n = positions.shape[:2]
    sq = (positions**2).sum(axis=(1, 2))  # (T,) sum over atoms and xyz of x^2
    total = 2.0 * sq.sum()
    s1 = np.empty(T)
    for m in range(T):  # sum_{k=0}^{T-m-1} x(k)^2 + x(k+m)^2
        if m > 0:
            total -= sq[m - 1] + sq[T - m]
        s1[m] = total / (T - m)
    return (s1 - 2.0 * _autocorrelation(positions)) / n


def vacf(velocities: np.ndarray) -> np.ndarray:
    """Velocity autocorrelation <v(k) . v(k + m)> over atoms and time origins: (T,) for (T, N, 3)."""
    return _autocorrelation(velocities) / velocities.shape[1]


def diffusion_from_msd(lag_ps: np.ndarray, values: np.ndarray, window=MSD_FIT) -> float:
    """D = slope / 6 (Å²/ps) of a line fitted to the MSD over ``window`` of the lags; NaN if too few."""
    t_end = lag_ps[-1]
    sel = (lag_ps >= window[0] * t_end) & (lag_ps <= window[1] * t_end)
    if sel.sum() < 3:
        return float("nan")
    slope = np.polyfit(lag_ps[sel], values[sel], 1)[0]
    return float(slope / 6.0)


def rdf(frames, rmax: float, nbins: int,
        elements: Optional[Tuple[str, str]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """g(r) averaged over ``frames`` with ASE's get_rdf: (bin centres, Å; g). ``elements``: partial RDF."""
    from ase.geometry.rdf import CellTooSmall, VolumeNotDefined, get_rdf

    total = None
    r = None
    for atoms in frames:
        try:
            g, r = get_rdf(atoms, rmax, nbins, elements=elements)
        except CellTooSmall as exc:
            raise ValueError(f"--rmax {rmax:g} Å is too large for the cell (it must fit a sphere of radius "
                             f"rmax in the periodic directions: {exc}); give a smaller --rmax") from None
        except VolumeNotDefined:
            raise ValueError("the RDF needs a cell volume; this trajectory's cell has none") from None
        total = g if total is None else total + g
    return r, total / len(frames)


def default_rmax(atoms) -> float:
    """The largest radius get_rdf accepts for this cell (half the smallest periodic width), at most 10 Å."""
    cell = atoms.cell
    if cell.rank < 3:
        return 10.0
    widths = 1.0 / np.linalg.norm(np.linalg.inv(cell.array), axis=0)  # distances between opposite faces
    widths = widths[np.asarray(atoms.pbc, dtype=bool)] if any(atoms.pbc) else widths
    return float(min(10.0, 0.5 * widths.min() * (1 - 1e-6)))


# ------------------------------------------------------------------ the job --

def analyze(run_dir, *, do_rdf: bool = True, do_msd: bool = True, do_vacf: bool = True,
            trajectory: Optional[Path] = None, rmax: Optional[float] = None, nbins: int = 100,
            skip: int = 0, output: Optional[Path] = None, log=print) -> Dict[str, object]:
    """Write rdf/msd/vacf .csv and .png into ``output`` (default ``run_dir/analysis``); returns a summary.

    ``skip``: frames dropped from the start (equilibration).
    """
    path = Path(trajectory) if trajectory is not None else find_trajectory(run_dir)
    if not path.is_file():
        raise ValueError(f"--trajectory: no such file {str(path)!r}")
    frames = read_trajectory(path)[skip:]
    if not frames:
        raise ValueError(f"{path}: no frames left after --skip {skip}")
    out = Path(output) if output is not None else Path(run_dir) / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    summary: Dict[str, object] = {"trajectory": str(path), "frames": len(frames), "files": []}
    symbols = sorted(set(frames[0].get_chemical_symbols()))

    if do_rdf:
        rmax = default_rmax(frames[0]) if rmax is None else float(rmax)
        r, g = rdf(frames, rmax, nbins)
        cols, header = [r, g], ["r_A", "g"]
        if len(symbols) > 1:
            for i, a in enumerate(symbols):
                for b in symbols[i:]:
                    cols.append(rdf(frames, rmax, nbins, (a, b))[1])
                    header.append(f"g_{a}-{b}")
        _write_csv(out / "rdf.csv", header, cols)
        _plot(out / "rdf.png", r, dict(zip(header[1:], cols[1:])), "r (Å)", "g(r)",
              f"RDF, {len(frames)} frames (ASE get_rdf)")
        summary["files"] += [str(out / "rdf.csv"), str(out / "rdf.png")]
        summary["rdf_first_peak_A"] = float(r[int(np.argmax(g))])

    if do_msd or do_vacf:
        times = frame_times_ps(frames)
        dt = _uniform_spacing(times)
        lag = dt * np.arange(len(frames))
        mobile = _mobile(frames)
        numbers = frames[0].numbers[mobile]
    if do_msd:
        pos = unwrap_positions(frames)[:, mobile]
        cols, header = [lag, msd(pos)], ["lag_ps", "msd_A2"]
        if len(symbols) > 1:
            from ase.data import atomic_numbers

            for s in symbols:
                cols.append(msd(pos[:, numbers == atomic_numbers[s]]))
                header.append(f"msd_{s}_A2")
        _write_csv(out / "msd.csv", header, cols)
        d = diffusion_from_msd(lag, cols[1])
        summary["D_msd_A2_per_ps"] = d
        _plot(out / "msd.png", lag, dict(zip(header[1:], cols[1:])), "lag time (ps)", "MSD (Å²)",
              f"MSD; D = {d:.4g} Å²/ps (fit over {MSD_FIT[0]:g}-{MSD_FIT[1]:g} of the lags)")
        summary["files"] += [str(out / "msd.csv"), str(out / "msd.png")]

    if do_vacf:
        from ase import units

        if not all(a.has("momenta") for a in frames):
            raise ValueError(f"{path}: frames without velocities; the VACF needs them")
        vel = np.array([a.get_velocities() for a in frames])[:, mobile] * (1000.0 * units.fs)  # Å/ps
        c = vacf(vel)
        half = len(frames) // 2 + 1  # lags beyond half the run have too few origins
        running = np.concatenate([[0.0], np.cumsum(0.5 * (c[1:] + c[:-1]) * dt)]) / 3.0  # Green-Kubo
        _write_csv(out / "vacf.csv", ["lag_ps", "vacf_A2_per_ps2", "vacf_normalized", "D_running_A2_per_ps"],
                   [lag, c, c / c[0] if c[0] else c, running])
        summary["D_vacf_A2_per_ps"] = float(running[half - 1])
        _plot(out / "vacf.png", lag, {"": c / c[0] if c[0] else c}, "lag time (ps)", "VACF / VACF(0)",
              f"VACF; Green-Kubo D = {running[half - 1]:.4g} Å²/ps (to lag {lag[half - 1]:g} ps)", zero_line=True)
        summary["files"] += [str(out / "vacf.csv"), str(out / "vacf.png")]
    for f in summary["files"]:
        log(f"wrote {f}")
    return summary
