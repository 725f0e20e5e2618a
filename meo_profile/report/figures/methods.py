"""Figure 8: vanilla MoE, MEO, compressed experts and XMoE at one expert budget, as ratios to
vanilla MoE: active parameters, MoE-block GFLOPs and latency."""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from meo_profile.core.identity import label
from meo_profile.core.paper import FLOPS_CONVENTION
from meo_profile.core.units import fmt_int, fmt_ms, fmt_num, fmt_times, missing
from meo_profile.report import views
from meo_profile.report.figures.style import (
    STYLE,
    Drawn,
    colour,
    require,
    styled,
)


# ------------------------------------------------- 8: the four methods at one expert budget
@dataclass(frozen=True)
class MethodPanel:
    """One bar panel: a quantity relative to vanilla MoE, labelled with its absolute value."""

    title: str
    relative: str  # a methods_view column, value / vanilla's
    value: str  # the absolute column quoted above each bar
    text: Callable[[float], str]  # the absolute value as the table prints it, with its unit


METHOD_PANELS = (
    MethodPanel("Active parameters per token", "params_rel", "params_active",
                lambda v: f"{fmt_num(v / 1e6)} M"),
    MethodPanel("MoE-block GFLOPs per forward", "moe_block_rel", "moe_block_gflops",
                lambda v: f"{fmt_num(v)} GFLOPs"),
    MethodPanel("Median latency per forward", "latency_rel", "latency_ms_median",
                lambda v: f"{fmt_ms(v)} ms"),
)
METHOD_PANEL_SIZE_IN = (3.6, 3.9)


@styled
def draw_methods(df: pd.DataFrame) -> Drawn:
    """Vanilla MoE, MEO, compressed experts and XMoE at one expert budget, as ratios to vanilla:
    active parameters, MoE-block GFLOPs and (where timed) latency; one row of panels per device."""
    view = views.methods_view(df)
    require(not view.empty, "no setting has counted records of both vanilla MoE and compressed "
                            "experts or XMoE")
    devices = list(view.groupby("device_label", sort=True))
    panels = [p for p in METHOD_PANELS if view[p.relative].notna().any()]
    fig = Figure(figsize=(METHOD_PANEL_SIZE_IN[0] * len(panels),
                          METHOD_PANEL_SIZE_IN[1] * len(devices) + 0.5), layout="constrained")
    for sub, (device, rows) in zip(fig.subfigures(len(devices), 1, squeeze=False).ravel(),
                                   devices, strict=True):
        axes = sub.subplots(1, len(panels), squeeze=False).ravel()
        for ax, panel in zip(axes, panels, strict=True):
            _method_panel(ax, views.in_variant_order(rows), panel)
        heading = [textwrap.shorten(device, 40 * len(panels)),
                   *textwrap.wrap(rows["setting"].iloc[0], 40 * len(panels))[:2]]
        sub.suptitle("\n".join(heading), x=0.01, ha="left", fontsize=STYLE["axes.titlesize"])
    return Drawn(fig, _methods_caption(view))


def _method_panel(ax, rows: pd.DataFrame, panel: MethodPanel) -> None:
    positions = np.arange(len(rows))
    for i, r in zip(positions, rows.to_dict("records"), strict=True):
        ratio = r[panel.relative]
        if missing(ratio):
            ax.text(i, 0.04, "not\nmeasured", ha="center", va="bottom", fontsize=8,
                    color="#777777")
            continue
        distrusted = panel.value == "latency_ms_median" and bool(r["distrusted"])
        ax.bar(i, ratio, width=0.62, color=colour(r["variant"]), label=label(r["variant"]),
               **({"alpha": 0.35, "hatch": "///"} if distrusted else {}))  # below its bound
        top = ratio
        if panel.value == "latency_ms_median" and not missing(r["latency_ms_p20"]):
            vanilla = r["latency_ms_median"] / ratio
            top = r["latency_ms_p80"] / vanilla
            ax.errorbar(i, ratio, yerr=[[ratio - r["latency_ms_p20"] / vanilla], [top - ratio]],
                        color="black", linewidth=1, capsize=3)
        note = "\nbelow bound" if distrusted else ""
        ax.annotate(f"{fmt_times(ratio)}\n{panel.text(r[panel.value])}{note}", (i, top),
                    xytext=(0, 3), textcoords="offset points", ha="center", va="bottom",
                    fontsize=9)
    ax.axhline(1, color="black", linewidth=0.8, linestyle="--", zorder=0)
    ax.grid(False, axis="x")  # a vertical grid line would run through each bar
    ax.set_axisbelow(True)
    ax.set_xticks(positions, [textwrap.fill(label(v), 11) for v in rows["variant"]])
    ax.set_xlim(-0.7, len(rows) - 0.3)  # room beside the outer bars for their wider labels
    ax.set_ylim(0, 1.3 * max(1.0, rows[panel.relative].max(skipna=True)))  # room for the labels
    ax.set_xlabel("method")
    ax.set_ylabel("relative to vanilla MoE (×)")
    ax.set_title(panel.title, loc="left")


def _methods_caption(view: pd.DataFrame) -> str:
    text = ("Each bar: a method's value divided by vanilla MoE's at the same setting and expert "
            "budget (dashed line: vanilla = 1×); above it the ratio and the value. Equal expert "
            "budget: E experts of width d_ff, XMoE E·g experts of width d_ff/g. MoE-block GFLOPs "
            f"count experts, merge, routers and compressed vectors ({FLOPS_CONVENTION}); "
            "latency whiskers span the 20th to 80th percentile; a hatched latency bar is a time "
            "below its roofline bound, a measurement to distrust.")
    if (view["variant"] == "meo").any():
        text += (" MEO's active parameters are the k experts it merges once per sequence; its "
                 "saving is in arithmetic.")
    xmoe = view[view["variant"] == "xmoe"]
    if not xmoe.empty:
        r = xmoe.iloc[0]
        chosen = (f" (it chose {fmt_num(r['experts_per_token_mean'])} of "
                  f"{fmt_int(r['experts_built'])} experts per token on average)"
                  if len(xmoe) == 1 and not missing(r["experts_per_token_mean"]) else "")
        scaled = (f"so its router logits were scaled ×{r['router_scale']:g}{chosen}"
                  if r["router_scale"] != 1 else
                  f"and its logits were not scaled{chosen}: read its counts as a flat router's")
        text += (" The routers are random, and a random router's probabilities are nearly flat: "
                 f"XMoE's threshold {r['threshold']:g} would then choose most of the experts, "
                 f"{scaled}.")
    if (view["variant"] == "ce").any():
        text += (" Compressed experts' vectors are untrained; their cost in accuracy is the "
                 "relative L2 error in the table.")
    return text
