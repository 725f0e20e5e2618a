"""Every record says how it was measured and by what command; a resumed sweep measures again
what was timed with other options; the store refuses records without their required fields; the
report shows each configuration's latest outcome and keeps the commands that produced it."""

import json

from meo_profile.models import Spec

from meo_profile.measure.run import measure
from meo_profile.measure.timing import TimingOptions
from meo_profile.report import document, provenance, views
from meo_profile.results.record import Result, invocation, record_problem
from meo_profile.results.store import load
from meo_profile.sweep.grid import Block, Grid
from meo_profile.sweep.run import SweepOptions, run_sweep

TINY = dict(host="layer", d_model=16, d_ff=32, seq_len=8, batch_size=2, num_experts=4, top_k=2,
            device="cpu")
FAST = TimingOptions(warmup=1, min_run_time=0.02)


def test_a_timed_record_stores_its_timing_options_and_command():
    record = measure(Spec(variant="meo", **TINY), ("latency",), timing=FAST).to_dict()
    assert record["timing_options"] == {"warmup": 1, "min_run_time": 0.02, "autorange": "blocked",
                                        "flush_l2": False, "cpu_allocator": "retain",
                                        "timing_mode": "auto"}
    assert record["command"] == invocation()
    counted = measure(Spec(variant="meo", **TINY), ("flops",)).to_dict()
    assert counted["timing_options"] is None  # nothing was timed


def test_the_command_is_named_as_a_user_types_it():
    assert invocation(["/venv/bin/meo-profile", "sweep", "--out", "my dir"]) == \
        "meo-profile sweep --out 'my dir'"
    assert invocation(["cli.py", "flops"]) == "meo-profile flops"
    assert invocation(["benchmarks/bench_flops.py", "--json", "x"]) == "bench_flops.py --json x"


def test_resume_measures_again_what_was_timed_with_other_options(tmp_path):
    grid = Grid([Block({k: [v] for k, v in TINY.items()} | {"variant": ["moe", "meo"]},
                       ("flops", "latency")),
                 Block({k: [v] for k, v in TINY.items()} | {"variant": ["dense"]}, ("flops",))])
    jobs, _ = grid.expand()
    first = run_sweep(jobs, SweepOptions(tmp_path, timing=FAST))
    same = run_sweep(jobs, SweepOptions(tmp_path, timing=FAST))
    slower = run_sweep(jobs, SweepOptions(tmp_path, timing=TimingOptions(warmup=2, min_run_time=0.03)))
    assert (first.measured, same.measured, same.already_stored) == (3, 0, 3)
    assert (slower.measured, slower.already_stored) == (2, 1)  # the counts-only job is stored
    options = [r["timing_options"] for r in load(tmp_path).records if r["timing_options"]]
    assert sorted(o["min_run_time"] for o in options) == [0.02, 0.02, 0.03, 0.03]


def test_records_without_required_fields_are_unreadable_not_defaulted(tmp_path):
    good = Result(Spec(variant="meo", **TINY), metrics=["flops"]).to_dict()
    lines = [json.dumps(good), json.dumps({"foo": 1}),
             json.dumps({**good, "host": None}), json.dumps({**good, "status": "maybe"})]
    (tmp_path / "results.jsonl").write_bytes(
        ("\n".join(lines) + "\n").encode() + b'{"host": "\xff"}\n')
    loaded = load(tmp_path)
    assert loaded.records == [good]
    assert [s.split(": ", 1)[1] for s in loaded.skipped] == [
        "missing required field(s) status, host, variant, num_experts and 19 more",
        "missing required field(s) host", "status 'maybe' is none of ok, oom, error",
        "not UTF-8 (byte 0xff at offset 10)"]
    assert record_problem({**good, "n_ce": None}) is None  # a knob of another variant: null


def record(status: str, when: str, **fields) -> dict:
    base = Result(Spec(variant="meo", **TINY), metrics=["latency"]).to_dict()
    return {**base, "status": status, "created_utc": when,
            "error": None if status == "ok" else "out of memory", **fields}


def test_a_failure_fixed_later_is_history_not_a_configuration_that_did_not_complete():
    records = [record("oom", "2026-01-01T00:00:00+00:00", command="meo-profile sweep --max-memory 1MiB"),
               record("ok", "2026-01-02T00:00:00+00:00", command="meo-profile sweep"),
               record("error", "2026-01-02T00:00:00+00:00", top_k=1, command="meo-profile sweep")]
    every = views.records_frame(records)
    latest, fixed = views.outcomes(every)
    assert sorted(latest["status"]) == ["error", "ok"] and list(fixed["status"]) == ["oom"]
    assert [r[0] for r in provenance.failures_table(every).rows] == ["error"]
    assert [r[0] for r in provenance.history_table(every).rows] == ["oom"]
    setup = dict(provenance.setup_table(every, command="meo-profile report r").rows)
    assert setup["configurations"].startswith("2: 1 ok, 0 oom, 1 error")
    assert "1 earlier failures fixed since" in setup["configurations"]
    produced = [r[1] for r in provenance.setup_table(every).rows if r[0] == "produced by"]
    assert produced == ["meo-profile sweep --max-memory 1MiB (1 records)",
                        "meo-profile sweep (2 records)"]


def test_the_report_keeps_the_producing_command_beside_the_rendering_one(tmp_path):
    rows = [record("ok", "2026-01-02T00:00:00+00:00", command="meo-profile sweep --preset quick")]
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    text = document.render_report(tmp_path, tmp_path / "out").read_text()
    assert "| produced by | meo-profile sweep --preset quick (1 records) |" in text
    assert f"| rendered by | meo-profile report {tmp_path} --out {tmp_path / 'out'} |" in text
