"""`meo-profile check`: decide which claims can be measured, measure exactly what they need,
and judge them.

A claim's `requires` names probes (see probes.py); a claim whose probe gives a reason is
`pending`, and nothing is measured for it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meo_profile.check.claim import Claim, ClaimError, Verdict, judge_all
from meo_profile.check.probes import PROBES
from meo_profile.core.identity import spec_title
from meo_profile.measure.run import measure
from meo_profile.results.store import Store, load, results_path
from models import Spec


@functools.cache
def _probe(name: str, variant: str) -> str | None:
    return PROBES[name](variant)


def pending_reasons(claims: list[Claim]) -> dict[str, str]:
    """Claim name -> why it cannot be measured yet (the first unmet requirement)."""
    reasons = {}
    for claim in claims:
        for name, variant in claim.requires.items():
            reason = _probe(name, variant)
            if reason:
                reasons[claim.name] = reason
                break
    return reasons


# ---------------------------------------------------------------------------------- running
@dataclass
class CheckRun:
    verdicts: list[Verdict]
    errors: list[str]  # claims whose selection matched no record: bad input (exit 2)
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable lines of a results file

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.verdict == "fail"]

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 1 if self.failed else 0


def plan(claims: list[Claim], pending: dict[str, str]) -> dict[Spec, tuple[str, ...]]:
    """Each configuration the measurable claims need, once, with the metrics they read.
    (Pending claims are left alone: their variant may not even be a valid spec yet.)"""
    needed: dict[Spec, set[str]] = {}
    for claim in claims:
        if claim.name not in pending:
            for spec in claim.specs():  # a selection that is no valid spec: ClaimError, exit 2
                needed.setdefault(spec, set()).add(claim.quantity.spec.needs)
    order = ("flops", "latency", "memory")
    return {spec: tuple(m for m in order if m in metrics) for spec, metrics in needed.items()}


def measure_plan(needed: dict[Spec, tuple[str, ...]], save: Path | None = None,
                 log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    store = Store(save) if save else None
    records = []
    for spec, metrics in needed.items():
        start = time.perf_counter()
        result = measure(spec, metrics)
        if store:
            store.append(result)
        records.append(result.to_dict())
        if log:
            status = "" if result.status == "ok" else f" [{result.status}: {result.error}]"
            log(f"measured {spec_title(spec)} ({', '.join(metrics)}) in "
                f"{time.perf_counter() - start:.1f} s{status}")
    return records


def run_checks(claims: list[Claim], results: str | Path | None = None, save: Path | None = None,
               log: Callable[[str], None] | None = None) -> CheckRun:
    """Judge `claims` against a results file, or against the configurations they need,
    measured now (FLOPs-only claims count on the meta device: seconds, not minutes)."""
    if results is not None and save is not None:
        raise ClaimError("--save: nothing is measured when RESULTS is given")
    pending = pending_reasons(claims)
    skipped: list[str] = []
    if results is None:
        records = measure_plan(plan(claims, pending), save, log)
    else:  # stored records are judged as they are (a GPU's records on a CPU machine, too)
        if not results_path(results).exists():
            raise ClaimError(f"RESULTS {str(results)!r}: no results file there")
        loaded = load(results)
        records, skipped = loaded.records, loaded.skipped
    verdicts, errors = judge_all(claims, records, pending)
    return CheckRun(verdicts, errors, records, skipped)
