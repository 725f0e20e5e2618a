"""Efficiency claims as data, judged against result records: pass, fail or pending.

A claim names where it comes from (`source`), which records it is about (`select`: spec fields,
a list meaning "each of these"), the quantity (`metric`, optionally restricted to some parts of
the MACs breakdown), and what that quantity must be (`expect`): a value with a relative
tolerance, a closed form with a tolerance, or a bound. With `ratio`, the quantity is the metric
of a numerator selection over the same metric of a denominator selection at the same
configuration. `requires` lists what the current code must be able to do before the claim can be
measured at all; while it cannot, the claim is `pending`, never `pass`.

Units follow the records: `macs` multiply-adds, `flops` = 2 x macs, `*_ms` milliseconds,
`*_bytes` bytes. Judging never measures: it reads records (see checking.py for measuring).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from meo_profile.check.probes import PROBES
from meo_profile.core.units import format_value, parse_fraction, parse_number, percent
from models.spec import SPEC_FIELDS, Spec, SpecError

BUILTIN = "claims_builtin.yaml"  # shipped beside this module (package data)


class ClaimError(ValueError):
    """A malformed claim, or a selection that matches no record; one line naming the claim."""


# --------------------------------------------------------------------------------- metrics
@dataclass(frozen=True)
class Metric:
    """A record field a claim can be about, the measurement that produces it, and its unit."""

    needs: str  # the `measure` metric that fills the field: flops, latency or memory
    unit: str
    timed: bool = False  # depends on the machine: compare only records from the same device


METRICS: dict[str, Metric] = {
    "macs": Metric("flops", "MACs"),
    "flops": Metric("flops", "FLOPs"),
    "params_total": Metric("flops", "params"),
    "params_active": Metric("flops", "params"),
    "latency_ms_median": Metric("latency", "ms", timed=True),
    "latency_ms_p20": Metric("latency", "ms", timed=True),
    "latency_ms_p80": Metric("latency", "ms", timed=True),
    "tokens_per_s": Metric("latency", "tokens/s", timed=True),
    "peak_mem_bytes": Metric("memory", "bytes", timed=True),
    "peak_mem_above_weights_bytes": Metric("memory", "bytes", timed=True),
}
# The parts of `macs_by_part` (see flops.parts_from_modules), checked when a claim is read
# because a misspelt part would silently count as 0.
PARTS = ("attention", "compress", "experts", "ffn", "head", "merge", "norm", "other", "router",
         "token_block")
MACS_PER = {"macs": 1, "flops": 2}  # metrics that parts can restrict, and their MACs multiple


@dataclass(frozen=True)
class Quantity:
    """A metric, optionally only some parts of the MACs breakdown, or all but some."""

    metric: str
    parts: tuple[str, ...] = ()
    exclude_parts: tuple[str, ...] = ()

    @property
    def spec(self) -> Metric:
        return METRICS[self.metric]

    def of(self, record: dict[str, Any]) -> float | None:
        if not (self.parts or self.exclude_parts):
            value = record.get(self.metric)
            return None if value is None else float(value)
        by_part, macs = record.get("macs_by_part"), record.get("macs")
        if not by_part or macs is None:
            return None
        if self.parts:
            macs = sum(by_part.get(p, 0) for p in self.parts)
        macs -= sum(by_part.get(p, 0) for p in self.exclude_parts)
        return float(MACS_PER[self.metric] * macs)

    def describe(self) -> str:
        if self.parts:
            return f"{self.metric} of {'+'.join(self.parts)}"
        if self.exclude_parts:
            return f"{self.metric} without {'+'.join(self.exclude_parts)}"
        return self.metric


# ---------------------------------------------------------------------------- expectations
@dataclass(frozen=True)
class ClosedForm:
    label: str
    fn: Callable[[dict[str, Any]], float]  # the configuration's spec fields -> expected value


def meo_merge_ratio(config: dict[str, Any]) -> float:
    """MEO / vanilla MACs of one MoE linear: (B*L*P + B*k*P) / (B*L*k*P) = 1/k + 1/L.
    (MEO paper, Sec. 3; the merge folds the k selected weight matrices once per sequence.)"""
    return 1.0 / config["top_k"] + 1.0 / config["seq_len"]


CLOSED_FORMS: dict[str, ClosedForm] = {
    "meo_merge_ratio": ClosedForm("1/k + 1/L", meo_merge_ratio),
}


@dataclass(frozen=True)
class Target:
    """The expected number: a constant, or a closed form of the configuration."""

    value: float | None = None
    closed_form: str | None = None

    def at(self, config: dict[str, Any]) -> float:
        return CLOSED_FORMS[self.closed_form].fn(config) if self.closed_form else self.value

    def describe(self, unit: str) -> str:
        return CLOSED_FORMS[self.closed_form].label if self.closed_form else format_value(self.value, unit)


class Judgement(NamedTuple):
    ok: bool
    expected: float
    deviation: str  # how far from the expected value, for people
    margin: float  # how far along the way to failing: <= 1 holds, > 1 fails (picks the worst case)


def _ratio_or(a: float, b: float, ok: bool) -> float:
    return a / b if b > 0 and a >= 0 else (0.0 if ok else math.inf)


@dataclass(frozen=True)
class Approx:
    """|measured / expected - 1| <= tolerance."""

    target: Target
    tolerance: float

    def judge(self, measured: float, config: dict[str, Any]) -> Judgement:
        expected = self.target.at(config)
        if expected == 0:
            return Judgement(measured == 0, expected, "", 0.0 if measured == 0 else math.inf)
        off = abs(measured / expected - 1)
        ok = off <= self.tolerance * (1 + 1e-12)  # a tolerance like 0.1 is not exact in binary
        return Judgement(ok, expected, percent(measured / expected - 1),
                         _ratio_or(off, self.tolerance, ok))

    def describe(self, unit: str) -> str:
        return f"{self.target.describe(unit)} +/- {self.tolerance:.2%}"


@dataclass(frozen=True)
class Bound:
    """measured <= bound (`at_most`) or measured >= bound (`at_least`)."""

    target: Target
    upper: bool

    def judge(self, measured: float, config: dict[str, Any]) -> Judgement:
        bound = self.target.at(config)
        ok = measured <= bound if self.upper else measured >= bound
        margin = _ratio_or(measured, bound, ok) if self.upper else _ratio_or(bound, measured, ok)
        deviation = f"{percent(measured / bound - 1)} from the bound" if bound else ""
        return Judgement(ok, bound, deviation, margin)

    def describe(self, unit: str) -> str:
        return f"{'<=' if self.upper else '>='} {self.target.describe(unit)}"


def _target(spec: dict[str, Any], key: str) -> Target:
    if key == "closed_form":
        name = spec["closed_form"]
        if name not in CLOSED_FORMS:
            raise ValueError(f"unknown closed_form {name!r}; choose from {', '.join(CLOSED_FORMS)}")
        return Target(closed_form=name)
    return Target(value=parse_number(spec[key]))


# expect key -> how to build the expectation from the `expect` mapping
EXPECTATIONS: dict[str, Callable[[dict[str, Any]], Approx | Bound]] = {
    "value": lambda e: Approx(_target(e, "value"), parse_fraction(e.get("tolerance", 0))),
    "closed_form": lambda e: Approx(_target(e, "closed_form"), parse_fraction(e.get("tolerance", 0))),
    "at_most": lambda e: Bound(_target(e, "at_most"), upper=True),
    "at_least": lambda e: Bound(_target(e, "at_least"), upper=False),
}
_EXPECT_KEYS = set(EXPECTATIONS) | {"tolerance"}


# ----------------------------------------------------------------------------------- claims
SHORT = {"num_experts": "E", "top_k": "k", "batch_size": "B", "seq_len": "L", "granularity": "g",
         "threshold": "t", "expert_unit": "unit"}  # the papers' symbols, for table cells

# Spec fields that differ between variants by construction (resolved per variant, or stored as
# None for the others): never part of "the same configuration" across a ratio's two sides.
VARIANT_FIELDS = ("variant", "impl", "n_ce", "ce_init", "threshold", "granularity", "max_k",
                  "capacity_factor")


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

    def text(self, unit: str, versus: bool = True) -> str:
        if self.error:
            return f"measurement failed: {self.error}"
        dev = f" ({self.deviation})" if self.deviation else ""
        expected = f" vs {format_value(self.expected, unit)}" if versus else ""
        return f"{format_value(self.measured, unit)}{expected}{dev}"

    def line(self, unit: str, versus: bool = True) -> str:
        text = self.text(unit, versus)
        return f"{self.label}: {text}" if self.label else text


@dataclass
class Verdict:
    name: str
    verdict: str  # pass, fail, pending
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
                           "expected": o.expected, "error": o.error} for o in self.outcomes]}


@dataclass(frozen=True)
class Claim:
    name: str
    source: str
    select: dict[str, Any]  # spec field -> value, or a list of values (each is a case)
    quantity: Quantity
    expect: Approx | Bound
    ratio: tuple[dict[str, Any], dict[str, Any]] | None = None  # (numerator, denominator) fields
    requires: dict[str, str] = field(default_factory=dict)  # probe -> variant (probes.PROBES)
    note: str = ""

    @property
    def unit(self) -> str:
        return "ratio" if self.ratio else self.quantity.spec.unit

    def quantity_text(self) -> str:
        if self.ratio is None:
            return self.quantity.describe()
        num, den = (" ".join(str(v) if k == "variant" else f"{SHORT.get(k, k)}={v}"
                             for k, v in side.items()) for side in self.ratio)
        return f"{self.quantity.describe()}, {num} / {den}"

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
        """Every configuration the claim needs measured, validated (errors name the claim)."""
        out = []
        for case in self.cases():
            for side in self.sides(case):
                try:
                    out.append(Spec(**side))
                except (SpecError, TypeError) as e:
                    raise ClaimError(f"claim {self.name!r}: selection {side}: {e}") from None
        return out

    def _label(self, case: dict[str, Any]) -> str:
        varying = [k for k, v in self.select.items() if isinstance(v, list) and len(v) > 1]
        return " ".join(f"{k}={case[k]}" for k in varying)

    # ------------------------------------------------------------------------------ judging
    def pending(self, reason: str) -> Verdict:
        return Verdict(self.name, "pending", self.quantity_text(), self.expect.describe(self.unit),
                       "-", reason, self.source)

    def judge(self, records: list[dict[str, Any]]) -> Verdict:
        """Judge every case against `records`; all must hold. ClaimError if a case has none."""
        outcomes = []
        for case in self.cases():
            outcomes += self._judge_case(case, records)
        failed = [o for o in outcomes if not o.ok]
        shown = failed or outcomes
        worst = max(shown, key=lambda o: o.margin)
        measured = worst.text(self.unit, versus=False) if len(outcomes) == 1 else (
            f"{len(outcomes) - len(failed)}/{len(outcomes)} hold; "
            f"{'failing' if failed else 'closest'}: {worst.line(self.unit, versus=False)}")
        detail = "; ".join(o.line(self.unit) for o in (failed or outcomes))
        return Verdict(self.name, "fail" if failed else "pass", self.quantity_text(),
                       self.expect.describe(self.unit), measured, detail, self.source, outcomes)

    def _judge_case(self, case: dict[str, Any], records: list[dict[str, Any]]) -> list[Outcome]:
        label = self._label(case)
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
            raise ClaimError(f"claim {self.name!r}: no numerator record {self.sides(case)[0]} "
                             f"shares a configuration with a denominator record {self.sides(case)[1]}")
        return [self._ratio_outcome(label, n, d, case) for n, d in pairs]

    def _usable(self, selection: dict[str, Any], records) -> tuple[list[dict], str | None]:
        """Records matching `selection` with the metric measured; or why none is usable."""
        matched = [r for r in records if all(_same(k, r.get(k), v) for k, v in selection.items())]
        if not matched:
            raise ClaimError(f"claim {self.name!r}: selection {selection} matches no record")
        ok = [r for r in matched if r.get("status") == "ok" and self.quantity.of(r) is not None]
        if ok:
            return ok, None
        failed = next((r for r in matched if r.get("status") != "ok"), None)
        if failed is not None:
            return [], f"status {failed.get('status')}: {failed.get('error')}"
        raise ClaimError(f"claim {self.name!r}: the records matching {selection} have no "
                         f"{self.quantity.describe()} (measured without {self.quantity.spec.needs}?)")

    def _pairs(self, num: list[dict], den: list[dict]) -> list[tuple[dict, dict]]:
        overridden = set(self.ratio[0]) | set(self.ratio[1])
        keys = [f for f in SPEC_FIELDS if f not in VARIANT_FIELDS and f not in overridden]
        if self.quantity.spec.timed:
            keys.append("device_name")  # times from two machines make no ratio

        def key(r: dict) -> tuple:
            return tuple(r.get(k) for k in keys)

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
        return self._outcome(label, self.quantity.of(num) / bottom, {**den, **case})


# Fields whose selected value "auto" stands for what the spec resolves it to (records store the
# resolved value): any stored value matches.
RESOLVED = {"impl": "auto", "device": "auto"}


def _same(name: str, stored: Any, wanted: Any) -> bool:
    if RESOLVED.get(name) == wanted:
        return True
    if isinstance(wanted, (int, float)) and isinstance(stored, (int, float)):
        return math.isclose(stored, wanted, rel_tol=1e-12)
    return stored == wanted


# ---------------------------------------------------------------------------------- parsing
_CLAIM_KEYS = {"name", "source", "note", "select", "metric", "parts", "exclude_parts", "ratio",
               "expect", "requires"}


def parse_claims(data: Any, origin: str = "claims") -> list[Claim]:
    """Claims from the parsed YAML (a mapping with `claims:`, or a list); one-line errors."""
    items = data.get("claims") if isinstance(data, dict) else data
    if not isinstance(items, list) or not items:
        raise ClaimError(f"{origin}: expected a list of claims under 'claims:'")
    claims, names = [], set()
    for i, item in enumerate(items, 1):
        label = item.get("name") if isinstance(item, dict) and item.get("name") else f"#{i}"
        try:
            claim = _parse_claim(item)
        except (ValueError, TypeError, KeyError) as e:
            message = str(e).strip("'\"") if isinstance(e, KeyError) else str(e)
            raise ClaimError(f"{origin}: claim {label!r}: {message}") from None
        if claim.name in names:
            raise ClaimError(f"{origin}: claim {claim.name!r}: the name is used twice")
        names.add(claim.name)
        claims.append(claim)
    return claims


def _parse_claim(item: Any) -> Claim:
    if not isinstance(item, dict):
        raise ValueError("a claim is a mapping of name, source, select, metric, expect")
    unknown = set(item) - _CLAIM_KEYS
    if unknown:
        raise ValueError(f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_CLAIM_KEYS)}")
    for key in ("name", "source", "select", "metric", "expect"):
        if key not in item:
            raise ValueError(f"missing {key!r}")
    return Claim(name=str(item["name"]), source=str(item["source"]),
                 select=_selection(item["select"], "select", lists=True),
                 quantity=_quantity(item), expect=_expectation(item["expect"]),
                 ratio=_ratio(item.get("ratio")), requires=_requires(item.get("requires")),
                 note=str(item.get("note", "")).strip())


def _selection(select: Any, where: str, lists: bool) -> dict[str, Any]:
    if not isinstance(select, dict):
        raise ValueError(f"{where} must be a mapping of spec fields")
    unknown = [k for k in select if k not in SPEC_FIELDS]
    if unknown:
        raise ValueError(f"{where}: unknown spec field(s) {unknown}; see `meo-profile flops --help`")
    for k, v in select.items():
        if isinstance(v, list) and (not lists or not v):
            raise ValueError(f"{where}.{k}: {'an empty list' if v == [] else 'lists are allowed only in select'}")
    return dict(select)


def _quantity(item: dict[str, Any]) -> Quantity:
    metric = item["metric"]
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    parts, exclude = tuple(item.get("parts") or ()), tuple(item.get("exclude_parts") or ())
    if (parts or exclude) and metric not in MACS_PER:
        raise ValueError(f"parts apply to {' and '.join(MACS_PER)} only, not {metric!r}")
    bad = [p for p in parts + exclude if p not in PARTS]
    if bad:
        raise ValueError(f"unknown part(s) {bad}; choose from {', '.join(PARTS)}")
    return Quantity(metric, parts, exclude)


def _expectation(expect: Any) -> Approx | Bound:
    if not isinstance(expect, dict):
        raise ValueError("expect must be a mapping: value + tolerance, closed_form + tolerance, at_most or at_least")
    kinds = [k for k in expect if k in EXPECTATIONS]
    unknown = set(expect) - _EXPECT_KEYS
    if unknown or len(kinds) != 1:
        raise ValueError(f"expect needs exactly one of {', '.join(EXPECTATIONS)} (got {sorted(expect)})")
    if "tolerance" in expect and kinds[0] not in ("value", "closed_form"):
        raise ValueError(f"expect: a tolerance goes with value or closed_form, not {kinds[0]}")
    try:
        return EXPECTATIONS[kinds[0]](expect)
    except ValueError as e:
        raise ValueError(f"expect: {e}") from None


def _ratio(ratio: Any) -> tuple[dict, dict] | None:
    if ratio is None:
        return None
    if not isinstance(ratio, dict) or set(ratio) != {"numerator", "denominator"}:
        raise ValueError("ratio must be a mapping with numerator and denominator selections")
    return (_selection(ratio["numerator"], "ratio.numerator", lists=False),
            _selection(ratio["denominator"], "ratio.denominator", lists=False))


def _requires(requires: Any) -> dict[str, str]:
    if requires is None:
        return {}
    if not isinstance(requires, dict):
        raise ValueError("requires must be a mapping of probe: variant")
    unknown = [p for p in requires if p not in PROBES]
    if unknown:
        raise ValueError(f"requires: unknown probe(s) {unknown}; choose from {', '.join(PROBES)}")
    return {str(k): str(v) for k, v in requires.items()}


def load_claims(path: str | Path | None = None) -> list[Claim]:
    """Claims from a YAML file, or the built-in ones shipped with the package."""
    if path is None:
        text, origin = resources.files("meo_profile.check").joinpath(BUILTIN).read_text(), BUILTIN
    else:
        try:
            text, origin = Path(path).read_text(encoding="utf-8"), str(path)
        except OSError as e:
            raise ClaimError(f"--claims {str(path)!r}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ClaimError(f"{origin}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    return parse_claims(data, origin)


def judge_all(claims: Iterable[Claim], records: list[dict[str, Any]],
              pending: dict[str, str]) -> tuple[list[Verdict], list[str]]:
    """Verdicts for every claim (pending ones untouched), and the claims that matched nothing."""
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
