"""Terminal rendering: rich tables built from results. Renderers never measure."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meo_profile.core.identity import spec_title
from meo_profile.core.units import fmt_giga
from meo_profile.results.record import Result
from models import Spec


def print_table(table: Table) -> None:
    Console().print(table)


def checks_table(checks, spec: Spec) -> Table:
    table = Table(title=f"verify: {spec_title(spec)}")
    for col in ("check", "max abs err", "max rel err", "tolerance (rel)", "ok"):
        table.add_column(col, justify="left" if col == "check" else "right")
    for c in checks:
        table.add_row(c.name, f"{c.max_abs_err:.2e}", f"{c.max_rel_err:.2e}", f"{c.tol:.0e}",
                      "[green]yes[/]" if c.ok else "[red]NO[/]")
    return table


def counts_table(counts, spec: Spec) -> Table:
    """Totals and parts of one count. MACs = multiply-adds; FLOPs = 2 x MACs."""
    table = Table(title=f"flops ({counts.source}, counted on {counts.count_device or 'paper'}): "
                        f"{spec_title(spec)}", caption="GMACs = 1e9 multiply-adds; GFLOPs = 2 x GMACs")
    table.add_column("part")
    table.add_column("GMACs", justify="right")
    table.add_column("GFLOPs", justify="right")
    table.add_column("share", justify="right")
    for part, macs in counts.macs_by_part.items():
        table.add_row(part, fmt_giga(macs), fmt_giga(2 * macs), f"{macs / max(counts.macs, 1):.1%}")
    table.add_section()
    table.add_row("[bold]total[/]", fmt_giga(counts.macs), fmt_giga(counts.flops), "100.0%")
    if "router" in counts.macs_by_part:
        rest = counts.macs - counts.macs_by_part["router"]
        table.add_row("total without router", fmt_giga(rest), fmt_giga(2 * rest), f"{rest / max(counts.macs, 1):.1%}")
    return table


def params_line(counts) -> str:
    return (f"params: {counts.params_total:,} total, {counts.params_active:,} active per token "
            f"({counts.params_active / max(counts.params_total, 1):.1%})")


def skipped_line(counts) -> str:
    if not counts.unsupported_ops:
        return "counted as 0: nothing"
    ops = ", ".join(f"{op.removeprefix('aten::')} x{n}" for op, n in counts.unsupported_ops.items())
    return f"counted as 0 (no multiply-adds rule): {ops}"


def mapping_table(title: str, key: str, macs: dict[str, int]) -> Table:
    table = Table(title=title)
    table.add_column(key)
    table.add_column("GMACs", justify="right")
    for name, value in macs.items():
        table.add_row(escape(name) or "(model)", fmt_giga(value))
    return table


def modules_to_depth(by_module: dict[str, int], depth: int) -> dict[str, int]:
    """Non-zero modules no deeper than `depth` dots, largest first."""
    kept = {n: v for n, v in by_module.items() if v and (n.count(".") < depth or not n)}
    return dict(sorted(kept.items(), key=lambda kv: -kv[1]))


def comparison_table(a, b, spec: Spec) -> Table:
    table = Table(title=f"flops, both sources: {spec_title(spec)}")
    for col in ("quantity", a.source, b.source, "agree"):
        table.add_column(col, justify="left" if col == "quantity" else "right")
    rows = [("macs", a.macs, b.macs), ("params_total", a.params_total, b.params_total),
            ("params_active", a.params_active, b.params_active)]
    rows += [(f"macs: {p}", a.macs_by_part.get(p, 0), b.macs_by_part.get(p, 0))
             for p in sorted(set(a.macs_by_part) | set(b.macs_by_part))]
    for name, x, y in rows:
        table.add_row(name, f"{x:,}", f"{y:,}", "[green]yes[/]" if x == y else "[red]NO[/]")
    return table


def print_counts(result: Result, by_module: bool, by_operator: bool, depth: int) -> None:
    """A counted Result: parts, parameters, skipped ops, the breakdowns asked for, what the
    variant records beside its count, and the closed form when it was held against."""
    counts, spec = result.counts, result.spec
    console = Console()
    console.print(counts_table(counts, spec))
    console.print(params_line(counts))
    console.print(skipped_line(counts))
    if counts.note:
        console.print(f"note: {counts.note}")
    if by_operator:
        console.print(mapping_table("MACs by operator", "operator", counts.macs_by_operator))
    if by_module:
        modules = modules_to_depth(counts.macs_by_module, depth)
        console.print(mapping_table(f"MACs by module (depth <= {depth})", "module", modules))
    record = result.to_dict()
    for name, text in EXTRA_LABELS.items():
        value = record.get(name)
        if value is not None:
            console.print(f"{text}: {value:.4g}" if isinstance(value, float) else f"{text}: {value:,}")
    if result.cross_check is not None:
        console.print(comparison_table(counts, result.cross_check.analytic, spec))


EXTRA_LABELS = {
    "experts_per_token_mean": "experts chosen per token, mean",
    "experts_per_token_p90": "experts chosen per token, p90",
    "experts_per_token_max": "experts chosen per token, max",
    "dropped_pairs": "(token, expert) pairs dropped by capacity",
    "rel_l2_error": "relative L2 error vs full top-k (fidelity)",
}


# ------------------------------------------------------------------------------ sweeps
def print_sweep_summary(summary, out, skipped: list[str]) -> None:
    console = Console(stderr=True)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.statuses.items())) or "nothing new"
    if summary.set_aside:
        console.print(f"previous results kept as {summary.set_aside}")
    console.print(f"sweep: {summary.total} configurations; measured {summary.measured} ({counts}); "
                  f"{summary.already_stored} already stored; results in {out}")
    wall = max(summary.wall_s, 1e-9)
    if summary.parallel:  # workers ran at once: their seconds add up past the wall time
        phases = ", ".join(f"{name} {s:.1f} s" for name, s in summary.phases_s.most_common())
        console.print(f"wall {summary.wall_s:.1f} s; worker time: {phases or 'no work'} "
                      f"({summary.workers})", markup=False)
    else:
        phases = ", ".join(f"{name} {s:.1f} s ({s / wall:.0%})" for name, s in summary.phases_s.most_common())
        console.print(f"wall {summary.wall_s:.1f} s: {phases or 'no work'}")
    for line in skipped:
        console.print(f"[yellow]skipped unreadable line[/] {line}")


def presets_text(presets) -> str:
    """Each preset: name, size and time on one line, what it runs indented below."""
    lines = []
    for name, preset in presets.items():
        try:
            size = f"{len(preset.grid.expand()[0])} configurations"
        except ValueError as e:  # e.g. the gpu preset on a machine without CUDA
            size = f"not runnable here ({e})"
        lines += [f"[bold]{name}[/]: {size}, {preset.estimate}", f"    {preset.description}", ""]
    lines.append("run one with: meo-profile sweep --preset NAME")
    return "\n".join(lines)
