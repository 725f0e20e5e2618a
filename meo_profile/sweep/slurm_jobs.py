"""`--executor slurm`: one submitit job per configuration, a job array on Slurm.

Without Slurm, submitit's `local` executor runs each job as a subprocess of this machine (its
own Python, so each job imports torch afresh: seconds per configuration) and `debug` runs them
in this process; `--slurm-cluster auto` picks Slurm when present, else local. The driver:
- submits the whole array at once on Slurm (Slurm throttles it, `--slurm-array-parallelism`);
  locally it keeps that many jobs running, each on its own GPUs when jobs ask for GPUs;
- polls `done()` and collects each result as its job ends; a job killed, timed out or lost with
  its node has no result file: a `Failure` naming the job and its log (kept; collected jobs'
  files are deleted, since submitit never cleans its folder);
- starts local jobs with SIGINT ignored: they share the terminal's process group, and a
  Ctrl-C meant for the driver would kill them mid-configuration.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meo_profile.sweep.executors import (
    Failure,
    MissingExtra,
    Site,
    WorkerSetupError,
    call_work,
    cause_line,
    export_sys_path,
    ignore,
    never,
    probe_environments,
)

POLL_S = 0.2  # done() reads files (or squeue, cached by submitit): cheap at this rate
SLURM_CLUSTERS = ("auto", "slurm", "local", "debug")  # auto: Slurm where present, else local


@dataclass(frozen=True)
class SlurmParams:
    """What each job asks Slurm for (the local and debug executors ignore all but the time)."""

    partition: str | None = None
    cpus_per_job: int | None = None
    time_min: int = 60  # submitit's local executor kills a job after 2 min unless told
    array_parallelism: int | None = None
    extra: dict[str, str] = field(default_factory=dict)  # #SBATCH --KEY=VALUE lines


def _job_entry(work, job):
    """What a job runs: the work, named by where it landed (its record names the worker)."""
    return call_work(work, job, f"{socket.gethostname()} pid {os.getpid()}")


class SubmititExecutor:
    name = "slurm"

    def __init__(self, folder: Path, cluster: str = "auto", gpus_per_job: int = 0,
                 params: SlurmParams | None = None):
        if importlib.util.find_spec("submitit") is None:
            raise MissingExtra("--executor slurm needs submitit: pip install 'meo-profile[slurm]'")
        import submitit

        if cluster == "auto":
            cluster = "slurm" if submitit.AutoExecutor.which() == "slurm" else "local"
        self.folder, self.cluster, self.gpus_per_job = Path(folder), cluster, gpus_per_job
        self.params = params or SlurmParams()
        self.window = self._window(self.params.array_parallelism)
        self._live: list = []
        self._never_started: set = set()  # queued array tasks cancelled after a stop

    def _window(self, parallelism: int | None) -> int:
        """Jobs running at once. Locally one unless said (CPU jobs would compete for the
        cores and skew each other's timings), or one per GPU set when jobs take GPUs."""
        if self.cluster == "debug":
            return 1
        if parallelism is not None or self.cluster == "slurm":
            return parallelism or 1_000_000  # on Slurm the array's own throttle governs
        if self.gpus_per_job:
            import torch

            return max(1, torch.cuda.device_count() // self.gpus_per_job)
        return 1

    # ----------------------------------------------------------------------- lifecycle
    def start(self) -> Site:
        """Local jobs run on this machine (with a GPU only where they ask for one); on Slurm
        (and in debug mode, which exercises the same path) a first job reports its node."""
        if self.cluster == "local":
            environments = probe_environments(cuda=self.gpus_per_job > 0)
        else:
            environments = self._probe()
        where = {"local": f"local processes on {socket.gethostname()}",
                 "debug": "submitit debug (this process)", "slurm": "Slurm jobs"}[self.cluster]
        return Site(environments, f"slurm ({self.cluster}): {where}, {self.gpus_per_job} GPU(s) per job")

    def _probe(self) -> dict[str, dict[str, Any]]:
        if self.cluster != "debug":
            export_sys_path()
        # through _job_entry, which never raises: a raising debug job opens a debugger
        sjob = self._submit(self._executor(), functools.partial(_job_entry, probe_environments), [True])[0]
        while not sjob.done():
            time.sleep(POLL_S)
        outcome = self._collect(sjob)
        if isinstance(outcome, Failure):
            raise WorkerSetupError(f"--executor slurm: the first job failed: {outcome.error}")
        self._clean(sjob)
        return outcome

    def _executor(self, gpus: list[int] | None = None):
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        p = self.params
        executor.update_parameters(
            name="meo-profile", timeout_min=p.time_min, gpus_per_node=self.gpus_per_job,
            cpus_per_task=p.cpus_per_job, slurm_partition=p.partition,
            slurm_array_parallelism=p.array_parallelism,
            slurm_additional_parameters=dict(p.extra) or None)
        if gpus is not None and self.cluster == "local":
            executor.update_parameters(local_visible_gpus=gpus)
        return executor

    def _submit(self, executor, fn, jobs: list) -> list:
        if self.cluster == "slurm":
            return executor.map_array(fn, jobs) if len(jobs) > 1 else [executor.submit(fn, jobs[0])]
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # inherited by the job's process
        try:
            return [executor.submit(fn, j) for j in jobs]
        finally:
            signal.signal(signal.SIGINT, previous)

    def close(self) -> None:
        for sjob in self._live:
            if not sjob.done():
                self._kill(sjob)
        self._live.clear()
        with contextlib.suppress(OSError):
            (self.folder / "%j").rmdir()  # submitit's staging folder, left empty
            self.folder.rmdir()  # and ours, when no failed job's log is left in it

    # ----------------------------------------------------------------------------- run
    def run(self, jobs, work, should_stop=never, started=ignore):
        if self.cluster != "debug":
            export_sys_path()
        fn = functools.partial(_job_entry, work)
        pending, in_flight = deque(jobs), {}  # submitit job -> (our job, GPU slot)
        free_slots = deque(range(self.window if self.gpus_per_job and self.cluster == "local" else 0))
        while pending or in_flight:
            if pending and not should_stop() and len(in_flight) < self.window:
                self._launch(fn, pending, in_flight, free_slots, started)
            if should_stop():
                self._cancel_queued(in_flight)
            if not in_flight:  # stopped: what was never handed out stays for the resume
                return
            finished = [s for s in in_flight if s.done()]
            if not finished:
                time.sleep(POLL_S)
            for sjob in finished:
                job, slot = in_flight.pop(sjob)
                if slot is not None:
                    free_slots.append(slot)
                self._live.remove(sjob)
                outcome = self._collect(sjob)
                if not isinstance(outcome, Failure):
                    self._clean(sjob)
                if sjob not in self._never_started:
                    yield job, outcome

    def _launch(self, fn, pending: deque, in_flight: dict, free_slots: deque, started) -> None:
        """Submit what fits the window: one job per free GPU slot locally, else a batch."""
        if free_slots:
            slot = free_slots.popleft()
            gpus = list(range(slot * self.gpus_per_job, (slot + 1) * self.gpus_per_job))
            batch, executor = [pending.popleft()], self._executor(gpus)
        else:
            batch = [pending.popleft() for _ in range(min(self.window - len(in_flight), len(pending)))]
            slot, executor = None, self._executor()
        for job in batch:
            started(job)
        for sjob, job in zip(self._submit(executor, fn, batch), batch):
            in_flight[sjob] = (job, slot)
            self._live.append(sjob)

    def _cancel_queued(self, in_flight: dict) -> None:
        """After a stop: array tasks still queued on Slurm never start (resume runs them)."""
        if self.cluster != "slurm":
            return
        for sjob in in_flight:
            if sjob not in self._never_started and sjob.state == "PENDING":
                sjob.cancel(check=False)
                self._never_started.add(sjob)

    def _collect(self, sjob) -> Any:
        import submitit

        where = f"{self.cluster} job {sjob.job_id}"
        if self.cluster != "debug" and not sjob.paths.result_pickle.exists():
            if self.cluster == "slurm":
                time.sleep(2)  # a shared file system can show the result a moment late
            if not sjob.paths.result_pickle.exists():  # killed, timed out, its node lost
                return Failure(where, f"WorkerDied: {where} ended without a result "
                                      f"(state {sjob.state}); log: {sjob.paths.stderr}")
        try:
            return sjob.result()
        except submitit.core.utils.UncompletedJobError as e:  # FailedJobError is one too
            # the job's own exception (e.g. the project did not import there), not the
            # wrapper's "failed during processing with trace:"
            return Failure(where, cause_line(e))

    def _clean(self, sjob) -> None:
        paths = sjob.paths
        for f in (paths.submitted_pickle, paths.result_pickle, paths.stdout, paths.stderr):
            f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            paths.folder.rmdir()

    def _kill(self, sjob) -> None:
        if self.cluster == "local":  # the controller's pid is the job id; its children the tasks
            pid = int(sjob.job_id)
            for p in _children(pid) + [pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
        elif self.cluster == "slurm":
            sjob.cancel(check=False)


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []
