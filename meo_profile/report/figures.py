"""The report's figures: results in, a matplotlib Figure out. Nothing here measures.

Figures are built with the object-oriented API (`matplotlib.figure.Figure`, no pyplot), and
styled inside `matplotlib.rc_context`, so drawing a report leaves the caller's matplotlib state
as it found it. Every draw function takes the successful rows (`views.ok_rows`) and returns a
`Drawn` (figure and caption) or raises `Missing` with the reason its data is absent, which the
report prints in the figure's place.

One colour per variant across all figures (`VARIANT_COLOURS`, Okabe-Ito, colour-blind safe);
hosts differ by marker and line style. FLOPs are 2 x MACs throughout.
"""

from __future__ import annotations

import functools
import math
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator, ScalarFormatter

from meo_profile.core.paper import FLOPS_CONVENTION, meo_flops_ratio_closed_form
from meo_profile.core.units import (
    byte_unit,
    fmt_int,
    fmt_ms,
    fmt_num,
    fmt_times,
    label,
    missing,
    order_variants,
)
from meo_profile.report import views

VARIANT_COLOURS = {
    "dense": "#555555",
    "moe": "#0072B2",
    "moe-seq": "#56B4E9",
    "meo": "#D55E00",
    "meo-token": "#E69F00",
    "ce": "#009E73",
    "xmoe": "#CC79A7",
}
# variant -> (marker, size): a second cue beside colour, for grey print; earlier variants are
# drawn with larger markers so that identical values (moe and moe-seq memory) stay visible.
VARIANT_MARKERS = {"moe": ("o", 8), "moe-seq": ("s", 5), "meo": ("D", 6), "meo-token": ("^", 5),
                   "ce": ("v", 6), "xmoe": ("P", 6)}
# host -> (marker, line style)
HOST_STYLES = {
    "bert-small": ("o", ":"),
    "bert-base": ("s", "-"),
    "bert-large": ("^", "--"),
    "layer": ("D", "-."),
    "gpt2": ("v", "-"),
    "t5-small": ("P", ":"),
    "bart-base": ("X", "--"),
}
STYLE = {
    "font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "legend.fontsize": 8.5,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.grid": True, "grid.alpha": 0.3,
    "axes.spines.top": False, "axes.spines.right": False, "legend.framealpha": 0.9,
    "svg.hashsalt": "meo-profile",  # stable element ids: a re-rendered SVG diffs only if it changed
}
PANEL_SIZE_IN = (6.0, 4.2)
TITLE_CHARS = 58  # what fits above a PANEL_SIZE_IN-wide panel at axes.titlesize
PNG_DPI = 150


class Missing(Exception):
    """A figure's data is absent; the message says which, for the line left in its place."""


@dataclass
class Drawn:
    figure: Figure
    caption: str


@dataclass(frozen=True)
class FigureEntry:
    """One figure of the report: file stem, title, and the function that draws it."""

    name: str
    title: str
    draw: Callable[[pd.DataFrame], Drawn]


def require(condition: bool, reason: str) -> None:
    if not condition:
        raise Missing(reason)


def colour(variant: str) -> str:
    return VARIANT_COLOURS.get(variant, "#000000")


def marker(variant: str) -> dict:
    shape, size = VARIANT_MARKERS.get(variant, ("o", 6))
    return {"marker": shape, "markersize": size}


def host_style(host: str) -> tuple[str, str]:
    return HOST_STYLES.get(host, ("o", "-"))


def styled(draw: Callable[[pd.DataFrame], Drawn]) -> Callable[[pd.DataFrame], Drawn]:
    """Run a draw function under the report's style, restoring the caller's rcParams after."""

    @functools.wraps(draw)
    def wrapper(df: pd.DataFrame) -> Drawn:
        with matplotlib.rc_context(STYLE):
            return draw(df)

    return wrapper


def new_panels(n: int, max_cols: int = 2) -> tuple[Figure, list]:
    cols = min(n, max_cols)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(PANEL_SIZE_IN[0] * cols, PANEL_SIZE_IN[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:  # an odd panel count leaves a cell empty
        ax.remove()
    return fig, axes[:n]


def panel_title(ax, device: str, setting: str) -> None:
    """Device on the first line, the held setting below, wrapped to stay within the panel."""
    lines = [textwrap.shorten(device, TITLE_CHARS), *textwrap.wrap(setting, TITLE_CHARS)[:2]]
    ax.set_title("\n".join(lines), loc="left")


def log10_axis(ax, axis: str = "y") -> None:
    """Log-10 scale labelled 1, 2, 5, 10, 20, ... in plain numbers rather than powers of ten;
    denser ticks when the data spans less than a decade or two, so the axis keeps a few labels."""
    (ax.set_yscale if axis == "y" else ax.set_xscale)("log")
    target = ax.yaxis if axis == "y" else ax.xaxis
    low, high = ax.get_ylim() if axis == "y" else ax.get_xlim()
    decades = math.log10(high / low) if low > 0 else 3
    subs = (1.0, 2.0, 5.0) if decades >= 1.5 else (1.0, 1.5, 2.0, 3.0, 5.0, 7.0) \
        if decades >= 0.6 else (1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0)
    target.set_major_locator(LogLocator(base=10, subs=subs))
    target.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    target.set_minor_locator(NullLocator())


def log2_axis(ax, values, axis: str = "x") -> None:
    """Log-2 scale with a tick at each measured value, printed as plain integers."""
    ticks = sorted({int(v) for v in values if v == v})
    scale = ax.set_xscale if axis == "x" else ax.set_yscale
    target = ax.xaxis if axis == "x" else ax.yaxis
    scale("log", base=2)
    target.set_major_locator(FixedLocator(ticks))
    target.set_major_formatter(ScalarFormatter())
    target.set_minor_locator(NullLocator())


def legend(fig: Figure, axes: list, **kw) -> None:
    """One legend: inside the axes for one panel, below the panels for several (the union of
    their entries, each label once)."""
    if len(axes) == 1:
        axes[0].legend(**kw)
        return
    seen: dict[str, object] = {}
    for ax in axes:
        for handle, text in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(text, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center",
               ncol=min(len(seen), 3 * len(axes)), **kw)


def save(fig: Figure, directory: Path, stem: str) -> list[Path]:
    """Write `stem.png` and `stem.svg`; metadata without dates, so re-renders diff cleanly."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = [directory / f"{stem}.png", directory / f"{stem}.svg"]
    with matplotlib.rc_context(STYLE):
        fig.savefig(paths[0], dpi=PNG_DPI, metadata={"Software": None})
        fig.savefig(paths[1], metadata={"Date": None, "Creator": None})
    return paths


# ------------------------------------------------------------------ 1: GFLOPs against k
@styled
def draw_flops_vs_k(df: pd.DataFrame) -> Drawn:
    """The paper's figure: GFLOPs per forward against k, vanilla MoE vs MEO, per host."""
    view = views.flops_view(df)
    require(not view.empty, "no FLOPs counts for vanilla MoE or MEO")
    require(view["top_k"].nunique() >= 2, "FLOPs counted at a single k; the figure needs several")
    fig, (ax,) = new_panels(1)
    fig.set_size_inches(7.0, 4.6)
    for variant in order_variants(view["variant"].unique()):  # legend: one column per variant
        for host in views.order_hosts(view["host"].unique()):
            rows = view[(view["variant"] == variant) & (view["host"] == host)]
            if rows.empty:
                continue
            marker, line = host_style(host)
            ax.plot(rows["top_k"], rows["gflops"], color=colour(variant), marker=marker,
                    linestyle=line, label=f"{label(variant)}, {host}")
    log2_axis(ax, view["top_k"])
    log10_axis(ax)
    ax.set_xlabel("selected experts k (log scale)")
    ax.set_ylabel(f"GFLOPs per forward ({FLOPS_CONVENTION}, log scale)")
    ax.set_title("FLOPs against the number of selected experts", loc="left")
    ax.legend(ncol=2, loc="upper left")
    return Drawn(fig, f"Counted FLOPs per forward ({FLOPS_CONVENTION}, routers included), "
                      f"{_settings_by_host(view)}.")


def _settings_by_host(view: pd.DataFrame) -> str:
    parts = []
    for host in views.order_hosts(view["host"].unique()):
        row = view[view["host"] == host].iloc[0]
        parts.append(f"{host}: L={int(row['seq_len'])}, B={int(row['batch_size'])}, "
                     f"E={int(row['num_experts'])}, {row['flops_source']} count")
    return "; ".join(parts)


# ------------------------------------------------------------ 3: FLOPs ratio against k
@styled
def draw_flops_ratio(df: pd.DataFrame) -> Drawn:
    """MEO / vanilla FLOPs against k, whole model and MoE layers alone, beside 1/k + 1/L."""
    ratios = views.ratio_view(views.flops_view(df, hosts=None))
    require(not ratios.empty, "no configuration has FLOPs for both MEO and vanilla MoE")
    fig, (ax,) = new_panels(1)
    fig.set_size_inches(7.0, 4.6)
    for (host, variant), rows in ratios.groupby(["host", "variant"], sort=False):
        marker, line = host_style(host)
        ax.plot(rows["top_k"], rows["ratio"], color=colour(variant), marker=marker,
                linestyle=line, label=f"{label(variant)} / vanilla, {host}, whole model")
    layer_only = ratios[ratios["moe_layer_ratio"].notna()]
    if not layer_only.empty:
        ax.plot(layer_only["top_k"], layer_only["moe_layer_ratio"], linestyle="none", marker="x",
                markersize=8, color="black", label="MoE layers only (experts + merge), all hosts")
    k_grid = np.geomspace(ratios["top_k"].min(), ratios["top_k"].max(), 50)
    dashes = ["--", ":", "-."]
    for i, seq_len in enumerate(sorted(ratios["seq_len"].unique())):
        ax.plot(k_grid, meo_flops_ratio_closed_form(k_grid, seq_len), color="black",
                linestyle=dashes[i % len(dashes)], linewidth=1,
                label=f"closed form 1/k + 1/L, L={seq_len}")
    log2_axis(ax, ratios["top_k"])
    log10_axis(ax)
    ax.set_xlabel("selected experts k (log scale)")
    ax.set_ylabel("FLOPs ratio MEO / vanilla (log scale)")
    ax.set_title("MEO's FLOPs as a fraction of vanilla MoE's", loc="left")
    ax.legend(loc="lower left")
    return Drawn(fig, "Counted FLOPs of MEO divided by vanilla MoE's at the same configuration. "
                      "Whole-model ratios sit above the closed form because attention, embeddings "
                      "and the head cost the same in both; the MoE layers alone follow "
                      "1/k + 1/L (the merge costs k weight matrices once per sequence).")


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
                      "dense FFN is drawn flat, as it has no k.")


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
                      "slower), and below it the speedup FLOPs predict (vanilla / MEO FLOPs).")


def speedup_tick(value: float) -> str:
    """2×, 1×, 1/2×, 1/4×: slowdowns read as fractions rather than 0.0625."""
    return f"{value:g}×" if value >= 1 else f"1/{1 / value:.0f}×"


def _heatmap_panel(ax, rows: pd.DataFrame, norm):
    experts = sorted(rows["num_experts"].unique())
    ks = sorted(rows["top_k"].unique())
    grid = np.full((len(experts), len(ks)), np.nan)
    for _, r in rows.iterrows():
        grid[experts.index(r["num_experts"]), ks.index(r["top_k"])] = r["speedup"]
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", norm=norm, origin="lower",
                      aspect="auto")
    ax.set_facecolor("#eeeeee")
    ax.grid(False)
    for _, r in rows.iterrows():
        i, j = experts.index(r["num_experts"]), ks.index(r["top_k"])
        flops = f"FLOPs {fmt_times(r['flops_ratio'])}"
        # white ink only where the cell is dark enough for it (far from 1 on the colour scale)
        ink = "white" if abs(norm(r["speedup"]) - 0.5) > 0.3 else "black"
        # origin="lower": +y is up, so the speedup sits above the FLOPs ratio
        ax.text(j, i + 0.1, fmt_times(r["speedup"]), ha="center", va="center", fontsize=9.5,
                fontweight="bold", color=ink)
        ax.text(j, i - 0.22, flops, ha="center", va="center", fontsize=7.5, color=ink)
    for i, j in zip(*np.nonzero(np.isnan(grid)), strict=True):
        ax.text(j, i, "not measured", ha="center", va="center", fontsize=7.5, color="#777777")
    ax.set_xticks(range(len(ks)), [str(k) for k in ks])
    ax.set_yticks(range(len(experts)), [str(e) for e in experts])
    ax.set_xlabel("selected experts k")
    ax.set_ylabel("experts E")
    return image


# ----------------------------------------------------------------- 6: memory against E
@styled
def draw_memory_vs_experts(df: pd.DataFrame) -> Drawn:
    view = views.memory_view(df)
    require(not view.empty, "no peak-memory measurements")
    require(view.loc[view["variant"] != "dense", "num_experts"].nunique() >= 2,
            "peak memory measured at fewer than two expert counts")
    unit, scale = byte_unit(view["peak_mem_bytes"].max())
    panels = list(view.groupby(["device_label", "mode"], sort=True))
    fig, axes = new_panels(len(panels))
    for ax, ((device, _mode), rows) in zip(axes, panels, strict=True):
        _memory_panel(ax, rows, unit, scale)
        panel_title(ax, device, rows["setting"].iloc[0])
    legend(fig, axes)
    return Drawn(fig, "Peak memory of one forward (train: forward and backward) against experts "
                      f"per layer, in {unit}; dotted: the weights alone, where recorded. "
                      f"Method: {', '.join(sorted(view['mem_method'].dropna().unique())) or 'n/a'}.")


def _memory_panel(ax, rows: pd.DataFrame, unit: str, scale: float) -> None:
    sparse = rows[rows["variant"] != "dense"]
    for variant in order_variants(rows["variant"].unique()):
        r = rows[rows["variant"] == variant].sort_values("num_experts")
        c = colour(variant)
        if variant == "dense":
            ax.axhline(r["peak_mem_bytes"].iloc[0] / scale, color=c, linestyle="--",
                       label=label(variant))
            continue
        ax.plot(r["num_experts"], r["peak_mem_bytes"] / scale, color=c, label=label(variant),
                **marker(variant))
    # The expert weights are the same for every sparse variant at one E: one line says it.
    weights = sparse[sparse["weights_bytes"].notna()].groupby("num_experts")["weights_bytes"].max()
    if not weights.empty:
        ax.plot(weights.index, weights / scale, color="black", linestyle=":", linewidth=1.2,
                label="weights alone (sparse variants)")
    log2_axis(ax, sparse["num_experts"])
    ax.set_ylim(bottom=0)
    ax.set_xlabel("experts per MoE layer E (log scale)")
    ax.set_ylabel(f"peak memory ({unit})")


# -------------------------------------------------------------------- 7: roofline view
@styled
def draw_roofline(df: pd.DataFrame) -> Drawn:
    view = views.roofline_view(df)
    require(not view.empty, "no configuration has both a measured latency and a roofline bound")
    devices = list(view.groupby("device_label", sort=True))
    fig, axes = new_panels(len(devices))
    for ax, (device, rows) in zip(axes, devices, strict=True):
        _roofline_panel(ax, rows)
        panel_title(ax, device, f"{len(rows)} configurations")
    legend(fig, axes)
    return Drawn(fig, "Each point is one configuration: its measured median latency against its "
                      "roofline bound (the larger of its FLOPs at the measured matmul throughput "
                      "and its bytes at the measured memory bandwidth). On the solid line a "
                      "configuration runs at its bound; dashed lines mark 2× and 10× above it.")


def _roofline_panel(ax, rows: pd.DataFrame) -> None:
    for variant in order_variants(rows["variant"].unique()):
        r = rows[rows["variant"] == variant]
        shape, _ = VARIANT_MARKERS.get(variant, ("o", 6))
        ax.scatter(r["roofline_ms"], r["latency_ms_median"], color=colour(variant), s=24,
                   marker=shape, alpha=0.8, label=label(variant))
    # Same limits on both axes, so the diagonal is at 45 degrees and distances read as ratios.
    low = min(rows["roofline_ms"].min(), rows["latency_ms_median"].min()) / 1.5
    high = max(rows["roofline_ms"].max(), rows["latency_ms_median"].max()) * 1.5
    line = np.array([low, high])
    ax.plot(line, line, color="black", linewidth=1, label="measured = bound")
    for factor in (2, 10):
        ax.plot(line, line * factor, color="black", linewidth=0.8, linestyle="--", alpha=0.5)
        # labelled near the top, where points rarely are (they sit close to their bound)
        ax.annotate(f"{factor}× bound", (high / factor / 1.4, high / 1.4), fontsize=8,
                    alpha=0.7, ha="right")
    log10_axis(ax, "x")
    log10_axis(ax, "y")
    ax.set_xlim(low, high)
    ax.set_ylim(low, high)
    ax.set_xlabel("roofline bound (ms, log scale)")
    ax.set_ylabel("measured median latency (ms, log scale)")


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
        ax.bar(i, ratio, width=0.62, color=colour(r["variant"]), label=label(r["variant"]))
        top = ratio
        if panel.value == "latency_ms_median" and not missing(r["latency_ms_p20"]):
            vanilla = r["latency_ms_median"] / ratio
            top = r["latency_ms_p80"] / vanilla
            ax.errorbar(i, ratio, yerr=[[ratio - r["latency_ms_p20"] / vanilla], [top - ratio]],
                        color="black", linewidth=1, capsize=3)
        ax.annotate(f"{fmt_times(ratio)}\n{panel.text(r[panel.value])}", (i, top),
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
            "latency whiskers span the 20th to 80th percentile.")
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


# ------------------------------------------------------------------------------ registry
# The report draws these in order.
FIGURES: dict[str, FigureEntry] = {e.name: e for e in (
    FigureEntry("fig1_flops_vs_k", "GFLOPs against selected experts", draw_flops_vs_k),
    FigureEntry("fig3_flops_ratio", "FLOPs ratio MEO / vanilla against k", draw_flops_ratio),
    FigureEntry("fig4_latency_vs_k", "Latency against k", draw_latency_vs_k),
    FigureEntry("fig5_speedup_heatmap", "MEO speedup over vanilla, experts × k",
                draw_speedup_heatmap),
    FigureEntry("fig6_memory_vs_experts", "Peak memory against experts", draw_memory_vs_experts),
    FigureEntry("fig7_roofline", "Measured time against the roofline bound", draw_roofline),
    FigureEntry("fig8_methods", "Four methods at one expert budget", draw_methods),
)}


def draw(name: str, df: pd.DataFrame) -> Drawn:
    """Draw one registered figure; raises Missing when its data is absent."""
    return FIGURES[name].draw(df)
