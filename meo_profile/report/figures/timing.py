"""Figure 9: where a step's time goes on CUDA: the device's kernel time by phase, beside the
CUDA-graph replay and the eager time, per variant and implementation."""

from __future__ import annotations

import pandas as pd
from matplotlib.figure import Figure

from meo_profile.core.identity import label
from meo_profile.measure.trace_file import OTHER
from meo_profile.models.phases import PHASES
from meo_profile.report import views
from meo_profile.report.figures.style import Drawn, panel_title, require, styled

# Okabe-Ito again, one colour per phase; "other" (the host model's own kernels) in grey.
PHASE_COLOURS = {"router": "#CC79A7", "dispatch": "#56B4E9", "compress": "#009E73",
                 "experts": "#0072B2", "merge": "#D55E00", "combine": "#E69F00", OTHER: "#999999"}


@styled
def draw_where_time_goes(df: pd.DataFrame) -> Drawn:
    view = views.time_view(df)
    require(not view.empty, "no CUDA record has a kernel time (on a CPU there are no kernel "
                            "launches to separate from the work)")
    devices = list(view.groupby("device_label", sort=True))
    # one panel per device, stacked; wide, since the variant names sit left of the bars
    heights = [1.0 + 0.45 * len(rows) for _, rows in devices]
    fig = Figure(figsize=(10.0, sum(heights) + 1.2 * len(devices)), layout="constrained")
    axes = fig.subplots(len(devices), 1, squeeze=False, height_ratios=heights).ravel()
    for ax, (device, rows) in zip(axes, devices, strict=True):
        _time_panel(ax, rows.reset_index(drop=True))
        panel_title(ax, device, rows["setting"].iloc[0])
    seen = {}  # one legend below the panels: each phase or marker once
    for ax in axes:
        for handle, name in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(name, handle)
    fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=min(len(seen), 5))
    return Drawn(fig, "Each bar: the device's kernel time of one step, split by the phase that "
                      "launched each kernel (profiled pass); ◆ the step replayed from a CUDA "
                      "graph (where it could be captured); | the step launched op by op (eager). "
                      "The gap between the bar and | is launch overhead: the device waiting for "
                      "the host.")


def _time_panel(ax, rows: pd.DataFrame) -> None:
    names = [f"{label(r['variant'])} ({r['impl']})" for r in rows.to_dict("records")]
    y = list(range(len(rows)))[::-1]  # the first variant on top
    left = [0.0] * len(rows)
    for phase in (*PHASES, OTHER):
        widths = [(d or {}).get(phase, 0.0) if isinstance(d, dict) else 0.0
                  for d in rows["kernel_ms_by_phase"]]
        if any(widths):
            ax.barh(y, widths, left=left, height=0.6, color=PHASE_COLOURS[phase], label=phase)
            left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.scatter(rows["graph_ms"], y, marker="D", color="black", s=28, zorder=3, label="graph replay")
    ax.scatter(rows["eager_ms_median"], y, marker="|", color="black", s=260, linewidths=2,
               zorder=3, label="eager")
    ax.set_yticks(y, names)
    ax.set_xlim(left=0)
    ax.set_xlabel("time per step (ms)")
    ax.set_ylabel("variant (implementation)")
