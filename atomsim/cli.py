"""The ``atomsim`` command line: ``atomsim run input.yaml``, ``atomsim info``, ...

Adding a subcommand is one self-contained edit: write ``_add_NAME(parser)``
(its arguments) and ``_cmd_NAME(args) -> int`` (the work; import heavy modules
inside it so ``atomsim --help`` stays fast), then append
``Command("NAME", "one-line help", _add_NAME, _cmd_NAME)`` to ``COMMANDS``.
A nested command (``atomsim lammps export``) adds sub-parsers in its
``_add_`` function and sets ``parser.set_defaults(handler=...)`` on each.

Exit status: 0 success; 2 bad input (one ``atomsim: error:`` line, no
traceback); 3 a run that stopped itself (NaN, force limit: SimulationError,
after saving the last good state); 4 a relaxation (``atomsim relax``, or a
relax stage of ``atomsim run``) not converged within ``relax.steps``; 1 an
unexpected error (with traceback; ``ATOMSIM_DEBUG=1`` shows tracebacks for
input errors too).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_STOPPED, EXIT_NOT_CONVERGED = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# ------------------------------------------------------------------- run --

def _add_run(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="input YAML file (see docs/input_reference.md)")
    p.add_argument("--resume", action="store_true",
                   help="continue from the newest restart in output.directory")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override an input key, value parsed as YAML (repeatable), "
                        "e.g. --set dynamics.steps=100 --set parallel.grid=[2,1,1]")


def _cmd_run(args: argparse.Namespace) -> int:
    from atomsim.engine.config import load_config

    cfg = load_config(args.input, args.overrides)
    if cfg.relax is not None:  # a relaxation job written as `relax:` in the input
        if "dynamics" in cfg.model_fields_set:
            from atomsim.engine.errors import InputError

            raise InputError(f"{args.input}: has both `relax` and `dynamics`; a `relax:` input only relaxes. "
                             "To relax and then run MD, write `stages:` ([{relax: ...}, {dynamics: ...}])")
        return _relax(cfg, args.resume)
    if cfg.stages is not None:
        from atomsim.engine.stages import run_stages
        from atomsim.potentials import load_potential
        from atomsim.relax import relax_config

        with _potential_params(cfg):
            potential = load_potential(cfg.potential.model, **cfg.potential.params)
        out = run_stages(cfg, resume=args.resume, relax=relax_config, potential=potential)
        return EXIT_NOT_CONVERGED if out["status"] == "not_converged" else EXIT_OK
    from atomsim.engine.simulation import Simulation

    with _potential_params(cfg):
        sim = Simulation.from_config(cfg, resume=args.resume)
    sim.run()
    return EXIT_OK


class _potential_params:
    """Turn a potential factory's TypeError for an unknown keyword into an input error naming the key."""

    def __init__(self, cfg):
        self.model = cfg.potential.model

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if kind is TypeError and "unexpected keyword argument" in str(exc):
            from atomsim.engine.errors import InputError

            raise InputError(f"`potential.params`: {exc}; check the parameter names of potential "
                             f"{self.model!r}") from None
        return False


# ----------------------------------------------------------------- relax --

def _add_relax(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="input YAML file; its `relax:` section (all keys optional) sets the "
                                 "optimizer, fmax, cell relaxation, ... (docs/input_reference.md)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override an input key, e.g. --set relax.fmax_eV_per_A=0.01 --set relax.cell=true")


def _cmd_relax(args: argparse.Namespace) -> int:
    from atomsim.engine.config import load_config

    cfg = load_config(args.input, args.overrides)
    if cfg.stages is not None:
        from atomsim.engine.errors import InputError

        raise InputError(f"{args.input}: has `stages`; run it with `atomsim run` (its relax stages relax)")
    return _relax(cfg, resume=False)


def _relax(cfg, resume: bool) -> int:
    """Relax ``cfg``'s structure on one process; 0 when converged, EXIT_NOT_CONVERGED (4) when not."""
    from atomsim.engine.comm import launched_under_mpi
    from atomsim.engine.errors import InputError

    if resume:
        raise InputError("--resume: a relaxation has no restart; run it again (from final.extxyz to go on)")
    if launched_under_mpi():
        raise InputError("a relaxation runs on one process (ASE's optimizers); start it without mpiexec")
    from atomsim.potentials import load_potential
    from atomsim.relax import relax_config

    with _potential_params(cfg):
        potential = load_potential(cfg.potential.model, **cfg.potential.params)
    result = relax_config(cfg, potential=potential)
    return EXIT_OK if result.converged else EXIT_NOT_CONVERGED


# ------------------------------------------------------------------ info --

def _add_info(p: argparse.ArgumentParser) -> None:
    pass


def _version(module: str) -> Optional[str]:
    """Installed version of ``module`` without importing it when metadata has it."""
    from importlib import import_module
    from importlib.metadata import PackageNotFoundError, version

    dist = {"cupy": "cupy-cuda12x"}.get(module, module)
    try:
        return version(dist)
    except PackageNotFoundError:
        pass
    try:
        return str(getattr(import_module(module), "__version__", "installed"))
    except Exception:
        return None


def _cmd_info(args: argparse.Namespace) -> int:
    import platform

    from rich.console import Console
    from rich.table import Table

    import atomsim

    console = Console()
    versions = Table(title="atomsim and its libraries", show_header=True)
    versions.add_column("package")
    versions.add_column("version")
    versions.add_row("atomsim", atomsim.__version__)
    versions.add_row("python", f"{platform.python_version()} ({sys.executable})")
    for name in ("torch", "numpy", "ase", "numba", "pydantic", "triton", "mpi4py", "cupy"):
        versions.add_row(name, _version(name) or "[dim]not installed[/dim]")
    versions.add_row("MPI library", _mpi_library())
    console.print(versions)

    hardware = Table(title="compute", show_header=False)
    hardware.add_column("what")
    hardware.add_column("value")
    import torch

    hardware.add_row("platform", platform.platform())
    from atomsim.kernels.threads import available_cores, resolve_threads, thread_report

    hardware.add_row("CPU cores (os.cpu_count / this process may use)",
                     f"{os.cpu_count()} / {available_cores()}")
    pools = thread_report()
    libs = ", ".join(f"{p['internal_api']} {p['num_threads']}" for p in pools["pools"]) or "none loaded"
    hardware.add_row("threads now (torch intra/inter-op, numba; BLAS/OpenMP)",
                     f"{pools['torch']}/{pools['torch_interop']}, {pools['numba']}; {libs}")
    hardware.add_row("parallel.threads: auto (1 rank)",
                     f"{resolve_threads('auto')} (at most 1 per 1000 atoms; kernels/threads.py)")
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        hardware.add_row("CUDA", f"available, torch CUDA {torch.version.cuda}")
        for i, name in enumerate(names):
            hardware.add_row(f"  cuda:{i}", name)
    else:
        hardware.add_row("CUDA", "not available (CPU only)")
    hardware.add_row("message-passing kernels",
                     os.environ.get("ATOMSIM_KERNELS", "auto (triton on CUDA, numba on CPU)"))
    console.print(hardware)

    models = Table(title="potentials", show_header=True)
    models.add_column("name")
    models.add_column("kind")
    models.add_column("parameters", justify="right")
    models.add_column("elements")
    models.add_column("held-out error (card)")
    bundled = _bundled_models()
    try:
        from atomsim.potentials.registry import available_potentials

        names = available_potentials()
    except Exception as exc:  # a broken plugin must not hide the rest of the report
        names = []
        models.add_row(f"[red]registry failed: {exc}[/red]", "", "", "", "")
    aliases = _model_aliases()
    for name in sorted(set(names) | set(bundled)):
        meta = bundled.get(name)
        if meta is None:
            target = aliases.get(name)
            models.add_row(name, f"alias of {target}" if target else "registered", "", "", "")
            continue
        config, card = meta.get("config", {}), meta.get("card", {})
        params = card.get("parameters")
        species = config.get("species") or card.get("elements") or []
        kind = "bundled pretrained" + ("" if name in names else " (file only)")
        if card.get("preview"):
            kind += " (preview)"
        if card.get("superseded"):
            kind += " (superseded)"
        models.add_row(name, kind, f"{params:,}" if isinstance(params, int) else "",
                       element_summary(species), heldout_summary(card))
    console.print(models)
    return EXIT_OK


def element_summary(species: Sequence) -> str:
    """Count + elements: all of them up to 12, else runs of consecutive Z (``89: H-Bi, Ac-Pu``).

    A universal model's 89 symbols would fill the terminal; runs keep the row readable and still
    show which parts of the table are missing.
    """
    from ase.data import atomic_numbers, chemical_symbols

    zs = sorted({int(z) if not isinstance(z, str) else atomic_numbers[z] for z in species})
    if not zs:
        return ""
    if len(zs) <= 12:
        return f"{len(zs)}: " + ", ".join(chemical_symbols[z] for z in zs)
    runs, start = [], zs[0]
    for prev, z in zip(zs, zs[1:] + [-1]):
        if z != prev + 1:  # a gap (or the end) closes the run start..prev
            runs.append(chemical_symbols[start] if start == prev
                        else f"{chemical_symbols[start]}-{chemical_symbols[prev]}")
            start = z
    return f"{len(zs)}: " + ", ".join(runs)


def heldout_summary(card: dict) -> str:
    """Held-out energy/force MAE over all test structures, as the model card records them."""
    m = (card.get("metrics") or {}).get("all")
    if not isinstance(m, dict) or "energy_mae_meV_per_atom" not in m:
        return ""
    return (f"E {m['energy_mae_meV_per_atom']:.1f} meV/atom, F {m['force_mae_meV_per_A']:.0f} meV/Å "
            f"({m.get('n_structures', '?')} structures)")


def _model_aliases() -> dict:
    """{alias: bundled folder name}, e.g. default -> egnn-emt-v1 (empty if the package is absent)."""
    try:
        from atomsim.potentials.pretrained import ALIASES

        return dict(ALIASES)
    except Exception:  # noqa: BLE001  (info must still print)
        return {}


def _mpi_library() -> str:
    """The MPI library behind mpi4py (importing mpi4py.MPI initialises MPI, so only on request)."""
    try:
        from mpi4py import MPI

        return MPI.Get_library_version().strip().splitlines()[0]
    except Exception as exc:
        return f"[dim]unavailable ({type(exc).__name__})[/dim]"


def _bundled_models() -> dict:
    """{name: config.json contents} of the model folders under atomsim/potentials/pretrained/."""
    import json
    from importlib import resources

    found = {}
    try:
        root = resources.files("atomsim.potentials") / "pretrained"
        folders = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))]
    except Exception:
        return found
    for folder in folders:
        try:
            found[folder.name] = json.loads((folder / "config.json").read_text())
        except Exception:  # a folder without a readable card still counts as a bundled model
            found[folder.name] = {}
    return found


# ------------------------------------------------------ train / datagen --

def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="training YAML (see examples/train_emt.yaml)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/train_state.pt")


def _cmd_train(args: argparse.Namespace) -> int:
    from atomsim.training.trainer import main as train_main

    return train_main(args.config, resume=args.resume)


def _add_datagen(p: argparse.ArgumentParser) -> None:
    from atomsim.training.datagen import add_arguments

    add_arguments(p)


def _cmd_datagen(args: argparse.Namespace) -> int:
    from atomsim.training.datagen import cli_main

    return cli_main(args)


# ------------------------------------------------------- plot / analyze --

def _add_plot(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run's output.directory (holds thermo.csv)")
    p.add_argument("-o", "--output", default=None, help="PNG to write (default: RUN_DIR/thermo.png)")


def _cmd_plot(args: argparse.Namespace) -> int:
    from atomsim.analysis import plot_thermo

    print(f"wrote {plot_thermo(args.run_dir, args.output)}")
    return EXIT_OK


def _add_analyze(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run's output.directory (holds its trajectory)")
    p.add_argument("--rdf", action="store_true", help="radial distribution function (ASE get_rdf)")
    p.add_argument("--msd", action="store_true", help="mean squared displacement and D from its slope")
    p.add_argument("--vacf", action="store_true", help="velocity autocorrelation and its Green-Kubo D")
    p.add_argument("--rmax", type=float, default=None,
                   help="RDF range, Å (default: half the smallest periodic cell width, at most 10)")
    p.add_argument("--bins", type=int, default=100, help="RDF bins (default 100)")
    p.add_argument("--skip", type=int, default=0, help="frames to drop from the start (equilibration)")
    p.add_argument("--trajectory", default=None, help="trajectory file (default: the one in RUN_DIR)")
    p.add_argument("-o", "--output", default=None, help="folder for the CSV and PNG files "
                                                        "(default: RUN_DIR/analysis)")


def _cmd_analyze(args: argparse.Namespace) -> int:
    from atomsim.analysis import analyze

    if args.bins < 1 or args.skip < 0 or (args.rmax is not None and args.rmax <= 0):
        raise ValueError("--bins must be >= 1, --skip >= 0 and --rmax > 0 (Å)")
    chosen = args.rdf or args.msd or args.vacf  # none named: all three
    summary = analyze(args.run_dir, do_rdf=args.rdf or not chosen, do_msd=args.msd or not chosen,
                      do_vacf=args.vacf or not chosen, trajectory=args.trajectory, rmax=args.rmax,
                      nbins=args.bins, skip=args.skip, output=args.output)
    for key, how in (("D_msd_A2_per_ps", "MSD slope"), ("D_vacf_A2_per_ps", "VACF, Green-Kubo")):
        if key in summary:
            print(f"diffusion coefficient ({how}): {summary[key]:.4g} Å²/ps = {summary[key] * 1e-4:.4g} cm²/s")
    return EXIT_OK


# ---------------------------------------------------------------- lammps --

def _actions(p: argparse.ArgumentParser, dest: str, metavar: str):
    """The required second word of ``atomsim lammps export`` / ``atomsim bench weak-scaling``."""
    sub = p.add_subparsers(dest=dest, metavar=metavar)
    sub.required = True
    return sub


def _add_lammps(p: argparse.ArgumentParser) -> None:
    sub = _actions(p, "lammps_command", "ACTION")
    text = "write a pair_style mliap unified model file and print the input lines"
    ex = sub.add_parser("export", help=text, description=text)
    ex.add_argument("--model", default="default", help="bundled name, file, `lj` or plugin (default: default)")
    ex.add_argument("-o", "--output", default="model.pkl", help="model file (.pkl; .pt uses torch.save)")
    ex.add_argument("--dtype", default="float64", help="float64 (default) | float32")
    ex.add_argument("--elements", default=None, help="LAMMPS types in order, e.g. Cu or Cu,Ag (default: model's)")
    ex.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                    help="model parameter, e.g. --param epsilon=0.0104 (repeatable)")
    ex.add_argument("--skin", type=float, default=2.0, help="LAMMPS neighbor skin in Å (default 2, metal)")
    ex.add_argument("--threads", type=int, default=1, help="torch threads in the callback (default 1)")
    ex.add_argument("--check", metavar="INPUT", default=None, help="a LAMMPS input to check against the model")
    ex.set_defaults(handler=_cmd_lammps_export)
    text = "check a LAMMPS input's mliap/ghost/comm settings against a model"
    ck = sub.add_parser("check", help=text, description=text)
    ck.add_argument("input", help="LAMMPS input file")
    ck.add_argument("--model", default="default", help="bundled name, file, `lj` or plugin; or a model .pkl")
    ck.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    ck.set_defaults(handler=_cmd_lammps_check)


def _lammps_params(pairs) -> dict:
    import yaml

    params = {}
    for item in pairs:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--param: KEY=VALUE expected, got {item!r}")
        params[key.strip()] = yaml.safe_load(value)
    return params


def _cmd_lammps_export(args: argparse.Namespace) -> int:
    from atomsim.lammps_mliap import build_for_export, export_model, lammps_input_problems, lammps_lines

    elements = [e.strip() for e in args.elements.split(",") if e.strip()] if args.elements else None
    potential, symbols = build_for_export(args.model, args.dtype, elements, _lammps_params(args.param))
    model = export_model(potential, symbols, args.output, num_threads=args.threads)
    print(f"# wrote {args.output}: {args.model} ({args.dtype}), cutoff {model.cutoff:g} A, "
          f"{model.receptive_field} message-passing layer(s)")
    print("# LAMMPS input lines (pair_coeff: one element per atom type, in type order):")
    for line in lammps_lines(model, args.output, skin=args.skin):
        print(line)
    if args.check:
        with open(args.check) as fh:
            problems = lammps_input_problems(fh.read(), model.receptive_field, model.cutoff)
        if problems:
            raise ValueError(f"{args.check}: " + " | ".join(problems))
        print(f"# {args.check}: consistent with this model")
    return EXIT_OK


def _cmd_lammps_check(args: argparse.Namespace) -> int:
    from atomsim.lammps_mliap import lammps_input_problems, model_shape

    receptive_field, cutoff = model_shape(args.model, _lammps_params(args.param))
    with open(args.input) as fh:
        problems = lammps_input_problems(fh.read(), receptive_field, cutoff)
    if problems:
        raise ValueError(f"{args.input}: " + " | ".join(problems))
    print(f"{args.input}: consistent with {args.model} ({receptive_field} layer(s), cutoff {cutoff:g} A)")
    return EXIT_OK


# ----------------------------------------------------------------- bench --

def _add_bench(p: argparse.ArgumentParser) -> None:
    from atomsim.bench.weak_scaling import add_arguments

    sub = _actions(p, "bench_command", "SUITE")
    ws = sub.add_parser("weak-scaling", help="MPI scaling suite: step breakdown, network probe, performance model",
                        description="MPI scaling suite (weak or --mode strong): run under `mpiexec -n N`, or "
                                    "give --ranks 1,2,4 to launch them; JSON + PNG under benchmarks/results/")
    add_arguments(ws)
    ws.set_defaults(handler=_cmd_bench)


def _cmd_bench(args: argparse.Namespace) -> int:
    from atomsim.bench.weak_scaling import cli_main

    return cli_main(args)


# --------------------------------------------------------------- convert --

def _add_convert(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="a run's output directory, its trajectory.shards folder, one frame's "
                   "manifest (trajectory.shards/NNNNNNNNNN.json) or a sharded restart (restart.json)")
    p.add_argument("output", help="file to write: .extxyz/.xyz, .traj (ASE) or .h5md; atoms sorted by id")


def _cmd_convert(args: argparse.Namespace) -> int:
    import time

    from atomsim.engine.parallel_io import convert

    t0 = time.perf_counter()

    def say(msg: str) -> None:
        print(f"atomsim convert: {msg}", file=sys.stderr, flush=True)

    done = convert(args.source, args.output, progress=say)
    print(f"wrote {done['frames']} frame(s) of {done['atoms']} atoms to {done['output']} "
          f"in {time.perf_counter() - t0:.1f} s")
    return EXIT_OK


COMMANDS: List[Command] = [
    Command("run", "run molecular dynamics (or the stages, or the relaxation) of an input YAML file",
            _add_run, _cmd_run),
    Command("relax", "relax a structure with ASE's BFGS/LBFGS/FIRE (cell filter, symmetry); exit 4: not "
            "converged", _add_relax, _cmd_relax),
    Command("info", "versions, devices, MPI, registered potentials and bundled models", _add_info, _cmd_info),
    Command("train", "train an EGNN potential on extxyz data (mpiexec for data parallelism)", _add_train, _cmd_train),
    Command("datagen", "label structures (EMT, LJ or an atomsim potential such as sevennet-0) into extxyz; "
            "--student: MD snapshots of a student model labelled by the teacher", _add_datagen,
            _cmd_datagen),
    Command("lammps", "LAMMPS front end: `lammps export` (pair_style mliap unified model) and `lammps check`",
            _add_lammps, _cmd_lammps_export),
    Command("bench", "benchmark suite: `bench weak-scaling` (MPI step breakdown, network probe, scaling model)",
            _add_bench, _cmd_bench),
    Command("plot", "plot a run's thermo.csv (temperature, energies, pressure, volume) to a PNG", _add_plot,
            _cmd_plot),
    Command("analyze", "RDF, MSD (diffusion) and VACF of a run's trajectory: CSV + PNG", _add_analyze,
            _cmd_analyze),
    Command("convert", "merge sharded trajectory frames or a sharded restart (output.parallel) into one "
            "extxyz / ASE .traj / H5MD file for viewers", _add_convert, _cmd_convert),
]


# ------------------------------------------------------------ the driver --

def build_parser() -> argparse.ArgumentParser:
    import atomsim

    parser = argparse.ArgumentParser(
        prog="atomsim", description="Molecular dynamics with graph-neural-network interatomic potentials.")
    parser.add_argument("--version", action="version", version=f"atomsim {atomsim.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for cmd in COMMANDS:
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.help)
        p.set_defaults(handler=cmd.run)
        cmd.add_arguments(p)
    return parser


def _is_user_error(exc: BaseException) -> bool:
    from pydantic import ValidationError

    from atomsim.engine.errors import InputError

    return isinstance(exc, (InputError, ValidationError, ValueError, FileNotFoundError))


def _user_message(exc: BaseException) -> str:
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        from atomsim.engine.errors import format_validation_error

        return format_validation_error(exc)
    if isinstance(exc, FileNotFoundError) and exc.filename:
        return f"no such file: {exc.filename}"
    return str(exc) or type(exc).__name__


def print_error(message: str) -> None:
    """``atomsim: error: message`` on stderr, never re-wrapped or parsed as rich markup."""
    from rich.console import Console
    from rich.text import Text

    console = Console(stderr=True, soft_wrap=True)
    console.print(Text("atomsim: error: ", style="bold red") + Text(message))


def _report_and_exit_code(message: Optional[str], code: int, cause: bool = True) -> int:
    """Print once per job and make sure no MPI rank is left waiting.

    Before MPI starts (config errors) every rank fails alike: rank 0 prints,
    the others stay quiet. Once MPI runs, a failure may hit one rank only, so
    that rank aborts the job; rank 0 reports first, other ranks wait briefly
    (rank 0's abort usually ends them) and then report with their rank number.
    ``cause=False``: this rank only lost contact with a rank that died (engine/comm.py Comm.abort).
    """
    from atomsim.engine.comm import launch_rank, running_world

    world = running_world()  # None before MPI starts (never starts it)
    rank, size = (launch_rank(), 1) if world is None else (world.rank, world.size)
    if size > 1 and rank != 0:
        import time

        time.sleep(2.0)
        message = None if message is None else f"[rank {rank}] {message}"
    if message is not None and (rank == 0 or size > 1):
        print_error(message)
    if world is not None:
        world.abort(code, cause=cause)  # the status reaches mpiexec's exit status
    return code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run the subcommand, return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
        return int(exc.code or 0)
    debug = os.environ.get("ATOMSIM_DEBUG", "") not in ("", "0")
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        return _report_and_exit_code("interrupted", 130)
    except Exception as exc:
        safety = sys.modules.get("atomsim.engine.safety")  # not imported: cannot be a SimulationError
        if safety is not None and isinstance(exc, safety.SimulationError) and not debug:
            return _report_and_exit_code(str(exc), EXIT_STOPPED)
        if _is_user_error(exc) and not debug:
            return _report_and_exit_code(_user_message(exc), EXIT_INPUT)
        from atomsim.engine.comm import running_world

        world = running_world()
        if world is not None:  # a traceback, then end the whole job
            import traceback

            traceback.print_exc()
            # a line of atomsim's own names the failing rank (MPI_Abort's line can be lost in the teardown)
            what = f"aborting all ranks ({type(exc).__name__}: {exc})"
            if world.lost_peer(exc):  # a rank died mid-message: its watchdog names it
                return _report_and_exit_code(f"lost contact with another rank; {what}", EXIT_FAILED, cause=False)
            return _report_and_exit_code(what, EXIT_FAILED)
        raise
