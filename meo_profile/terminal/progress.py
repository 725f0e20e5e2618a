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

    def __call__(self, event: str, spec, record) -> None:
        if event == "start":
            self.progress.update(self.task, description=spec_title(spec))
            return
        self.progress.advance(self.task)
        if record is not None and record["status"] != "ok":
            self.progress.console.print(f"[yellow]{record['status']}[/]: {spec_title(spec)}: "
                                        f"{record['error']}")

    def note(self, text: str) -> None:
        self.progress.console.print(text, markup=False, highlight=False)


class LogProgress:
    """One line per configuration on stderr, for logs and CI."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        return None

    def __call__(self, event: str, spec, record) -> None:
        if event == "start":
            return
        self.done += 1
        status = "stored already" if record is None else record["status"]
        detail = f" ({record['error']})" if record is not None and record.get("error") else ""
        where = f" on {record['worker']}" if record is not None and record.get("worker") else ""
        print(f"[{self.done}/{self.total}] {status}: {spec_title(spec)}{where}{detail}",
              file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        print(text, file=sys.stderr, flush=True)


def run_with_progress(run, jobs, options, quiet: bool, total: int):
    """Run a sweep of `total` configurations under a progress display: a bar on a terminal,
    log lines otherwise."""
    display = LogProgress(total) if quiet or not sys.stderr.isatty() else BarProgress(total)
    with display:
        return run(jobs, options, display)
