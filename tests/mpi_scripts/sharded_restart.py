"""Run (or resume) the hot LJ system of restart_nm.py with sharded output (``output.parallel``).

Usage: [mpiexec -n N] python sharded_restart.py DIR STEPS [--resume] [--parallel MODE]
                                                [--crash-at STEP --crash-rank R] [--report FILE]
``--crash-at``: rank R ends the process (``os._exit``, no clean-up) right after writing its shard
of the restart of step STEP, before the manifest exists: a crash in the middle of a restart write.
``--report``: JSON with each rank's atom count right after the (resumed) set-up and the shard parts
([shard, rows]) it read, to show that no rank held the whole system.
"""
import json
import os
import sys

from restart_nm import config

import atomsim.engine.parallel_io as pio
from atomsim.engine.simulation import Simulation


def _arg(name: str, default=None):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


if __name__ == "__main__":
    directory, steps = sys.argv[1], int(sys.argv[2])
    cfg = config(directory, steps)
    cfg.output.parallel = _arg("--parallel", "sharded")
    crash_at, crash_rank = _arg("--crash-at"), int(_arg("--crash-rank", "0"))
    opened = []
    write_shard, read_shard = pio.write_shard, pio.read_shard

    def crashing_write(folder, rank, size, *args):
        info = write_shard(folder, rank, size, *args)
        if crash_at is not None and rank == crash_rank and folder.parent.name == pio.RESTART_SETS \
                and folder.name.startswith(f"step{int(crash_at):010d}-"):
            os._exit(17)
        return info

    def counting_read(manifest, k, *args, parts=None, **kw):
        def chosen(part):
            use = parts is None or parts(part)
            if use:
                opened.append([k, part["rows"][1] - part["rows"][0]])
            return use

        return read_shard(manifest, k, *args, parts=chosen, **kw)

    pio.write_shard, pio.read_shard = crashing_write, counting_read
    sim = Simulation.from_config(cfg, resume="--resume" in sys.argv[3:])
    counts = sim.comm.gather({"n_local": sim.state.n_local, "parts_read": opened,
                              "rows_read": sum(n for _, n in opened)})
    summary = sim.run()
    if sim.is_root:
        if _arg("--report"):
            with open(_arg("--report"), "w") as fh:
                json.dump({"ranks": counts, "n_atoms": sim.state.n_atoms_global}, fh)
        print("final", summary["final_step"], "ranks", sim.comm.size, flush=True)
