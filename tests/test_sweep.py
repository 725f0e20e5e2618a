"""The sweep never loses data: resume, kills, truncated lines, failures, locks, bad configs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from meo_profile.models import SpecError

from meo_profile.measure.timing import TimingOptions
from meo_profile.results.store import Store, load
from meo_profile.sweep.grid import Block, Grid, GridError, load_config, parse_axis_flag
from meo_profile.sweep.plan import plan_grid
from meo_profile.sweep.presets import PRESETS
from meo_profile.sweep.run import SweepLock, SweepOptions, run_sweep

TINY_AXES = ["--host", "layer", "--d-model", "16", "--d-ff", "32", "--seq-len", "8",
             "--batch-size", "2", "--device", "cpu", "--min-run-time", "0.02", "--warmup", "1"]
FAST = TimingOptions(warmup=1, min_run_time=0.02)


def sweep_args(out, *args) -> list[str]:
    """`sweep` into `out`, quiet and without a report: for the `cli` fixture (in this process)."""
    return ["sweep", "--out", str(out), "--quiet", "--no-report", *args]


def keys(records):
    return sorted((r["variant"], r["num_experts"], r["top_k"]) for r in records)


# ------------------------------------------------------------------------------- grids
def test_grid_expansion_crosses_axes_drops_impossible_and_dedupes_dense():
    block = Block({"host": ["layer"], "variant": ["dense", "moe", "meo"], "num_experts": [2, 4],
                   "top_k": [1, 4], "d_model": [16], "d_ff": [32]})
    specs, impossible = block.specs()
    assert impossible == 2  # moe and meo at E=2, k=4
    assert sum(s.variant == "dense" for s in specs) == 1  # dense ignores E and k
    assert len(specs) == 1 + 2 * 3


def test_bad_values_in_a_grid_are_errors_not_skips():
    with pytest.raises(SpecError, match="--top-k 0"):
        Block({"top_k": [0]}).specs()


def test_axis_flags_parse_typed_lists_and_name_bad_items():
    assert parse_axis_flag("top_k", "1, 2,4") == [1, 2, 4]
    with pytest.raises(GridError, match="--top-k"):
        parse_axis_flag("top_k", "1,two")


def test_axis_flags_override_a_preset_in_every_block():
    grid, name = plan_grid("quick", None, {"top_k": [1]}, None)
    assert name == "quick"
    assert all(b.axes["top_k"] == [1] for b in grid.blocks)


def test_every_cpu_preset_expands():
    for name in ("default", "paper", "quick"):
        jobs, _ = PRESETS[name].grid.expand()
        assert jobs, name


@pytest.mark.parametrize("text, needle", [
    ("grid:\n  expertz: [4]\n", "'expertz'"),
    ("grid:\n  top_k: [0]\n", "--top-k 0"),
    ("metrics: [speed]\ngrid:\n  top_k: [1]\n", "'speed'"),
    ("gird:\n  top_k: [1]\n", "'gird'"),
    ("grid: [unclosed\n", "not valid YAML"),
    ("grid:\n  router_scale: fast\n", "router_scale 'fast': expected a number"),
    ("grid:\n  d_model: 4.5\n", "d_model 4.5: expected an integer"),
])
def test_config_file_errors_exit_2_naming_the_key(tmp_path, text, needle, cli):
    config = tmp_path / "grid.yaml"
    config.write_text(text)
    proc = cli(*sweep_args(tmp_path / "out", "--config", str(config)))
    assert proc.returncode == 2, proc.stderr
    assert needle in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_config_file_accepts_flag_spellings(tmp_path):
    config = tmp_path / "grid.yaml"
    config.write_text("metrics: [flops]\ngrid:\n  experts: [4]\n  top-k: [1, 2]\n  variant: meo\n")
    jobs, _ = load_config(config).expand()
    assert sorted(s.top_k for s, _ in jobs) == [1, 2] and all(m == ("flops",) for _, m in jobs)


# ------------------------------------------------------------------------------- runner
def small_jobs(metrics=("flops", "latency")):
    grid = Grid([Block({"host": ["layer"], "variant": ["moe", "meo"], "num_experts": [2, 4],
                        "top_k": [1, 2], "d_model": [16], "d_ff": [32], "seq_len": [8],
                        "batch_size": [2]}, metrics)])
    return grid.expand()[0]


def test_resume_adds_no_duplicate_and_skips_nothing(tmp_path):
    jobs = small_jobs(("flops",))
    first = run_sweep(jobs[:3], SweepOptions(tmp_path, timing=FAST))
    second = run_sweep(jobs, SweepOptions(tmp_path, timing=FAST))
    assert (first.measured, second.measured, second.already_stored) == (3, len(jobs) - 3, 3)
    records = load(tmp_path).records
    assert len(records) == len(jobs) == len(set(map(json.dumps, (keys([r]) for r in records))))


def test_a_failing_configuration_is_recorded_and_the_rest_completes(tmp_path):
    good = small_jobs(("flops", "latency"))[:2]
    broken = [(good[0][0].replace(device="meta"), ("latency",))]  # meta tensors cannot be timed
    too_big = [(good[1][0].replace(num_experts=64, d_model=256, d_ff=1024), ("latency",))]
    summary = run_sweep(broken + too_big + good,
                        SweepOptions(tmp_path, max_memory_bytes=1_000_000, timing=FAST))
    by_status = {}
    for r in load(tmp_path).records:
        by_status.setdefault(r["status"], []).append(r)
    assert summary.statuses == {"error": 1, "oom": 1, "ok": 2}
    assert "meta" in by_status["error"][0]["error"]
    assert "(weights 128.6 MiB" in by_status["oom"][0]["error"]
    assert "the limit is 976.6 KiB (--max-memory)" in by_status["oom"][0]["error"]  # 1e6 B
    assert all(r["latency_ms_median"] > 0 for r in by_status["ok"])
    # an error fails the sweep; a recorded limit (oom) is a result, unless --strict
    assert summary.failure_line() == "1 of 4 configurations failed; their errors are in results.jsonl"
    assert summary.failure_line(strict=True, report=tmp_path / "report.md") == (
        f"2 of 4 configurations failed (1 error, 1 oom); see the report's failures table "
        f"({tmp_path / 'report.md'})")


def test_a_sweep_whose_workers_raised_exits_1_saying_how_many(tmp_path, monkeypatch):
    """A worker's work that raises (the issue's: the project did not import there) is an error
    row carrying the cause, and the sweep exits 1 naming the count; the others are measured."""
    from typer.testing import CliRunner

    from cli import app
    from meo_profile.sweep.run import MeasureJob

    real = MeasureJob.__call__

    def work(self, job):
        if job[0].num_experts == 4:
            raise ImportError("cannot import name 'Spec' from 'models'")
        return real(self, job)

    monkeypatch.setattr(MeasureJob, "__call__", work)
    args = ["sweep", "--out", str(tmp_path), "--quiet", "--no-report", *TINY_AXES,
            "--variant", "moe,meo", "--experts", "2,4,8", "--top-k", "1", "--metrics", "flops"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines()[-1] == (
        "error: 2 of 6 configurations failed; their errors are in results.jsonl")
    records = load(tmp_path).records
    assert sorted(r["error"] for r in records if r["status"] == "error") == [
        "ImportError: cannot import name 'Spec' from 'models'"] * 2
    assert sum(r["status"] == "ok" for r in records) == 4


def test_a_sweep_of_recorded_limits_exits_0_and_1_under_strict(tmp_path):
    from typer.testing import CliRunner

    from cli import app

    args = ["sweep", "--out", str(tmp_path), "--quiet", "--no-report", *TINY_AXES,
            "--variant", "meo", "--experts", "2", "--top-k", "1", "--metrics", "memory",
            "--max-memory", "1KiB"]  # over the memory budget: refused before building, as oom
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert [r["status"] for r in load(tmp_path).records] == ["oom"]
    strict = CliRunner().invoke(app, [*args, "--strict"])  # the oom row is tried again
    assert strict.exit_code == 1 and "1 of 1 configurations failed (0 error, 1 oom)" in strict.stderr


def test_truncated_last_line_is_reported_and_skipped(tmp_path):
    jobs = small_jobs(("flops",))
    run_sweep(jobs[:2], SweepOptions(tmp_path, timing=FAST))
    with open(tmp_path / "results.jsonl", "a") as f:
        f.write('{"schema_version": 1, "host": "lay')  # what a kill mid-write leaves
    loaded = load(tmp_path)
    assert len(loaded.records) == 2 and len(loaded.skipped) == 1 and ":3:" in loaded.skipped[0]
    run_sweep(jobs, SweepOptions(tmp_path, timing=FAST))
    loaded = load(tmp_path)
    assert len(loaded.records) == len(jobs) and len(loaded.skipped) == 1


def test_a_second_live_sweep_into_the_same_directory_is_refused(tmp_path, cli):
    with SweepLock(tmp_path):  # flock: another open file description conflicts, in-process too
        proc = cli(*sweep_args(tmp_path, *TINY_AXES, "--variant", "meo", "--metrics", "flops"))
    assert proc.returncode == 2 and "another sweep" in proc.stderr
    assert not (tmp_path / "results.jsonl").exists()


def _wait_for_records(path: Path, n: int, proc, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(load(path).records) >= n:
            return
        time.sleep(0.05)
    raise AssertionError(f"sweep did not store {n} records in time")


SLOW_GRID = [*TINY_AXES, "--variant", "moe,meo", "--experts", "2,4,8", "--top-k", "1,2",
             "--metrics", "flops,latency"]


def test_sigkill_mid_sweep_then_resume_gives_the_complete_set(tmp_path, cli):
    proc = subprocess.Popen([sys.executable, "-m", "cli", "sweep", "--out", str(tmp_path),
                             "--quiet", "--no-report", *SLOW_GRID],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_for_records(tmp_path / "results.jsonl", 2, proc)
    proc.kill()
    proc.wait()
    partial = len(load(tmp_path).records)
    assert 2 <= partial < 12
    finish = cli(*sweep_args(tmp_path, *SLOW_GRID))
    assert finish.returncode == 0, finish.stderr
    records = load(tmp_path).records
    assert keys(records) == sorted(set(keys(records))) and len(records) == 12


def test_ctrl_c_writes_the_record_in_flight_and_exits_130(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "cli", "sweep", "--out", str(tmp_path),
                             "--quiet", "--no-report", *SLOW_GRID],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for_records(tmp_path / "results.jsonl", 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "resume" in err
    stored = load(tmp_path)
    assert stored.skipped == [] and 1 <= len(stored.records) < 12


def test_csv_and_environment_written_beside_the_jsonl(tmp_path):
    run_sweep(small_jobs(("flops",))[:2], SweepOptions(tmp_path, timing=FAST))
    csv_lines = (tmp_path / "results.csv").read_text().strip().splitlines()
    assert len(csv_lines) == 3 and csv_lines[0].startswith("schema_version,run_id")
    env = json.loads((tmp_path / "environment.json").read_text())
    assert "torch_version" in env["cpu"]


def test_store_starts_a_fresh_line_after_a_torn_write(tmp_path):
    (tmp_path / "results.jsonl").write_text('{"a": 1}\n{"torn')
    Store(tmp_path)
    assert (tmp_path / "results.jsonl").read_text().endswith("\n")
    assert os.path.getsize(tmp_path / "results.jsonl") > 0


def test_fresh_sets_old_results_aside_and_never_under_a_live_sweep(tmp_path, cli):
    jobs = small_jobs(("flops",))[:2]
    run_sweep(jobs, SweepOptions(tmp_path, timing=FAST))
    with SweepLock(tmp_path):  # another sweep is writing: --fresh must not touch its file
        proc = cli(*sweep_args(tmp_path, *TINY_AXES, "--variant", "meo", "--metrics", "flops",
                               "--fresh"))
    assert proc.returncode == 2 and len(load(tmp_path).records) == 2
    summary = run_sweep(jobs, SweepOptions(tmp_path, resume=False, timing=FAST))
    assert summary.measured == 2 and summary.set_aside is not None
    assert len(load(summary.set_aside).records) == 2 and len(load(tmp_path).records) == 2


def test_resume_tries_failed_rows_again_and_keeps_the_failure(tmp_path):
    jobs = small_jobs(("flops", "latency"))[:2]
    first = run_sweep(jobs, SweepOptions(tmp_path, max_memory_bytes=1, timing=FAST))
    assert first.statuses == {"oom": 2}
    again = run_sweep(jobs, SweepOptions(tmp_path, timing=FAST))
    assert again.statuses == {"ok": 2} and again.already_stored == 0
    statuses = sorted(r["status"] for r in load(tmp_path).records)
    assert statuses == ["ok", "ok", "oom", "oom"]
    assert run_sweep(jobs, SweepOptions(tmp_path, timing=FAST)).already_stored == 2


def test_default_preset_holds_every_configuration_the_builtin_claims_read():
    from meo_profile.check.claims_file import load_claims
    from meo_profile.check.run import pending_reasons, plan

    claims = load_claims()
    needed = plan(claims, pending_reasons(claims))
    jobs, _ = PRESETS["default"].grid.expand()
    assert set(needed.items()) <= set(jobs) and len(jobs) == len(set(jobs))


def test_a_dry_run_lists_the_grid_and_its_estimates_and_measures_nothing(tmp_path, cli):
    out = tmp_path / "never"
    proc = cli(*sweep_args(out, *TINY_AXES, "--variant", "moe,meo", "--top-k", "1,2", "--dry-run",
                           "--max-memory", "1KiB"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("layer moe E=") == 2 and proc.stdout.count("layer meo E=") == 2
    assert "(over: oom)" in proc.stdout
    assert "4 configurations" in proc.stderr and "4 to measure" in proc.stderr
    assert "at least 0 s of timed calls" in proc.stderr and "4 over it" in proc.stderr
    assert not out.exists()


def test_a_dry_run_beyond_a_day_warns_and_lists_its_first_rows(tmp_path, capsys):
    """240 configurations timed an hour each: more than a day, said before anything runs; the
    table lists the first 200 and says so, the lines below count all 240."""
    from cli import app

    batches = ",".join(str(b) for b in range(1, 41))
    args = ["sweep", "--dry-run", "--out", str(tmp_path), "--host", "layer", "--d-model", "16",
            "--d-ff", "32", "--seq-len", "8", "--device", "cpu", "--variant", "moe,meo",
            "--experts", "2,4,8", "--top-k", "1", "--batch-size", batches, "--metrics", "latency",
            "--min-run-time", "3600"]
    with pytest.raises(SystemExit) as done:
        app(args, prog_name="meo-profile")
    out, err = capsys.readouterr()
    assert done.value.code == 0, err
    assert "the first 200 of 240 configurations" in out.replace("\n", " ")
    assert "240 configurations (0 grid combinations left out" in err
    assert "warning: 240 timed configurations take at least 240.0 h" in err.replace("\n", " ")
    assert not (tmp_path / "results.jsonl").exists()
