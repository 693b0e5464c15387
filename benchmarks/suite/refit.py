"""Re-fit the performance model of a suite result JSON (measured points unchanged) and redraw its plots.

    .venv/bin/python benchmarks/suite/refit.py benchmarks/results/bench_weak_default.json
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from atomsim.bench import perf_model
from atomsim.bench import plots as bench_plots


def main(path: str) -> None:
    p = Path(path)
    d = json.loads(p.read_text())
    d["model"] = perf_model.fit(d["points"], d["network"], clock="cpu", results_dir=p.parent)
    wall = perf_model.fit(d["points"], d["network"], clock="wall", results_dir=p.parent)
    d["model_on_wall_clock_check"] = wall["check"]
    d.setdefault("model_refits", []).append(" ".join([Path(sys.executable).name, *sys.argv]))
    d["plots"] = bench_plots.write_all(d, p.with_suffix(""))
    p.write_text(json.dumps(d, indent=1, default=float))
    c = d["model"]["check"]
    print(f"fitted max error {c['fitted_max_rel_error']:.1%}, held-out {c['heldout_max_rel_error']:.1%}")


if __name__ == "__main__":
    main(sys.argv[1])
