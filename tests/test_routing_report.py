"""The report's routing section on synthetic records: one row per routing in skew order, the
replayed traces' statistics, the figure's skew and locality panels, and a finding whose numbers
are the table's."""

from __future__ import annotations

import re

import pytest
from synthetic_results import routing_records

from meo_profile.report import figures, views
from meo_profile.report.routing import routing_speedup, routing_tables


@pytest.fixture(scope="module")
def ok():
    records = routing_records()
    replayed = dict(records[0], routing="replay:traces/olmoe.npz", routing_trace={
        "path": "traces/olmoe.npz", "model": "olmoe (ckpt)", "num_experts": 16, "top_k": 4,
        "layers": 2, "sequences": 40, "tokens": 128, "load_max_over_mean": 2.5, "load_cv": 0.61,
        "zipf_s": 0.93, "experts_per_sequence": 11.2, "independent_expectation": 15.1,
        "locality": 0.412, "same_experts": 0.02})
    return views.ok_rows(views.records_frame([*records, replayed]))


def test_each_routing_is_one_row_in_skew_order_with_merged_and_vanilla_side_by_side(ok):
    latency, traces = routing_tables(ok)
    assert [r[0] for r in latency.rows] == ["balanced", "uniform", "zipf:1.5", "replay:traces/olmoe.npz",
                                            "uniform,local:0.9"]
    by_routing = {r[0]: dict(zip(latency.columns, r, strict=True)) for r in latency.rows}
    assert by_routing["uniform"]["speedup vs uniform"] == "+0.00%"
    assert by_routing["zipf:1.5"]["MoE load max/mean"] == "3.40"
    assert by_routing["uniform,local:0.9"]["MoE experts/seq"] == "9.6"
    assert by_routing["zipf:1.5"]["speedup vs uniform"] == "+15.00%"  # vanilla 1.15x slower
    assert traces.rows == [["traces/olmoe.npz", "olmoe (ckpt)", "16", "4", "2", "40 × 128",
                            "2.50", "0.61", "0.93", "11.2", "15.1", "0.412"]]


def test_the_finding_quotes_the_speedup_at_uniform_the_most_skewed_and_the_most_local(ok):
    (sentence,) = routing_speedup(ok)
    assert "under uniform routing" in sentence
    assert "under zipf:1.5 (the most skewed measured" in sentence and "+15.00%" in sentence
    assert "under uniform,local:0.9 (the most local measured" in sentence and "-10.00%" in sentence
    cells = " ".join(c for t in routing_tables(ok) for r in t.rows for c in r)
    assert all(number in cells for number in re.findall(r"[+-]?\d[\d,]*\.\d+", sentence))


def test_the_figure_has_a_skew_panel_and_a_locality_panel(ok):
    drawn = figures.FIGURES["fig11_routing"].draw(ok)
    skew, local = drawn.figure.axes
    assert [t.get_text() for t in skew.get_xticklabels()] == ["balanced", "uniform", "zipf:1.5"]
    moe_line = next(line for line in local.get_lines() if line.get_label() == "vanilla MoE")
    assert list(moe_line.get_xdata()) == [0.0, 0.9]
