"""Figure 10: the merging family at one expert budget, per token: MoE-block MFLOPs split by part
(with vanilla top-k at each counted k as reference lines), latency beside its roofline bound,
and memory above the weights in inference and in a training step."""

from __future__ import annotations

import textwrap

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from meo_profile.core.identity import label
from meo_profile.core.paper import FLOPS_CONVENTION
from meo_profile.core.units import fmt_int, fmt_num, missing
from meo_profile.report import views
from meo_profile.report.family import family_view, vanilla_ks
from meo_profile.report.figures.style import STYLE, Drawn, colour, require, styled

# MoE-block parts stacked bottom to top, with their shade: what the token's expert costs, then
# what merging (weights or tokens) adds.
STACK = (("experts", ("experts",), 1.0), ("merge", ("merge",), 0.55),
         ("dispatch + combine", ("dispatch", "combine"), 0.35),
         ("router", ("router", "compress", "token_block"), 0.2))
PANEL_IN = (3.9, 4.0)
NEUTRAL = "#777777"  # legend swatches: the shade or hatch is the cue, each bar keeps its colour


@styled
def draw_family(df: pd.DataFrame) -> Drawn:
    """One row of three panels per device (see the module doc)."""
    view = family_view(df)
    require(not view.empty, "no setting has counted records of vanilla MoE and of SMEAR, Lory "
                            "or Soft MoE")
    devices = list(view.groupby("device_label", sort=True))
    fig = Figure(figsize=(3 * PANEL_IN[0], PANEL_IN[1] * len(devices) + 0.6), layout="constrained")
    for sub, (device, rows) in zip(fig.subfigures(len(devices), 1, squeeze=False).ravel(),
                                   devices, strict=True):
        rows = views.in_variant_order(rows)
        flops_ax, time_ax, memory_ax = sub.subplots(1, 3).ravel()
        _flops_panel(flops_ax, rows)
        _time_panel(time_ax, rows)
        _memory_panel(memory_ax, rows)
        heading = [textwrap.shorten(device, 120), *textwrap.wrap(rows["setting"].iloc[0], 120)[:2]]
        sub.suptitle("\n".join(heading), x=0.01, ha="left", fontsize=STYLE["axes.titlesize"])
    return Drawn(fig, _caption(view))


def _members(rows: pd.DataFrame) -> pd.DataFrame:
    """The bars: every member but vanilla's flops-only rows (vanilla stays where it was timed)."""
    return rows[(rows["variant"] != "moe") | rows["latency_ms_median"].notna()].reset_index(drop=True)


def _ticks(ax, members: pd.DataFrame) -> None:
    names = [f"{label(v)}\ntop-{fmt_int(k)}" if v == "moe" else label(v)
             for v, k in zip(members["variant"], members["top_k"], strict=True)]
    ax.set_xticks(np.arange(len(members)), [textwrap.fill(n, 11) for n in names])
    ax.set_xlabel("method")
    ax.grid(False, axis="x")
    ax.set_axisbelow(True)


def _flops_panel(ax, rows: pd.DataFrame) -> None:
    members = rows[rows["variant"] != "moe"].reset_index(drop=True)
    tokens = members["batch_size"] * members["seq_len"]
    bottom = np.zeros(len(members))
    for _, parts, alpha in STACK:
        height = np.array([2 * views.part_macs(p, parts) for p in members["macs_by_part"]])
        height = np.nan_to_num(height) / tokens.to_numpy() / 1e6
        ax.bar(np.arange(len(members)), height, bottom=bottom, width=0.62, alpha=alpha,
               color=[colour(v) for v in members["variant"]], edgecolor="black", linewidth=0.4)
        bottom += height
    for x, total in enumerate(bottom):
        ax.annotate(fmt_num(total, 1), (x, total), xytext=(0, 2), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8)
    top = _flops_top(bottom.max(), rows)
    for r in rows[(rows["variant"] == "moe") & (rows["mflops_per_token"] <= top)].itertuples():
        ax.axhline(r.mflops_per_token, color=colour("moe"), linewidth=0.9, linestyle="--", zorder=0)
        ax.annotate(f"vanilla\ntop-{fmt_int(r.top_k)}", (1.0, r.mflops_per_token),
                    xycoords=ax.get_yaxis_transform(), xytext=(3, 0), textcoords="offset points",
                    ha="left", va="center", fontsize=7.5, color=colour("moe"))  # right of the axes
    _ticks(ax, members)
    ax.set_ylim(0, top)
    ax.set_ylabel("MoE-block MFLOPs per token")
    ax.set_title("FLOPs per token, by part", loc="left")
    ax.legend(handles=[Patch(facecolor=NEUTRAL, alpha=alpha, edgecolor="black", label=name)
                       for name, _, alpha in STACK], loc="upper left", fontsize=7.5)


def _flops_top(tallest: float, rows: pd.DataFrame) -> float:
    """Room for the bars and the first vanilla line above them; larger k are off the chart
    (the table lists every k)."""
    vanilla = rows.loc[rows["variant"] == "moe", "mflops_per_token"]
    above = vanilla[vanilla > tallest]
    return 1.25 * (above.min() if not above.empty else max(tallest, vanilla.max()))


def _time_panel(ax, rows: pd.DataFrame) -> None:
    members = _members(rows)
    timed = members["latency_us_per_token"].notna()
    if not timed.any():
        ax.text(0.5, 0.5, "not timed", ha="center", va="center", transform=ax.transAxes)
    bound_label = "roofline bound"  # on the first bound drawn only: one legend entry
    for x, r in enumerate(members.itertuples()):
        if missing(r.latency_us_per_token):
            continue
        scale = r.latency_us_per_token / r.latency_ms_median  # µs per token per ms
        ax.bar(x, r.latency_us_per_token, width=0.62, color=colour(r.variant),
               **({"alpha": 0.35, "hatch": "///"} if r.distrusted else {}))
        ax.errorbar(x, r.latency_us_per_token,
                    yerr=[[(r.latency_ms_median - r.latency_ms_p20) * scale],
                          [(r.latency_ms_p80 - r.latency_ms_median) * scale]],
                    color="black", linewidth=1, capsize=3)
        if not missing(r.bound_us_per_token):
            ax.hlines(r.bound_us_per_token, x - 0.36, x + 0.36, color="black", linewidth=2,
                      label=bound_label)
            bound_label = None
    _ticks(ax, members)
    ax.set_ylabel("latency per token (µs)")
    ax.set_title("Median latency and its bound", loc="left")
    if bound_label is None:
        ax.legend(loc="upper right", fontsize=7.5)


def _memory_panel(ax, rows: pd.DataFrame) -> None:
    members = _members(rows)
    x = np.arange(len(members))
    for offset, column, hatch in ((-0.17, "mem_kib_per_token", None),
                                  (0.17, "train_mem_kib_per_token", "//")):
        values = members[column].to_numpy(dtype=float)
        ax.bar(x + offset, np.nan_to_num(values), width=0.32, hatch=hatch, edgecolor="black",
               linewidth=0.4, color=[colour(v) for v in members["variant"]])
    _ticks(ax, members)
    ax.set_ylabel("peak memory above weights per token (KiB)")
    ax.set_title("Memory per token", loc="left")
    ax.legend(handles=[Patch(facecolor="white", edgecolor="black", hatch=hatch, label=name)
                       for hatch, name in ((None, "inference"), ("//", "training step"))],
              loc="upper left", fontsize=7.5)


def _caption(view: pd.DataFrame) -> str:
    ks = ", ".join(str(k) for k in vanilla_ks(view))
    return (f"Vanilla MoE, MEO, SMEAR, Lory and Soft MoE at one expert budget (the same E experts "
            f"of one width and the same B·L tokens), per token. Left: MoE-block MFLOPs "
            f"({FLOPS_CONVENTION}) split into the experts' matmuls, the merge of expert weights, "
            f"Soft MoE's dispatch and combine and the routers; dashed lines: vanilla top-k (k = "
            f"{ks} counted; the chart stops above the first k that costs more than every "
            f"member, the table lists them all). SMEAR merges all E experts once per sequence of L tokens, Lory once per "
            f"segment of T, MEO only its k; Soft MoE's experts run on its E·p slots. Middle: "
            f"median latency with the 20th-80th percentile, the black bar its phase-wise "
            f"roofline bound (a hatched bar: below its bound, distrusted). Right: peak memory "
            f"above the weights, in inference and in a training step (hatched), where the "
            f"merged weights the backward keeps show.")
