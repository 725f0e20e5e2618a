"""Where merging pays off, measured: MEO against the fastest vanilla MoE over batch × regime at the
MEO paper's layer (and, on CUDA, at the `gpu` preset's), each side's measured / bound.

A cell is a batch B and a regime: a decode step after C = 128 tokens (MEO merging again every
step, or keeping each sequence's merged expert from its prompt) or a prefill of L tokens per
sequence (the `regimes` preset's axes, `sweep/presets.py`). Per cell every implementation of
vanilla MoE (`grouped`, `loop`), MEO (`gather`, `dense`) and the dense FFN is built, then timed
in interleaved rounds (round 1 times each once, round 2 again...) through the tool's own path
(`step_timing.time_step`); samples merge over rounds and the fastest implementation of each
variant is the cell's. Cells are built one at a time (a B=64 cell holds 64 merged experts per
layer). Ratios are taken within a cell, never across runs.

Printed per cell: vanilla and MEO median ms with their implementation and measured / phase-wise
bound, MEO's speedup, the speedup the bounds predict (vanilla bound / MEO bound), the dense
FFN's ms, and the merged experts MEO keeps (reuse). On a CPU, prefills above `--most-tokens`
tokens per forward (B·L, default 2048) are left out, as the preset leaves them.

    python benchmarks/bench_regimes.py [--rounds 2] [--min-run-time 0.5] [--shapes paper,gpu]
                                       [--device cuda --dtype bfloat16] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from meo_profile.models import Spec  # noqa: E402
from meo_profile.models.decode import merged_cache_bytes  # noqa: E402

from meo_profile.core.units import human_bytes  # noqa: E402
from meo_profile.measure.roofline import configuration_bound, device_peaks  # noqa: E402
from meo_profile.measure.step_timing import time_step  # noqa: E402
from meo_profile.measure.timing import Timing, TimingOptions  # noqa: E402
from meo_profile.measure.workload import Workload  # noqa: E402
from meo_profile.results.record import environment  # noqa: E402
from meo_profile.sweep.presets import REGIME_BATCHES, REGIME_CONTEXT, REGIME_LENGTHS  # noqa: E402

SHAPES = {"paper": dict(d_model=768, d_ff=3072), "gpu": dict(d_model=2048, d_ff=8192)}
LAYER = dict(host="layer", num_experts=16, top_k=4)
IMPLS = {"moe": ("grouped", "loop"), "meo": ("gather", "dense"), "dense": ("native",)}
REGIMES = {"decode, merged every step": dict(workload="decode", seq_len=REGIME_CONTEXT,
                                             merge_reuse="step"),
           "decode, merge kept": dict(workload="decode", seq_len=REGIME_CONTEXT,
                                      merge_reuse="sequence"),
           **{f"L={L}": dict(seq_len=L) for L in REGIME_LENGTHS}}


@dataclass
class Candidate:
    work: Workload
    timing: Timing | None = None

    def add(self, timing: Timing) -> None:
        self.timing = timing if self.timing is None else self.timing.merge(timing)


@dataclass
class Cell:
    shape: str
    batch: int
    regime: str
    best: dict[str, dict] = field(default_factory=dict)  # variant -> its fastest, as printed


def cell_specs(base: Spec, shape: str, batch: int, regime: str) -> list[Spec]:
    fields = {**LAYER, **SHAPES[shape], "batch_size": batch, **REGIMES[regime]}
    out = []
    for variant, impls in IMPLS.items():
        reuse = fields.get("merge_reuse") if variant == "meo" else None
        out += [base.replace(**{**fields, "merge_reuse": reuse}, variant=variant, impl=impl)
                for impl in impls]
    return out


def measure_cell(base: Spec, cell: Cell, rounds: int, options: TimingOptions,
                 console: Console) -> Cell:
    candidates = [Candidate(Workload.build(s)) for s in cell_specs(base, cell.shape, cell.batch,
                                                                  cell.regime)]
    # the best peaks seen so far: load from other processes only hides them, and a bound from
    # peaks probed under load would pass a later, quieter measurement as below it
    device_peaks(base.device, base.dtype, refresh=True)
    for r in range(rounds):
        for c in candidates:
            c.add(time_step(c.work, options).timing)
        console.log(f"{cell.shape} B={cell.batch} {cell.regime}: round {r + 1}/{rounds}")
    for c in candidates:
        spec, median = c.work.spec, c.timing.median_ms
        held = cell.best.get(spec.variant)
        if held is None or median < held["ms"]:
            bound = configuration_bound(spec, c.work.model)
            cell.best[spec.variant] = {
                "impl": spec.impl, "ms": median, "bound_ms": bound.bound_ms,
                "over_bound": median / bound.bound_ms, "warnings": c.timing.warnings,
                "merged_cache_bytes": merged_cache_bytes(c.work.model, spec)}
    return cell


def cells(shapes: list[str], most_tokens: int | None) -> list[Cell]:
    """Every (shape, B, regime), less the prefills above `most_tokens` tokens per forward."""
    def within(b: int, regime: str) -> bool:
        prefill = "workload" not in REGIMES[regime]
        return most_tokens is None or not prefill or b * REGIMES[regime]["seq_len"] <= most_tokens

    return [Cell(shape, b, regime) for shape in shapes for b in REGIME_BATCHES
            for regime in REGIMES if within(b, regime)]


def entry(cell: Cell) -> dict:
    vanilla, meo, dense = (cell.best[v] for v in ("moe", "meo", "dense"))
    return {"shape": cell.shape, "batch_size": cell.batch, "regime": cell.regime,
            "vanilla": vanilla, "meo": meo, "dense_ms": dense["ms"],
            "speedup": vanilla["ms"] / meo["ms"],
            "bound_speedup": vanilla["bound_ms"] / meo["bound_ms"]}


def results_table(entries: list[dict], base: Spec) -> Table:
    table = Table(title=f"Where merging pays off: layer E 16 k 4, {base.dtype} {base.device}; "
                        "times in ms; decode after 128 tokens")
    for col in ("shape", "B", "regime", "vanilla ms (impl)", "vanilla / bound", "MEO ms (impl)",
                "MEO / bound", "speedup", "bound ratio", "dense ms", "merged experts kept"):
        table.add_column(col, justify="left" if col in ("shape", "regime") else "right")
    for e in entries:
        v, m = e["vanilla"], e["meo"]
        kept = m["merged_cache_bytes"]
        table.add_row(e["shape"], str(e["batch_size"]), e["regime"], f"{v['ms']:.3g} ({v['impl']})",
                      _over(v), f"{m['ms']:.3g} ({m['impl']})", _over(m), f"{e['speedup']:.2f}x",
                      f"{e['bound_speedup']:.2f}x", f"{e['dense_ms']:.3g}",
                      human_bytes(kept) if kept else "-")
    return table


def _over(side: dict) -> str:
    """measured / bound; below 1 a broken measurement (load slowed the peak probes): marked."""
    return f"{side['over_bound']:.2f}" + (" BELOW BOUND" if side["over_bound"] < 1 else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds per cell")
    parser.add_argument("--min-run-time", type=float, default=0.5, help="seconds per round, at least")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--shapes", help=f"comma-separated, of {', '.join(SHAPES)}; default: "
                        "paper on CPU, paper,gpu on CUDA")
    parser.add_argument("--most-tokens", type=int, help="leave out prefills above this B·L "
                        "(default 2048 on CPU, none on CUDA)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    shapes = (args.shapes or ("paper,gpu" if args.device == "cuda" else "paper")).split(",")
    if unknown := [s for s in shapes if s not in SHAPES]:
        parser.error(f"--shapes {','.join(unknown)}: choose from {', '.join(SHAPES)}")
    most = args.most_tokens if args.most_tokens is not None else (
        None if args.device == "cuda" else 2048)
    console = Console(stderr=True)
    base = Spec(dtype=args.dtype, device=args.device)
    options = TimingOptions(warmup=args.warmup, min_run_time=args.min_run_time)
    load_before = os.getloadavg()[0]  # other processes' load: the ratios' main noise source
    peaks = device_peaks(base.device, base.dtype)
    entries = [entry(measure_cell(base, c, args.rounds, options, console))
               for c in cells(shapes, most)]
    load_after = os.getloadavg()[0]
    Console(width=200).print(results_table(entries, base))
    Console(width=200).print(
        f"peaks: {peaks.macs_per_s / 1e9:.1f} GMAC/s, {peaks.bytes_per_s / 1e9:.1f} GB/s; load "
        f"average {load_before:.2f} before, {load_after:.2f} after; {args.rounds} rounds of "
        f">= {args.min_run_time} s per implementation; prefills above B·L {most} left out")
    if args.json:
        payload = {"environment": environment(base.device), "load_average": [load_before, load_after],
                   "peaks": {"macs_per_s": peaks.macs_per_s, "bytes_per_s": peaks.bytes_per_s},
                   "rounds": args.rounds, "min_run_time_s": args.min_run_time, "cells": entries}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
