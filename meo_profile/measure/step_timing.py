"""The step timed in the mode asked (`--timing auto|graph|eager`), with what a CUDA user also needs
to read it: the eager time, the device's kernel time, and the launch overhead between them.

Convention: milliseconds per step; `timing_mode` says what the record's latency is:
- `graph` (CUDA): the step captured once in a CUDA graph (after warm-up on a side stream, as
  torch.cuda.graphs asks) and its replays timed with CUDA events. That is the cost of the method
  itself: the host launches one graph, not one kernel per operator;
- `eager`: the step called as eager PyTorch runs it (CUDA events on CUDA, torch.utils.benchmark
  on CPU, where there is nothing to capture and `eager` is the only mode).
`auto` replays a graph whenever the step can be captured, and otherwise times it eagerly and says
why in `timing_note` (a host sync such as XMoE's routing or a loop implementation's `.tolist()`;
a train step, whose backward is not captured). `graph` asked of a step that cannot be captured is
an error row, not a silent fallback.

Every CUDA record also carries `eager_ms_median` (in graph mode from its own eager timing run),
`kernel_ms` and `kernel_ms_by_phase` (the device time of one step from a short profiled pass,
device events only: aten rows are never counted twice) and `launch_overhead`
= 1 - kernel_ms / eager_ms_median, the share of the eager time the device spends waiting for
launches. Timed calls reuse one input, as graph-replay benchmarks do: routing is the same on
every call.

The device-specific steps (capture, timer, kernel pass) come in a `DeviceTools`, so the decisions
here are tested on the CPU with a fake graph and a fake clock.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from meo_profile.measure.timing import Timing, TimingOptions, time_call, time_cuda
from meo_profile.measure.trace import kernel_time
from meo_profile.measure.workload import Workload

Replay = Callable[[], Any]


class NotCapturable(RuntimeError):
    """The step cannot be replayed from a CUDA graph; `str()` says why, in one line."""


@dataclass(frozen=True)
class DeviceTools:
    """What timing a step on an accelerator takes from the device: a context that captures the
    step and yields its replay, a timer, and the kernel pass ((ms, ms by phase) of one step)."""

    capture: Callable[[Workload, int], contextlib.AbstractContextManager[Replay]]
    time: Callable[[Callable[[], Any], TimingOptions], Timing]
    kernels: Callable[[Workload], tuple[float | None, dict[str, float]]]


@dataclass
class StepTiming:
    timing: Timing  # what the record's latency_ms_* report
    mode: str  # "graph" or "eager"
    note: str | None = None
    eager: Timing | None = None  # accelerators only
    kernel_ms: float | None = None
    kernel_ms_by_phase: dict[str, float] | None = None

    def to_fields(self) -> dict[str, Any]:
        eager_ms = None if self.eager is None else self.eager.median_ms
        overhead = None
        if eager_ms and self.kernel_ms is not None:
            # kernels on several streams can overlap and sum past the wall time: floor at 0
            overhead = max(0.0, 1.0 - self.kernel_ms / eager_ms)
        return {"timing_mode": self.mode, "timing_note": self.note, "eager_ms_median": eager_ms,
                "kernel_ms": self.kernel_ms, "kernel_ms_by_phase": self.kernel_ms_by_phase or None,
                "launch_overhead": overhead}


def time_step(work: Workload, options: TimingOptions,
              tools: DeviceTools | None = None) -> StepTiming:
    """Time `work.step` as `options.timing_mode` asks (see the module doc). `tools`: the device's
    (default: CUDA's on a CUDA workload; none on the CPU)."""
    tools = tools or DEVICE_TOOLS.get(work.spec.device)
    if tools is None:
        return StepTiming(time_call(work.step, work.spec.device, options), "eager")
    graph, note = None, None
    if options.timing_mode != "eager":
        try:
            graph = time_graph(work, options, tools)
        except NotCapturable as why:
            if options.timing_mode == "graph":
                raise
            note = f"timed eagerly: {why}"
    # eager last: the layers then keep the routing of an eager call (not the graph's buffers)
    eager = tools.time(work.step, options)
    kernel_ms, by_phase = tools.kernels(work)
    if graph is None:
        return StepTiming(eager, "eager", note, eager, kernel_ms, by_phase)
    return StepTiming(graph, "graph", None, eager, kernel_ms, by_phase)


def time_graph(work: Workload, options: TimingOptions, tools: DeviceTools) -> Timing:
    """Replays of the captured step, timed; NotCapturable where it cannot be captured."""
    if work.spec.mode == "train":
        raise NotCapturable("train steps (forward and backward) are not captured")
    with tools.capture(work, options.warmup) as replay:
        return tools.time(replay, options)


# ---------------------------------------------------------------------------------- CUDA
@contextlib.contextmanager
def cuda_graph(work: Workload, warmup: int) -> Iterator[Replay]:
    """Capture `work.step` in a CUDA graph and yield its replay; the graph and its memory pool
    are released on exit (before anything measures memory)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as torch.cuda.graphs asks
        for _ in range(max(warmup, 1)):
            work.step()
        refuse_host_sync(work.step)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            work.step()
    except RuntimeError as e:
        torch.cuda.synchronize()
        raise NotCapturable(f"capture failed: {_first_line(e)}") from None
    try:
        yield graph.replay
    finally:
        graph.reset()


def refuse_host_sync(step: Callable[[], Any]) -> None:
    """Run one step with CUDA's sync debug mode set to error: a step that waits for the device
    (`.item()`, `.tolist()`, `nonzero`) would break a capture, so it is refused before one."""
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    except RuntimeError as e:
        raise NotCapturable(f"the step synchronises with the host ({_first_line(e)})") from None
    finally:
        torch.cuda.set_sync_debug_mode(previous)


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


DEVICE_TOOLS: dict[str, DeviceTools] = {
    "cuda": DeviceTools(capture=cuda_graph, time=time_cuda, kernels=kernel_time),
}
