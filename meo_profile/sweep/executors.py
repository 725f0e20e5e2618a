"""Where a sweep's configurations run: this process, a Ray actor pool, or Slurm jobs.

An executor hands jobs to workers and yields `(job, outcome)` as each one finishes, in
completion order. An outcome is what the work function returned, or a `Failure` naming the
worker when there is nothing (the worker died, the job was killed). Executors never write
results: the sweep's driver (`sweep/run.py`) is the only writer of the store, so its guarantees
hold whatever runs the work.

    local   in the driver's process, one job after another
    ray     an actor pool: one actor per GPU (num_gpus=1), or N CPU actors (`ray_pool.py`)
    slurm   submitit: a Slurm job array, or submitit's local or debug executor where there is
            no Slurm (`slurm_jobs.py`)

`start()` brings the workers up and reports their `Site`: the environment a worker measures in,
per device. The driver plans the grid for that device and keys resume by that machine, so a
driver on a CPU-only Ray head or Slurm login node plans and resumes GPU configurations.
`should_stop()` is polled before a job is handed out: once it says True nothing new starts and
the jobs in flight still come back.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from meo_profile.core.errors import BadInput

WorkFn = Callable[[Any], Any]
StopFn = Callable[[], bool]
StartedFn = Callable[[Any], None]


def never() -> bool:
    return False


def ignore(job: Any) -> None:
    return None


@dataclass(frozen=True)
class Failure:
    """A job that gave no outcome: its worker died or was killed, or the work raised."""

    worker: str
    error: str  # one line: "<Kind>: <detail>"


class MissingExtra(BadInput):
    """`--executor ray|slurm` without its optional dependency installed."""


class WorkerSetupError(RuntimeError):
    """Workers cannot run the work at all (they do not start, the project does not import
    there): one error for the sweep (exit 1), not one error record per configuration."""


@dataclass(frozen=True)
class Site:
    """The workers as one of them reported: the record's environment fields per device it has
    ("cpu", and "cuda" where it has a GPU), and a line that says what they are."""

    environments: dict[str, dict[str, Any]]
    description: str = "this process"

    @property
    def device(self) -> str:
        """What `device: auto` means on the workers."""
        return "cuda" if "cuda" in self.environments else "cpu"

    def environment(self, device: str) -> dict[str, Any]:
        return self.environments["cuda" if device == "cuda" else "cpu"]

    def machine(self, device: str) -> str:
        """The `device_name` a record measured on `device` by these workers carries."""
        return self.environment(device)["device_name"]


def probe_environments(cuda: bool = True) -> dict[str, dict[str, Any]]:
    """Run where the work runs: the environment of each device there (a Site's content)."""
    import torch

    from meo_profile.results.record import environment  # torch: where the work runs, not for --help

    found = {"cpu": dict(environment("cpu"))}
    if cuda and torch.cuda.is_available():
        found["cuda"] = dict(environment("cuda"))
    return found


class Executor(Protocol):
    name: str

    def start(self) -> Site: ...

    def run(self, jobs: Sequence[Any], work: WorkFn, should_stop: StopFn = never,
            started: StartedFn = ignore) -> Iterator[tuple[Any, Any]]: ...

    def close(self) -> None: ...


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""


# A traceback's closing line: an exception's (dotted) name at the start of a line, alone or
# followed by ": detail". Frames are indented; an engine's own prose ("Job (task=0) failed
# during processing with trace:", "You can check full logs with ...") has spaces in its head.
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*)(: .*)?$")


def cause_line(e: BaseException) -> str:
    """The root cause in an engine's error whose text nests the worker's traceback (Ray's
    RayTaskError, submitit's FailedJobError "... with trace:"): the last exception line in it,
    "ImportError: cannot import name 'Spec' from 'models'", not the wrapper's first line."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # Ray colours its tracebacks
    causes = [line.strip() for line in text.splitlines() if _EXCEPTION_LINE.match(line.rstrip())]
    return causes[-1][:300] if causes else f"{type(e).__name__}: {first_line(e)}"


def call_work(work: WorkFn, job: Any, worker: str) -> Any:
    """Run one job where it lands; never raises (a raising work function is a Failure)."""
    try:
        return work(job)
    except Exception as e:
        return Failure(worker, f"{type(e).__name__}: {first_line(e)}")


def export_sys_path() -> None:
    """Workers started from the driver (a local Ray, submitit's local jobs, sbatch, which
    exports the environment) inherit its environment but not its sys.path: put the driver's
    import roots on PYTHONPATH so the project imports there as it does here."""
    own = (sys.prefix, sys.base_prefix, sys.exec_prefix)  # the interpreter's own paths stay its own
    roots = [p for p in sys.path if p and os.path.isdir(p) and "site-packages" not in p
             and not p.startswith(own)]
    roots += [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(os.path.abspath(p) for p in roots))


# -------------------------------------------------------------------------------- local
class LocalExecutor:
    """`--executor local`: each job in this process, in order (no worker can die apart)."""

    name = "local"

    def start(self) -> Site:
        import socket

        return Site(probe_environments(), f"this process on {socket.gethostname()}")

    def run(self, jobs, work, should_stop=never, started=ignore):
        import socket

        for job in jobs:
            if should_stop():
                return
            started(job)
            yield job, call_work(work, job, socket.gethostname())

    def close(self) -> None:
        return None
