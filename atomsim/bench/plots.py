"""PNG figures of a ``atomsim bench weak-scaling`` result: breakdown, efficiency, model predictions."""
from __future__ import annotations

from pathlib import Path

PARTS = ("neighbor", "halo", "model", "reverse", "integrate", "io", "sync")


def write_all(result: dict, stem: Path) -> dict:
    """Writes STEM_breakdown.png, STEM_efficiency.png and (with a model) STEM_model.png; returns the paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stem = Path(stem)
    out = {"json": str(stem.with_suffix(".json"))}
    pts = sorted(result["points"], key=lambda p: (p["atoms_requested"], p["ranks"]))

    from .perf_model import on_cpu_clock

    fig, axes = plt.subplots(1, 2, figsize=(2 * max(6, 0.7 * len(pts) + 2), 4.5))
    for ax, clock in zip(axes, ("wall", "cpu")):
        labels = []
        for k, p0 in enumerate(pts):
            p = on_cpu_clock(p0) if clock == "cpu" else p0
            slow = max(p["per_rank"], key=lambda r: r["step_total_s"])
            bottom = 0.0
            for j, part in enumerate(PARTS):
                v = slow["breakdown_s"][part]
                ax.bar(k, v, bottom=bottom, color=f"C{j}", label=part if k == 0 else None,
                       hatch="//" if p["oversubscribed"] else None)
                bottom += max(v, 0.0)
            ax.plot(k, slow["step_total_s"], "k_", markersize=18)
            tag = " (over)" if p["oversubscribed"] else (" (held)" if p.get("heldout") else "")
            labels.append(f"{p['ranks']}r\n{p['atoms_per_rank']:.0f}/r{tag}")
        ax.set_xticks(range(len(pts)), labels, fontsize=7)
        ax.set_ylabel("wall seconds per step (slowest rank)" if clock == "wall"
                      else "dedicated-core seconds per step (parts x CPU/wall)")
        ax.legend(fontsize=7, ncol=4)
    axes[0].set_title(f"{result['benchmark']}: {pts[0]['potential']}, {pts[0]['halo']} halo; black: step time; "
                      f"hatched: oversubscribed", fontsize=8)
    axes[1].set_title("same, on each rank's CPU seconds (what a rank with its own core would take)", fontsize=8)
    fig.tight_layout()
    out["breakdown"] = str(stem) + "_breakdown.png"
    fig.savefig(out["breakdown"], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for k, n in enumerate(sorted({p["atoms_requested"] for p in pts})):
        s = [p for p in pts if p["atoms_requested"] == n and p["efficiency"] is not None]
        for over, marker in ((False, "o"), (True, "x")):
            q = [p for p in s if p["oversubscribed"] == over]
            if q:
                ax.plot([p["ranks"] for p in q], [p["efficiency"] for p in q], marker, color=f"C{k}",
                        linestyle="-" if not over else "none",
                        label=f"{n} atoms/rank, wall" + (" (oversubscribed)" if over else ""))
                if q[0].get("efficiency_cpu_time") is not None:
                    ax.plot([p["ranks"] for p in q], [p["efficiency_cpu_time"] for p in q], marker, color=f"C{k}",
                            linestyle="--" if not over else "none", alpha=0.5,
                            label=f"{n} atoms/rank, CPU time" + (" (oversubscribed)" if over else ""))
    ax.axhline(0.85, color="gray", ls=":", label="goal 0.85")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("ranks")
    ax.set_ylabel("parallel efficiency")
    ax.set_ylim(0, 1.4)
    ax.legend(fontsize=6, loc="lower left", ncol=2)
    ax.set_title(f"load avg {result['load_average_start'][0]:.1f} -> {result['load_average_end'][0]:.1f} "
                 f"on {result['machine']['physical_cores']} cores", fontsize=8)
    fig.tight_layout()
    out["efficiency"] = str(stem) + "_efficiency.png"
    fig.savefig(out["efficiency"], dpi=110)
    plt.close(fig)

    model = result.get("model")
    if model:
        fig, axs = plt.subplots(1, 3, figsize=(15, 4.3))
        weak = model["predictions"]["weak"]
        for k, key in enumerate(sorted({(w["device"], w["atoms_per_rank"], w["scheme"]) for w in weak})):
            rows = [w for w in weak if (w["device"], w["atoms_per_rank"], w["scheme"]) == key]
            ls = "-" if key[2] == "per-layer" else "--"
            lab = f"{key[0]} {key[1]}/rank {key[2]}"
            axs[0].plot([r["ranks"] for r in rows], [r["step_s"] for r in rows], ls, marker=".", label=lab,
                        color=f"C{k // 2}")
            axs[1].plot([r["ranks"] for r in rows], [r["efficiency"] for r in rows], ls, marker=".", label=lab,
                        color=f"C{k // 2}")
        for ax, yl in ((axs[0], "predicted s/step"), (axs[1], "predicted weak-scaling efficiency")):
            ax.set_xscale("log")
            ax.set_xlabel("ranks")
            ax.set_ylabel(yl)
            ax.legend(fontsize=6)
        axs[0].set_yscale("log")
        axs[1].set_ylim(0, 1.1)
        grid = [g for g in model["predictions"]["grid"] if g["scheme"] == "per-layer"]
        for dev in ("cpu", "gpu"):
            for j, P in enumerate(sorted({g["ranks"] for g in grid})):
                rows = sorted([g for g in grid if g["device"] == dev and g["ranks"] == P], key=lambda g: g["atoms"])
                if rows:
                    axs[2].plot([r["atoms"] for r in rows], [r["ns_per_day"] for r in rows],
                                "-" if dev == "gpu" else ":", marker=".", color=f"C{j}", label=f"{dev} P={P}")
        axs[2].set_xscale("log")
        axs[2].set_yscale("log")
        axs[2].set_xlabel("atoms")
        axs[2].set_ylabel("ns/day (1 fs), per-layer halo")
        axs[2].legend(fontsize=6, ncol=2)
        chk = model["check"]
        fig.suptitle(f"performance model (fitted max err {chk['fitted_max_rel_error']:.0%}, held-out "
                     f"{'n/a' if chk['heldout_max_rel_error'] is None else format(chk['heldout_max_rel_error'], '.0%')}"
                     f"); CPU: measured per-atom cost, GPU: {model['gpu']['source_model'][:70]}", fontsize=8)
        fig.tight_layout()
        out["model"] = str(stem) + "_model.png"
        fig.savefig(out["model"], dpi=110)
        plt.close(fig)
    return out
