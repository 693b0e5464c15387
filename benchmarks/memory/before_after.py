"""Table of tagged bench_memory.py runs (before/after a change, malloc settings): one JSON, printed.

    python benchmarks/memory/before_after.py --system gnn --out memory_gnn_compact_2r.json \
        --pair before_mmap1048576:after_mmap1048576 --pair before_mmap0:after_mmap0

Reads benchmarks/results/memory_<system>_<atoms>_<ranks>r_<tag>.json for every size that has both
tags of a pair and writes the peak bytes per owned atom side by side, with each run's command,
PYTHONPATH (a "before" run imports an older tree), malloc setting and load average.
"""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

RESULTS = Path(__file__).resolve().parent.parent / "results"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--system", default="gnn")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--pair", action="append", required=True, help="BEFORE_TAG:AFTER_TAG")
    p.add_argument("--out", required=True, help="file name under benchmarks/results/")
    p.add_argument("--note", default="")
    args = p.parse_args()
    rows = []
    for pair in args.pair:
        before, after = pair.split(":")
        pat = re.compile(rf"memory_{args.system}_(\d+)_{args.ranks}r_{re.escape(before)}\.json$")
        for path in sorted(RESULTS.glob(f"memory_{args.system}_*_{args.ranks}r_{before}.json")):
            m = pat.search(path.name)
            twin = RESULTS / path.name.replace(f"_{before}.json", f"_{after}.json")
            if not m or not twin.exists():
                continue
            b, a = json.loads(path.read_text()), json.loads(twin.read_text())
            keep = ("bytes_per_owned_atom", "bytes_per_owned_atom_above_baseline", "peak_rss_B_per_rank",
                    "breakdown_B_per_owned_atom", "baseline_B_per_rank", "command", "pythonpath",
                    "malloc_mmap_threshold", "load_average_before", "load_average_after", "atom_steps_per_s")
            rows.append({"n_atoms": a["n_atoms"], "before_tag": before, "after_tag": after,
                         "before": {k: b.get(k) for k in keep}, "after": {k: a.get(k) for k in keep},
                         "ratio_after_over_before": a["bytes_per_owned_atom"] / b["bytes_per_owned_atom"]})
    rows.sort(key=lambda r: (r["before_tag"], r["n_atoms"]))
    first = json.loads(next(RESULTS.glob(f"memory_{args.system}_*_{args.ranks}r_*.json")).read_text())
    out = {"benchmark": "peak bytes per owned atom before/after (benchmarks/memory/bench_memory.py runs)",
           "system": args.system, "ranks": args.ranks, "note": args.note, "machine": first.get("machine"),
           "versions": first.get("versions"), "rows": rows}
    (RESULTS / args.out).write_text(json.dumps(out, indent=1))
    for r in rows:
        print(f"{r['n_atoms']:>8} atoms  {r['before_tag']:>22} {r['before']['bytes_per_owned_atom']:8.0f} B "
              f"({r['before']['bytes_per_owned_atom_above_baseline']:6.0f} above m0)  ->  {r['after_tag']:>22} "
              f"{r['after']['bytes_per_owned_atom']:8.0f} B ({r['after']['bytes_per_owned_atom_above_baseline']:6.0f}"
              f" above m0)  x{r['ratio_after_over_before']:.3f}")
    print(f"-> {RESULTS / args.out}")


if __name__ == "__main__":
    main()
