"""Terminal tables for routing traces (`meo-profile routing stats`). Renderers never measure."""

from __future__ import annotations

import math
from typing import Any

from rich.table import Table

from meo_profile.measure.routing.stats import LayerStats
from meo_profile.models.routing_trace import TraceHeader

# (column, how a LayerStats field is shown)
COLUMNS: list[tuple[str, str, str]] = [
    ("load max/mean", "load_max_over_mean", ".2f"),
    ("load CV", "load_cv", ".2f"),
    ("Zipf s", "zipf_s", ".2f"),
    ("experts/seq", "experts_per_sequence", ".1f"),
    ("if independent", "independent_expectation", ".1f"),
    ("locality", "locality", ".3f"),
    ("same k", "same_experts", ".3f"),
]


def _cell(value: Any, spec: str) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def trace_table(header: TraceHeader, stats: list[LayerStats]) -> Table:
    """One row per layer of a trace: load, skew, distinct experts per sequence, locality."""
    source = f" over {header.text}" if header.text else ""
    table = Table(title=f"routing of {header.model}: E={header.num_experts}, k={header.top_k}, "
                        f"{header.sequences} sequences of {header.tokens} tokens{source}",
                  caption="load: (token, expert) pairs per expert; Zipf s: load ∝ rank^-s fitted; "
                          "experts/seq: distinct experts a sequence chose, beside what tokens "
                          "choosing independently with the same popularity would give; "
                          "locality: consecutive tokens sharing an expert; same k: choosing the "
                          "same k experts.")
    table.add_column("layer")
    for name, _, _ in COLUMNS:
        table.add_column(name, justify="right")
    for s in stats:
        table.add_row(s.layer, *(_cell(getattr(s, field), spec) for _, field, spec in COLUMNS))
    return table
