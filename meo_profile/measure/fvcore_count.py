"""FLOP counting with fvcore, made exact for what our models run.

Convention (fvcore's): one multiply-add counts as one MAC. Records carry `macs` and
`flops = 2 * macs`. What counts:
- every matmul-like op (linear, addmm, mm, bmm, matmul, baddbmm, grouped_mm): output elements
  times the contraction length, which is exact for any broadcast (fvcore's own matmul handle
  undercounts broadcast batch dimensions, and it has no grouped_mm handle);
- scaled_dot_product_attention: B*H*Tq*Tk*(D_qk + D_v), both products, dense (a causal kernel
  may skip the masked half: the count does not);
- weighted embedding_bag (MEO's gather merge): rows summed x row width; the fused merge
  (`meo_profile::fused_merge`, one Triton kernel) the same: B x k x (P + bias) per call;
- layer_norm: fvcore's rule, 5 per element with an affine transform;
- everything else (softmax, topk, activations, adds, gathers...) counts 0 and is listed in
  `unsupported_ops` with its number of calls, never dropped silently.

The count comes from one traced forward. Where the implementation's shapes do not depend on the
data, it runs on the meta device (no weights in memory, so a 26 GB model counts in a second);
routing is frozen by the trace, but the counted implementations' costs do not depend on it.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterator

import torch
from torch import nn

from meo_profile.measure import stacks
from meo_profile.measure.counts import Counts
from meo_profile.measure.preflight import check_fits
from models import Spec, build_model, make_inputs
from models.catalog import host_shape
from models.compressed import CompressedVectors
from models.layers import Merger, SparseLayer, TokenBlock
from models.native import NativeMoE
from models.routing import Router
from models.xmoe import routing_summary

# Ops with arithmetic or data movement that fvcore ignores without a word; we list them.
_SURFACED_OPS = ("aten::relu", "aten::relu_", "aten::clamp", "aten::clamp_", "aten::floor",
                 "aten::floor_divide", "aten::remainder", "aten::eq", "aten::ge", "aten::gt",
                 "aten::__and__", "aten::bitwise_not", "aten::masked_fill", "aten::max",
                 "aten::gather", "aten::index", "aten::index_put_", "aten::nonzero")
HEAD_MODULE_NAMES = ("cls", "lm_head")  # BERT's MLM head; GPT-2/T5/BART language-model heads


# ------------------------------------------------------------------------------- handles
def _shape(value) -> list[int] | None:
    t = value.type()
    return t.sizes() if hasattr(t, "sizes") else None


def _matmul_like(k_input: int):
    """Handle: output elements x contraction length, K read from input `k_input`'s last dim."""

    def handle(inputs, outputs) -> int:
        return math.prod(_shape(outputs[0])) * _shape(inputs[k_input])[-1]

    return handle


def _sdpa(inputs, outputs) -> int:
    q, k, v = (_shape(x) for x in inputs[:3])  # (B, H, Tq, D), (B, Hk, Tk, D), (B, Hk, Tk, Dv)
    *batch, t_q, d_qk = q
    t_k, d_v = k[-2], v[-1]
    return math.prod(batch) * t_q * t_k * (d_qk + d_v)


def _weighted_bag(inputs, outputs) -> int:
    """embedding_bag(weight (E, P), indices (n,), ..., per_sample_weights): n rows of P summed
    with a weight each, n*P multiply-adds (MEO's gather merge)."""
    return math.prod(_shape(inputs[1])) * _shape(inputs[0])[1]


def _fused_merge(inputs, outputs) -> int:
    """meo_profile::fused_merge(w (E, d_out, d_in), b (E, d_out) or None, index (B, k), gates):
    one multiply-add per selected expert and merged element, weights and bias (as `gather`)."""
    batch_k = math.prod(_shape(inputs[2]))
    bias = _shape(inputs[1])
    return batch_k * (math.prod(_shape(inputs[0])[1:]) + (bias[1] if bias else 0))


def _zero_recorder(seen: Counter):
    def make(op: str):
        def handle(inputs, outputs) -> int:
            seen[op] += 1
            return 0

        return handle

    return make


HANDLES = {
    "aten::linear": _matmul_like(0),
    "aten::matmul": _matmul_like(0),
    "aten::mm": _matmul_like(0),
    "aten::bmm": _matmul_like(0),
    "aten::addmm": _matmul_like(1),
    "aten::baddbmm": _matmul_like(1),
    "aten::_grouped_mm": _matmul_like(0),
    "aten::scaled_dot_product_attention": _sdpa,
    "aten::embedding_bag": _weighted_bag,
    "meo_profile::fused_merge": _fused_merge,
    "aten::numel": None,  # metadata only
}


# ------------------------------------------------------------------------------ counting
@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """fvcore under torch 2.x warns about torch.jit and logs each skipped op; the skipped ops
    are kept in the record instead, so keep both off the user's screen."""
    logger = logging.getLogger("fvcore")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def count_fvcore(spec: Spec, max_memory_bytes: int | None = None) -> Counts:
    """Trace one forward of the spec's model with fvcore; meta device where shapes allow (else
    on real tensors, within `max_memory_bytes` or the free memory: DoesNotFit)."""
    try:
        return count_on_meta(spec)
    except (RuntimeError, NotImplementedError, TypeError):
        # data-dependent shapes (the per-expert loops, threshold routing) need real tensors;
        # so do some meta kernels under tracing (a conv1d shape check raises TypeError there)
        real = "cpu" if spec.device == "meta" else spec.device
        check_fits(spec.replace(device=real, mode="inference"), max_memory_bytes)  # a forward
        return _count_on(spec, real)


# Meta-device counts by configuration: on meta no value exists, so the count does not depend on
# dtype, device or seed, and a sweep over those (or `check` after a sweep) counts once.
_META_COUNTS: dict[Spec, Counts] = {}
_META_COUNTS_KEPT = 512


def count_on_meta(spec: Spec) -> Counts:
    """The meta-device count of `spec`, traced once per counting-relevant configuration; a
    stack of identical blocks is traced with one and two blocks (measure/stacks.py)."""
    key = spec.replace(device="meta", dtype="float32", seed=0)
    if key not in _META_COUNTS:
        if len(_META_COUNTS) >= _META_COUNTS_KEPT:
            _META_COUNTS.pop(next(iter(_META_COUNTS)))  # oldest first
        _META_COUNTS[key] = _count_stack(spec) if stacked(spec) else _count_on(spec, "meta")
    return copy.deepcopy(_META_COUNTS[key])  # callers may annotate their copy (note, routing)


def forget_counts() -> None:
    """Empty the meta-count cache (for a caller that changes how counting works, as tests do)."""
    _META_COUNTS.clear()


def stacked(spec: Spec) -> bool:
    """Whether the count may come from one- and two-block traces: the host's blocks all cost
    the same, and the model has more than two per stack (else the trace is as short)."""
    shape = host_shape(spec.host)
    return shape.uniform_blocks and spec.layers // _per_stack(spec) > 2


def _per_stack(spec: Spec) -> int:
    return 2 if host_shape(spec.host).seq2seq else 1  # encoder + decoder: one block each


def _count_stack(spec: Spec) -> Counts:
    one, two = (_count_on(spec.replace(layers=n * _per_stack(spec)), "meta") for n in (1, 2))
    return stacks.extend(one, two, spec.layers // _per_stack(spec))


def _count_on(spec: Spec, device: str) -> Counts:
    # grouped_mm's meta kernel accepts bf16 only; multiply-add counts do not depend on dtype
    build_spec = spec.replace(dtype="bfloat16") if device == "meta" else spec
    model = build_model(build_spec, device=device).eval()
    inputs = make_inputs(build_spec, device=device)
    with _quiet(), torch.no_grad():
        from fvcore.nn import FlopCountAnalysis  # its import warns about torch.jit: inside _quiet

        zero_ops: Counter = Counter()
        analysis = FlopCountAnalysis(model, inputs)
        analysis.set_op_handle(**HANDLES)
        record_zero = _zero_recorder(zero_ops)
        analysis.set_op_handle(**{op: record_zero(op) for op in _SURFACED_OPS})
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        analysis.tracer_warnings("none")
        total = int(analysis.total())
        skipped = Counter(analysis.unsupported_ops()) + zero_ops
        by_module_op = analysis.by_module_and_operator()
    params_total = sum(p.numel() for p in model.parameters())
    routing = routing_summary(model) if device != "meta" else {}
    return Counts(
        macs=total,
        macs_by_part=parts_from_modules(model, by_module_op),
        params_total=params_total,
        params_active=params_total - inactive_params(model),
        source="fvcore",
        count_device=device,
        unsupported_ops=dict(sorted(skipped.items())),
        macs_by_operator={k: int(v) for k, v in analysis.by_operator().items()},
        macs_by_module={k: int(v) for k, v in analysis.by_module().items()},
        routing=routing,
    )


def inactive_params(model: nn.Module) -> int:
    """Parameters one token does not read, summed over the MoE layers (each layer says what it
    reads: k experts for top-k routing, m experts and n_ce vectors for compressed experts, the
    mean kept count of the last forward for XMoE, k of E for a native host's own block)."""
    idle = 0
    for layer in model.modules():
        if isinstance(layer, (SparseLayer, NativeMoE)):
            idle += sum(p.numel() for p in layer.parameters()) - layer.params_active()
    return idle


# --------------------------------------------------------------------------------- parts
# Module type -> part, innermost first (a SparseLayer holds its router, merger, vectors).
PART_OF_TYPE = ((Router, "router"), (Merger, "merge"), (TokenBlock, "token_block"),
                (CompressedVectors, "compress"), (SparseLayer, "experts"))

def _part_of_module(name: str, module: nn.Module, tags: dict[int, str]) -> str | None:
    """The part a module's own ops belong to, or None to defer to its parent."""
    for kind, part in PART_OF_TYPE:
        if isinstance(module, kind):
            return part
    if id(module) in tags:
        return tags[id(module)]
    if name.rsplit(".", 1)[-1] in HEAD_MODULE_NAMES:
        return "head"
    if "Attention" in type(module).__name__:
        return "attention"
    return None


def parts_from_modules(model: nn.Module, by_module_op: dict[str, Counter]) -> dict[str, int]:
    """Assign every op to exactly one part: the innermost tagged module that owns it
    (layer_norm always to "norm"). fvcore's per-module counts include descendants, so a
    module's own ops are its count minus its children's."""
    modules = dict(model.named_modules())
    tags = module_tags(model)
    parts: Counter = Counter()
    for name, ops in by_module_op.items():
        own = Counter(ops)
        for child in _children(name, by_module_op):
            own.subtract(by_module_op[child])
        part = _nearest_part(name, modules, tags)
        for op, count in own.items():
            if count > 0:
                parts["norm" if op == "layer_norm" else part] += int(count)
    return dict(sorted(parts.items()))


def _children(name: str, names) -> list[str]:
    prefix = f"{name}." if name else ""
    depth = name.count(".") + 1 if name else 0
    return [n for n in names if n.startswith(prefix) and n != name and n.count(".") == depth]


def module_tags(model: nn.Module) -> dict[int, str]:
    """Parts a builder named by module, where types cannot tell: the dense variant's FFN
    (`ffn_modules`), a native host's own experts, router, shared experts and dense layers
    (`tagged_parts`)."""
    tags = {id(m): "ffn" for m in getattr(model, "ffn_modules", ())}
    tags.update((id(m), part) for m, part in getattr(model, "tagged_parts", ()))
    return tags


def _nearest_part(name: str, modules: dict[str, nn.Module], tags: dict[int, str]) -> str:
    while True:
        module = modules.get(name)
        part = _part_of_module(name, module, tags) if module is not None else None
        if part is not None:
            return part
        if not name:
            return "other"
        name = name.rsplit(".", 1)[0] if "." in name else ""
