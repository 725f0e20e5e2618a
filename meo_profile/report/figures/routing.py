"""Figure 10: vanilla MoE and MEO latency, and their bounds, against how skewed and how local
the routing was, at one layer size."""

from __future__ import annotations

import pandas as pd

from meo_profile.core.identity import label, order_variants
from meo_profile.report.figures.style import (
    Drawn,
    colour,
    legend,
    marker,
    new_panels,
    panel_title,
    require,
    styled,
)
from meo_profile.report.routing import routing_view


@styled
def draw_routing(df: pd.DataFrame) -> Drawn:
    view = routing_view(df)
    view = view[~view["distrusted"].astype(bool)]
    require(not view.empty, "no layer was timed under more than one --routing at one setting")
    panels = []
    for device, rows in view.groupby("device_label", sort=True):
        skew = rows[(rows["local"] == 0) & (rows["kind"] != "replay")]
        if skew["routing"].nunique() > 1:
            panels.append((device, "skew (independent tokens)", skew, "routing"))
        local = locality_rows(rows)
        if local["routing"].nunique() > 1:
            panels.append((device, "locality", local, "local"))
    require(bool(panels), "the routings measured vary neither skew nor locality alone")
    fig, axes = new_panels(len(panels))
    for ax, (device, what, rows, x) in zip(axes, panels, strict=True):
        _panel(ax, rows, x)
        panel_title(ax, device, f"{what}; {rows['setting'].iloc[0]}")
    legend(fig, axes)
    return Drawn(fig, "Median latency (solid) of each variant's fastest implementation and its "
                      "phase-wise roofline bound from the routing that ran (dashed), against the "
                      "routing: skew panels order the distributions from balanced through uniform "
                      "to the most skewed; locality panels put P of ,local:P on the x axis (a "
                      "token keeps its predecessor's experts with probability P). MEO routes once "
                      "per sequence: locality leaves its choice as the base distribution's.")


def locality_rows(rows: pd.DataFrame) -> pd.DataFrame:
    """The base distribution that carries the most `,local:P` values, with P = 0 its own row."""
    local = rows[rows["local"] > 0]
    if local.empty:
        return local
    base = local.groupby(["kind", "param"]).size().idxmax()
    return rows[(rows["kind"] == base[0]) & (rows["param"] == base[1])].sort_values("local")


def _panel(ax, rows: pd.DataFrame, x: str) -> None:
    categories = list(dict.fromkeys(rows["routing"])) if x == "routing" else None
    for variant in order_variants(rows["variant"].unique()):
        r = rows[rows["variant"] == variant]
        xs = [categories.index(v) for v in r["routing"]] if categories else r["local"]
        ax.plot(xs, r["latency_ms_median"], color=colour(variant), label=label(variant),
                **marker(variant))
        ax.plot(xs, r["roofline_ms"], color=colour(variant), linestyle="--", linewidth=1,
                alpha=0.8, label=f"{label(variant)} bound")
    if categories:
        ax.set_xticks(range(len(categories)), categories, rotation=20, ha="right")
        ax.set_xlabel("--routing")
    else:
        ax.set_xlabel("P of ,local:P (probability a token keeps its predecessor's experts)")
    ax.set_ylim(bottom=0)
    ax.set_ylabel("median latency (ms)")
