"""Figure 7: each configuration's measured time against its roofline bound."""

from __future__ import annotations

import numpy as np
import pandas as pd

from meo_profile.core.identity import label, order_variants
from meo_profile.report import views
from meo_profile.report.figures.style import (
    VARIANT_MARKERS,
    Drawn,
    colour,
    legend,
    log10_axis,
    new_panels,
    panel_title,
    require,
    styled,
)


# -------------------------------------------------------------------- 7: roofline view
@styled
def draw_roofline(df: pd.DataFrame) -> Drawn:
    view = views.roofline_view(df)
    require(not view.empty, "no configuration has both a measured latency and a roofline bound "
                            "it does not beat")
    devices = list(view.groupby("device_label", sort=True))
    fig, axes = new_panels(len(devices))
    for ax, (device, rows) in zip(axes, devices, strict=True):
        _roofline_panel(ax, rows)
        panel_title(ax, device, f"{len(rows)} configurations")
    legend(fig, axes)
    return Drawn(fig, "Each point is one configuration: its measured median latency against its "
                      "roofline bound (per phase, the larger of its FLOPs at the measured matmul "
                      "throughput and its bytes at the measured memory bandwidth, summed over the "
                      "phases, which run one after another). On the solid line a configuration "
                      "runs at its bound; dashed lines mark 2× and 10× above it. Measurements "
                      "below their bound are distrusted and left out (listed in a table).")


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
