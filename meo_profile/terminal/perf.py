"""Terminal tables for latency records and trace summaries. Renderers never measure.

One time unit per table, for every time column, printed in the column headers: picked from the
smallest entry (as torch.utils.benchmark's Compare does), except in operator tables, where the
top row decides; a value small beside it keeps its significant digits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from meo_profile.core.identity import spec_title
from meo_profile.core.units import fmt_share, fmt_sig, human_bytes, time_unit
from meo_profile.measure.trace import TraceSummary
from meo_profile.measure.trace_file import OTHER
from meo_profile.results.record import Result


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _scaled(value_ms: float | None, ms_per_unit: float) -> str:
    return "-" if value_ms is None else fmt_sig(value_ms / ms_per_unit, 4, 3)


def latency_table(result: Result) -> Table:
    """Latency statistics (with how they were timed), throughput, the phase-wise bound and
    memory of one record."""
    unit, per = time_unit([result.latency_ms_p20, result.roofline_ms, result.kernel_ms,
                           result.decode_ms_per_step])
    table = Table(title=f"latency: {spec_title(result.spec)}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    for name, value in [*_timing_rows(result, unit, per), *_workload_rows(result, unit, per),
                        *_bound_rows(result, unit, per), *_routing_rows(result),
                        ("peak memory", human_bytes(result.peak_mem_bytes)),
                        ("  above weights", human_bytes(result.peak_mem_above_weights_bytes)),
                        ("  weights", human_bytes(result.weights_bytes)),
                        ("memory method", result.mem_method or "-")]:
        table.add_row(name, value)
    if result.timing_note:
        table.caption = result.timing_note
    return table


def _timing_rows(result: Result, unit: str, per: float) -> list[tuple[str, str]]:
    iqr = result.timing.iqr_ms if result.timing is not None else None
    rows = [
        (f"median ({unit})", _scaled(result.latency_ms_median, per)),
        (f"p20 / p80 ({unit})",
         f"{_scaled(result.latency_ms_p20, per)} / {_scaled(result.latency_ms_p80, per)}"),
        (f"IQR ({unit})", _scaled(iqr, per)),
        ("samples", f"{_fmt(result.latency_runs, 'd')} ({result.timer}, {result.timing_mode})"),
        ("allocator", result.allocator or "-"),
        ("tokens/s", _fmt(result.tokens_per_s, ",.0f")),
        ("implementation", f"{result.spec.impl} ({result.impl_choice or '-'})"),
        *((f"  candidate {name} ({unit})", _scaled(ms, per))
          for name, ms in (result.impl_candidates or {}).items()),
    ]
    if result.kernel_ms is not None:  # CUDA: what the eager time is made of
        rows += [(f"eager median ({unit})", _scaled(result.eager_ms_median, per)),
                 (f"kernel time ({unit})", _scaled(result.kernel_ms, per)),
                 ("launch overhead", _fmt(result.launch_overhead, ".0%"))]
    return rows


def _workload_rows(result: Result, unit: str, per: float) -> list[tuple[str, str]]:
    """generate:N's parts timed apart; what a merging variant keeps between decode steps."""
    rows = []
    if result.prefill_ms is not None:
        rows += [(f"  prefill ({unit})", _scaled(result.prefill_ms, per)),
                 (f"  decode, per step ({unit})", _scaled(result.decode_ms_per_step, per))]
    if result.merged_cache_bytes is not None:
        rows.append((f"merged experts kept ({result.spec.merge_reuse} reuse)",
                     human_bytes(result.merged_cache_bytes)))
    return rows


def _bound_rows(result: Result, unit: str, per: float) -> list[tuple[str, str]]:
    ratio = _fmt(result.roofline_ratio, ".2f")
    rows = [(f"roofline bound ({unit})", _scaled(result.roofline_ms, per)),
            ("measured / bound", ratio + ("  BELOW BOUND: distrust" if result.below_bound else ""))]
    rows += [(f"  {phase} ({unit})", _scaled(ms, per))
             for phase, ms in (result.roofline_by_phase or {}).items()]
    rows.append((f"  whole-call bound ({unit})", _scaled(result.roofline_overlap_ms, per)))
    return rows


def _routing_rows(result: Result) -> list[tuple[str, str]]:
    """How the experts were chosen and what the forward touched (per MoE layer, averaged)."""
    if result.experts_touched_mean is None:
        return []
    return [("routing", result.spec.routing),
            ("  experts touched", _fmt(result.experts_touched_mean, ".1f")),
            ("  load max / mean", _fmt(result.expert_load_max_over_mean, ".2f")),
            ("  experts per sequence", _fmt(result.experts_per_sequence_mean, ".1f"))]


def kernels_table(summary: TraceSummary, top: int = 20) -> Table | None:
    """The `top` device events by total time, one line each, with their share of device time
    and the phase they ran in; None for a trace without device time (CPU)."""
    a = summary.analysis
    if a.kernel_ms_total is None:
        return None
    rows = a.kernels[:top]
    # one unit for the totals and the means: the smallest mean decides
    unit, per = time_unit([r.mean_us / 1e3 for r in rows])
    table = Table(title=f"device time by kernel ({a.steps} step(s)): {_title(summary)}")
    # names are one line already (trace_names.py); a narrow terminal cuts them, never wraps them
    table.add_column("kernel", overflow="ellipsis")
    for col in ("calls", f"total ({unit})", "share", f"mean ({unit})", "phase"):
        table.add_column(col, justify="left" if col == "phase" else "right", no_wrap=True,
                         min_width=len(col))
    for r in rows:
        share = r.total_ms / a.kernel_ms_total if a.kernel_ms_total else 0.0
        table.add_row(r.name, str(r.calls), _scaled(r.total_ms, per), fmt_share(share),
                      _scaled(r.mean_us / 1e3, per), " + ".join(r.by_phase))
    table.caption = (f"{len(a.kernels)} kernels, {_scaled(a.kernel_ms_total, per)} {unit} of "
                     f"device time in all; trace: {summary.trace_path}")
    return table


def ops_table(summary: TraceSummary, top: int = 20) -> Table:
    """The `top` host operators by self time, with their share of all operators' self time. On
    CUDA these times are the host's (launching), never the device's: kernels have their table."""
    a = summary.analysis
    ops = a.ops[:top]
    unit, per = time_unit([r.self_ms for r in ops[:1]])  # the top row's unit: it is what is read
    table = Table(title=f"host operators by self time ({a.steps} step(s)): {_title(summary)}")
    for col in ("operator", "calls", f"self ({unit})", "self %", f"total ({unit})"):
        table.add_column(col, justify="left" if col == "operator" else "right")
    for r in ops:
        share = r.self_ms / a.op_self_ms_total if a.op_self_ms_total else 0.0
        table.add_row(r.name, str(r.calls), _scaled(r.self_ms, per), fmt_share(share),
                      _scaled(r.total_ms, per))
    return table


def phases_table(summary: TraceSummary) -> Table | None:
    """Time per phase, in the order the layers run them: device time on CUDA (every kernel in
    exactly one phase, "other" outside every phase), host time inside each range on CPU; None
    for a trace without phase ranges (`phase_lines` says so)."""
    a = summary.analysis
    device = a.kernel_ms_total is not None
    by_phase = a.kernel_ms_by_phase if device else a.phase_host_ms()
    if not set(by_phase) - {OTHER}:
        return None
    # shares: of all device time, or of the steps' host time (phases nest inside the steps)
    total = a.kernel_ms_total if device else sum(r.total_ms for r in a.annotations
                                                 if r.name.startswith("ProfilerStep#"))
    unit, per = time_unit(list(by_phase.values()))
    table = Table(title=f"{'device' if device else 'host'} time by phase")
    for col in ("phase", f"time ({unit})", "share"):
        table.add_column(col, justify="left" if col == "phase" else "right")
    for phase, ms in by_phase.items():
        table.add_row(phase, _scaled(ms, per), fmt_share(ms / total) if total else "-")
    if not device:
        table.caption = "share: of the profiled steps' host time"
    if device:
        table.caption = "other: outside every phase (the host model's own work)"
    return table


def phase_lines(summary: TraceSummary) -> list[str]:
    """What stands in for the phase table where the trace has no phase ranges."""
    if phases_table(summary) is not None:
        return []
    return ["no phase ranges in this trace (router, dispatch, experts, merge, ...): a dense "
            "model's own FFN marks none, nor does a trace recorded by other code"]


def launch_lines(summary: TraceSummary) -> list[str]:
    """HolisticTraceAnalysis-style launch statistics, as sentences; none without device time."""
    s = summary.analysis.launch
    if s is None:
        return []
    return [f"{s.short} of {s.launched} device events ran shorter than the CPU call that "
            f"launched them: where most do, the host's launches set the pace, not the device.",
            f"The device was busy {s.busy_ms:.3f} ms of a {s.span_ms:.3f} ms span "
            f"({s.idle_fraction:.0%} idle); launch to start: median {s.launch_delay_us_median:.1f} "
            f"us, max {s.launch_delay_us_max:.1f} us; launch calls took {s.launch_cpu_ms:.3f} ms "
            f"of CPU time."]


def _title(summary: TraceSummary) -> str:
    return spec_title(summary.spec) if summary.spec is not None else Path(summary.trace_path).name
