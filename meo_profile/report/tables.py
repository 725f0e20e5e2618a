"""The report's tables: results in, `Table`s of formatted cells out. Nothing here measures.

A `Table` is plain data (title, column names, rows of strings, a note); `report` renders it as
markdown or HTML and `report.rich_table` for the terminal, so every format shows the same cells.
Units sit in the column names; FLOPs are 2 x MACs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from meo_profile.core.identity import config_title, label, order_variants
from meo_profile.core.paper import FLOPS_CONVENTION, PAPER_NUMBERS, PaperNumber
from meo_profile.core.units import (
    NA,
    byte_unit,
    fmt_bytes,
    fmt_int,
    fmt_ms,
    fmt_num,
    fmt_pct,
    fmt_signed_pct,
    fmt_times,
    missing,
)
from meo_profile.measure.trace_file import OTHER
from meo_profile.models.phases import PHASES
from meo_profile.report import views


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    note: str = ""
    right: set[int] = field(default_factory=set)  # indices of right-aligned (numeric) columns

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows, columns=self.columns)


def table(title: str, header: list[tuple[str, bool]], rows: Iterable[list[str]],
          note: str = "") -> Table:
    """`header`: (column name, right-aligned)."""
    return Table(title, [h for h, _ in header], [list(r) for r in rows], note,
                 {i for i, (_, right) in enumerate(header) if right})


# ------------------------------------------------------------------------------ paper
def paper_measurement(ok: pd.DataFrame, number: PaperNumber) -> pd.Series | None:
    """The stored configuration that matches a printed number's setting (fvcore counts before
    analytic ones, then the newest)."""
    rows = views.match(ok, number.setting)
    rows = rows[rows["flops"].notna()] if not rows.empty else rows
    if rows.empty:
        return None
    preferred = rows.assign(_fvcore=rows["flops_source"] == "fvcore") \
        .sort_values(["_fvcore", "created_utc"], kind="stable", na_position="first")
    return preferred.iloc[-1]


def router_gflops(row: pd.Series) -> float:
    parts = row["macs_by_part"]
    return 2 * parts["router"] / 1e9 if isinstance(parts, dict) and "router" in parts else math.nan


def paper_rows(ok: pd.DataFrame) -> list[dict[str, Any]]:
    """Each printed number with its measured counterpart (GFLOPs, routers shown apart)."""
    out = []
    for number in PAPER_NUMBERS.values():
        row = paper_measurement(ok, number) if number.measurable else None
        total = row["flops"] / 1e9 if row is not None else math.nan
        router = router_gflops(row) if row is not None else math.nan
        comparable = total - router if not missing(router) else total
        printed = (number.value, *number.also_printed)
        out.append({"number": number, "row": row, "total_gflops": total, "router_gflops": router,
                    "comparable_gflops": comparable,
                    "differences": [comparable / v - 1 if row is not None else math.nan
                                    for v in printed]})
    return out


def printed_values(n: PaperNumber) -> str:
    """The paper's values as printed, one decimal ('72.0', '28.6 / 28.9')."""
    return " / ".join(f"{v:.1f}" for v in (n.value, *n.also_printed))


def paper_table(ok: pd.DataFrame) -> Table:
    rows = []
    for r in paper_rows(ok):
        n, row = r["number"], r["row"]
        printed = printed_values(n) + f" {n.unit}"
        if not n.measurable:
            source = "not measured: accuracy needs fine-tuning, outside profiling"
        elif row is None:
            source = "no matching record (" + ", ".join(f"{k}={v}" for k, v in n.setting.items()) + ")"
        else:
            source = (f"E={int(row['num_experts'])}, impl {row['impl']}, {row['flops_source']} "
                      f"count")
        rows.append([n.quantity, n.convention, printed, fmt_num(r["total_gflops"]),
                     fmt_num(r["router_gflops"], 3), fmt_num(r["comparable_gflops"]),
                     " / ".join(fmt_signed_pct(d) for d in r["differences"]), source])
    header = [("quantity", False), ("convention", False), ("paper", True),
              ("measured total (GFLOPs)", True), ("router part (GFLOPs)", True),
              ("total − router (GFLOPs)", True), ("difference vs paper", True),
              ("measured configuration", False)]
    note = (f"The paper prints FLOPs without saying how it counts; its 72.0G reproduces only as "
            f"{FLOPS_CONVENTION} with routers left out, so measured totals are shown with the "
            f"router part apart, and the difference is taken on total − router (against each printed value where the paper's versions differ). The number of "
            f"experts E changes only the router part. Printed numbers: the paper's abstract "
            f"(GLUE: average score, %).")
    return table("The MEO paper's printed numbers against this run", header, rows, note)


# ------------------------------------------------------------------------------ FLOPs
def flops_table(ok: pd.DataFrame) -> Table | None:
    ratios = views.ratio_view(views.flops_view(ok, hosts=None))
    if ratios.empty:
        return None
    several = ratios["variant"].nunique() > 1  # MEO and MEO + token block: say which is which
    rows = [[r.host, *([label(r.variant)] if several else []), fmt_int(r.top_k),
             fmt_int(r.num_experts), fmt_int(r.seq_len), fmt_int(r.batch_size),
             fmt_num(r.vanilla_gflops), fmt_num(r.merged_gflops), fmt_num(r.ratio, 3),
             fmt_num(r.moe_layer_ratio, 3), fmt_num(r.closed_form, 3)]
            for r in ratios.itertuples()]
    header = [("host", False), *([("variant", False)] if several else []), ("k", True),
              ("E", True), ("L", True), ("B", True), ("vanilla GFLOPs", True),
              ("MEO GFLOPs", True), ("ratio", True), ("MoE-layer ratio", True),
              ("1/k + 1/L", True)]
    return table("FLOPs: MEO against vanilla MoE", header, rows,
                 f"GFLOPs per forward, {FLOPS_CONVENTION}, routers included. Ratio: MEO / "
                 "vanilla, whole model; MoE-layer ratio: experts and merge alone, from the "
                 "count's breakdown by part.")


# ------------------------------------------------------------------------------ latency
def latency_tables(ok: pd.DataFrame) -> list[Table]:
    view = views.latency_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        ks = sorted(rows.loc[rows["variant"] != "dense", "top_k"].unique())
        body = [[label(v), *(_latency_cell(rows, v, k) for k in ks)]
                for v in _variant_order(rows["variant"])]
        header = [("variant", False), *((f"k={int(k)}", True) for k in ks)]
        out.append(table(f"Latency (ms), {device}; {rows['setting'].iloc[0]}", header, body,
                         "Median ms per forward (20th–80th percentile); the fastest "
                         "implementation at each point. Dense has no k: its one value repeats. "
                         "(below bound): faster than its roofline bound allows, a measurement "
                         "to distrust."))
    return out


def _latency_cell(rows: pd.DataFrame, variant: str, k: int) -> str:
    match = rows[(rows["variant"] == variant) & ((rows["top_k"] == k) | (variant == "dense"))]
    if match.empty:
        return NA
    r = match.iloc[0]
    return marked(f"{fmt_ms(r['latency_ms_median'])} ({fmt_ms(r['latency_ms_p20'])}–"
                  f"{fmt_ms(r['latency_ms_p80'])})", r["distrusted"])


BELOW_BOUND = " (below bound)"  # a time below its roofline bound: shown, marked, never a result


def marked(text: str, distrusted: Any) -> str:
    return text + BELOW_BOUND if not missing(distrusted) and bool(distrusted) else text


def _variant_order(variants: pd.Series) -> list[str]:
    return order_variants(variants.unique())


# ------------------------------------------------------------------------------ speedup
def speedup_tables(ok: pd.DataFrame) -> list[Table]:
    view = views.speedup_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        body = [[fmt_int(r.num_experts), fmt_int(r.top_k), f"{fmt_ms(r.vanilla_ms)} ({r.vanilla_impl})",
                 f"{fmt_ms(r.meo_ms)} ({r.meo_impl})",
                 marked(fmt_times(r.speedup), r.distrusted),
                 fmt_times(r.flops_ratio), fmt_pct(r.realised), fmt_times(r.bound_speedup),
                 fmt_times(r.meo_vs_bound), fmt_times(r.vanilla_vs_bound)]
                for r in rows.sort_values(["num_experts", "top_k"]).itertuples()]
        header = [("E", True), ("k", True), ("vanilla ms (impl)", True), ("MEO ms (impl)", True),
                  ("speedup", True), ("FLOPs ratio", True), ("realised", True),
                  ("bound ratio", True), ("MEO / bound", True), ("vanilla / bound", True)]
        out.append(table(f"MEO speedup over vanilla MoE, {device}; {rows['setting'].iloc[0]}",
                         header, body,
                         "speedup: vanilla / MEO median latency; FLOPs ratio: vanilla / MEO "
                         "FLOPs, the speedup FLOPs predict; realised: speedup / FLOPs ratio; "
                         "bound ratio: vanilla / MEO phase-wise roofline bound, the speedup the "
                         "hardware allows when both run at their bound (bytes count there); "
                         "X / bound: measured / roofline bound. speedup = bound ratio × "
                         "(vanilla / bound) ÷ (MEO / bound): the bound ratio is no cap on the "
                         "measured speedup. (below bound): one side measured faster than its "
                         "bound allows, a measurement to distrust."))
    return out


# ------------------------------------------------------------------------------ memory
def memory_tables(ok: pd.DataFrame) -> list[Table]:
    view = views.memory_view(ok)
    if view.empty:
        return []
    unit = byte_unit(view["peak_mem_bytes"].max())
    out = []
    for (device, _mode), rows in view.groupby(["device_label", "mode"], sort=True):
        experts = sorted(rows.loc[rows["variant"] != "dense", "num_experts"].unique())
        body = [[label(v), *(_memory_cell(rows, v, e, unit) for e in experts)]
                for v in _variant_order(rows["variant"])]
        header = [("variant", False), *((f"E={int(e)}", True) for e in experts)]
        out.append(table(f"Peak memory ({unit[0]}), {device}; {rows['setting'].iloc[0]}",
                         header, body, "Dense has no experts: its one value repeats."))
    return out


def _memory_cell(rows: pd.DataFrame, variant: str, e: int, unit: tuple[str, float]) -> str:
    match = rows[(rows["variant"] == variant) & ((rows["num_experts"] == e) | (variant == "dense"))]
    return fmt_bytes(match["peak_mem_bytes"].iloc[0], unit) if not match.empty else NA


# ------------------------------------------------------------------------------ roofline
def roofline_tables(ok: pd.DataFrame) -> list[Table]:
    view = views.roofline_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        ratio = rows["latency_ms_median"] / rows["roofline_ms"]
        body = []
        for v in _variant_order(rows["variant"]):
            r = ratio[rows["variant"] == v]
            body.append([label(v), str(len(r)), fmt_times(r.min()), fmt_times(r.median()),
                         fmt_times(r.max())])
        header = [("variant", False), ("configurations", True), ("best", True),
                  ("median", True), ("worst", True)]
        out.append(table(f"Measured time / roofline bound, {device}", header, body,
                         "1.00× means a configuration runs at its bound; the bound sums each "
                         "phase's max(compute, bytes), the phases running one after another."))
    distrusted = distrusted_table(ok)
    return out + ([distrusted] if distrusted is not None else [])


def distrusted_table(ok: pd.DataFrame) -> Table | None:
    """Measurements below their bound: listed, never drawn or counted as results."""
    view = views.roofline_view(ok, distrusted=True)
    if view.empty:
        return None
    rows = [[r["device_label"], config_title(r), fmt_ms(r["latency_ms_median"]),
             fmt_ms(r["roofline_ms"]), fmt_times(r["latency_ms_median"] / r["roofline_ms"])]
            for r in view.to_dict("records")]
    header = [("device", False), ("configuration", False), ("measured ms", True),
              ("bound ms", True), ("measured / bound", True)]
    return table("Measurements below their bound (distrusted)", header, rows,
                 "No implementation beats the machine's own matmul and copy peaks: a time below "
                 "its bound means the measurement is wrong (other processes slowed the peak "
                 "probes, or the timing). These points are left out of the figure and the table "
                 "above.")


# ------------------------------------------------------------------------------ where time goes
def time_tables(ok: pd.DataFrame) -> list[Table]:
    """Per device (CUDA records with kernel times): eager, graph-replay and kernel time of each
    variant and implementation, the launch overhead, and the kernel time by phase."""
    view = views.time_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        phases = [p for p in TIME_PHASES if rows["kernel_ms_by_phase"].map(
            lambda d, p=p: isinstance(d, dict) and p in d).any()]
        body = [[f"{label(r['variant'])} ({r['impl']})", fmt_ms(r["eager_ms_median"]),
                 fmt_ms(r["graph_ms"]), fmt_ms(r["kernel_ms"]), fmt_pct(r["launch_overhead"]),
                 *(fmt_ms((r["kernel_ms_by_phase"] or {}).get(p)) for p in phases)]
                for r in rows.to_dict("records")]
        header = [("variant (impl)", False), ("eager ms", True), ("graph ms", True),
                  ("kernel ms", True), ("launch overhead", True),
                  *((f"{p} kernel ms", True) for p in phases)]
        out.append(table(f"Where the time goes, {device}; {rows['setting'].iloc[0]}", header, body,
                         "eager: the step launched op by op, as eager PyTorch runs it; graph: "
                         "replayed from a CUDA graph (– where it could not be captured); kernel: "
                         "the device's own time (kernels, copies) from a profiled pass; launch "
                         "overhead: 1 − kernel / eager, the share of the eager time the device "
                         "waits for the host; other: kernels outside every MoE phase."))
    return out


TIME_PHASES = (*PHASES, OTHER)


# ------------------------------------------------------------------------------ methods
def methods_tables(ok: pd.DataFrame) -> list[Table]:
    """The four methods at one expert budget, per device: counts, time, memory, and what each
    method trades (compressed experts: fidelity; XMoE: experts chosen per token)."""
    view = views.methods_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        unit = byte_unit(rows["peak_mem_bytes"].max()) if rows["peak_mem_bytes"].notna().any() \
            else ("MiB", 2**20)
        body = [[label(r.variant), method_configuration(r),
                 _with_ratio(fmt_num(r.params_active / 1e6), r.params_rel),
                 _with_ratio(fmt_num(r.moe_block_gflops), r.moe_block_rel), fmt_num(r.gflops),
                 _with_ratio(_latency_text(r), r.latency_rel),
                 _with_ratio(fmt_bytes(r.peak_mem_bytes, unit), r.peak_mem_rel),
                 method_tradeoff(r)]
                for r in views.in_variant_order(rows).itertuples()]
        header = [("method", False), ("experts × width, routing", False),
                  ("active params / token (M)", True), ("MoE-block GFLOPs", True),
                  ("total GFLOPs", True), ("latency ms (p20–p80)", True),
                  (f"peak memory ({unit[0]})", True), ("method-specific", False)]
        out.append(table(f"Four methods at one expert budget, {device}; {rows['setting'].iloc[0]}",
                         header, body,
                         f"Each value is followed by its ratio to vanilla MoE's. Equal expert "
                         f"budget: the same expert weights (XMoE: g times as many experts, "
                         f"each 1/g as wide). MoE-block GFLOPs: experts, merge, routers and "
                         f"compressed vectors, {FLOPS_CONVENTION}; active parameters: the "
                         f"weights one token's forward reads (MEO: the k experts merged for "
                         f"its sequence; XMoE: the mean over tokens). Latency and memory: "
                         f"the fastest implementation measured."))
    return out


def method_configuration(r) -> str:
    """'16 × 2048, top-4': the experts as built and how each token is routed."""
    experts = f"{fmt_int(r.experts_built)} × {fmt_int(r.expert_width)}"
    k = fmt_int(r.top_k)
    routing = {
        "moe": f"top-{k}",
        "meo": f"top-{k} merged per sequence ({r.impl} merge)",
        "ce": f"top-{fmt_int(r.top_k - r.n_ce)} + {fmt_int(r.n_ce)} compressed ({r.ce_init} init)",
        "xmoe": f"threshold {r.threshold:g}" + ("" if missing(r.max_k) else f", at most {fmt_int(r.max_k)}")
                + ("" if missing(r.capacity_factor) else f", capacity ×{r.capacity_factor:g}"),
    }.get(r.variant, "")
    return f"{experts}, {routing}"


def method_tradeoff(r) -> str:
    """What the method gives up or chooses: ce's error against full top-k, XMoE's chosen counts."""
    if r.variant == "ce":
        return f"rel. L2 error {fmt_num(r.rel_l2_error, 3)} vs full top-{fmt_int(r.top_k)}"
    if r.variant == "xmoe":
        return (f"{fmt_num(r.experts_per_token_mean)} experts / token (p90 "
                f"{fmt_num(r.experts_per_token_p90, 0)}, max {fmt_int(r.experts_per_token_max)} of "
                f"{fmt_int(r.experts_built)}); {fmt_int(r.dropped_pairs)} dropped pairs")
    return NA


def _latency_text(r) -> str:
    if missing(r.latency_ms_median):
        return NA
    return marked(f"{fmt_ms(r.latency_ms_median)} ({fmt_ms(r.latency_ms_p20)}–"
                  f"{fmt_ms(r.latency_ms_p80)})", r.distrusted)


def _with_ratio(text: str, ratio: float) -> str:
    return text if text == NA or missing(ratio) else f"{text}, {fmt_times(ratio)}"


# A table function takes the successful rows and returns tables (possibly none).
TableFn = Callable[[pd.DataFrame], list[Table]]


def as_list(fn: Callable[[pd.DataFrame], Table | None]) -> TableFn:
    return lambda df: [t for t in [fn(df)] if t is not None]
