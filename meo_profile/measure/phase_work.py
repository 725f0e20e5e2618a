"""What each phase of one forward must compute and move at least: the roofline's inputs.

Convention: `macs` are multiply-adds, `bytes` what a phase must read and write at least once,
summed over the model's MoE layers; a phase is one of the layers' ranges (models/phases.py) or
`host`, everything outside the MoE layers (attention, embeddings, norms, heads, the dense FFN,
MEO's token block).

MACs come from the closed form (analytic.py), its parts mapped to phases (`PART_PHASE`). Bytes,
counted from the model's structure, for each MoE layer over N tokens of B sequences:
- router: its input rows read (the sequence router's mean reads every token too), its weights
  read, the chosen experts and gates written;
- experts: the weights of the distinct experts the routing touched, read once (at most
  min(N·k, E) for token routing, min(B·k, E) for sequence routing), plus every expert linear
  reading its input rows and writing its output rows; MEO's experts read the B merged matrices
  instead;
- merge (MEO): the experts it reads (distinct touched for `gather`, all E for the `dense`
  gate-matrix merge), and the B merged matrices written;
- compress (compressed experts): the distinct auxiliary experts' vectors read, the per-token
  scales written;
- dispatch and combine: nothing. A fused kernel gathers rows and sums the k outputs of a token
  inside the expert matmuls, so neither must move anything the experts phase does not count.
The distinct experts are those the layer's last forward touched (`SparseLayer.last_top_k_index`,
a native block's `NativeMoE.last_top_k_index`, compressed experts' auxiliary ones too) when a
forward ran on a real device, so the bound follows the routing that ran (`--routing`), else the
expected number when n routed inputs each pick k of E uniformly: E·(1 - (1 - k/E)^n). How
unevenly the pairs spread over those experts (`expert_load_max_over_mean`) changes no phase's
total MACs or bytes, so it stays out of the bound: a lower bound must hold for a kernel that
balances its work, and the record keeps the imbalance beside it.
The merging family: SMEAR and Lory as MEO with G merged experts per layer (one per sequence,
one per segment), each reading all E; Soft MoE's router reads the tokens and writes N x S
logits, its dispatch reads them and the tokens and writes the B x S slots, its experts read
all E experts and the slots' rows, its combine reads the logits and the slots' outputs and
writes the tokens'.

A workload is summed over its calls (models/conditions.py `workload_calls`), each read at its
own shape as the closed form reads it (analytic.CallShape), every call reading the host's
weights again. A decode step of a merging variant reads k·P per sequence and writes the B
merged matrices (`--merge-reuse step`), or reads the B merged matrices kept from the prompt and
nothing else (`sequence`: no router, no merge). A call on a causal host's KV cache also reads
its K keys and writes its T new positions, per sequence: the host's bytes. In a generate, the
prompt's distinct experts are the expected number (the last forward the model ran is a step).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from torch import nn

from meo_profile.measure.analytic import CallShape, count
from meo_profile.models import VARIANTS, Spec, sparse_layers, torch_dtype
from meo_profile.models.compressed import CompressedExperts
from meo_profile.models.conditions import Call, workload_calls
from meo_profile.models.decode import kv_bytes_per_position
from meo_profile.models.layers import SparseLayer, distinct_of, experts_touched
from meo_profile.models.merging import merge_groups
from meo_profile.models.native import NativeMoE
from meo_profile.models.phases import PHASES
from meo_profile.models.soft_moe import SoftMoE

HOST = "host"  # the host model's own work: everything outside the MoE layers' phases
BOUND_PHASES = (*PHASES, HOST)
# The closed form's parts by phase; every other part (attention, head, norm, ffn, token_block)
# is the host's own work.
PART_PHASE = {"router": "router", "experts": "experts", "merge": "merge", "compress": "compress",
              "dispatch": "dispatch", "combine": "combine"}
INDEX_BYTES = 8  # an expert index is int64


@dataclass(frozen=True)
class Work:
    macs: float = 0.0
    bytes: float = 0.0


def phase_work(spec: Spec, model: nn.Module) -> dict[str, Work]:
    """MACs and bytes per phase of one forward of `spec`'s model, in BOUND_PHASES order; phases
    with nothing to do are left out. A SpecError where no closed form exists (XMoE, MoE hosts)."""
    macs, moved = phase_macs(spec), phase_bytes(spec, model)
    return {p: Work(macs.get(p, 0.0), moved.get(p, 0.0)) for p in BOUND_PHASES
            if macs.get(p) or moved.get(p)}


def phase_macs(spec: Spec) -> Counter:
    out = Counter()
    for part, macs in count(spec).macs_by_part.items():
        out[PART_PHASE.get(part, HOST)] += macs
    return out


def phase_bytes(spec: Spec, model: nn.Module) -> Counter:
    """Bytes per phase of one call of the spec's workload, summed over its calls."""
    itemsize = torch_dtype(spec).itemsize
    layers = sparse_layers(model)
    native = [m for m in model.modules() if isinstance(m, NativeMoE)]
    calls = workload_calls(spec)
    out = Counter()
    for i, call in enumerate(calls):
        shape = CallShape(spec, call)
        moved = Counter({HOST: host_bytes(model, layers, native, shape, itemsize)})
        if call.cached:  # K positions read, T written, per sequence
            moved[HOST] += spec.batch_size * (call.keys + call.tokens) * kv_bytes_per_position(spec)
        for layer in layers:
            moved.update(layer_bytes(layer, shape, itemsize, last=i == len(calls) - 1))
            if call.keeps and VARIANTS[spec.variant].routes == "segment":  # see analytic.kept_choice
                kept = layer_bytes(layer, CallShape(spec, Call(1, 1)), itemsize, last=False)
                moved.update({p: kept[p] for p in ("router", "merge")})
        for block in native:
            moved.update(native_bytes(block, shape, itemsize, last=i == len(calls) - 1))
        out.update({p: call.times * b for p, b in moved.items()})
    return out


# ---------------------------------------------------------------------------- one MoE layer
def expected_distinct(num_experts: int, picks: int, inputs: int) -> float:
    """Distinct experts touched when `inputs` inputs each pick `picks` of E uniformly."""
    return num_experts * (1.0 - (1.0 - min(picks, num_experts) / num_experts) ** inputs)


def routed(spec: Spec) -> tuple[int, int]:
    """(inputs one MoE layer routes, experts each runs in full): tokens, sequences or segments
    by the variant's router; compressed experts run k - n_ce experts in full."""
    routes = VARIANTS[spec.variant].routes
    inputs = merge_groups(spec) if routes in ("sequence", "segment") else spec.batch_size * spec.seq_len
    return inputs, spec.top_k - (spec.n_ce or 0)


def distinct_experts(layer: SparseLayer, spec: Spec, last: bool = True) -> float:
    """Distinct experts the layer runs in full: as its last forward touched them (when the
    call is the kind of the last forward), else expected."""
    touched = experts_touched(layer) if last else None
    if touched is not None:
        return touched
    inputs, picks = routed(spec)
    return expected_distinct(layer.experts.num_experts, picks, inputs)


def _numel_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters())


def expert_bytes(layer: SparseLayer) -> int:
    """One expert's weights and biases."""
    return _numel_bytes(layer.experts) // layer.experts.num_experts


def layer_bytes(layer: SparseLayer, spec: Spec, itemsize: int, last: bool = True) -> Counter:
    """Bytes per phase of one MoE layer in one call (see the module doc); `spec` may be a call
    of a workload (analytic.CallShape), `last`: the call is the kind the model ran last."""
    if isinstance(layer, SoftMoE):
        return soft_moe_bytes(layer, spec, itemsize)
    tokens, B = spec.batch_size * spec.seq_len, merge_groups(spec)  # B: merged experts made
    per_expert, touched = expert_bytes(layer), distinct_experts(layer, spec, last)
    rows_io = tokens * sum(linear_widths(layer)) * itemsize
    chooses = getattr(spec, "chooses", True)  # False: a step reusing its prompt's choice
    out = Counter(router=router_bytes(layer, spec, itemsize) if chooses else 0)
    if VARIANTS[spec.variant].merges:
        if chooses:
            read = layer.experts.num_experts if layer.impl == "dense" else touched
            out["merge"] = (read + B) * per_expert  # read the experts, write one merged per sequence
        out["experts"] = B * per_expert + rows_io  # read the merged matrices
        block = getattr(layer, "token_block", None)
        if block is not None:
            out[HOST] += _numel_bytes(block) + tokens * itemsize * sum(
                sum(linear_widths(m)) for m in (block.down, block.up))
    else:
        out["experts"] = touched * per_expert + rows_io
    if isinstance(layer, CompressedExperts):
        out["compress"] = compress_bytes(layer, spec, itemsize, last)
    return out


def soft_moe_bytes(layer: SoftMoE, spec: Spec, itemsize: int) -> Counter:
    """Soft MoE's phases (see the module doc): N tokens, B*S slots."""
    tokens = spec.batch_size * spec.seq_len
    S = layer.router.w_gate.out_features
    slots, logits = spec.batch_size * S, tokens * S * itemsize
    d_in, d_out = layer.experts.d_in, layer.experts.d_out
    return Counter(
        router=tokens * d_in * itemsize + _numel_bytes(layer.router) + logits,
        dispatch=logits + (tokens + slots) * d_in * itemsize,
        experts=_numel_bytes(layer.experts) + slots * sum(linear_widths(layer)) * itemsize,
        combine=logits + (slots + tokens) * d_out * itemsize)


def native_bytes(block: NativeMoE, spec: Spec, itemsize: int, last: bool = True) -> Counter:
    """A native host's own MoE block (`moe`): the routed experts its tokens touch, read once,
    and each token's rows through them (H -> I -> H); its router and shared experts are host
    parameters, read once like the rest."""
    tokens = spec.batch_size * spec.seq_len
    per_expert = _numel_bytes(block.experts) / block.num_experts
    touched = experts_touched(block) if last else None  # its router's last choice, by a hook
    if touched is None:
        touched = expected_distinct(block.num_experts, block.top_k, tokens)
    rows_io = tokens * 2 * (block.hidden + block.expert_width) * itemsize
    return Counter(experts=touched * per_expert + rows_io)


def router_bytes(layer: SparseLayer, spec: Spec, itemsize: int) -> float:
    tokens = spec.batch_size * spec.seq_len
    inputs, _ = routed(spec)
    chosen = inputs * layer.router.top_k * (itemsize + INDEX_BYTES)  # gates and indices written
    return tokens * layer.experts.d_in * itemsize + _numel_bytes(layer.router) + chosen


def compress_bytes(layer: CompressedExperts, spec: Spec, itemsize: int,
                   last: bool = True) -> float:
    """Vectors of the distinct auxiliary experts read; one scale per token and input written."""
    tokens, width = spec.batch_size * spec.seq_len, layer.vectors.weight.shape[1]
    aux = distinct_of(layer.last_aux_index) if last else None
    if aux is None:
        aux = expected_distinct(layer.experts.num_experts, layer.n_ce, tokens)
    return (aux + tokens) * width * itemsize


def linear_widths(module: nn.Module) -> list[int] | None:
    """Feature widths a row passes through in this module, if it is a linear site."""
    if isinstance(module, SparseLayer):
        dims = module.experts.dims  # inner widths of an FFN expert are written, then read
        return [dims[0], *[d for d in dims[1:-1] for _ in range(2)], dims[-1]]
    if isinstance(module, nn.Linear):
        return [module.in_features, module.out_features]
    if type(module).__name__ == "Conv1D":  # GPT-2's linear: weight (in, out), `nf` outputs
        return [module.weight.shape[0], module.nf]
    return None


# ---------------------------------------------------------------------------- the host
def host_bytes(model: nn.Module, layers: list[SparseLayer], native: list[NativeMoE], spec: Spec,
               itemsize: int) -> int:
    """The host's own parameters read once (a native block's routed experts excepted: they are
    the experts phase's), and every linear outside the MoE layers reading its input rows and
    writing its output rows."""
    inside = {id(p) for layer in layers for p in layer.parameters()}
    inside |= {id(p) for block in native for p in block.experts.parameters()}
    params = sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in inside)
    sparse = tuple(name + "." for name, m in model.named_modules() if isinstance(m, SparseLayer))
    rows = spec.batch_size * spec.seq_len
    activations = sum(rows * sum(widths) * itemsize for name, m in model.named_modules()
                      if not isinstance(m, SparseLayer) and not name.startswith(sparse)
                      and (widths := linear_widths(m)) is not None)
    return params + activations
