"""Claims files: YAML in, validated `Claim`s out, every error one line naming the claim and
the key (docs/claims.md has the format). The built-in claims ship beside this module."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from meo_profile.check.claim import Claim, ClaimError
from meo_profile.check.expectations import EXPECT_KEYS, EXPECTATIONS, Approx, Limit
from meo_profile.check.probes import PROBES
from meo_profile.check.quantities import CLAIM_METRICS, MACS_PER, PARTS, Quantity
from meo_profile.check.region import parse_region
from meo_profile.core.inputs import read_text
from meo_profile.models.spec import SPEC_FIELDS

BUILTIN = "claims_builtin.yaml"  # shipped beside this module (package data)


_CLAIM_KEYS = {"name", "source", "note", "select", "metric", "parts", "exclude_parts", "ratio",
               "expect", "requires", "region"}


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
                 note=str(item.get("note", "")).strip(),
                 region=None if item.get("region") is None else parse_region(item["region"]))


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
    if metric not in CLAIM_METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(CLAIM_METRICS)}")
    parts, exclude = tuple(item.get("parts") or ()), tuple(item.get("exclude_parts") or ())
    if (parts or exclude) and metric not in MACS_PER:
        raise ValueError(f"parts apply to {' and '.join(MACS_PER)} only, not {metric!r}")
    bad = [p for p in parts + exclude if p not in PARTS]
    if bad:
        raise ValueError(f"unknown part(s) {bad}; choose from {', '.join(PARTS)}")
    return Quantity(metric, parts, exclude)


def _expectation(expect: Any) -> Approx | Limit:
    if not isinstance(expect, dict):
        raise ValueError("expect must be a mapping: value + tolerance, closed_form + tolerance, at_most or at_least")
    kinds = [k for k in expect if k in EXPECTATIONS]
    unknown = set(expect) - EXPECT_KEYS
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
        text, origin = read_text(path, "--claims"), str(path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ClaimError(f"{origin}:{where} not valid YAML ({getattr(e, 'problem', e)})") from None
    return parse_claims(data, origin)


