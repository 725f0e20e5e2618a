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
from meo_profile.core.inputs import output_dir
from meo_profile.measure.run import measure, preflight
from meo_profile.models import Spec
from meo_profile.results.store import Loaded, Store, load, results_path


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
    errors: list[str]  # claims that could not be judged for bad input (exit 2)
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # unreadable lines of a results file
    require_all: bool = False  # an unmeasured claim fails (--require-all)

    def count(self, verdict: str) -> int:
        return sum(v.verdict == verdict for v in self.verdicts)

    @property
    def failed(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.verdict == "fail"
                or self.require_all and v.verdict == "unmeasured"]

    @property
    def judged(self) -> int:
        return self.count("pass") + self.count("fail")

    @property
    def exit_code(self) -> int:
        """1 when a claim fails (or, with require_all, is unmeasured); else 2 when none could be
        judged (or a claim is bad input); 0 when every judged claim passes."""
        if self.failed:
            return 1
        return 2 if self.errors or not self.judged else 0


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
                 log: Callable[[str], None] | None = None,
                 max_memory_bytes: int | None = None) -> list[dict[str, Any]]:
    store = Store(save) if save else None
    records = []
    for spec, metrics in needed.items():
        start = time.perf_counter()
        result = measure(spec, metrics, max_memory_bytes=max_memory_bytes, oversize="refuse")
        if store:
            store.append(result)
        records.append(result.to_dict())
        if log:
            status = "" if result.status == "ok" else f" [{result.status}: {result.error}]"
            log(f"measured {spec_title(spec)} ({', '.join(metrics)}) in "
                f"{time.perf_counter() - start:.1f} s{status}")
    return records


def stored_results(results: str | Path) -> Loaded:
    """The records of a results file to judge; ClaimError (bad input) when there is no file or
    it holds an invalid record: a claim judged on an impossible value passes or fails by
    accident."""
    if str(results).strip() == "" or not results_path(results).is_file():
        raise ClaimError(f"RESULTS {str(results)!r}: no results file there")
    loaded = load(results)
    if loaded.invalid:
        raise ClaimError(f"RESULTS {str(results)!r}: {loaded.invalid_line()}")
    return loaded


def run_checks(claims: list[Claim], results: str | Path | None = None, save: str | None = None,
               log: Callable[[str], None] | None = None, require_all: bool = False,
               max_memory_bytes: int | None = None) -> CheckRun:
    """Judge `claims` against a results file, or against the configurations they need,
    measured now (FLOPs-only claims count on the meta device: seconds, not minutes)."""
    if results is not None and save is not None:
        raise ClaimError("--save: nothing is measured when RESULTS is given")
    out = output_dir(save, "--save") if save is not None else None  # before any work
    loaded = None if results is None else stored_results(results)  # bad input before any count
    pending = pending_reasons(claims)
    if loaded is None:
        needed = plan(claims, pending)
        for spec, metrics in needed.items():  # before measuring the first one
            preflight(spec, metrics, max_memory_bytes)
        records, skipped = measure_plan(needed, out, log, max_memory_bytes), []
    else:  # stored records are judged as they are (a GPU's records on a CPU machine, too)
        records, skipped = loaded.records, loaded.skipped
    verdicts, errors = judge_all(claims, records, pending)
    return CheckRun(verdicts, errors, records, skipped, require_all)
