"""`meo-profile compare`: tolerances on latency and memory, exact counts, devices, formats.
Synthetic records built from Result and Spec: nothing is measured."""

import json
from pathlib import Path

import pytest
from meo_profile.models import Spec
from typer.testing import CliRunner

from cli import app
from meo_profile.check.compare import (
    RULES,
    CompareError,
    Threshold,
    compare_records,
    judge,
    thresholds,
)
from meo_profile.results.record import Result

CPU = "Test CPU (2 cores)"


def rec(variant: str = "meo", *, latency_ms: float = 10.0, macs: int = 1000,
        mem_bytes: int = 2**20, device: str = CPU, top_k: int = 2, **fields) -> dict:
    spec = Spec(host="layer", variant=variant, num_experts=4, top_k=top_k, d_model=16, d_ff=32,
                seq_len=8, batch_size=1)
    measured = dict(macs=macs, flops=2 * macs, params_total=5000, params_active=3000,
                    latency_ms_median=latency_ms, latency_ms_p20=latency_ms * 0.98,
                    latency_ms_p80=latency_ms * 1.02, peak_mem_bytes=mem_bytes)
    r = Result(spec, metrics=["flops", "latency", "memory"]).update(**{**measured, **fields}).to_dict()
    r["device_name"] = device
    return r


def write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def compare_cli(tmp_path, baseline, current, *args):
    b = write(tmp_path / "baseline.jsonl", baseline)
    c = write(tmp_path / "current.jsonl", current)
    return CliRunner().invoke(app, ["compare", str(b), str(c), *args])


# -------------------------------------------------------------------------------- latency
def test_a_20_percent_latency_regression_fails_at_10_percent(tmp_path):
    result = compare_cli(tmp_path, [rec(latency_ms=10.0)], [rec(latency_ms=12.0)],
                         "--tolerance", "latency=10%", "--json")
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    (row,) = [r for r in payload["rows"] if r["field"] == "latency_ms_median"]
    assert row["verdict"] == "regression" and row["change"] == pytest.approx(0.20)
    assert payload["regressions"] == 1 and not payload["ok"]


def test_a_5_percent_latency_change_passes_at_10_percent(tmp_path):
    result = compare_cli(tmp_path, [rec(latency_ms=10.0)], [rec(latency_ms=10.5)],
                         "--tolerance", "latency=10%")
    assert result.exit_code == 0, result.stdout + result.stderr


def test_faster_is_an_improvement_not_a_regression(tmp_path):
    result = compare_cli(tmp_path, [rec(latency_ms=10.0)], [rec(latency_ms=7.0)], "--json")
    assert result.exit_code == 0
    assert {r["verdict"] for r in json.loads(result.stdout)["rows"]
            if r["field"] == "latency_ms_median"} == {"improved"}


def test_memory_default_tolerance_is_5_percent(tmp_path):
    assert compare_cli(tmp_path, [rec()], [rec(mem_bytes=int(2**20 * 1.04))]).exit_code == 0
    assert compare_cli(tmp_path, [rec()], [rec(mem_bytes=int(2**20 * 1.06))]).exit_code == 1


def test_overlapping_spreads_are_noted(tmp_path):
    result = compare_cli(tmp_path, [rec(latency_ms=10.0)], [rec(latency_ms=10.3)],
                         "--tolerance", "latency=1%", "--json")
    (row,) = [r for r in json.loads(result.stdout)["rows"] if r["field"] == "latency_ms_median"]
    assert row["verdict"] == "regression" and "overlap" in row["note"]


# --------------------------------------------------------------------------------- counts
def test_counts_must_be_equal_unless_a_tolerance_is_given(tmp_path):
    assert compare_cli(tmp_path, [rec(macs=1000)], [rec(macs=1001)]).exit_code == 1
    assert compare_cli(tmp_path, [rec(macs=1000)], [rec(macs=999)]).exit_code == 1  # either way
    assert compare_cli(tmp_path, [rec(macs=1000)], [rec(macs=1001)],
                       "--tolerance", "flops=1%").exit_code == 0  # flops: an alias of macs
    assert compare_cli(tmp_path, [rec()], [rec(params_active=3001)]).exit_code == 1


# -------------------------------------------------------------------------------- devices
def test_other_device_gives_no_latency_verdict_but_still_judges_counts(tmp_path):
    baseline, current = [rec(latency_ms=10.0)], [rec(latency_ms=30.0, device="Other CPU")]
    result = compare_cli(tmp_path, baseline, current, "--json")
    assert result.exit_code == 0
    payload = json.loads(result.stdout)
    assert {r["verdict"] for r in payload["rows"] if r["field"] == "latency_ms_median"} == {"no verdict"}
    assert any("Other CPU" in w for w in payload["warnings"])
    current[0]["macs"] += 1
    assert compare_cli(tmp_path, baseline, current).exit_code == 1


def test_the_same_device_is_preferred_when_both_are_stored(tmp_path):
    baseline = [rec(latency_ms=10.0, device="Other CPU"), rec(latency_ms=10.0)]
    assert compare_cli(tmp_path, baseline, [rec(latency_ms=10.2)]).exit_code == 0
    assert compare_cli(tmp_path, baseline, [rec(latency_ms=13.0)]).exit_code == 1


# ----------------------------------------------------------------------- matching, status
def test_configurations_match_by_spec_and_the_last_record_wins(tmp_path):
    baseline = [rec(top_k=1), rec(top_k=2, latency_ms=50.0), rec(top_k=2)]  # a rerun of k=2
    current = [rec(top_k=2), rec(top_k=3)]
    result = compare_cli(tmp_path, baseline, current, "--json", "--allow-missing")
    assert result.exit_code == 0  # k=2 matched its last baseline record (10 ms, not 50)
    payload = json.loads(result.stdout)
    assert payload["missing_in_current"] == ["layer meo E=4 k=1 B=1 L=8"]
    assert payload["new_in_current"] == ["layer meo E=4 k=3 B=1 L=8"]


def test_a_configuration_that_now_fails_is_a_regression(tmp_path):
    broken = {**rec(), "status": "error", "error": "RuntimeError: boom", "macs": None,
              "latency_ms_median": None}
    result = compare_cli(tmp_path, [rec()], [broken], "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["rows"][0]["verdict"] == "failed"


def test_nothing_in_common_exits_2(tmp_path):
    result = compare_cli(tmp_path, [rec(top_k=1)], [rec(top_k=2)])
    assert result.exit_code == 2 and "nothing to compare" in result.stderr


def test_a_missing_results_file_exits_2(tmp_path):
    result = CliRunner().invoke(app, ["compare", str(tmp_path / "nope"), str(tmp_path)])
    assert result.exit_code == 2 and "BASELINE" in result.stderr


# ----------------------------------------------------------------------------- thresholds
def test_thresholds_parse_from_strings():
    assert Threshold.parse("latency=10%") == Threshold("latency", pytest.approx(0.10))
    assert Threshold.parse("memory:5%") == Threshold("memory", pytest.approx(0.05))
    assert Threshold.parse("flops=0") == Threshold("macs", 0.0)
    assert str(Threshold.parse("latency=12.5%")) == "latency=12.5%"
    limits = thresholds(["latency=20%"])
    assert limits["latency"].fraction == pytest.approx(0.2) and limits["macs"].fraction == 0.0
    for bad in ("speed=10%", "latency", "latency=fast", "latency=-5%"):
        with pytest.raises(CompareError, match="--tolerance"):
            Threshold.parse(bad)


def test_a_bad_tolerance_exits_2_naming_it(tmp_path):
    result = compare_cli(tmp_path, [rec()], [rec()], "--tolerance", "speed=10%")
    assert result.exit_code == 2 and "speed=10%" in result.stderr


def test_judge_is_one_sided_for_costs_and_two_sided_for_counts():
    ten = Threshold("latency", 0.10)
    assert judge(RULES["latency"], ten, 10.0, 11.0) == "ok"  # exactly at the tolerance
    assert judge(RULES["latency"], ten, 10.0, 11.01) == "regression"
    assert judge(RULES["latency"], ten, 10.0, 8.0) == "improved"
    assert judge(RULES["macs"], Threshold("macs", 0.0), 10, 9) == "changed"


# -------------------------------------------------------------------------------- formats
def test_markdown_is_a_pull_request_comment(tmp_path):
    result = compare_cli(tmp_path, [rec(latency_ms=10.0), rec(top_k=1)],
                         [rec(latency_ms=12.0), rec(top_k=1)], "--format", "markdown")
    assert result.exit_code == 1
    text = result.stdout
    assert text.startswith("### meo-profile compare: FAIL, 1 regression in ")
    assert "| layer meo E=4 k=2 B=1 L=8 | `latency_ms_median` | 10 ms | 12 ms | +20.0% | **regression** |" in text
    assert "<details>" in text and text.count("| configuration |") == 2


def test_table_format_prints_the_regression(tmp_path):
    result = compare_cli(tmp_path, [rec(latency_ms=10.0)], [rec(latency_ms=12.0)])
    assert result.exit_code == 1 and "regression" in result.stdout


def test_compare_records_needs_no_files():
    comparison = compare_records([rec()], [rec(macs=2000)], thresholds())
    assert [r.field for r in comparison.regressions] == ["macs"]


def test_configurations_missing_from_current_fail_unless_allowed(tmp_path):
    baseline = [rec("meo"), rec("moe")]
    result = compare_cli(tmp_path, baseline, [rec("meo")], "--json")
    payload = json.loads(result.stdout)
    assert result.exit_code == 1 and not payload["ok"] and payload["regressions"] == 0
    assert len(payload["missing_in_current"]) == 1 and "moe" in payload["missing_in_current"][0]
    allowed = compare_cli(tmp_path, baseline, [rec("meo")], "--allow-missing")
    assert allowed.exit_code == 0 and "only in baseline" in allowed.stdout


def test_format_json_is_kept_as_a_deprecated_alias_of_json(tmp_path):
    new = compare_cli(tmp_path, [rec(latency_ms=10.0)], [rec(latency_ms=10.5)], "--json")
    old = compare_cli(tmp_path, [rec(latency_ms=10.0)], [rec(latency_ms=10.5)], "--format", "json")
    assert json.loads(old.stdout) == json.loads(new.stdout)
    assert "--format json is deprecated; use --json" in old.stderr and new.stderr == ""
