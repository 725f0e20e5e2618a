"""Closed forms for the native MoE hosts, one per family, from the transformers config alone.

Same convention as the fvcore counter (meo_profile/measure/fvcore_count.py): a matmul-like op
counts output elements x contraction; SDPA counts B*heads*T*K*(D_qk + D_v) (K keys: T, or the
KV cache's length at decode, see analytic.CallShape); nn.LayerNorm 5 per
element; RMSNorm, activations, softmax, sigmoid, top-k, gathers, embeddings and bias adds 0.
Symbols: B batch, T sequence length, N = B*T tokens, H hidden width, V vocabulary, E experts,
k chosen, I one routed expert's width.

This module gives what surrounds the MoE sites, by part (the sites themselves, router and
routed experts, are the variant's and come from meo_profile/measure/analytic.py):
    attention       per layer N*(projection weights) + B*heads*T*K*(D_qk + D_v) (+ MLA's
                    latent expanded at every cached position, see `_latent_expansion`)
    shared_experts  per sparse layer N*3*H*I_shared (+ N*H for Qwen2-MoE's shared gate)
    dense_ffn       per dense layer N*3*H*I_dense (DeepSeek-V3's first layers, mlp_only_layers)
    head            N*H*V
    norm            5*N*H per nn.LayerNorm (Phi-3.5-MoE: 2 per layer + the final one)
and the parameters of everything but the sites (embeddings counted once when tied to the head;
buffers such as DeepSeek-V3's selection bias are not parameters).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from meo_profile.models import Spec
from meo_profile.models.errors import SpecError

LAYER_NORM_MACS_PER_ELEMENT = 5  # fvcore's rule for an affine layer_norm


@dataclass(frozen=True)
class Family:
    """What one family's model is made of, read off its config."""

    H: int
    V: int
    sparse: tuple[bool, ...]  # per decoder layer: a sparse MoE block (else a dense SwiGLU MLP)
    dense_I: int = 0  # width of the dense MLP of non-sparse layers
    shared_I: int = 0  # summed width of the shared expert(s)
    shared_gate: bool = False  # Qwen2-MoE: sigmoid(Linear(H, 1)) on the shared expert
    tied: bool = False
    head_bias: bool = False
    layer_norm: bool = False  # nn.LayerNorm (weight and bias, 5 MACs per element), not RMSNorm
    attention: dict = field(default_factory=dict)  # see _gqa, _mla


# ------------------------------------------------------------------------------ families
def _gqa(cfg, qkv_bias: bool, o_bias: bool, qk_norm: tuple[int, int] = (0, 0)) -> dict:
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    return dict(kind="gqa", heads=heads, kv_heads=cfg.num_key_value_heads, head_dim=head_dim,
                qkv_bias=qkv_bias, o_bias=o_bias, qk_norm=qk_norm)


def _qwen_sparse(cfg) -> tuple[bool, ...]:
    dense = set(cfg.mlp_only_layers or [])
    return tuple(i not in dense and cfg.num_experts > 0 and (i + 1) % cfg.decoder_sparse_step == 0
                 for i in range(cfg.num_hidden_layers))


def _common(cfg) -> dict:
    return dict(H=cfg.hidden_size, V=cfg.vocab_size, tied=bool(cfg.tie_word_embeddings))


def _mixtral(cfg) -> Family:
    return Family(**_common(cfg), sparse=(True,) * cfg.num_hidden_layers, attention=_gqa(cfg, False, False))


def _olmoe(cfg) -> Family:
    # q_norm over the whole query width (H), k_norm over the key width (H / heads * kv_heads)
    H, heads, kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    return Family(**_common(cfg), sparse=(True,) * cfg.num_hidden_layers,
                  attention=_gqa(cfg, cfg.attention_bias, cfg.attention_bias, (H, H // heads * kv)))


def _phimoe(cfg) -> Family:
    return Family(**_common(cfg), sparse=(True,) * cfg.num_hidden_layers, head_bias=cfg.lm_head_bias,
                  layer_norm=True, attention=_gqa(cfg, cfg.attention_bias, cfg.attention_bias))


def _qwen2_moe(cfg) -> Family:
    return Family(**_common(cfg), sparse=_qwen_sparse(cfg), dense_I=cfg.intermediate_size,
                  shared_I=cfg.shared_expert_intermediate_size, shared_gate=True,
                  attention=_gqa(cfg, cfg.qkv_bias, False))


def _qwen3_moe(cfg) -> Family:
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return Family(**_common(cfg), sparse=_qwen_sparse(cfg), dense_I=cfg.intermediate_size,
                  attention=_gqa(cfg, cfg.attention_bias, cfg.attention_bias, (head_dim, head_dim)))


def _deepseek_v3(cfg) -> Family:
    attention = dict(kind="mla", heads=cfg.num_attention_heads, q_rank=cfg.q_lora_rank,
                     kv_rank=cfg.kv_lora_rank, nope=cfg.qk_nope_head_dim,
                     rope=cfg.qk_rope_head_dim, v=cfg.v_head_dim, bias=cfg.attention_bias)
    sparse = tuple(i >= cfg.first_k_dense_replace for i in range(cfg.num_hidden_layers))
    return Family(**_common(cfg), sparse=sparse, dense_I=cfg.intermediate_size,
                  shared_I=cfg.moe_intermediate_size * cfg.n_shared_experts, attention=attention)


FAMILIES: dict[str, Callable[..., Family]] = {
    "mixtral": _mixtral, "olmoe": _olmoe, "phimoe": _phimoe, "qwen2_moe": _qwen2_moe,
    "qwen3_moe": _qwen3_moe, "deepseek_v3": _deepseek_v3,
}


def family_of(spec: Spec) -> Family:
    from meo_profile.models.native import host_config

    config = host_config(spec)
    if config.model_type not in FAMILIES:
        raise SpecError("host", spec.host, f"model_type {config.model_type!r} has no closed form "
                        f"here ({', '.join(FAMILIES)} do); count it with --source fvcore")
    return FAMILIES[config.model_type](config)


# ------------------------------------------------------------------------------ attention
def _attention(f: Family) -> tuple[int, int, int, int]:
    """(projection weights = MACs per token, other parameters (biases, norms), D_qk, D_v)."""
    a, H = f.attention, f.H
    if a["kind"] == "gqa":
        q, kv = a["heads"] * a["head_dim"], a["kv_heads"] * a["head_dim"]
        extra = (q + 2 * kv if a["qkv_bias"] else 0) + (H if a["o_bias"] else 0) + sum(a["qk_norm"])
        return H * q + 2 * H * kv + q * H, extra, a["head_dim"], a["head_dim"]
    # MLA: q = q_b(norm(q_a(x))) (or q_proj(x)); a latent kv_a(x) -> norm -> kv_b; o_proj.
    # The key's rotary part comes from kv_a, one head broadcast to all.
    heads, qk = a["heads"], a["nope"] + a["rope"]
    bias = a["bias"]
    if a["q_rank"] is None:
        q_w, q_extra = H * heads * qk, 0
    else:
        q_w = H * a["q_rank"] + a["q_rank"] * heads * qk
        q_extra = a["q_rank"] * (2 if bias else 1)  # q_a_layernorm (+ q_a's bias)
    kv_w = H * (a["kv_rank"] + a["rope"]) + a["kv_rank"] * heads * (a["nope"] + a["v"])
    kv_extra = a["kv_rank"] + ((a["kv_rank"] + a["rope"]) if bias else 0)
    o_w = heads * a["v"] * H
    return q_w + kv_w + o_w, q_extra + kv_extra + (H if bias else 0), qk, a["v"]


def _latent_expansion(f: Family, spec: Spec) -> int:
    """MLA with a KV cache: transformers caches the compressed latent and expands every
    position of the static cache through kv_b at each call, not only the call's T tokens
    (counted with them in `_attention`): B x (cache length - T) x kv_rank x heads x (nope + v)
    more per layer."""
    a = f.attention
    extra = getattr(spec, "cache_positions", spec.seq_len) - spec.seq_len
    if a["kind"] != "mla" or not extra:
        return 0
    return spec.batch_size * extra * a["kv_rank"] * a["heads"] * (a["nope"] + a["v"])


# ------------------------------------------------------------------------------- the host
def host_parts(spec: Spec) -> tuple[Counter, int, int]:
    """(MACs by part, parameters, MoE sites) of everything around the sparse blocks' routed
    experts and routers, for one forward of the spec's batch."""
    f = family_of(spec)
    H, V, B, T = f.H, f.V, spec.batch_size, spec.seq_len
    N, layers = B * T, len(f.sparse)
    n_sparse = sum(f.sparse)
    n_dense = layers - n_sparse
    attn_w, attn_extra, d_qk, d_v = _attention(f)
    shared = 3 * H * f.shared_I + (H if f.shared_gate else 0)  # weights per token, gate included
    K = getattr(spec, "keys", T)  # positions attention reads: the KV cache's length at decode
    macs = Counter(attention=layers * (N * attn_w + B * f.attention["heads"] * T * K * (d_qk + d_v)
                                       + _latent_expansion(f, spec)),
                   shared_experts=n_sparse * N * shared, dense_ffn=n_dense * N * 3 * H * f.dense_I,
                   head=N * H * V)
    if f.layer_norm:
        macs["norm"] = LAYER_NORM_MACS_PER_ELEMENT * N * H * (2 * layers + 1)
    norms = (2 if f.layer_norm else 1) * H * (2 * layers + 1)
    params = (V * H + (0 if f.tied else V * H) + (V if f.head_bias else 0) + norms
              + layers * (attn_w + attn_extra) + n_sparse * shared + n_dense * 3 * H * f.dense_I)
    return +macs, params, n_sparse
