"""Latency at the MEO paper's layer size on this machine: does MEO's FLOPs saving become time?

One MoE FFN block (d 768, d_ff 3072, E 16, k 4, batch 8, sequence 128, float32, CPU by default)
for each variant and implementation below. Every model is built first; then the rounds
interleave the configurations (round 1 times each once, round 2 again, ...) and each
configuration's samples are merged, so load from other processes lands on all of them alike.
Ratios are taken within this run only.

Printed per row: median latency, latency / dense, speedup over the fastest vanilla MoE,
macs / vanilla macs (the FLOPs ratio), measured / roofline bound. Goals (issue 4): MEO's speedup
over the fastest vanilla at least 0.75 of its FLOPs ratio (vanilla macs / MEO macs); vanilla
`grouped` within 1.3x of its roofline bound.

    python benchmarks/bench_latency.py [--rounds 3] [--min-run-time 1.0] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from meo_profile.measure import process as allocator  # noqa: E402
from meo_profile.measure.analytic import count  # noqa: E402
from meo_profile.measure.process import CPU_ALLOCATORS  # noqa: E402
from meo_profile.measure.roofline import configuration_bound, device_peaks  # noqa: E402
from meo_profile.measure.timing import Timing, TimingOptions, time_call  # noqa: E402
from meo_profile.measure.workload import Workload  # noqa: E402
from meo_profile.results.record import environment  # noqa: E402
from models import Spec  # noqa: E402

PAPER_LAYER = dict(host="layer", d_model=768, d_ff=3072, num_experts=16, top_k=4, batch_size=8,
                   seq_len=128)
ROWS = [("dense", "native"), ("moe", "loop"), ("moe", "grouped"), ("moe-seq", "grouped"),
        ("meo", "gather"), ("meo", "dense")]
VANILLA = ("moe", "moe-seq")
MEO_SPEEDUP_GOAL = 0.75  # of the FLOPs ratio
GROUPED_ROOFLINE_GOAL = 1.3




@dataclass
class Row:
    spec: Spec
    timing: Timing
    macs: int
    roofline_ms: float | None

    @property
    def name(self) -> str:
        return f"{self.spec.variant} ({self.spec.impl})"

    @property
    def median_ms(self) -> float:
        return self.timing.median_ms


def measure_rows(base: Spec, rounds: int, options: TimingOptions, console: Console) -> list[Row]:
    works = [Workload.build(base.replace(variant=v, impl=i)) for v, i in ROWS]
    timings: list[Timing | None] = [None] * len(works)
    for r in range(rounds):
        device_peaks(base.device, base.dtype, refresh=True)  # the best peaks seen in any round
        for j, work in enumerate(works):
            t = time_call(work.step, base.device, options)
            timings[j] = t if timings[j] is None else timings[j].merge(t)
            console.log(f"round {r + 1}/{rounds} {work.spec.variant} ({work.spec.impl}): "
                        f"{t.median_ms:.1f} ms")
    rows = []
    for work, timing in zip(works, timings):
        bound = configuration_bound(work.spec, work.model)
        rows.append(Row(work.spec, timing, count(work.spec).macs,
                        None if bound is None else bound.bound_ms))
    return rows


def summarize(rows: list[Row]) -> dict:
    """Ratios within this run, and the two goals."""
    dense = next(r for r in rows if r.spec.variant == "dense")
    fastest_vanilla = min((r for r in rows if r.spec.variant in VANILLA), key=lambda r: r.median_ms)
    table = []
    for r in rows:
        entry = {"variant": r.spec.variant, "impl": r.spec.impl, "latency_ms_median": r.median_ms,
                 "latency_ms_p20": r.timing.p20_ms, "latency_ms_p80": r.timing.p80_ms,
                 "latency_runs": r.timing.runs, "over_dense": r.median_ms / dense.median_ms,
                 "speedup_over_fastest_vanilla": fastest_vanilla.median_ms / r.median_ms,
                 "macs": r.macs, "macs_over_vanilla": r.macs / fastest_vanilla.macs,
                 "roofline_ms": r.roofline_ms,
                 "roofline_ratio": None if r.roofline_ms is None else r.median_ms / r.roofline_ms,
                 "warnings": r.timing.warnings}
        table.append(entry)
    meo = [e for e in table if e["variant"] == "meo"]
    best_meo = max(meo, key=lambda e: e["speedup_over_fastest_vanilla"])
    flops_speedup = 1 / best_meo["macs_over_vanilla"]
    grouped = next(e for e in table if (e["variant"], e["impl"]) == ("moe", "grouped"))
    goals = {
        "fastest_vanilla": f"{fastest_vanilla.spec.variant} ({fastest_vanilla.spec.impl})",
        "meo_impl": best_meo["impl"],
        "meo_speedup": best_meo["speedup_over_fastest_vanilla"],
        "meo_flops_speedup": flops_speedup,
        "meo_speedup_over_flops_speedup": best_meo["speedup_over_fastest_vanilla"] / flops_speedup,
        # the bounds' ratio (fastest vanilla's bound over MEO's): what MEO's speedup could be here
        "meo_speedup_over_bound_ratio": _over_bound_ratio(best_meo, table, fastest_vanilla),
        "meo_goal_met": best_meo["speedup_over_fastest_vanilla"] >= MEO_SPEEDUP_GOAL * flops_speedup,
        "grouped_roofline_ratio": grouped["roofline_ratio"],
        "grouped_goal_met": (grouped["roofline_ratio"] or float("inf")) <= GROUPED_ROOFLINE_GOAL,
    }
    return {"rows": table, "goals": goals}


def _over_bound_ratio(meo: dict, table: list[dict], fastest_vanilla: Row) -> float | None:
    vanilla = next(e for e in table if (e["variant"], e["impl"]) == (fastest_vanilla.spec.variant,
                                                                    fastest_vanilla.spec.impl))
    if meo["roofline_ms"] is None or vanilla["roofline_ms"] is None:
        return None
    return meo["speedup_over_fastest_vanilla"] / (vanilla["roofline_ms"] / meo["roofline_ms"])


def results_table(summary: dict, base: Spec) -> Table:
    table = Table(title=f"layer d={base.d_model} d_ff={base.d_ff} E={base.num_experts} "
                        f"k={base.top_k} B={base.batch_size} L={base.seq_len} {base.dtype} "
                        f"{base.device}, {torch.get_num_threads()} threads")
    for col in ("variant (impl)", "median ms", "p20-p80 ms", "x dense", "speedup vs vanilla",
                "macs / vanilla", "bound ms", "measured / bound"):
        table.add_column(col, justify="left" if col.startswith("variant") else "right")
    for e in summary["rows"]:
        bound = "-" if e["roofline_ms"] is None else f"{e['roofline_ms']:.1f}"
        ratio = "-" if e["roofline_ratio"] is None else f"{e['roofline_ratio']:.2f}"
        table.add_row(f"{e['variant']} ({e['impl']})", f"{e['latency_ms_median']:.1f}",
                      f"{e['latency_ms_p20']:.1f}-{e['latency_ms_p80']:.1f}",
                      f"{e['over_dense']:.2f}", f"{e['speedup_over_fastest_vanilla']:.2f}",
                      f"{e['macs_over_vanilla']:.3f}", bound, ratio)
    g = summary["goals"]
    table.caption = (
        f"MEO ({g['meo_impl']}) speedup over {g['fastest_vanilla']}: {g['meo_speedup']:.2f}x; "
        f"FLOPs ratio {g['meo_flops_speedup']:.2f}x; achieved {g['meo_speedup_over_flops_speedup']:.0%} "
        f"(goal >= {MEO_SPEEDUP_GOAL:.0%}: {'met' if g['meo_goal_met'] else 'MISSED'}). "
        f"moe (grouped) measured / bound {g['grouped_roofline_ratio']:.2f} "
        f"(goal <= {GROUPED_ROOFLINE_GOAL}: {'met' if g['grouped_goal_met'] else 'MISSED'}).")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds per configuration")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per round, at least")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--malloc", choices=CPU_ALLOCATORS, default="retain",
                        help="CPU malloc setting, as the tool times by default (see meo_profile/allocator.py)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    base = Spec(**PAPER_LAYER, variant="meo", dtype=args.dtype, device=args.device)
    options = TimingOptions(warmup=args.warmup, min_run_time=args.min_run_time)
    in_force = allocator.apply(args.malloc)
    load_before = os.getloadavg()[0]  # other processes' load: the ratios' main noise source
    rows = measure_rows(base, args.rounds, options, console)
    load_after = os.getloadavg()[0]
    peaks = device_peaks(base.device, base.dtype)
    summary = summarize(rows)
    Console(width=150).print(results_table(summary, base))
    Console(width=150).print(
        f"peaks: {peaks.macs_per_s / 1e9:.1f} GMAC/s, {peaks.bytes_per_s / 1e9:.1f} GB/s; "
        f"malloc {in_force}; load average {load_before:.2f} before, {load_after:.2f} after; "
        f"{args.rounds} rounds of >= {args.min_run_time} s")
    if args.json:
        payload = {"config": base.to_dict(), "environment": environment(base.device),
                   "malloc": in_force, "load_average": [load_before, load_after],
                   "peaks": {"macs_per_s": peaks.macs_per_s, "bytes_per_s": peaks.bytes_per_s},
                   "rounds": args.rounds, "min_run_time_s": args.min_run_time, **summary}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
