"""Thermodynamic output: one row every k steps to ``thermo.csv`` and to the terminal.

The CSV columns are fixed (COLUMNS below; docs/input_reference.md describes the file): step, time_ps,
temperature_K, pe_eV, ke_eV, etotal_eV, pressure_GPa, then volume_A3, conserved_eV,
atom_steps_per_s, n_neighbor_builds, the pressure tensor pxx..pxy_GPa (Voigt order,
kinetic part included; -ASE stress when velocities are zero), and peak_rss_B_per_atom (the worst
rank's peak resident memory / its owned atoms, engine/memory.py). MEASURED names the columns that
measure the machine rather than the physics (they differ between otherwise identical runs). The physics is MDState's
(engine/state.py); this module only formats it. Values are written with repr() so a resumed
run's rows can be compared with an uninterrupted run's bit for bit. Only rank 0 writes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from ase import units

COLUMNS = ("step", "time_ps", "temperature_K", "pe_eV", "ke_eV", "etotal_eV", "pressure_GPa",
           "volume_A3", "conserved_eV", "atom_steps_per_s", "n_neighbor_builds",
           "pxx_GPa", "pyy_GPa", "pzz_GPa", "pyz_GPa", "pxz_GPa", "pxy_GPa", "peak_rss_B_per_atom")
MEASURED = ("atom_steps_per_s", "peak_rss_B_per_atom")

# (column, header, width, format) of the terminal table: fits 80 columns (pipes, CI logs)
# energies by significant digits, not decimals: at 1e6+ atoms a fixed "{:.5f}" overran its column
_TERMINAL = (("step", "Step", 8, "{:d}"), ("time_ps", "Time ps", 8, "{:.3f}"),
             ("temperature_K", "Temp K", 9, "{:.2f}"), ("pe_eV", "PE eV", 15, "{:.10g}"),
             ("ke_eV", "KE eV", 15, "{:.10g}"), ("etotal_eV", "Etot eV", 17, "{:.12g}"),
             ("pressure_GPa", "P GPa", 9, "{:.4g}"), ("atom_steps_per_s", "atom-st/s", 10, "{:.3g}"))


def thermo_row(state, integrator, timestep_fs: float, atom_steps_per_s: float, n_builds: int,
               peak_rss_B_per_atom: float = float("nan")) -> dict:
    """One row of global quantities (collective: every rank must call it)."""
    ke = state.kinetic_energy()  # one collective; reused for temperature and pressure
    pe = float(state.energy)  # already global (MDState contract; the MPI provider allreduces it)
    vol = state.volume
    etot = pe + ke
    ptens = state.pressure_tensor().cpu() / units.GPa  # Voigt order like ASE
    voigt = {f"p{a}_GPa": float(ptens[i, j]) for a, (i, j) in
             zip(("xx", "yy", "zz", "yz", "xz", "xy"), ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)))}
    return {
        "step": int(state.step),
        "time_ps": state.step * timestep_fs * 1e-3,
        "temperature_K": state.temperature(kinetic_energy=ke),
        "pe_eV": pe,
        "ke_eV": ke,
        "etotal_eV": etot,
        "pressure_GPa": state.pressure(kinetic_energy=ke) / units.GPa,
        "volume_A3": vol,
        "conserved_eV": etot + float(integrator.conserved_energy_extra(state)),
        "atom_steps_per_s": float(atom_steps_per_s),
        "n_neighbor_builds": int(n_builds),
        **voigt,
        "peak_rss_B_per_atom": float(peak_rss_B_per_atom),
    }


class ThermoWriter:
    """CSV file + streamed rich table. ``resume_step`` truncates rows past the restart."""

    def __init__(self, path, console=None, enabled: bool = True, resume_step: Optional[int] = None):
        self.path = Path(path)
        self.console = console
        self.enabled = enabled
        self._header_shown = False
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        else:
            self.path.write_text(",".join(COLUMNS) + "\n")

    def _truncate_after(self, step: int) -> None:
        lines = self.path.read_text().splitlines(keepends=True)
        keep = lines[:1] if lines else [",".join(COLUMNS) + "\n"]
        for line in lines[1:]:
            try:
                if int(line.split(",", 1)[0]) <= step:
                    keep.append(line)
            except ValueError:
                pass
        self.path.write_text("".join(keep))

    def write(self, row: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:  # opened per row (rows are rare): nothing to close, survives crashes
            fh.write(",".join(repr(row[c]) for c in COLUMNS) + "\n")
        if self.console is not None:
            self._print(row)

    def _table(self, show_header: bool):
        from rich.table import Table

        t = Table(box=None, show_header=show_header, show_edge=False, pad_edge=False,
                  padding=(0, 0), header_style="bold")
        for _, head, width, _ in _TERMINAL:
            t.add_column(head, justify="right", width=width, no_wrap=True)
        return t

    def _print(self, row: dict) -> None:
        t = self._table(show_header=not self._header_shown)
        t.add_row(*(fmt.format(row[c]) for c, _, _, fmt in _TERMINAL))
        self._header_shown = True
        self.console.print(t)
