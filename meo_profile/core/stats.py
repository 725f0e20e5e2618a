"""Statistics of raw timing samples, shared by the timer (which warns) and the report (which
flags noisy points), so both apply one rule to one spread."""

from __future__ import annotations

import math
from collections.abc import Sequence

# torch.utils.benchmark's rule: an interquartile range above 10% of the median is noisy
NOISY_IQR_OVER_MEDIAN = 0.10


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), q in [0, 1]."""
    position = q * (len(sorted_values) - 1)
    lo = math.floor(position)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (position - lo)


def iqr_over_median(samples: Sequence[float]) -> float:
    """The spread `NOISY_IQR_OVER_MEDIAN` judges: (q75 - q25) / median of the samples."""
    ordered = sorted(samples)
    median = quantile(ordered, 0.5)
    # a timer call costs far more than 1e-12 ms: the floor only avoids dividing by zero
    return (quantile(ordered, 0.75) - quantile(ordered, 0.25)) / max(median, 1e-12)
