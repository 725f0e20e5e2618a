"""Read a torch.profiler trace file (Chrome/Perfetto JSON, `export_chrome_trace`) without torch:
device time per kernel and per phase, host operators apart, launch statistics.

Convention: the summary's totals are milliseconds summed over the profiled steps (`steps` says
how many), means are microseconds; the trace itself is in microseconds.

What a trace holds (Kineto's JSON, as torch 2.x writes it):
- host side (pid = process, tid = thread): `cpu_op` (aten operators), `user_annotation`
  (`record_function` ranges: the layers' phases, `ProfilerStep#N`), `cuda_runtime`
  (cudaLaunchKernel, cudaMemcpyAsync, ...) and `cuda_driver` (cuLaunchKernelEx: how cuBLAS
  launches its nvjet kernels);
- device side (pid = device, tid = stream): `kernel`, `gpu_memcpy`, `gpu_memset`, and
  `gpu_user_annotation` (the phase ranges as Kineto projects them onto the stream);
- links: a device event and the runtime/driver call that launched it carry the same
  `args["correlation"]`; the `ac2g` flow pair ("s" at the launch, "f" at the device event)
  repeats it as its `id`; both also carry `args["External id"]`, that of the `cpu_op` that made
  the call.

Each device event is attributed to one phase: the innermost phase range (a `user_annotation`
named in `phases`) around the call that launched it, on the same host thread; failing that, the
range around the `cpu_op` of its External id; failing that, the `gpu_user_annotation` around it on
its stream; else `other` (outside every phase: in an inference step, the host model's own work).
So `sum(kernel_ms_by_phase.values()) == kernel_ms_total`, and aten operators, which only launch
kernels, are never counted as device time.
"""

from __future__ import annotations

import gzip
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from meo_profile.core.errors import BadInput
from meo_profile.measure.trace_names import NAME_WIDTH, short_kernel_name
from meo_profile.models.phases import PHASES

OTHER = "other"  # device events launched outside every phase range
DEVICE_KINDS = {"kernel": "kernel", "gpu_memcpy": "memcpy", "gpu_memset": "memset"}
LAUNCH_CATS = ("cuda_runtime", "cuda_driver")
HOST_CATS = ("cpu_op", "user_annotation", *LAUNCH_CATS, "python_function")
STEP_RE = re.compile(r"^ProfilerStep#\d+$")
EPS_US = 0.002  # ts and dur are rounded to the ns separately: allow for that when nesting


class TraceFileError(BadInput):
    """A file that is not a readable trace; `str()` is one line naming it."""


# ---------------------------------------------------------------------------- result types
@dataclass
class KernelRow:
    """Device events of one shortened name (kernel, memcpy or memset), summed over the steps."""

    name: str  # one line, at most the width asked for
    kind: str  # "kernel", "memcpy" or "memset"
    calls: int
    total_ms: float
    mean_us: float
    by_phase: dict[str, float]  # phase -> ms, in PHASES order, then "other"
    full_names: list[str]  # the demangled names this row gathers (several if instantiations differ)


@dataclass
class OpRow:
    """Host events of one name (aten operator, annotation or runtime call): self and inclusive ms."""

    name: str
    calls: int
    self_ms: float
    total_ms: float


@dataclass
class LaunchStats:
    """Launch statistics in the spirit of HolisticTraceAnalysis' kernel launch statistics, over
    every device event (kernels, memcpy, memset)."""

    device_events: int
    launched: int  # device events whose launch (runtime/driver call) was found by correlation
    short: int  # device duration < its launch call's CPU duration: the host cannot keep up
    launch_cpu_ms: float  # summed CPU time of those launch calls
    runtime_cpu_ms: float  # every cuda_runtime/cuda_driver call (also attribute queries, syncs)
    launch_delay_us_mean: float  # device start - launch start
    launch_delay_us_median: float
    launch_delay_us_max: float
    span_ms: float  # first device start to last device end
    busy_ms: float  # union of device intervals
    idle_fraction: float  # 1 - busy / span: the device waiting for work
    devices: int


@dataclass
class LinkCheck:
    """How device events were tied to host ranges, and whether the trace's other links agree."""

    by_correlation: int  # via args.correlation -> cuda_runtime/cuda_driver event
    by_external_id: int  # fallback: args["External id"] -> cpu_op
    by_gpu_annotation: int  # fallback: the gpu_user_annotation around the event
    unlinked: int  # none of the above: phase "other"
    flows_matching: int  # device events with an ac2g s/f pair at the launch and at the event
    flow_starts_unmatched: int  # "s" with no device "f" (e.g. cudaDeviceSynchronize)
    flow_ends_unmatched: int  # "f" with no "s"
    gpu_annotation_ms_by_phase: dict[str, float]  # the same split read from gpu_user_annotation
    gpu_annotation_disagreements: int  # device events whose two phases differ


@dataclass
class TraceAnalysis:
    source: str
    steps: int
    kernels: list[KernelRow] = field(default_factory=list)  # by total_ms, descending
    ops: list[OpRow] = field(default_factory=list)  # cpu_op only, by self_ms, descending
    annotations: list[OpRow] = field(default_factory=list)  # user_annotation (phases, steps)
    runtime: list[OpRow] = field(default_factory=list)  # cuda_runtime + cuda_driver calls
    kernel_ms_total: float | None = None  # None: the trace holds no device activity (CPU)
    kernel_ms_by_phase: dict[str, float] = field(default_factory=dict)
    op_self_ms_total: float = 0.0
    launch: LaunchStats | None = None
    links: LinkCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def phase_host_ms(self) -> dict[str, float]:
        """Host time inside each phase range (inclusive), in PHASES order: the CPU's split."""
        by_name = {r.name: r.total_ms for r in self.annotations}
        return {p: by_name[p] for p in PHASES if p in by_name}


# ---------------------------------------------------------------------------- reading
def load_trace(source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The trace as a dict, from a .json / .json.gz path or a dict already parsed."""
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            trace = json.load(f)
    except FileNotFoundError:
        raise TraceFileError(f"--from {str(source)!r}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TraceFileError(f"--from {str(source)!r}: not a JSON trace ({type(e).__name__})") from None
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise TraceFileError(f"--from {str(source)!r}: no traceEvents list (not a torch.profiler "
                             "Chrome trace)")
    return trace


def _num(x: Any) -> float:
    return float(x) if isinstance(x, (int, float)) else float(str(x))


class _Ev:
    """One complete ("X") event, its time measured from the trace's first event."""

    __slots__ = ("cat", "name", "pid", "tid", "ts", "dur", "args", "parent", "children_us")

    def __init__(self, e: Mapping[str, Any], base: float):
        self.cat, self.name = e.get("cat", ""), str(e.get("name", ""))
        self.pid, self.tid = e.get("pid"), e.get("tid")
        self.ts, self.dur = _num(e["ts"]) - base, _num(e.get("dur", 0.0))
        self.args = e.get("args") or {}
        self.parent: _Ev | None = None
        self.children_us = 0.0

    @property
    def end(self) -> float:
        return self.ts + self.dur

    def contains(self, other: _Ev) -> bool:
        return self.ts - EPS_US <= other.ts and other.end <= self.end + EPS_US


@dataclass
class _Events:
    """A trace's events sorted by side: host, device, device-side phase ranges, flow ends."""

    host: list[_Ev] = field(default_factory=list)
    device: list[_Ev] = field(default_factory=list)
    gpu_ranges: list[_Ev] = field(default_factory=list)
    flow_starts: dict[Any, list[Mapping]] = field(default_factory=lambda: defaultdict(list))
    flow_ends: dict[Any, list[Mapping]] = field(default_factory=lambda: defaultdict(list))
    base: float = 0.0


def _sort_events(raw: list[Mapping[str, Any]]) -> _Events:
    # Timestamps are ~5e12 us (1 ns per ulp): measure from the first one so that ends, gaps and
    # unions keep the precision of the durations.
    base = min((_num(e["ts"]) for e in raw if e.get("ph") == "X" and "ts" in e), default=0.0)
    out = _Events(base=base)
    sides = {**{c: out.host for c in HOST_CATS}, **{c: out.device for c in DEVICE_KINDS},
             "gpu_user_annotation": out.gpu_ranges}
    for e in raw:
        ph, cat = e.get("ph"), e.get("cat")
        if ph == "X" and "ts" in e and cat in sides:
            sides[cat].append(_Ev(e, base))
        elif cat == "ac2g" and ph in ("s", "f"):
            (out.flow_starts if ph == "s" else out.flow_ends)[e.get("id")].append(e)
    _nest(out.host)
    return out


def _nest(events: Iterable[_Ev]) -> None:
    """Set `parent` (innermost enclosing event on the same pid/tid, by timestamp containment) and
    add each event's duration to its parent's `children_us`."""
    by_thread: dict[tuple, list[_Ev]] = defaultdict(list)
    for ev in events:
        by_thread[(ev.pid, ev.tid)].append(ev)
    for evs in by_thread.values():
        evs.sort(key=lambda ev: (ev.ts, -ev.dur))
        stack: list[_Ev] = []
        for ev in evs:
            while stack and not stack[-1].contains(ev):
                stack.pop()
            if stack:
                ev.parent = stack[-1]
                stack[-1].children_us += ev.dur
            stack.append(ev)


def _phase_of(ev: _Ev | None, phases: frozenset[str]) -> str | None:
    """Name of the innermost phase range enclosing `ev` (itself included), or None."""
    while ev is not None:
        if ev.cat in ("user_annotation", "gpu_user_annotation") and ev.name in phases:
            return ev.name
        ev = ev.parent
    return None


# ---------------------------------------------------------------------------- attribution
class _Linker:
    """Ties each device event to its launch and to a phase (the module doc's three ways)."""

    def __init__(self, events: _Events, phases: frozenset[str]):
        self.events, self.phases = events, phases
        self.launches = {ev.args["correlation"]: ev for ev in events.host
                         if ev.cat in LAUNCH_CATS and "correlation" in ev.args}
        self.ops_by_ext = {ev.args["External id"]: ev for ev in events.host
                           if ev.cat == "cpu_op" and "External id" in ev.args}
        self.ranges_by_stream: dict[tuple, list[_Ev]] = defaultdict(list)
        for ev in events.gpu_ranges:
            if ev.name in phases:
                self.ranges_by_stream[(ev.pid, ev.tid)].append(ev)
        self.counts = dict(correlation=0, external_id=0, gpu_annotation=0, unlinked=0)
        self.flows_matching = 0

    def launch(self, k: _Ev) -> _Ev | None:
        return self.launches.get(k.args.get("correlation"))

    def gpu_phase(self, k: _Ev) -> str | None:
        """The device-side phase range around the middle of `k`, on its stream."""
        mid = k.ts + k.dur / 2
        inside = [a for a in self.ranges_by_stream.get((k.pid, k.tid), ()) if a.ts <= mid <= a.end]
        return max(inside, key=lambda a: (a.ts, -a.dur)).name if inside else None

    def phase(self, k: _Ev) -> str | None:
        """The phase of device event `k` by the first link that exists; counts which one."""
        launch, op = self.launch(k), self.ops_by_ext.get(k.args.get("External id"))
        if launch is not None:
            self.counts["correlation"] += 1
            self.flows_matching += self._flows_match(k, launch)
            return _phase_of(launch, self.phases)
        if op is not None:
            self.counts["external_id"] += 1
            return _phase_of(op, self.phases)
        found = self.gpu_phase(k)
        self.counts["gpu_annotation" if found else "unlinked"] += 1
        return found

    def _flows_match(self, k: _Ev, launch: _Ev) -> bool:
        corr, base = k.args.get("correlation"), self.events.base
        starts = any(abs(_num(s["ts"]) - base - launch.ts) <= EPS_US and s.get("tid") == launch.tid
                     for s in self.events.flow_starts.get(corr, ()))
        ends = any(abs(_num(f["ts"]) - base - k.ts) <= EPS_US and f.get("tid") == k.tid
                   for f in self.events.flow_ends.get(corr, ()))
        return starts and ends


# ---------------------------------------------------------------------------- analysis
def analyze_trace(source: str | Path | Mapping[str, Any], *, width: int = NAME_WIDTH,
                  phases: Iterable[str] = PHASES) -> TraceAnalysis:
    """Kernel and operator tables, device time per phase, and launch statistics of one trace."""
    trace = load_trace(source)
    events = _sort_events(trace["traceEvents"])
    order = [*phases, OTHER]
    linker = _Linker(events, frozenset(phases))
    by_phase, by_gpu_range = dict.fromkeys(order, 0.0), dict.fromkeys(order, 0.0)
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    disagreements = 0
    for k in sorted(events.device, key=lambda ev: ev.ts):
        phase, gpu_phase = linker.phase(k) or OTHER, linker.gpu_phase(k) or OTHER
        disagreements += phase != gpu_phase
        by_phase[phase] += k.dur
        by_gpu_range[gpu_phase] += k.dur
        _add_to_row(rows, k, short_kernel_name(k.name, width), phase)
    steps = len({ev.name for ev in events.host
                 if ev.cat == "user_annotation" and STEP_RE.match(ev.name)})
    ops = _op_rows(ev for ev in events.host if ev.cat == "cpu_op")
    analysis = TraceAnalysis(
        source=str(source) if not isinstance(source, Mapping) else "<dict>", steps=steps or 1,
        kernels=_kernel_rows(rows, order), ops=ops,
        annotations=_op_rows(ev for ev in events.host if ev.cat == "user_annotation"),
        runtime=_op_rows(ev for ev in events.host if ev.cat in LAUNCH_CATS),
        op_self_ms_total=sum(r.self_ms for r in ops))
    if events.device:  # a CPU trace has no device time to split: its kernel fields stay empty
        analysis.kernel_ms_total = sum(k.dur for k in events.device) / 1e3
        analysis.kernel_ms_by_phase = _ms(by_phase)
        analysis.launch = _launch_stats(events, linker)
        analysis.links = _link_check(linker, _ms(by_gpu_range), disagreements)
    return analysis


def _ms(us_by_phase: dict[str, float]) -> dict[str, float]:
    """Phases that ran, in order, in ms; "other" always (0.0 when every event had a phase)."""
    return {p: us / 1e3 for p, us in us_by_phase.items() if us or p == OTHER}


def _add_to_row(rows: dict, k: _Ev, name: str, phase: str) -> None:
    row = rows.setdefault((DEVICE_KINDS[k.cat], name),
                          dict(calls=0, us=0.0, phases=defaultdict(float), names=set()))
    row["calls"] += 1
    row["us"] += k.dur
    row["phases"][phase] += k.dur
    row["names"].add(k.name)


def _kernel_rows(rows: dict, order: list[str]) -> list[KernelRow]:
    kernels = [KernelRow(name, kind, r["calls"], r["us"] / 1e3, r["us"] / r["calls"],
                         {p: r["phases"][p] / 1e3 for p in order if p in r["phases"]},
                         sorted(r["names"]))
               for (kind, name), r in rows.items()]
    return sorted(kernels, key=lambda r: (-r.total_ms, r.name))


def _op_rows(evs: Iterable[_Ev]) -> list[OpRow]:
    """Events aggregated by name: calls, self ms (minus their children on the same thread), total ms."""
    acc: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0.0])
    for ev in evs:
        a = acc[ev.name]
        a[0] += 1
        a[1] += ev.dur - ev.children_us
        a[2] += ev.dur
    rows = [OpRow(n, int(c), s / 1e3, t / 1e3) for n, (c, s, t) in acc.items()]
    return sorted(rows, key=lambda r: (-r.self_ms, r.name))


def _union_us(intervals: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end] intervals."""
    total, cur_start, cur_end = 0.0, None, None
    for start, end in sorted(intervals):
        if cur_end is None or start > cur_end:
            total += 0.0 if cur_end is None else cur_end - cur_start
            cur_start, cur_end = start, end
        else:
            cur_end = max(cur_end, end)
    return total + (0.0 if cur_end is None else cur_end - cur_start)


def _launch_stats(events: _Events, linker: _Linker) -> LaunchStats:
    pairs = [(k, linker.launch(k)) for k in events.device]
    pairs = [(k, launch) for k, launch in pairs if launch is not None]
    delays = [round(k.ts - launch.ts, 3) for k, launch in pairs]  # the trace is written to the ns
    by_device: dict[Any, list[tuple[float, float]]] = defaultdict(list)
    for k in events.device:
        by_device[k.pid].append((k.ts, k.end))
    busy = sum(_union_us(iv) for iv in by_device.values())
    span = sum(max(e for _, e in iv) - min(s for s, _ in iv) for iv in by_device.values())
    return LaunchStats(
        device_events=len(events.device), launched=len(pairs),
        short=sum(k.dur < launch.dur for k, launch in pairs),
        launch_cpu_ms=sum(launch.dur for _, launch in pairs) / 1e3,
        runtime_cpu_ms=sum(ev.dur for ev in events.host if ev.cat in LAUNCH_CATS) / 1e3,
        launch_delay_us_mean=statistics.fmean(delays) if delays else 0.0,
        launch_delay_us_median=statistics.median(delays) if delays else 0.0,
        launch_delay_us_max=max(delays, default=0.0),
        span_ms=span / 1e3, busy_ms=busy / 1e3,
        idle_fraction=1.0 - busy / span if span > 0 else 0.0, devices=len(by_device))


def _link_check(linker: _Linker, gpu_ms: dict[str, float], disagreements: int) -> LinkCheck:
    starts, ends = linker.events.flow_starts, linker.events.flow_ends
    return LinkCheck(
        by_correlation=linker.counts["correlation"], by_external_id=linker.counts["external_id"],
        by_gpu_annotation=linker.counts["gpu_annotation"], unlinked=linker.counts["unlinked"],
        flows_matching=linker.flows_matching,
        flow_starts_unmatched=sum(len(v) for i, v in starts.items() if i not in ends),
        flow_ends_unmatched=sum(len(v) for i, v in ends.items() if i not in starts),
        gpu_annotation_ms_by_phase=gpu_ms, gpu_annotation_disagreements=disagreements)


def per_step(analysis: TraceAnalysis) -> tuple[float | None, dict[str, float]]:
    """(kernel ms, kernel ms by phase) of one step: the totals divided by the profiled steps."""
    if analysis.kernel_ms_total is None:
        return None, {}
    n = analysis.steps
    return analysis.kernel_ms_total / n, {p: ms / n for p, ms in analysis.kernel_ms_by_phase.items()}
