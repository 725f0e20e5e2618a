"""The sweep on real engines: Ray on CPU (one `ray.init(num_cpus=2)` shared by these tests) and
submitit's local and debug executors, with real processes for kills and signals.

Every engine here starts from a user's folder that holds its own `models/` package (common in
ML projects; its import raises): the driver's imports, the Ray workers', the submitit jobs'
and the command line's (`python -m cli` and the console script) must all take this tool's
`meo_profile.models`, never the folder's.

Skipped, saying why, where the extras are not installed: `pip install -e '.[ray,slurm]'` (the
dev extra, which `make setup` installs, includes both).
"""

import contextlib
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meo_profile.core.identity import config_key
from meo_profile.measure.timing import TimingOptions
from meo_profile.results.store import load
from meo_profile.sweep.executors import export_sys_path
from meo_profile.sweep.plan import jobs_for, plan_grid
from meo_profile.sweep.ray_pool import PRIVATE_RAY_ENV, RAY_ENV
from meo_profile.sweep.run import SweepOptions, run_sweep

FAST = TimingOptions(warmup=1, min_run_time=0.02)
MARK = f"meo-test-{os.getpid()}"  # in the environment of every process these tests start
CLI_MARK = f"{MARK}-cli"  # ... and of those started by the command lines they run


def needs(module: str, extra: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: pip install -e '.[{extra}]'")


@pytest.fixture(scope="session")
def user_folder(tmp_path_factory) -> Path:
    """A user's project folder with a `models/` package of its own, whose import raises."""
    folder = tmp_path_factory.mktemp("user-project")
    (folder / "models").mkdir()
    (folder / "models" / "__init__.py").write_text("raise ImportError('the user's own models')\n")
    return folder


@pytest.fixture(scope="session")
def ray_session(user_folder):
    """One private Ray for the tests in this process (2 CPUs: one worker of two cores), started
    from the user's folder, with that folder first on the workers' import path (as `python -m`
    run there would put it)."""
    needs("ray", "ray")
    os.environ.update({**RAY_ENV, **PRIVATE_RAY_ENV, "MEO_TEST_MARK": MARK})
    import ray

    saved_path, saved_cwd = list(sys.path), os.getcwd()
    sys.path.insert(0, str(user_folder))
    os.chdir(user_folder)
    try:
        export_sys_path()  # Ray's workers import the project (and nothing from tests/)
        sigterm = signal.getsignal(signal.SIGTERM)
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.WARNING)
        signal.signal(signal.SIGTERM, sigterm)
    finally:
        sys.path[:] = saved_path
        os.chdir(saved_cwd)
    yield ray
    ray.shutdown()


def slurm(cluster: str):
    needs("submitit", "slurm")
    from meo_profile.sweep.slurm_jobs import SlurmParams, SubmititExecutor

    return lambda out: SubmititExecutor(out / "submitit", cluster, params=SlurmParams(time_min=5))


def tiny_jobs():
    """Three configurations of a tiny layer, counted only (fast)."""
    grid, _ = plan_grid(None, None, {"host": ["layer"], "variant": ["meo"], "d_model": [16],
                                     "d_ff": [32], "seq_len": [8], "batch_size": [2],
                                     "num_experts": [2, 4, 8], "top_k": [1]}, ("flops",))
    return functools.partial(jobs_for, grid)


def identity(record: dict) -> tuple:
    return config_key(record, machine=True), tuple(record["metrics"]), record["status"], record["macs"]


# -------------------------------------------------------------------- same as local
@pytest.mark.parametrize("engine", ["ray", "slurm-debug"])
def test_quick_preset_through_an_engine_stores_what_local_stores(engine, tmp_path, request):
    if engine == "ray":
        request.getfixturevalue("ray_session")
        from meo_profile.sweep.ray_pool import RayExecutor

        executor, workers = RayExecutor(), "ray: 1 worker(s) of 2 CPU(s) on 1 node(s)"
    else:
        executor, workers = slurm("debug")(tmp_path / "engine"), "slurm (debug)"
    grid, _ = plan_grid("quick", None, {}, ("flops",))  # counts: exact, so comparable
    jobs = functools.partial(jobs_for, grid)
    run_sweep(jobs, SweepOptions(tmp_path / "local", timing=FAST))
    summary = run_sweep(jobs, SweepOptions(tmp_path / "engine", timing=FAST, executor=executor))
    local, remote = load(tmp_path / "local").records, load(tmp_path / "engine").records
    assert summary.statuses == {"ok": 13} and summary.workers.startswith(workers)
    assert sorted(map(identity, remote)) == sorted(map(identity, local))
    assert {r["worker"] for r in remote} == {socket.gethostname()}
    again = run_sweep(jobs, SweepOptions(tmp_path / "engine", timing=FAST))  # the local executor
    assert (again.measured, again.already_stored) == (0, 13)


# ------------------------------------------------------------------ a worker dies
def marked(cmdline_part: str, mark: str = MARK) -> list[int]:
    """Live processes started under `mark` whose command line has `cmdline_part`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            if f"MEO_TEST_MARK={mark}".encode() in environ and cmdline_part in cmd and state != "Z":
                found.append(int(pid))
    return found


class KillSecondJob:
    """Progress that SIGKILLs the worker that receives the second job, as it starts."""

    def __init__(self, worker_cmdline: str):
        self.worker_cmdline, self.started, self.killed = worker_cmdline, 0, []

    def __call__(self, event, spec, record):
        if event == "start":
            self.started += 1
            if self.started == 2:
                before = set(marked(self.worker_cmdline))
                threading.Thread(target=self._kill, args=(before,), daemon=True).start()

    def _kill(self, before: set[int]) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not self.killed:
            # Ray's actor is there already; a submitit job's process appears after submission
            victims = marked(self.worker_cmdline) if "ray" in self.worker_cmdline else \
                [p for p in marked(self.worker_cmdline) if p not in before]
            for pid in victims:
                os.kill(pid, signal.SIGKILL)
                self.killed.append(pid)
            time.sleep(0.02)

    def note(self, text):
        return None


@pytest.mark.parametrize("engine", ["ray", "slurm-local"])
def test_a_worker_killed_mid_sweep_is_an_error_row_naming_it_and_the_rest_completes(
        engine, tmp_path, request, monkeypatch, user_folder):
    if engine == "ray":
        request.getfixturevalue("ray_session")
        from meo_profile.sweep.ray_pool import RayExecutor

        executor, watch = RayExecutor(), "ray::_Worker"
    else:
        monkeypatch.setenv("MEO_TEST_MARK", MARK)  # the jobs' processes inherit it
        monkeypatch.chdir(user_folder)  # the jobs start there
        monkeypatch.syspath_prepend(str(user_folder))  # and export it to them
        executor, watch = slurm("local")(tmp_path), "submitit.core._submit"
    killer = KillSecondJob(watch)
    summary = run_sweep(tiny_jobs(), SweepOptions(tmp_path, timing=FAST, executor=executor), killer)
    records = load(tmp_path).records
    assert killer.killed and summary.statuses == {"ok": 2, "error": 1}
    [error] = [r for r in records if r["status"] == "error"]
    assert error["error"].startswith("WorkerDied") and error["worker"]
    if engine == "ray":
        assert f"pid {killer.killed[0]}" in error["worker"]  # the process that died
    else:  # the dead job's log is kept and named; collected jobs' files are gone
        assert "local job" in error["worker"] and "log:" in error["error"]
        assert [p.name for p in (tmp_path / "submitit").iterdir()] == [error["worker"].split()[-1]]
    assert len({identity(r)[0] for r in records}) == 3  # every configuration has its row
    assert summary.failure_line() == "1 of 3 configurations failed; their errors are in results.jsonl"


class FailsToLoad:
    """Work whose unpickling raises where the job loads it, before any of the project's code
    runs there: what a worker meets when it cannot import the project."""

    def __reduce__(self):
        import importlib

        return importlib.import_module, ("meo_test_no_such_module",)


def test_a_job_that_fails_in_submitit_carries_the_cause_not_the_wrapper(tmp_path):
    executor = slurm("local")(tmp_path)
    executor.start()
    try:
        [(job, outcome)] = list(executor.run(["job"], FailsToLoad()))
    finally:
        executor.close()
    assert job == "job" and outcome.worker.startswith("local job ")
    # submitit's own first line is "Job (task=0) failed during processing with trace:"
    assert outcome.error == "ModuleNotFoundError: No module named 'meo_test_no_such_module'"


# --------------------------------------------------- the driver killed, stopped, resumed
def sweep_cli(out: Path, cwd: Path, *args: str) -> subprocess.Popen:
    """`python -m cli sweep` of six tiny configurations, run in `cwd`."""
    env = {**os.environ, "MEO_TEST_MARK": CLI_MARK}
    env.pop("RAY_ADDRESS", None)  # a private Ray, never someone's cluster
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "sweep", "--out", str(out), "--quiet", "--no-report",
         "--host", "layer", "--d-model", "16", "--d-ff", "32", "--seq-len", "8", "--batch-size", "2",
         "--device", "cpu", "--variant", "moe,meo", "--experts", "2,4,8", "--top-k", "1",
         "--metrics", "flops,latency", "--warmup", "1", "--min-run-time", "0.3", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_records(out: Path, n: int, proc: subprocess.Popen, timeout_s: float = 180) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if len(stored := load(out).records) >= n:
            return len(stored)
        time.sleep(0.05)
    raise AssertionError(f"fewer than {n} records in {timeout_s} s; exit {proc.poll()}")


def end_what_is_left() -> None:
    """A SIGKILLed driver's Ray can leave agents behind for a minute: end what the command
    lines these tests ran left."""
    for pid in marked("", CLI_MARK):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("engine", [["--executor", "ray"], ["--executor", "slurm", "--slurm-cluster", "debug"]],
                         ids=["ray", "slurm-debug"])
def test_driver_killed_then_stopped_then_resumed_keeps_every_record_once(engine, tmp_path,
                                                                         user_folder):
    needs("ray" if "ray" in engine else "submitit", engine[1])
    try:
        first = sweep_cli(tmp_path, user_folder, *engine)
        wait_for_records(tmp_path, 2, first)
        first.kill()  # SIGKILL: no clean-up runs in the driver
        first.wait()
        kept = len(load(tmp_path).records)
        second = sweep_cli(tmp_path, user_folder, *engine)
        wait_for_records(tmp_path, kept + 1, second)
        second.terminate()  # SIGTERM: stop after what is in flight, say how to resume
        _, err = second.communicate(timeout=120)
        assert second.returncode == 143, err[-3000:]
        assert "resume with: meo-profile sweep" in err and "--executor" in err
        stopped = load(tmp_path)
        assert stopped.skipped == [] and (tmp_path / "results.csv").exists()
        third = sweep_cli(tmp_path, user_folder)  # the local executor finishes the set
        _, err = third.communicate(timeout=300)
        assert third.returncode == 0, err[-3000:]
        assert f"{len(stopped.records)} already stored" in err.replace("\n", " ")
    finally:
        end_what_is_left()
    keys = [identity(r)[0] for r in load(tmp_path).records]
    assert len(keys) == len(set(keys)) == 6
    assert {r["status"] for r in load(tmp_path).records} == {"ok"}


def test_ctrl_c_to_the_process_group_lets_local_jobs_finish(tmp_path, user_folder):
    """A terminal's Ctrl-C reaches every process of its group: submitit's local jobs ignore it,
    so the configuration in flight is measured and stored, not killed. (The console script,
    run from the user's folder.)"""
    needs("submitit", "slurm")
    env = {**os.environ, "MEO_TEST_MARK": CLI_MARK}
    console_script = Path(sys.executable).parent / "meo-profile"
    proc = subprocess.Popen(
        [str(console_script), "sweep", "--out", str(tmp_path), "--quiet", "--no-report",
         "--host", "layer", "--d-model", "16", "--d-ff", "32", "--seq-len", "8", "--batch-size", "2",
         "--device", "cpu", "--variant", "moe,meo", "--experts", "2,4", "--top-k", "1",
         "--metrics", "flops", "--executor", "slurm", "--slurm-cluster", "local"],
        cwd=user_folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not marked("submitit.core._submit", CLI_MARK) and time.monotonic() < deadline:
            time.sleep(0.05)  # the first job's process is running
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        end_what_is_left()
    assert proc.returncode == 130, err[-3000:]
    records = load(tmp_path).records
    assert [r["status"] for r in records] == ["ok"], err[-3000:]  # finished, not killed
    assert "resume with:" in err
