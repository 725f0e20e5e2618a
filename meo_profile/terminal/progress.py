"""What a person sees while a sweep runs: a rich progress bar, or plain log lines (--quiet)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from meo_profile.core.identity import spec_title


class BarProgress:
    """Configurations done / total, elapsed, ETA and the configuration in flight (stderr)."""

    def __init__(self, total: int):
        self.progress = Progress(TextColumn("[bold]sweep"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                                 TextColumn("{task.description}"),
                                 console=Console(stderr=True), transient=False)
        self.task = self.progress.add_task("", total=total)

    def __enter__(self) -> BarProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.__exit__(*exc)

    def __call__(self, event: str, spec, result) -> None:
        if event == "start":
            self.progress.update(self.task, description=spec_title(spec))
            return
        self.progress.advance(self.task)
        if result is not None and result.status != "ok":
            self.progress.console.print(f"[yellow]{result.status}[/]: {spec_title(spec)}: {result.error}")


class LogProgress:
    """One line per configuration on stderr, for logs and CI."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __call__(self, event: str, spec, result) -> None:
        if event == "start":
            return
        self.done += 1
        status = "stored already" if result is None else result.status
        detail = f" ({result.error})" if result is not None and result.error else ""
        print(f"[{self.done}/{self.total}] {status}: {spec_title(spec)}{detail}", file=sys.stderr,
              flush=True)


def run_with_progress(run, jobs, options, quiet: bool):
    """Run a sweep under a progress display: a bar on a terminal, log lines otherwise."""
    display = LogProgress(len(jobs)) if quiet or not sys.stderr.isatty() else BarProgress(len(jobs))
    with display:
        return run(jobs, options, display)
