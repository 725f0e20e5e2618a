"""The sweep's driver apart from any engine: signals, flags, planning for workers elsewhere,
and where records say they ran. (Real Ray and submitit runs: test_executors.py.)"""

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from meo_profile.models import Spec, SpecError
from meo_profile.models.spec import planned_for
from synthetic_results import ENV
from typer.testing import CliRunner

from meo_profile.core.errors import BadInput
from meo_profile.measure.timing import TimingOptions
from meo_profile.report import provenance, views
from meo_profile.results.record import Result, environment
from meo_profile.results.store import Store, load
from meo_profile.sweep.choice import ExecutorChoice, parse_params
from meo_profile.sweep.executors import Failure, Site
from meo_profile.sweep.plan import jobs_for, plan_grid, plan_sweep
from meo_profile.sweep.run import SweepOptions, SweepSummary, failure_record, not_stored, run_sweep
from meo_profile.sweep.stopping import StopNow, Stopping

FAST = TimingOptions(warmup=1, min_run_time=0.02)
H200 = "NVIDIA H200"


def gpu_site() -> Site:
    """What a GPU worker elsewhere reports (this machine has no GPU)."""
    cpu = dict(environment("cpu"))
    return Site({"cpu": cpu, "cuda": {**cpu, "device_name": H200, "worker": "node7:gpu3"}},
                "ray: 8 worker(s) of 1 GPU")


# ------------------------------------------------------------------------------ stopping
def test_first_signal_asks_second_stops_at_once_but_not_mid_write():
    said, before = [], signal.getsignal(signal.SIGINT)
    with Stopping(said.append) as stop:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested() and stop.exit_code == 130 and "Ctrl-C again" in said[0]
        with pytest.raises(StopNow), stop.holding():  # a record being appended finishes first
            os.kill(os.getpid(), signal.SIGINT)
            said.append("line written")
        assert said[-2:] == ["stopping now: the configurations in flight are abandoned", "line written"]
        os.kill(os.getpid(), signal.SIGINT)  # a third changes nothing while unwinding
    assert signal.getsignal(signal.SIGINT) is before  # the caller's handler is back


def test_sigterm_stops_after_the_configuration_in_flight_or_after_its_grace(monkeypatch):
    monkeypatch.setattr("meo_profile.sweep.stopping.TERM_GRACE_S", 0.2)
    said = []
    with Stopping(said.append) as stop, pytest.raises(StopNow):
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested() and stop.exit_code == 143 and said[0].startswith("SIGTERM")
        time.sleep(5)  # a configuration that outlives the grace is abandoned
    assert "after SIGTERM" in said[-1]


# -------------------------------------------------------------------------------- flags
@pytest.mark.parametrize("given, needle", [
    ({"name": "dask"}, "--executor 'dask': unknown; choose from local, ray, slurm"),
    ({"ray_cpu_workers": 0}, "--ray-cpu-workers 0: must be an integer >= 1"),
    ({"slurm_cluster": "pbs"}, "--slurm-cluster 'pbs'"),
    ({"slurm_gpus_per_job": -1}, "--slurm-gpus-per-job -1"),
    ({"slurm_time_min": 0}, "--slurm-time-min 0"),
])
def test_bad_executor_flags_are_bad_input_naming_the_flag(given, needle):
    with pytest.raises(BadInput, match=needle.replace("(", r"\(")):
        ExecutorChoice(**given)


def test_slurm_params_parse_key_value_pairs():
    assert parse_params(["account=proj", "constraint = h100"]) == {"account": "proj", "constraint": "h100"}
    with pytest.raises(BadInput, match="KEY=VALUE"):
        parse_params(["account"])


@pytest.mark.parametrize("executor, extra", [("ray", "meo-profile[ray]"), ("slurm", "meo-profile[slurm]")])
def test_executor_without_its_extra_exits_2_naming_the_extra(executor, extra, monkeypatch, tmp_path):
    import importlib.util

    from cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("ray", "submitit") else real(name, *a))
    result = CliRunner().invoke(app, ["sweep", "--preset", "quick", "--out", str(tmp_path),
                                      "--executor", executor])
    assert result.exit_code == 2 and extra in result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "results.jsonl").exists()


# ------------------------------------------------------------------- remote devices
def test_a_cpu_driver_plans_gpu_configurations_for_gpu_workers():
    grid, _ = plan_grid("quick", None, {}, None)
    with pytest.raises(SpecError, match="no CUDA device is available on this machine"):
        Spec(device="cuda")
    jobs = jobs_for(grid, gpu_site())
    assert {spec.device for spec, _ in jobs} == {"cuda"}  # device auto: the workers' GPU
    with planned_for("cpu"), pytest.raises(SpecError, match="on the workers"):
        Spec(device="cuda")


def test_the_remote_plan_checks_the_grid_before_any_worker_starts(tmp_path):
    plan = plan_sweep(None, None, {"device": ["cuda"], "top_k": [1]}, "flops", tmp_path, True,
                      None, FAST, ExecutorChoice("slurm", slurm_cluster="debug"))
    assert plan.total == 1 and plan.jobs(gpu_site())[0][0].device == "cuda"
    with pytest.raises(SpecError, match="--top-k 0"):
        plan_sweep(None, None, {"top_k": [0]}, None, tmp_path, True, None, FAST,
                   ExecutorChoice("slurm", slurm_cluster="debug"))


def test_resume_is_keyed_by_the_machine_the_workers_report(tmp_path):
    site = gpu_site()
    [(spec, metrics)] = jobs_for(plan_grid(None, None, {"top_k": [1], "variant": ["meo"]}, ("flops",))[0], site)
    stored = Result(spec, metrics=list(metrics), env=site.environment("cuda"))
    Store(tmp_path).append(stored)
    summary = SweepSummary()
    assert not_stored([(spec, metrics)], Store(tmp_path), site, SweepOptions(tmp_path), summary, lambda *a: None) == []
    other = Site({**site.environments, "cuda": {**site.environment("cuda"), "device_name": "NVIDIA A100"}})
    assert not_stored([(spec, metrics)], Store(tmp_path), other, SweepOptions(tmp_path), summary, lambda *a: None) != []


def test_a_dead_workers_row_names_it_in_the_workers_environment():
    site = gpu_site()
    [(spec, metrics)] = jobs_for(plan_grid(None, None, {"top_k": [1], "variant": ["meo"]}, ("flops",))[0], site)
    row = failure_record(spec, metrics, Failure("node7:gpu3 pid 4242", "WorkerDied: killed"), site)
    assert (row["status"], row["worker"], row["device_name"]) == ("error", "node7:gpu3 pid 4242", H200)


# ---------------------------------------------------------------------- where it ran
def test_local_records_name_this_machine_as_their_worker(tmp_path):
    import socket

    jobs = jobs_for(plan_grid(None, None, {"top_k": [1], "variant": ["meo"], "d_model": [16],
                                           "d_ff": [32]}, ("flops",))[0], gpu_site())
    jobs = [(s.replace(device="cpu"), m) for s, m in jobs]
    run_sweep(jobs, SweepOptions(tmp_path, timing=FAST))
    [record] = load(tmp_path).records
    assert record["worker"] == socket.gethostname() and record["device"] == "cpu"
    assert json.loads((tmp_path / "environment.json").read_text())["cpu"]["worker"] == socket.gethostname()


def test_setup_table_has_a_column_per_machine_when_records_come_from_several():
    base = {"status": "ok", "device": "cpu", "dtype": "float32", **ENV}
    one = views.records_frame([{**base, "worker": "a"}, {**base, "worker": "b"}])
    two = views.records_frame([{**base, "worker": "a"},
                               {**base, "worker": "node7:gpu3", "device": "cuda", "device_name": H200},
                               {**base, "status": "error", "device_name": H200, "worker": "node7:gpu4",
                                "top_k": 2}])  # another configuration than the ok one
    single = provenance.setup_table(one)
    assert single.columns == ["field", "value"]
    assert dict(map(tuple, single.rows))["workers"] == "a, b"
    split = provenance.setup_table(two, command="meo-profile sweep --executor ray")
    assert split.columns == ["field", H200, ENV["device_name"]]
    rows = {r[0]: r[1:] for r in split.rows}
    assert rows["workers"] == ["node7:gpu3, node7:gpu4", "a"]
    assert [r.split(" (")[0] for r in rows["configurations"]] == ["2: 1 ok, 0 oom, 1 error",
                                                                  "1: 1 ok, 0 oom, 0 error"]
    assert "machine" not in rows and rows["rendered by"][0] == "meo-profile sweep --executor ray"


# ------------------------------------------------------------- signals, real processes
TINY = ["--host", "layer", "--d-model", "16", "--d-ff", "32", "--seq-len", "8", "--batch-size", "2",
        "--device", "cpu", "--warmup", "1", "--variant", "moe,meo", "--experts", "2,4,8",
        "--top-k", "1,2", "--metrics", "flops,latency"]


def start_sweep(out: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", "sweep", "--out", str(out), "--quiet",
                             "--no-report", *TINY, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, out: Path, records: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if len(load(out).records) >= records:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {records} records in time: {proc.poll()}")


def test_sigterm_writes_the_csv_prints_the_resume_hint_and_exits_143(tmp_path):
    proc = start_sweep(tmp_path, "--min-run-time", "0.3")
    wait_for(proc, tmp_path, 1)
    proc.terminate()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "SIGTERM: stopping after the configurations in flight" in err
    assert "resume with: meo-profile sweep" in err.replace("\n", " ")
    stored = load(tmp_path)
    assert stored.skipped == [] and 1 <= len(stored.records) < 12
    assert len((tmp_path / "results.csv").read_text().splitlines()) == len(stored.records) + 1


def stderr_lines(proc: subprocess.Popen) -> queue.Queue:
    """The process's stderr, line by line, read by a thread (a read never blocks the test)."""
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stderr], daemon=True).start()
    return lines


def read_until(lines: queue.Queue, needle: str, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (left := deadline - time.monotonic()) > 0:
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            break
        if needle in line:
            return line
    raise AssertionError(f"{needle!r} not printed within {timeout_s} s")


def test_double_ctrl_c_says_so_at_once_stops_at_once_and_keeps_what_is_stored(tmp_path, cli):
    first = cli("sweep", "--out", str(tmp_path), "--quiet", "--no-report", *TINY, "--variant",
                "moe", "--experts", "2", "--top-k", "1", "--min-run-time", "0.02")  # in this process
    assert first.returncode == 0, first.stderr
    kept = (tmp_path / "results.jsonl").read_text()
    proc = start_sweep(tmp_path, "--min-run-time", "30")  # a configuration times for 30 s
    lines = stderr_lines(proc)
    read_until(lines, "workers: this process", timeout_s=120)
    time.sleep(2)  # a configuration is in flight now
    proc.send_signal(signal.SIGINT)
    asked = time.monotonic()
    read_until(lines, "stopping after the configurations in flight", timeout_s=10)
    proc.send_signal(signal.SIGINT)
    read_until(lines, "stopping now", timeout_s=10)
    read_until(lines, "resume with: meo-profile sweep", timeout_s=30)
    assert proc.wait(timeout=30) == 130 and time.monotonic() - asked < 30  # not the 30 s timing
    assert (tmp_path / "results.jsonl").read_text().startswith(kept)
    stored = load(tmp_path)
    assert stored.skipped == [] and len(stored.records) >= 1
    assert (tmp_path / "results.csv").exists()
