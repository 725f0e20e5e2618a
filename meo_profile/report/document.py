"""The report: a results set in, `report.md` (or `.html`) with figures in `figures/` out.

`build_report` turns records into a list of blocks (headings, tables, figures, omissions,
findings); writers render the blocks as markdown or HTML, and `summary_tables` gives the terminal
the same key tables. A figure whose data is absent is left out with a line saying why.
Nothing here measures. FLOPs are 2 x MACs throughout.

Entry points for other commands (the sweep renders a report when it finishes):
    render_report(results, out_dir=None, fmt="md", command=None) -> Path of the report
    print_summary(results, console=None) -> None
"""

from __future__ import annotations

import html
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table as RichTable

from meo_profile.core.errors import BadInput
from meo_profile.core.inputs import output_dir
from meo_profile.report import figures, provenance, tables, views
from meo_profile.report.family import family_tables
from meo_profile.report.findings import findings
from meo_profile.report.regimes import regime_tables
from meo_profile.report.routing import routing_tables
from meo_profile.report.tables import Table, as_list
from meo_profile.results.store import load, load_warnings, results_path

FIGURES_DIR = "figures"


class ReportError(BadInput):
    """Results that cannot be reported on; `str()` is one line naming the path."""


# ------------------------------------------------------------------------------ blocks
@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class TableBlock:
    table: Table


@dataclass
class FigureBlock:
    name: str
    title: str
    caption: str
    drawn: figures.Drawn | None = None  # saved by the writer, then referenced by file name


@dataclass
class Omitted:
    title: str
    reason: str


Block = Heading | Paragraph | Bullets | TableBlock | FigureBlock | Omitted


# ------------------------------------------------------------------------------ sections
@dataclass(frozen=True)
class Section:
    """A numbered part of the report: an intro, at most one figure, its tables."""

    title: str
    intro: str
    figure: str | None = None  # a name in figures.FIGURES
    tables: tuple[tables.TableFn, ...] = ()


# The report's parts in order. A new figure is one more FigureEntry in figures.FIGURES and one
# more Section here.
SECTIONS: list[Section] = [
    Section("FLOPs against the number of selected experts",
            "The paper's figure: vanilla MoE's FLOPs grow with k, MEO's stay nearly flat.",
            "fig1_flops_vs_k"),
    Section("The paper's numbers",
            "Each efficiency number the MEO paper prints, next to this run's count.",
            tables=(as_list(tables.paper_table),)),
    Section("FLOPs ratio MEO / vanilla",
            "The closed form for one MoE linear is (B·L·P + B·k·P) / (B·L·k·P) = 1/k + 1/L.",
            "fig3_flops_ratio", (as_list(tables.flops_table),)),
    Section("Latency against k", "What the FLOPs become in time, per device.",
            "fig4_latency_vs_k", (tables.latency_tables,)),
    Section("MEO's speedup over vanilla, experts × k",
            "Measured speedup beside the speedup FLOPs predict.",
            "fig5_speedup_heatmap", (tables.speedup_tables,)),
    Section("Peak memory against experts",
            "Parameters grow with E; MEO's merged weights grow with the batch.",
            "fig6_memory_vs_experts", (tables.memory_tables,)),
    Section("Roofline", "Each configuration's measured time against its physical bound.",
            "fig7_roofline", (tables.roofline_tables,)),
    Section("Four methods at one expert budget",
            "Vanilla MoE, MEO, compressed experts and XMoE with the same expert weights, each "
            "against vanilla MoE: what a token reads, what the MoE block computes, what it costs "
            "in time and memory, and what each method trades for it.",
            "fig8_methods", (tables.methods_tables,)),
    Section("The merging family at one expert budget",
            "Methods that merge to save compute, side by side with the same experts and tokens: "
            "MEO merges its k chosen experts per sequence, SMEAR all E per sequence, Lory all E "
            "per segment of T tokens (each segment routed on the one before), Soft MoE merges "
            "tokens into E·p slots instead. Per token: what the MoE block computes, against "
            "vanilla top-k at each k, what it costs in time beside its bound, and in memory.",
            "fig10_merging_family", (family_tables,)),
    Section("Where the time goes on CUDA",
            "Eager PyTorch launches one kernel per operator; at small sizes the device waits for "
            "the host. Each variant's eager time, its time replayed from a CUDA graph, and the "
            "device's own kernel time, split by phase.",
            "fig9_where_time_goes", (tables.time_tables,)),
    Section("Routing",
            "A random router spreads tokens nearly evenly and forgets the previous token; real "
            "routers are skewed and local. Vanilla MoE and MEO under the routings measured "
            "(`--routing`): vanilla's cost follows the distinct experts its tokens touch and "
            "the busiest expert, MEO's merge the experts each sequence chose.",
            "fig11_routing", (routing_tables,)),
    Section("Where merging pays off",
            "A merge costs k·P bytes per sequence whatever the number of tokens it serves: over "
            "many tokens it buys MEO one matmul per token instead of k, over one token per "
            "decode step nothing, unless the merged expert is kept from the prompt, which then "
            "costs B·P bytes per layer. MEO against the best vanilla MoE over batch and tokens "
            "per sequence per forward, prefill and decode, measured and as the phase-wise "
            "bounds predict.",
            "fig12_regimes", (regime_tables,)),
]


@dataclass
class Report:
    blocks: list[Block] = field(default_factory=list)

    def figure_blocks(self) -> list[FigureBlock]:
        return [b for b in self.blocks if isinstance(b, FigureBlock)]

    def tables(self) -> list[Table]:
        return [b.table for b in self.blocks if isinstance(b, TableBlock)]


def build_report(records: list[dict], command: str, source: str = "results.jsonl",
                 skipped_lines: int = 0, load_warnings: list[str] | tuple = ()) -> Report:
    """All blocks of the report from stored records (and the load guard's warnings of the
    sweeps that produced them). Draws figures; writes nothing."""
    every = views.records_frame(records)
    ok = views.ok_rows(every)
    blocks: list[Block] = [Heading("meo-profile report", 1), Paragraph(_provenance(every, command, source)),
                           TableBlock(provenance.setup_table(every, skipped_lines, command,
                                                         load_warnings))]
    for number, section in enumerate(SECTIONS, 1):  # numbered here, so a new section renumbers
        blocks += section_blocks(section, ok, number)
    blocks += [Heading(f"{len(SECTIONS) + 1}. Findings"),
               Bullets(findings(ok) or ["No finding: the results hold no comparison."])]
    failed, fixed = provenance.failures_table(every), provenance.history_table(every)
    if failed is not None:
        blocks += [Heading("Configurations that did not complete"), TableBlock(failed)]
    if fixed is not None:
        blocks += [Heading("Earlier failures, fixed since"), TableBlock(fixed)]
    return Report(blocks)


def section_blocks(section: Section, ok: pd.DataFrame, number: int) -> list[Block]:
    blocks: list[Block] = [Heading(f"{number}. {section.title}"), Paragraph(section.intro)]
    if section.figure is not None:
        entry = figures.FIGURES[section.figure]
        try:
            drawn = entry.draw(ok)
            blocks.append(FigureBlock(entry.name, entry.title, drawn.caption, drawn))
        except figures.Missing as why:
            blocks.append(Omitted(entry.title, str(why)))
    blocks += [TableBlock(t) for fn in section.tables for t in fn(ok)]
    return blocks


def _provenance(every: pd.DataFrame, command: str, source: str) -> str:
    newest = every["created_utc"].dropna().max() if every["created_utc"].notna().any() else "–"
    return (f"Rendered by `{command}` from `{source}` ({len(every)} records, newest {newest}; "
            f"the commands that measured them are in the setup table). FLOPs are 2 × MACs "
            f"(one multiply-add counts as two operations) throughout.")


# ------------------------------------------------------------------------------ markdown
def md(text: str) -> str:
    """Text for markdown, with HTML's special characters escaped outside `code` spans (which
    markdown shows as they are): a name such as hf:runs/<b>x</b> stays text, never markup."""
    parts = re.split(r"(`[^`\n]*`)", str(text))
    return "".join(p if len(p) > 1 and p[0] == p[-1] == "`" else html.escape(p, quote=False)
                   for p in parts)


def markdown_table(t: Table) -> str:
    def row(cells: list[str]) -> str:
        return "| " + " | ".join(md(c).replace("|", "\\|") for c in cells) + " |"

    rule = ["---:" if i in t.right else "---" for i in range(len(t.columns))]
    lines = [*([f"**{md(t.title)}**", ""] if t.title else []), row(t.columns),
             "| " + " | ".join(rule) + " |", *(row(r) for r in t.rows)]
    return "\n".join(lines + ([f"\n*{md(t.note)}*"] if t.note else []))


MARKDOWN: dict[type, Callable] = {
    Heading: lambda b: "#" * b.level + " " + md(b.text),
    Paragraph: lambda b: md(b.text),
    Bullets: lambda b: "\n".join(f"- {md(item)}" for item in b.items),
    TableBlock: lambda b: markdown_table(b.table),
    FigureBlock: lambda b: (f"![{md(b.title)}]({FIGURES_DIR}/{b.name}.png)\n\n"
                            f"*Figure: {md(b.caption)}* ([SVG]({FIGURES_DIR}/{b.name}.svg))"),
    Omitted: lambda b: f"*{md(b.title)}: left out, {md(b.reason)}.*",
}


def to_markdown(report: Report) -> str:
    return "\n\n".join(MARKDOWN[type(b)](b) for b in report.blocks) + "\n"


# ------------------------------------------------------------------------------ HTML
def html_table(t: Table) -> str:
    def cells(tag: str, row: list[str]) -> str:
        return "".join(f'<{tag} class="{"r" if i in t.right else "l"}">{html.escape(c)}</{tag}>'
                       for i, c in enumerate(row))

    body = "".join(f"<tr>{cells('td', r)}</tr>" for r in t.rows)
    note = f"<p class=note>{html.escape(t.note)}</p>" if t.note else ""
    caption = f"<caption>{html.escape(t.title)}</caption>" if t.title else ""
    return (f"<table>{caption}<thead><tr>{cells('th', t.columns)}"
            f"</tr></thead><tbody>{body}</tbody></table>{note}")


def html_text(text: str) -> str:
    """Escaped text, with markdown's `code` spans kept as code."""
    return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))


HTML: dict[type, Callable] = {
    Heading: lambda b: f"<h{b.level}>{html.escape(b.text)}</h{b.level}>",
    Paragraph: lambda b: f"<p>{html_text(b.text)}</p>",
    Bullets: lambda b: "<ul>" + "".join(f"<li>{html_text(i)}</li>" for i in b.items) + "</ul>",
    TableBlock: lambda b: html_table(b.table),
    FigureBlock: lambda b: (f'<figure><img src="{FIGURES_DIR}/{b.name}.png" alt="{html.escape(b.title)}">'
                            f"<figcaption>{html.escape(b.caption)} "
                            f'(<a href="{FIGURES_DIR}/{b.name}.svg">SVG</a>)</figcaption></figure>'),
    Omitted: lambda b: f"<p class=omitted>{html.escape(b.title)}: left out, {html.escape(b.reason)}.</p>",
}
HTML_STYLE = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
              "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
              "padding:.25em .6em}.r{text-align:right}.l{text-align:left}caption{font-weight:bold;"
              "text-align:left}img{max-width:100%}.note,.omitted,figcaption{font-style:italic;"
              "color:#444}")


def to_html(report: Report) -> str:
    body = "\n".join(HTML[type(b)](b) for b in report.blocks)
    return (f"<!doctype html><html><head><meta charset=utf-8><title>meo-profile report</title>"
            f"<style>{HTML_STYLE}</style></head><body>\n{body}\n</body></html>\n")


WRITERS: dict[str, tuple[str, Callable[[Report], str]]] = {
    "md": ("report.md", to_markdown),
    "html": ("report.html", to_html),
}


# ------------------------------------------------------------------------------ files
def load_results(results: str | Path) -> tuple[Path, list[dict], list[str]]:
    """(results file, valid records, lines left out: "unreadable line file:line: why" or
    "invalid record file:line: field: why"); ReportError when there is nothing to read."""
    file = results_path(results)
    if str(results).strip() == "" or not file.is_file():
        raise ReportError(f"RESULTS {str(results)!r}: no results file ({file.name} expected)")
    loaded = load(file)  # bad lines are left out and counted; an unreadable file is bad input
    if not loaded.records:
        raise ReportError(f"{file}: no readable records"
                          + (f" ({loaded.invalid_line()})" if loaded.invalid else ""))
    return file, loaded.records, loaded.left_out


def write_report(report: Report, out_dir: Path, fmt: str = "md") -> Path:
    """Save each figure as PNG and SVG under `out_dir/figures/`, then the report text."""
    if fmt not in WRITERS:
        raise ReportError(f"--format {fmt!r}: unknown; choose from {', '.join(WRITERS)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for block in report.figure_blocks():
        if block.drawn is not None:
            figures.save(block.drawn.figure, out_dir / FIGURES_DIR, block.name)
    name, render = WRITERS[fmt]
    path = out_dir / name
    path.write_text(render(report), encoding="utf-8")
    return path


def report_command(results: str | Path, out_dir: str | Path | None = None, fmt: str = "md") -> str:
    """The `meo-profile report` call that renders `results` this way (printed in the report)."""
    args = ["meo-profile", "report", str(results)]
    args += ["--out", str(out_dir)] if out_dir is not None else []
    args += ["--format", fmt] if fmt != "md" else []
    return shlex.join(args)


def render_report(results: str | Path, out_dir: str | Path | None = None, fmt: str = "md",
                  command: str | None = None) -> Path:
    """Read a results set (directory or .jsonl), write the report, return its path.

    `out_dir` defaults to the results' directory; `command` is printed in the report as what
    produced it (default: the equivalent `meo-profile report` call).
    """
    if fmt not in WRITERS:
        raise ReportError(f"--format {fmt!r}: unknown; choose from {', '.join(WRITERS)}")
    file, records, skipped = load_results(results)
    out = output_dir(out_dir if out_dir is not None else file.parent, "--out")
    report = build_report(records, command or report_command(results, out_dir, fmt), file.name,
                          len(skipped), load_warnings(file.parent))
    return write_report(report, out, fmt)


# ------------------------------------------------------------------------------ terminal
KEY_TABLES: tuple[tables.TableFn, ...] = (
    as_list(tables.paper_table), as_list(tables.flops_table), tables.speedup_tables,
    tables.roofline_tables, tables.time_tables, tables.methods_tables, family_tables,
    regime_tables,
)


def summary_tables(records: list[dict], skipped_lines: int = 0, command: str | None = None,
                   load_warnings: list[str] | tuple = ()) -> list[Table]:
    """The tables the terminal shows: setup, the paper's numbers, FLOPs, speedup, roofline,
    the four methods, the merging family, failures."""
    every = views.records_frame(records)
    ok = views.ok_rows(every)
    out = [provenance.setup_table(every, skipped_lines, command, load_warnings)]
    out += [t for fn in KEY_TABLES for t in fn(ok)]
    failed = provenance.failures_table(every)
    return out + ([failed] if failed is not None else [])


def rich_table(t: Table) -> RichTable:
    rt = RichTable(title=t.title or None, caption=t.note or None, title_justify="left",
                   caption_justify="left")
    for i, col in enumerate(t.columns):
        rt.add_column(col, justify="right" if i in t.right else "left")
    for row in t.rows:
        rt.add_row(*row)
    return rt


def print_summary(results: str | Path, console: Console | None = None,
                  command: str | None = None) -> None:
    """Print the key tables of a results set to the terminal."""
    file, records, skipped = load_results(results)
    console = console or Console()
    for t in summary_tables(records, len(skipped), command, load_warnings(file.parent)):
        console.print(rich_table(t))
