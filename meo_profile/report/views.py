"""Presentation steps: results in, the slices a table or figure shows out. Nothing here measures.

Each step is a small frame-to-frame function, unit-tested on hand-written rows:
`records_frame` (one row per configuration, every schema column present, numbers numeric), `fix_axes`
(hold the axes a figure does not vary at one value), `best_per_point` (the fastest
implementation of a variant at each point), and the views the report draws from
(`flops_view`, `ratio_view`, `latency_view`, `speedup_view`, `memory_view`, `roofline_view`,
`methods_view`).

Units follow the record: `flops` = 2 x macs, `*_ms` milliseconds, `*_bytes` bytes; derived
columns say their unit in their name (`gflops`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd

from meo_profile.core.identity import config_fields, short_host
from meo_profile.core.paper import meo_flops_ratio_closed_form
from meo_profile.models.catalog import HOST_NAMES
from meo_profile.models.spec import SPEC_FIELDS
from meo_profile.models.variants import VARIANTS
from meo_profile.results.record import ENV_FIELDS, IDENTITY_FIELDS, Result

COLUMNS = IDENTITY_FIELDS + SPEC_FIELDS + Result.measured_fields() + ENV_FIELDS
NUMERIC = ("macs", "flops", "params_total", "params_active", "latency_ms_median", "latency_ms_p20",
           "latency_ms_p80", "latency_runs", "tokens_per_s", "roofline_ms", "roofline_ratio",
           "roofline_overlap_ms", "eager_ms_median", "kernel_ms", "launch_overhead",
           "experts_touched_mean", "expert_load_max_over_mean", "experts_per_sequence_mean",
           "peak_mem_bytes", "peak_mem_above_weights_bytes", "weights_bytes",
           "experts_per_token_mean", "experts_per_token_p90", "experts_per_token_max",
           "dropped_pairs", "rel_l2_error", "num_experts", "top_k", "seq_len", "batch_size",
           "d_model", "d_ff", "layers", "context", "merged_cache_bytes", "prefill_ms",
           "decode_ms_per_step")

# One configuration per machine: records of the same spec measured on two machines stay apart.
CONFIG_KEY = config_fields(machine=True)

# The baseline MEO is compared with: the paper's vanilla MoE routes tokens; the sequence-level
# form is the fallback when a sweep only ran that one.
VANILLA = ("moe", "moe-seq")
MERGED = ("meo", "meo-token")
# ------------------------------------------------------------------------------- rows in
def records_frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """One row per record with every schema column, numbers numeric. Nothing is filled in: the
    store refuses records without their required fields (results/record.py), and a value a
    record does not hold stays null."""
    df = pd.DataFrame(list(records))
    df = df.reindex(columns=list(dict.fromkeys([*COLUMNS, *df.columns])))
    for col in NUMERIC:
        df[col] = pd.to_numeric(df[col], errors="coerce")
    return df.assign(distrusted=below_bound(df))


# --------------------------------------------------------------------------- outcomes
def _outcome_keys(df: pd.DataFrame) -> pd.Series:
    """One key per measurement asked for: the configuration on its machine and the metrics
    (a flops-only record and a timed one of the same spec are two measurements)."""
    metrics = [",".join(sorted(m)) if isinstance(m, list) else "" for m in df["metrics"]]
    configs = df[list(CONFIG_KEY)].itertuples(index=False, name=None)
    return pd.Series([f"{c!r}|{m}" for c, m in zip(configs, metrics)], index=df.index)


def outcomes(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(latest, fixed): the newest record of each measurement, and the failures a later record
    of the same measurement fixed (history, not a configuration that did not complete)."""
    if df.empty:
        return df, df
    ordered = df.assign(_key=_outcome_keys(df)) \
        .sort_values("created_utc", na_position="first", kind="stable")
    latest = ordered.groupby("_key", sort=False).tail(1)
    fixed_keys = set(latest.loc[latest["status"] == "ok", "_key"])
    earlier = ordered.drop(index=latest.index)
    fixed = earlier[(earlier["status"] != "ok") & earlier["_key"].isin(fixed_keys)]
    return latest.drop(columns="_key"), fixed.drop(columns="_key")


def ok_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The successful records, one row per configuration with a device label. Records of one
    configuration (a resumed or repeated sweep) merge: the newest non-null value of each field
    wins, so a flops-only record and a latency-only one make one row."""
    ok = df[df["status"] == "ok"].sort_values("created_utc", na_position="first", kind="stable")
    if ok.empty:
        return ok.assign(device_label=pd.Series(dtype=object))
    merged = ok.groupby(list(CONFIG_KEY), dropna=False, sort=False).last().reset_index()
    return merged.assign(device_label=merged.apply(device_label, axis=1))


def device_label(row: pd.Series) -> str:
    name = row.get("device_name")
    return f"{row['device']}: {name}" if isinstance(name, str) and name else str(row["device"])


# ------------------------------------------------------------------------------- slicing
def pick_value(values: pd.Series, preferred: Any = None) -> Any:
    """The preferred value when present (a tuple: the first of them present), else the most
    common (ties: the smallest, for a choice that does not depend on row order)."""
    present = values.dropna()
    if present.empty:
        return None
    for choice in preferred if isinstance(preferred, tuple) else (preferred,):
        if choice is not None and (present == choice).any():
            return choice
    counts = present.value_counts()
    return min(counts[counts == counts.max()].index, key=_sort_key)


def _sort_key(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float, np.number)) else (1, 0, str(value))


def fix_axes(df: pd.DataFrame, prefer: dict[str, Any]) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Hold each axis in `prefer` at one value (its preferred one when present), in order.

    Returns the rows left and the values chosen, for the caption. An axis with no values
    (all null) is left free.
    """
    chosen: dict[str, Any] = {}
    for col, preferred in prefer.items():
        value = pick_value(df[col], preferred)
        if value is None:
            continue
        df = df[df[col] == value]
        chosen[col] = _plain(value)
    return df, chosen


def match(df: pd.DataFrame, values: dict[str, Any]) -> pd.DataFrame:
    """Rows whose columns equal `values` (null-valued entries ignored)."""
    for col, value in values.items():
        if value is not None:
            df = df[df[col] == value]
    return df


def best_per_point(df: pd.DataFrame, by: list[str], metric: str) -> pd.DataFrame:
    """Per point (`by`), the row with the smallest `metric`: where a variant ran with several
    implementations, the best one is the one a user would deploy."""
    df = df[df[metric].notna()]
    if df.empty:
        return df
    return df.sort_values(metric, kind="stable").groupby(by, sort=True, dropna=False).head(1) \
        .sort_values(by, kind="stable").reset_index(drop=True)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def describe_setting(chosen: dict[str, Any]) -> str:
    """'host layer, E=16, B=8, L=128, float32, inference': the held axes, for captions, in one
    order whatever order they were held in. The paper's expert unit (linear) goes unsaid."""
    parts = [fmt(chosen[k]) for k, fmt in SETTING_FORMAT.items() if chosen.get(k) is not None]
    return ", ".join(p for p in parts if p)


SETTING_FORMAT = {
    "workload": lambda v: "" if v == "prefill" else f"workload {v}",
    "host": lambda v: f"host {short_host(v)}",  # a panel title: the full path is in the tables
    "d_model": lambda v: f"d={v}",
    "d_ff": lambda v: f"d_ff={v}",
    "num_experts": lambda v: f"E={v}",
    "top_k": lambda v: f"k={v}",
    "batch_size": lambda v: f"B={v}",
    "seq_len": lambda v: f"L={v}",
    "dtype": str,
    "mode": str,
    "expert_unit": lambda v: "" if v == "linear" else f"expert unit {v}",
    "router_scale": lambda v: "" if v == 1 else f"router logits ×{v:g}",
    "routing": lambda v: "" if v == "router" else f"routing {v}",
}


# ------------------------------------------------------------------------------- views
# The paper's figure plots these hosts; other hosts are drawn only when none of them is present.
PAPER_HOSTS = ("bert-small", "bert-base", "bert-large")
# The paper's figures are of one forward over whole sequences: a prefill (--workload).
FLOPS_PREFER = {"workload": "prefill", "expert_unit": "linear", "mode": "inference", "seq_len": 128,
                "batch_size": 1, "num_experts": 32}


def flops_view(df: pd.DataFrame, hosts: tuple[str, ...] | None = PAPER_HOSTS,
               variants: tuple[str, ...] = ("moe", "meo")) -> pd.DataFrame:
    """GFLOPs per forward against k, per host and variant, the other axes held per host
    (the paper's L=128, B=1 when present). One row per (host, variant, k)."""
    d = df[df["flops"].notna() & df["variant"].isin(variants)]
    if hosts is not None and d["host"].isin(hosts).any():
        d = d[d["host"].isin(hosts)]
    parts = []
    for host in order_hosts(d["host"].unique()):
        held, chosen = fix_axes(d[d["host"] == host], FLOPS_PREFER)
        best = best_per_point(held, ["variant", "top_k"], "flops")
        parts.append(best.assign(gflops=best["flops"] / 1e9))
    return pd.concat(parts, ignore_index=True) if parts else d.assign(gflops=pd.Series(dtype=float))


def order_hosts(hosts: Iterable[str]) -> list[str]:
    rank = {h: i for i, h in enumerate(HOST_NAMES)}
    return sorted(hosts, key=lambda h: (rank.get(h, len(rank)), h))


def part_macs(parts: Any, names: tuple[str, ...]) -> float:
    """Sum of `macs_by_part` entries `names`; NaN when the record has no breakdown."""
    if not isinstance(parts, dict) or not any(n in parts for n in names):
        return float("nan")
    return float(sum(parts.get(n, 0) for n in names))


MOE_LAYER_PARTS = ("experts", "merge")


def ratio_view(flops: pd.DataFrame) -> pd.DataFrame:
    """MEO / vanilla FLOPs per host and k, whole model and MoE layers only, beside 1/k + 1/L."""
    rows = []
    for (host, k), group in flops.groupby(["host", "top_k"], sort=False):
        by_variant = {r["variant"]: r for _, r in group.iterrows()}
        vanilla = next((by_variant[v] for v in VANILLA if v in by_variant), None)
        for variant in MERGED:
            merged = by_variant.get(variant)
            if vanilla is None or merged is None:
                continue
            layer_ratio = (part_macs(merged["macs_by_part"], MOE_LAYER_PARTS)
                           / part_macs(vanilla["macs_by_part"], MOE_LAYER_PARTS))
            rows.append({"host": host, "variant": variant, "vanilla": vanilla["variant"],
                         "top_k": int(k), "seq_len": int(merged["seq_len"]),
                         "num_experts": int(merged["num_experts"]),
                         "batch_size": int(merged["batch_size"]), "merged_impl": merged["impl"],
                         "vanilla_gflops": vanilla["gflops"], "merged_gflops": merged["gflops"],
                         "ratio": merged["flops"] / vanilla["flops"],
                         "moe_layer_ratio": layer_ratio,
                         "closed_form": meo_flops_ratio_closed_form(k, merged["seq_len"])})
    return pd.DataFrame(rows)


LATENCY_PREFER = {"workload": "prefill", "host": "layer", "mode": "inference",
                  "expert_unit": "linear", "dtype": None, "d_model": None, "d_ff": None,
                  "layers": None, "batch_size": 8, "seq_len": 128,
                  "routing": ("router", "uniform")}  # the random router's, or the routing like it
# What the dense baseline is matched on: not E, k or routing, which it has none of.
NOT_DENSE = ("num_experts", "top_k", "routing")


def latency_view(df: pd.DataFrame, num_experts: int = 16) -> pd.DataFrame:
    """Latency against k per variant at one E, per device; dense rows are the k-free baseline.
    Columns add the held setting, so each device's panel can say what it shows."""
    parts = []
    for label, dev in _by_device(df, "latency_ms_median"):
        sparse, chosen = fix_axes(dev[dev["variant"] != "dense"],
                                  {**LATENCY_PREFER, "num_experts": num_experts})
        dense = match(dev[dev["variant"] == "dense"], _without(chosen, *NOT_DENSE))
        rows = best_per_point(pd.concat([sparse, dense]), ["variant", "top_k"], "latency_ms_median")
        parts.append(rows.assign(device_label=label, setting=describe_setting(chosen)))
    return _concat(parts)


def speedup_view(df: pd.DataFrame) -> pd.DataFrame:
    """MEO's speedup over vanilla per (E, k) and device: vanilla / MEO median latency, each at its
    fastest implementation, beside the FLOPs ratio vanilla / MEO and the roofline bounds' ratio."""
    parts = []
    for label, dev in _by_device(df, "latency_ms_median"):
        held, chosen = fix_axes(dev[dev["variant"] != "dense"], LATENCY_PREFER)
        best = best_per_point(held, ["variant", "num_experts", "top_k"], "latency_ms_median")
        vanilla = _first_variant(best, VANILLA)
        merged = best[best["variant"] == "meo"]
        if vanilla.empty or merged.empty:
            continue
        pair = merged.merge(vanilla, on=["num_experts", "top_k"], suffixes=("", "_vanilla"))
        parts.append(_speedup_columns(pair).assign(device_label=label,
                                                   setting=describe_setting(chosen)))
    return _concat(parts)


def _speedup_columns(pair: pd.DataFrame) -> pd.DataFrame:
    """`bound_speedup`: vanilla / MEO phase-wise bound, the speedup the hardware allows when both
    run at their bound. speedup = bound_speedup × vanilla_vs_bound / meo_vs_bound, exactly."""
    return pd.DataFrame({
        "num_experts": pair["num_experts"].astype(int), "top_k": pair["top_k"].astype(int),
        "vanilla": pair["variant_vanilla"], "vanilla_impl": pair["impl_vanilla"],
        "meo_impl": pair["impl"],
        "vanilla_ms": pair["latency_ms_median_vanilla"], "meo_ms": pair["latency_ms_median"],
        "speedup": pair["latency_ms_median_vanilla"] / pair["latency_ms_median"],
        "flops_ratio": pair["flops_vanilla"] / pair["flops"],
        "bound_speedup": pair["roofline_ms_vanilla"] / pair["roofline_ms"],
        "meo_vs_bound": pair["latency_ms_median"] / pair["roofline_ms"],
        "vanilla_vs_bound": pair["latency_ms_median_vanilla"] / pair["roofline_ms_vanilla"],
        "distrusted": pair["distrusted"] | pair["distrusted_vanilla"],
    }).assign(realised=lambda t: t["speedup"] / t["flops_ratio"])


MEMORY_PREFER = {**LATENCY_PREFER, "mode": None, "top_k": 4}


def memory_view(df: pd.DataFrame) -> pd.DataFrame:
    """Peak memory against E per variant, per device and mode (inference, train), k held."""
    parts = []
    for label, dev in _by_device(df, "peak_mem_bytes"):
        for mode, rows in dev.groupby("mode", sort=True):
            sparse, chosen = fix_axes(rows[rows["variant"] != "dense"],
                                      _without(MEMORY_PREFER, "mode"))
            dense = match(rows[rows["variant"] == "dense"], _without(chosen, *NOT_DENSE))
            best = best_per_point(pd.concat([sparse, dense]), ["variant", "num_experts"],
                                  "peak_mem_bytes")
            parts.append(best.assign(device_label=label, mode=mode,
                                     setting=describe_setting({**chosen, "mode": mode})))
    return _concat(parts)


def roofline_view(df: pd.DataFrame, distrusted: bool = False) -> pd.DataFrame:
    """Every configuration with both a measured median and a roofline bound: those measured at
    or above their bound (results), or, with `distrusted`, those below it (broken measurements,
    never drawn as results)."""
    bounded = df[df["latency_ms_median"].notna() & df["roofline_ms"].notna()
                 & (df["roofline_ms"] > 0)]
    return bounded[bounded["distrusted"] == distrusted].reset_index(drop=True)


def below_bound(df: pd.DataFrame) -> pd.Series:
    """A measured time below its roofline bound: as recorded, or (older records) as their
    numbers say. Physics forbids it; the measurement is to distrust."""
    recorded = df["below_bound"].map(lambda v: v if isinstance(v, (bool, np.bool_)) else None)
    derived = df["latency_ms_median"] < df["roofline_ms"]
    return recorded.where(recorded.notna(), derived).astype(bool)


TIME_PREFER = {**LATENCY_PREFER, "num_experts": 16, "top_k": 4}


def time_view(df: pd.DataFrame) -> pd.DataFrame:
    """Where a step's time goes, per device: each (variant, implementation) at one held setting,
    with its eager, graph-replay and kernel times (CUDA records that carry a kernel time)."""
    parts = []
    for label, dev in _by_device(df, "kernel_ms"):
        sparse, chosen = fix_axes(dev[dev["variant"] != "dense"], TIME_PREFER)
        dense = match(dev[dev["variant"] == "dense"], _without(chosen, *NOT_DENSE))
        rows = in_variant_order(pd.concat([dense, sparse]))
        graph = rows["latency_ms_median"].where(rows["timing_mode"] == "graph")
        parts.append(rows.assign(device_label=label, setting=describe_setting(chosen),
                                 graph_ms=graph))
    return _concat(parts)


# ------------------------------------------------------------------ the four methods
# Vanilla MoE, MEO, compressed experts and XMoE at one expert budget: the same expert weights,
# E experts of width d_ff (XMoE: E·g experts of width d_ff/g, the same total).
BUDGET_METHODS = ("moe", "meo", "ce", "xmoe")
NEWER_METHODS = ("ce", "xmoe")
# The shared setting, read from the newer methods' records. XMoE splits whole FFN experts, so
# the comparison is made with ffn experts for all four.
BUDGET_PREFER = {"workload": "prefill", "host": "layer", "mode": "inference",
                 "expert_unit": "ffn", "dtype": None, "d_model": None, "d_ff": None,
                 "layers": None, "num_experts": 16, "batch_size": 8, "seq_len": 128,
                 "routing": ("router", "uniform")}
# Each method's own knobs, held at one value (the papers' defaults where present; compressed
# experts' n_ce at k/2, set where k is known).
METHOD_KNOBS = {"ce": {"n_ce": None, "ce_init": "ones"},
                "xmoe": {"threshold": 0.9, "granularity": None, "max_k": None,
                         "capacity_factor": None}}
# Everything an MoE block computes: experts, MEO's merge, routers, compressed vectors.
MOE_BLOCK_PARTS = ("experts", "merge", "router", "compress", "token_block")
RELATIVE = {"params_active": "params_rel", "moe_block_gflops": "moe_block_rel",
            "latency_ms_median": "latency_rel", "peak_mem_bytes": "peak_mem_rel"}


def methods_view(df: pd.DataFrame) -> pd.DataFrame:
    """Per device, one row per method at one shared setting and expert budget, with the MoE
    block's GFLOPs and each quantity relative to vanilla MoE's (`*_rel`). A device needs counted
    records of vanilla MoE and of compressed experts or XMoE; MEO is shown when present."""
    parts = []
    for label, dev in _by_device(df, "flops"):
        rows = dev[dev["variant"].isin(BUDGET_METHODS)]
        newer = rows[rows["variant"].isin(NEWER_METHODS)]
        if newer.empty:
            continue
        _, chosen = fix_axes(newer, BUDGET_PREFER)
        picked = _one_per_method(match(rows, chosen))
        if not (picked["variant"] == "moe").any() or not picked["variant"].isin(NEWER_METHODS).any():
            continue
        scales = picked["router_scale"].unique()
        setting = {**chosen, **({"router_scale": _plain(scales[0])} if len(scales) == 1 else {})}
        parts.append(_relative_to_vanilla(picked).assign(device_label=label,
                                                         setting=describe_setting(setting)))
    return _concat(parts)


def _one_per_method(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per method: k held at the compressed experts' (else the most common, 4 first),
    the router scale at XMoE's (else compressed experts'), each method's knobs held, then the
    fastest implementation (the cheapest count where none was timed)."""
    topk_rows = rows[rows["variant"] == "ce"] if (rows["variant"] == "ce").any() else rows
    k = pick_value(topk_rows.loc[topk_rows["variant"] != "xmoe", "top_k"], 4)
    sharpened = rows[rows["variant"].isin(("xmoe", "ce"))].sort_values("variant", ascending=False)
    scale = sharpened["router_scale"].iloc[0] if not sharpened.empty else None
    out = []
    for variant in BUDGET_METHODS:
        held = rows[rows["variant"] == variant]
        own = {"router_scale": scale, **({} if variant == "xmoe" else {"top_k": k}),
               **METHOD_KNOBS.get(variant, {}), **({"n_ce": k // 2} if variant == "ce" else {})}
        held, _ = fix_axes(held, own) if not held.empty else (held, {})
        if not held.empty:
            out.append(held.sort_values(["latency_ms_median", "flops"], kind="stable",
                                        na_position="last").head(1))
    return pd.concat(out, ignore_index=True) if out else rows.iloc[0:0]


def in_variant_order(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by the report's variant order (vanilla MoE, MEO, ..., compressed, XMoE)."""
    rank = {v: i for i, v in enumerate(VARIANTS)}
    return rows.sort_values("variant", key=lambda s: s.map(rank), kind="stable") \
        .reset_index(drop=True)


def _relative_to_vanilla(rows: pd.DataFrame) -> pd.DataFrame:
    rows = rows.assign(
        gflops=rows["flops"] / 1e9,
        moe_block_gflops=[2 * part_macs(p, MOE_BLOCK_PARTS) / 1e9 for p in rows["macs_by_part"]],
        experts_built=rows["num_experts"] * rows["granularity"].fillna(1),
        expert_width=rows["d_ff"] / rows["granularity"].fillna(1))
    vanilla = rows[rows["variant"] == "moe"].iloc[0]
    return rows.assign(**{rel: rows[col] / vanilla[col] for col, rel in RELATIVE.items()})


def _by_device(df: pd.DataFrame, metric: str):
    d = df[df[metric].notna()]
    return list(d.groupby("device_label", sort=True)) if not d.empty else []


def _first_variant(df: pd.DataFrame, variants: tuple[str, ...]) -> pd.DataFrame:
    for v in variants:
        if (df["variant"] == v).any():
            return df[df["variant"] == v]
    return df.iloc[0:0]


def _without(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in keys}


def _concat(parts: list[pd.DataFrame]) -> pd.DataFrame:
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
