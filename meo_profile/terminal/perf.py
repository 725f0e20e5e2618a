"""Terminal tables for latency records and trace summaries. Renderers never measure.

One time unit per table, printed in the column header: picked from the smallest entry (as
torch.utils.benchmark's Compare does), except in operator tables, where the top row decides.
"""

from __future__ import annotations

from typing import Any

from rich.table import Table

from meo_profile.core.identity import spec_title
from meo_profile.core.units import human_bytes, time_unit
from meo_profile.measure.trace import TraceSummary
from meo_profile.results.record import Result


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _scaled(value_ms: float | None, ms_per_unit: float) -> str:
    return "-" if value_ms is None else f"{value_ms / ms_per_unit:.3f}"


def latency_table(result: Result) -> Table:
    """Latency statistics, throughput, bound and memory of one record."""
    unit, per = time_unit([result.latency_ms_p20, result.roofline_ms])
    table = Table(title=f"latency: {spec_title(result.spec)}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    iqr = result.timing.iqr_ms if result.timing is not None else None
    rows = [
        (f"median ({unit})", _scaled(result.latency_ms_median, per)),
        (f"p20 / p80 ({unit})",
         f"{_scaled(result.latency_ms_p20, per)} / {_scaled(result.latency_ms_p80, per)}"),
        (f"IQR ({unit})", _scaled(iqr, per)),
        ("samples", f"{_fmt(result.latency_runs, 'd')} ({result.timer})"),
        ("allocator", result.allocator or "-"),
        ("tokens/s", _fmt(result.tokens_per_s, ",.0f")),
        (f"roofline bound ({unit})", _scaled(result.roofline_ms, per)),
        ("measured / bound", _fmt(result.roofline_ratio, ".2f")),
        ("peak memory", human_bytes(result.peak_mem_bytes)),
        ("  above weights", human_bytes(result.peak_mem_above_weights_bytes)),
        ("  weights", human_bytes(result.weights_bytes)),
        ("memory method", result.mem_method or "-"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    return table


def ops_table(summary: TraceSummary, top: int = 20) -> Table:
    """The `top` operators by self time, with their share of all operators' self time."""
    ops = summary.ops[:top]
    unit, per = time_unit([r.self_ms for r in ops[:1]])  # the top row's unit: it is what is read
    table = Table(title=f"trace ({summary.clock} time, {summary.steps} step(s)): "
                        f"{spec_title(summary.spec)}")
    for col in ("operator", "calls", f"self ({unit})", "self %", f"total ({unit})"):
        table.add_column(col, justify="left" if col == "operator" else "right")
    for r in ops:
        share = r.self_ms / summary.self_ms_total if summary.self_ms_total else 0.0
        table.add_row(r.name, str(r.calls), f"{r.self_ms / per:.3f}", f"{share:.1%}",
                      f"{r.total_ms / per:.3f}")
    return table


def phases_table(summary: TraceSummary) -> Table:
    """Time inside each named phase (operators included), in the order the layers run them."""
    unit, per = time_unit([r.total_ms for r in summary.phases])
    table = Table(title="phases")
    for col in ("phase", "ranges", f"time ({unit})"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for r in summary.phases:
        table.add_row(r.name, str(r.calls), f"{r.total_ms / per:.3f}")
    return table
