"""Units: how every number is shown and parsed, in one place, so a number quoted in a finding,
a check verdict or a terminal table reads the same everywhere.

Units: `ms` milliseconds, `×` a ratio, bytes in binary units (one unit per table or figure),
counts with SI prefixes (k, M, G, T; Ki, Mi, Gi when parsed).
"""

from __future__ import annotations

import math
from typing import Any

NA = "–"  # a value not measured


def missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def significant_decimals(x: float, digits: int) -> int:
    """Decimals that show `digits` significant digits of x: 3 for 0.0123 at 2 digits, none for
    123.4 at 3 (0 and non-finite values: none)."""
    if not x or not math.isfinite(x):
        return 0
    return max(0, digits - 1 - math.floor(math.log10(abs(x))))


def fmt_sig(x: Any, digits: int = 3, least_decimals: int = 0, sign: bool = False) -> str:
    """x with at least `digits` significant digits and `least_decimals` decimals, never in
    exponent form, thousands separated: 812, 81.2, 8.12, 0.812, 0.000123. A number small
    beside its table's others keeps its digits instead of reading 0.000."""
    if missing(x):
        return NA
    decimals = max(least_decimals, significant_decimals(x, digits))
    return f"{x:{'+' if sign else ''},.{decimals}f}"


def fmt_num(x: Any, digits: int = 2) -> str:
    """`digits` decimals, more where a small value needs them to show a significant digit."""
    return fmt_sig(x, 1, digits)


def fmt_ms(x: Any) -> str:
    """Three significant digits without exponents: 812, 81.2, 8.12, 0.812, 0.0812."""
    return fmt_sig(x, 3)


def fmt_times(x: Any) -> str:
    """A ratio: 0.87×, 12.4×, 808×, 0.0012×."""
    if missing(x):
        return NA
    least = 0 if abs(x) >= 100 else 1 if abs(x) >= 10 else 2
    return fmt_sig(x, 2, least) + "×"


def fmt_pct(x: Any) -> str:
    """A share in percent: 45%, 3%, 0.3%, 0.004% (one significant digit at least)."""
    return NA if missing(x) else fmt_sig(100 * x, 1) + "%"


def fmt_share(x: Any) -> str:
    """A part of a whole with one decimal, more for a small part: 45.3%, 0.012%."""
    return NA if missing(x) else fmt_sig(100 * x, 2, 1) + "%"


def fmt_signed_pct(x: Any) -> str:
    return NA if missing(x) else fmt_sig(100 * x, 1, 2, sign=True) + "%"


def fmt_bytes(x: Any, unit: tuple[str, float]) -> str:
    return NA if missing(x) else fmt_sig(x / unit[1], 3, 2)


def fmt_int(x: Any) -> str:
    return NA if missing(x) else str(int(x))


BYTE_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


def byte_unit(largest_bytes: float) -> tuple[str, float]:
    """One unit per figure or table, picked from its largest value (as torch's Compare does)."""
    return next(((n, s) for n, s in BYTE_UNITS if largest_bytes >= s), ("B", 1))


def human_bytes(n: float | None) -> str:
    """1536 -> '1.5 KiB': the largest binary unit that keeps the number >= 1, one decimal."""
    if missing(n):
        return NA
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{int(n)} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable: GiB is the last unit")


# (unit, milliseconds per unit), largest first
TIME_UNITS = (("s", 1e3), ("ms", 1.0), ("us", 1e-3), ("ns", 1e-6))


def time_unit(values_ms) -> tuple[str, float]:
    """One unit per table (as torch's Compare does): the largest in which the smallest positive
    value is at least 1."""
    positive = [v for v in values_ms if v]
    smallest = min(positive, default=1.0)
    return next(((unit, ms) for unit, ms in TIME_UNITS if smallest >= ms), TIME_UNITS[-1])


def fmt_giga(n: float | None) -> str:
    """Billions with three decimals, more for a small model (4 significant digits at least):
    GMACs and GFLOPs in terminal tables, 72.389 and 0.0001234, never 0.000."""
    return NA if missing(n) else fmt_sig(n / 1e9, 4, 3)


def format_value(value: float | None, unit: str) -> str:
    """A claim's or a comparison's number with its unit: 72.011 GFLOPs, 12.5 MiB, 0.4014."""
    if missing(value):
        return NA
    if unit in ("FLOPs", "MACs", "params"):
        for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(value) >= scale:
                return f"{value / scale:.3f} {prefix}{unit}"
        return f"{value:,.0f} {unit}"
    if unit == "bytes":
        return f"{value / 2**20:,.1f} MiB"
    if unit == "ratio":
        return f"{value:.4f}"
    return f"{value:,.4g} {unit}"


def percent(fraction: float) -> str:
    """+0.27%, +11.6%, +0.0048%: three significant digits, so a tight claim shows its margin."""
    return f"{fraction * 100:+.3g}%"


# ------------------------------------------------------------------------------ parsing
# Numbers as people write them in claims files and flags: SI suffixes, percentages, sizes.
_SUFFIXES = {"k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def parse_number(value: Any) -> float:
    """72e9, "72.0G", "8Gi", "1.5e+9" -> float. (YAML 1.1 reads 72.0e9 as a string: accept it.)"""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a number")
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
    return float(text)


def parse_fraction(value: Any) -> float:
    """A relative tolerance: "10%" -> 0.10, 0.1 -> 0.1. Negative values are refused."""
    text = str(value).strip()
    fraction = float(text[:-1]) / 100 if text.endswith("%") else parse_number(value)
    if not fraction >= 0:
        raise ValueError(f"{value!r} must be >= 0")
    return fraction


_BYTE_SUFFIXES = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
                  "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str, flag: str = "--max-memory") -> int:
    """'8GiB', '500MB', '1e9' -> bytes, at least one; a bad value (not a size, zero, negative,
    infinite) is a one-line error naming the flag."""
    number = str(text).strip().lower().rstrip("s")
    unit = number.lstrip("0123456789.e+-_")
    try:
        size = float(number[: len(number) - len(unit)]) * _BYTE_SUFFIXES[unit.strip()]
    except (KeyError, ValueError):
        size = math.nan
    if not (math.isfinite(size) and size >= 1):
        raise ValueError(f"{flag} {text!r}: expected a size of at least 1 byte, such as 8GiB "
                         "or 500MB")
    return int(size)
