"""benchmarks/gpu/md_end_to_end.py --smoke on CPU: the GPU script runs end to end and its JSON has
every field the GPU run reports, as finite positive numbers (a broken script is found here, not on
the scarce GPU machine)."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_md_end_to_end_smoke(tmp_path):
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu/md_end_to_end.py"), "--smoke",
                          "--out", str(tmp_path), "--budget-s", "240"],
                         capture_output=True, text=True, timeout=400, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    rep = json.loads((tmp_path / "md_end_to_end_smoke.json").read_text())
    assert rep["device"] == "cpu" and rep["mode"] == "smoke" and not rep["errors"], rep["errors"]
    assert "load_average" in rep["machine"] and rep["command"]
    engine = [r for r in rep["points"] if r["mode"] == "engine"]
    assert {(r["model"], r["dtype"]) for r in engine} == {("egnn", "float32"), ("egnn", "bfloat16"),
                                                           ("egnn", "bfloat16+f32edges"),
                                                           ("lj", "float32"), ("lj", "bfloat16")}
    for r in engine:
        for key in ("n_atoms", "steps", "wall_s", "setup_s", "atom_steps_per_s", "step_ms", "peak_rss_bytes"):
            assert _positive(r[key]), (key, r)
        parts = r["breakdown_s"]
        assert set(parts) == {"neighbor", "model", "integrate", "reductions", "io"}
        assert all(math.isfinite(v) and v >= 0 for v in parts.values())
        assert _positive(parts["model"]) and _positive(parts["integrate"])
        assert sum(parts.values()) <= 1.05 * r["wall_s"]  # the parts are inside the step
    modes = {"eager", "cuda-graph", "cuda-graph+deferred", "compile"}
    static = [r for r in rep["points"] if r["mode"] in modes]
    assert {r["mode"] for r in static} == modes
    assert all(r["capture_mode"] == "eager" for r in static)  # CPU: the graph mode falls back
    assert all(_positive(r["atom_steps_per_s"]) for r in static)
    sim = [r for r in rep["points"] if r["mode"] == "simulation"]  # the whole run loop, Simulation.run
    assert len(sim) == 1 and _positive(sim[0]["atom_steps_per_s"]) and sim[0]["steps"] >= 1
    nb = rep["neighbor_backends"]
    assert nb["chosen"] == "numba" and {r["backend"] for r in nb["rows"]} == {"torch", "numba"}
    pairs = {r["n_pairs"] for r in nb["rows"]}
    assert len(pairs) == 1 and _positive(pairs.pop())  # both backends list the same pairs
    assert (tmp_path / "md_end_to_end_smoke.png").exists()
    assert set(rep["largest"]) == {"egnn_float32", "egnn_bfloat16", "egnn_bfloat16+f32edges", "lj_float32",
                                   "lj_bfloat16"}
