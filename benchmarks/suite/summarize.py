"""Markdown tables from a suite result JSON (pasted into docs/scaling.md).

    .venv/bin/python benchmarks/suite/summarize.py benchmarks/results/bench_weak_default.json
"""
from __future__ import annotations

import json
import sys

PARTS = ("neighbor", "halo", "model", "reverse", "integrate", "io", "sync")


def main(path: str) -> None:
    d = json.loads(open(path).read())
    m = d["machine"]
    print(f"Machine: {m['cpu']}, {m['physical_cores']} cores; load average {d['load_average_start'][0]:.1f} "
          f"at start, {d['load_average_end'][0]:.1f} at end; torch {m['versions']['torch']}, "
          f"mpich {m['versions']['mpich']}. Command: `{d['command']}`\n")
    print("| ranks | atoms/rank | step s (wall) | " + " | ".join(PARTS)
          + " | ghost/owned | MB sent/step | mem kB/atom | step CPU s | core share | eff. wall | eff. CPU-time "
            "| repeats wall s | note |")
    print("|" + "---|" * (len(PARTS) + 12))
    for p in d["points"]:
        r = max(p["per_rank"], key=lambda x: x["step_total_s"])
        b = p["breakdown_s"]
        note = "oversubscribed" if p["oversubscribed"] else ("held out" if p.get("heldout") else "")
        eff = "" if p["efficiency"] is None else f"{p['efficiency']:.2f}"
        effc = "" if p.get("efficiency_cpu_time") is None else f"{p['efficiency_cpu_time']:.2f}"
        reps = ", ".join(f"{x:.2f}" for x in p.get("repeat_step_times_s", [p["step_time_s"]]))
        print(f"| {p['ranks']} | {p['atoms_per_rank']:.0f} | {p['step_time_s']:.3f} | "
              + " | ".join(f"{b[k]:.3f}" for k in PARTS)
              + f" | {r['ghost_owned_ratio']:.2f} | {r['bytes_sent_offrank_per_step'] / 1e6:.2f} | "
                f"{r['memory_per_atom_kB']:.0f} | {p['step_cpu_time_s']:.3f} | "
                f"{r['step_cpu_s'] / r['step_total_s']:.2f} | "
                f"{eff} | {effc} | "
                f"{reps} | {note} |")
    net = d.get("network")
    if net:
        pp = net["pingpong"]
        ar = {x["doubles"]: x["median_s"] for x in net["allreduce"]["points"]}
        print(f"\nNetwork probe (2 ranks, shared memory): latency {pp['latency_s'] * 1e6:.1f} us, bandwidth "
              f"{pp['bandwidth_B_per_s'] / 1e9:.2f} GB/s; allreduce of 10 doubles {ar.get(10, 0) * 1e6:.1f} us.")
    mod = d.get("model")
    if mod:
        c = mod["check"]
        print("\n| model check | ranks | atoms/rank | measured s | predicted s | error |\n|---|---|---|---|---|---|")
        for kind in ("fitted", "heldout"):
            for x in c[kind]:
                print(f"| {kind} | {x['ranks']} | {x['atoms_per_rank']:.0f} | {x['measured_s']:.3f} | "
                      f"{x['predicted_s']:.3f} | {x['rel_error']:+.1%} |")
        w = d.get("model_on_wall_clock_check")
        if w:
            held = w["heldout_max_rel_error"]
            print(f"\nModel clock: {mod.get('clock', 'wall')} (dedicated-core seconds). The same fit on wall-clock "
                  f"times: fitted max error {w['fitted_max_rel_error']:.0%}, held-out max error "
                  f"{held if held is None else format(held, '.0%')}.")
        print("\nCoefficients: " + ", ".join(f"{k} = {v:.3g}" for k, v in mod["coefficients"].items()))
        print(f"\nGPU cost: {mod['gpu']['s_per_atom_step'] * 1e6:.3f} us/atom-step ({mod['gpu']['source_model']}); "
              f"neighbor: {mod['gpu']['source_neighbor']}")
        print("\n| 1e10 atoms | ranks | atoms/rank | memory/rank GB | s/step | ns/day (1 fs) | 4x ranks: ns/day |"
              "\n|---|---|---|---|---|---|---|")
        for k, v in mod["ten_billion"].items():
            if v.get("fits"):
                print(f"| {k} | {v['ranks']:,} | {v['atoms_per_rank']:,.0f} | {v['memory_per_rank_GB']:.1f} | "
                      f"{v['step_s']:.3g} | {v['ns_per_day']:.3g} | {v['ns_per_day_x4']:.3g} |")
        print("\n| predicted | atoms/rank | ranks | s/step | efficiency | memory/rank GB |\n|---|---|---|---|---|---|")
        for w in mod["predictions"]["weak"]:
            if w["ranks"] in (1, 100, 1000, 10_000, 100_000):
                print(f"| {w['device']} {w['scheme']} | {w['atoms_per_rank']:,} | {w['ranks']:,} | {w['step_s']:.3g} | "
                      f"{w['efficiency']:.3f} | {w['memory_per_rank_GB']:.2f} |")
    an = d.get("anchors")
    if an:
        a = an["atomsim_vs_ase"]
        print(f"\nAnchor atomsim vs ASE: {a['system']}: atomsim {a['median_s_per_step']['atomsim'] * 1e3:.1f} ms/step, "
              f"ASE VelocityVerlet + AtomsimCalculator {a['median_s_per_step']['ase'] * 1e3:.1f} ms/step: "
              f"{a['speedup_atomsim_over_ase']:.2f}x (goal 1.5x); final positions differ by "
              f"{a['final_positions_max_diff_A']:.1e} A.")
        lj = an["lj_vs_lammps"]
        if lj and "skipped" not in lj:
            ms = lj["median_atom_steps_per_s"]
            print(f"Anchor LJ vs LAMMPS lj/cut ({lj['n_atoms']} atoms, 1 thread): atomsim {ms['atomsim']:.3g}, "
                  f"LAMMPS {ms['lammps']:.3g} atom-steps/s: LAMMPS/atomsim = {lj['ratio_lammps_over_atomsim']:.1f}x.")
        elif lj:
            print(f"Anchor LJ vs LAMMPS: {lj['skipped']}")


if __name__ == "__main__":
    main(sys.argv[1])
