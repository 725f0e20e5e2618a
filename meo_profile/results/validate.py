"""Every stored record checked field by field before anything reads it: finite, in range, the
right type. A results file is input like any other: a NaN latency, a negative time or an
infinite count is a broken record, never a result to draw, rank or compare.

Each checked field has one rule, a small function `value -> why it is not valid` (None: valid),
in `FIELD_RULES`. A null is always valid here (not measured, or not applicable); which fields a
record must carry is `record.REQUIRED_FIELDS`' business. Fields this version does not know (a
newer writer's) are not judged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from meo_profile.models.conditions import MERGE_REUSE, SCOPES, parse_routing, parse_workload
from meo_profile.models.errors import SpecError
from meo_profile.models.spec import (
    DTYPES,
    EXPERT_UNITS,
    INT_LIMITS,
    MAX_SEED,
    MODES,
    OPTIONAL_INT_LIMITS,
)

Rule = Callable[[Any], str | None]  # value -> why it is not valid (None: it is)


def shown(value: Any) -> str:
    """A stored value as JSON wrote it (NaN, Infinity), briefly."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def number(least: float | None = None, *, above: float | None = None, most: float | None = None,
           integer: bool = False) -> Rule:
    """A finite number (an integer, when `integer`) within the bounds given."""
    kind = "an integer" if integer else "a finite number"
    bounds = " and ".join(b for b in (
        f">= {least:,}" if least is not None else "", f"> {above:g}" if above is not None else "",
        f"<= {most:,}" if most is not None else "") if b)
    expected = f"{kind} {bounds}".strip()

    def check(value: Any) -> str | None:
        if isinstance(value, float) and not math.isfinite(value):
            return f"{shown(value)} is not {kind}"
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return f"expected {expected}, not {type(value).__name__} {shown(value)}"
        if (least is not None and value < least) or (above is not None and value <= above) \
                or (most is not None and value > most):
            return f"{shown(value)} is out of range: expected {expected}"
        return None

    return check


def one_of(allowed: tuple[str, ...]) -> Rule:
    def check(value: Any) -> str | None:
        return None if value in allowed else f"{shown(value)} is none of {', '.join(allowed)}"

    return check


def text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else f"expected a name, not {shown(value)}"


def boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else f"expected true or false, not {shown(value)}"


def normalised(parse: Callable[[str], Any]) -> Rule:
    """A condition's text as models/conditions.py writes it (`zipf:1.2`, not `zipf:1.20`)."""

    def check(value: Any) -> str | None:
        if not isinstance(value, str):
            return f"expected a condition's text, not {shown(value)}"
        try:
            normal = parse(value).text
        except SpecError as e:
            return e.reason
        return None if normal == value else f"{shown(value)} is not normalised (the tool writes {normal!r})"

    return check


def each_value(rule: Rule, nulls: bool = False) -> Rule:
    """A mapping (name -> value) whose every value follows `rule` (or is null, when allowed)."""

    def check(value: Any) -> str | None:
        if not isinstance(value, Mapping):
            return f"expected a mapping, not {shown(value)}"
        for key, item in value.items():
            if item is None and nulls:
                continue
            why = rule(item)
            if why:
                return f"[{key!r}]: {why}"
        return None

    return check


def each_item(rule: Rule) -> Rule:
    def check(value: Any) -> str | None:
        if not isinstance(value, list):
            return f"expected a list, not {shown(value)}"
        for i, item in enumerate(value):
            why = rule(item)
            if why:
                return f"[{i}]: {why}"
        return None

    return check


COUNT = number(0, integer=True)  # MACs, parameters, bytes, calls
AT_LEAST_ONE = number(1, integer=True)
MS = number(0)  # a time that may be zero (a phase with nothing to do)
POSITIVE = number(above=0)  # a measured time or rate: never zero
NON_NEGATIVE = number(0)  # a mean, a ratio, an error

FIELD_RULES: dict[str, Rule] = {
    # identity and configuration
    "schema_version": AT_LEAST_ONE, "status": text, "host": text, "variant": text, "impl": text,
    **{name: number(1, most=most, integer=True) for name, most in INT_LIMITS.items()},
    **{name: number(1, most=most, integer=True) for name, most in OPTIONAL_INT_LIMITS.items()},
    "seed": number(0, most=MAX_SEED, integer=True),
    "dtype": one_of(DTYPES), "device": one_of(("cpu", "cuda", "meta")), "mode": one_of(MODES),
    "expert_unit": one_of(EXPERT_UNITS), "n_ce": COUNT, "ce_init": one_of(("ones", "random")),
    "threshold": number(above=0, most=1), "granularity": AT_LEAST_ONE, "max_k": AT_LEAST_ONE,
    "capacity_factor": POSITIVE, "router_scale": POSITIVE,
    "scope": one_of(SCOPES), "workload": normalised(parse_workload),
    "routing": normalised(parse_routing), "merge_reuse": one_of(MERGE_REUSE),
    # counts
    "macs": COUNT, "flops": COUNT, "method_macs": COUNT, "macs_analytic": COUNT,
    "params_total": COUNT, "params_active": COUNT,
    "unsupported_ops": each_value(COUNT), "macs_by_part": each_value(COUNT),
    # time
    "latency_ms_median": POSITIVE, "latency_ms_p20": POSITIVE, "latency_ms_p80": POSITIVE,
    "latency_runs": AT_LEAST_ONE, "latency_samples_ms": each_item(POSITIVE),
    "eager_ms_median": POSITIVE, "kernel_ms": MS, "kernel_ms_by_phase": each_value(MS),
    "launch_overhead": number(), "tokens_per_s": POSITIVE, "roofline_ms": MS,
    "roofline_by_phase": each_value(MS), "roofline_bytes_by_phase": each_value(NON_NEGATIVE),
    "roofline_overlap_ms": MS, "roofline_ratio": NON_NEGATIVE,
    "below_bound": boolean, "impl_candidates": each_value(POSITIVE, nulls=True),
    "prefill_ms": MS, "decode_ms_per_step": MS,
    # memory (`peak_mem_above_weights_bytes` is a difference: either sign)
    "peak_mem_bytes": COUNT, "weights_bytes": COUNT, "merged_cache_bytes": COUNT,
    "peak_mem_above_weights_bytes": number(integer=True),
    # routing and fidelity
    "experts_per_token_mean": NON_NEGATIVE, "experts_per_token_p90": NON_NEGATIVE,
    "experts_per_token_max": COUNT, "dropped_pairs": COUNT, "experts_touched_mean": NON_NEGATIVE,
    "expert_load_max_over_mean": NON_NEGATIVE, "experts_per_sequence_mean": NON_NEGATIVE,
    "rel_l2_error": NON_NEGATIVE,
    # environment
    "num_threads": AT_LEAST_ONE,
}


def invalid_field(record: Mapping[str, Any]) -> str | None:
    """The first field of a stored record that breaks its rule, as 'FIELD: why' (None: every
    field is valid). Nulls pass: see the module's docstring."""
    for name, rule in FIELD_RULES.items():
        value = record.get(name)
        if value is None:
            continue
        why = rule(value)
        if why:
            return f"{name}: {why}"
    return None
