"""The report on honest GPU time: the bound ratio read as the speedup both variants would have at
their bounds (never a cap on the measured one), measurements below their bound distrusted and
never drawn, where a CUDA step's time goes, launch-bound findings, and the load guard's warnings
in the setup table. Hand-written rows; the H200 numbers are those of the project's GPU notes."""

import json
import re

import pytest

from meo_profile.report import document as report
from meo_profile.report import figures, tables, views
from meo_profile.report.findings import findings, launch_bound, speedup_shortfall


def row(**fields):
    base = {"status": "ok", "host": "layer", "variant": "moe", "num_experts": 16, "top_k": 4,
            "seq_len": 128, "batch_size": 8, "dtype": "bfloat16", "device": "cpu",
            "impl": "grouped", "expert_unit": "linear", "mode": "inference", "seed": 0,
            "d_model": 768, "d_ff": 3072, "layers": 1, "device_name": "cpu0",
            "n_ce": None, "ce_init": None, "threshold": None, "granularity": None,
            "max_k": None, "capacity_factor": None, "router_scale": 1.0,
            "created_utc": "2026-01-01T00:00:00+00:00"}
    return {**base, **fields}


def ok_frame(records):
    return views.ok_rows(views.records_frame(records))


def _cells(tables_) -> str:
    return " ".join(c for t in tables_ for r in t.rows for c in r)


# ------------------------------------------------------------------ the bound ratio
def test_a_measured_speedup_above_the_bound_ratio_reads_as_vanilla_further_from_its_bound():
    """The contradiction this replaces: '1.86× measured ... the roofline bound allows only 1.09×'."""
    records = [row(variant="moe", latency_ms_median=18.6, flops=800, roofline_ms=2.18),
               row(variant="meo", impl="gather", latency_ms_median=10.0, flops=200,
                   roofline_ms=2.0)]
    ok = ok_frame(records)
    s = views.speedup_view(ok).iloc[0]
    assert s["speedup"] == pytest.approx(1.86) and s["bound_speedup"] == pytest.approx(1.09)
    # the identity the sentences rest on
    assert s["speedup"] == pytest.approx(s["bound_speedup"] * s["vanilla_vs_bound"] / s["meo_vs_bound"])
    (sentence,) = speedup_shortfall(ok)
    assert "allows only" not in sentence
    assert ("1.86× measured against 4.00× by FLOPs (46% realised); at their bounds MEO would be "
            "1.09× faster, not 4.00×, because MEO's merge (gather) moves expert weights that "
            "FLOPs do not count; and MEO runs closer to its bound than vanilla (5.00× against "
            "8.53×)") in sentence
    cells = _cells(tables.speedup_tables(ok))
    assert {"1.86×", "1.09×", "5.00×", "8.53×"} <= set(re.findall(r"[\d.]+×", cells))


# ------------------------------------------------------------------ below the bound
def _with_a_broken_measurement():
    def timed(ms, **fields):
        return row(latency_ms_median=ms, latency_ms_p20=ms, latency_ms_p80=ms, **fields)

    return [timed(8.0, variant="moe", flops=400, roofline_ms=4.0, below_bound=False),
            timed(1.5, variant="meo", impl="gather", flops=100, roofline_ms=2.0, below_bound=True),
            timed(6.0, variant="moe", top_k=2, flops=200, roofline_ms=2.0),
            timed(3.0, variant="meo", top_k=2, impl="gather", flops=100, roofline_ms=1.5)]


def test_a_time_below_its_bound_is_listed_never_drawn():
    ok = ok_frame(_with_a_broken_measurement())
    assert len(views.roofline_view(ok)) == 3 and len(views.roofline_view(ok, distrusted=True)) == 1
    *ratios, distrusted = tables.roofline_tables(ok)
    assert distrusted.title == "Measurements below their bound (distrusted)"
    assert distrusted.rows == [["cpu: cpu0",
                                "layer meo E=16 k=4 unit=linear impl=gather B=8 L=128 bfloat16 cpu",
                                "1.50", "2.00", "0.75×"]]
    meo_row = next(r for t in ratios for r in t.rows if r[0] == "MEO")
    assert meo_row[1] == "1"  # only the trustworthy point is counted
    fig = figures.FIGURES["fig7_roofline"].draw(ok).figure
    measured = sorted(y for ax in fig.axes for c in ax.collections for _, y in c.get_offsets())
    assert measured == [3.0, 6.0, 8.0]  # the broken 1.5 ms is not drawn


def test_findings_and_the_speedup_table_do_not_read_a_broken_measurement_as_a_result():
    ok = ok_frame(_with_a_broken_measurement())
    text = " ".join(findings(ok))
    assert "1 of 2 (E, k) points are left out: a time there is below its roofline bound" in text
    assert ("1 of 4 configurations measure below their bound (lowest 0.75×, MEO)") in text
    speedup = tables.speedup_tables(ok)[0]
    assert speedup.rows[1][4] == "5.33× (below bound)"  # k=4: 8.0 / 1.5, marked
    assert "5.33" not in " ".join(speedup_shortfall(ok))
    latency = tables.latency_tables(ok)[0]
    assert latency.rows[-1] == ["MEO", "3.00 (3.00–3.00)", "1.50 (1.50–1.50) (below bound)"]
    assert "MEO from 3.00 to 1.50 (below bound) ms" in text


def test_older_records_without_the_flag_are_judged_by_their_numbers():
    ok = ok_frame([row(variant="meo", impl="gather", latency_ms_median=1.0, roofline_ms=2.0)])
    assert ok["distrusted"].tolist() == [True]


# ------------------------------------------------------------------ where the time goes
H200 = {  # the paper's layer on an H200 in bfloat16: (impl, eager, graph, kernel) ms
    "dense": ("native", 0.099, 0.036, 0.025), "moe": ("grouped", 1.294, 0.506, 0.491),
    "moe-seq": ("batched", 0.714, 0.429, 0.426), "meo": ("dense", 1.235, 0.232, 0.211)}


def cuda_rows():
    out = []
    for variant, (impl, eager, graph, kernel) in H200.items():
        by_phase = {"router": 0.1 * kernel, "experts": 0.5 * kernel, "other": 0.4 * kernel}
        out.append(row(variant=variant, impl=impl, device="cuda", device_name="NVIDIA H200",
                       num_experts=1 if variant == "dense" else 16,
                       top_k=1 if variant == "dense" else 4, timing_mode="graph",
                       latency_ms_median=graph, eager_ms_median=eager, kernel_ms=kernel,
                       kernel_ms_by_phase=by_phase, launch_overhead=1 - kernel / eager))
    return out


def test_where_the_time_goes_table_and_its_launch_bound_finding():
    ok = ok_frame(cuda_rows())
    (table,) = tables.time_tables(ok)
    assert table.columns[:5] == ["variant (impl)", "eager ms", "graph ms", "kernel ms",
                                 "launch overhead"]
    assert table.columns[5:] == ["router kernel ms", "experts kernel ms", "other kernel ms"]
    assert table.rows[-1][:5] == ["MEO (dense)", "1.24", "0.232", "0.211", "83%"]
    (sentence,) = launch_bound(ok)
    assert sentence.startswith("On cuda: NVIDIA H200, at this size (host layer, d=768, d_ff=3072, "
                               "E=16, k=4, B=8, L=128, bfloat16, inference), 83% of MEO (dense)'s "
                               "eager time is launch overhead")
    assert "replayed from a CUDA graph it takes 0.232 ms against 1.24 ms eager" in sentence
    assert "Launch-bound (half or more of the eager time): MEO (dense) 83%, dense FFN (native) " \
           "75%, vanilla MoE (grouped) 62%." in sentence
    assert "sequence-routed" not in sentence  # 40%: not launch-bound
    decimals = set(re.findall(r"\d[\d,]*\.\d+|\d+%", sentence))
    assert decimals <= set(re.findall(r"\d[\d,]*\.\d+|\d+%", _cells([table])))


def test_where_the_time_goes_is_drawn_for_cuda_and_left_out_on_cpu():
    rep = report.build_report(cuda_rows(), command="x")
    assert "fig9_where_time_goes" in [f.name for f in rep.figure_blocks()]
    cpu = report.build_report([row(latency_ms_median=5.0)], command="x")
    omitted = {b.title: b.reason for b in cpu.blocks if isinstance(b, report.Omitted)}
    assert omitted["Where the time goes on CUDA"].startswith("no CUDA record has a kernel time")


# ------------------------------------------------------------------ the load guard
def test_the_setup_table_shows_the_load_guards_warnings(tmp_path):
    (tmp_path / "results.jsonl").write_text(json.dumps(row(latency_ms_median=5.0)) + "\n")
    warning = "cpu float32 matmul peak moved -23% during the sweep (100 → 77 GMAC/s)"
    (tmp_path / "environment.json").write_text(json.dumps(
        {"cpu": {}, "load_guard": [{"warnings": [warning]}]}))
    md = report.render_report(tmp_path).read_text()
    assert f"| load warning | {warning} |" in md
