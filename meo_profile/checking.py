"""`meo-profile check`: decide which claims can be measured, measure exactly what they need,
and judge them.

A claim's `requires` names probes: questions about the current code ("is this variant built?",
"does the counter account for its active parameters?"). Each probe answers None (ready) or the
reason the claim cannot be measured yet; such a claim is `pending` and nothing is measured for
it. Probes look at behaviour on a tiny model, so a claim becomes a real check by itself as soon
as the code can measure it.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meo_profile.claims import Claim, ClaimError, Verdict, judge_all
from models import Spec

# A model small enough that building, tracing and running it costs well under a second.
TINY = dict(host="layer", d_model=64, d_ff=128, num_experts=4, top_k=2, seq_len=8, batch_size=2,
            device="cpu")


# ----------------------------------------------------------------------------------- probes
def registered(variant: str) -> str | None:
    """The variant has a layer in the model family (`dense` keeps the host's own FFN)."""
    from models.build import LAYERS
    from models.spec import VARIANTS

    if variant == "dense" or (variant in VARIANTS and variant in LAYERS):
        return None
    return f"variant {variant!r} is not built yet (no entry in models.build.LAYERS)"


def counted(variant: str) -> str | None:
    """The FLOP counter runs on the variant (a tiny configuration counts without an error)."""
    from meo_profile.counting import count

    reason = registered(variant)
    if reason:
        return reason
    try:
        count(Spec(variant=variant, **TINY), "fvcore")
    except Exception as e:  # any failure means: not countable yet
        return f"the counter cannot count {variant!r} yet ({type(e).__name__}: {str(e)[:120]})"
    return None


def params_accounted(variant: str) -> str | None:
    """The counter's `params_active` follows the variant's own accounting, where its layers
    define one (`params_active()`: compressed experts read m whole experts and n_ce vectors,
    not k experts). Checked on a tiny model after one forward (XMoE's depends on routing)."""
    import torch

    from meo_profile.counting import count
    from models import build_model, make_inputs
    from models.build import sparse_layers

    reason = counted(variant)
    if reason:
        return reason
    spec = Spec(variant=variant, **TINY)
    model = build_model(spec, "cpu").eval()
    with torch.no_grad():
        model(*make_inputs(spec, "cpu"))
    layers = [m for m in sparse_layers(model) if callable(getattr(m, "params_active", None))]
    if not layers:
        return None  # the counter's generic rule (k of E experts per token) is the variant's
    total = sum(p.numel() for p in model.parameters())
    expected = total - sum(sum(p.numel() for p in m.parameters()) - m.params_active() for m in layers)
    counted_active = count(spec, "fvcore").params_active
    if counted_active == expected:
        return None
    return (f"the counter's params_active ({counted_active:,}) ignores the {variant} layers' own "
            f"accounting ({expected:,}) on a tiny model: counting does not support {variant!r} yet")


PROBES: dict[str, Callable[[str], str | None]] = {
    "registered": registered,
    "counted": counted,
    "params_accounted": params_accounted,
}


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
    from meo_profile.measure import measure
    from meo_profile.render import spec_title
    from meo_profile.store import Store

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
    pending = pending_reasons(claims)
    skipped: list[str] = []
    if results is None:
        records = measure_plan(plan(claims, pending), save, log)
    else:  # stored records are judged as they are (a GPU's records on a CPU machine, too)
        from meo_profile.store import load, results_path

        if not results_path(results).exists():
            raise ClaimError(f"RESULTS {str(results)!r}: no results file there")
        loaded = load(results)
        records, skipped = loaded.records, loaded.skipped
    verdicts, errors = judge_all(claims, records, pending)
    return CheckRun(verdicts, errors, records, skipped)
