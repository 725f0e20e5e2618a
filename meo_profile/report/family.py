"""The merging family side by side: vanilla MoE, MEO, SMEAR, Lory and Soft MoE at one expert
budget (E experts of one width, the same B x L tokens). A view (rows in, one row per member out)
and its tables; the figure is figures/family.py. Nothing here measures.

Per-token columns divide by the N = B·L tokens of one forward: MoE-block FLOPs (every part an
MoE layer computes: experts, merge, routers, Soft MoE's dispatch and combine; FLOPs = 2 x MACs),
the median latency and the roofline bound in microseconds, and the peak memory above the
weights (inference; a training step's where one was measured) in KiB. `ratio_top{k}` is a
member's MoE-block FLOPs over vanilla top-k's at the same setting, for every counted k. In units
of one expert per token (vanilla's experts MACs over k): `expert_rows_per_token`, how many
expert rows a token's share of the experts' matmuls is (vanilla k, the merging members 1, Soft
MoE S/L), and `added_per_token`, what the rest of the MoE block adds (merge, routers, dispatch
and combine).
"""

from __future__ import annotations

import pandas as pd

from meo_profile.core.identity import label
from meo_profile.core.paper import FLOPS_CONVENTION
from meo_profile.core.units import NA, fmt_int, fmt_num, fmt_times, missing
from meo_profile.report import views
from meo_profile.report.tables import Table, marked, table

FAMILY = ("moe", "meo", "smear", "lory", "soft-moe")
MERGING = ("smear", "lory", "soft-moe")
# The shared setting, read from the merging members' records; whole-FFN experts, as the
# SMEAR, Lory and Soft MoE papers merge or run them.
FAMILY_PREFER = {"host": "layer", "mode": "inference", "expert_unit": "ffn", "dtype": None,
                 "d_model": None, "d_ff": None, "layers": None, "num_experts": 16,
                 "batch_size": 8, "seq_len": 128, "router_scale": None}
# Each member's own knobs, held at one value (MEO's k at 4 where present).
MEMBER_KNOBS = {"meo": {"top_k": 4}, "lory": {"segment_len": None},
                "soft-moe": {"slots_per_expert": None}}
FAMILY_PARTS = (*views.MOE_BLOCK_PARTS, "dispatch", "combine")
KIB = 2**10


def family_view(df: pd.DataFrame) -> pd.DataFrame:
    """Per device, one row per member at one setting (vanilla MoE: one per counted k), with the
    per-token columns and the ratios to vanilla top-k (see the module doc). A device needs
    counted records of vanilla MoE and of a merging member at the same setting."""
    parts = []
    counted = df[df["flops"].notna()] if "flops" in df else df.iloc[0:0]
    for device, dev in counted.groupby("device_label", sort=True):
        members = dev[dev["variant"].isin(MERGING)]
        if members.empty:
            continue
        _, chosen = views.fix_axes(members, FAMILY_PREFER)
        rows = views.match(dev[dev["variant"].isin(FAMILY)], chosen)
        vanilla = views.best_per_point(rows[rows["variant"] == "moe"], ["top_k"], "flops")
        if vanilla.empty:
            continue
        picked = pd.concat([vanilla, *(_one(rows, v) for v in FAMILY[1:])], ignore_index=True)
        train = views.match(df[df["device_label"] == device], {**chosen, "mode": "train"})
        parts.append(_per_token(picked, vanilla, train)
                     .assign(device_label=device, setting=views.describe_setting(chosen)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def _one(rows: pd.DataFrame, variant: str) -> pd.DataFrame:
    """A member's row: its knobs held, then the fastest implementation (else the cheapest count)."""
    held = rows[rows["variant"] == variant]
    if held.empty:
        return held
    held, _ = views.fix_axes(held, MEMBER_KNOBS.get(variant, {}))
    return held.sort_values(["latency_ms_median", "flops"], kind="stable", na_position="last").head(1)


def _per_token(rows: pd.DataFrame, vanilla: pd.DataFrame, train: pd.DataFrame) -> pd.DataFrame:
    tokens = rows["batch_size"] * rows["seq_len"]
    block = pd.Series([2 * views.part_macs(p, FAMILY_PARTS) for p in rows["macs_by_part"]],
                      index=rows.index)
    out = rows.assign(moe_block_flops=block, mflops_per_token=block / tokens / 1e6,
                      latency_us_per_token=rows["latency_ms_median"] * 1e3 / tokens,
                      bound_us_per_token=rows["roofline_ms"] * 1e3 / tokens,
                      mem_kib_per_token=rows["peak_mem_above_weights_bytes"] / tokens / KIB,
                      train_mem_kib_per_token=[_train_memory(train, r) / n / KIB
                                               for r, n in zip(rows.to_dict("records"), tokens)])
    for r in vanilla.to_dict("records"):
        out[f"ratio_top{int(r['top_k'])}"] = out["moe_block_flops"] / (
            2 * views.part_macs(r["macs_by_part"], FAMILY_PARTS))
    first = vanilla.iloc[0]  # one expert per token: vanilla's experts MACs over its k tokens rows
    expert_macs = views.part_macs(first["macs_by_part"], ("experts",)) / (
        first["batch_size"] * first["seq_len"] * first["top_k"])
    experts = pd.Series([views.part_macs(p, ("experts",)) for p in rows["macs_by_part"]],
                        index=rows.index)
    return out.assign(expert_rows_per_token=experts / tokens / expert_macs,
                      added_per_token=(block / 2 - experts) / tokens / expert_macs)


def _train_memory(train: pd.DataFrame, row: dict) -> float:
    """The peak above the weights of a training step of the same configuration, if measured."""
    own = {k: row[k] for k in ("variant", "top_k", "segment_len", "slots_per_expert")
           if not missing(row[k])}  # a knob the variant does not read is null
    same = views.match(train, own)
    same = same[same["peak_mem_above_weights_bytes"].notna()]
    return float(same["peak_mem_above_weights_bytes"].min()) if not same.empty else float("nan")


def vanilla_ks(view: pd.DataFrame) -> list[int]:
    """The vanilla top-k counted beside the family, ascending."""
    return sorted(int(c.removeprefix("ratio_top")) for c in view.columns
                  if c.startswith("ratio_top") and view[c].notna().any())


def merges(r) -> str:
    """'all 16 merged per segment of 32 (dense)': what a member merges, how often, and how."""
    E, k = fmt_int(r.num_experts), fmt_int(r.top_k)
    return {
        "moe": f"top-{k}, no merge ({r.impl})",
        "meo": f"top-{k} merged per sequence of {fmt_int(r.seq_len)} ({r.impl})",
        "smear": f"all {E} merged per sequence of {fmt_int(r.seq_len)} ({r.impl})",
        "lory": f"all {E} merged per segment of {fmt_int(min(r.segment_len, r.seq_len))} "
                f"({r.impl})",
        "soft-moe": f"{fmt_int(r.num_experts * r.slots_per_expert)} slots ({E} × "
                    f"{fmt_int(r.slots_per_expert)}) for {fmt_int(r.seq_len)} tokens ({r.impl})",
    }.get(r.variant, r.variant)


def member_label(r) -> str:
    return f"{label(r.variant)} top-{fmt_int(r.top_k)}" if r.variant == "moe" else label(r.variant)


def family_tables(ok: pd.DataFrame) -> list[Table]:
    """Per device: each member's merges, MoE-block FLOPs per token and their ratio to vanilla
    top-k at each counted k, latency and bound per token, memory per token."""
    view = family_view(ok)
    out = []
    for device, rows in view.groupby("device_label", sort=True) if not view.empty else []:
        ks = vanilla_ks(rows)
        body = [[member_label(r), merges(r), fmt_num(r.expert_rows_per_token),
                 fmt_num(r.added_per_token), fmt_num(r.mflops_per_token, 1),
                 *(fmt_times(getattr(r, f"ratio_top{k}")) for k in ks),
                 marked(fmt_num(r.latency_us_per_token, 1), r.distrusted),
                 fmt_num(r.bound_us_per_token, 1), fmt_num(r.mem_kib_per_token, 1),
                 fmt_num(r.train_mem_kib_per_token, 1)]
                for r in views.in_variant_order(rows).itertuples()]
        header = [("method", False), ("merges", False), ("expert rows / token", True),
                  ("added / token (experts)", True), ("MoE-block MFLOPs / token", True),
                  *((f"× top-{k}", True) for k in ks), ("latency µs / token", True),
                  ("bound µs / token", True), ("memory KiB / token", True),
                  ("training memory KiB / token", True)]
        out.append(table(f"The merging family at one expert budget, {device}; "
                         f"{rows['setting'].iloc[0]}", header, body,
                         f"Expert rows / token: the experts' matmuls per token in units of one "
                         f"expert per token; added: the rest of the MoE block (merge, routers, "
                         f"dispatch and combine) in the same unit. "
                         f"MoE-block FLOPs: experts, merge, routers, dispatch and combine, "
                         f"{FLOPS_CONVENTION}, per token of the B·L in a forward; × top-k: that "
                         f"over vanilla top-k's at the same setting. Latency: the median of the "
                         f"fastest implementation measured ((below bound): under its roofline "
                         f"bound, distrusted); bound: the phase-wise roofline. Memory: the peak "
                         f"above the weights, "
                         f"merged weights and activations included; training: a forward and "
                         f"backward step, gradients and what the backward keeps included "
                         f"({NA}: not measured)."))
    return out


def cheapest(rows: pd.DataFrame, column: str, variants: tuple[str, ...] = MERGING) -> pd.Series | None:
    """The member among `variants` with the smallest value of `column` (None if none has one)."""
    candidates = rows[rows["variant"].isin(variants) & rows[column].notna()]
    return None if candidates.empty else candidates.loc[candidates[column].idxmin()]
