"""The report's figures: results in, a matplotlib Figure out. Nothing here measures.

Figures are built with the object-oriented API (`matplotlib.figure.Figure`, no pyplot), and
styled inside `matplotlib.rc_context` (style.py). Every draw function takes the successful rows
(`views.ok_rows`) and returns a `Drawn` (figure and caption) or raises `Missing` with the reason
its data is absent, which the report prints in the figure's place. FLOPs are 2 x MACs
throughout. A new figure is one draw function and one entry in `FIGURES`.
"""

from __future__ import annotations

from meo_profile.report.figures.family import draw_family
from meo_profile.report.figures.flops import draw_flops_ratio, draw_flops_vs_k
from meo_profile.report.figures.latency import draw_latency_vs_k, draw_speedup_heatmap
from meo_profile.report.figures.memory import draw_memory_vs_experts
from meo_profile.report.figures.methods import draw_methods
from meo_profile.report.figures.regimes import draw_regimes
from meo_profile.report.figures.roofline import draw_roofline
from meo_profile.report.figures.routing import draw_routing
from meo_profile.report.figures.style import VARIANT_COLOURS, Drawn, FigureEntry, Missing, save
from meo_profile.report.figures.timing import draw_where_time_goes

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
    FigureEntry("fig10_merging_family", "The merging family at one expert budget",
                draw_family),
    FigureEntry("fig9_where_time_goes", "Where the time goes on CUDA", draw_where_time_goes),
    FigureEntry("fig11_routing", "Latency against skew and locality of routing", draw_routing),
    FigureEntry("fig12_regimes", "Where merging pays off: MEO's speedup, batch × regime",
                draw_regimes),
)}

__all__ = ["FIGURES", "VARIANT_COLOURS", "Drawn", "FigureEntry", "Missing", "save"]
