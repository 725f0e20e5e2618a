"""Latency of every implementation at the MEO paper's layer size (and, on CUDA, at the `gpu`
preset's shape): does MEO's FLOPs saving become time, and how far is each from its bound?

One MoE FFN block per shape (`SHAPES`; the paper's: d 768, d_ff 3072, E 16, k 4, batch 8,
sequence 128) for each variant and implementation in `ROWS`, float32 on CPU by default. Every
model is built first; then the rounds interleave the configurations (round 1 times each once,
round 2 again, ...) and each configuration's samples are merged, so load from other processes
lands on all of them alike. Ratios are taken within this run only. Each configuration is timed
by the tool's own path (`step_timing.time_step`, `--timing auto`): on CUDA the step is replayed
from a CUDA graph where it can be captured, with the eager time and the kernel time beside it.

Printed per row: median latency (graph replay or eager, as `mode` says), the eager and kernel
times (CUDA; – on CPU), latency / dense, speedup over the fastest vanilla MoE, macs / vanilla
macs (the FLOPs ratio), the phase-wise roofline bound and measured / bound. Goals are functions
in `GOALS` over one shape's rows (issue 4: MEO's speedup over the fastest vanilla at least 0.75
of its FLOPs ratio; vanilla `grouped` within 1.3x of its bound); a new goal is one more entry.

    python benchmarks/bench_latency.py [--rounds 3] [--min-run-time 1.0] [--shapes paper,gpu]
                                       [--device cuda --dtype bfloat16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from meo_profile.models import Spec  # noqa: E402

from meo_profile.measure import process as allocator  # noqa: E402
from meo_profile.measure.analytic import count  # noqa: E402
from meo_profile.measure.process import CPU_ALLOCATORS  # noqa: E402
from meo_profile.measure.roofline import configuration_bound, device_peaks  # noqa: E402
from meo_profile.measure.step_timing import time_step  # noqa: E402
from meo_profile.measure.timing import TIMING_MODES, Timing, TimingOptions  # noqa: E402
from meo_profile.measure.workload import Workload  # noqa: E402
from meo_profile.results.record import environment  # noqa: E402

SHAPES = {
    "paper": dict(d_model=768, d_ff=3072, num_experts=16, top_k=4, batch_size=8, seq_len=128),
    # the `gpu` preset's layer (d 2048, d_ff 8192, batch 16, sequence 512) at its middle E, k 4
    "gpu": dict(d_model=2048, d_ff=8192, num_experts=32, top_k=4, batch_size=16, seq_len=512),
}
ROWS = [("dense", "native"), ("moe", "loop"), ("moe", "grouped"), ("moe-seq", "grouped"),
        ("meo", "gather"), ("meo", "dense")]
VANILLA = ("moe", "moe-seq")
MEO_SPEEDUP_GOAL = 0.75  # of the FLOPs ratio
GROUPED_ROOFLINE_GOAL = 1.3


@dataclass
class Row:
    """One configuration's timings merged over the rounds."""

    shape: str
    work: Workload
    timing: Timing | None = None  # what the record's latency reports (graph replay or eager)
    mode: str = "eager"
    eager: Timing | None = None
    kernel_ms: list[float] = field(default_factory=list)  # one per round

    @property
    def spec(self) -> Spec:
        return self.work.spec

    def add(self, stepped) -> None:
        """A round's StepTiming: raw samples merged (same timer), kernel times kept per round."""
        self.timing = stepped.timing if self.timing is None else self.timing.merge(stepped.timing)
        if stepped.eager is not None:
            self.eager = stepped.eager if self.eager is None else self.eager.merge(stepped.eager)
        if stepped.kernel_ms is not None:
            self.kernel_ms.append(stepped.kernel_ms)
        self.mode = stepped.mode


def measure_rows(base: Spec, shapes: list[str], rounds: int, options: TimingOptions,
                 console: Console) -> list[Row]:
    rows = [Row(shape, Workload.build(base.replace(**SHAPES[shape], variant=v, impl=i)))
            for shape in shapes for v, i in ROWS]
    for r in range(rounds):
        device_peaks(base.device, base.dtype, refresh=True)  # the best peaks seen in any round
        for row in rows:
            stepped = time_step(row.work, options)
            row.add(stepped)
            console.log(f"round {r + 1}/{rounds} {row.shape} {row.spec.variant} "
                        f"({row.spec.impl}, {stepped.mode}): {stepped.timing.median_ms:.3f} ms")
    return rows


def entry(row: Row) -> dict:
    """One row of the JSON output: times, counts and the phase-wise bound (distinct experts as
    the last timed call's routing touched them)."""
    bound = configuration_bound(row.spec, row.work.model)
    median = row.timing.median_ms
    eager_ms = None if row.eager is None else row.eager.median_ms
    kernel_ms = statistics.median(row.kernel_ms) if row.kernel_ms else None
    return {"shape": row.shape, "variant": row.spec.variant, "impl": row.spec.impl,
            "timing_mode": row.mode, "latency_ms_median": median,
            "latency_ms_p20": row.timing.p20_ms, "latency_ms_p80": row.timing.p80_ms,
            "latency_runs": row.timing.runs, "eager_ms_median": eager_ms,
            "graph_ms_median": median if row.mode == "graph" else None, "kernel_ms": kernel_ms,
            "launch_overhead": None if kernel_ms is None or not eager_ms
            else max(0.0, 1 - kernel_ms / eager_ms),
            "macs": count(row.spec).macs,
            "roofline_ms": None if bound is None else bound.bound_ms,
            "roofline_by_phase": None if bound is None else bound.by_phase_ms,
            "roofline_overlap_ms": None if bound is None else bound.overlap_ms,
            "roofline_ratio": None if bound is None else median / bound.bound_ms,
            "warnings": row.timing.warnings}


def with_ratios(entries: list[dict]) -> list[dict]:
    """Ratios within one shape: against the dense FFN and the fastest vanilla MoE."""
    dense = next(e for e in entries if e["variant"] == "dense")
    fastest = min((e for e in entries if e["variant"] in VANILLA),
                  key=lambda e: e["latency_ms_median"])
    for e in entries:
        e.update(over_dense=e["latency_ms_median"] / dense["latency_ms_median"],
                 speedup_over_fastest_vanilla=fastest["latency_ms_median"] / e["latency_ms_median"],
                 macs_over_vanilla=e["macs"] / fastest["macs"],
                 fastest_vanilla=f"{fastest['variant']} ({fastest['impl']})")
    return entries


# ------------------------------------------------------------------------------ goals
def meo_speedup_goal(entries: list[dict]) -> dict:
    """MEO's best implementation against the fastest vanilla, as a share of its FLOPs ratio."""
    best = max((e for e in entries if e["variant"] == "meo"),
               key=lambda e: e["speedup_over_fastest_vanilla"])
    flops_speedup = 1 / best["macs_over_vanilla"]
    vanilla = next(e for e in entries if f"{e['variant']} ({e['impl']})" == best["fastest_vanilla"])
    bound_ratio = (None if best["roofline_ms"] is None or vanilla["roofline_ms"] is None
                   else vanilla["roofline_ms"] / best["roofline_ms"])
    return {"fastest_vanilla": best["fastest_vanilla"], "meo_impl": best["impl"],
            "meo_speedup": best["speedup_over_fastest_vanilla"],
            "meo_flops_speedup": flops_speedup, "meo_bound_speedup": bound_ratio,
            # measured speedup as a share of what the hardware allows at both bounds
            "meo_speedup_over_bound_ratio": (None if bound_ratio is None else
                                             best["speedup_over_fastest_vanilla"] / bound_ratio),
            "meo_speedup_over_flops_speedup": best["speedup_over_fastest_vanilla"] / flops_speedup,
            "meo_goal_met": best["speedup_over_fastest_vanilla"] >= MEO_SPEEDUP_GOAL * flops_speedup}


def grouped_roofline_goal(entries: list[dict]) -> dict:
    grouped = next(e for e in entries if (e["variant"], e["impl"]) == ("moe", "grouped"))
    ratio = grouped["roofline_ratio"]
    return {"grouped_roofline_ratio": ratio,
            "grouped_goal_met": (ratio or float("inf")) <= GROUPED_ROOFLINE_GOAL}


GOALS: dict[str, Callable[[list[dict]], dict]] = {
    "meo_speedup": meo_speedup_goal,
    "grouped_roofline": grouped_roofline_goal,
}


def summarize(rows: list[Row]) -> dict:
    """Every row, and the goals per shape; the first shape's goals also at the top level (the
    key scripts have read since issue 4)."""
    shapes = list(dict.fromkeys(r.shape for r in rows))
    by_shape = {s: with_ratios([entry(r) for r in rows if r.shape == s]) for s in shapes}
    goals = {s: {k: v for goal in GOALS.values() for k, v in goal(by_shape[s]).items()}
             for s in shapes}
    return {"rows": [e for s in shapes for e in by_shape[s]], "goals": goals[shapes[0]],
            "goals_by_shape": goals}


# ------------------------------------------------------------------------------ output
def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}" if value < 10 else f"{value:.1f}"


def results_table(summary: dict, base: Spec) -> Table:
    table = Table(title=f"MoE layers, {base.dtype} {base.device}, "
                        f"{torch.get_num_threads()} threads; times in ms")
    for col in ("shape", "variant (impl)", "mode", "median (p20-p80)", "eager", "kernel",
                "launch", "x dense", "speedup vs vanilla", "macs / vanilla", "bound",
                "measured / bound"):
        table.add_column(col, justify="left" if col in ("shape", "variant (impl)", "mode") else "right")
    for e in summary["rows"]:
        table.add_row(e["shape"], f"{e['variant']} ({e['impl']})", e["timing_mode"],
                      f"{_ms(e['latency_ms_median'])} ({_ms(e['latency_ms_p20'])}-"
                      f"{_ms(e['latency_ms_p80'])})", _ms(e["eager_ms_median"]),
                      _ms(e["kernel_ms"]),
                      "-" if e["launch_overhead"] is None else f"{e['launch_overhead']:.0%}",
                      f"{e['over_dense']:.2f}", f"{e['speedup_over_fastest_vanilla']:.2f}",
                      f"{e['macs_over_vanilla']:.3f}", _ms(e["roofline_ms"]), _ratio(e))
    table.caption = "\n".join(goal_line(shape, g) for shape, g in summary["goals_by_shape"].items())
    return table


def _ratio(e: dict) -> str:
    """measured / bound; below 1 the measurement is broken (load slowed the peak probes or the
    timing), never a result: marked."""
    if e["roofline_ratio"] is None:
        return "-"
    return f"{e['roofline_ratio']:.2f}" + (" BELOW BOUND" if e["roofline_ratio"] < 1 else "")


def goal_line(shape: str, g: dict) -> str:
    bound = "" if g["meo_bound_speedup"] is None else f", at both bounds {g['meo_bound_speedup']:.2f}x"
    return (f"{shape}: MEO ({g['meo_impl']}) speedup over {g['fastest_vanilla']}: "
            f"{g['meo_speedup']:.2f}x; FLOPs ratio {g['meo_flops_speedup']:.2f}x{bound}; achieved "
            f"{g['meo_speedup_over_flops_speedup']:.0%} of FLOPs (goal >= {MEO_SPEEDUP_GOAL:.0%}: "
            f"{'met' if g['meo_goal_met'] else 'MISSED'}). moe (grouped) measured / bound "
            f"{g['grouped_roofline_ratio']:.2f} (goal <= {GROUPED_ROOFLINE_GOAL}: "
            f"{'met' if g['grouped_goal_met'] else 'MISSED'}).")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per round, at least")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--timing", choices=TIMING_MODES, default="auto", help="CUDA timing mode")
    parser.add_argument("--shapes", help=f"comma-separated, of {', '.join(SHAPES)}; default: "
                        "paper on CPU, paper,gpu on CUDA")
    parser.add_argument("--malloc", choices=CPU_ALLOCATORS, default="retain",
                        help="CPU malloc setting, as the tool times by default (see meo_profile/allocator.py)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    shapes = (args.shapes or ("paper,gpu" if args.device == "cuda" else "paper")).split(",")
    if unknown := [s for s in shapes if s not in SHAPES]:
        parser.error(f"--shapes {','.join(unknown)}: choose from {', '.join(SHAPES)}")
    console = Console(stderr=True)
    base = Spec(host="layer", variant="meo", dtype=args.dtype, device=args.device)
    options = TimingOptions(warmup=args.warmup, min_run_time=args.min_run_time,
                            timing_mode=args.timing)
    in_force = allocator.apply(args.malloc)
    load_before = os.getloadavg()[0]  # other processes' load: the ratios' main noise source
    rows = measure_rows(base, shapes, args.rounds, options, console)
    load_after = os.getloadavg()[0]
    peaks = device_peaks(base.device, base.dtype)
    summary = summarize(rows)
    Console(width=180).print(results_table(summary, base))
    Console(width=180).print(
        f"peaks: {peaks.macs_per_s / 1e9:.1f} GMAC/s, {peaks.bytes_per_s / 1e9:.1f} GB/s; "
        f"malloc {in_force}; load average {load_before:.2f} before, {load_after:.2f} after; "
        f"{args.rounds} rounds of >= {args.min_run_time} s")
    if args.json:
        payload = {"config": base.to_dict(), "shapes": {s: SHAPES[s] for s in shapes},
                   "environment": environment(base.device), "malloc": in_force,
                   "load_average": [load_before, load_after],
                   "peaks": {"macs_per_s": peaks.macs_per_s, "bytes_per_s": peaks.bytes_per_s},
                   "rounds": args.rounds, "min_run_time_s": args.min_run_time, **summary}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
