"""Closed-form multiply-adds (MACs) and parameters for every host and variant.

Same convention as the fvcore counter (one multiply-add = one MAC; layer_norm 5 per element;
activations, softmax, routing bookkeeping 0), so the two must agree to the integer; tests hold
them to that on a grid. Symbols: B batch, T sequence length, N = B*T tokens, d model width,
f FFN width, E experts, k selected, V vocabulary, L blocks with an FFN.

Per MoE layer with expert matrices of sizes P = sum_j d_j * d_{j+1} (bias b = sum_j d_{j+1}),
reading d_0 features (the MEO paper, Sec. 3, per MoE linear):
    vanilla top-k (token or sequence routing)   experts N*k*P
    MEO                                          experts N*P      merge B*k*(P + b)  [gather, fused]
                                                                  merge B*E*(P + b)  [dense]
    router: token level N*d_0*E; sequence level B*d_0*E (on the mean token)
so MEO / vanilla for one linear = (N*P + B*k*P) / (N*k*P) = 1/k + 1/T.

A workload is a list of calls (models/conditions.py `workload_calls`), each counted with the
formulas above read at its own shape (`CallShape`): T tokens per sequence, attention over K
keys (a decode step: T = 1, K = C + 1, the KV cache read; a prefill: K = T = L), and summed:
    decode              one step after C tokens; with `--merge-reuse sequence` a merging
                        variant's step has no router and no merge, only experts B*P (Lory's
                        prompt then routes and merges once more, on its last segment)
    generate:N          the prompt (T = K = L) + N steps (T = 1, K = L + N)
(a decode step of the merging family below makes G = B merged experts: one token per sequence).

The merging family, every input reading all E experts (G merged experts per layer: B for
SMEAR, B*S for Lory, whose sequences split into S segments of --segment-len tokens; Soft MoE
has S' = E*p slots, p per expert):
    smear, lory   experts N*P     merge G*E*(P + b)    router G*d_0*(E + 5)  [LayerNorm: 5/element]
    soft-moe      experts B*S'*P  router N*d_0*S'      dispatch N*S'*d_0     combine N*S'*d_out

Native MoE hosts (meo_profile/measure/analytic_native.py has the rest of the model per family)
have SwiGLU experts, P = 3*d*f (gate and up, then down), and an MoE site only where the model
has a sparse layer. `moe` there is the model's own block: its router and its k experts per
token cost what the vanilla line says, whatever its gate convention.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from meo_profile.measure import analytic_native
from meo_profile.measure.counts import Counts
from meo_profile.models.catalog import host_shape
from meo_profile.models.conditions import Call, cache_length, workload_calls
from meo_profile.models.hosts import gpt2_positions
from meo_profile.models.merging import merge_groups
from meo_profile.models.spec import Spec, SpecError
from meo_profile.models.variants import VARIANTS

LAYER_NORM_MACS_PER_ELEMENT = 5  # fvcore's rule for an affine layer_norm


def expert_dims(spec: Spec) -> list[list[int]]:
    """The expert shapes of one FFN site: two MoE linears (`linear`) or one FFN (`ffn`). A
    SwiGLU host's fused (gate | up) projection is 2 * d_ff wide as a linear expert."""
    d, f = spec.d_model, spec.d_ff // (spec.granularity or 1)
    up = 2 * spec.d_ff if _gated(spec) else spec.d_ff
    return [[d, up], [spec.d_ff, d]] if spec.expert_unit == "linear" else [[d, f, d]]


def _gated(spec: Spec, dims: list[int] | None = None) -> bool:
    """SwiGLU experts: a whole-FFN expert of a gated host has its first matrix twice as wide."""
    return host_shape(spec.host).gated and (dims is None or len(dims) > 2)


def _matrix_sizes(dims: list[int], gated: bool = False) -> tuple[int, int]:
    """(P, b): weight elements and bias elements of one expert (gated: gate and up matrices)."""
    first = dims[0] * dims[1] if gated else 0
    return (first + sum(a * b for a, b in zip(dims, dims[1:])), (dims[1] if gated else 0) + sum(dims[1:]))


def _sizes(spec: Spec, dims: list[int]) -> tuple[int, int]:
    return _matrix_sizes(dims, _gated(spec, dims))


# ------------------------------------------------------------------- one MoE layer's MACs
def _vanilla(spec: Spec, dims: list[int], token_router: bool) -> Counter:
    N, B, E, k = spec.batch_size * spec.seq_len, spec.batch_size, spec.experts_total, spec.top_k
    P, _ = _sizes(spec, dims)
    routed = N if token_router else B
    return Counter(experts=N * k * P, router=routed * dims[0] * E)


def _meo(spec: Spec, dims: list[int], token_block: bool = False) -> Counter:
    N, B, E, k = spec.batch_size * spec.seq_len, spec.batch_size, spec.experts_total, spec.top_k
    P, b = _sizes(spec, dims)
    bias = b if host_shape(spec.host).bias else 0
    merged_from = E if spec.impl_by_rule == "dense" else k  # gather and fused read the k chosen
    macs = Counter(experts=N * P, router=B * dims[0] * E, merge=B * merged_from * (P + bias))
    if token_block:
        r = max(1, dims[0] // 64)
        macs["token_block"] = N * 2 * dims[0] * r
    return macs


def _compressed(spec: Spec, dims: list[int]) -> Counter:
    """Compressed experts: m = k - n_ce experts in full; the n_ce vectors of width
    V = sum of the expert's matrix input widths are averaged per token (one bmm)."""
    N, E, k, n_ce = spec.batch_size * spec.seq_len, spec.experts_total, spec.top_k, spec.n_ce
    P, _ = _sizes(spec, dims)
    return Counter(experts=N * (k - n_ce) * P, compress=N * n_ce * _vector_width(spec, dims),
                   router=N * dims[0] * E)


def _router_params(spec: Spec, d_in: int) -> int:
    """A linear gate d_in x E; SMEAR's (Lory's) adds a bias and a LayerNorm (2 d_in); Soft
    MoE's has one d_in vector per slot and a learned scale."""
    E = spec.experts_total
    if spec.variant == "soft-moe":
        return d_in * E * spec.slots_per_expert + 1
    if spec.variant in ("smear", "lory"):
        return d_in * E + E + 2 * d_in
    return d_in * E


def _vector_width(spec: Spec, dims: list[int]) -> int:
    """A compressed expert's vector: one scale per matrix input (SwiGLU: gate and up apart)."""
    return sum(dims[:-1]) + (dims[0] if _gated(spec, dims) else 0)


def _merge_all(spec: Spec, dims: list[int]) -> Counter:
    """SMEAR and Lory: all E experts merged for each of G groups (sequences or segments), one
    matmul per token; each group routed by a LayerNorm and a linear with bias."""
    N, E, G = spec.batch_size * spec.seq_len, spec.experts_total, merge_groups(spec)
    P, b = _sizes(spec, dims)
    bias = b if host_shape(spec.host).bias else 0
    d_in = dims[0]
    return Counter(experts=N * P, merge=G * E * (P + bias),
                   router=G * d_in * (E + LAYER_NORM_MACS_PER_ELEMENT))


def _soft_moe(spec: Spec, dims: list[int]) -> Counter:
    """Soft MoE: S = E*p slots, each a mix of the sequence's tokens; experts run on slots."""
    N, B, S = spec.batch_size * spec.seq_len, spec.batch_size, spec.experts_total * spec.slots_per_expert
    P, _ = _sizes(spec, dims)
    d_in, d_out = dims[0], dims[-1]
    return Counter(router=N * d_in * S, dispatch=N * S * d_in, experts=B * S * P,
                   combine=N * S * d_out)


def _dense(spec: Spec, dims: list[int]) -> Counter:
    return Counter(ffn=spec.batch_size * spec.seq_len * _sizes(spec, dims)[0])


LAYER_MACS: dict[str, Callable[[Spec, list[int]], Counter]] = {
    "dense": _dense,
    "moe": lambda spec, dims: _vanilla(spec, dims, token_router=True),
    "moe-seq": lambda spec, dims: _vanilla(spec, dims, token_router=False),
    "meo": _meo,
    "meo-token": lambda spec, dims: _meo(spec, dims, token_block=True),
    "ce": _compressed,
    "smear": _merge_all,
    "lory": _merge_all,
    "soft-moe": _soft_moe,
}


def _layer_params(spec: Spec, dims: list[int]) -> tuple[int, int]:
    """(total, inactive-per-token) parameters of the MoE layer (or dense linear) over `dims`."""
    P, b = _sizes(spec, dims)
    per_expert = P + (b if host_shape(spec.host).bias else 0)
    if spec.variant == "dense":
        return per_expert, 0
    E, k = spec.experts_total, spec.top_k
    total = E * per_expert + _router_params(spec, dims[0])
    if spec.variant == "meo-token":
        r = max(1, dims[0] // 64)
        total += dims[0] * r + r + r * dims[0] + dims[0]  # the token block: down, up
    if spec.variant == "ce":  # one vector per expert; a token reads m experts and n_ce vectors
        V, n_ce = _vector_width(spec, dims), spec.n_ce
        return total + E * V, (E - k + n_ce) * per_expert + (E - n_ce) * V
    return total, (E - k) * per_expert


# --------------------------------------------------------------------- host non-FFN parts
def _ln(spec: Spec, count: int) -> int:
    return LAYER_NORM_MACS_PER_ELEMENT * spec.batch_size * spec.seq_len * spec.d_model * count


def _self_attention(spec: Spec, bias: bool = True) -> tuple[int, int]:
    """(MACs, params) of one self-attention: q, k, v, o projections and both score products,
    T queries against K keys (the KV cache's length at decode)."""
    B, T, d = spec.batch_size, spec.seq_len, spec.d_model
    K = getattr(spec, "keys", T)
    return 4 * B * T * d * d + 2 * B * T * K * d, 4 * (d * d + (d if bias else 0))


def _bert(spec: Spec) -> tuple[Counter, int]:
    N, d, L, V = spec.batch_size * spec.seq_len, spec.d_model, spec.layers, host_shape(spec.host).vocab
    attn_macs, attn_params = _self_attention(spec)
    positions = max(512, spec.seq_len)
    macs = Counter(attention=L * attn_macs, head=N * d * d + N * d * V, norm=_ln(spec, 2 * L + 2))
    params = (V * d + positions * d + 2 * d + 2 * d  # word, position, type embeddings; LN
              + L * (attn_params + 2 * 2 * d)  # attention, two LNs per block
              + d * d + d + 2 * d + V)  # head: transform, LN, decoder bias (weight tied)
    return macs, params


def _gpt2(spec: Spec) -> tuple[Counter, int]:
    N, d, L, V = spec.batch_size * spec.seq_len, spec.d_model, spec.layers, host_shape(spec.host).vocab
    attn_macs, attn_params = _self_attention(spec)
    positions = gpt2_positions(spec)
    macs = Counter(attention=L * attn_macs, head=N * d * V, norm=_ln(spec, 2 * L + 1))
    params = V * d + positions * d + L * (attn_params + 2 * 2 * d) + 2 * d  # lm_head tied
    return macs, params


def _t5(spec: Spec) -> tuple[Counter, int]:
    N, d, V, H = spec.batch_size * spec.seq_len, spec.d_model, host_shape(spec.host).vocab, host_shape(spec.host).heads
    half = spec.layers // 2
    attn_macs, attn_params = _self_attention(spec, bias=False)
    # encoder blocks: self-attention; decoder blocks: self- and cross-attention (equal lengths).
    # T5's norms are RMS norms (no aten::layer_norm): 0 MACs, listed among skipped ops.
    macs = Counter(attention=half * attn_macs + half * 2 * attn_macs, head=N * d * V)
    buckets = 32  # relative position buckets, one bias table per stack (first block)
    params = (V * d + half * (attn_params + 2 * d) + d  # shared embedding; encoder; final norm
              + half * (2 * attn_params + 3 * d) + d  # decoder blocks; final norm
              + 2 * buckets * H)
    return macs, params


def _bart(spec: Spec) -> tuple[Counter, int]:
    N, d, V = spec.batch_size * spec.seq_len, spec.d_model, host_shape(spec.host).vocab
    half = spec.layers // 2
    attn_macs, attn_params = _self_attention(spec)
    positions = max(1024, spec.seq_len) + 2  # BART's learned positions are offset by 2
    macs = Counter(attention=half * attn_macs + half * 2 * attn_macs, head=N * d * V,
                   norm=_ln(spec, (1 + 2 * half) + (1 + 3 * half)))
    params = (V * d + 2 * (positions * d + 2 * d)  # shared embedding; per stack positions + LN
              + half * (attn_params + 2 * 2 * d)  # encoder blocks
              + half * (2 * attn_params + 3 * 2 * d))  # decoder blocks
    return macs, params


HOST_PARTS: dict[str, Callable[[Spec], tuple[Counter, int]]] = {
    "layer": lambda spec: (Counter(), 0),
    "bert-small": _bert, "bert-base": _bert, "bert-large": _bert,
    "gpt2": _gpt2, "t5-small": _t5, "bart-base": _bart,
}


# ------------------------------------------------------------------------------- the model
class CallShape:
    """The spec as one call of its workload reads it: `seq_len` is the call's tokens per
    sequence (T), `keys` the positions its attention reads (K), `chooses` whether the layers
    that route a sequence as a whole route and merge in it, `keeps` whether later steps keep
    its choice, `cache_positions` the KV cache's length (T without one); every other field is
    the spec's."""

    def __init__(self, spec: Spec, call: Call):
        self.whole, self.seq_len, self.keys = spec, call.tokens, call.keys
        self.chooses, self.keeps = call.chooses, call.keeps
        self.cache_positions = cache_length(spec) if call.cached else call.tokens

    def __getattr__(self, name: str) -> Any:
        return getattr(self.whole, name)


NOT_CHOSEN = ("router", "merge")  # what a step that reuses its prompt's choice does not run


def count(spec: Spec) -> Counts:
    """MACs by part and parameters of one call of the spec's workload, in closed form."""
    if spec.host not in HOST_PARTS and not host_shape(spec.host).native:
        raise SpecError("host", spec.host, "has no closed form here; count it with --source fvcore")
    if spec.variant not in LAYER_MACS:  # XMoE's cost depends on where the router sends tokens
        raise SpecError("variant", spec.variant, "has a data-dependent cost and no closed form; "
                        "count it with --source fvcore")
    macs = Counter()
    for call in workload_calls(spec):
        macs += _times(_call_macs(CallShape(spec, call)), call.times)
    params_total, inactive = _params(spec)
    parts = {k: v for k, v in sorted(macs.items()) if v}
    return Counts(macs=sum(parts.values()), macs_by_part=parts, params_total=params_total,
                  params_active=params_total - inactive, source="analytic")


def _host(spec: Spec) -> tuple[Counter, int, int]:
    """(MACs by part, parameters, MoE sites) of the host around its MoE sites."""
    if host_shape(spec.host).native:  # the MoE sites are the sparse layers only
        return analytic_native.host_parts(spec)
    macs, params = HOST_PARTS[spec.host](spec)
    return macs, params, spec.layers


def _call_macs(shape: CallShape) -> Counter:
    macs, _, sites = _host(shape)
    for dims in expert_dims(shape):
        layer = LAYER_MACS[shape.variant](shape, dims)
        if not shape.chooses:
            layer = Counter({k: v for k, v in layer.items() if k not in NOT_CHOSEN})
        if shape.keeps and VARIANTS[shape.variant].routes == "segment":
            layer += kept_choice(shape, dims)
        macs += _times(layer, sites)
    return macs


def kept_choice(shape: CallShape, dims: list[int]) -> Counter:
    """What a segment-routed prompt (Lory's) adds to keep its choice for the steps: one more
    routing and merge per sequence, on its last segment's mean, as one token per sequence
    would route and merge."""
    one_token = CallShape(shape.whole, Call(1, 1))
    layer = LAYER_MACS[shape.variant](one_token, dims)
    return Counter({k: v for k, v in layer.items() if k in NOT_CHOSEN})


def _params(spec: Spec) -> tuple[int, int]:
    """(total, inactive per token) parameters of the model, whatever the workload."""
    _, params_total, sites = _host(spec)
    inactive = 0
    for dims in expert_dims(spec):
        layer_total, layer_idle = _layer_params(spec, dims)
        params_total += sites * layer_total
        inactive += sites * layer_idle
    return params_total, inactive


def _times(counter: Counter, n: int) -> Counter:
    return Counter({k: v * n for k, v in counter.items()})
