"""Terminal rendering: rich tables built from results. Renderers never measure."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from models import Spec


def print_table(table: Table) -> None:
    Console().print(table)


def spec_title(spec: Spec) -> str:
    experts = "" if spec.variant == "dense" else f" E={spec.num_experts} k={spec.top_k}"
    return (f"{spec.host} {spec.variant}{experts} unit={spec.expert_unit} impl={spec.impl} "
            f"B={spec.batch_size} L={spec.seq_len} {spec.dtype} {spec.device}")


def checks_table(checks, spec: Spec) -> Table:
    table = Table(title=f"verify: {spec_title(spec)}")
    for col in ("check", "max abs err", "max rel err", "tolerance (rel)", "ok"):
        table.add_column(col, justify="left" if col == "check" else "right")
    for c in checks:
        table.add_row(c.name, f"{c.max_abs_err:.2e}", f"{c.max_rel_err:.2e}", f"{c.tol:.0e}",
                      "[green]yes[/]" if c.ok else "[red]NO[/]")
    return table
