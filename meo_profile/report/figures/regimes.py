"""Figure 10: where merging pays off. MEO's measured speedup over the best vanilla MoE on a grid of
batch × regime (decode with the merged expert merged every step or kept, then prefills by L),
each cell with the speedup the phase-wise bounds predict and, where merged experts are kept,
what they hold."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

from meo_profile.core.units import fmt_times, human_bytes, missing
from meo_profile.report.figures.latency import speedup_tick
from meo_profile.report.figures.style import Drawn, new_panels, panel_title, require, styled
from meo_profile.report.regimes import DECODE_REGIMES, regime_columns, regime_label, regime_view

# Tick labels on two lines: a decode column says what happens to the merged expert.
TICKS = {DECODE_REGIMES["step"]: "decode\nre-merged", DECODE_REGIMES["sequence"]:
         "decode\nkept", "decode": "decode"}


@styled
def draw_regimes(df: pd.DataFrame) -> Drawn:
    view = regime_view(df)
    require(not view.empty, "no two (batch, regime) points have latency for both MEO and "
                            "vanilla MoE")
    devices = list(view.groupby("device_label", sort=True))
    fig, axes = new_panels(len(devices))
    trusted = view.loc[~view["distrusted"], "speedup"]
    extreme = min(max(trusted.max(), 1 / trusted.min(), 1.5), 16.0) if not trusted.empty else 2.0
    norm = LogNorm(vmin=1 / extreme, vmax=extreme)  # symmetric about 1, saturating at 16×
    for ax, (device, rows) in zip(axes, devices, strict=True):
        image = _panel(ax, rows, norm)
        panel_title(ax, device, rows["setting"].iloc[0])
    bar = fig.colorbar(image, ax=axes, label="MEO speedup over vanilla MoE (latency ratio)",
                       shrink=0.9)
    bar.ax.yaxis.set_major_locator(LogLocator(base=2))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: speedup_tick(v)))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    return Drawn(fig, "Each cell: MEO's measured speedup over the best vanilla MoE (vanilla / MEO "
                      "median latency, each at its fastest implementation; blue: MEO faster, red: "
                      "slower), below it the speedup the phase-wise roofline bounds predict, and "
                      "in the columns where each sequence's merged expert is kept from its prompt, "
                      "the merged experts held (all MoE layers). Decode columns are one step of "
                      "one token per sequence; L columns a prefill of L tokens per sequence. Grey "
                      "cells marked 'below bound' hold a time under its bound: distrusted.")


def _panel(ax, rows: pd.DataFrame, norm):
    batches = sorted(rows["batch_size"].unique())
    columns = regime_columns(rows)
    grid = np.full((len(batches), len(columns)), np.nan)
    cells = {}
    for r in rows.to_dict("records"):
        i, j = batches.index(r["batch_size"]), columns.index((r["regime"], r["tokens_per_seq"]))
        cells[i, j] = r
        if not r["distrusted"]:  # a broken time gets no colour
            grid[i, j] = r["speedup"]
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu", norm=norm, origin="lower",
                      aspect="auto")
    ax.set_facecolor("#eeeeee")
    ax.grid(False)
    for (i, j), r in cells.items():
        _annotate(ax, i, j, r, norm)
    for i, j in zip(*np.nonzero(np.isnan(grid)), strict=True):
        if (i, j) not in cells:
            ax.text(j, i, "not\nmeasured", ha="center", va="center", fontsize=7, color="#777777")
    ax.set_xticks(range(len(columns)), [TICKS.get(c, regime_label(c, t)) for c, t in columns],
                  fontsize=8)
    ax.set_yticks(range(len(batches)), [str(b) for b in batches])
    ax.set_xlabel("a decode step (1 token per sequence), or a prefill of L tokens")
    ax.set_ylabel("batch B (sequences)")
    return image


def _annotate(ax, i: int, j: int, r: dict, norm) -> None:
    if r["distrusted"]:
        ax.text(j, i, f"{fmt_times(r['speedup'])}?\nbelow bound", ha="center", va="center",
                fontsize=7, color="#777777")
        return
    ink = "white" if abs(norm(r["speedup"]) - 0.5) > 0.3 else "black"  # dark cells: white ink
    lines = [f"bound {fmt_times(r['bound_speedup'])}"]
    if r["regime"] == DECODE_REGIMES["sequence"] and not missing(r["merged_cache_bytes"]):
        lines.append(f"kept {human_bytes(r['merged_cache_bytes'])}")
    # origin="lower": +y is up, so the measured speedup sits above the rest
    ax.text(j, i + 0.15, fmt_times(r["speedup"]), ha="center", va="center", fontsize=9,
            fontweight="bold", color=ink)
    ax.text(j, i - 0.2, "\n".join(lines), ha="center", va="center", fontsize=6.5, color=ink)
