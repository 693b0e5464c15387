"""A rich progress bar (steps/s, ETA) that stays out of the way of logs and pipes.

Shown only on rank 0, on a terminal, and when ``output.progress`` is true;
otherwise every call is a no-op so the step loop needs no branches.
"""
from __future__ import annotations


class RunProgress:
    def __init__(self, console, total: int, start: int = 0, enabled: bool = True):
        self._progress = None
        self._task = None
        if not enabled or console is None or not console.is_terminal:
            return
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._progress = Progress(
            TextColumn("[bold]MD"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[rate]} steps/s"), TimeElapsedColumn(), TextColumn("ETA"),
            TimeRemainingColumn(), console=console, transient=True,
        )
        self._task = self._progress.add_task("md", total=total, completed=start, rate="-")

    def __enter__(self):
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.stop()
        return False

    def update(self, step: int) -> None:
        if self._progress is None:
            return
        self._progress.update(self._task, completed=step)
        speed = self._progress.tasks[0].speed
        self._progress.update(self._task, rate=f"{speed:.1f}" if speed else "-")
