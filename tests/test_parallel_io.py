"""Sharded output (``output.parallel: sharded``, engine/parallel_io.py) on one rank.

References: the gathered single-file writers of the same run (``output.parallel: gather``), the
uninterrupted run for resumes, and the manifest itself for damaged sets. The multi-rank cases
(written on 4 ranks, resumed on 1, 2 and 3) are in tests/test_parallel_io_mpi.py.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from ase.io import read
from test_restart import make_config, run

import atomsim.engine.parallel_io as pio
from atomsim.cli import main
from atomsim.engine.restart import RestartError, RestartFallbackWarning, ShardedRestart, find_restart


def _frames(path) -> list:
    """Each frame's arrays (positions, velocities, forces, per-atom energies), rows sorted by id."""
    out = []
    for a in read(path, ":"):
        ids = a.arrays.get("ids", np.arange(len(a)))  # ASE .traj keeps no extra arrays: the file's order
        order = np.argsort(ids, kind="stable")
        f = {"step": a.info["step"], "time_ps": a.info["time_ps"], "energy": a.get_potential_energy(),
             "cell": a.cell.array, "ids": ids[order], "numbers": a.numbers[order]}
        for get in ("get_positions", "get_velocities", "get_forces", "get_potential_energies"):
            f[get] = getattr(a, get)()[order]
        out.append(f)
    return out


def _same_frames(a, b, atol=0.0):
    assert [f["step"] for f in a] == [f["step"] for f in b]
    for x, y in zip(a, b, strict=True):
        for key in x:
            assert np.allclose(x[key], y[key], rtol=0, atol=atol) if atol else np.array_equal(x[key], y[key]), \
                (x["step"], key)


@pytest.mark.parametrize("fmt", ["extxyz", "traj"])
def test_convert_equals_the_gathered_trajectory(tmp_path, fmt):
    """Sharded frames merged by `atomsim convert` are the gathered writer's frames, bit for bit."""
    run(make_config(tmp_path / "gather", "langevin", 80, parallel="gather", trajectory_format=fmt))
    run(make_config(tmp_path / "shards", "langevin", 80, parallel="sharded", trajectory_format=fmt))
    assert not (tmp_path / "shards" / f"trajectory.{fmt}").exists()
    assert [p.stem for p in pio.frame_manifests(tmp_path / "shards")] == ["0000000000", "0000000040",
                                                                          "0000000080"]
    out = tmp_path / f"merged.{fmt}"
    assert main(["convert", str(tmp_path / "shards"), str(out)]) == 0
    _same_frames(_frames(out), _frames(tmp_path / "gather" / f"trajectory.{fmt}"))
    # one frame's manifest converts alone
    one = tmp_path / f"one.{fmt}"
    assert main(["convert", str(tmp_path / "shards" / pio.TRAJECTORY_SHARDS / "0000000040.json"), str(one)]) == 0
    _same_frames(_frames(one), _frames(tmp_path / "gather" / f"trajectory.{fmt}")[1:2])


def test_crash_while_writing_leaves_the_previous_restart_resumable(tmp_path, monkeypatch):
    """The step-60 restart dies after its shard is written, before its manifest: step 30 stays."""
    full, _ = run(make_config(tmp_path / "full", "langevin", 120, parallel="sharded"))

    def crash(path, manifest, previous):
        if manifest["kind"] == "restart" and manifest["step"] == 60:
            raise KeyboardInterrupt("killed while writing the step-60 restart")
        return write(path, manifest, previous)

    write = pio.write_manifest
    monkeypatch.setattr(pio, "write_manifest", crash)
    with pytest.raises(KeyboardInterrupt):
        run(make_config(tmp_path / "cut", "langevin", 120, parallel="sharded"))
    monkeypatch.undo()
    cut = tmp_path / "cut"
    sets = sorted(p.name for p in (cut / pio.RESTART_SETS).iterdir())
    assert [s[:14] for s in sets] == ["step0000000030", "step0000000060"]  # the new set's shard is there
    assert json.loads((cut / pio.RESTART_MANIFEST).read_text())["step"] == 30
    r = find_restart(cut)
    assert isinstance(r, ShardedRestart) and r.step == 30
    resumed, _ = run(make_config(cut, "langevin", 120, parallel="sharded"), resume=True)
    assert np.array_equal(resumed.state.positions.numpy(), full.state.positions.numpy())
    assert np.array_equal(resumed.state.velocities.numpy(), full.state.velocities.numpy())
    # the half-written set is gone once later manifests are in place; the two newest sets remain
    assert sorted(p.name[:14] for p in (cut / pio.RESTART_SETS).iterdir()) == ["step0000000090",
                                                                                 "step0000000120"]


def test_old_single_file_restart_resumes_into_sharded_output(tmp_path):
    full, _ = run(make_config(tmp_path / "full", "nve", 120, parallel="gather"))
    d = tmp_path / "mixed"
    run(make_config(d, "nve", 60, parallel="gather"))  # restart.npz at step 60
    assert (d / "restart.npz").exists() and not (d / pio.RESTART_MANIFEST).exists()
    resumed, _ = run(make_config(d, "nve", 120, parallel="sharded"), resume=True)
    assert np.array_equal(resumed.state.positions.numpy(), full.state.positions.numpy())
    r = find_restart(d)
    assert isinstance(r, ShardedRestart) and r.step == 120
    a = find_restart(tmp_path / "full").arrays
    for key in ("positions", "velocities", "masses", "numbers", "ids", "cell"):
        assert np.array_equal(r.arrays[key], a[key]), key


def test_damaged_sets_are_refused_by_name(tmp_path, capsys):
    d = tmp_path / "run"
    run(make_config(d, "nve", 60, parallel="sharded"))  # restarts at 30 (previous) and 60
    m = json.loads((d / pio.RESTART_MANIFEST).read_text())
    shard = d / m["folder"] / m["shards"][0]["file"]
    # convert: a mismatched manifest, then a missing shard, each an input error naming the file
    bad = dict(m, n_atoms=m["n_atoms"] + 1)
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    shutil.copytree(d / pio.RESTART_SETS, tmp_path / pio.RESTART_SETS)
    assert main(["convert", str(tmp_path / "bad.json"), str(tmp_path / "x.extxyz")]) == 2
    assert "the manifest says 33" in capsys.readouterr().err
    # a shard changed after its manifest was written: CRC32
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(RestartError, match="CRC32"):
        find_restart(d).to_state()
    shard.unlink()
    with pytest.warns(RestartFallbackWarning, match="is missing"):
        r = find_restart(d)
    assert r.step == 30
    assert main(["convert", str(d / pio.RESTART_MANIFEST), str(tmp_path / "y.extxyz")]) == 2
    assert "is missing" in capsys.readouterr().err
    assert main(["convert", str(d / pio.RESTART_PREVIOUS), str(tmp_path / "r.extxyz")]) == 0
    atoms = read(tmp_path / "r.extxyz")
    assert atoms.info["step"] == 30 and len(atoms) == 32
    assert np.array_equal(atoms.arrays["ids"], np.arange(32))


def test_blowup_frame_is_written_as_shards(tmp_path):
    """A sharded run that stops writes its failing frame per rank; convert shows the close pair."""
    from ase.build import bulk
    from ase.io import write
    from rich.console import Console
    from test_md_engine import make_config as md_config

    from atomsim.engine.safety import SimulationError
    from atomsim.engine.simulation import Simulation

    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat((2, 2, 2))
    atoms.positions[3] = atoms.positions[0] + [0.6, 0.0, 0.0]
    write(tmp_path / "close.extxyz", atoms)
    cfg = md_config(tmp_path / "run", system={"structure": {"file": str(tmp_path / "close.extxyz")}},
                    output={"parallel": "sharded"})
    with pytest.raises(SimulationError, match="blowup.shards"):
        Simulation.from_config(cfg, console=Console(quiet=True)).run()
    assert not (tmp_path / "run" / "blowup.extxyz").exists()
    assert main(["convert", str(tmp_path / "run" / pio.BLOWUP_SHARDS), str(tmp_path / "b.extxyz")]) == 0
    bad = read(tmp_path / "b.extxyz")
    assert np.allclose(bad.positions, atoms.positions, rtol=0, atol=1e-12)
    assert np.abs(bad.get_forces()).max() > 10.0  # the failing forces are in the frame
