"""Progress reporting for long steps: Rich bars on stderr, or nothing when quiet."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)

Advance = Callable[[int, str], None]
"""Report progress: (units completed so far, a short status text)."""


class ProgressReporter:
    """Hands out one progress bar per step; a disabled reporter costs nothing."""

    def __init__(self, enabled: bool = True, console: Console | None = None) -> None:
        self.enabled = enabled
        self.console = console or Console(stderr=True)

    @contextmanager
    def task(self, description: str, total: int | None) -> Iterator[Advance]:
        if not self.enabled:
            yield lambda completed, status="": None
            return
        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
        )
        with Progress(*columns, console=self.console, transient=False) as progress:
            task_id = progress.add_task(description, total=total, status="")

            def advance(completed: int, status: str = "") -> None:
                progress.update(task_id, completed=completed, status=status)

            yield advance
            if total is not None:
                progress.update(task_id, completed=total)

    def log(self, message: str) -> None:
        """One plain line: no markup (paths and keys may hold brackets), no wrapping at the
        terminal width (logs are often read from a file, where Rich assumes 80 columns)."""
        if self.enabled:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        """One plain `warning:` line, shown even when quiet: the result is valid but partial."""
        self.console.print(f"warning: {message}", markup=False, highlight=False, soft_wrap=True)


QUIET = ProgressReporter(enabled=False)
