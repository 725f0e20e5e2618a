"""Is every implementation near this machine's limit? Per implementation: ms, TFLOP/s, GB/s,
measured / bound, and MEO's speedup over the fastest vanilla MoE beside the bounds' ratio.

Cases (`--cases`, comma-separated):
- paper: the MEO paper's layer (d 768, d_ff 3072, E 16, k 4, B 8, L 128): every implementation
  of dense, moe, moe-seq and meo that runs here (the fused merge on CUDA only);
- gpu: the `gpu` preset's layer grid (d 2048, d_ff 8192, B 16, L 512; E 8/32/128 x k 1..16);
- olmoe: OLMoE's experts (hidden 2048, expert width 1024, 64 SwiGLU experts, top-8, 4096
  tokens), the project's dispatches beside transformers' own experts kernels (hf-*), same
  weights and routing, and MEO merging them.
Each case also times MEO's merges alone against their bytes bound: the distinct experts the
routing touched read once, B merged matrices written.

Bound (`bound_ms`): the project's phase-wise roofline (measure/roofline.py, phase_work.py):
phases run one after another, so the bound is the sum over phases of
    max(phase MACs / matmul peak, phase bytes / bandwidth)
with the experts' bytes counted once per distinct expert the routing touched, activations,
merged weights written, and peaks measured here (matmul of the dtype, copy bandwidth). The
merges alone and OLMoE's experts (built without a Spec) state their phases' work the same way.
TFLOP/s counts 2 x the non-merge multiply-adds; GB/s the bytes the bound counts.

Timing: CPU, torch.utils.benchmark with all threads, in interleaved rounds (load from other
processes lands on every row alike); CUDA, CUDA events, and with --graph the call replayed from
a CUDA graph where it can be captured (no launch overhead; loops with host syncs cannot).

    python benchmarks/bench_kernels.py                                     # CPU, paper, float32
    python benchmarks/bench_kernels.py --json kernels-cpu.json
CUDA runs (for a GPU checks script):
    python benchmarks/bench_kernels.py --device cuda --dtype bfloat16 --cases paper --graph --json kernels-paper-bf16.json
    python benchmarks/bench_kernels.py --device cuda --dtype bfloat16 --cases olmoe --graph --json kernels-olmoe-bf16.json
    python benchmarks/bench_kernels.py --device cuda --dtype bfloat16 --cases gpu --graph --no-loop --json kernels-gpu-bf16.json
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

from meo_profile.models import Spec, build_model, sparse_layers  # noqa: E402
from meo_profile.models.experts import ExpertBank  # noqa: E402
from meo_profile.models.layers import MergedExperts, TokenMoE  # noqa: E402
from meo_profile.models.routing import Router  # noqa: E402
from meo_profile.models.variants import CUDA_ONLY, VARIANTS  # noqa: E402

from meo_profile.measure import process  # noqa: E402
from meo_profile.measure.phase_work import Work, expected_distinct, phase_work  # noqa: E402
from meo_profile.measure.roofline import DevicePeaks, device_peaks  # noqa: E402
from meo_profile.measure.timing import Timing, TimingOptions, time_call  # noqa: E402
from meo_profile.measure.workload import Workload  # noqa: E402
from meo_profile.results.record import environment  # noqa: E402

PAPER = dict(host="layer", d_model=768, d_ff=3072, num_experts=16, top_k=4, batch_size=8,
             seq_len=128)
GPU_PRESET = dict(host="layer", d_model=2048, d_ff=8192, batch_size=16, seq_len=512)
GPU_GRID = [(E, k) for E in (8, 32, 128) for k in (1, 2, 4, 8, 16) if k <= E]
OLMOE = dict(hidden=2048, width=1024, experts=64, top_k=8, batch=8, seq=512)
VARIANT_ROWS = ("dense", "moe", "moe-seq", "meo")
VANILLA = ("moe", "moe-seq")
GOALS = {"cuda_fused_merge_over_bound": 1.3, "cuda_grouped_over_bound": 1.5,
         "cuda_olmoe_share_of_matmul_peak": 0.45, "cpu_over_bound": 1.3,
         "meo_speedup_over_bound_ratio": 0.9}


@dataclass
class Row:
    case: str
    name: str  # "variant (impl)" or "merge (impl)"
    step: Callable[[], object] = field(repr=False)
    work: dict[str, Work]  # phase -> multiply-adds and bytes it must move at least
    timing: Timing | None = None
    graph_ms: float | None = None

    @property
    def macs(self) -> float:
        """Multiply-adds outside the merge: the matmul work TFLOP/s is about."""
        return sum(w.macs for phase, w in self.work.items() if phase != "merge")

    @property
    def bytes(self) -> float:
        return sum(w.bytes for w in self.work.values())

    @property
    def ms(self) -> float:
        return self.graph_ms if self.graph_ms is not None else self.timing.median_ms


# ---------------------------------------------------------------------------------- the bound
def bound_ms(row: Row, peaks: DevicePeaks) -> float:
    """The phase-wise bound of the row's work (see the module doc)."""
    return 1e3 * sum(max(w.macs / peaks.macs_per_s, w.bytes / peaks.bytes_per_s)
                     for w in row.work.values())


# ---------------------------------------------------------------------------------- the rows
def runnable(variant: str, spec: Spec, loops: bool) -> list[str]:
    v = VARIANTS[variant]
    return [impl for impl in v.impls if v.unavailable(impl, spec) is None
            and (impl not in CUDA_ONLY or spec.device == "cuda") and (loops or impl != "loop")]


def spec_rows(case: str, base: Spec, loops: bool) -> list[Row]:
    rows = []
    for variant in VARIANT_ROWS:
        for impl in runnable(variant, base.replace(variant=variant), loops):
            spec = base.replace(variant=variant, impl=impl)
            work = Workload.build(spec)
            rows.append(Row(case, f"{variant} ({impl})", work.step, phase_work(spec, work.model)))
    return rows + merge_rows(case, base)


def merge_rows(case: str, base: Spec) -> list[Row]:
    """Each merge alone, over every MoE layer of the model, on per-sequence random routing."""
    spec = base.replace(variant="meo", impl="gather")
    model = build_model(spec)
    banks = [layer.experts for layer in sparse_layers(model)]
    gen = torch.Generator().manual_seed(spec.seed)
    scores = torch.rand(spec.batch_size, spec.num_experts, generator=gen)
    index = scores.topk(spec.top_k, dim=-1).indices.to(spec.device)
    gates = scores.gather(1, index.cpu()).softmax(-1).to(device=spec.device,
                                                         dtype=banks[0].weights[0].dtype)
    rows = []
    for impl in runnable("meo", spec, loops=True):
        def step(impl=impl):
            with torch.inference_mode():
                return [bank.merge(index, gates, impl) for bank in banks]
        distinct = index.unique().numel()
        itemsize = gates.element_size()
        moved = sum((distinct + spec.batch_size) * b.expert_numel * itemsize for b in banks)
        rows.append(Row(case, f"merge ({impl})", step, {"merge": Work(0, moved)}))
    return rows


def olmoe_rows(device: str, dtype: torch.dtype, loops: bool, scale: int = 1) -> list[Row]:
    """OLMoE's experts, one MoE layer, the same weights and routing for every implementation."""
    H, F = OLMOE["hidden"] // scale, OLMOE["width"] // scale  # hidden, expert width
    E, k = OLMOE["experts"], OLMOE["top_k"]
    B, T = OLMOE["batch"], OLMOE["seq"] // scale
    torch.manual_seed(0)
    with torch.device(device):
        bank = ExpertBank(E, [H, F, H], act=torch.nn.SiLU(), bias=False, gated=True).to(dtype)
        router = Router(H, E, k, gates="softmax_topk").to(dtype)
        x = torch.randn(B, T, H, dtype=dtype)
    itemsize, N, P = x.element_size(), B * T, 3 * H * F  # SwiGLU: gate, up, down
    activations = N * k * (H + 2 * F + F + H) * itemsize + N * H * itemsize
    rows = []
    impls = [i for i in VARIANTS["moe"].impls if loops or i not in ("loop", "hf-eager")]
    if N * k * P * itemsize > 8 * 2**30:  # batched_mm gathers N*k experts' matrices
        impls = [i for i in impls if i != "hf-batched_mm"]
    for impl in impls:
        layer = TokenMoE(bank, router, impl)
        experts = Work(N * k * P, expected_distinct(E, k, N) * P * itemsize + activations)
        rows.append(Row("olmoe", f"moe ({impl})", _inference(layer, x), {"experts": experts}))
    merges = [i for i in VARIANTS["meo"].impls if i not in CUDA_ONLY or device == "cuda"]
    for impl in merges:
        layer = MergedExperts(bank, router, impl)
        merge = (expected_distinct(E, k, B) + B) * P * itemsize
        experts = Work(N * P, B * P * itemsize + N * (2 * H + 3 * F) * itemsize)
        rows.append(Row("olmoe", f"meo ({impl})", _inference(layer, x),
                        {"merge": Work(0, merge), "experts": experts}))
    return rows


def _inference(module, x) -> Callable[[], object]:
    def step():
        with torch.inference_mode():
            return module(x)
    return step


# ---------------------------------------------------------------------------------- timing
def graph_ms(fn: Callable[[], object], calls: int = 10, reps: int = 10) -> float | None:
    """Median ms per call replayed from a CUDA graph of `calls` calls; None if not capturable."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            for _ in range(calls):
                fn()
    except Exception:  # a host sync inside (loops, data-dependent shapes): eager only
        torch.cuda.synchronize()
        return None
    times = []
    for _ in range(reps):
        start, end = (torch.cuda.Event(enable_timing=True) for _ in range(2))
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / calls)
    return statistics.median(times)


def time_rows(rows: list[Row], device: str, rounds: int, options: TimingOptions,
              graph: bool, console: Console) -> None:
    for r in range(rounds):
        for row in rows:
            try:
                t = time_call(row.step, device, options)
            except (RuntimeError, MemoryError) as e:  # one row failing keeps the others
                console.log(f"{row.case} {row.name}: failed: {str(e).splitlines()[0][:120]}")
                continue
            row.timing = t if row.timing is None else row.timing.merge(t)
            console.log(f"round {r + 1}/{rounds} {row.case} {row.name}: {t.median_ms:.3f} ms")
    if graph and device == "cuda":
        for row in rows:
            if row.timing is not None:
                row.graph_ms = graph_ms(row.step)


# --------------------------------------------------------------------------------- summary
def summarize(rows: list[Row], peaks: DevicePeaks) -> dict:
    table = []
    for row in (r for r in rows if r.timing is not None):
        bound = bound_ms(row, peaks)
        table.append({"case": row.case, "name": row.name, "ms": row.ms,
                      "eager_ms": row.timing.median_ms, "graph_ms": row.graph_ms,
                      "tflops": 2 * row.macs / row.ms / 1e9,
                      "gbps": row.bytes / row.ms / 1e6,
                      "bound_ms": bound, "roofline_ratio": row.ms / bound,
                      "share_of_matmul_peak": row.macs / row.ms / 1e3 / peaks.macs_per_s,
                      "warnings": row.timing.warnings})
    return {"rows": table, "speedups": speedups(table), "goals": goals(table, peaks.device)}


def speedups(table: list[dict]) -> list[dict]:
    """Per case: MEO's fastest against the fastest vanilla, measured and by the bounds."""
    out = []
    for case in dict.fromkeys(e["case"] for e in table):
        rows = [e for e in table if e["case"] == case]
        vanilla = [e for e in rows if e["name"].split(" ")[0] in VANILLA]
        meo = [e for e in rows if e["name"].startswith("meo ")]
        if not vanilla or not meo:
            continue
        v, m = min(vanilla, key=lambda e: e["ms"]), min(meo, key=lambda e: e["ms"])
        bound_ratio = min(e["bound_ms"] for e in vanilla) / min(e["bound_ms"] for e in meo)
        speedup = v["ms"] / m["ms"]
        out.append({"case": case, "vanilla": v["name"], "meo": m["name"], "speedup": speedup,
                    "bound_ratio": bound_ratio,
                    "meo_speedup_over_bound_ratio": speedup / bound_ratio})
    return out


def goals(table: list[dict], device: str) -> dict:
    """The issue's goals that this run's rows can judge: (worst value, limit, met)."""
    def judge(values, limit, at_most=True):
        if not values:
            return None
        worst = max(values) if at_most else min(values)
        met = worst <= limit if at_most else worst >= limit
        return {"worst": worst, "limit": limit, "met": met}
    merges = [e for e in table if e["name"].startswith("merge ")]
    vanilla_and_meo = [e for e in table if not e["name"].startswith("merge ")]
    out = {"meo_speedup_over_bound_ratio": judge(
        [s["meo_speedup_over_bound_ratio"] for s in speedups(table)],
        GOALS["meo_speedup_over_bound_ratio"], at_most=False)}
    if device == "cuda":
        out["fused_merge_over_bound"] = judge([e["roofline_ratio"] for e in merges
                                               if e["name"] == "merge (fused)"],
                                              GOALS["cuda_fused_merge_over_bound"])
        out["grouped_over_bound_gpu_preset"] = judge(
            [e["roofline_ratio"] for e in table if e["case"].startswith("gpu")
             and e["name"] == "moe (grouped)"], GOALS["cuda_grouped_over_bound"])
        olmoe = {e["name"]: e for e in table if e["case"] == "olmoe"}
        if "moe (grouped)" in olmoe:
            out["olmoe_grouped_share_of_matmul_peak"] = judge(
                [olmoe["moe (grouped)"]["share_of_matmul_peak"]],
                GOALS["cuda_olmoe_share_of_matmul_peak"], at_most=False)
            if "moe (hf-grouped_mm)" in olmoe:
                out["olmoe_grouped_over_hf_grouped_mm"] = judge(
                    [olmoe["moe (grouped)"]["ms"] / olmoe["moe (hf-grouped_mm)"]["ms"]], 1.0)
    else:
        out["every_row_over_bound"] = judge([e["roofline_ratio"] for e in vanilla_and_meo],
                                            GOALS["cpu_over_bound"])
    return out


def render(summary: dict, title: str) -> list:
    table = Table(title=title, caption="TFLOP/s: 2 x non-merge multiply-adds per second; "
                  "GB/s: the bytes the bound counts per second; bound: the phase-wise "
                  "roofline (sum over phases)")
    for col in ("case", "implementation", "ms", "TFLOP/s", "GB/s", "bound ms", "x bound"):
        table.add_column(col, justify="left" if col in ("case", "implementation") else "right")
    for e in summary["rows"]:
        table.add_row(e["case"], e["name"], f"{e['ms']:.3f}", f"{e['tflops']:.2f}",
                      f"{e['gbps']:.1f}", f"{e['bound_ms']:.3f}", f"{e['roofline_ratio']:.2f}")
    lines = [f"{s['case']}: MEO {s['meo']} over {s['vanilla']}: {s['speedup']:.2f}x, bounds' "
             f"ratio {s['bound_ratio']:.2f}x, {s['meo_speedup_over_bound_ratio']:.0%} of it"
             for s in summary["speedups"]]
    lines += [f"goal {name}: " + ("no rows" if g is None else
              f"worst {g['worst']:.2f} vs {g['limit']} ({'met' if g['met'] else 'MISSED'})")
              for name, g in summary["goals"].items()]
    return [table, *lines]


# ------------------------------------------------------------------------------------ main
def build_rows(args) -> list[Row]:
    dtype = getattr(torch, args.dtype)
    base = dict(dtype=args.dtype, device=args.device, variant="meo")
    rows = []
    for case in args.cases.split(","):
        if case == "paper":
            spec = Spec(**PAPER, **base).replace(**_scaled(PAPER, args.scale))
            rows += spec_rows("paper", spec, args.loops)
        elif case == "gpu":
            for E, k in GPU_GRID:
                spec = Spec(**GPU_PRESET, num_experts=E, top_k=k, **base)
                spec = spec.replace(**_scaled(GPU_PRESET, args.scale))
                rows += spec_rows(f"gpu E={E} k={k}", spec, args.loops)
        elif case == "olmoe":
            rows += olmoe_rows(args.device, dtype, args.loops, args.scale)
        else:
            raise SystemExit(f"--cases: unknown case {case!r}; choose from paper, gpu, olmoe")
    return rows


def _scaled(shape: dict, scale: int) -> dict:
    """--scale N divides widths and sequence length (a quick run of the script's paths)."""
    return {k: shape[k] // scale for k in ("d_model", "d_ff", "seq_len")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="paper", help="comma-separated: paper, gpu, olmoe")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds per row")
    p.add_argument("--min-run-time", type=float, default=0.5, help="seconds per row and round")
    p.add_argument("--graph", action="store_true", help="CUDA: also time CUDA-graph replays")
    p.add_argument("--no-loop", dest="loops", action="store_false", help="skip per-expert loops")
    p.add_argument("--scale", type=int, default=1, help="divide widths and lengths (smoke runs)")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    console = Console(stderr=True)
    malloc = process.apply("retain")
    load_before = os.getloadavg()[0]
    rows = build_rows(args)
    peaks = device_peaks(args.device, args.dtype, refresh=True)
    options = TimingOptions(warmup=2, min_run_time=args.min_run_time)
    time_rows(rows, args.device, args.rounds, options, args.graph, console)
    peaks = device_peaks(args.device, args.dtype, refresh=True)  # the best seen, before and after
    summary = summarize(rows, peaks)
    load_after = os.getloadavg()[0]
    title = (f"{args.cases} on {environment(args.device)['device_name']}, {args.dtype}, "
             f"{torch.get_num_threads()} threads; peaks {peaks.macs_per_s / 1e12:.3f} TMAC/s, "
             f"{peaks.bytes_per_s / 1e9:.1f} GB/s; load {load_before:.1f} -> {load_after:.1f}")
    for item in render(summary, title):
        Console(width=160).print(item)
    if args.json:
        payload = {"args": vars(args) | {"json": str(args.json)}, "malloc": malloc,
                   "environment": environment(args.device),
                   "load_average": [load_before, load_after],
                   "peaks": {"macs_per_s": peaks.macs_per_s, "bytes_per_s": peaks.bytes_per_s},
                   **summary}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
