"""Figures 1 and 3: counted FLOPs against k (the MEO paper's figure), and MEO's FLOPs as a
fraction of vanilla MoE's beside the closed form 1/k + 1/L."""

from __future__ import annotations

import numpy as np
import pandas as pd

from meo_profile.core.identity import host_labels, label, order_variants
from meo_profile.core.paper import FLOPS_CONVENTION, meo_flops_ratio_closed_form
from meo_profile.report import views
from meo_profile.report.figures.style import (
    Drawn,
    colour,
    host_styles,
    log2_axis,
    log10_axis,
    new_panels,
    require,
    styled,
)


# ------------------------------------------------------------------ 1: GFLOPs against k
@styled
def draw_flops_vs_k(df: pd.DataFrame) -> Drawn:
    """The paper's figure: GFLOPs per forward against k, vanilla MoE vs MEO, per host."""
    view = views.flops_view(df)
    require(not view.empty, "no FLOPs counts for vanilla MoE or MEO")
    require(view["top_k"].nunique() >= 2, "FLOPs counted at a single k; the figure needs several")
    fig, (ax,) = new_panels(1)
    fig.set_size_inches(7.0, 4.6)
    hosts = views.order_hosts(view["host"].unique())
    styles, names = host_styles(hosts), host_labels(hosts)
    for variant in order_variants(view["variant"].unique()):  # legend: one column per variant
        for host in hosts:
            rows = view[(view["variant"] == variant) & (view["host"] == host)]
            if rows.empty:
                continue
            marker, line = styles[host]
            ax.plot(rows["top_k"], rows["gflops"], color=colour(variant), marker=marker,
                    linestyle=line, label=f"{label(variant)}, {names[host]}")
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
    hosts = views.order_hosts(ratios["host"].unique())
    styles, names = host_styles(hosts), host_labels(hosts)
    for (host, variant), rows in ratios.groupby(["host", "variant"], sort=False):
        marker, line = styles[host]
        ax.plot(rows["top_k"], rows["ratio"], color=colour(variant), marker=marker,
                linestyle=line, label=f"{label(variant)} / vanilla, {names[host]}, whole model")
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
