"""Memory pre-flight: refuse a configuration that cannot fit, before building it.

Convention: bytes. The estimate of one configuration's run is

    weights + gradients (train) + inputs + activations,

or the build's own peak where that is larger (hosts are built in float32 and then cast, so a
bfloat16 model passes through its float32 size). Weights are exact (parameters and buffers of
a meta-device build, no memory used); inputs are exact; activations are an estimate that errs
high, from the shapes alone (N = B*L tokens, d, d_ff, k, h heads, V vocabulary, s bytes per
element), one MoE block's working set:

- hidden states in and out of the block, and its residual: 4*N*d;
- attention: q, k, v (3*N*d) and the scores and their softmax, materialised on CPU (2*B*h*L*L);
- the FFN or experts: each token's rows through the experts (r = 1 dense or merged, k routed,
  XMoE at most max_k, else all E*g of width d_ff/g, or its padded buffers' capacity_factor
  rows) at their widest: 3*N*r*d_ff (up output, its
  activation, SwiGLU's second half) and the rows' inputs and outputs, gathered, scaled and
  combined (4*N*r*d);
- Soft MoE's router logits and their two softmaxes over its S = E*p slots (3*N*S), and its
  rows counted as max(1, S/L) per token (the slots through the experts; each token's combined
  output is a full row);
- copied or merged expert weights: MEO's and SMEAR's B merged matrices, Lory's one per segment
  (B*L/T), moe-seq `batched`'s B*k copies;
- the language-model head's logits and their bias added (2*N*V), once (3*N*V in training).

A decoding workload (`--workload decode|generate:N`) is estimated as its prompt, a prefill of
P tokens (C, or L) whose attention reads the whole static KV cache (P x its length), plus what
it keeps between steps (`state_bytes`): the KV cache (models/decode.py `kv_bytes_per_position`
x B x its length), each sequence's merged experts with `--merge-reuse sequence`
(`merged_cache_bytes`), and the float32 running sums of the sequence-routed layers that route
again every step (B x d_in).

Inference holds one block's working set at a time; training keeps every block's for the
backward, and needs one more for the backward's own temporaries ((layers + 1) x the working
set), and the gradients (as large as the weights). tests/
test_preflight.py holds the estimate above the measured peak on small configurations.

The limit is 90% of the memory free on the device (CUDA: `torch.cuda.mem_get_info`; CPU: the
kernel's MemAvailable, within the container's cgroup limit), or `--max-memory`.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from meo_profile.core.errors import BadInput
from meo_profile.core.identity import spec_title
from meo_profile.core.units import human_bytes
from meo_profile.models import Spec, build_model, sparse_layers
from meo_profile.models.catalog import host_shape
from meo_profile.models.conditions import cache_length, parse_workload
from meo_profile.models.decode import RUNNING_SUM_DTYPE, kv_bytes_per_position, merged_cache_bytes
from meo_profile.models.layers import SequenceRouted
from meo_profile.models.merging import merge_groups

HEADROOM = 0.9  # of the free memory: the estimate is not a bound, and the process needs some
TOKEN_ID_BYTES = 8  # int64


class DoesNotFit(BadInput, MemoryError):
    """A configuration whose estimate exceeds the limit: bad input for a command that measures
    one configuration (exit 2), an `oom` row in a sweep (a MemoryError)."""

    def __init__(self, message: str, need_bytes: int, limit_bytes: int):
        super().__init__(message)
        self.need_bytes, self.limit_bytes = need_bytes, limit_bytes


# ------------------------------------------------------------------------------ estimate
@dataclass(frozen=True)
class MemoryEstimate:
    weights_bytes: int
    gradients_bytes: int
    inputs_bytes: int
    activations_bytes: int
    build_bytes: int  # peak while building (float32, before the cast to the spec's dtype)
    state_bytes: int = 0  # what a decode keeps between steps: KV cache, merged experts, sums

    @property
    def total_bytes(self) -> int:
        run = (self.weights_bytes + self.gradients_bytes + self.inputs_bytes
               + self.activations_bytes + self.state_bytes)
        return max(run, self.build_bytes)

    def describe(self) -> str:
        parts = [f"weights {human_bytes(self.weights_bytes)}"]
        if self.gradients_bytes:
            parts.append(f"gradients {human_bytes(self.gradients_bytes)}")
        parts += [f"inputs {human_bytes(self.inputs_bytes)}",
                  f"activations ~{human_bytes(self.activations_bytes)}"]
        if self.state_bytes:
            parts.append(f"decode state {human_bytes(self.state_bytes)}")
        if self.build_bytes > self.weights_bytes:
            parts.append(f"building in float32 {human_bytes(self.build_bytes)}")
        return f"about {human_bytes(self.total_bytes)} ({', '.join(parts)})"


@functools.cache
def _resident(spec: Spec) -> tuple[int, int, int]:
    """(elements, bytes) of the spec's parameters and buffers, and the bytes its workload keeps
    per sequence between decode steps, from a meta-device build (of one sequence: see
    `_weights_key`)."""
    model = build_model(spec, device="meta")
    tensors = [*model.parameters(), *model.buffers()]
    return (sum(t.numel() for t in tensors), sum(t.numel() * t.element_size() for t in tensors),
            _state_bytes(spec, model))


def _state_bytes(spec: Spec, model: torch.nn.Module) -> int:
    """A decode's KV cache, merged experts kept and running sums for the spec's batch (see the
    module doc); each is B times one sequence's."""
    if not parse_workload(spec.workload).decodes:
        return 0
    B = spec.batch_size
    routed_again = spec.merge_reuse != "sequence"  # keeping the prompt's choice keeps no sums
    sums = sum(B * layer.experts.d_in * RUNNING_SUM_DTYPE.itemsize for layer in sparse_layers(model)
               if isinstance(layer, SequenceRouted) and routed_again)
    kv = kv_bytes_per_position(spec) * B * cache_length(spec)
    return kv + (merged_cache_bytes(model, spec) or 0) + sums


def weight_bytes(spec: Spec) -> int:
    """Bytes of the spec's parameters and buffers (no memory used)."""
    return _resident(_weights_key(spec))[1]


def _weights_key(spec: Spec) -> Spec:
    """The spec as far as its weights go: the batch, the seed, the mode and the router's logit
    scale build the same parameters, so a grid over them builds each model once on the meta
    device."""
    return spec.replace(device="meta", seed=0, batch_size=1, mode="inference", router_scale=1.0)


def prompt_length(spec: Spec) -> int:
    """Tokens per sequence of the workload's first call: L, or a decode's context C."""
    return spec.context if parse_workload(spec.workload).name == "decode" else spec.seq_len


def inputs_bytes(spec: Spec) -> int:
    workload = parse_workload(spec.workload)
    steps = workload.steps or (1 if workload.decodes else 0)
    tokens = spec.batch_size * (prompt_length(spec) + steps)
    if host_shape(spec.host).inputs == "hidden":
        return tokens * spec.d_model * _element_bytes(spec)
    return tokens * TOKEN_ID_BYTES


def _element_bytes(spec: Spec) -> int:
    return torch.empty((), dtype=getattr(torch, spec.dtype)).element_size()


def estimate(spec: Spec) -> MemoryEstimate:
    """The memory one step of `spec` needs (see the module doc)."""
    elements, weights, state_per_sequence = _resident(_weights_key(spec))
    state = spec.batch_size * state_per_sequence
    prompt = prompt_length(spec)
    block = block_elements(spec, prompt, cache_length(spec) if state else prompt)
    shape = host_shape(spec.host)
    tokens = spec.batch_size * prompt
    train = spec.mode == "train"
    blocks = spec.layers + 1 if train else 1  # training: every block saved, one more for backward
    activations = blocks * block + tokens * shape.vocab * (3 if train else 2)
    return MemoryEstimate(weights_bytes=weights, gradients_bytes=weights if train else 0,
                          inputs_bytes=inputs_bytes(spec),
                          activations_bytes=activations * _element_bytes(spec),
                          build_bytes=max(weights, elements * 4), state_bytes=state)


def block_elements(spec: Spec, L: int | None = None, keys: int | None = None) -> int:
    """Elements one block holds at its widest (see the module doc), for L tokens per sequence
    (default the spec's) attending to `keys` positions (default L)."""
    B, d, f = spec.batch_size, spec.d_model, spec.d_ff
    L = spec.seq_len if L is None else L
    shape = host_shape(spec.host)
    N = B * L
    scores = 2 * B * shape.heads * L * (L if keys is None else keys)
    attention = 0 if shape.inputs == "hidden" else 3 * N * d + scores
    rows = _rows_per_token(spec)
    ffn = 3 * N * rows * f + 4 * N * rows * d
    return 4 * N * d + attention + ffn + _slot_weights(spec) + _weight_copies(spec)


def _rows_per_token(spec: Spec) -> float:
    """Expert rows per token, in units of d_ff-wide experts."""
    if spec.variant in ("dense", "meo", "meo-token", "smear", "lory"):
        return 1
    if spec.variant == "soft-moe":
        return max(1.0, spec.num_experts * spec.slots_per_expert / spec.seq_len)
    if spec.variant == "xmoe":
        g = spec.granularity or 1
        if spec.impl_by_rule == "padded":  # E*g buffers of C = N/(E*g) x capacity_factor rows each
            return (spec.capacity_factor or spec.num_experts * g) / g
        return (spec.max_k or spec.num_experts * g) / g
    return spec.top_k


def _weight_copies(spec: Spec) -> int:
    """Expert matrices materialised per call in one MoE layer: MEO and SMEAR merge one per
    sequence, Lory one per segment."""
    d, f = spec.d_model, spec.d_ff
    gated = host_shape(spec.host).gated  # SwiGLU experts: (gate | up), down
    expert = (3 if gated else 2) * d * f if spec.expert_unit == "ffn" else (2 if gated else 1) * d * f
    merging = spec.variant in ("meo", "meo-token", "smear", "lory")
    return (merge_groups(spec) if merging else 0) * expert


def _slot_weights(spec: Spec) -> int:
    """Soft MoE: the logits and the dispatch and combine weights, N x S each."""
    if spec.variant != "soft-moe":
        return 0
    return 3 * spec.batch_size * spec.seq_len * spec.num_experts * spec.slots_per_expert


# ------------------------------------------------------------------------------ the limit
def available_bytes(device: str) -> int:
    """Memory this process can still get on `device` without swapping."""
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free
    return min(_mem_available(), _cgroup_room())


def _mem_available() -> int:
    """The kernel's MemAvailable (free plus reclaimable cache); free pages if unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62  # unknown: let the allocator decide


def _cgroup_room() -> int:
    """What a container's memory limit (cgroup v2) still allows; unlimited elsewhere."""
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = int(Path("/sys/fs/cgroup/memory.current").read_text())
        return int(limit) - used if limit != "max" else 1 << 62
    except (OSError, ValueError):
        return 1 << 62


def memory_limit(device: str, max_memory_bytes: int | None = None) -> tuple[int, str]:
    """(bytes, how it was chosen): `--max-memory`, or HEADROOM of what the device has free."""
    if max_memory_bytes is not None:
        return max_memory_bytes, "--max-memory"
    free = available_bytes(device)
    return int(free * HEADROOM), f"{HEADROOM:.0%} of {human_bytes(free)} available on {device}"


def check_fits(spec: Spec, limit_bytes: int | None = None) -> MemoryEstimate:
    """The estimate, or DoesNotFit (one line naming the estimate and the limit) when it
    exceeds `limit_bytes` (default: what the device has free, see `memory_limit`)."""
    need = estimate(spec)
    limit, why = memory_limit(spec.device, limit_bytes)
    if need.total_bytes > limit:
        hint = "raise --max-memory" if limit_bytes is not None else "or pass --max-memory"
        raise DoesNotFit(f"{spec_title(spec)} needs {need.describe()}; the limit is "
                         f"{human_bytes(limit)} ({why}); use a smaller configuration, {hint}",
                         need.total_bytes, limit)
    return need
