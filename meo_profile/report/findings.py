"""Findings: short sentences generated from the results, each quoting numbers the report's tables
show, formatted the same way. A finding whose data is absent says nothing.

Every finding is a function `(ok rows) -> list[str]` in `FINDINGS`; the report prints them in
order. Nothing here measures.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from meo_profile.core.identity import label
from meo_profile.core.stats import NOISY_IQR_OVER_MEDIAN, iqr_over_median, quantile
from meo_profile.core.units import (
    byte_unit,
    fmt_bytes,
    fmt_ms,
    fmt_num,
    fmt_pct,
    fmt_signed_pct,
    fmt_times,
    missing,
)
from meo_profile.report import views
from meo_profile.report.family import MERGING, cheapest, family_view
from meo_profile.report.regimes import regime_findings
from meo_profile.report.routing import routing_speedup
from meo_profile.report.tables import marked, paper_rows, printed_values

Finding = Callable[[pd.DataFrame], list[str]]


def paper_flops(ok: pd.DataFrame) -> list[str]:
    """How close the counted FLOPs come to the paper's printed 72.0G and 28.6G."""
    out = []
    for r in paper_rows(ok):
        n = r["number"]
        if not n.measurable or r["row"] is None:
            continue
        differences = " / ".join(fmt_signed_pct(d) for d in r["differences"])
        out.append(f"{n.quantity}: {fmt_num(r['comparable_gflops'])} GFLOPs without routers "
                   f"({fmt_num(r['total_gflops'])} with them) against the paper's "
                   f"{printed_values(n)} ({differences}; {n.convention}).")
    return out


def flops_ratio(ok: pd.DataFrame) -> list[str]:
    """The MoE layers follow 1/k + 1/L; the whole model saves less."""
    ratios = views.ratio_view(views.flops_view(ok, hosts=None))
    if ratios.empty:
        return []
    out = []
    layer = ratios[ratios["moe_layer_ratio"].notna()]
    if not layer.empty:
        out.append(_closed_form_sentence(layer))
    models = ratios[ratios["host"] != "layer"]  # a bare layer has nothing but MoE layers
    if models.empty:
        return out
    host = "bert-base" if (models["host"] == "bert-base").any() else models["host"].iloc[0]
    rows = models[models["host"] == host]
    r = rows.loc[rows["top_k"].idxmax()]
    out.append(f"At k={r['top_k']} on {host}, MEO's whole model costs "
               f"{fmt_num(r['ratio'], 3)} of vanilla's ({fmt_num(r['vanilla_gflops'])} → "
               f"{fmt_num(r['merged_gflops'])} GFLOPs) against {fmt_num(r['closed_form'], 3)} "
               f"for the MoE layers by the closed form: what MEO leaves unchanged (attention, "
               f"embeddings, head) bounds the saving.")
    return out


def _closed_form_sentence(layer: pd.DataFrame) -> str:
    gap = (layer["moe_layer_ratio"] - layer["closed_form"]).abs()
    if fmt_num(gap.max(), 3) == fmt_num(0.0, 3):
        points = "both" if len(layer) == 2 else f"all {len(layer)}"
        return (f"The MoE layers alone (experts and merge) cost MEO exactly the closed form "
                f"1/k + 1/L at {points} counted points, to the table's three decimals.")
    worst = layer.loc[gap.idxmax()]
    # The closed form assumes the merge reads the k selected experts; the dense merge reads all E.
    why = (f": its merge ran as `dense`, which weighs all E={worst['num_experts']} experts, "
           f"so the merge term is E/(kL) rather than 1/L" if worst["merged_impl"] == "dense" else "")
    return (f"The MoE layers alone (experts and merge) follow the closed form 1/k + 1/L within "
            f"{fmt_num(gap.max(), 3)}; the largest gap is {fmt_num(worst['moe_layer_ratio'], 3)} "
            f"against {fmt_num(worst['closed_form'], 3)} ({worst['host']}, k={worst['top_k']})"
            f"{why}.")


def latency_growth(ok: pd.DataFrame) -> list[str]:
    """How each variant's latency grows with k at fixed E."""
    view = views.latency_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        sparse = rows[rows["variant"] != "dense"]
        k_lo, k_hi = sparse["top_k"].min(), sparse["top_k"].max()
        if k_lo == k_hi:
            continue
        parts = []
        for variant in ("moe", "meo"):
            r = sparse[sparse["variant"] == variant].set_index("top_k")
            if k_lo in r.index and k_hi in r.index:
                lo, hi = (marked(fmt_ms(r.loc[k, "latency_ms_median"]), r.loc[k, "distrusted"])
                          for k in (k_lo, k_hi))
                parts.append(f"{label(variant)} from {lo} to {hi} ms")
        if parts:
            out.append(f"On {device} ({rows['setting'].iloc[0]}), going from k={int(k_lo)} to "
                       f"k={int(k_hi)} takes " + " and ".join(parts) + ".")
    return out


def latency_noise(ok: pd.DataFrame) -> list[str]:
    """Which latency points are too noisy to compare closely: the timer's own rule (interquartile
    range of the raw samples over their median), applied to the stored samples."""
    view = views.latency_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        spread = rows["latency_samples_ms"].map(
            lambda s: iqr_over_median(s) if isinstance(s, list) and s else float("nan"))
        noisy = rows[spread > NOISY_IQR_OVER_MEDIAN]
        if noisy.empty:
            continue
        worst = rows.loc[spread.idxmax()]
        ordered = sorted(worst["latency_samples_ms"])  # the quartiles the rule read, shown as such
        out.append(f"On {device}, {len(noisy)} of {len(rows)} latency points spread more than "
                   f"{fmt_pct(NOISY_IQR_OVER_MEDIAN)} of their median between the 25th and 75th "
                   f"percentile of their samples "
                   f"(widest: {label(worst['variant'])}, k={worst['top_k']}, median "
                   f"{fmt_ms(worst['latency_ms_median'])} ms, 25th–75th percentile "
                   f"{fmt_ms(quantile(ordered, 0.25))}–{fmt_ms(quantile(ordered, 0.75))} ms): "
                   f"the machine was busy or the runs too short, so compare those points with care.")
    return out


def speedup_shortfall(ok: pd.DataFrame) -> list[str]:
    """Where MEO's measured speedup falls short of its FLOPs ratio, and what the bound says."""
    view = views.speedup_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        out.append(" ".join(_speedup_sentences(device, rows)))  # one bullet per device
    return out


def _speedup_sentences(device: str, rows: pd.DataFrame) -> list[str]:
    """Sentences on the trusted points; those with a time below its bound are only counted."""
    trusted = rows[~rows["distrusted"]]
    left_out = ([f"{len(rows) - len(trusted)} of {len(rows)} (E, k) points are left out: a "
                 f"time there is below its roofline bound, a measurement to distrust."]
                if len(trusted) < len(rows) else [])
    if trusted.empty:
        return [f"On {device}, every (E, k) point has a time below its roofline bound: MEO's "
                f"speedup there is a measurement to distrust, not a result."]
    best = trusted.loc[trusted["speedup"].idxmax()]
    out = [f"On {device}, MEO's speedup over vanilla MoE spans "
           f"{fmt_times(trusted['speedup'].min())} to {fmt_times(trusted['speedup'].max())} over "
           f"{len(trusted)} (E, k) points; the largest is at E={best['num_experts']}, "
           f"k={best['top_k']}, where FLOPs predict {fmt_times(best['flops_ratio'])}."]
    known = trusted[trusted["realised"].notna()]
    if known.empty:
        return out + left_out
    short = known[known["realised"] < 1]
    out.append(f"It falls short of the FLOPs ratio at {len(short)} of {len(known)} points.")
    out += _beyond_flops(known)
    if not short.empty:
        worst = short.loc[short["realised"].idxmin()]
        out.append(f"The widest gap is at E={worst['num_experts']}, k={worst['top_k']}: "
                   f"{fmt_times(worst['speedup'])} measured against "
                   f"{fmt_times(worst['flops_ratio'])} by FLOPs ({fmt_pct(worst['realised'])} "
                   f"realised)" + _why(worst) + ".")
    slower = trusted[trusted["speedup"] < 1].sort_values(["num_experts", "top_k"])
    if not slower.empty:
        cells = ", ".join(f"E={r.num_experts} k={r.top_k} ({fmt_times(r.speedup)})"
                          for r in slower.itertuples())
        out.append(f"MEO is slower than vanilla MoE at {len(slower)} point(s): {cells}.")
    return out + left_out


def _beyond_flops(known: pd.DataFrame) -> list[str]:
    """Speedups far above what FLOPs allow come from vanilla's non-arithmetic time (dispatch
    overhead) or from a noisy timing, never from MEO doing less arithmetic than counted."""
    far = known[known["realised"] > 2]
    if far.empty:
        return []
    top = far.loc[far["realised"].idxmax()]
    return [f"At {len(far)} point(s) the speedup exceeds the FLOPs ratio more than twice (most at "
            f"E={top['num_experts']}, k={top['top_k']}: {fmt_times(top['speedup'])} against "
            f"{fmt_times(top['flops_ratio'])}, vanilla {fmt_ms(top['vanilla_ms'])} ms): vanilla's "
            f"time there is set by dispatch overhead or timing noise, not arithmetic."]


def _why(r: pd.Series) -> str:
    """The roofline's reading of a shortfall: the speedup both variants would have at their
    bounds (the bound ratio), and which one runs further from its bound. The measured speedup is
    exactly the bound ratio × (vanilla / bound) ÷ (MEO / bound), so the two never contradict."""
    if any(missing(r[c]) for c in ("bound_speedup", "meo_vs_bound", "vanilla_vs_bound")):
        return ""
    at_bounds = f"; at their bounds MEO would be {fmt_times(r['bound_speedup'])} faster"
    # 5% slack: a bound ratio that equals the FLOPs ratio up to rounding explains nothing
    if r["bound_speedup"] < 0.95 * r["flops_ratio"]:
        at_bounds += (f", not {fmt_times(r['flops_ratio'])}, because MEO's merge "
                      f"({r['meo_impl']}) moves expert weights that FLOPs do not count")
    further = "further from" if r["meo_vs_bound"] > r["vanilla_vs_bound"] else "closer to"
    return (f"{at_bounds}; and MEO runs {further} its bound than vanilla "
            f"({fmt_times(r['meo_vs_bound'])} against {fmt_times(r['vanilla_vs_bound'])})")


def memory_cost(ok: pd.DataFrame) -> list[str]:
    """What MEO's merged weights cost in peak memory at the largest E, per mode."""
    view = views.memory_view(ok)
    if view.empty:
        return []
    unit = byte_unit(view["peak_mem_bytes"].max())
    out = []
    for (device, mode), rows in view.groupby(["device_label", "mode"], sort=True):
        at = rows[rows["num_experts"] == rows.loc[rows["variant"] != "dense", "num_experts"].max()]
        peaks = at.set_index("variant")["peak_mem_bytes"]
        vanilla = next((v for v in views.VANILLA if v in peaks), None)
        if "meo" not in peaks or vanilla is None:
            continue
        why = (": the merged weights, one copy per sequence, come on top of the experts"
               if peaks["meo"] > peaks[vanilla] else "")
        out.append(f"On {device} ({mode}, E={int(at['num_experts'].iloc[0])}), MEO peaks at "
                   f"{fmt_bytes(peaks['meo'], unit)} {unit[0]} against "
                   f"{fmt_bytes(peaks[vanilla], unit)} {unit[0]} for {label(vanilla)}{why}.")
    return out


def roofline_distance(ok: pd.DataFrame) -> list[str]:
    """How far each variant runs from its roofline bound (median over configurations), and
    which measurements beat their bound and are therefore distrusted."""
    view, distrusted = views.roofline_view(ok), views.roofline_view(ok, distrusted=True)
    out = []
    devices = sorted(set(view.get("device_label", ())) | set(distrusted.get("device_label", ())))
    for device in devices:
        rows = view[view["device_label"] == device] if not view.empty else view
        ratio = (rows["latency_ms_median"] / rows["roofline_ms"]).groupby(rows["variant"]).median()
        parts = [f"{label(v)} {fmt_times(ratio[v])}" for v in ("moe", "moe-seq", "meo", "dense")
                 if v in ratio]
        text = (f"On {device}, the median measured time over the roofline bound is "
                + ", ".join(parts) + ".") if parts else f"On {device}:"
        below = distrusted[distrusted["device_label"] == device] if not distrusted.empty else distrusted
        out.append(text + _below_bound(below, len(rows) + len(below)))
    return out


def _below_bound(below: pd.DataFrame, total: int) -> str:
    """A time below its bound is a broken measurement: say so rather than report a record."""
    if below.empty:
        return ""
    ratio = below["latency_ms_median"] / below["roofline_ms"]
    lowest = below.loc[ratio.idxmin()]
    return (f" {len(below)} of {total} configurations measure below their bound (lowest "
            f"{fmt_times(ratio.min())}, {label(lowest['variant'])}): no implementation beats "
            f"this machine's own peaks, so those measurements are distrusted (other processes "
            f"slowed the peak probes or the timing): left out of the roofline figure and its "
            f"table, and marked wherever else they appear.")


def launch_bound(ok: pd.DataFrame) -> list[str]:
    """On CUDA, which configurations spend most of their eager time waiting for launches."""
    view = views.time_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        rows = rows[rows["launch_overhead"].notna()]
        bound = rows[rows["launch_overhead"] >= LAUNCH_BOUND].sort_values("launch_overhead",
                                                                         ascending=False)
        if bound.empty:
            continue
        worst = bound.iloc[0]
        names = ", ".join(f"{label(r['variant'])} ({r['impl']}) {fmt_pct(r['launch_overhead'])}"
                          for r in bound.to_dict("records"))
        graph = ("" if missing(worst["graph_ms"]) else
                 f"; replayed from a CUDA graph it takes {fmt_ms(worst['graph_ms'])} ms against "
                 f"{fmt_ms(worst['eager_ms_median'])} ms eager")
        out.append(f"On {device}, at this size ({rows['setting'].iloc[0]}), "
                   f"{fmt_pct(worst['launch_overhead'])} of {label(worst['variant'])} "
                   f"({worst['impl']})'s eager time is launch overhead: the device waits for the "
                   f"host{graph}. Launch-bound (half or more of the eager time): {names}. Compare "
                   f"methods there on graph or kernel times, not eager ones.")
    return out


LAUNCH_BOUND = 0.5  # share of the eager time spent waiting for launches


def methods_compared(ok: pd.DataFrame) -> list[str]:
    """What compressed experts and XMoE save against vanilla MoE at one expert budget, what
    they trade for it (fidelity, experts chosen), and the latency each method realises."""
    view = views.methods_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        by = rows.set_index("variant")
        parts = [METHOD_SENTENCES[v](by.loc[v], by.loc["moe"]) for v in METHOD_SENTENCES
                 if v in by.index]
        timed = [f"{label(v)} " + marked(fmt_times(by.loc[v, "latency_rel"]), by.loc[v, "distrusted"])
                 for v in ("meo", "ce", "xmoe")
                 if v in by.index and not missing(by.loc[v, "latency_rel"])]
        latency = f" Measured latency against vanilla MoE's: {', '.join(timed)}." if timed else ""
        out.append(f"On {device}, at one expert budget, " + "; ".join(parts) + "." + latency)
    return out


def _ce_sentence(r: pd.Series, vanilla: pd.Series) -> str:
    fidelity = ("" if missing(r["rel_l2_error"]) else
                f", at a relative L2 error of {fmt_num(r['rel_l2_error'], 3)} against full "
                f"top-{int(r['top_k'])} with untrained ({r['ce_init']}) vectors")
    return (f"compressed experts (n_ce={int(r['n_ce'])}) bring active parameters per token to "
            f"{fmt_times(r['params_rel'])} vanilla MoE's ({fmt_num(r['params_active'] / 1e6)} M "
            f"against {fmt_num(vanilla['params_active'] / 1e6)} M) and MoE-block GFLOPs to "
            f"{fmt_times(r['moe_block_rel'])}{fidelity}")


def _xmoe_sentence(r: pd.Series, vanilla: pd.Series) -> str:
    chosen = ("" if missing(r["experts_per_token_mean"]) else
              f"chooses {fmt_num(r['experts_per_token_mean'])} of {int(r['experts_built'])} "
              f"experts per token on average (p90 {fmt_num(r['experts_per_token_p90'], 0)}), "
              f"which ")
    return (f"XMoE (threshold {r['threshold']:g}, router logits ×{r['router_scale']:g}) {chosen}"
            f"brings active parameters to {fmt_times(r['params_rel'])} "
            f"({fmt_num(r['params_active'] / 1e6)} M) and MoE-block GFLOPs to "
            f"{fmt_times(r['moe_block_rel'])}")


METHOD_SENTENCES = {"ce": _ce_sentence, "xmoe": _xmoe_sentence}


def merging_family(ok: pd.DataFrame) -> list[str]:
    """Which merging method costs least per token at the measured sizes, in FLOPs and in time,
    and why: what each adds to one expert per token (SMEAR's merge over a sequence, Lory's over
    a segment, Soft MoE's slots)."""
    view = family_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        by = rows.set_index("variant", drop=False)
        low = cheapest(rows, "mflops_per_token")
        why = [FAMILY_REASONS[v](by.loc[v]) for v in MERGING if v in by.index]
        text = (f"On {device}, at one expert budget, {label(low['variant'])} is the cheapest of "
                f"the merging family in MoE-block FLOPs: {fmt_num(low['mflops_per_token'], 1)} "
                f"MFLOPs per token, {fmt_times(low.get('ratio_top1'))} vanilla top-1's. In units "
                f"of one expert per token, " + "; ".join(why) + ".")
        if "meo" in by.index:
            meo = by.loc["meo"]
            text += (f" MEO, merging only its k = {int(meo['top_k'])}, adds "
                     f"{fmt_num(meo['added_per_token'])}: {fmt_num(meo['mflops_per_token'], 1)} "
                     f"MFLOPs per token ({fmt_times(meo.get('ratio_top1'))}).")
        out.append(text + _family_times(rows))
    return out


def _family_times(rows: pd.DataFrame) -> str:
    timed = views.in_variant_order(rows[rows["latency_us_per_token"].notna()])
    fastest = cheapest(timed, "latency_us_per_token")
    if fastest is None:
        return ""
    cells = ", ".join(f"{label(r['variant'])} "
                      + marked(fmt_num(r["latency_us_per_token"], 1), r["distrusted"])
                      for r in timed.to_dict("records"))
    return (f" Measured latency per token (µs): {cells}; the fastest of the merging family is "
            f"{label(fastest['variant'])}.")


FAMILY_REASONS = {
    "smear": lambda r: (f"SMEAR adds {fmt_num(r['added_per_token'])} (a merge of all E = "
                        f"{int(r['num_experts'])} experts per sequence of L = {int(r['seq_len'])})"),
    "lory": lambda r: (f"Lory {fmt_num(r['added_per_token'])} (one per segment of T = "
                       f"{int(min(r['segment_len'], r['seq_len']))})"),
    "soft-moe": lambda r: (f"Soft MoE runs its experts on {fmt_num(r['expert_rows_per_token'])} "
                           f"rows per token (S = {int(r['num_experts'] * r['slots_per_expert'])} "
                           f"slots for L = {int(r['seq_len'])} tokens) and adds "
                           f"{fmt_num(r['added_per_token'])} for its router, dispatch and combine"),
}


FINDINGS: tuple[Finding, ...] = (paper_flops, flops_ratio, latency_growth, latency_noise,
                                  speedup_shortfall, memory_cost, roofline_distance,
                                  launch_bound, methods_compared, routing_speedup, merging_family,
                                  regime_findings)


def findings(ok: pd.DataFrame) -> list[str]:
    return [_capitalised(sentence) for finding in FINDINGS for sentence in finding(ok)]


def _capitalised(sentence: str) -> str:
    return sentence[:1].upper() + sentence[1:]
