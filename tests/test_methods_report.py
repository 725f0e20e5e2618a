"""The four-method comparison (vanilla MoE, MEO, compressed experts, XMoE at one expert budget):
the view's choice of setting, the table's numbers, the figure, the section left out with a reason,
findings backed by the table, and the presets that measure it."""

import re

import pytest
from matplotlib.colors import to_hex
from meo_profile.models import Spec
from synthetic_results import (
    CE_REL_L2_ERROR,
    XMOE_CHOSEN,
    flops_records,
    layer_records,
    method_records,
)

from meo_profile.measure.roofline import configuration_bound
from meo_profile.report import document as report
from meo_profile.report import figures, tables, views
from meo_profile.report.findings import methods_compared
from meo_profile.sweep.presets import METHODS_LAYER, PRESETS

SECTION = "Four methods at one expert budget"


def ok_frame(records):
    return views.ok_rows(views.records_frame(records))


@pytest.fixture(scope="module")
def methods():
    return ok_frame(method_records())


# ------------------------------------------------------------------ the view
def test_view_has_one_row_per_method_relative_to_vanilla(methods):
    view = views.methods_view(methods)
    assert list(view["variant"]) == ["moe", "meo", "ce", "xmoe"]
    by = view.set_index("variant")
    assert by.loc["moe", ["params_rel", "moe_block_rel", "latency_rel"]].tolist() == [1, 1, 1]
    assert by.loc["ce", "params_rel"] == pytest.approx(0.5, abs=0.01)
    # equal expert budget: XMoE has g times the experts, each 1/g as wide
    assert (by.loc["xmoe", "experts_built"], by.loc["xmoe", "expert_width"]) == (64, 512)
    assert by.loc["moe", "moe_block_gflops"] == pytest.approx(2 * 1024 * (4 * 2 * 512 * 2048 + 512 * 16) / 1e9)
    assert view["setting"].iloc[0].endswith("expert unit ffn, router logits ×8")


def test_view_holds_the_newer_methods_setting_and_each_methods_knobs():
    records = method_records()
    ce = next(r for r in records if r["variant"] == "ce")
    xmoe = next(r for r in records if r["variant"] == "xmoe")
    records += [
        {**ce, "n_ce": 1, "run_id": "n-ce-1"},  # a second n_ce: k/2 is held
        {**xmoe, "threshold": 0.5, "run_id": "t05", "experts_per_token_mean": 1.0},
        *layer_records(experts=(16,), ks=(4,), variants=("moe", "meo")),  # linear experts
    ]
    view = views.methods_view(ok_frame(records)).set_index("variant")
    assert set(view["expert_unit"]) == {"ffn"} and set(view["d_model"]) == {512}
    assert view.loc["ce", "n_ce"] == 2  # the paper's k/2
    assert view.loc["xmoe", "threshold"] == 0.9
    assert view.loc["xmoe", "experts_per_token_mean"] == XMOE_CHOSEN["experts_per_token_mean"]
    assert len(view) == 4


def test_view_needs_vanilla_and_a_newer_method():
    assert views.methods_view(ok_frame(method_records(variants=("moe", "meo")))).empty
    assert views.methods_view(ok_frame(method_records(variants=("ce", "xmoe")))).empty
    assert list(views.methods_view(ok_frame(method_records(variants=("moe", "xmoe"))))["variant"]) \
        == ["moe", "xmoe"]


# ------------------------------------------------------------------ the table
def test_table_carries_fidelity_and_chosen_counts(methods):
    (t,) = tables.methods_tables(methods)
    assert t.title.startswith("Four methods at one expert budget, cpu: Test CPU (2 cores); "
                              "host layer, d=512, d_ff=2048, E=16")
    rows = {r[0]: r for r in t.rows}
    assert list(rows) == ["vanilla MoE", "MEO", "compressed experts", "XMoE"]
    assert rows["compressed experts"][-1] == f"rel. L2 error {CE_REL_L2_ERROR:.3f} vs full top-4"
    assert rows["XMoE"][-1] == "3.66 experts / token (p90 7, max 17 of 64); 0 dropped pairs"
    assert rows["XMoE"][1] == "64 × 512, threshold 0.9"
    assert rows["compressed experts"][1] == "16 × 2048, top-2 + 2 compressed (ones init)"
    assert rows["vanilla MoE"][2] == "8.40, 1.00×" and rows["compressed experts"][2] == "4.21, 0.50×"
    assert re.fullmatch(r"[\d.]+ \([\d.]+–[\d.]+\), 0\.\d\d×", rows["XMoE"][5])
    assert rows["MEO"][-1] == "–"


def test_table_without_timing_shows_counts_only():
    (t,) = tables.methods_tables(ok_frame(method_records(timed=False)))
    assert {r[5] for r in t.rows} == {"–"} and {r[6] for r in t.rows} == {"–"}


# ------------------------------------------------------------------ the figure
def test_figure_has_a_bar_per_method_in_its_colour_and_labelled_panels(methods):
    drawn = figures.FIGURES["fig8_methods"].draw(methods)
    axes = drawn.figure.axes
    assert [a.get_title(loc="left") for a in axes] == [
        "Active parameters per token", "MoE-block GFLOPs per forward", "Median latency per forward"]
    for ax in axes:
        assert ax.get_xlabel() and ax.get_ylabel() == "relative to vanilla MoE (×)"
        colours = [to_hex(p.get_facecolor()) for p in ax.patches]
        assert colours == [figures.VARIANT_COLOURS[v].lower() for v in ("moe", "meo", "ce", "xmoe")]
    labels = [t.get_text() for t in axes[0].texts]
    assert "0.50×\n4.21 M" in labels  # ratio and value, as the table prints them
    assert "router logits were scaled ×8" in drawn.caption and "nearly flat" in drawn.caption


def test_figure_rows_per_device_and_no_latency_panel_without_timing():
    two = ok_frame(method_records() + method_records(device="cuda", dtype="bfloat16"))
    assert len(figures.FIGURES["fig8_methods"].draw(two).figure.axes) == 6
    counts_only = figures.FIGURES["fig8_methods"].draw(ok_frame(method_records(timed=False)))
    assert len(counts_only.figure.axes) == 2


# ------------------------------------------------------------------ the report
def test_section_is_left_out_with_a_reason_without_ce_or_xmoe():
    rep = report.build_report(flops_records(ks=(1, 4)) + layer_records(experts=(4, 16), ks=(1, 4))
                              + method_records(variants=("moe", "meo")), command="x")
    omitted = {b.title: b.reason for b in rep.blocks if isinstance(b, report.Omitted)}
    assert omitted[SECTION].startswith("no setting has counted records of both vanilla MoE and "
                                       "compressed experts or XMoE")
    assert f"{SECTION}: left out, no setting" in report.to_markdown(rep)
    assert not [t for t in rep.tables() if t.title.startswith(SECTION)]


def test_section_numbers_and_findings_are_backed_by_the_table(methods):
    rep = report.build_report(method_records(), command="x")
    headings = [b.text for b in rep.blocks if isinstance(b, report.Heading)]
    number = next(i for i, s in enumerate(report.SECTIONS, 1) if s.title == SECTION)
    assert f"{number}. {SECTION}" in headings
    assert "fig8_methods" in [f.name for f in rep.figure_blocks()]
    (sentence,) = methods_compared(methods)
    cells = " ".join(c for t in rep.tables() for r in t.rows for c in r)
    decimals = set(re.findall(r"\d[\d,]*\.\d+", sentence))
    assert {"0.50", "0.115", "3.66", "4.21"} <= decimals
    assert not {d for d in decimals if d not in cells}


# ------------------------------------------------------------------ presets and measuring
def test_presets_measure_the_four_methods_at_one_budget():
    specs, _ = METHODS_LAYER.specs()
    assert [s.variant for s in specs] == ["moe", "meo", "ce", "xmoe"]
    ce, xmoe = specs[2], specs[3]
    assert (ce.n_ce, xmoe.granularity, xmoe.threshold, xmoe.router_scale) == (2, 4, 0.9, 8.0)
    assert {(s.d_model, s.d_ff, s.batch_size, s.seq_len, s.expert_unit) for s in specs} == \
        {(512, 2048, 8, 128, "ffn")}
    for name in ("default", "paper"):
        assert METHODS_LAYER in PRESETS[name].grid.blocks
    # a --top-k on the preset still expands: n_ce follows k (k // 2) rather than failing
    jobs, _ = PRESETS["default"].grid.override({"top_k": [1, 2]}).expand()
    assert jobs


def test_xmoe_has_no_roofline_bound_rather_than_an_error():
    spec = Spec(host="layer", variant="xmoe", num_experts=4, granularity=2, d_model=32, d_ff=64,
                seq_len=8, batch_size=2)
    assert configuration_bound(spec) is None


@pytest.mark.slow  # a real sweep of four tiny configurations: a few seconds on a 2-core CPU
def test_real_sweep_of_the_four_methods_draws_the_comparison(tmp_path):
    from meo_profile.measure.timing import TimingOptions
    from meo_profile.sweep.grid import Block
    from meo_profile.sweep.run import SweepOptions, run_sweep

    block = Block({"host": ["layer"], "variant": ["moe", "meo", "ce", "xmoe"],
                   "expert_unit": ["ffn"], "num_experts": [4], "top_k": [2], "granularity": [2],
                   "router_scale": [8.0], "d_model": [32], "d_ff": [64], "seq_len": [16],
                   "batch_size": [2], "device": ["cpu"]})
    jobs = [(s, block.metrics) for s in block.specs()[0]]
    run_sweep(jobs, SweepOptions(out=tmp_path, timing=TimingOptions(warmup=1, min_run_time=0.01)))
    rep = report.build_report(report.load_results(tmp_path)[1], command="test")
    assert "fig8_methods" in [f.name for f in rep.figure_blocks()]
    (t,) = [t for t in rep.tables() if t.title.startswith(SECTION)]
    rows = {r[0]: r for r in t.rows}
    assert list(rows) == ["vanilla MoE", "MEO", "compressed experts", "XMoE"]
    assert re.fullmatch(r"rel\. L2 error \d\.\d{3} vs full top-2", rows["compressed experts"][-1])
    assert re.match(r"\d\.\d\d experts / token \(p90 \d+, max \d+ of 8\)", rows["XMoE"][-1])
    assert all(r[5] != "–" for r in t.rows)  # every method timed, XMoE included
