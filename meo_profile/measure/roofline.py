"""A physical lower bound on a configuration's latency: the roofline of this very device.

Convention: the bound in milliseconds is max(compute, memory), where compute = macs / (the
device's measured dense-matmul multiply-adds per second) and memory = bytes the call must move /
(the device's measured copy bandwidth). Peaks are measured here, on the same machine and dtype,
once per process (cached), never taken from a datasheet: a measured/bound ratio near 1 means the
implementation runs as fast as this machine's best matmul and copy allow.

Bytes a forward must move (`bytes_moved`), counted from the model's structure, each at least once:
- every parameter outside the expert banks (attention, embeddings, norms, heads), read once;
- the experts an MoE layer's routing touches, read once: the expected number of distinct experts
  when n routed inputs (tokens, or sequences for sequence-level routing) each pick k of E
  uniformly, E * (1 - (1 - k/E)^n);
- MEO: every merged matrix written once and read once, 2 * B * (one expert's parameters);
- activations: every linear (dense or MoE) reads its input rows and writes its output rows.
Training (forward + backward) costs three forwards' macs and bytes (the backward reads the weights
again, writes their gradients, and computes two matmuls per forward matmul), the usual estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from meo_profile.measure.analytic import count
from meo_profile.measure.timing import TimingOptions, time_call
from models import VARIANTS, Spec, build_model, sparse_layers, torch_dtype
from models.build import TORCH_DTYPES
from models.layers import MergedExperts, SparseLayer
from models.native import NativeMoE
from models.spec import SpecError

# Sizes for the peak probes: large enough to reach the device's steady state (on a quiet
# two-core CPU, square matmuls from 1024 to 3072 and the paper layer's own shapes all reach the
# same ~100 GMAC/s) and, for the copy, to leave the caches; small enough that many samples fit
# in the probe's time, so that the best of them escapes other processes' load.
MATMUL_N = {"cpu": 1024, "cuda": 8192}
COPY_BYTES = {"cpu": 256 * 2**20, "cuda": 2 * 2**30}
PROBE_OPTIONS = TimingOptions(warmup=1, min_run_time=0.2)
MODE_COST = {"inference": 1, "train": 3}  # forward-equivalents of work per step


# ---------------------------------------------------------------------- the device's peaks
@dataclass(frozen=True)
class DevicePeaks:
    """What this device sustains at best: dense matmul multiply-adds/s and copy bytes/s."""

    device: str
    dtype: str
    macs_per_s: float
    bytes_per_s: float


def best_ms(fn: Callable[[], Any], device: str) -> float:
    """The fastest sample: a peak is what the device can do, so noise only slows it down."""
    return min(time_call(fn, device, PROBE_OPTIONS).samples_ms)


def matmul_macs_per_s(device: str, dtype: torch.dtype) -> float:
    n = MATMUL_N[device]
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    return n**3 / (best_ms(lambda: torch.mm(a, b, out=out), device) / 1e3)


def copy_bytes_per_s(device: str) -> float:
    numel = COPY_BYTES[device] // 4
    src, dst = torch.ones(numel, device=device), torch.empty(numel, device=device)
    return 2 * COPY_BYTES[device] / (best_ms(lambda: dst.copy_(src), device) / 1e3)  # read + write


_BEST_PEAKS: dict[tuple[str, str], DevicePeaks] = {}


def device_peaks(device: str, dtype: str, refresh: bool = False) -> DevicePeaks:
    """Measured once per (device, dtype) per process and cached. `refresh` probes again and
    keeps the better of each figure: a peak is the best the device has shown, and load from
    other processes can only hide it (a long benchmark refreshes between rounds)."""
    key = (device, dtype)
    if key in _BEST_PEAKS and not refresh:
        return _BEST_PEAKS[key]
    probed = DevicePeaks(device, dtype, matmul_macs_per_s(device, TORCH_DTYPES[dtype]),
                         copy_bytes_per_s(device))
    best = _BEST_PEAKS.get(key, probed)
    _BEST_PEAKS[key] = DevicePeaks(device, dtype, max(best.macs_per_s, probed.macs_per_s),
                                   max(best.bytes_per_s, probed.bytes_per_s))
    return _BEST_PEAKS[key]


# -------------------------------------------------------------------------------- the bound
@dataclass(frozen=True)
class RooflineBound:
    compute_ms: float
    memory_ms: float

    @property
    def bound_ms(self) -> float:
        return max(self.compute_ms, self.memory_ms)

    def to_fields(self, measured_ms: float | None = None) -> dict[str, Any]:
        ratio = None if measured_ms is None else measured_ms / self.bound_ms
        return {"roofline_ms": self.bound_ms, "roofline_ratio": ratio}


def roofline(spec: Spec, macs: int, bytes_moved: int, peaks: DevicePeaks | None = None) -> RooflineBound:
    """The bound for `macs` multiply-adds and `bytes_moved` bytes per step of the spec's mode."""
    peaks = peaks or device_peaks(spec.device, spec.dtype)
    work = MODE_COST[spec.mode]
    return RooflineBound(compute_ms=work * macs / peaks.macs_per_s * 1e3,
                 memory_ms=work * bytes_moved / peaks.bytes_per_s * 1e3)


# --------------------------------------------------------------------------- bytes to move
def expected_distinct(num_experts: int, picks: int, inputs: int) -> float:
    """Distinct experts touched when `inputs` inputs each pick `picks` of E uniformly."""
    return num_experts * (1.0 - (1.0 - min(picks, num_experts) / num_experts) ** inputs)


def routed(spec: Spec) -> tuple[int, int]:
    """(inputs one MoE layer routes, experts each runs in full): tokens or sequences by the
    variant's router; compressed experts run k - n_ce experts in full."""
    inputs = spec.batch_size if VARIANTS[spec.variant].routes == "sequence" else spec.batch_size * spec.seq_len
    return inputs, spec.top_k - (spec.n_ce or 0)


def _numel_bytes(tensors: list[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def expert_bytes(layer: SparseLayer) -> int:
    """One expert's weights and biases."""
    bank = layer.experts
    return _numel_bytes(list(bank.parameters())) // bank.num_experts


def sparse_layer_bytes(layer: SparseLayer, spec: Spec) -> float:
    """Experts read (expected distinct) plus, for MEO, merged weights written and read."""
    inputs, picks = routed(spec)
    per_expert = expert_bytes(layer)
    read = expected_distinct(layer.experts.num_experts, picks, inputs) * per_expert
    merged = 2 * spec.batch_size * per_expert if isinstance(layer, MergedExperts) else 0
    return read + merged


def native_block_bytes(block: NativeMoE, spec: Spec) -> float:
    """A native host's own block (`moe`): the experts its tokens touch, read once."""
    per_expert = _numel_bytes(list(block.experts.parameters())) / block.num_experts
    return expected_distinct(block.num_experts, block.top_k, spec.batch_size * spec.seq_len) * per_expert


def linear_widths(module: nn.Module) -> list[int] | None:
    """Feature widths a row passes through in this module, if it is a linear site."""
    if isinstance(module, SparseLayer):
        dims = module.experts.dims  # inner widths of an FFN expert are written, then read
        return [dims[0], *[d for d in dims[1:-1] for _ in range(2)], dims[-1]]
    if isinstance(module, NativeMoE):  # the model's own experts: H -> I -> H per row
        d, d_ff = module.hidden, module.expert_width
        return [d, d_ff, d_ff, d]
    if isinstance(module, nn.Linear):
        return [module.in_features, module.out_features]
    if type(module).__name__ == "Conv1D":  # GPT-2's linear: weight (in, out), `nf` outputs
        return [module.weight.shape[0], module.nf]
    return None


def _outside_sparse(model: nn.Module) -> list[tuple[str, nn.Module]]:
    sparse = [name + "." for name, m in model.named_modules()
              if isinstance(m, (SparseLayer, NativeMoE))]
    return [(name, m) for name, m in model.named_modules()
            if not any(name.startswith(prefix) for prefix in sparse)]


def bytes_moved(spec: Spec, model: nn.Module | None = None) -> int:
    """Bytes one forward of the spec's model must move at least (see the module doc)."""
    model = model if model is not None else build_model(spec, device="meta")
    itemsize = torch_dtype(spec).itemsize
    rows = spec.batch_size * spec.seq_len
    layers = sparse_layers(model)
    native = [m for m in model.modules() if isinstance(m, NativeMoE)]
    expert_params = {id(p) for layer in [*layers, *native] for p in layer.experts.parameters()}
    dense = [p for p in model.parameters() if id(p) not in expert_params]
    total = (_numel_bytes(dense) + sum(sparse_layer_bytes(layer, spec) for layer in layers)
             + sum(native_block_bytes(block, spec) for block in native))
    for _, module in _outside_sparse(model):
        widths = linear_widths(module)
        total += 0 if widths is None else rows * sum(widths) * itemsize
    return int(total)


# ------------------------------------------------------------------ one configuration's bound
def configuration_bound(spec: Spec, model: nn.Module | None = None) -> RooflineBound | None:
    """The bound from the analytic macs of `spec`; None where no closed form exists."""
    try:
        macs = count(spec).macs
    except SpecError:  # XMoE's cost depends on its routing: no closed form, no bound
        return None
    return roofline(spec, macs, bytes_moved(spec, model))
