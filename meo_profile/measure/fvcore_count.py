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
A decoding workload is counted call by call (models/decode.py `counted_calls`): a decode, its
step traced after the prompt ran; generate:N, its prompt traced, then one step traced and
counted N times (every step has the same shapes); the calls' counts add up (counts.combined).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from meo_profile.measure import stacks
from meo_profile.measure.counts import Counts, combined
from meo_profile.measure.preflight import check_fits
from meo_profile.measure.stacks import block_roots
from meo_profile.models import Spec, build_model, make_inputs
from meo_profile.models.catalog import host_shape
from meo_profile.models.compressed import CompressedVectors
from meo_profile.models.conditions import parse_workload
from meo_profile.models.decode import counted_calls
from meo_profile.models.layers import Merger, SparseLayer, TokenBlock
from meo_profile.models.native import NativeMoE
from meo_profile.models.routing import Router
from meo_profile.models.soft_moe import SlotCombine, SlotDispatch
from meo_profile.models.xmoe import routing_summary

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


# An op fvcore would skip without a word is given a handle that records one call under this
# prefix: fvcore then keeps its calls per module, like the ops it reports as unsupported.
CALLS = "calls:"


def _record_call(op: str):
    def handle(inputs, outputs) -> Counter:
        return Counter({CALLS + op: 1})

    return handle


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


def count_fvcore(spec: Spec, max_memory_bytes: int | None = None,
                 built: tuple[nn.Module, tuple[torch.Tensor, ...]] | None = None) -> Counts:
    """Trace one forward of the spec's model with fvcore; meta device where shapes allow (else
    on real tensors, within `max_memory_bytes` or the free memory: DoesNotFit). `built`, the
    spec's model in eval mode and its inputs where a caller holds them already (a sweep that
    times the configuration), is traced instead of building them again."""
    try:
        return count_on_meta(spec)
    except (RuntimeError, NotImplementedError, TypeError):
        # data-dependent shapes (the per-expert loops, threshold routing) need real tensors;
        # so do some meta kernels under tracing (a conv1d shape check raises TypeError there)
        if built is not None and not built[0].training:
            return _Trace.of_model(*built, device=spec.device).counts()
        real = "cpu" if spec.device == "meta" else spec.device
        check_fits(spec.replace(device=real, mode="inference"), max_memory_bytes)  # a forward
        return _count_on(spec, real)


# Meta-device counts by configuration: on meta no value exists, so the count does not depend on
# dtype, device or seed, and a sweep over those (or `check` after a sweep) counts once.
_META_COUNTS: dict[Spec, Counts] = {}
_META_COUNTS_KEPT = 512


def count_on_meta(spec: Spec) -> Counts:
    """The meta-device count of `spec`, traced once per counting-relevant configuration; a
    stack of identical blocks is traced with one block per stack (measure/stacks.py)."""
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
    """Whether the count may come from a shorter trace: the host's blocks all cost the same,
    and the model has more blocks per stack than that trace."""
    shape = host_shape(spec.host)
    return shape.uniform_blocks and spec.layers // _per_stack(spec) > _traced_blocks(spec)


def _per_stack(spec: Spec) -> int:
    return 2 if host_shape(spec.host).seq2seq else 1  # encoder + decoder: one block each


def _traced_blocks(spec: Spec) -> int:
    """Blocks per stack in the short trace: the first block, and one more where it differs."""
    return 2 if host_shape(spec.host).first_block_differs else 1


def _count_stack(spec: Spec) -> Counts:
    traced_blocks = _traced_blocks(spec)
    calls = []
    for trace, times in _Trace.calls(spec.replace(layers=traced_blocks * _per_stack(spec)), "meta"):
        roots = block_roots(trace.ops, traced_blocks - 1)
        if len(roots) != _per_stack(spec):  # blocks not found by name: trace the whole model
            return _count_on(spec, "meta")
        calls.append((stacks.extend(trace.counts(), trace.counts(roots), roots,
                                    spec.layers // _per_stack(spec)), times))
    return combined(calls)


def _count_on(spec: Spec, device: str) -> Counts:
    return combined([(trace.counts(), times) for trace, times in _Trace.calls(spec, device)])


@dataclass
class _Trace:
    """One fvcore-traced forward: MACs and recorded calls per module and operator (each module
    holds its descendants' ops, as fvcore counts), and the ops fvcore left unsupported."""

    model: nn.Module
    device: str
    ops: dict[str, Counter]
    unsupported: dict[str, Counter]

    @classmethod
    def calls(cls, spec: Spec, device: str) -> list[tuple[_Trace, int]]:
        """A trace of each distinct call of the spec's workload, with the times it is made."""
        # grouped_mm's meta kernel accepts bf16 only; multiply-add counts do not depend on dtype
        build_spec = spec.replace(dtype="bfloat16") if device == "meta" else spec
        model = build_model(build_spec, device=device).eval()
        if not parse_workload(spec.workload).decodes:
            return [(cls.of_model(model, make_inputs(build_spec, device=device), device), 1)]
        with torch.no_grad():  # the prompts run outside the traces, as they do inside
            return [(cls.of_model(_Called(model, call), (x,), device), times)
                    for call, x, times in counted_calls(model, build_spec, device)]

    @classmethod
    def of_model(cls, model: nn.Module, inputs: tuple[torch.Tensor, ...], device: str) -> _Trace:
        with _quiet(), torch.no_grad():
            # fvcore's import warns about torch.jit: inside _quiet
            from fvcore.nn import FlopCountAnalysis

            analysis = FlopCountAnalysis(model, inputs)
            analysis.set_op_handle(**HANDLES)
            analysis.set_op_handle(**{op: _record_call(op) for op in _SURFACED_OPS})
            analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            analysis.tracer_warnings("none")
            ops = analysis.by_module_and_operator()
            unsupported = {name: analysis.unsupported_ops(name) for name in ops}
        return cls(model, device, ops, unsupported)

    def counts(self, roots: list[str] | None = None) -> Counts:
        """The count of the modules `roots` (with their descendants), or of the whole model."""
        roots = roots or [""]
        under = [n for n in self.ops if any(_within(n, r) for r in roots)]
        macs = {n: _macs(self.ops[n]) for n in under}
        by_operator, skipped = Counter(), Counter()
        for root in roots:
            by_operator.update(macs[root])
            skipped.update(self.unsupported[root])
            skipped.update({op[len(CALLS):]: n for op, n in self.ops[root].items()
                            if op.startswith(CALLS)})
        modules = [self.model.get_submodule(r) for r in roots]
        params_total = sum(p.numel() for p in _unique_params(modules))
        return Counts(
            macs=sum(by_operator.values()),
            macs_by_part=parts_from_modules(self.model, macs),
            params_total=params_total,
            params_active=params_total - sum(inactive_params(m) for m in modules),
            source="fvcore",
            count_device=self.device,
            unsupported_ops=dict(sorted(skipped.items())),
            macs_by_operator={k: int(v) for k, v in by_operator.items()},
            macs_by_module={n: int(sum(m.values())) for n, m in macs.items()},
            routing=routing_summary(self.model) if self.device != "meta" else {},
        )


class _Called(nn.Module):
    """One call of a decoding workload as a module to trace: the model its child (its modules
    keep their names, under `model.`), the call a function of one input."""

    def __init__(self, model: nn.Module, call):
        super().__init__()
        self.model, self.call = model, call

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.call(x)


def _within(name: str, root: str) -> bool:
    return not root or name == root or name.startswith(f"{root}.")


def _macs(ops: Counter) -> Counter:
    return Counter({op: n for op, n in ops.items() if not op.startswith(CALLS)})


def _unique_params(modules: list[nn.Module]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for module in modules:
        seen.update((id(p), p) for p in module.parameters())
    return list(seen.values())


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
                (CompressedVectors, "compress"), (SlotDispatch, "dispatch"),
                (SlotCombine, "combine"), (SparseLayer, "experts"))
# Parts whose layer norms are theirs, not the host's "norm": SMEAR's router normalises its input.
OWN_NORMS = ("router",)

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
    (layer_norm to "norm", unless a router normalises its own input). fvcore's per-module counts include descendants, so a
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
                host_norm = op == "layer_norm" and part not in OWN_NORMS
                parts["norm" if host_norm else part] += int(count)
    return dict(sorted(parts.items()))


def _children(name: str, names) -> list[str]:
    prefix = f"{name}." if name else ""
    depth = name.count(".") + 1 if name else 0
    return [n for n in names if n.startswith(prefix) and n != name and n.count(".") == depth]


def module_tags(model: nn.Module) -> dict[int, str]:
    """Parts a builder named by module, where types cannot tell: the dense variant's FFN
    (`ffn_modules`), a native host's own experts, router, shared experts and dense layers
    (`tagged_parts`)."""
    tags = {}
    for holder in model.modules():  # the built model, or the call that wraps it (decoding)
        tags.update((id(m), "ffn") for m in getattr(holder, "ffn_modules", ()))
        tags.update((id(m), part) for m, part in getattr(holder, "tagged_parts", ()))
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
