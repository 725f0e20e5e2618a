"""Stored records are validated field by field: each kind of impossible value (NaN, infinite,
negative, the wrong type, a condition's text the tool never writes) is named with its line and
field, kept out of every table and figure, and makes `compare` and `check` exit 2.

Synthetic records from Result and Spec: nothing is measured."""

import json
import math

import pytest
from synthetic_results import layer_records
from typer.testing import CliRunner

from cli import app
from meo_profile.report import document as report
from meo_profile.results.store import load
from meo_profile.results.validate import invalid_field

# (field, stored value, what the message says): one of each kind
IMPOSSIBLE = [
    ("latency_ms_median", math.nan, "NaN is not a finite number"),
    ("latency_ms_median", -2.36, "-2.36 is out of range: expected a finite number > 0"),
    ("macs", math.inf, "Infinity is not an integer"),
    ("macs", 1.5e9, "expected an integer >= 0, not float"),
    ("params_total", True, "expected an integer >= 0, not bool"),
    ("peak_mem_bytes", -1, "-1 is out of range"),
    ("latency_samples_ms", [1.0, math.nan], "[1]: NaN is not a finite number"),
    ("roofline_by_phase", {"merge": -0.1}, "['merge']: -0.1 is out of range"),
    ("num_experts", 0, "0 is out of range: expected an integer >= 1"),
    ("routing", "zipf:1.20", "is not normalised (the tool writes 'zipf:1.2')"),
    ("workload", "generate:0", "generate:N takes N in 1.."),
    ("scope", "everything", "'everything' is none of model, blocks, moe"),
]


@pytest.fixture(scope="module")
def records():
    """dense, vanilla MoE and MEO at E=4, k 1 and 2: latency, memory, roofline (toy values)."""
    return layer_records(experts=(4,), ks=(1, 2))


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.mark.parametrize("name, value, says", IMPOSSIBLE, ids=[f"{n}={v!r}" for n, v, _ in IMPOSSIBLE])
def test_each_kind_of_impossible_value_is_named_with_its_field(records, name, value, says):
    assert invalid_field(records[1]) is None
    problem = invalid_field({**records[1], name: value})
    assert problem is not None and problem.startswith(f"{name}: ") and says in problem


def test_loading_keeps_an_invalid_record_out_and_names_its_line(tmp_path, records):
    bad = {**records[2], "latency_ms_median": math.nan}
    loaded = load(write(tmp_path / "results.jsonl", [records[0], records[1], bad, records[3]]))
    assert [r["run_id"] for r in loaded.records] == [records[i]["run_id"] for i in (0, 1, 3)]
    assert loaded.skipped == []
    assert loaded.invalid == ["results.jsonl:3: latency_ms_median: NaN is not a finite number"]
    # a record from before the conditions existed reads as measured under their defaults
    old = {k: v for k, v in records[0].items() if k not in ("scope", "workload", "routing")}
    assert load(write(tmp_path / "old.jsonl", [old])).records[0]["routing"] == "router"


def test_compare_exits_2_naming_the_line_and_field_of_a_nan_latency(tmp_path, records):
    baseline = write(tmp_path / "baseline.jsonl", records)
    current = write(tmp_path / "current.jsonl",
                    [*records[:2], {**records[2], "latency_ms_median": math.nan}, *records[3:]])
    result = CliRunner().invoke(app, ["compare", str(baseline), str(current)])
    assert result.exit_code == 2, result.output
    assert result.stderr.strip().splitlines() == [
        f"error: CURRENT {str(current)!r}: invalid record at current.jsonl:3: latency_ms_median: "
        "NaN is not a finite number"]


def test_compare_refuses_an_infinite_count_on_either_side_without_a_traceback(tmp_path, records):
    baseline = write(tmp_path / "baseline.jsonl", [{**r, "macs": math.inf} for r in records])
    current = write(tmp_path / "current.jsonl", records)
    result = CliRunner().invoke(app, ["compare", str(baseline), str(current)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"BASELINE {str(baseline)!r}: invalid record at baseline.jsonl:1: macs: Infinity" in result.stderr
    assert f"(and {len(records) - 1} more invalid records)" in result.stderr


def test_check_exits_2_on_a_negative_latency(tmp_path, records):
    results = write(tmp_path / "results.jsonl", [*records[:3], {**records[3], "latency_ms_p20": -1.0}])
    result = CliRunner().invoke(app, ["check", str(results)])
    assert result.exit_code == 2
    assert "invalid record at results.jsonl:4: latency_ms_p20: -1.0 is out of range" in result.stderr


def test_report_leaves_an_impossible_record_out_of_every_table_and_says_which(tmp_path, records):
    broken = {**records[3], "latency_ms_median": -2.36}  # once a "-2.36x" speedup
    mixed = write(tmp_path / "results.jsonl", [*records[:3], broken, *records[4:]])
    _, kept, left_out = report.load_results(mixed)
    assert left_out == ["invalid record results.jsonl:4: latency_ms_median: -2.36 is out of "
                        "range: expected a finite number > 0"]
    clean = [r for r in records if r["run_id"] != broken["run_id"]]
    tables = lambda recs, n: [(t.title, t.rows) for t in report.summary_tables(recs, n)[1:]]  # noqa: E731
    assert tables(kept, 1) == tables(clean, 0)  # the setup table alone counts what was left out
    assert "-2.36" not in json.dumps(tables(kept, 1))


def test_report_command_warns_once_per_invalid_record_and_nothing_else(tmp_path, records):
    results = tmp_path / "run"
    results.mkdir()
    at_k1 = [r for r in records if r["top_k"] == 1]  # one k: few figures to draw
    write(results / "results.jsonl", [*at_k1, {**at_k1[-1], "tokens_per_s": math.nan}])
    result = CliRunner().invoke(app, ["report", str(results), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning" in line.lower()]
    assert warnings == [f"warning: left out invalid record results.jsonl:{len(at_k1) + 1}: "
                        "tokens_per_s: NaN is not a finite number"]
    assert "| lines left out (unreadable or invalid) | 1 |" in (tmp_path / "out/report.md").read_text()


# one field of each kind of impossible value, as a results file can hold it
KINDS = {"NaN": ("latency_ms_median", math.nan), "infinite": ("macs", math.inf),
         "negative": ("peak_mem_bytes", -4096), "of the wrong type": ("params_total", "many")}


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_through_compare_check_and_report(tmp_path, records, cli, kind):
    name, value = KINDS[kind]
    bad = write(tmp_path / "results.jsonl", [*records[:3], {**records[3], name: value}])
    where = f"invalid record at results.jsonl:4: {name}: "
    compared = cli("compare", str(write(tmp_path / "base.jsonl", records)), str(bad))
    checked = cli("check", str(bad))
    assert (compared.returncode, checked.returncode) == (2, 2), (compared.stderr, checked.stderr)
    assert where in compared.stderr and where in checked.stderr
    _, kept, left_out = report.load_results(bad)
    assert len(kept) == 3 and left_out[0].startswith(f"invalid record results.jsonl:4: {name}: ")
