"""What routing does to vanilla MoE and MEO at the MEO paper's layer size: latency, the phase-wise
bound from the routing that ran, distinct experts touched and the busiest expert's load, under
uniform, skewed (zipf 1.5) and local (uniform, local 0.9) routing.

One MoE FFN block (d 768, d_ff 3072, E 16, k 4, batch 8, sequence 128; linear experts, as the
paper's) for each (variant, implementation) in `ROWS` and each routing in `ROUTINGS`, float32 on
CPU by default. Every model is built first (its routing drawn then); the rounds interleave the
configurations and merge each one's samples, so load from other processes lands on all alike.
Ratios are taken within this run only: MEO's speedup is over the fastest vanilla implementation
under the same routing, and "vs uniform" is how far that speedup moves from uniform routing.

    python benchmarks/bench_routing.py [--rounds 2] [--min-run-time 0.5] [--device cuda
                                        --dtype bfloat16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from meo_profile.models import Spec  # noqa: E402

from meo_profile.measure import process as allocator  # noqa: E402
from meo_profile.measure.roofline import configuration_bound, device_peaks  # noqa: E402
from meo_profile.measure.routing.stats import routing_fields  # noqa: E402
from meo_profile.measure.step_timing import time_step  # noqa: E402
from meo_profile.measure.timing import Timing, TimingOptions  # noqa: E402
from meo_profile.measure.workload import Workload  # noqa: E402
from meo_profile.results.record import environment  # noqa: E402

PAPER_LAYER = dict(host="layer", d_model=768, d_ff=3072, num_experts=16, top_k=4, batch_size=8,
                   seq_len=128)
ROWS = [("moe", "grouped"), ("moe", "loop"), ("meo", "gather"), ("meo", "dense")]
ROUTINGS = ["uniform", "zipf:1.5", "uniform,local:0.9"]


def measure(base: Spec, rounds: int, options: TimingOptions, console: Console) -> list[dict]:
    works = [Workload.build(base.replace(variant=v, impl=i, routing=r))
             for r in ROUTINGS for v, i in ROWS]
    timings: list[Timing | None] = [None] * len(works)
    for round_ in range(rounds):
        device_peaks(base.device, base.dtype, refresh=True)  # the best peaks seen in any round
        for n, work in enumerate(works):
            stepped = time_step(work, options)
            timings[n] = stepped.timing if timings[n] is None else timings[n].merge(stepped.timing)
            console.log(f"round {round_ + 1}/{rounds} {work.spec.routing} {work.spec.variant} "
                        f"({work.spec.impl}): {stepped.timing.median_ms:.3f} ms")
    return [entry(work, timing) for work, timing in zip(works, timings, strict=True)]


def entry(work: Workload, timing: Timing) -> dict:
    """One configuration: its times, its bound and the statistics of the routing that ran."""
    bound = configuration_bound(work.spec, work.model)
    return {"routing": work.spec.routing, "variant": work.spec.variant, "impl": work.spec.impl,
            "latency_ms_median": timing.median_ms, "latency_ms_p20": timing.p20_ms,
            "latency_ms_p80": timing.p80_ms, "latency_runs": timing.runs,
            "roofline_ms": bound.bound_ms, "roofline_ratio": timing.median_ms / bound.bound_ms,
            **routing_fields(work.model, work.spec), "warnings": timing.warnings}


def with_speedups(entries: list[dict]) -> list[dict]:
    """MEO's speedup over the fastest vanilla implementation under the same routing, and how
    that speedup moves from uniform routing."""
    fastest = {r: min((e for e in entries if e["routing"] == r and e["variant"] == "moe"),
                      key=lambda e: e["latency_ms_median"]) for r in ROUTINGS}
    for e in entries:
        e["speedup_over_fastest_vanilla"] = (fastest[e["routing"]]["latency_ms_median"]
                                             / e["latency_ms_median"])
    base = {(e["variant"], e["impl"]): e["speedup_over_fastest_vanilla"]
            for e in entries if e["routing"] == ROUTINGS[0]}
    for e in entries:
        e["speedup_vs_uniform"] = e["speedup_over_fastest_vanilla"] / base[e["variant"], e["impl"]] - 1
    return entries


def results_table(entries: list[dict], base: Spec) -> Table:
    table = Table(title=f"paper layer, {base.dtype} {base.device}, {torch.get_num_threads()} "
                        "threads; times in ms")
    for col in ("routing", "variant (impl)", "median (p20-p80)", "bound", "measured / bound",
                "experts touched", "load max/mean", "experts/seq", "speedup vs fastest moe",
                "vs uniform"):
        table.add_column(col, justify="left" if col in ("routing", "variant (impl)") else "right")
    for e in entries:
        table.add_row(e["routing"], f"{e['variant']} ({e['impl']})",
                      f"{e['latency_ms_median']:.1f} ({e['latency_ms_p20']:.1f}-"
                      f"{e['latency_ms_p80']:.1f})", f"{e['roofline_ms']:.1f}",
                      f"{e['roofline_ratio']:.2f}" + (" BELOW BOUND" if e["roofline_ratio"] < 1 else ""),
                      f"{e['experts_touched_mean']:.1f}", f"{e['expert_load_max_over_mean']:.2f}",
                      f"{e['experts_per_sequence_mean']:.1f}",
                      f"{e['speedup_over_fastest_vanilla']:.2f}", f"{e['speedup_vs_uniform']:+.1%}")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per configuration")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per round, at least")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    console = Console(stderr=True)
    base = Spec(**PAPER_LAYER, dtype=args.dtype, device=args.device)
    options = TimingOptions(warmup=args.warmup, min_run_time=args.min_run_time)
    in_force = allocator.apply("retain")
    load_before = os.getloadavg()[0]  # other processes' load: the ratios' main noise source
    entries = with_speedups(measure(base, args.rounds, options, console))
    load_after = os.getloadavg()[0]
    peaks = device_peaks(base.device, base.dtype)
    Console(width=200).print(results_table(entries, base))
    Console(width=200).print(
        f"peaks: {peaks.macs_per_s / 1e9:.1f} GMAC/s, {peaks.bytes_per_s / 1e9:.1f} GB/s; "
        f"malloc {in_force}; load average {load_before:.2f} before, {load_after:.2f} after; "
        f"{args.rounds} rounds of >= {args.min_run_time} s")
    if args.json:
        payload = {"config": base.to_dict(), "environment": environment(base.device),
                   "load_average": [load_before, load_after],
                   "peaks": {"macs_per_s": peaks.macs_per_s, "bytes_per_s": peaks.bytes_per_s},
                   "rounds": args.rounds, "min_run_time_s": args.min_run_time, "rows": entries}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
