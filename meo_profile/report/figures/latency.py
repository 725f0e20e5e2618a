"""Figures 4 and 5: latency against k per variant, and MEO's measured speedup over vanilla
MoE on a grid of experts x k beside the speedup FLOPs predict."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from meo_profile.core.identity import label, order_variants
from meo_profile.core.units import fmt_times
from meo_profile.report import views
from meo_profile.report.figures.style import (
    Drawn,
    colour,
    legend,
    log2_axis,
    marker,
    new_panels,
    panel_title,
    require,
    styled,
)


# ------------------------------------------------------------------ 4: latency against k
@styled
def draw_latency_vs_k(df: pd.DataFrame) -> Drawn:
    view = views.latency_view(df)
    require(not view.empty, "no latency measurements")
    sparse = view[view["variant"] != "dense"]
    require(not sparse.empty and sparse["top_k"].nunique() >= 2,
            "latency measured at fewer than two values of k")
    devices = list(view.groupby("device_label", sort=True))
    fig, axes = new_panels(len(devices))
    for ax, (device, rows) in zip(axes, devices, strict=True):
        _latency_panel(ax, rows)
        panel_title(ax, device, rows["setting"].iloc[0])
    legend(fig, axes)
    return Drawn(fig, "Median latency per forward; the band spans the 20th to 80th percentile of "
                      "the timed calls. Each point is the variant's fastest implementation; the "
                      "dense FFN is drawn flat, as it has no k. A red × marks a time below its "
                      "roofline bound: a measurement to distrust, not a result.")


def _latency_panel(ax, rows: pd.DataFrame) -> None:
    sparse = rows[rows["variant"] != "dense"]
    for variant in order_variants(rows["variant"].unique()):
        r = rows[rows["variant"] == variant].sort_values("top_k")
        c = colour(variant)
        if variant == "dense":
            ax.axhline(r["latency_ms_median"].iloc[0], color=c, linestyle="--", label=label(variant))
            ax.axhspan(r["latency_ms_p20"].iloc[0], r["latency_ms_p80"].iloc[0], color=c, alpha=0.12)
            continue
        ax.plot(r["top_k"], r["latency_ms_median"], color=c, label=label(variant), **marker(variant))
        ax.fill_between(r["top_k"], r["latency_ms_p20"], r["latency_ms_p80"], color=c, alpha=0.2,
                        linewidth=0)
    below = rows[rows["distrusted"].astype(bool)]
    if not below.empty:  # shown, crossed out: not a result
        ax.scatter(below["top_k"].where(below["variant"] != "dense", sparse["top_k"].min()),
                   below["latency_ms_median"], marker="x", s=70, color="#CC0000", zorder=4,
                   label="below its bound: distrust")
    log2_axis(ax, sparse["top_k"])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("selected experts k (log scale)")
    ax.set_ylabel("latency per forward (ms)")


# --------------------------------------------------------------- 5: speedup heatmap
@styled
def draw_speedup_heatmap(df: pd.DataFrame) -> Drawn:
    view = views.speedup_view(df)
    require(not view.empty, "no (E, k) point has latency for both MEO and vanilla MoE")
    devices = list(view.groupby("device_label", sort=True))
    fig, axes = new_panels(len(devices))
    # Log scale symmetric about 1: a 2x speedup and a 2x slowdown get equally strong colours.
    # Colours saturate at 16x, so one noisy outlier does not wash out the rest (cells print values).
    extreme = min(max(view["speedup"].max(), 1 / view["speedup"].min(), 1.5), 16.0)
    norm = LogNorm(vmin=1 / extreme, vmax=extreme)
    for ax, (device, rows) in zip(axes, devices, strict=True):
        image = _heatmap_panel(ax, rows, norm)
        panel_title(ax, device, rows["setting"].iloc[0])
    bar = fig.colorbar(image, ax=axes, label="MEO speedup over vanilla MoE (latency ratio)",
                       shrink=0.9)
    bar.ax.yaxis.set_major_locator(LogLocator(base=2))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: speedup_tick(v)))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    return Drawn(fig, "Each cell: MEO's measured speedup over vanilla MoE (vanilla / MEO median "
                      "latency, both at their fastest implementation; blue: MEO faster, red: "
                      "slower), and below it the speedup FLOPs predict (vanilla / MEO FLOPs). "
                      "Grey cells marked 'below bound' hold a time faster than its roofline "
                      "bound allows: a measurement to distrust, left uncoloured.")


def speedup_tick(value: float) -> str:
    """2×, 1×, 1/2×, 1/4×: slowdowns read as fractions rather than 0.0625."""
    return f"{value:g}×" if value >= 1 else f"1/{1 / value:.0f}×"


def _heatmap_panel(ax, rows: pd.DataFrame, norm):
    experts = sorted(rows["num_experts"].unique())
    ks = sorted(rows["top_k"].unique())
    grid = np.full((len(experts), len(ks)), np.nan)
    for _, r in rows[~rows["distrusted"].astype(bool)].iterrows():  # a broken time: no colour
        grid[experts.index(r["num_experts"]), ks.index(r["top_k"])] = r["speedup"]
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", norm=norm, origin="lower",
                      aspect="auto")
    ax.set_facecolor("#eeeeee")
    ax.grid(False)
    for _, r in rows.iterrows():
        i, j = experts.index(r["num_experts"]), ks.index(r["top_k"])
        flops = f"FLOPs {fmt_times(r['flops_ratio'])}"
        if r["distrusted"]:
            ax.text(j, i, f"{fmt_times(r['speedup'])}?\nbelow bound", ha="center", va="center",
                    fontsize=7.5, color="#777777")
            continue
        # white ink only where the cell is dark enough for it (far from 1 on the colour scale)
        ink = "white" if abs(norm(r["speedup"]) - 0.5) > 0.3 else "black"
        # origin="lower": +y is up, so the speedup sits above the FLOPs ratio
        ax.text(j, i + 0.1, fmt_times(r["speedup"]), ha="center", va="center", fontsize=9.5,
                fontweight="bold", color=ink)
        ax.text(j, i - 0.22, flops, ha="center", va="center", fontsize=7.5, color=ink)
    measured = {(experts.index(e), ks.index(k)) for e, k in zip(rows["num_experts"], rows["top_k"])}
    for i, j in zip(*np.nonzero(np.isnan(grid)), strict=True):
        if (i, j) not in measured:
            ax.text(j, i, "not measured", ha="center", va="center", fontsize=7.5, color="#777777")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(experts)), [str(e) for e in experts])
    ax.set_xlabel("selected experts k")
    ax.set_ylabel("experts E")
    return image
