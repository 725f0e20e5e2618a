"""The report's routing section: vanilla MoE and MEO against how their experts were chosen
(`--routing`), at one layer size; the replayed traces' statistics; the finding that says how
far MEO's speedup moves. Nothing here measures.

`routing_view` holds every axis but `routing` at one value (the paper layer's E 16, k 4 when
present) and keeps each variant's fastest implementation per routing, with the routing parsed
into its kind, parameter and locality. Skew is ordered as the routings are built to skew
(balanced, then uniform or the random router, then zipf and biased by their parameter);
locality is the `,local:P` on one base distribution.
"""

from __future__ import annotations

import pandas as pd

from meo_profile.core.identity import label
from meo_profile.core.units import NA, fmt_ms, fmt_num, fmt_signed_pct, fmt_times, missing
from meo_profile.models.conditions import parse_routing
from meo_profile.report import views
from meo_profile.report.tables import Table, marked, table

ROUTED = ("moe", "moe-seq", "meo")
ROUTING_PREFER = {**{k: v for k, v in views.LATENCY_PREFER.items() if k != "routing"},
                  "num_experts": 16, "top_k": 4, "workload": "prefill", "scope": None}
SKEW_RANK = {"balanced": 0, "uniform": 1, "router": 1, "zipf": 2, "biased": 3, "replay": 4}


def routing_view(ok: pd.DataFrame) -> pd.DataFrame:
    """Per device, the routed variants' fastest run of each routing at one held setting (only
    where more than one routing was measured), with `kind`, `param`, `local` parsed."""
    rows = ok[ok["variant"].isin(ROUTED) & ok["latency_ms_median"].notna() & ok["routing"].notna()]
    parts = []
    for device, dev in rows.groupby("device_label", sort=True):
        held, chosen = views.fix_axes(dev, ROUTING_PREFER)
        if held["routing"].nunique() < 2:
            continue
        best = views.best_per_point(held, ["variant", "routing"], "latency_ms_median")
        parts.append(best.assign(device_label=device, setting=views.describe_setting(chosen)))
    if not parts:
        return pd.DataFrame(columns=[*ok.columns, "kind", "param", "local", "setting"])
    view = pd.concat(parts, ignore_index=True)
    parsed = [parse_routing(r) for r in view["routing"]]
    view = view.assign(kind=[c.kind for c in parsed], local=[c.local for c in parsed],
                       param=[c.param if c.param is not None else 0.0 for c in parsed])
    order = view.apply(lambda r: (r["local"], SKEW_RANK.get(r["kind"], 5), r["param"]), axis=1)
    return view.assign(_order=order).sort_values("_order", kind="stable").drop(columns="_order")


def per_routing(view: pd.DataFrame) -> pd.DataFrame:
    """One row per (device, routing): each routed variant's record (a dict, or None) under
    `vanilla` (`moe`, else `moe-seq`), `meo` and `seq`, and MEO's speedup over vanilla."""
    out = []
    for (device, routing), group in view.groupby(["device_label", "routing"], sort=False):
        by = {r["variant"]: r.to_dict() for _, r in group.iterrows()}
        vanilla = by.get("moe", by.get("moe-seq"))
        merged = by.get("meo")
        speedup = (vanilla["latency_ms_median"] / merged["latency_ms_median"]
                   if vanilla is not None and merged is not None else float("nan"))
        first = group.iloc[0]
        out.append({"device_label": device, "routing": routing, "kind": first["kind"],
                    "param": first["param"], "local": first["local"], "setting": first["setting"],
                    "speedup": speedup, "vanilla": vanilla, "meo": merged, "seq": by.get("moe-seq")})
    rows = pd.DataFrame(out, columns=PER_ROUTING_COLUMNS)
    if rows.empty:
        return rows.assign(vs_base=pd.Series(dtype=float))
    return rows.assign(vs_base=rows["speedup"] / rows["device_label"].map(_base_speedups(rows)) - 1)


PER_ROUTING_COLUMNS = ["device_label", "routing", "kind", "param", "local", "setting", "speedup",
                       "vanilla", "meo", "seq"]
BASES = ("uniform", "router")  # what the other routings are compared with, first present


def _base_speedups(rows: pd.DataFrame) -> dict[str, float]:
    """Per device, MEO's speedup under uniform routing (else the random router's)."""
    out = {}
    for device, group in rows.groupby("device_label", sort=False):
        base = _first(group, BASES)
        out[device] = base["speedup"] if base is not None else float("nan")
    return out


# ------------------------------------------------------------------------------ tables
def _ms(r: dict | None, column: str = "latency_ms_median") -> str:
    if r is None or missing(r[column]):
        return NA
    text = fmt_ms(r[column])
    return marked(text, r["distrusted"]) if column == "latency_ms_median" else text


def _stat(r: dict | None, column: str, digits: int = 1) -> str:
    return NA if r is None else fmt_num(r[column], digits)


def routing_tables(ok: pd.DataFrame) -> list[Table]:
    """Per device: latency, bound and routing statistics of each routing measured."""
    rows = per_routing(routing_view(ok))
    out = []
    for device, group in rows.groupby("device_label", sort=False):
        body = [[r["routing"], _ms(r["vanilla"]), _ms(r["vanilla"], "roofline_ms"), _ms(r["seq"]),
                 _ms(r["meo"]), _ms(r["meo"], "roofline_ms"), fmt_times(r["speedup"]),
                 fmt_signed_pct(r["vs_base"]),
                 _stat(r["vanilla"], "experts_touched_mean"),
                 _stat(r["vanilla"], "expert_load_max_over_mean", 2),
                 _stat(r["vanilla"], "experts_per_sequence_mean"),
                 _stat(r["meo"], "experts_touched_mean"),
                 _stat(r["meo"], "expert_load_max_over_mean", 2)]
                for _, r in group.iterrows()]
        out.append(table(
            f"Routing on {device} ({group['setting'].iloc[0]})",
            [("routing", False), ("MoE ms", True), ("MoE bound ms", True), ("MoE-seq ms", True),
             ("MEO ms", True), ("MEO bound ms", True), ("MEO speedup", True),
             ("speedup vs uniform", True),
             ("MoE experts touched", True), ("MoE load max/mean", True), ("MoE experts/seq", True),
             ("MEO experts touched", True), ("MEO load max/mean", True)],
            body, "Median latency of each variant's fastest implementation; bound: the phase-wise "
                  "roofline from the routing that ran (distinct experts touched). Experts touched "
                  "and load are per MoE layer and forward, averaged over layers; load max/mean: "
                  "the busiest expert's (token, expert) pairs over the mean. MEO routes once per "
                  "sequence, so ,local:P leaves its choice distributed as the base one."))
    return out + [t for t in [trace_table(ok)] if t is not None]


TRACE_COLUMNS = [("load max/mean", "load_max_over_mean", 2), ("load CV", "load_cv", 2),
                 ("Zipf s", "zipf_s", 2), ("experts/seq", "experts_per_sequence", 1),
                 ("if independent", "independent_expectation", 1), ("locality", "locality", 3)]


def trace_table(ok: pd.DataFrame) -> Table | None:
    """The replayed traces (`--routing replay:FILE`): each one's statistics, averaged over its
    layers, as the records that replayed it keep them."""
    traces = {}
    for summary in ok["routing_trace"]:
        if isinstance(summary, dict):
            traces.setdefault(summary.get("path"), summary)
    if not traces:
        return None
    body = [[str(path), str(s.get("model")), f"{s.get('num_experts')}", f"{s.get('top_k')}",
             f"{s.get('layers')}", f"{s.get('sequences')} × {s.get('tokens')}",
             *(fmt_num(s.get(key), digits) for _, key, digits in TRACE_COLUMNS)]
            for path, s in traces.items()]
    return table("Replayed routing traces",
                 [("trace", False), ("model", False), ("E", True), ("k", True), ("layers", True),
                  ("sequences × tokens", True), *((name, True) for name, _, _ in TRACE_COLUMNS)],
                 body, "Averaged over the trace's layers (`meo-profile routing stats TRACE` shows "
                       "each layer): locality is the share of consecutive tokens sharing an "
                       "expert; experts/seq beside what independent tokens would give.")


# ------------------------------------------------------------------------------ findings
def routing_speedup(ok: pd.DataFrame) -> list[str]:
    """How far MEO's speedup over vanilla MoE moves from uniform routing to the most skewed and
    the most local routing measured."""
    rows = per_routing(routing_view(ok))
    out = []
    for device, group in rows.groupby("device_label", sort=False):
        trusted = group[group["speedup"].notna() & group.apply(_trusted, axis=1)]
        base = _first(trusted, BASES)
        if base is None:
            continue
        parts = [f"{fmt_times(base['speedup'])} under {base['routing']} routing"]
        for pick, what in ((_most_skewed, "the most skewed measured"),
                           (_most_local, "the most local measured")):
            r = pick(trusted)
            if r is not None:
                parts.append(f"{fmt_times(r['speedup'])} under {r['routing']} ({what}: "
                             f"{_why(r)}; {fmt_signed_pct(r['vs_base'])} against {base['routing']})")
        if len(parts) > 1:
            out.append(f"On {device} ({base['setting']}), MEO's speedup over "
                       f"{label(base['vanilla']['variant'])} is " + "; ".join(parts) + ".")
    return out


def _trusted(r: pd.Series) -> bool:
    return not any(bool(v["distrusted"]) for v in (r["vanilla"], r["meo"]) if v is not None)


def _first(rows: pd.DataFrame, routings: tuple[str, ...]) -> pd.Series | None:
    for routing in routings:
        hit = rows[rows["routing"] == routing]
        if not hit.empty:
            return hit.iloc[0]
    return None


def _most_skewed(rows: pd.DataFrame) -> pd.Series | None:
    """The independent-token routing whose vanilla run loaded its busiest expert most."""
    skewed = rows[(rows["local"] == 0) & rows["kind"].isin(("zipf", "biased"))]
    if skewed.empty:
        return None
    peak = skewed["vanilla"].map(lambda v: v["expert_load_max_over_mean"] if v else None)
    return skewed.loc[peak.idxmax()] if peak.notna().any() else skewed.iloc[-1]


def _most_local(rows: pd.DataFrame) -> pd.Series | None:
    local = rows[rows["local"] > 0]
    return None if local.empty else local.loc[local["local"].idxmax()]


def _why(r: pd.Series) -> str:
    v = r["vanilla"]
    if r["local"] > 0:
        return (f"vanilla's tokens touch {fmt_num(v['experts_per_sequence_mean'], 1)} experts "
                f"per sequence")
    return f"vanilla's busiest expert carries {fmt_num(v['expert_load_max_over_mean'])}× the mean load"
