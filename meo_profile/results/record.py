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
import socket
import subprocess
import uuid
from dataclasses import dataclass, field
from importlib.metadata import version
from typing import Any

import torch

from models.spec import Spec

SCHEMA_VERSION = 1
# A field with this metadata is a detail kept beside the record in memory, never stored.
NOT_STORED = {"stored": False}
IDENTITY_FIELDS = ("schema_version", "run_id", "created_utc", "status", "error")


@dataclass
class Result:
    spec: Spec
    status: str = "ok"
    error: str | None = None
    metrics: list[str] = field(default_factory=list)  # what was asked: flops, latency, memory
    # counts
    macs: int | None = None
    flops: int | None = None
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
    allocator: str | None = None  # "cuda_caching", "glibc-retain" or "system" (CPU malloc)
    tokens_per_s: float | None = None
    roofline_ms: float | None = None
    roofline_ratio: float | None = None  # measured / bound (>= 1 for an honest bound)
    # memory
    peak_mem_bytes: int | None = None
    peak_mem_above_weights_bytes: int | None = None
    weights_bytes: int | None = None
    mem_method: str | None = None
    # routing (data-dependent variants)
    experts_per_token_mean: float | None = None
    experts_per_token_p90: float | None = None
    experts_per_token_max: int | None = None
    dropped_pairs: int | None = None
    # fidelity (compressed experts): ||y - y_full|| / ||y_full||
    rel_l2_error: float | None = None
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
        "git_commit": _git_commit(),
    }


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


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, timeout=5,
                             capture_output=True, text=True, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def to_json_line(result: Result) -> str:
    return json.dumps(result.to_dict(), sort_keys=False, default=str)
