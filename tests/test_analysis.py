"""`atomsim plot` and `atomsim analyze` on a tiny run of examples/lj_argon_analysis.yaml.

References, each computed here from the frames as plain h5py reads them:
- RDF: ASE's ``get_rdf`` per frame, averaged; and a direct numpy histogram of all
  minimum-image pair distances (independent of ASE);
- MSD and VACF: direct double loops over every time origin (the library uses FFTs);
- unwrapping: the analysis of frames wrapped into the cell equals that of the raw frames.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
from ase import Atoms
from ase.geometry.rdf import get_rdf

from atomsim.analysis import msd, unwrap_positions, vacf
from atomsim.cli import main

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "lj_argon_analysis.yaml"
RMAX, BINS = 7.0, 35


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("analysis") / "run"
    tiny = ["system.structure.repeat=3", "dynamics.steps=40", "output.trajectory_every=2",
            "output.thermo_every=10", "output.progress=false", f"output.directory={out}"]
    assert main(["run", str(EXAMPLE)] + [a for s in tiny for a in ("--set", s)]) == 0
    return out


def _frames(run: Path):
    """positions (T, N, 3), velocities (T, N, 3) in Å/ps, cells (T, 3, 3), numbers, times: plain h5py."""
    with h5py.File(run / "trajectory.h5md", "r") as f:
        part = f["particles/all"]
        return (part["position/value"][()], part["velocity/value"][()], part["box/edges/value"][()],
                part["species"][()], part["position/time"][()])


def _csv(path: Path) -> dict:
    data = np.genfromtxt(path, delimiter=",", names=True)
    return {name: data[name] for name in data.dtype.names}


def _direct_rdf(positions, cells, rmax, nbins) -> np.ndarray:
    """All ordered pairs, minimum image in an orthorhombic box (rmax < L/2), exact shell volumes."""
    edges = np.linspace(0.0, rmax, nbins + 1)
    shells = 4.0 / 3.0 * np.pi * (edges[1:] ** 3 - edges[:-1] ** 3)
    out = np.zeros(nbins)
    for x, cell in zip(positions, cells):
        box = np.diag(cell)
        assert np.allclose(cell, np.diag(box)) and rmax < box.min() / 2
        d = x[None, :, :] - x[:, None, :]
        d -= box * np.round(d / box)
        r = np.sqrt((d**2).sum(-1))[~np.eye(len(x), dtype=bool)]
        n = len(x)
        out += np.histogram(r, bins=edges)[0] / (n * (n / np.prod(box)) * shells)
    return out / len(positions)


def _direct_msd(x) -> np.ndarray:
    T = len(x)
    return np.array([np.mean([((x[k + m] - x[k]) ** 2).sum(-1).mean() for k in range(T - m)])
                     for m in range(T)])


def _direct_vacf(v) -> np.ndarray:
    T = len(v)
    return np.array([np.mean([(v[k] * v[k + m]).sum(-1).mean() for k in range(T - m)]) for m in range(T)])


def test_plot_writes_a_png(run):
    assert main(["plot", str(run)]) == 0
    png = run / "thermo.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    assert matplotlib.image.imread(png).shape[:2] == (600, 900)


def test_analyze_equals_ase_and_direct_references(run, capsys):
    argv = ["analyze", str(run), "--rdf", "--msd", "--vacf", "--rmax", str(RMAX), "--bins", str(BINS)]
    assert main(argv) == 0
    assert "diffusion coefficient (MSD slope)" in capsys.readouterr().out
    for name in ("rdf", "msd", "vacf"):
        assert (run / "analysis" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    pos, vel, cells, numbers, times = _frames(run)
    assert pos.shape == (21, 108, 3)

    got = _csv(run / "analysis" / "rdf.csv")
    frames = [Atoms(numbers=numbers, positions=x, cell=c, pbc=True) for x, c in zip(pos, cells)]
    ase_g = np.mean([get_rdf(a, RMAX, BINS)[0] for a in frames], axis=0)
    np.testing.assert_allclose(got["g"], ase_g, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got["g"], _direct_rdf(pos, cells, RMAX, BINS), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["r_A"], (np.arange(BINS) + 0.5) * RMAX / BINS, rtol=1e-12)
    assert 3.4 < got["r_A"][np.argmax(got["g"])] < 4.2  # the argon nearest-neighbour peak

    got = _csv(run / "analysis" / "msd.csv")
    np.testing.assert_allclose(got["lag_ps"], times - times[0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(got["msd_A2"], _direct_msd(pos), rtol=1e-9, atol=1e-12)
    got = _csv(run / "analysis" / "vacf.csv")
    ref = _direct_vacf(vel)
    np.testing.assert_allclose(got["vacf_A2_per_ps2"], ref, rtol=1e-9, atol=1e-9 * abs(ref[0]))
    np.testing.assert_allclose(got["vacf_normalized"], ref / ref[0], rtol=1e-9, atol=1e-9)


def test_unwrapping_undoes_wrapping(run):
    pos, _, cells, numbers, _ = _frames(run)
    shift = np.array([0.37, -0.21, 0.55]) * cells[0].diagonal()
    frames = [Atoms(numbers=numbers, positions=x + shift, cell=c, pbc=True) for x, c in zip(pos, cells)]
    for a in frames:
        a.wrap()
    assert np.abs(frames[0].positions - pos[0]).max() > 1.0  # really moved across the box
    np.testing.assert_allclose(msd(unwrap_positions(frames)), _direct_msd(pos), rtol=1e-9, atol=1e-10)
    vel = np.random.default_rng(0).standard_normal((9, 5, 3))
    np.testing.assert_allclose(vacf(vel), _direct_vacf(vel), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("argv,text", [
    (["analyze", "{run}", "--rdf", "--rmax", "50"], "--rmax 50 Å is too large"),
    (["analyze", "{empty}"], "no trajectory"),
    (["plot", "{empty}"], "no thermo.csv"),
    (["analyze", "{run}", "--bins", "0"], "--bins must be >= 1"),
])
def test_bad_use_exit_2(run, tmp_path, capsys, argv, text):
    argv = [a.format(run=run, empty=tmp_path) for a in argv]
    assert main(argv) == 2
    assert text in capsys.readouterr().err
