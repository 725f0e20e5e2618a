"""`meo-profile compare`: a baseline results set against a current one, configuration by
configuration, with tolerances.

- Records match when every spec field is equal, the implementation as asked (`auto` matches
  `auto` whichever implementation won; the rows then name both); of several records of one
  configuration on one device, the last one stored wins (a store only appends).
- Counts (`macs`, `params`) describe the code, not the machine: they must stay equal, in either
  direction, unless a tolerance is given, and compare across devices.
- Costs (`latency`, `memory`) compare as current / baseline, and only an increase beyond the
  tolerance is a regression. They depend on the machine, so they are judged only where the two
  records' `device_name` match; elsewhere: a warning and no verdict.

Thresholds are parsed from strings such as `latency=10%` (or `latency:10%`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meo_profile.core.errors import BadInput
from meo_profile.core.identity import MACHINE_FIELD, config_key, labeller
from meo_profile.core.units import fmt_sig, format_value, parse_fraction, percent
from meo_profile.results.store import load, results_path


class CompareError(BadInput):
    """Bad input: an unreadable results set, a malformed tolerance; one line."""


@dataclass(frozen=True)
class Rule:
    """How one compared metric is judged."""

    fields: tuple[str, ...]  # record fields it covers
    unit: str
    machine_bound: bool  # a cost measured on a machine: one-sided, same device only
    default_tolerance: float


RULES: dict[str, Rule] = {
    "macs": Rule(("macs",), "MACs", machine_bound=False, default_tolerance=0.0),
    "params": Rule(("params_total", "params_active"), "params", machine_bound=False,
                   default_tolerance=0.0),
    # 10%: the spread a CPU median shows between runs on a shared machine; GPU runs can go lower
    "latency": Rule(("latency_ms_median",), "ms", machine_bound=True, default_tolerance=0.10),
    "memory": Rule(("peak_mem_bytes",), "bytes", machine_bound=True, default_tolerance=0.05),
}
MACHINE_FIELDS = tuple(f for rule in RULES.values() if rule.machine_bound for f in rule.fields)
ALIASES = {"flops": "macs", "mem": "memory", "time": "latency"}  # flops = 2 x macs: same verdict


@dataclass(frozen=True)
class Threshold:
    """How far current may move from baseline for one metric, as a fraction."""

    metric: str
    fraction: float

    @classmethod
    def parse(cls, text: str) -> Threshold:
        """`latency=10%`, `latency:10%`, `macs=0`, `memory=0.05`."""
        sep = "=" if "=" in text else ":"
        name, _, value = text.partition(sep)
        name = ALIASES.get(name.strip(), name.strip())
        if name not in RULES or not value.strip():
            raise CompareError(f"--tolerance {text!r}: expected METRIC=X% with METRIC one of "
                               f"{', '.join(RULES)}")
        try:
            return cls(name, parse_fraction(value))
        except ValueError as e:
            raise CompareError(f"--tolerance {text!r}: {e}") from None

    def __str__(self) -> str:
        return f"{self.metric}={self.fraction * 100:.4g}%"


def thresholds(given: Iterable[str] = ()) -> dict[str, Threshold]:
    """The defaults, overridden by the parsed `--tolerance` strings."""
    out = {name: Threshold(name, rule.default_tolerance) for name, rule in RULES.items()}
    for text in given:
        t = Threshold.parse(text)
        out[t.metric] = t
    return out


# ------------------------------------------------------------------------------------ rows
FAILING = ("regression", "changed", "failed")


@dataclass
class Row:
    config: str
    field: str
    unit: str
    baseline: float | None
    current: float | None
    verdict: str  # ok, improved, regression, changed, failed, no verdict, not measured
    note: str = ""

    @property
    def change(self) -> float | None:
        if self.baseline in (None, 0) or self.current is None:
            return None
        return self.current / self.baseline - 1

    @property
    def fails(self) -> bool:
        return self.verdict in FAILING

    def to_dict(self) -> dict[str, Any]:
        return {"config": self.config, "field": self.field, "baseline": self.baseline,
                "current": self.current, "change": self.change, "verdict": self.verdict,
                "note": self.note}


@dataclass
class Comparison:
    rows: list[Row]
    thresholds: dict[str, Threshold]
    baseline_info: str
    current_info: str
    missing: list[str] = field(default_factory=list)  # configurations only in baseline
    added: list[str] = field(default_factory=list)  # configurations only in current
    warnings: list[str] = field(default_factory=list)
    allow_missing: bool = False  # a current run that lost configurations fails unless allowed

    @property
    def regressions(self) -> list[Row]:
        return [r for r in self.rows if r.fails]

    @property
    def ok(self) -> bool:
        return not self.regressions and (self.allow_missing or not self.missing)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "regressions": len(self.regressions),
                "thresholds": {k: t.fraction for k, t in self.thresholds.items()},
                "baseline": self.baseline_info, "current": self.current_info,
                "rows": [r.to_dict() for r in self.rows], "missing_in_current": self.missing,
                "new_in_current": self.added, "warnings": self.warnings}


# ---------------------------------------------------------------------------------- judging
def judge(rule: Rule, threshold: Threshold, base: float, cur: float) -> str:
    """The verdict for one metric of one configuration, both values present."""
    tol = threshold.fraction * (1 + 1e-12) + 1e-15  # round-off of a fraction like 0.1 is not a change
    change = cur / base - 1 if base else (0.0 if cur == base else float("inf"))
    if not rule.machine_bound:
        return "ok" if abs(change) <= tol else "changed"
    if change > tol:
        return "regression"
    return "improved" if change < -tol else "ok"


def _spread_note(base: dict, cur: dict) -> str:
    """Latency: say when the two runs' p20-p80 ranges overlap (the difference may be noise)."""
    b80, c20 = base.get("latency_ms_p80"), cur.get("latency_ms_p20")
    if b80 is not None and c20 is not None and c20 <= b80:
        return "p20-p80 ranges overlap: rerun to confirm"
    return ""


def compare_pair(config: str, base: dict, cur: dict, limits: dict[str, Threshold],
                 same_device: bool) -> list[Row]:
    """Rows for one configuration present on both sides."""
    if base.get("status") != "ok":
        return []  # nothing trustworthy to compare against
    if cur.get("status") != "ok":
        return [Row(config, "status", "", None, None, "failed",
                    f"{cur.get('status')}: {cur.get('error')}")]
    rows = []
    for name, rule in RULES.items():
        for f in rule.fields:
            b, c = base.get(f), cur.get(f)
            if b is None:
                continue
            if c is None:
                rows.append(Row(config, f, rule.unit, b, None, "not measured"))
            elif rule.machine_bound and not same_device:
                rows.append(Row(config, f, rule.unit, b, c, "no verdict", "different devices"))
            else:
                verdict = judge(rule, limits[name], float(b), float(c))
                note = _spread_note(base, cur) if verdict == "regression" and name == "latency" else ""
                rows.append(Row(config, f, rule.unit, b, c, verdict,
                                "; ".join(n for n in (note, _impl_note(base, cur)) if n)))
    return rows


def _impl_note(base: dict, cur: dict) -> str:
    """`--impl auto` may have picked another implementation on either side: say so."""
    if base.get("impl") == cur.get("impl"):
        return ""
    return f"impl {base.get('impl')} -> {cur.get('impl')}"


# --------------------------------------------------------------------------------- matching
def latest(records: Iterable[dict[str, Any]]) -> dict[tuple, dict[str, dict]]:
    """configuration -> device_name -> the last record stored for it."""
    out: dict[tuple, dict[str, dict]] = {}
    for r in records:
        out.setdefault(config_key(r), {})[r.get(MACHINE_FIELD) or "?"] = r
    return out


def compare_records(baseline: list[dict], current: list[dict],
                    limits: dict[str, Threshold], baseline_info: str = "baseline",
                    current_info: str = "current", allow_missing: bool = False) -> Comparison:
    base, cur = latest(baseline), latest(current)
    label = labeller(set(base) | set(cur))
    out = Comparison([], limits, baseline_info, current_info, allow_missing=allow_missing)
    out.missing = sorted(label(k) for k in base.keys() - cur.keys())
    out.added = sorted(label(k) for k in cur.keys() - base.keys())
    elsewhere: Counter = Counter()  # (baseline device, current device) -> configurations
    for key in sorted(base.keys() & cur.keys(), key=label):
        for device, record in cur[key].items():
            match = base[key].get(device)
            same_device = match is not None
            if not same_device:
                match = next(iter(base[key].values()))
                if any(match.get(f) is not None for f in MACHINE_FIELDS):
                    elsewhere[(match.get("device_name"), device)] += 1
            out.rows += compare_pair(label(key), match, record, limits, same_device)
    out.warnings += [f"baseline ran on {b!r}, current on {c!r}: latency and memory of {n} "
                     f"configuration(s) not judged" for (b, c), n in elsewhere.items()]
    return out


def describe(records: list[dict]) -> str:
    """Where a results set came from: its commits and devices."""
    commits = sorted({str(r.get("git_commit")) for r in records if r.get("git_commit")})
    devices = sorted({str(r.get("device_name")) for r in records if r.get("device_name")})
    return (f"{len(records)} records, commit {', '.join(commits) or '?'}, "
            f"{'; '.join(devices) or 'unknown device'}")


def compare_paths(baseline: str | Path, current: str | Path, given: Iterable[str] = (),
                  allow_missing: bool = False) -> Comparison:
    limits = thresholds(given)
    sides = []
    for name, path in (("BASELINE", baseline), ("CURRENT", current)):
        file = results_path(path)
        if not file.exists():
            raise CompareError(f"{name} {str(path)!r}: no results file there")
        loaded = load(path)
        if loaded.invalid:  # an impossible value is never judged, nor silently dropped
            raise CompareError(f"{name} {str(path)!r}: {loaded.invalid_line()}")
        if not loaded.records:
            raise CompareError(f"{name} {str(path)!r}: no readable record")
        sides.append(loaded)
    result = compare_records(sides[0].records, sides[1].records, limits,
                             f"{baseline}: {describe(sides[0].records)}",
                             f"{current}: {describe(sides[1].records)}", allow_missing)
    for name, loaded in zip(("baseline", "current"), sides):
        result.warnings += [f"{name}: skipped {line}" for line in loaded.skipped]
    if not result.rows and not (set(latest(sides[0].records)) & set(latest(sides[1].records))):
        raise CompareError("nothing to compare: no configuration is in both results sets")
    return result


COUNT_UNITS = ("MACs", "params")


def format_cell(value: float | None, unit: str) -> str:
    """Counts in full (a change of one multiply-add must show), costs scaled."""
    if value is None or not unit:
        return "-"
    return f"{int(value):,}" if unit in COUNT_UNITS else format_value(value, unit)


def format_change(row: Row) -> str:
    if row.change is None:
        return "-"
    if row.unit in COUNT_UNITS:
        return f"{int(row.current) - int(row.baseline):+,} ({percent(row.change)})"
    return fmt_sig(100 * row.change, 1, 1, sign=True) + "%"  # +20.0%, and +0.04%, not +0.0%
