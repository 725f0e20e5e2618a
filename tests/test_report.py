"""The report: presentation steps on hand-written rows, tables against golden text, the paper's
printed numbers, findings backed by table numbers, missing data left out with a note, the CLI."""

import json
import re

import pandas as pd
import pytest
from rich.console import Console
from synthetic_results import ENV, flops_records, full_set, layer_records
from synthetic_results import failure_records as synthetic_failures
from typer.testing import CliRunner

from cli import app
from meo_profile.core import units
from meo_profile.core.paper import PAPER_NUMBERS, meo_flops_ratio_closed_form
from meo_profile.report import document as report
from meo_profile.report import tables, views
from meo_profile.report.findings import findings
from meo_profile.report.tables import Table


def ok_frame(records):
    return views.ok_rows(views.records_frame(records))


def row(**fields):
    """A hand-written record: the spec fields a view reads, plus measurements."""
    base = {"status": "ok", "host": "layer", "variant": "moe", "num_experts": 4, "top_k": 1,
            "seq_len": 128, "batch_size": 8, "dtype": "float32", "device": "cpu",
            "impl": "grouped", "expert_unit": "linear", "mode": "inference", "seed": 0,
            "d_model": 64, "d_ff": 256, "layers": 1, "device_name": "cpu0",
            "created_utc": "2026-01-01T00:00:00+00:00"}
    return {**base, **fields}


@pytest.fixture(scope="module")
def full():
    return full_set(gpu=True, train=True)


@pytest.fixture(scope="module")
def built(full):
    return report.build_report(full, command="meo-profile sweep --preset test")


# ------------------------------------------------------------------ presentation steps
def test_prepare_adds_every_schema_column_and_coerces_numbers():
    df = views.records_frame([{"host": "layer", "variant": "meo", "flops": "12", "status": "ok"}])
    assert set(views.COLUMNS) <= set(df.columns)
    assert df["flops"].iloc[0] == 12 and pd.isna(df["latency_ms_median"].iloc[0])
    assert pd.isna(df["mode"].iloc[0])  # nothing is filled in with a default


def test_ok_rows_merges_records_of_one_configuration_and_drops_failures():
    records = [row(flops=100, created_utc="2026-01-01T00:00:00+00:00"),
               row(latency_ms_median=5.0, created_utc="2026-01-02T00:00:00+00:00"),
               row(latency_ms_median=4.0, device_name="other machine"),
               row(status="oom", num_experts=64)]
    ok = ok_frame(records)
    assert len(ok) == 2  # one per machine; the oom record is not a measurement
    mine = ok[ok["device_name"] == "cpu0"].iloc[0]
    assert mine["flops"] == 100 and mine["latency_ms_median"] == 5.0
    assert mine["device_label"] == "cpu: cpu0"


def test_pick_value_prefers_then_most_common_then_smallest():
    s = pd.Series([8, 8, 4, 16])
    assert views.pick_value(s, 16) == 16
    assert views.pick_value(s, 32) == 8
    assert views.pick_value(pd.Series([4, 8]), None) == 4
    assert views.pick_value(pd.Series([None, None], dtype=object), 4) is None
    assert views.pick_value(pd.Series(["zipf:1", "uniform", "balanced"]), ("router", "uniform")) == "uniform"


def test_fix_axes_holds_each_axis_and_reports_the_values():
    df = pd.DataFrame({"batch_size": [1, 8, 8], "seq_len": [128, 128, 64], "layers": [None] * 3})
    held, chosen = views.fix_axes(df, {"batch_size": 1, "seq_len": 64, "layers": None})
    assert len(held) == 1 and chosen == {"batch_size": 1, "seq_len": 128}


def test_best_per_point_keeps_the_fastest_implementation():
    df = pd.DataFrame({"variant": ["moe", "moe", "meo"], "top_k": [2, 2, 2],
                       "impl": ["loop", "grouped", "gather"], "t": [9.0, 3.0, 1.0]})
    best = views.best_per_point(df, ["variant", "top_k"], "t")
    assert sorted(best["impl"]) == ["gather", "grouped"]


def test_describe_setting_orders_axes_and_omits_the_default_expert_unit():
    text = views.describe_setting({"dtype": "float32", "batch_size": 8, "host": "layer",
                                   "expert_unit": "linear", "num_experts": 16})
    assert text == "host layer, E=16, B=8, float32"


def test_ratio_view_divides_meo_by_vanilla_and_draws_the_closed_form_beside():
    parts_moe = {"experts": 4 * 128 * 10, "router": 7}
    parts_meo = {"experts": 128 * 10, "merge": 4 * 10, "router": 1}
    records = [row(variant="moe", top_k=4, flops=2 * 5127, macs_by_part=parts_moe, batch_size=1),
               row(variant="meo", top_k=4, flops=2 * 1321, impl="gather",
                   macs_by_part=parts_meo, batch_size=1)]
    ratios = views.ratio_view(views.flops_view(ok_frame(records), hosts=None))
    r = ratios.iloc[0]
    assert r["ratio"] == pytest.approx(1321 / 5127)
    assert r["moe_layer_ratio"] == pytest.approx(1 / 4 + 1 / 128)
    assert r["closed_form"] == meo_flops_ratio_closed_form(4, 128) == pytest.approx(0.2578125)


def test_speedup_view_pairs_meo_with_the_fastest_vanilla():
    records = [row(variant="moe", impl="loop", latency_ms_median=12.0, flops=400),
               row(variant="moe", impl="grouped", latency_ms_median=8.0, flops=400,
                   roofline_ms=4.0),
               row(variant="meo", impl="gather", latency_ms_median=4.0, flops=100,
                   roofline_ms=1.0)]
    s = views.speedup_view(ok_frame(records)).iloc[0]
    assert (s["speedup"], s["flops_ratio"], s["bound_speedup"]) == (2.0, 4.0, 4.0)
    assert s["vanilla_impl"] == "grouped" and s["realised"] == 0.5


def test_latency_view_keeps_dense_as_a_k_free_baseline_at_the_held_setting():
    records = [row(variant="dense", num_experts=1, latency_ms_median=1.0),
               row(variant="dense", num_experts=1, latency_ms_median=9.0, batch_size=2),
               *(row(variant="moe", num_experts=16, top_k=k, latency_ms_median=float(k))
                 for k in (1, 2))]
    view = views.latency_view(ok_frame(records))
    assert sorted(view["variant"]) == ["dense", "moe", "moe"]
    assert view.loc[view["variant"] == "dense", "latency_ms_median"].item() == 1.0
    assert view["setting"].iloc[0].startswith("host layer, d=64, d_ff=256, E=16, B=8")


# ------------------------------------------------------------------ formats and tables
@pytest.mark.parametrize("value,text", [(812.4, "812"), (81.24, "81.2"), (8.124, "8.12"),
                                        (0.8124, "0.812"), (0.0123, "0.0123"), (float("nan"), "–")])
def test_fmt_ms_keeps_three_significant_digits(value, text):
    assert units.fmt_ms(value) == text


def test_small_values_keep_significant_digits_instead_of_reading_zero():
    assert [units.fmt_giga(n) for n in (72_389e6, 1.187e9, 123_456, 0)] == [
        "72.389", "1.187", "0.0001235", "0.000"]  # GMACs: a tiny model is not 0.000
    assert [units.fmt_times(x) for x in (0.0012, -2.5)] == ["0.0012×", "-2.50×"]
    assert [units.fmt_pct(x) for x in (0.45, 0.003, 0.00004)] == ["45%", "0.3%", "0.004%"]
    assert [units.fmt_share(x) for x in (0.453, 0.0001)] == ["45.3%", "0.010%"]
    assert units.fmt_bytes(1024, ("MiB", 2**20)) == "0.000977"
    assert units.fmt_num(0.0004, 3) == "0.0004" and units.fmt_num(7.0, 0) == "7" and units.fmt_num(1234.5) == "1,234.50"


def test_fmt_times_and_byte_units():
    assert [units.fmt_times(x) for x in (0.873, 12.34, 808.04)] == ["0.87×", "12.3×", "808×"]
    assert units.byte_unit(3 * 2**30)[0] == "GiB" and units.byte_unit(5 * 2**20)[0] == "MiB"


def test_markdown_table_golden():
    t = Table("Title", ["name", "ms"], [["a|b", "1.00"]], "A note.", right={1})
    assert report.markdown_table(t) == (
        "**Title**\n\n| name | ms |\n| --- | ---: |\n| a\\|b | 1.00 |\n\n*A note.*")


def test_paper_table_carries_the_papers_printed_numbers_and_the_measured_ones(full):
    t = tables.paper_table(ok_frame(full))
    cells = {r[0]: r for r in t.rows}
    moe = cells[PAPER_NUMBERS["flops_moe"].quantity]
    assert moe[2] == "72.0 GFLOPs" and moe[3:7] == ["72.36", "0.377", "71.99", "-0.02%"]
    meo = cells[PAPER_NUMBERS["flops_meo"].quantity]
    assert meo[2] == "28.6 / 28.9 GFLOPs" and meo[5] == "28.95"
    assert cells[PAPER_NUMBERS["glue_meo"].quantity][2] == "83.3 %"
    assert cells[PAPER_NUMBERS["glue_moe"].quantity][2] == "82.6 %"
    assert all("2 x MACs" in r[1] for r in t.rows[:2])
    assert "routers left out" in t.note


def test_paper_table_without_a_matching_record_says_so():
    t = tables.paper_table(ok_frame(layer_records(experts=(4,), ks=(1,))))
    assert [r[2] for r in t.rows] == ["72.0 GFLOPs", "28.6 / 28.9 GFLOPs", "83.3 %", "82.6 %"]
    assert t.rows[0][-1].startswith("no matching record (host=bert-base")


def test_paper_numbers_state_their_convention():
    flops = [n for n in PAPER_NUMBERS.values() if n.unit == "GFLOPs"]
    assert [n.value for n in flops] == [72.0, 28.6] and flops[1].also_printed == (28.9,)
    assert all(n.convention.startswith("FLOPs = 2 x MACs") for n in flops)


def test_latency_table_golden_rows(full):
    cpu = tables.latency_tables(ok_frame(full))[0]
    assert cpu.title.startswith("Latency (ms), cpu: Test CPU (2 cores); host layer, d=768, "
                                "d_ff=3072, E=16, B=8")
    assert cpu.columns == ["variant", "k=1", "k=2", "k=4", "k=8"]
    assert [r[0] for r in cpu.rows] == ["dense FFN", "vanilla MoE", "vanilla MoE, sequence-routed",
                                         "MEO"]
    assert re.fullmatch(r"\d[\d.,]* \([\d.,]+–[\d.,]+\)", cpu.rows[1][1])


# ------------------------------------------------------------------ the report
def test_report_states_setup_versions_and_command(built):
    md = report.to_markdown(built)
    assert "`meo-profile sweep --preset test`" in md
    for text in ("Test CPU (2 cores)", "NVIDIA H100", "float32", "bfloat16", ENV["torch_version"],
                 ENV["fvcore_version"], "FLOPs are 2 × MACs"):
        assert text in md


def test_full_results_draw_every_figure(built):
    assert [f.name for f in built.figure_blocks()] == ["fig1_flops_vs_k", "fig3_flops_ratio",
                                               "fig4_latency_vs_k", "fig5_speedup_heatmap",
                                               "fig6_memory_vs_experts", "fig7_roofline",
                                               "fig8_methods", "fig10_merging_family",
                                               "fig9_where_time_goes", "fig11_routing",
                                               "fig12_regimes"]
    assert not [b for b in built.blocks if isinstance(b, report.Omitted)]
    assert "| oom | bert-large moe E=64 k=32" in report.to_markdown(built)


def test_every_decimal_in_the_findings_appears_in_a_table(built, full):
    text = "\n".join(findings(ok_frame(full)))
    cells = {c for t in built.tables() for r in t.rows for c in r}
    table_text = " ".join(cells)
    decimals = set(re.findall(r"[+-]?\d[\d,]*\.\d+", text))
    assert decimals, text
    assert not {d for d in decimals if d not in table_text}
    assert "falls short of the FLOPs ratio" in text


def test_flops_only_results_leave_the_measured_figures_out_with_reasons():
    rep = report.build_report(flops_records(ks=(1, 4)), command="x")
    omitted = {b.title: b.reason for b in rep.blocks if isinstance(b, report.Omitted)}
    assert set(omitted) == {"Latency against k", "MEO speedup over vanilla, experts × k",
                            "Peak memory against experts", "Measured time against the roofline bound",
                            "Four methods at one expert budget", "The merging family at one expert budget",
                            "Where the time goes on CUDA",
                            "Latency against skew and locality of routing",
                            "Where merging pays off: MEO's speedup, batch × regime"}
    assert "no latency measurements" in report.to_markdown(rep)
    assert [f.name for f in rep.figure_blocks()] == ["fig1_flops_vs_k", "fig3_flops_ratio"]


def test_latency_without_flops_or_bounds_still_reports():
    records = layer_records(experts=(4, 8), ks=(1, 2))
    for r in records:
        r.update(flops=None, macs=None, macs_by_part={}, roofline_ms=None, roofline_ratio=None)
    rep = report.build_report(records, command="x")
    omitted = {b.title for b in rep.blocks if isinstance(b, report.Omitted)}
    assert {"GFLOPs against selected experts", "FLOPs ratio MEO / vanilla against k",
            "Measured time against the roofline bound", "Four methods at one expert budget",
            "The merging family at one expert budget", "Where the time goes on CUDA",
            "Latency against skew and locality of routing",
            "Where merging pays off: MEO's speedup, batch × regime"} == omitted
    speedup = next(t for t in rep.tables() if t.title.startswith("MEO speedup"))
    assert speedup.rows[0][5] == "–"  # FLOPs ratio unknown, not invented


def test_render_report_writes_markdown_and_both_image_formats(tmp_path):
    results = tmp_path / "run"
    results.mkdir()
    records = flops_records(hosts=("bert-small",), ks=(1, 2))
    (results / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records)
                                           + '{"truncated', encoding="utf-8")
    path = report.render_report(results, tmp_path / "out")
    assert path == tmp_path / "out" / "report.md"
    assert (tmp_path / "out/figures/fig1_flops_vs_k.png").stat().st_size > 10_000
    assert (tmp_path / "out/figures/fig1_flops_vs_k.svg").read_text().startswith("<?xml")
    assert "| lines left out (unreadable or invalid) | 1 |" in path.read_text()
    html_path = report.render_report(results / "results.jsonl", tmp_path / "out", fmt="html")
    assert '<img src="figures/fig1_flops_vs_k.png"' in html_path.read_text()


def test_unreadable_results_are_one_line_errors(tmp_path):
    with pytest.raises(report.ReportError, match="no results file"):
        report.render_report(tmp_path / "nowhere")
    (tmp_path / "results.jsonl").write_text("\n")
    with pytest.raises(report.ReportError, match="no readable records"):
        report.render_report(tmp_path)
    with pytest.raises(report.ReportError, match="--format 'pdf'"):
        report.render_report(tmp_path, fmt="pdf")


def test_summary_prints_the_key_tables(full):
    console = Console(record=True, width=200)
    for t in report.summary_tables(full):
        console.print(report.rich_table(t))
    out = console.export_text()
    assert "The MEO paper's printed numbers against this run" in out and "71.99" in out
    assert "MEO speedup over vanilla MoE, cpu: Test CPU" in out


# ------------------------------------------------------------------ the command line
def test_cli_report_missing_results_exits_2_with_one_line(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing")])
    assert result.exit_code == 2
    assert result.output.strip().count("\n") == 0 and "no results file" in result.output


def test_cli_report_writes_the_report(tmp_path):
    records = flops_records(hosts=("bert-base",), ks=(4,))
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    result = CliRunner().invoke(app, ["report", str(tmp_path), "--out", str(tmp_path / "r")])
    assert result.exit_code == 0, result.output
    md = (tmp_path / "r" / "report.md").read_text()
    assert "GFLOPs against selected experts: left out, FLOPs counted at a single k" in md
    assert "71.99" in result.output


def test_noisy_latency_points_are_flagged_with_the_tables_numbers():
    records = layer_records(experts=(16,), ks=(1, 2), variants=("moe", "meo"))
    noisy = next(r for r in records if r["variant"] == "meo" and r["top_k"] == 2)
    # the timer's rule reads the raw samples: an interquartile range of 20% of the median
    noisy["latency_samples_ms"] = [noisy["latency_ms_median"] * f for f in (0.8, 0.9, 1.0, 1.1, 1.3)]
    ok = ok_frame(records)
    sentence = next(s for s in findings(ok) if "spread more than 10%" in s)
    cell = tables.latency_tables(ok)[0].rows[1][2]  # MEO at k=2, as the table prints it
    median = units.fmt_ms(noisy["latency_ms_median"])
    assert "1 of 4 latency points" in sentence and cell.startswith(median)
    # the range it shows is the one its rule reads (quartiles), not the table's p20-p80
    q25, q75 = (units.fmt_ms(noisy["latency_ms_median"] * f) for f in (0.9, 1.1))
    assert f"MEO, k=2, median {median} ms, 25th–75th percentile {q25}–{q75} ms" in sentence


def test_markdown_escapes_html_in_names_and_keeps_code_spans():
    hostile = "hf:runs/<img src=x onerror=alert(1)>/config.json"
    records = [{**r, "host": hostile, "error": "RuntimeError: <b>boom</b> & more"}
               for r in synthetic_failures()]
    text = report.to_markdown(report.build_report(records, command="meo-profile report <dir>"))
    assert "<img" not in text and "<b>" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text and "&lt;b&gt;boom&lt;/b&gt; &amp; more" in text
    assert "`meo-profile report <dir>`" in text  # a code span shows as it is written
