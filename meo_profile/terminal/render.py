"""Terminal rendering: rich tables built from results. Renderers never measure.

Tables fit the terminal, 80 columns, or a pipe (rich assumes 80 there) without cutting a
value: text wraps at spaces, and a table whose values cannot fit side by side is split into
several tables of whole columns, each repeating the leading (label) columns. Sentences that hold
paths or commands are printed without rich's line breaking, so a path is never split (the
terminal wraps the line; a copy and paste gets it whole).
"""

from __future__ import annotations

import copy
import dataclasses

from rich.console import Console
from rich.markup import escape
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from meo_profile.core.identity import spec_title
from meo_profile.core.units import fmt_giga, fmt_share
from meo_profile.models import VARIANTS, Spec
from meo_profile.models.merging import merge_groups
from meo_profile.results.record import Result


def print_table(table: Table, console: Console | None = None) -> None:
    """`table` fitted to the console (see the module doc): its title and caption as text
    wrapped to the console's width, the columns split over several tables if need be."""
    console = console or Console()
    title, caption = table.title, table.caption
    parts = fit_width(table, console.width)
    for i, part in enumerate(parts):
        part.title = part.caption = None
        heading = title if i == 0 else f"{title or ''} (continued)".strip()
        if heading:
            console.print(Text.from_markup(str(heading), style="italic"), highlight=False)
        console.print(part)
    if caption:
        console.print(Text.from_markup(str(caption), style="dim"), highlight=False)


def print_line(text: str, console: Console | None = None) -> None:
    """One sentence, not broken by rich (see the module doc)."""
    (console or Console()).print(text, soft_wrap=True, highlight=False)


def _column_range(column, console: Console) -> tuple[int, int]:
    """(narrowest, widest) content width of a column: its longest word (a number is one word)
    and its longest cell, header included."""
    options = console.options.update(max_width=10**6)
    sizes = [Measurement.get(console, options, cell) for cell in [column.header, *column.cells]]
    return max(m.minimum for m in sizes), max(m.maximum for m in sizes)


def _frame_width(columns: int) -> int:
    """Characters a bordered table spends around its cells: a rule before every column and
    after the last, one space of padding on each side of a cell."""
    return 3 * columns + 1


def fit_width(table: Table, width: int) -> list[Table]:
    """`table`, or its columns split over several tables that each fit `width` without cutting
    a word or a number: the leading columns repeated in each part. Columns get fixed widths: each
    at least its longest word, the rest of the line shared by how much more each would take."""
    console = Console(width=width)
    ranges = [_column_range(c, console) for c in table.columns]
    if sum(high for _, high in ranges) + _frame_width(len(ranges)) <= width:
        return [table]
    keys = _key_columns(ranges, width)
    groups: list[list[int]] = [[]]
    for i in range(len(keys), len(ranges)):
        trial = [*keys, *groups[-1], i]
        if groups[-1] and sum(ranges[j][0] for j in trial) + _frame_width(len(trial)) > width:
            groups.append([])
        groups[-1].append(i)
    return [_part(table, [*keys, *group], ranges, width) for group in groups]


def _key_columns(ranges: list[tuple[int, int]], width: int) -> list[int]:
    """The leading columns repeated in every part: the first, and those after it while all of
    them take at most a quarter of the line (E and k of a speedup table, not a long label)."""
    keys, used = [0], ranges[0][1] + 3
    for i in range(1, len(ranges) - 1):
        used += ranges[i][1] + 3
        if used > width // 4:
            break
        keys.append(i)
    return keys


def _part(table: Table, indices: list[int], ranges: list[tuple[int, int]], width: int) -> Table:
    """A copy of `table` with only the columns at `indices`, each at a fixed width."""
    part = copy.copy(table)
    part.columns = [dataclasses.replace(table.columns[i], overflow="fold") for i in indices]
    lows = [ranges[i][0] for i in indices]
    wants = [ranges[i][1] - ranges[i][0] for i in indices]
    spare = max(0, width - _frame_width(len(indices)) - sum(lows))
    total = sum(wants) or 1
    for column, low, want in zip(part.columns, lows, wants):
        column.width = low + min(want, spare * want // total)
    return part


def checks_table(checks, spec: Spec) -> Table:
    table = Table(title=f"verify: {spec_title(spec)}")
    for col in ("check", "max abs err", "max rel err", "tolerance (rel)", "ok"):
        table.add_column(col, justify="left" if col == "check" else "right")
    for c in checks:
        if c.skipped:
            table.add_row(c.name, "-", "-", f"{c.tol:.0e}", f"[yellow]skipped[/]: {escape(c.skipped)}")
            continue
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
        table.add_row(part, fmt_giga(macs), fmt_giga(2 * macs), fmt_share(macs / max(counts.macs, 1)))
    table.add_section()
    table.add_row("[bold]total[/]", fmt_giga(counts.macs), fmt_giga(counts.flops), "100.0%")
    if "router" in counts.macs_by_part:
        rest = counts.macs - counts.macs_by_part["router"]
        table.add_row("total without router", fmt_giga(rest), fmt_giga(2 * rest), fmt_share(rest / max(counts.macs, 1)))
    return table


def params_line(counts) -> str:
    return (f"params: {counts.params_total:,} total, {counts.params_active:,} active per token "
            f"({fmt_share(counts.params_active / max(counts.params_total, 1))})")


def merge_line(spec: Spec) -> str | None:
    """What the `merge` part holds, for a variant that merges expert weights: how many merged
    experts each MoE layer makes per sequence, and how many experts each reads."""
    if not VARIANTS[spec.variant].merges:
        return None
    per_sequence = merge_groups(spec) // spec.batch_size
    every = VARIANTS[spec.variant].every_expert or spec.impl == "dense"
    read = f"all {spec.num_experts} experts" if every else f"the {spec.top_k} chosen experts"
    where = (f"one per segment of {min(spec.segment_len, spec.seq_len)} tokens"
             if spec.segment_len else f"one per sequence of {spec.seq_len} tokens")
    return (f"merge: {per_sequence} merge(s) per sequence ({where}) of {read} ({spec.impl}), "
            f"in each MoE layer")


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


def without_wrappers(by_module: dict[str, int]) -> dict[str, int]:
    """Modules less those that cost exactly what their parent does (a wrapper such as a host's
    `model` inside the whole model: the parent's row says it already)."""
    return {n: v for n, v in by_module.items()
            if not n or by_module.get(n.rpartition(".")[0]) != v}


def collapse_stacks(by_module: dict[str, int]) -> list[tuple[str, int, int]]:
    """(module, blocks, MACs of one block) rows, largest total first: modules whose names are
    equal but for their indices and whose MACs are equal (a stack of identical blocks) are one
    row named with the index range, 'layers.0-31', and their count."""
    groups: dict[tuple, list[tuple[tuple[int, ...], int]]] = {}
    for name, macs in by_module.items():
        parts = name.split(".")
        shape = tuple("#" if p.isdigit() else p for p in parts)
        groups.setdefault((shape, macs), []).append(
            (tuple(int(p) for p in parts if p.isdigit()), macs))
    rows = []
    for (shape, macs), members in groups.items():
        if len(members) == 1 or "#" not in shape:
            rows += [(_named(shape, [idx]), 1, macs) for idx, _ in members]
        else:
            rows.append((_named(shape, [idx for idx, _ in members]), len(members), macs))
    return sorted(rows, key=lambda r: (-r[1] * r[2], r[0]))


def _named(shape: tuple[str, ...], indices: list[tuple[int, ...]]) -> str:
    """A name with each index slot filled: the index, or the range a stack spans."""
    slots = iter(zip(*indices))
    parts = []
    for part in shape:
        if part != "#":
            parts.append(part)
            continue
        values = sorted(set(next(slots)))
        contiguous = values == list(range(values[0], values[-1] + 1))
        parts.append(str(values[0]) if len(values) == 1 else
                     f"{values[0]}-{values[-1]}" if contiguous else ",".join(map(str, values)))
    return ".".join(parts) or "(model)"


def modules_table(by_module: dict[str, int], depth: int) -> Table:
    """MACs by module to `depth`: a stack of identical blocks is one row with its count."""
    table = Table(title=f"MACs by module (depth <= {depth}; identical blocks as one row)")
    table.add_column("module")
    for col in ("blocks", "GMACs each", "GMACs all"):
        table.add_column(col, justify="right")
    rows = collapse_stacks(without_wrappers(modules_to_depth(by_module, depth)))
    for name, blocks, macs in rows:
        table.add_row(escape(name), str(blocks), fmt_giga(macs), fmt_giga(blocks * macs))
    return table


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
    print_table(counts_table(counts, spec), console)
    print_line(params_line(counts), console)
    if (merges := merge_line(spec)) is not None:
        print_line(merges, console)
    print_line(skipped_line(counts), console)
    if result.host_router_gates is not None:  # a native host: whose router ran says a lot
        print_line(routers_line(result.router_gates, result.host_router_gates), console)
    if counts.note:
        print_line(f"note: {counts.note}", console)
    if by_operator:
        print_table(mapping_table("MACs by operator", "operator", counts.macs_by_operator), console)
    if by_module:
        print_table(modules_table(counts.macs_by_module, depth), console)
    record = result.to_dict()
    for name, text in EXTRA_LABELS.items():
        value = record.get(name)
        if value is not None:
            print_line(f"{text}: {value:.4g}" if isinstance(value, float) else f"{text}: {value:,}",
                       console)
    if result.cross_check is not None:
        print_table(comparison_table(counts, result.cross_check.analytic, spec), console)


def routers_line(used: str | None, own: str) -> str:
    if used == own:
        return f"router: the model's own ({own})"
    return f"router: {used or 'none (dense)'}; the model's own ({own}) is not used by this variant"


EXTRA_LABELS = {
    "experts_per_token_mean": "experts chosen per token, mean",
    "experts_per_token_p90": "experts chosen per token, p90",
    "experts_per_token_max": "experts chosen per token, max",
    "dropped_pairs": "(token, expert) pairs dropped by capacity",
    "rel_l2_error": "relative L2 error vs full top-k (fidelity)",
    "merged_cache_bytes": "merged experts kept between decode steps (bytes)",
}


# ------------------------------------------------------------------------------ sweeps
def print_sweep_summary(summary, out, skipped: list[str]) -> None:
    console = Console(stderr=True)
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.statuses.items())) or "nothing new"
    if summary.set_aside:
        print_line(f"previous results kept as {summary.set_aside}", console)
    print_line(f"sweep: {summary.total} configurations; measured {summary.measured} ({counts}); "
               f"{summary.already_stored} already stored; results in {out}", console)
    wall = max(summary.wall_s, 1e-9)
    if summary.parallel:  # workers ran at once: their seconds add up past the wall time
        phases = ", ".join(f"{name} {s:.1f} s" for name, s in summary.phases_s.most_common())
        print_line(f"wall {summary.wall_s:.1f} s; worker time: {phases or 'no work'} "
                   f"({summary.workers})", console)
    else:
        phases = ", ".join(f"{name} {s:.1f} s ({s / wall:.0%})" for name, s in summary.phases_s.most_common())
        print_line(f"wall {summary.wall_s:.1f} s: {phases or 'no work'}", console)
    for line in summary.load_warnings:
        print_line(f"[yellow]warning:[/] {line}", console)
    for line in skipped:
        print_line(f"[yellow]left out[/] {escape(line)}", console)


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
