"""What a claim's quantity must be: a value within a tolerance, a closed form of the
configuration within a tolerance, or a limit it must not cross; and how far a measurement is
from failing (so the worst case of a claim can be shown)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from meo_profile.core.paper import meo_flops_ratio_closed_form
from meo_profile.core.units import format_value, parse_fraction, parse_number, percent


@dataclass(frozen=True)
class ClosedForm:
    label: str
    fn: Callable[[dict[str, Any]], float]  # the configuration's spec fields -> expected value


CLOSED_FORMS: dict[str, ClosedForm] = {
    "meo_merge_ratio": ClosedForm(
        "1/k + 1/L", lambda config: meo_flops_ratio_closed_form(config["top_k"], config["seq_len"])),
    # the merging family over one expert per token: the merge of all E amortised over the
    # tokens one merged expert serves (SMEAR: a sequence of L; Lory: a segment of T <= L)
    "smear_merge_ratio": ClosedForm(
        "1 + E/L", lambda config: 1.0 + config["num_experts"] / config["seq_len"]),
    "lory_merge_ratio": ClosedForm(
        "1 + E/T", lambda config: 1.0 + config["num_experts"] / min(config["segment_len"],
                                                                     config["seq_len"])),
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
class Limit:
    """measured <= limit (`at_most`) or measured >= limit (`at_least`)."""

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
EXPECTATIONS: dict[str, Callable[[dict[str, Any]], Approx | Limit]] = {
    "value": lambda e: Approx(_target(e, "value"), parse_fraction(e.get("tolerance", 0))),
    "closed_form": lambda e: Approx(_target(e, "closed_form"), parse_fraction(e.get("tolerance", 0))),
    "at_most": lambda e: Limit(_target(e, "at_most"), upper=True),
    "at_least": lambda e: Limit(_target(e, "at_least"), upper=False),
}
EXPECT_KEYS = set(EXPECTATIONS) | {"tolerance"}


