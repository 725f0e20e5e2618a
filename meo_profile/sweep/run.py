"""`meo-profile sweep`: the driver. It plans the grid for the device its workers report,
skips what is stored, hands the rest to an executor (this process, Ray actors, Slurm jobs: see
`executors.py`), and is the only writer of `results.jsonl`, appending each record as it comes
back.

Guarantees, whatever the executor:
- each record is appended and fsynced as it arrives: a killed driver loses at most the
  configurations in flight; `--resume` (the default) skips configurations already stored with a
  result for the same machine (the workers' machine, as they report it), metrics and, for a
  timed configuration, timing options, so
  rerunning the same command finishes the set (failed rows are tried again; the failure stays
  on record);
- a failing configuration is a row (`oom` or `error`), and so is a worker that dies (an
  `error` naming it); the sweep goes on;
- Ctrl-C or SIGTERM stops after the configurations in flight (a second one, or SIGTERM's grace
  running out, at once): see `stopping.py`; the CSV is written, the caller prints how to resume;
- one live sweep per output directory (an advisory lock the OS drops if the process dies).

On the local executor a load guard probes this machine's peaks before and after the timed
configurations (measure/load_guard.py); its runs are kept in `environment.json`.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from meo_profile.core.errors import BadInput
from meo_profile.core.identity import MACHINE_FIELD, config_key
from meo_profile.measure.load_guard import LoadGuard
from meo_profile.measure.run import measure
from meo_profile.measure.timing import TimingOptions
from meo_profile.models import Spec
from meo_profile.models.spec import SpecError
from meo_profile.results.record import Result
from meo_profile.results.store import ENVIRONMENT_FILE, Store, load, read_environment
from meo_profile.sweep.executors import Executor, Failure, LocalExecutor, Site
from meo_profile.sweep.stopping import StopNow, Stopping

Job = tuple[Spec, tuple[str, ...]]
LOCK_FILE = ".sweep.lock"


class SweepBusy(BadInput):
    """Another live sweep holds the output directory."""


@dataclass
class SweepOptions:
    out: Path
    resume: bool = True
    max_memory_bytes: int | None = None
    timing: TimingOptions = field(default_factory=TimingOptions)
    executor: Executor = field(default_factory=LocalExecutor)


@dataclass
class SweepSummary:
    total: int = 0
    already_stored: int = 0
    statuses: Counter = field(default_factory=Counter)
    phases_s: Counter = field(default_factory=Counter)  # counting, building, timing, writing
    wall_s: float = 0.0
    set_aside: Path | None = None  # --fresh: where the previous results were moved
    workers: str = ""  # what ran the configurations (the executor's Site.description)
    parallel: bool = False  # phases are summed over workers that ran at once
    stopped_by: int | None = None  # the signal that stopped the sweep
    exit_code: int | None = None  # 128 + that signal
    load_warnings: list[str] = field(default_factory=list)  # contention seen around the sweep

    @property
    def interrupted(self) -> bool:
        return self.stopped_by is not None

    @property
    def measured(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return self.statuses["oom"] + self.statuses["error"]

    def failure_line(self, strict: bool = False, report: Path | None = None) -> str | None:
        """Why a finished sweep exits 1, in one line: configurations that errored ("3 of 13
        configurations failed; see the report's failures table"). A recorded limit (`oom`:
        over the memory budget) is a result, and fails the sweep only under `--strict`."""
        errors, ooms = self.statuses["error"], self.statuses["oom"] if strict else 0
        if not errors + ooms:
            return None
        kinds = f" ({errors} error, {ooms} oom)" if ooms else ""
        where = (f"see the report's failures table ({report})" if report is not None else
                 "their errors are in results.jsonl")
        return f"{errors + ooms} of {self.total} configurations failed{kinds}; {where}"


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


# ---------------------------------------------------------------------------------- runner
class Progress(Protocol):
    """What a sweep tells whoever watches: events ("skip", "start", "done") per configuration
    with its record once there is one, and notes (workers, stopping) as they happen."""

    def __call__(self, event: str, spec: Spec, record: dict[str, Any] | None) -> None: ...

    def note(self, text: str) -> None: ...


class Silent:
    def __call__(self, event: str, spec: Spec, record: dict[str, Any] | None) -> None:
        return None

    def note(self, text: str) -> None:
        return None


SILENT = Silent()


@dataclass(frozen=True)
class MeasureJob:
    """What a worker runs for each job: the one measuring path with the sweep's settings.
    Returns the record as a dict (what crosses a process boundary) and seconds per phase."""

    timing: TimingOptions
    max_memory_bytes: int | None = None

    def __call__(self, job: Job) -> tuple[dict[str, Any], dict[str, float]]:
        spec, metrics = job
        phases: Counter = Counter()
        try:
            result = measure(spec, metrics, timing=self.timing,
                             max_memory_bytes=self.max_memory_bytes, phases=phases)
        except SpecError as e:  # planned sweeps are checked up front; a hand-made job list
            result = Result(spec, metrics=list(metrics), status="error", error=str(e))
        return result.to_dict(), dict(phases)


def start_over(out: Path) -> Path | None:
    """`--fresh`: set the old results aside (renamed, never deleted) and return where."""
    old = out / "results.jsonl"
    if not old.exists():
        return None
    aside = out / time.strftime("results-%Y%m%d-%H%M%S.old.jsonl")
    old.rename(aside)
    return aside


Jobs = Sequence[Job] | Callable[[Site], Sequence[Job]]


def run_sweep(jobs: Jobs, options: SweepOptions, progress: Progress = SILENT) -> SweepSummary:
    """Measure every job not yet stored; append each record as it comes back. `jobs` may be
    a function of the workers' Site (a grid planned for their device)."""
    summary = SweepSummary(parallel=options.executor.name != "local")
    start = time.perf_counter()
    with SweepLock(options.out), Stopping(progress.note) as stop:
        if not options.resume:  # under the lock: never move a live sweep's file
            summary.set_aside = start_over(options.out)
        store, site, planned, guard = Store(options.out), None, [], None
        try:
            site = options.executor.start()
            summary.workers = site.description
            progress.note(f"workers: {site.description}")
            planned = list(jobs(site) if callable(jobs) else jobs)
            summary.total = len(planned)
            todo = not_stored(planned, store, site, options, summary, progress)
            if options.executor.name == "local":  # remote workers' machines are not this one
                guard = with_time(summary, "load guard", LoadGuard(timed_targets(todo)).start)
            drive(todo, options, site, store, stop, summary, progress)
        except StopNow:
            pass  # what is stored stays; the caller says how to resume
        finally:
            stop.settle()  # from here on a signal changes nothing: clean up, write the CSV
            options.executor.close()
        if guard is not None:
            summary.load_warnings = with_time(summary, "load guard", guard.finish).warnings
        summary.stopped_by, summary.exit_code = stop.signum, stop.exit_code
        t = time.perf_counter()
        store.write_csv()
        if site is not None:
            write_environment(options.out, {spec.device for spec, _ in planned}, site, guard,
                              keep_old=summary.set_aside is None)
        summary.phases_s["writing"] += time.perf_counter() - t
    summary.wall_s = time.perf_counter() - start
    return summary


def not_stored(jobs: list[Job], store: Store, site: Site, options: SweepOptions,
               summary: SweepSummary, progress: Progress) -> list[Job]:
    """The jobs to run: those without a result stored for the workers' machine (and, timed
    ones, with these timing options)."""
    done = stored_keys(store.records()) if options.resume else set()
    timing = options.timing.to_dict()
    todo = []
    for spec, metrics in jobs:
        if job_key({**spec.to_dict(), MACHINE_FIELD: site.machine(spec.device)}, metrics,
                   timing) in done:
            summary.already_stored += 1
            progress("skip", spec, None)
        else:
            todo.append((spec, metrics))
    return todo


def drive(todo: list[Job], options: SweepOptions, site: Site, store: Store, stop: Stopping,
          summary: SweepSummary, progress: Progress) -> None:
    """Hand the jobs to the executor; store each outcome as it arrives."""
    work = MeasureJob(options.timing, options.max_memory_bytes)
    outcomes = options.executor.run(todo, work, stop.requested,
                                    lambda job: progress("start", job[0], None))
    for (spec, metrics), outcome in outcomes:
        if isinstance(outcome, Failure):
            if stop.requested() and outcome.error.startswith("WorkerDied"):
                continue  # killed along with the stop: abandoned, resume measures it again
            record, phases = failure_record(spec, metrics, outcome, site), {}
        else:
            record, phases = outcome
        t = time.perf_counter()
        with stop.holding():  # a second Ctrl-C waits for the line to be whole
            store.append(record)
        summary.phases_s.update(phases)
        summary.phases_s["writing"] += time.perf_counter() - t
        summary.statuses[record["status"]] += 1
        progress("done", spec, record)


def failure_record(spec: Spec, metrics: tuple[str, ...], failure: Failure,
                   site: Site) -> dict[str, Any]:
    """An `error` row for a job whose worker gave nothing back: it names that worker, in the
    environment the workers reported (the driver's own may be another machine)."""
    env = {**site.environment(spec.device), "worker": failure.worker}
    return Result(spec, metrics=list(metrics), status="error", error=failure.error,
                  env=env).to_dict()


def timed_targets(jobs: list[Job]) -> list[tuple[str, str]]:
    """(device, dtype) pairs this run will time: the load guard probes their peaks."""
    return sorted({(spec.device, spec.dtype) for spec, metrics in jobs if "latency" in metrics})


def with_time(summary: SweepSummary, phase: str, fn: Callable[[], Any]) -> Any:
    t = time.perf_counter()
    try:
        return fn()
    finally:
        summary.phases_s[phase] += time.perf_counter() - t


def write_environment(out: Path, devices: set[str], site: Site, guard: LoadGuard | None = None,
                      keep_old: bool = True) -> Path:
    """The environment of each device the sweep used, as the workers reported it, and the load
    guard of every run that timed into this directory (a resumed sweep adds its run; `--fresh`
    starts the list over)."""
    path = out / ENVIRONMENT_FILE
    runs = (read_environment(out).get("load_guard") or []) if keep_old else []
    if guard is not None and guard.before is not None:
        runs.append(guard.to_dict())
    env = {d: site.environment(d) for d in sorted(devices)}
    path.write_text(json.dumps({**env, "load_guard": runs}, indent=2) + "\n")
    return path


def skipped_lines(out: Path) -> list[str]:
    """Lines of results.jsonl left out, saying why: unreadable, or a record with an invalid
    field (reported, then ignored; an invalid record's configuration is measured again)."""
    return load(out).left_out
