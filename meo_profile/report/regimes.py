"""Where merging pays off: MEO against the best vanilla MoE over batch × tokens per sequence per
forward, prefill and decode, as one view, the table it makes and the sentences read from it.
Nothing here measures.

A point is a batch B and a regime: a prefill of L tokens per sequence, or a decode step (one
token per sequence after C) with the merged expert merged again every step (`--merge-reuse
step`) or kept from the prompt (`sequence`). Per point: each variant's fastest implementation
(views.best_per_point), MEO's measured speedup over vanilla (vanilla / MEO median ms), the
speedup the phase-wise bounds predict (vanilla / MEO roofline), the dense FFN's time (one
expert: what MEO's matmuls cost without a merge) and, kept from the prompt, the merged experts'
bytes. Tokens per forward are B·L (B at decode): what the region claims of `check` read.
"""

from __future__ import annotations

import pandas as pd

from meo_profile.core.units import NA, fmt_int, fmt_ms, fmt_times, human_bytes, missing
from meo_profile.report import views
from meo_profile.report.tables import Table, marked, table

# The paper's layer unless a sweep measured another; every other axis held at one value.
REGIME_PREFER = {"host": "layer", "mode": "inference", "expert_unit": "linear", "dtype": None,
                 "d_model": None, "d_ff": None, "layers": None, "num_experts": 16, "top_k": 4,
                 "seed": None, "routing": ("router", "uniform")}
REGIME_VARIANTS = ("dense", "moe", "moe-seq", "meo")
# The regimes in the order a table and a heatmap show them: decode first (one token), then
# prefills by L. (workload, merge_reuse) -> label.
DECODE_REGIMES = {"step": "decode, merged every step", "sequence": "decode, merge kept"}
PREFILL = "prefill"


def _regime(row: pd.Series) -> str:
    if row["workload"] == "decode":
        return DECODE_REGIMES.get(row["merge_reuse"], "decode")
    return PREFILL


def regime_view(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (device, B, regime, L) where MEO and vanilla were both timed, for devices
    with two points or more: see the module doc for the columns. Decode points hold one context
    C (the most common)."""
    d = df[df["latency_ms_median"].notna() & df["variant"].isin(REGIME_VARIANTS)
           & df["workload"].isin(("prefill", "decode"))]
    parts = []
    for device, rows in d.groupby("device_label", sort=True) if not d.empty else []:
        merged = rows[rows["variant"] == "meo"]
        if merged.empty or not rows["variant"].isin(views.VANILLA).any():
            continue
        _, chosen = views.fix_axes(merged, REGIME_PREFER)
        dense = views.match(rows[rows["variant"] == "dense"],  # one expert: no E, k, routing
                            {k: v for k, v in chosen.items() if k not in views.NOT_DENSE})
        held = pd.concat([views.match(rows[rows["variant"] != "dense"], chosen), dense])
        decode = held[held["workload"] == "decode"]
        if not decode.empty:  # one context for every decode point
            context = views.pick_value(decode["context"])
            held = held[(held["workload"] != "decode") | (held["context"] == context)]
            chosen["context"] = context
        points = _points(held)
        if len(points) >= 2:  # one (batch, regime) point maps nothing (the other sections have it)
            parts.append(points.assign(device_label=device, setting=_setting(chosen)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _setting(chosen: dict) -> str:
    decode = f", decode after C={int(chosen['context'])}" if chosen.get("context") else ""
    return views.describe_setting(chosen) + decode


def _points(held: pd.DataFrame) -> pd.DataFrame:
    """MEO's rows paired with vanilla's and dense's at the same B and tokens per forward."""
    held = held.assign(tokens_per_seq=held["seq_len"].where(held["workload"] == "prefill", 1),
                       regime=held.apply(_regime, axis=1))
    best = views.best_per_point(held, ["variant", "batch_size", "regime", "tokens_per_seq"],
                                "latency_ms_median")
    vanilla = views.VANILLA[0] if (best["variant"] == views.VANILLA[0]).any() else views.VANILLA[1]
    key = ["batch_size", "workload", "tokens_per_seq"]
    other = {v: best[best["variant"] == v].drop(columns=["regime"]).set_index(key)
             for v in (vanilla, "dense")}
    rows = []
    for r in best[best["variant"] == "meo"].to_dict("records"):
        at = (r["batch_size"], r["workload"], r["tokens_per_seq"])
        if at not in other[vanilla].index:
            continue
        v = other[vanilla].loc[at]
        dense = other["dense"].loc[at] if at in other["dense"].index else None
        rows.append(_point(r, v, dense, vanilla))
    return pd.DataFrame(rows)


def _point(meo: dict, vanilla: pd.Series, dense: pd.Series | None, name: str) -> dict:
    return {
        "batch_size": int(meo["batch_size"]), "regime": meo["regime"],
        "tokens_per_seq": int(meo["tokens_per_seq"]),
        "tokens_per_forward": int(meo["batch_size"] * meo["tokens_per_seq"]),
        "layers": int(meo["layers"]), "vanilla": name,
        "vanilla_impl": vanilla["impl"], "meo_impl": meo["impl"],
        "vanilla_ms": vanilla["latency_ms_median"], "meo_ms": meo["latency_ms_median"],
        "dense_ms": None if dense is None else dense["latency_ms_median"],
        "speedup": vanilla["latency_ms_median"] / meo["latency_ms_median"],
        "bound_speedup": vanilla["roofline_ms"] / meo["roofline_ms"],
        "meo_vs_bound": meo["latency_ms_median"] / meo["roofline_ms"],
        "vanilla_vs_bound": vanilla["latency_ms_median"] / vanilla["roofline_ms"],
        "merged_cache_bytes": meo["merged_cache_bytes"],
        "distrusted": bool(meo["distrusted"]) or bool(vanilla["distrusted"]),
    }


REGIME_ORDER = (*DECODE_REGIMES.values(), "decode", PREFILL)


def regime_columns(rows: pd.DataFrame) -> list[tuple[str, int]]:
    """(regime, tokens per sequence) in the order a table's rows and a heatmap's columns go."""
    present = rows[["regime", "tokens_per_seq"]].drop_duplicates()
    return sorted(present.itertuples(index=False, name=None),
                  key=lambda c: (REGIME_ORDER.index(c[0]), c[1]))


def regime_label(regime: str, tokens: int) -> str:
    return f"L={tokens}" if regime == PREFILL else regime


# ------------------------------------------------------------------------------ the table
def regime_tables(ok: pd.DataFrame) -> list[Table]:
    view = regime_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        order = {c: i for i, c in enumerate(regime_columns(rows))}
        rows = rows.assign(_at=[order[(r, t)] for r, t in zip(rows["regime"], rows["tokens_per_seq"])])
        body = [[fmt_int(r.batch_size), regime_label(r.regime, r.tokens_per_seq),
                 f"{r.tokens_per_forward:,}", f"{fmt_ms(r.vanilla_ms)} ({r.vanilla_impl})",
                 f"{fmt_ms(r.meo_ms)} ({r.meo_impl})", fmt_ms(r.dense_ms),
                 marked(fmt_times(r.speedup), r.distrusted), fmt_times(r.bound_speedup),
                 fmt_times(r.meo_vs_bound), fmt_times(r.vanilla_vs_bound), _cache(r)]
                for r in rows.sort_values(["batch_size", "_at"]).itertuples()]
        header = [("B", True), ("regime", False), ("B·L", True), ("vanilla ms (impl)", True),
                  ("MEO ms (impl)", True), ("dense ms", True), ("speedup", True),
                  ("bound ratio", True), ("MEO / bound", True), ("vanilla / bound", True),
                  ("merged experts kept", True)]
        out.append(table(f"Where merging pays off, {device}; {rows['setting'].iloc[0]}", header,
                         body, "Median ms per call: a prefill of B sequences of L tokens, or one "
                         "decode step (B tokens). speedup: vanilla / MEO, each at its fastest "
                         "implementation; bound ratio: vanilla / MEO phase-wise roofline, the "
                         "speedup the bounds predict; dense: one expert's FFN, no merge. Merged "
                         "experts kept: the bytes MEO holds between steps when each sequence's "
                         "merged expert is kept from its prompt (all MoE layers). (below bound): "
                         "a time below its bound, a measurement to distrust."))
    return out


def _cache(r) -> str:
    return NA if missing(r.merged_cache_bytes) or r.regime != DECODE_REGIMES["sequence"] \
        else human_bytes(r.merged_cache_bytes)


# ------------------------------------------------------------------------------ findings
def regime_findings(ok: pd.DataFrame) -> list[str]:
    """The boundary in numbers, per device, read from the regime table's rows."""
    view = regime_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        trusted = rows[~rows["distrusted"]]
        sentences = [s for s in (_prefill_boundary(trusted), _kept_boundary(trusted),
                                 _every_step(trusted), _bounds_agree(trusted)) if s]
        if sentences:
            out.append(f"On {device} ({rows['setting'].iloc[0]}): " + " ".join(sentences))
    return out


def _at(r: pd.Series) -> str:
    return f"B={r['batch_size']} L={r['tokens_per_seq']} ({fmt_times(r['speedup'])})"


def _prefill_boundary(rows: pd.DataFrame) -> str:
    """The smallest B·L from which MEO is faster at every measured prefill point."""
    pre = rows[rows["regime"] == PREFILL].sort_values("tokens_per_forward")
    if pre.empty:
        return ""
    faster = pre["speedup"] > 1
    from_tokens = next((t for t in pre["tokens_per_forward"].unique()
                        if faster[pre["tokens_per_forward"] >= t].all()), None)
    if from_tokens is None:
        return (f"at prefill MEO is slower than the best vanilla MoE at the largest point, "
                f"{_at(pre.iloc[-1])}, so no B·L threshold holds it faster.")
    above, below = pre[pre["tokens_per_forward"] >= from_tokens], pre[pre["tokens_per_forward"] < from_tokens]
    text = (f"at prefill MEO is faster than the best vanilla MoE at every point with "
            f"B·L ≥ {from_tokens:,} ({len(above)} of {len(pre)} points, "
            f"{fmt_times(above['speedup'].min())} to {fmt_times(above['speedup'].max())})")
    slower = below[below["speedup"] <= 1]
    if not slower.empty:
        text += f", and not faster at {len(slower)} of the {len(below)} below: " + \
            ", ".join(_at(r) for _, r in slower.iterrows())
    return text + "."


def _kept_boundary(rows: pd.DataFrame) -> str:
    """Decode with the merged expert kept: at which batches MEO is faster, and the cache."""
    kept = rows[rows["regime"] == DECODE_REGIMES["sequence"]].sort_values("batch_size")
    if kept.empty:
        return ""
    batches, faster = kept["batch_size"].tolist(), (kept["speedup"] > 1).tolist()
    lead = next((i for i, f in enumerate(faster) if not f), len(faster))  # faster up to here
    if lead == len(faster):
        where = "faster at every measured batch"
    elif not any(faster[lead:]) and lead:
        where = f"faster at B ≤ {batches[lead - 1]} and slower beyond"
    elif not any(faster):
        where = "slower at every measured batch"
    else:
        where = (f"faster at B={_batches(batches, faster, True)} and slower at "
                 f"B={_batches(batches, faster, False)}")
    speeds = ", ".join(f"B={r.batch_size} {fmt_times(r.speedup)}" for r in kept.itertuples())
    last = kept.iloc[-1]
    cache = ("" if missing(last["merged_cache_bytes"]) else
             f", holding {human_bytes(last['merged_cache_bytes'] / last['layers'])} of merged "
             f"experts per layer at B={last['batch_size']}")
    return (f"At decode with each sequence's merged expert kept from its prompt, MEO is {where} "
            f"({speeds}){cache}.")


def _batches(batches: list[int], faster: list[bool], which: bool) -> str:
    return ", ".join(str(b) for b, f in zip(batches, faster, strict=True) if f == which)


def _every_step(rows: pd.DataFrame) -> str:
    step = rows[rows["regime"] == DECODE_REGIMES["step"]].sort_values("batch_size")
    if step.empty:
        return ""
    speeds = ", ".join(f"B={r.batch_size} {fmt_times(r.speedup)}" for r in step.itertuples())
    return f"Merged again every decode step, its speedup over vanilla is {speeds}."


def _bounds_agree(rows: pd.DataFrame) -> str:
    known = rows[rows["bound_speedup"].notna()]
    if known.empty:
        return ""
    agree = ((known["bound_speedup"] > 1) == (known["speedup"] > 1)).sum()
    return (f"The phase-wise bounds name the faster of the two at {agree} of {len(known)} "
            f"points.")
