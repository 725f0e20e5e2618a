"""Terminal views of results and plans: the report's key tables, and what a sweep would run
(`sweep --dry-run`). Renderers: they read, never measure."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from meo_profile.core.identity import spec_title
from meo_profile.core.units import human_bytes
from meo_profile.measure.preflight import memory_limit
from meo_profile.report.document import load_results, rich_table, summary_tables
from meo_profile.sweep.grid import NOT_A_MODEL_TEXT
from meo_profile.sweep.plan import PlannedJob, SweepPlan, long_sweep_warning
from meo_profile.terminal.render import print_line, print_table


def print_report_summary(results: str | Path, command: str | None = None,
                         console: Console | None = None) -> None:
    """The key tables of a results set (setup, the paper's numbers, FLOPs, speedup, roofline,
    the four methods, failures), each fitted to the terminal's width; then a warning on stderr
    for each line of the results file left out (unreadable, or a record with an
    invalid field)."""
    _, records, skipped = load_results(results)
    console = console or Console()
    for t in summary_tables(records, len(skipped), command):
        print_table(rich_table(t), console)
    for line in skipped:
        print_line(f"warning: left out {escape(line)}", Console(stderr=True))


PLAN_ROWS = 200  # configurations a dry run lists; the counts and estimates cover them all


def plan_table(planned: list[PlannedJob], rows: int = PLAN_ROWS) -> Table:
    """The first `rows` configurations in the order they run (a table of 189,000 rows takes
    longer to print than to plan, and nobody reads it); the caption says how many more."""
    table = Table(title="sweep --dry-run: the configurations, in the order they run")
    for col, right in (("#", True), ("configuration", False), ("metrics", False),
                       ("stored", False), ("memory estimate", True)):
        table.add_column(col, justify="right" if right else "left")
    for i, job in enumerate(planned[:rows], 1):
        memory = "–" if job.memory is None else human_bytes(job.memory.total_bytes)
        table.add_row(str(i), spec_title(job.spec), ",".join(job.metrics),
                      "yes (skipped)" if job.stored else "no",
                      memory + ("" if job.fits else " (over: oom)"))
    if len(planned) > rows:
        table.caption = (f"the first {rows:,} of {len(planned):,} configurations; the lines "
                         "below count them all")
    return table


def plan_lines(plan: SweepPlan, planned: list[PlannedJob]) -> list[str]:
    """What the dry run adds up to: counts, time at least spent timing, memory, the estimate."""
    options = plan.options
    todo = [j for j in planned if not j.stored]
    timed = [j for j in todo if "latency" in j.metrics]
    lines = [f"{len(planned)} configurations ({plan.impossible} grid combinations left out: "
             f"{NOT_A_MODEL_TEXT}); {len(planned) - len(todo)} stored already in "
             f"{options.out}, {len(todo)} to measure"]
    lines.append(f"timing: {len(timed)} configurations x --min-run-time "
                 f"{options.timing.min_run_time:g} s = at least "
                 f"{len(timed) * options.timing.min_run_time:.0f} s of timed calls")
    too_long = long_sweep_warning(len(timed), options.timing.min_run_time)
    if too_long:
        lines.append(too_long)
    built = [j for j in todo if j.memory is not None]
    if built:
        largest = max(built, key=lambda j: j.memory.total_bytes)
        limit, why = memory_limit(largest.spec.device, options.max_memory_bytes)
        over = sum(not j.fits for j in built)
        lines.append(f"memory: largest estimate {largest.memory.describe()} for "
                     f"{spec_title(largest.spec)}; limit {human_bytes(limit)} ({why}); "
                     f"{over} over it (recorded as oom)")
    if plan.estimate:
        lines.append(f"this preset takes {plan.estimate}")
    return lines


def print_plan(plan: SweepPlan, planned: list[PlannedJob]) -> None:
    print_table(plan_table(planned))
    for line in plan_lines(plan, planned):
        print_line(line, Console(stderr=True))
