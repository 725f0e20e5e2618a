"""`meo-profile sweep`: run a grid, store every record as it is measured, report at the end.

Guarantees:
- each record is appended and fsynced as soon as it is measured: a killed sweep loses at most
  the configuration in flight; `--resume` (the default) skips configurations already stored
  with a result for the same device, so rerunning the same command finishes the set (failed
  rows are tried again; the failure stays on record);
- a failing configuration is a row (`oom` or `error`), and the sweep goes on;
- Ctrl-C finishes the configuration in flight, writes it, says how to resume, exits 130
  (a second Ctrl-C stops at once);
- one live sweep per output directory (an advisory lock the OS drops if the process dies).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meo_profile.core.errors import BadInput
from meo_profile.core.identity import MACHINE_FIELD, config_key
from meo_profile.measure.load_guard import LoadGuard
from meo_profile.measure.run import measure
from meo_profile.measure.timing import TimingOptions
from meo_profile.results.record import Result, device_name, environment
from meo_profile.results.store import ENVIRONMENT_FILE, Store, load, read_environment
from models import Spec
from models.spec import SpecError

LOCK_FILE = ".sweep.lock"


class SweepBusy(BadInput):
    """Another live sweep holds the output directory."""


@dataclass
class SweepOptions:
    out: Path
    resume: bool = True
    max_memory_bytes: int | None = None
    timing: TimingOptions = field(default_factory=TimingOptions)


@dataclass
class SweepSummary:
    total: int = 0
    already_stored: int = 0
    statuses: Counter = field(default_factory=Counter)
    phases_s: Counter = field(default_factory=Counter)  # counting, building, timing, writing
    wall_s: float = 0.0
    interrupted: bool = False
    set_aside: Path | None = None  # --fresh: where the previous results were moved
    load_warnings: list[str] = field(default_factory=list)  # contention seen around the sweep

    @property
    def measured(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.statuses["oom"] + self.statuses["error"]


# ------------------------------------------------------------------------------- identity
def job_key(fields: dict[str, Any], metrics, timing_options: dict | None = None) -> tuple:
    """What makes two records the same measurement: the configuration, on the same machine (a
    resumed sweep on another machine measures again), with the same metrics and, when it is
    timed, the same timing options (a latency taken with other options is measured again)."""
    timed = "latency" in (metrics or ())
    options = tuple(sorted((timing_options or {}).items())) if timed else ()
    return config_key(fields, machine=True), tuple(sorted(metrics or ())), options


def stored_keys(records: list[dict[str, Any]]) -> set[tuple]:
    """Configurations a resumed sweep skips: those stored with a result. A failed row stays
    in the file (nothing is lost) and its configuration is tried again."""
    return {job_key(r, r.get("metrics"), r.get("timing_options")) for r in records
            if r.get("status") == "ok"}


# ----------------------------------------------------------------------------------- lock
class SweepLock:
    def __init__(self, directory: Path):
        self.path = directory / LOCK_FILE
        self.fd: int | None = None

    def __enter__(self) -> SweepLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise SweepBusy(f"--out {str(self.path.parent)!r}: another sweep (pid {holder}) is "
                            "writing there; wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)


# ------------------------------------------------------------------------------ interrupt
class StopAfterCurrent:
    """First SIGINT: finish the configuration in flight, then stop. Second: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def _handle(self, signum, frame) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopAfterCurrent:
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)


# ---------------------------------------------------------------------------------- runner
ProgressFn = Callable[[str, Spec | None, Result | None], None]  # event, spec, result


def start_over(out: Path) -> Path | None:
    """`--fresh`: set the old results aside (renamed, never deleted) and return where."""
    old = out / "results.jsonl"
    if not old.exists():
        return None
    aside = out / time.strftime("results-%Y%m%d-%H%M%S.old.jsonl")
    old.rename(aside)
    return aside


def run_sweep(jobs: list[tuple[Spec, tuple[str, ...]]], options: SweepOptions,
              progress: ProgressFn = lambda *a: None) -> SweepSummary:
    """Measure every job not yet stored; append each record as it finishes."""
    summary = SweepSummary(total=len(jobs))
    start = time.perf_counter()
    with SweepLock(options.out), StopAfterCurrent() as stop:
        if not options.resume:  # under the lock: never move a live sweep's file
            summary.set_aside = start_over(options.out)
        store = Store(options.out)
        done = stored_keys(store.records()) if options.resume else set()
        guard = with_time(summary, "load guard", LoadGuard(timed_targets(jobs, done, options.timing)).start)
        for spec, metrics in jobs:
            if _key(spec, metrics, options.timing) in done:
                summary.already_stored += 1
                progress("skip", spec, None)
                continue
            progress("start", spec, None)
            try:
                result = measure(spec, metrics, timing=options.timing,
                                 max_memory_bytes=options.max_memory_bytes, phases=summary.phases_s)
            except SpecError as e:  # planned sweeps are checked up front; a hand-made job list
                result = Result(spec, metrics=list(metrics), status="error", error=str(e))
            t = time.perf_counter()
            store.append(result)
            summary.phases_s["writing"] += time.perf_counter() - t
            summary.statuses[result.status] += 1
            progress("done", spec, result)
            if stop.requested:
                summary.interrupted = True
                break
        summary.load_warnings = with_time(summary, "load guard", guard.finish).warnings
        t = time.perf_counter()
        store.write_csv()
        write_environment(options.out, {spec.device for spec, _ in jobs}, guard,
                          keep_old=summary.set_aside is None)
        summary.phases_s["writing"] += time.perf_counter() - t
    summary.wall_s = time.perf_counter() - start
    return summary


def _key(spec: Spec, metrics, timing: TimingOptions) -> tuple:
    return job_key({**spec.to_dict(), MACHINE_FIELD: device_name(spec.device)}, metrics,
                   timing.to_dict())


def timed_targets(jobs: list[tuple[Spec, tuple[str, ...]]], done: set[tuple],
                  timing: TimingOptions) -> list[tuple[str, str]]:
    """(device, dtype) pairs this run will time: the load guard probes their peaks."""
    return sorted({(spec.device, spec.dtype) for spec, metrics in jobs
                   if "latency" in metrics and _key(spec, metrics, timing) not in done})


def with_time(summary: SweepSummary, phase: str, fn: Callable[[], Any]) -> Any:
    t = time.perf_counter()
    try:
        return fn()
    finally:
        summary.phases_s[phase] += time.perf_counter() - t


def write_environment(out: Path, devices: set[str], guard: LoadGuard | None = None,
                      keep_old: bool = True) -> Path:
    """What the machine was, and the load guard of every run that timed into this directory
    (a resumed sweep adds its run; `--fresh` starts the list over)."""
    path = out / ENVIRONMENT_FILE
    runs = (read_environment(out).get("load_guard") or []) if keep_old else []
    if guard is not None and guard.before is not None:
        runs.append(guard.to_dict())
    env = {d: environment(d) for d in sorted(devices)}
    path.write_text(json.dumps({**env, "load_guard": runs}, indent=2) + "\n")
    return path


def skipped_lines(out: Path) -> list[str]:
    """Lines of results.jsonl that could not be read (reported, then ignored)."""
    return load(out).skipped
