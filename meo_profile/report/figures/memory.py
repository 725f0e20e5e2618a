"""Figure 6: peak memory against the number of experts, per device and mode."""

from __future__ import annotations

import pandas as pd

from meo_profile.core.identity import label, order_variants
from meo_profile.core.units import byte_unit
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
