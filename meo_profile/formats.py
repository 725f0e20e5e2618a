"""How numbers and names are shown, shared by tables, figures and findings: one format per
quantity, so a number quoted in a finding reads exactly as in its table.

Units: `ms` milliseconds, `×` a ratio, bytes in one binary unit per table or figure.
"""

from __future__ import annotations

import math
from typing import Any

NA = "–"  # a value not measured


def missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def fmt_num(x: Any, digits: int = 2) -> str:
    return NA if missing(x) else f"{x:,.{digits}f}"


def fmt_ms(x: Any) -> str:
    """Three significant digits without exponents: 812, 81.2, 8.12, 0.812."""
    if missing(x):
        return NA
    digits = 0 if x >= 100 else 1 if x >= 10 else 2 if x >= 1 else 3
    return f"{x:,.{digits}f}"


def fmt_times(x: Any) -> str:
    """A ratio: 0.87×, 12.4×, 808×."""
    if missing(x):
        return NA
    digits = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2
    return f"{x:,.{digits}f}×"


def fmt_pct(x: Any) -> str:
    return NA if missing(x) else f"{100 * x:.0f}%"


def fmt_signed_pct(x: Any) -> str:
    return NA if missing(x) else f"{100 * x:+.2f}%"


def fmt_bytes(x: Any, unit: tuple[str, float]) -> str:
    return NA if missing(x) else f"{x / unit[1]:,.2f}"


def fmt_int(x: Any) -> str:
    return NA if missing(x) else str(int(x))


BYTE_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def byte_unit(largest_bytes: float) -> tuple[str, float]:
    """One unit per figure or table, picked from its largest value (as torch's Compare does)."""
    return next(((n, s) for n, s in BYTE_UNITS if largest_bytes >= s), ("B", 1))


VARIANT_LABELS = {
    "dense": "dense FFN",
    "moe": "vanilla MoE",
    "moe-seq": "vanilla MoE, sequence-routed",
    "meo": "MEO",
    "meo-token": "MEO + token block",
    "ce": "compressed experts",
    "xmoe": "XMoE",
}
VARIANT_ORDER = tuple(VARIANT_LABELS)


def label(variant: str) -> str:
    return VARIANT_LABELS.get(variant, variant)


def order_variants(variants) -> list[str]:
    rank = {v: i for i, v in enumerate(VARIANT_ORDER)}
    return sorted(variants, key=lambda v: (rank.get(v, len(rank)), v))
