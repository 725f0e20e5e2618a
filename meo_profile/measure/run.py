"""One configuration measured into one Result: the path `flops`, `latency`, `sweep` and `check`
all take.

What to measure is asked by name (`MEASUREMENTS`): `flops` counts the forward (and, for
compressed experts, their fidelity against full top-k), `latency` times the step and takes its
roofline bound, `memory` the peak of one step. The model and inputs are built before any clock
starts (`Workload.build`); the timed call is `Workload.step`.

`--impl auto` is resolved first, once for the whole record: by measurement when the record is
timed (autotune.py: the fastest implementation here), by the variant's deterministic rule
otherwise. Everything after (count, timing, memory, bound) is of that one implementation, and
the record says which and how it was chosen (`impl`, `impl_choice`, `impl_candidates`).

A request that cannot be measured (timing on the meta device, a closed form that does not exist)
is bad input: a SpecError, raised before anything runs. So is a configuration whose memory
estimate exceeds the limit (preflight.py), checked before anything is built, when the caller
asks (`oversize="refuse"`, as the single-configuration commands do); by default it is an `oom`
row, as a sweep records it. Every other failure becomes the record's status, never an
exception: a real out-of-memory gives `oom`, anything else `error` with its first line, so a
sweep records the row and goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import Counter
from collections.abc import Iterator

import torch

from meo_profile.measure import process
from meo_profile.measure.autotune import Choice, autotune
from meo_profile.measure.counting import SOURCES, count, cross_check
from meo_profile.measure.memory import peak_memory
from meo_profile.measure.preflight import DoesNotFit, check_fits
from meo_profile.measure.roofline import configuration_bound
from meo_profile.measure.routing.stats import routing_fields, trace_summary
from meo_profile.measure.step_timing import time_step
from meo_profile.measure.timing import TimingOptions
from meo_profile.measure.workload import Workload
from meo_profile.models import Spec, build_model, make_inputs
from meo_profile.models.catalog import router_gates
from meo_profile.models.compressed import model_rel_l2_error
from meo_profile.models.conditions import parse_routing
from meo_profile.models.decode import merged_cache_bytes
from meo_profile.models.routing_trace import load_trace
from meo_profile.models.spec import SpecError
from meo_profile.models.variants import CUDA_ONLY, VARIANTS
from meo_profile.models.xmoe import routing_summary
from meo_profile.results.record import Result

MEASUREMENTS = ("flops", "latency", "memory")
TIMED_DEVICES = ("cpu", "cuda")


@contextlib.contextmanager
def timed(phases: Counter | None, name: str) -> Iterator[None]:
    """Accumulate wall seconds spent in `name` (how a sweep reports where its time went)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        if phases is not None:
            phases[name] += time.perf_counter() - start


def check_request(spec: Spec, measurements: tuple[str, ...], source: str = "fvcore",
                  timing: TimingOptions | None = None) -> None:
    """Refuse, as bad input, what cannot be measured at all (SpecError names the flag)."""
    unknown = [m for m in measurements if m not in MEASUREMENTS]
    if unknown or not measurements:
        raise SpecError("metrics", ",".join(measurements),
                        f"choose one or more of {', '.join(MEASUREMENTS)}")
    if source not in SOURCES:
        raise SpecError("source", source, f"unknown; choose from {', '.join(SOURCES)}")
    timed = "latency" in measurements or "memory" in measurements
    if timed and spec.device not in TIMED_DEVICES:
        raise SpecError("device", spec.device, f"cannot be timed: use {' or '.join(TIMED_DEVICES)}")
    if timing is not None and timing.timing_mode == "graph" and spec.device != "cuda" \
            and "latency" in measurements:
        raise SpecError("timing", "graph", f"CUDA graphs need --device cuda, not {spec.device}; "
                        "use --timing auto or eager")
    if timed and spec.impl in CUDA_ONLY and spec.device != "cuda":
        raise SpecError("impl", spec.impl, "is a CUDA kernel: on CPU Triton only interprets it "
                        "(for `verify`), so it is not timed there")


def measure(spec: Spec, measurements: tuple[str, ...] = MEASUREMENTS, *, source: str = "fvcore",
            timing: TimingOptions | None = None, max_memory_bytes: int | None = None,
            phases: Counter | None = None, oversize: str = "record") -> Result:
    """Measure `spec` as asked, into one Result (see the module doc for failures)."""
    check_request(spec, measurements, source, timing)
    result = Result(spec, metrics=list(measurements)).update(**router_gates(spec))
    try:
        with timed(phases, "building"):
            preflight(spec, measurements, max_memory_bytes)
        _measure_into(result, measurements, source, timing or TimingOptions(), max_memory_bytes,
                      phases)
    except SpecError:
        raise
    except DoesNotFit as e:
        if oversize != "record":
            raise
        result.update(status="oom", error=str(e))
    except (torch.OutOfMemoryError, MemoryError) as e:
        result.update(status="oom", error=_first_line(e) or "out of memory")
    except Exception as e:  # a failing configuration is a recorded row, not a dead sweep
        result.update(status="error", error=f"{type(e).__name__}: {_first_line(e)}")
    return result


def choose_impl(spec: Spec, measurements: tuple[str, ...]) -> Choice:
    """What `--impl` runs: as given; for auto, the fastest here when timed, else the rule. A
    merging variant's implementations differ in how they merge, and a decode step that keeps
    each sequence's merged expert merges nothing: the rule picks for its prompt, untimed."""
    if spec.impl == "auto" and ("latency" not in measurements or merges_nothing_timed(spec)):
        return Choice(spec.impl_by_rule, "rule")
    return autotune(spec)


def merges_nothing_timed(spec: Spec) -> bool:
    return (VARIANTS[spec.variant].merges and spec.merge_reuse == "sequence"
            and spec.workload == "decode")


def _measure_into(result: Result, measurements, source, timing, max_memory_bytes, phases) -> None:
    if "latency" in measurements:  # candidates are timed under the allocator the timing uses
        allocator_setting(result.spec.device, timing)
    with timed(phases, "tuning"):  # the pre-flight has checked the model fits, candidates too
        choice = choose_impl(result.spec, measurements)
    result.spec = spec = result.spec.replace(impl=choice.impl)
    result.update(**choice.to_fields())
    work = None
    if "latency" in measurements or "memory" in measurements:
        with timed(phases, "building"):
            work = Workload.build(spec)
    result.update(**decode_fields(spec, work))
    if "flops" in measurements:  # a count on real tensors traces the timed model, if any
        reusable = work is not None and spec.mode == "inference" and work.decoding is None
        built = (work.model, work.inputs) if reusable else None
        with timed(phases, "counting"):
            result.add_counts(count(spec, "fvcore" if source == "both" else source,
                                    max_memory_bytes, built))
            if source == "both":
                result.cross_check = cross_check(result.counts, spec)
            result.update(**fidelity_fields(spec))
    if work is None:
        return
    with timed(phases, "timing"):
        if "latency" in measurements:
            time_workload(result, work, timing, memory="memory" in measurements)
        else:  # memory alone: one profiled call, no timing loop
            result.update(**peak_memory(work).to_fields())


def preflight(spec: Spec, measurements: tuple[str, ...], max_memory_bytes: int | None = None) -> None:
    """Refuse (DoesNotFit) a measurement whose model would not fit, before anything is built.
    Counting needs no check here: it runs on the meta device, or checks its own memory where
    an implementation needs real tensors."""
    if "latency" in measurements or "memory" in measurements:
        check_fits(spec, limit_bytes=max_memory_bytes)


def time_workload(result: Result, work: Workload, options: TimingOptions, memory: bool = True,
                  bound: bool = True) -> Result:
    """Time `work.step` (in the timing mode asked), then probe its memory and bound: the latency
    fields of `result`. Routing statistics are read after the timed calls (host syncs), from the
    last forward's choices (measure/routing/stats.py)."""
    malloc = allocator_setting(work.spec.device, options)
    stepped = time_step(work, options)
    result.add_timing(stepped.timing)
    result.update(**time_parts(work, options))
    result.update(tokens_per_s=work.tokens / (result.timing.median_ms / 1e3), allocator=malloc,
                  timing_options=options.to_dict(), **stepped.to_fields(),
                  **routing_summary(work.model), **routing_fields(work.model, work.spec),
                  **replayed_trace(work.spec))
    if memory:
        result.update(**peak_memory(work).to_fields())
    if bound:
        roof = configuration_bound(work.spec, work.model)
        if roof is not None:
            result.update(**roof.to_fields(result.timing.median_ms))
    return result


def time_parts(work: Workload, options: TimingOptions) -> dict[str, float]:
    """The shares of a workload timed on their own (generate: `prefill_ms`, and
    `decode_ms_per_step`: the N steps from the prompt's state, per step), in the same timing
    mode as the whole, median ms per unit."""
    out = {}
    for name, part in work.parts.items():
        with part.calls() as call:
            timed = time_step(dataclasses.replace(work, step=call, parts={}), options)
        out[name] = timed.timing.median_ms / part.per_call
    return out


def decode_fields(spec: Spec, work: Workload | None) -> dict[str, int | None]:
    """`merged_cache_bytes` of a merging variant at decode (the record says what its reuse
    keeps: B merged experts per MoE layer, or nothing), from the model as built (the timed
    one, or a meta-device build for a count)."""
    if spec.merge_reuse is None:
        return {}
    model = work.model if work is not None else build_model(spec, device="meta")
    return {"merged_cache_bytes": merged_cache_bytes(model, spec)}


def replayed_trace(spec: Spec) -> dict:
    """`--routing replay:FILE`: the trace's header and statistics, kept in the record."""
    choice = parse_routing(spec.routing)
    if choice.kind != "replay":
        return {}
    return {"routing_trace": trace_summary(load_trace(choice.path), choice.path)}


def allocator_setting(device: str, options: TimingOptions) -> str:
    """CUDA tensors come from PyTorch's caching allocator; CPU ones from malloc as configured."""
    if device == "cuda":
        return "cuda_caching"
    return process.apply(options.cpu_allocator)


@torch.no_grad()
def fidelity_fields(spec: Spec) -> dict:
    """Compressed experts: relative L2 error of the model output against full top-k with the
    same router (a real forward; {} for other variants or weights that would not fit)."""
    if spec.variant != "ce" or spec.device == "meta":  # fidelity needs a real forward
        return {}
    try:
        check_fits(spec.replace(mode="inference"))
    except DoesNotFit:
        return {}
    model = build_model(spec.replace(mode="inference"))
    return {"rel_l2_error": model_rel_l2_error(model, *make_inputs(spec))}


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else ""
