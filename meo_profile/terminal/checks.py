"""Renderers for `check` and `compare`: rich tables, JUnit XML, markdown. They take verdicts or
a comparison and return a table or a string; they never measure."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from rich.markup import escape
from rich.table import Table

from meo_profile.check.claim import UNMEASURED_HINT, VERDICTS, Verdict
from meo_profile.check.compare import Comparison, Row, format_cell, format_change
from meo_profile.check.run import CheckRun

VERDICT_STYLE = {"pass": "green", "fail": "bold red", "pending": "yellow", "unmeasured": "yellow",
                 "ok": "green", "improved": "green", "regression": "bold red",
                 "changed": "bold red", "failed": "bold red", "no verdict": "yellow",
                 "not measured": "yellow"}


def _styled(verdict: str) -> str:
    style = VERDICT_STYLE.get(verdict, "")
    return f"[{style}]{verdict}[/]" if style else verdict


# ------------------------------------------------------------------------------------ check
def check_table(verdicts: list[Verdict]) -> Table:
    table = Table(title="meo-profile check", caption="FLOPs = 2 x MACs; ratios are numerator / "
                  "denominator at the same configuration; details with --json")
    table.add_column("claim", no_wrap=True)
    for col in ("verdict", "quantity", "expected", "measured"):  # the verdict beside its claim
        table.add_column(col, overflow="fold")
    for v in verdicts:
        table.add_row(v.name, _styled(v.verdict), escape(v.quantity), escape(v.expected),
                      escape(v.measured))
    return table


def check_lines(verdicts: list[Verdict]) -> list[str]:
    """One line per claim that did not pass: what failed, why it is pending, what is missing."""
    return [f"{v.verdict}: {v.name}: {v.detail} [{v.source}]"
            for v in verdicts if v.verdict not in ("pass", "unmeasured")] + \
        [f"unmeasured: {v.name}: {v.detail}" for v in verdicts if v.verdict == "unmeasured"]


def check_summary(run: CheckRun) -> str:
    """'4 pass, 2 unmeasured (...)': the verdicts counted, and what the exit code means."""
    counts = {k: run.count(k) for k in VERDICTS}
    text = ", ".join(f"{n} {k}" for k, n in counts.items() if n) or "no claims"
    if counts["unmeasured"]:
        text += (f" ({'failures: --require-all' if run.require_all else 'not failures'}; "
                 f"{UNMEASURED_HINT})")
    if not run.judged and not run.failed:
        text += "; no claim could be judged"
    return text + (f", {len(run.errors)} could not be judged" if run.errors else "")


def junit_xml(verdicts: list[Verdict], errors: list[str], suite: str = "meo-profile check",
              require_all: bool = False) -> str:
    """JUnit XML: one test case per claim; fail -> <failure>, pending and unmeasured ->
    <skipped> (unmeasured -> <failure> with `require_all`), a claim that is bad input ->
    <error>."""
    root = ET.Element("testsuites")
    failing = {"fail", "unmeasured"} if require_all else {"fail"}
    fails = sum(v.verdict in failing for v in verdicts)
    skipped = sum(v.verdict in ("pending", "unmeasured") and v.verdict not in failing
                  for v in verdicts)
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(verdicts) + len(errors)),
                       failures=str(fails), errors=str(len(errors)), skipped=str(skipped))
    for v in verdicts:
        case = ET.SubElement(ts, "testcase", classname="meo_profile.claims", name=v.name)
        text = (f"{v.quantity}: expected {v.expected}, measured {v.measured}\n"
                f"{v.detail}\nsource: {v.source}")
        if v.verdict in failing:
            kind = "ClaimFailed" if v.verdict == "fail" else "ClaimUnmeasured"
            ET.SubElement(case, "failure", message=v.detail[:500], type=kind).text = text
        elif v.verdict in ("pending", "unmeasured"):
            ET.SubElement(case, "skipped", message=v.detail[:500])
        else:
            ET.SubElement(case, "system-out").text = text
    for error in errors:
        name = error.split("'")[1] if error.count("'") >= 2 else "claims"
        case = ET.SubElement(ts, "testcase", classname="meo_profile.claims", name=name)
        ET.SubElement(case, "error", message=error[:500], type="BadClaim").text = error
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


# ---------------------------------------------------------------------------------- compare
def _shown(comparison: Comparison) -> tuple[list[Row], int]:
    """Rows worth a line: all but counts that did not move; and how many were left out."""
    shown = [r for r in comparison.rows if r.verdict != "ok" or r.unit in ("ms", "bytes")
             or r.change not in (None, 0)]
    return shown, len(comparison.rows) - len(shown)


def compare_summary(comparison: Comparison) -> str:
    n = len(comparison.regressions)
    limits = ", ".join(str(t) for t in comparison.thresholds.values())
    head = f"{n} regression{'s' if n != 1 else ''}" if n else "no regression"
    if comparison.missing:
        head += f", {len(comparison.missing)} configurations missing from current"
    return f"{head} in {len(comparison.rows)} comparisons (tolerances: {limits})"


def compare_table(comparison: Comparison) -> Table:
    rows, hidden = _shown(comparison)
    rows.sort(key=lambda r: not r.fails)
    missing = comparison.missing
    table = Table(title=f"meo-profile compare: {compare_summary(comparison)}",
                  caption=f"baseline {comparison.baseline_info}\ncurrent {comparison.current_info}"
                          + (f"\n{hidden} unchanged counts not shown" if hidden else "")
                          + (f"\nonly in baseline: {escape(', '.join(missing))}" if missing else ""))
    for col in ("configuration", "metric", "baseline", "current", "change", "verdict", "note"):
        table.add_column(col, justify="right" if col in ("baseline", "current", "change") else "left")
    for r in rows:
        table.add_row(escape(r.config), r.field, format_cell(r.baseline, r.unit),
                      format_cell(r.current, r.unit), format_change(r), _styled(r.verdict), escape(r.note))
    return table


def _md_rows(rows: list[Row]) -> list[str]:
    lines = ["| configuration | metric | baseline | current | change | verdict |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        verdict = f"**{r.verdict}**" if r.fails else r.verdict
        note = f" ({r.note})" if r.note else ""
        lines.append(f"| {r.config} | `{r.field}` | {format_cell(r.baseline, r.unit)} | "
                     f"{format_cell(r.current, r.unit)} | {format_change(r)} | {verdict}{note} |")
    return lines


def compare_markdown(comparison: Comparison) -> str:
    """A pull-request comment: the verdict, the regressions, everything else folded away."""
    mark = "FAIL" if comparison.regressions else "OK"
    lines = [f"### meo-profile compare: {mark}, {compare_summary(comparison)}", "",
             f"- baseline: {comparison.baseline_info}", f"- current: {comparison.current_info}"]
    lines += [f"- warning: {w}" for w in comparison.warnings]
    if comparison.missing:
        lines.append(f"- only in baseline: {', '.join(comparison.missing)}")
    if comparison.added:
        lines.append(f"- only in current: {', '.join(comparison.added)}")
    if comparison.regressions:
        lines += ["", *_md_rows(comparison.regressions)]
    shown, hidden = _shown(comparison)
    rest = [r for r in shown if not r.fails]
    if rest:
        lines += ["", f"<details><summary>{len(rest)} other comparisons"
                  f"{f' ({hidden} unchanged counts not listed)' if hidden else ''}</summary>", "",
                  *_md_rows(rest), "", "</details>"]
    return "\n".join(lines) + "\n"
