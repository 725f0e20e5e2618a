"""One configuration measured into one Result: counts, latency, memory, as asked.

Failures never escape as exceptions: out-of-memory (real, or a pre-flight estimate above the
limit) gives `status: oom`, anything else `status: error` with its first line, so a sweep
records the row and goes on.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Iterator

import torch

from meo_profile.measure.counting import count
from meo_profile.measure.latency import measure_workload
from meo_profile.measure.memory import peak_memory
from meo_profile.measure.preflight import DoesNotFit, check_fits
from meo_profile.measure.timing import TimingOptions
from meo_profile.measure.workload import Workload
from meo_profile.results.record import Result
from models import Spec, build_model, make_inputs
from models.compressed import model_rel_l2_error

METRICS = ("flops", "latency", "memory")


@contextlib.contextmanager
def timed(phases: Counter | None, name: str) -> Iterator[None]:
    """Accumulate wall seconds spent in `name` (how a sweep reports where its time went)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if phases is not None:
            phases[name] += time.perf_counter() - start


def measure(spec: Spec, metrics: tuple[str, ...] = METRICS, *,
            timing: TimingOptions | None = None, max_memory_bytes: int | None = None,
            phases: Counter | None = None) -> Result:
    result = Result(spec, metrics=list(metrics))
    try:
        _measure_into(result, metrics, timing, max_memory_bytes, phases)
    except (torch.OutOfMemoryError, DoesNotFit, MemoryError) as e:
        result.update(status="oom", error=_first_line(e) or "out of memory")
    except Exception as e:  # a failing configuration is a recorded row, not a dead sweep
        result.update(status="error", error=f"{type(e).__name__}: {_first_line(e)}")
    return result


def _measure_into(result: Result, metrics, timing, max_memory_bytes, phases) -> None:
    spec = result.spec
    if "flops" in metrics:
        with timed(phases, "counting"):
            result.update(**count(spec).record_fields(), **fidelity_fields(spec))
    if "latency" not in metrics and "memory" not in metrics:
        return
    with timed(phases, "building"):
        check_fits(spec, limit_bytes=max_memory_bytes)
        work = Workload.build(spec)
    with timed(phases, "timing"):
        if "latency" in metrics:
            fields = measure_workload(work, timing or TimingOptions(), memory="memory" in metrics)
        else:  # memory alone: one profiled call, no timing loop
            fields = peak_memory(work).to_fields()
    result.update(**fields)


@torch.no_grad()
def fidelity_fields(spec: Spec) -> dict:
    """Compressed experts: relative L2 error of the model output against full top-k with the
    same router (a real forward; {} for other variants or weights that would not fit)."""
    if spec.variant != "ce" or spec.device == "meta":  # fidelity needs a real forward
        return {}
    try:
        check_fits(spec)
    except DoesNotFit:
        return {}
    model = build_model(spec.replace(mode="inference"))
    return {"rel_l2_error": model_rel_l2_error(model, *make_inputs(spec))}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""
