"""`--executor ray`: a pool of Ray actors, as vLLM and SGLang run their MoE kernel sweeps.

One actor per GPU (`num_gpus=1`, so Ray gives each its own device through
CUDA_VISIBLE_DEVICES) on a cluster with GPUs; otherwise `cpu_workers` actors that share the
CPUs (default one: two actors of one core each timed 3.8x slower than one of two cores, and
variants are compared as ratios within a run, so they must not compete). The driver keeps one
call in flight per actor. An actor that dies (the OOM killer, a segfault, kill -9) is a
`Failure` naming its node, GPU and pid; a fresh actor takes its place and the sweep goes on.

`address` None starts a private Ray on this machine (address="local": a bare ray.init() would
join whatever cluster RAY_ADDRESS or the last `ray start` names) and stops it at close; "auto"
or "host:port" joins a running cluster, whose nodes must have the project installed.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import time
from collections import deque
from typing import Any

from meo_profile.core.errors import BadInput
from meo_profile.sweep.executors import (
    Failure,
    MissingExtra,
    Site,
    WorkerSetupError,
    call_work,
    cause_line,
    export_sys_path,
    first_line,
    ignore,
    never,
    probe_environments,
)

# Set before `import ray` (it reads them then): no usage-stats prompt or upload; workers at
# normal priority (Ray starts them at nice 15, which would slow every timing).
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_worker_niceness": "0"}
# A private Ray on this machine: token auth, said explicitly (Ray warns at every start when
# it is left unset); Ray writes the token to ~/.ray/auth_token.
PRIVATE_RAY_ENV = {"RAY_AUTH_MODE": "token"}
RESOURCE_NAMES = {"num_cpus": "CPU(s)", "num_gpus": "GPU"}
POLL_S = 0.2  # ray.wait blocks signal handlers: wake this often so Ctrl-C is heard at once
START_TIMEOUT_S = 300.0  # actors that cannot be placed (resources the cluster lacks) in time


class _Worker:
    """One actor: runs jobs one at a time, names itself from where Ray placed it."""

    def __init__(self) -> None:
        self.name = f"ray pid {os.getpid()}"

    def hello(self) -> tuple[str, dict[str, dict[str, Any]]]:
        """Who this actor is ("node:gpuN pid P") and its environment per device."""
        import ray

        environments = probe_environments()
        device = "cuda" if ray.get_gpu_ids() and "cuda" in environments else "cpu"
        self.name = f"{environments[device]['worker']} pid {os.getpid()}"
        return self.name, environments

    def run(self, work, job):
        return call_work(work, job, self.name)


class RayExecutor:
    name = "ray"

    def __init__(self, address: str | None = None, cpu_workers: int = 1):
        if importlib.util.find_spec("ray") is None:  # found, not imported: see RAY_ENV
            raise MissingExtra("--executor ray needs Ray: pip install 'meo-profile[ray]'")
        self.address, self.cpu_workers = address, cpu_workers
        self._started_ray = False
        self._cls = None
        self._names: dict = {}  # actor -> "node:gpuN pid P"

    # ----------------------------------------------------------------------- lifecycle
    def start(self) -> Site:
        self._connect()
        import ray

        count, resources = self._pool_shape()
        self._cls = ray.remote(max_restarts=0, max_task_retries=0, **resources)(_Worker)
        actors = [self._cls.remote() for _ in range(count)]
        hellos = self._gather([a.hello.remote() for a in actors])
        self._names = {a: name for a, (name, _) in zip(actors, hellos)}
        environments = [envs for _, envs in hellos]
        device = "cuda" if "num_gpus" in resources else "cpu"
        machines = sorted({envs[device]["device_name"] for envs in environments})
        if len(machines) > 1:  # variants are compared within a sweep: on one kind of machine
            raise BadInput(f"--executor ray: the workers are different machines ({'; '.join(machines)}); "
                           "run one sweep per kind of machine")
        nodes = len({name.split(":")[0].split(" ")[0] for name in self._names.values()})
        shape = ", ".join(f"{n} {RESOURCE_NAMES[k]}" for k, n in resources.items())
        return Site(environments[0], f"ray: {count} worker(s) of {shape} on {nodes} node(s)")

    def _connect(self) -> None:
        for key, value in {**RAY_ENV, **(PRIVATE_RAY_ENV if self.address is None else {})}.items():
            os.environ.setdefault(key, value)
        import ray

        if ray.is_initialized():  # the caller's own session (a test's shared one)
            return
        if self.address is None:
            export_sys_path()  # workers of a local Ray import the project from where we do
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(address=self.address or "local", include_dashboard=False,
                     log_to_driver=False, logging_level=logging.WARNING)
        except ConnectionError as e:  # no cluster at that address
            raise BadInput(f"--ray-address {self.address!r}: {first_line(e)}") from None
        except Exception as e:  # e.g. its GCS did not come up in time on a loaded machine
            raise WorkerSetupError(f"--executor ray: Ray did not start: {cause_line(e)}") from None
        finally:  # ray.init makes SIGTERM end the driver at once; the sweep's own handler stays
            signal.signal(signal.SIGTERM, sigterm)
        self._started_ray = self.address is None

    def _pool_shape(self) -> tuple[int, dict[str, int]]:
        """(actors, resources of each): one per GPU with the CPUs of the leanest GPU node
        shared out, else `cpu_workers` sharing the CPUs (at most one node's worth each)."""
        import ray

        nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
        gpus = sum(int(n.get("GPU", 0)) for n in nodes)
        if gpus:
            per_gpu = min(int(n.get("CPU", 1)) // int(n["GPU"]) for n in nodes if n.get("GPU"))
            return gpus, {"num_gpus": 1, "num_cpus": max(1, per_gpu)}
        cpus = sum(int(n.get("CPU", 0)) for n in nodes)
        biggest = max((int(n.get("CPU", 0)) for n in nodes), default=1)
        return self.cpu_workers, {"num_cpus": max(1, min(biggest, cpus // self.cpu_workers))}

    def _gather(self, refs: list) -> list:
        """ray.get, waking every POLL_S (signals), and refusing to wait past START_TIMEOUT_S."""
        import ray
        from ray.exceptions import RayError

        deadline = time.monotonic() + START_TIMEOUT_S
        while len(ray.wait(refs, num_returns=len(refs), timeout=POLL_S)[0]) < len(refs):
            if time.monotonic() > deadline:
                raise WorkerSetupError(f"--executor ray: {len(refs)} workers not placed in "
                                       f"{START_TIMEOUT_S:.0f} s (does the cluster have the resources?)")
        try:
            return ray.get(refs)
        except RayError as e:  # e.g. the project does not import on a node
            raise WorkerSetupError(f"--executor ray: workers cannot start: {cause_line(e)}") from None

    def close(self) -> None:
        import ray

        for actor in self._names:
            ray.kill(actor)
        self._names.clear()
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False

    # ----------------------------------------------------------------------------- run
    def run(self, jobs, work, should_stop=never, started=ignore):
        import ray

        work_ref = ray.put(work)  # shipped once, not with every call
        pending, idle = deque(jobs), list(self._names)
        in_flight: dict = {}  # ObjectRef -> (actor, job)
        while pending or in_flight:
            while idle and pending and not should_stop():
                actor, job = idle.pop(), pending.popleft()
                started(job)
                in_flight[actor.run.remote(work_ref, job)] = (actor, job)
            if not in_flight:
                return
            ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=POLL_S)
            for ref in ready:
                actor, job = in_flight.pop(ref)
                outcome = self._outcome(ref, actor)
                if actor in self._names:
                    idle.append(actor)
                elif pending:
                    idle.append(self._replacement())
                yield job, outcome

    def _outcome(self, ref, actor) -> Any:
        """The call's value, or a Failure naming the worker (a dead actor leaves the pool)."""
        import ray
        from ray.exceptions import RayActorError, RayTaskError

        try:
            return ray.get(ref)
        except RayActorError as e:  # the process died: OOM killer, segfault, kill -9
            name = self._names.pop(actor, "ray actor")
            return Failure(name, f"WorkerDied: {type(e).__name__}: {first_line(e)}")
        except RayTaskError as e:  # e.g. the job could not be unpickled in the worker
            return Failure(self._names.get(actor, "ray actor"), cause_line(e))

    def _replacement(self):
        actor = self._cls.remote()
        self._names[actor] = self._gather([actor.hello.remote()])[0][0]
        return actor
