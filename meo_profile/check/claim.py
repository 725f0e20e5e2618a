"""Efficiency claims as data, judged against result records: pass, fail or pending.

A claim names where it comes from (`source`), which records it is about (`select`: spec fields,
a list meaning "each of these"), the quantity (`metric`, optionally restricted to some parts of
the MACs breakdown; see quantities.py), and what that quantity must be (`expect`; see
expectations.py). With `ratio`, the quantity is the metric of a numerator selection over the
same metric of a denominator selection at the same configuration. `requires` lists what the
current code must be able to do before the claim can be measured at all; while it cannot, the
claim is `pending`, never `pass`. A claim whose records are absent from the results judged is
`unmeasured` (the results were made without those configurations); it neither passes nor fails.

With `region` (region.py), the cases are every point the records hold inside the region (and
within `select`, a list there meaning "any of these"), not the combinations `select` lists:
each point passes, fails, or is unmeasured (one side of a ratio without the other), and the
claim passes when every measured point does; with no point measured it is `unmeasured`.

Judging never measures: it reads records (check/run.py measures what claims need).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from meo_profile.check.expectations import Approx, Limit
from meo_profile.check.quantities import Quantity
from meo_profile.check.region import Region
from meo_profile.core.errors import BadInput
from meo_profile.core.identity import config_fields, config_key, symbol
from meo_profile.core.units import format_value
from meo_profile.models.spec import Spec, SpecError
from meo_profile.models.variants import VARIANTS


class ClaimError(BadInput):
    """A malformed claim, or a selection that is no valid configuration; one line naming the
    claim."""


class Unmeasured(LookupError):
    """A case with no record to judge it by; `str()` says which selection found none."""


def _fields(selection: dict[str, Any]) -> str:
    """'host=bert-base variant=moe top_k=4': a selection as one short line."""
    return " ".join(f"{k}={v}" for k, v in selection.items())


# Spec fields that differ between variants by construction (resolved per variant, or stored as
# None for the others): never part of "the same configuration" across a ratio's two sides.
VARIANT_FIELDS = ("variant", "impl", "merge_reuse", *(k for v in VARIANTS.values() for k in v.knobs))


@dataclass
class Outcome:
    """One configuration's judgement within a claim."""

    label: str  # the selection values that vary within the claim, e.g. "top_k=4"
    ok: bool
    measured: float | None = None
    expected: float | None = None
    deviation: str = ""
    error: str | None = None  # the measurement failed
    margin: float = math.inf  # see Judgement
    missing: str | None = None  # no record to judge: which selection found none

    def text(self, unit: str, versus: bool = True) -> str:
        if self.missing:
            return f"not measured ({self.missing})"
        if self.error:
            return f"measurement failed: {self.error}"
        dev = f" ({self.deviation})" if self.deviation else ""
        expected = f" vs {format_value(self.expected, unit)}" if versus else ""
        return f"{format_value(self.measured, unit)}{expected}{dev}"

    def line(self, unit: str, versus: bool = True) -> str:
        text = self.text(unit, versus)
        return f"{self.label}: {text}" if self.label else text


VERDICTS = ("pass", "fail", "unmeasured", "pending")
UNMEASURED_HINT = ("the `default` preset, or `meo-profile check` without RESULTS, measures "
                   "what the built-in claims read")


@dataclass
class Verdict:
    name: str
    verdict: str  # one of VERDICTS
    quantity: str  # what was measured, e.g. "flops without router, meo / moe"
    expected: str
    measured: str
    detail: str
    source: str
    outcomes: list[Outcome] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "verdict": self.verdict, "quantity": self.quantity,
                "expected": self.expected, "measured": self.measured, "detail": self.detail,
                "source": self.source,
                "cases": [{"config": o.label, "ok": o.ok, "measured": o.measured,
                           "expected": o.expected, "error": o.error, "missing": o.missing}
                          for o in self.outcomes]}


@dataclass(frozen=True)
class Claim:
    name: str
    source: str
    select: dict[str, Any]  # spec field -> value, or a list of values (each is a case)
    quantity: Quantity
    expect: Approx | Limit
    ratio: tuple[dict[str, Any], dict[str, Any]] | None = None  # (numerator, denominator) fields
    requires: dict[str, str] = field(default_factory=dict)  # probe -> variant (probes.PROBES)
    note: str = ""
    region: Region | None = None  # every measured point inside it is a case (see the module doc)

    @property
    def unit(self) -> str:
        return "ratio" if self.ratio else self.quantity.spec.unit

    def quantity_text(self) -> str:
        where = f", where {self.region.describe()}" if self.region is not None else ""
        if self.ratio is None:
            return self.quantity.describe() + where
        num, den = (" ".join(str(v) if k == "variant" else f"{symbol(k)}={v}"
                             for k, v in side.items()) for side in self.ratio)
        return f"{self.quantity.describe()}, {num} / {den}{where}"

    # ------------------------------------------------------------------------ configurations
    def cases(self) -> list[dict[str, Any]]:
        """The selection expanded: one dict of spec fields per combination of listed values."""
        names = list(self.select)
        values = [v if isinstance(v, list) else [v] for v in self.select.values()]
        return [dict(zip(names, combo)) for combo in itertools.product(*values)]

    def sides(self, case: dict[str, Any]) -> list[dict[str, Any]]:
        """The selections one case reads: itself, or its numerator and denominator."""
        return [case] if self.ratio is None else [{**case, **side} for side in self.ratio]

    def specs(self) -> list[Spec]:
        """Every configuration the claim needs measured, validated (errors name the claim);
        with a region, the listed combinations inside it."""
        out = []
        for case in self.cases():
            for side in self.sides(case):
                try:
                    spec = Spec(**side)
                except (SpecError, TypeError) as e:
                    raise ClaimError(f"claim {self.name!r}: selection {side}: {e}") from None
                if self.region is None or self.region.contains(spec.to_dict()):
                    out.append(spec)
        return out

    def _label(self, case: dict[str, Any]) -> str:
        varying = [k for k, v in self.select.items() if isinstance(v, list) and len(v) > 1]
        return " ".join(f"{k}={case[k]}" for k in varying)

    # ------------------------------------------------------------------------------ judging
    def pending(self, reason: str) -> Verdict:
        return Verdict(self.name, "pending", self.quantity_text(), self.expect.describe(self.unit),
                       "-", reason, self.source)

    def judge(self, records: list[dict[str, Any]]) -> Verdict:
        """Judge every case against `records`: all must hold (`pass`); one that does not is a
        `fail`; without a failure, a case with no record makes the claim `unmeasured`."""
        if self.region is not None:
            return self._judge_region(records)
        outcomes = []
        for case in self.cases():
            outcomes += self._judge_case(case, records)
        missing = [o for o in outcomes if o.missing]
        if missing and all(o.ok for o in outcomes if not o.missing):
            return self._unmeasured(outcomes, missing)
        failed = [o for o in outcomes if not o.ok and not o.missing]
        shown = failed or outcomes
        worst = max(shown, key=lambda o: o.margin)
        measured = worst.text(self.unit, versus=False) if len(outcomes) == 1 else (
            f"{len(outcomes) - len(failed)}/{len(outcomes)} hold; "
            f"{'failing' if failed else 'closest'}: {worst.line(self.unit, versus=False)}")
        detail = "; ".join(o.line(self.unit) for o in (failed or outcomes))
        return Verdict(self.name, "fail" if failed else "pass", self.quantity_text(),
                       self.expect.describe(self.unit), measured, detail, self.source, outcomes)

    # ------------------------------------------------------------------------ regions
    def _judge_region(self, records: list[dict[str, Any]]) -> Verdict:
        """Every point inside the region judged (see the module doc)."""
        inside = [r for r in records if self._selected(r) and self.region.contains(r)]
        sides = [self.select] if self.ratio is None else [{**self.select, **s} for s in self.ratio]
        groups = [self._latest_per_point([r for r in inside if self._selected(r, side)])
                  for side in sides]
        labels = _point_labels([r for group in groups for r in group.values()])
        outcomes = [self._region_outcome(labels, *pair) for pair in _aligned(groups)]
        failed = [o for o in outcomes if not o.ok and not o.missing]
        judged = [o for o in outcomes if not o.missing]
        verdict = "fail" if failed else "pass" if judged else "unmeasured"
        shown = failed or judged
        measured = (f"{len(judged) - len(failed)}/{len(judged)} measured points hold"
                    + (f" ({len(outcomes) - len(judged)} unmeasured)" if len(judged) < len(outcomes) else "")
                    + (f"; {'failing' if failed else 'closest'}: "
                       f"{max(shown, key=lambda o: o.margin).line(self.unit, versus=False)}"
                       if shown else ""))
        detail = "; ".join(o.line(self.unit) for o in outcomes) or \
            f"no record inside {self.region.describe()}"
        return Verdict(self.name, verdict, self.quantity_text(), self.expect.describe(self.unit),
                       measured, detail, self.source, outcomes)

    def _selected(self, record: dict[str, Any], selection: dict[str, Any] | None = None) -> bool:
        """The record matches `selection` (default `select`): a list means any of its values."""
        return all(any(_same(k, record.get(k), v) for v in (want if isinstance(want, list) else [want]))
                   for k, want in (selection or self.select).items())

    def _latest_per_point(self, records: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
        """One record per point (the configuration, without the variant's own fields; on one
        machine for a timed quantity): the newest with the quantity measured, else the newest."""
        out: dict[tuple, dict[str, Any]] = {}
        ignore = VARIANT_FIELDS + tuple(f for side in self.ratio or () for f in side)
        for r in sorted(records, key=lambda r: r.get("created_utc") or ""):
            key = config_key(r, machine=self.quantity.spec.timed, ignore=ignore)
            if key not in out or self._measured(r) or not self._measured(out[key]):
                out[key] = r
        return out

    def _measured(self, record: dict[str, Any]) -> bool:
        return record.get("status") == "ok" and self.quantity.of(record) is not None

    def _region_outcome(self, labels: dict[int, str], num: dict | None, den: dict | None) -> Outcome:
        present = num if num is not None else den
        label = labels[id(present)]
        if num is None or den is None:
            side = "numerator" if num is None else "denominator"
            return Outcome(label, False, missing=f"no {side} record at this point")
        for r in (num, den):
            if not self._measured(r):
                return Outcome(label, False, error=f"status {r.get('status')}: {r.get('error')}")
        if self.ratio is None:
            return self._outcome(label, self.quantity.of(num), num)
        return self._ratio_outcome(label, num, den, {})

    def _unmeasured(self, outcomes: list[Outcome], missing: list[Outcome]) -> Verdict:
        judged = len(outcomes) - len(missing)
        measured = f"{judged}/{len(outcomes)} cases measured" if len(outcomes) > 1 else "-"
        detail = f"no record for {missing[0].missing}" + (
            f" and {len(missing) - 1} more case(s)" if len(missing) > 1 else "")
        return Verdict(self.name, "unmeasured", self.quantity_text(),
                       self.expect.describe(self.unit), measured, detail, self.source, outcomes)

    def _judge_case(self, case: dict[str, Any], records: list[dict[str, Any]]) -> list[Outcome]:
        label = self._label(case)
        try:
            return self._outcomes(case, label, records)
        except Unmeasured as why:
            return [Outcome(label, False, missing=str(why))]

    def _outcomes(self, case: dict[str, Any], label: str, records: list[dict]) -> list[Outcome]:
        if self.ratio is None:
            rows, error = self._usable(case, records)
            if error:
                return [Outcome(label, False, error=error)]
            return [self._outcome(label, self.quantity.of(r), case) for r in rows]
        (num, num_err), (den, den_err) = (self._usable(s, records) for s in self.sides(case))
        if num_err or den_err:
            return [Outcome(label, False, error=num_err or den_err)]
        pairs = self._pairs(num, den)
        if not pairs:
            raise Unmeasured(f"{_fields(self.sides(case)[0])} at the configuration of a record "
                             f"of {_fields(self.sides(case)[1])}")
        return [self._ratio_outcome(label, n, d, case) for n, d in pairs]

    def _usable(self, selection: dict[str, Any], records) -> tuple[list[dict], str | None]:
        """Records matching `selection` with the metric measured; or why none is usable."""
        matched = [r for r in records if all(_same(k, r.get(k), v) for k, v in selection.items())]
        if not matched:
            raise Unmeasured(_fields(selection))
        ok = [r for r in matched if r.get("status") == "ok" and self.quantity.of(r) is not None]
        if ok:
            return ok, None
        failed = next((r for r in matched if r.get("status") != "ok"), None)
        if failed is not None:
            return [], f"status {failed.get('status')}: {failed.get('error')}"
        raise Unmeasured(f"{_fields(selection)} with {self.quantity.spec.needs} measured")

    def _pairs(self, num: list[dict], den: list[dict]) -> list[tuple[dict, dict]]:
        overridden = set(self.ratio[0]) | set(self.ratio[1])

        def key(r: dict) -> tuple:  # times from two machines make no ratio
            return config_key(r, machine=self.quantity.spec.timed,
                              ignore=VARIANT_FIELDS + tuple(overridden))

        by_key: dict[tuple, list[dict]] = {}
        for d in den:
            by_key.setdefault(key(d), []).append(d)
        return [(n, d) for n in num for d in by_key.get(key(n), [])]

    def _outcome(self, label: str, measured: float, config: dict[str, Any]) -> Outcome:
        j = self.expect.judge(measured, config)
        return Outcome(label, j.ok, measured, j.expected, j.deviation, margin=j.margin)

    def _ratio_outcome(self, label: str, num: dict, den: dict, case: dict) -> Outcome:
        bottom = self.quantity.of(den)
        if not bottom:
            return Outcome(label, False, error=f"denominator {self.quantity.describe()} is 0")
        return self._outcome(label, self.quantity.of(num) / bottom, _configuration(num, den, case))


def _configuration(num: dict, den: dict, case: dict[str, Any]) -> dict[str, Any]:
    """What a closed form reads of a ratio's configuration: the denominator's fields, the
    numerator's own set over them (its knobs: Lory's segment length), then the selection."""
    return {**den, **{k: v for k, v in num.items() if v is not None}, **case}


# Fields whose selected value "auto" stands for what the spec resolves it to (records store the
# resolved value): any stored value matches.
RESOLVED = {"impl": "auto", "device": "auto"}


def _same(name: str, stored: Any, wanted: Any) -> bool:
    if RESOLVED.get(name) == wanted:
        return True
    if isinstance(wanted, (int, float)) and isinstance(stored, (int, float)):
        return math.isclose(stored, wanted, rel_tol=1e-12)
    return stored == wanted


def _aligned(groups: list[dict[tuple, dict]]) -> list[tuple[dict | None, dict | None]]:
    """(numerator, denominator) per point, either None where that side was not measured; a
    claim without a ratio judges each record alone (as its own numerator and denominator)."""
    if len(groups) == 1:
        return [(r, r) for r in groups[0].values()]
    num, den = groups
    return [(num.get(key), den.get(key)) for key in dict.fromkeys([*num, *den])]


def _point_labels(records: list[dict[str, Any]]) -> dict[int, str]:
    """Each record's label: the spec fields that vary among the points, by symbol."""
    fields = [f for f in config_fields(ignore=VARIANT_FIELDS)
              if len({repr(r.get(f)) for r in records}) > 1]
    return {id(r): " ".join(f"{symbol(f)}={r.get(f)}" for f in fields) for r in records}


def judge_all(claims: Iterable[Claim], records: list[dict[str, Any]],
              pending: dict[str, str]) -> tuple[list[Verdict], list[str]]:
    """Verdicts for every claim (pending ones untouched), and the claims that could not be
    judged for a reason other than absent records (bad input)."""
    verdicts, errors = [], []
    for claim in claims:
        if claim.name in pending:
            verdicts.append(claim.pending(pending[claim.name]))
            continue
        try:
            verdicts.append(claim.judge(records))
        except ClaimError as e:
            errors.append(str(e))
    return verdicts, errors
