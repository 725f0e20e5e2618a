"""The result record: one per configuration, from measurement to store to report.

Units live in the names: `macs` are multiply-adds (fvcore's "flops"), `flops` = 2 x macs,
`*_ms` milliseconds, `*_bytes` bytes. Every count names its source (`flops_source`), every time
its timer, every memory figure its method. Raw latency samples are kept; statistics derive.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import os
import platform
import shlex
import socket
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import torch

from meo_profile.models.spec import Spec
from meo_profile.models.variants import VARIANTS

SCHEMA_VERSION = 1
# A field with this metadata is a detail kept beside the record in memory, never stored.
NOT_STORED = {"stored": False}
IDENTITY_FIELDS = ("schema_version", "run_id", "created_utc", "status", "error")
STATUSES = ("ok", "oom", "error")
# What a stored line must carry to be a record: how it ended and which configuration it
# measured. Every record this project has written has them (these spec fields are stored since
# schema 1), so nothing is filled in with defaults: a line without them is reported as
# unreadable. A spec field added later is not required (older records lack it); variant knobs
# are stored as null by the variants they do not apply to.
REQUIRED_FIELDS = ("status", "host", "variant", "num_experts", "top_k", "d_model", "d_ff",
                   "seq_len", "batch_size", "dtype", "device", "impl", "expert_unit", "seed",
                   "mode", "layers", "n_ce", "ce_init", "threshold", "granularity", "max_k",
                   "capacity_factor", "router_scale")
NULLABLE_FIELDS = frozenset(k for v in VARIANTS.values() for k in v.knobs)


def later_spec_defaults() -> dict[str, Any]:
    """The spec fields added after schema 1's (conditions such as `scope`, `workload`,
    `routing`; newer knobs) with the value every record written before them was measured
    under: their defaults. A record without one reads as measured under that default."""
    fields = dataclasses.fields(Spec)
    return {f.name: f.default for f in fields if f.name not in REQUIRED_FIELDS}


@dataclass
class Result:
    spec: Spec
    status: str = "ok"
    error: str | None = None
    metrics: list[str] = field(default_factory=list)  # what was asked: flops, latency, memory
    # how `impl` was chosen: "given" (--impl NAME), or for --impl auto "rule" (the variant's
    # deterministic rule: counting), "measured" (the fastest candidate, timed here) or "cached"
    # (timed so on this device earlier); each candidate's ms per call when timed (null:
    # failed)
    impl_choice: str | None = None
    impl_candidates: dict[str, float | None] | None = None
    impl_candidates_timing: str | None = None  # the timing mode the candidates were compared in
    # counts
    macs: int | None = None
    flops: int | None = None
    # the variant's own algorithm, whichever implementation ran (MEO: the merge of its k
    # experts): what FLOPs figures, tables and claims use
    method_macs: int | None = None
    flops_source: str | None = None  # "fvcore" or "analytic"
    count_device: str | None = None  # where the counted forward ran ("meta": no weights in memory)
    count_note: str | None = None  # why a count came from another source than asked
    unsupported_ops: dict[str, int] = field(default_factory=dict)  # op -> calls counted as 0
    macs_by_part: dict[str, int] = field(default_factory=dict)  # attention, experts, merge, ...
    params_total: int | None = None
    params_active: int | None = None  # parameters one token's forward reads
    # time
    latency_ms_median: float | None = None
    latency_ms_p20: float | None = None
    latency_ms_p80: float | None = None
    latency_runs: int | None = None
    latency_samples_ms: list[float] = field(default_factory=list)
    timer: str | None = None  # "cuda_events" or "torch_benchmark"
    timing_mode: str | None = None  # "graph" (CUDA-graph replays) or "eager" (CPU: always)
    timing_note: str | None = None  # why `--timing auto` timed a CUDA step eagerly
    eager_ms_median: float | None = None  # CUDA: the step launched op by op, as eager PyTorch runs
    kernel_ms: float | None = None  # CUDA: device time of one step (kernels, memcpy, memset)
    kernel_ms_by_phase: dict[str, float] | None = None  # CUDA: kernel_ms split by phase
    launch_overhead: float | None = None  # CUDA: 1 - kernel_ms / eager_ms_median
    allocator: str | None = None  # "cuda_caching", "glibc-retain" or "system" (CPU malloc)
    tokens_per_s: float | None = None
    roofline_ms: float | None = None  # the phase-wise bound: the sum of roofline_by_phase
    roofline_by_phase: dict[str, float] | None = None  # phase -> bound ms
    roofline_bytes_by_phase: dict[str, float] | None = None  # phase -> bytes it must move
    roofline_overlap_ms: float | None = None  # whole-call max(compute, memory): phases overlapped
    roofline_ratio: float | None = None  # measured / bound (>= 1 for an honest measurement)
    below_bound: bool | None = None  # measured < bound: a measurement to distrust, not a result
    # memory
    peak_mem_bytes: int | None = None
    peak_mem_above_weights_bytes: int | None = None
    weights_bytes: int | None = None
    mem_method: str | None = None
    # routing: the gate convention the variant's router ran (`topk_softmax`, `softmax_topk`,
    # `threshold`, or a native host's own for `moe`) and the host model's own (native hosts)
    router_gates: str | None = None
    host_router_gates: str | None = None
    # routing (data-dependent variants)
    experts_per_token_mean: float | None = None
    experts_per_token_p90: float | None = None
    experts_per_token_max: int | None = None
    dropped_pairs: int | None = None
    experts_touched_mean: float | None = None  # distinct experts a MoE layer ran, mean over layers
    expert_load_max_over_mean: float | None = None  # the busiest expert's pairs / the mean, over layers
    experts_per_sequence_mean: float | None = None  # distinct experts of one sequence, mean
    # `--routing replay:FILE`: the trace's header and its per-layer statistics averaged over
    # layers (meo_profile/measure/routing/stats.trace_summary)
    routing_trace: dict[str, Any] | None = None
    # workloads that decode (`--workload decode|generate:N`)
    merged_cache_bytes: int | None = None  # merged experts kept across steps (merge_reuse sequence)
    prefill_ms: float | None = None  # generate:N: the prefill's share of the latency
    decode_ms_per_step: float | None = None  # generate:N: one decode step
    # fidelity (compressed experts): ||y - y_full|| / ||y_full||
    rel_l2_error: float | None = None
    # provenance: how the latency was measured (TimingOptions, null when nothing was timed),
    # and the command line that produced the record
    timing_options: dict[str, Any] | None = None
    command: str | None = field(default_factory=lambda: invocation())
    # identity and environment
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    created_utc: str = field(
        default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    env: dict[str, Any] = field(default_factory=dict)
    # Details for whoever holds the Result (the terminal tables), never stored: the full count
    # with its per-module and per-operator breakdowns, the closed form it was held against
    # (`--source both`), and the Timing with its raw samples and derived warnings.
    counts: Any = field(default=None, repr=False, compare=False, metadata=NOT_STORED)
    cross_check: Any = field(default=None, repr=False, compare=False, metadata=NOT_STORED)
    timing: Any = field(default=None, repr=False, compare=False, metadata=NOT_STORED)

    def __post_init__(self) -> None:
        if self.impl_choice is None and self.spec.impl != "auto":
            self.impl_choice = "given"  # also on a row that failed before anything ran
        if not self.env:
            self.env = dict(environment(self.spec.device))

    def to_dict(self) -> dict[str, Any]:
        """The flat JSON object of DESIGN.md: identity, spec fields, measurements, environment."""
        d: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "run_id": self.run_id,
                             "created_utc": self.created_utc, "status": self.status,
                             "error": self.error}
        d.update(self.spec.to_dict())
        d.update({name: getattr(self, name) for name in self.measured_fields()})
        if self.cross_check is not None:
            d.update(self.cross_check.record_fields())
        d.update(self.env)
        return d

    @classmethod
    def measured_fields(cls) -> tuple[str, ...]:
        """The stored measurement fields, in record order (identity, spec and environment are
        stored around them)."""
        return tuple(f.name for f in dataclasses.fields(cls)
                     if f.name not in ("spec", "env", *IDENTITY_FIELDS) and f.metadata != NOT_STORED)

    def update(self, **measured: Any) -> Result:
        for k, v in measured.items():
            if k not in self.measured_fields() and k not in ("status", "error"):
                raise AttributeError(f"Result has no stored field {k!r}")
            setattr(self, k, v)
        return self

    def add_counts(self, counts: Any) -> Result:
        """A counter's `Counts`: its record fields stored, the whole count kept as a detail."""
        self.counts = counts
        return self.update(**counts.record_fields())

    def add_timing(self, timing: Any) -> Result:
        """A `Timing`: its statistics and raw samples stored, the object kept as a detail."""
        self.timing = timing
        return self.update(**timing.to_fields())


def invocation(argv: list[str] | None = None) -> str:
    """The command line this process runs, as a user would type it: `meo-profile ARGS` for the
    command line (console script or `python -m cli`), the program and its arguments otherwise."""
    argv = sys.argv if argv is None else argv
    program = os.path.basename(argv[0]) if argv else "python"
    name = "meo-profile" if program in ("meo-profile", "cli.py", "cli") else program
    return shlex.join([name, *argv[1:]])


ENV_FIELDS = ("torch_version", "fvcore_version", "transformers_version", "python_version",
              "device_name", "worker", "num_threads", "git_commit")


@functools.cache
def environment(device: str = "cpu") -> dict[str, Any]:
    """What produced a record: library versions, device, threads and the project's commit."""
    return {
        "torch_version": torch.__version__,
        "fvcore_version": version("fvcore"),
        "transformers_version": version("transformers"),
        "python_version": platform.python_version(),
        "device_name": device_name(device),
        "worker": worker_name(device),
        "num_threads": torch.get_num_threads(),
        "git_commit": git_commit(),
    }


@functools.cache  # read once per process: a dry run names the machine for every configuration
def device_name(device: str) -> str:
    """A name that tells machines apart: the GPU's name, or the CPU model and its core count."""
    if device == "cuda":
        return torch.cuda.get_device_name()
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model} ({os.cpu_count()} cores)"


def worker_name(device: str) -> str:
    """Where a record was measured: the node, and `:gpuN` for a CUDA record (N the physical
    index the scheduler gave this process: Slurm's own variables first, since under cgroup
    confinement CUDA_VISIBLE_DEVICES reads 0 in every job; then CUDA_VISIBLE_DEVICES, which
    Ray sets per actor; else the device torch uses)."""
    node = socket.gethostname()
    if device != "cuda":
        return node
    for var in ("SLURM_STEP_GPUS", "SLURM_JOB_GPUS", "CUDA_VISIBLE_DEVICES"):
        first = os.environ.get(var, "").split(",")[0].strip()
        if first and first not in ("-1", "NoDevFiles"):
            return f"{node}:gpu{first}"
    return f"{node}:gpu{torch.cuda.current_device()}"


def git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, timeout=5,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def record_problem(record: dict[str, Any]) -> str | None:
    """Why a stored JSON object is not a readable record (None when it is one)."""
    absent = [f for f in REQUIRED_FIELDS if f not in record
              or (record[f] is None and f not in NULLABLE_FIELDS)]
    if absent:
        shown = ", ".join(absent[:4]) + (f" and {len(absent) - 4} more" if len(absent) > 4 else "")
        return f"missing required field(s) {shown}"
    if record["status"] not in STATUSES:
        return f"status {record['status']!r} is none of {', '.join(STATUSES)}"
    return None


def to_json_line(result: Result) -> str:
    return json.dumps(result.to_dict(), sort_keys=False, default=str)
