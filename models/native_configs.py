"""The configs of native MoE hosts: the published models by name, a user's `config.json`, and
the spec's sizes written into either.

A native host is a transformers causal LM whose config says where its experts are. Named hosts
carry their released `config.json` values here (nothing is downloaded); `hf:PATH` reads a
user's file. Either way the config is kept as the plain dict of fields the config class is
built from, so that changing a size re-derives every field computed from it (DeepSeek-V3's
`qk_head_dim`, say) instead of leaving it stale.

Sizes (`--d-model`, `--d-ff`, `--layers`, `--experts`, `--top-k`) keep the family's shape:
- `--d-model` sets `hidden_size`; attention widths given explicitly (`head_dim`, MLA's ranks
  and head widths) scale by d_model / hidden_size, rotary ones to an even width; head counts
  stay, so without an explicit `head_dim` d_model must split into even heads;
- `--d-ff` sets the routed experts' width; the dense layers' and shared experts' widths scale
  by the same factor;
- `--layers` sets the depth; per-layer lists are cut (or repeated) to it, and dense first
  layers (`first_k_dense_replace`) are kept below the depth so that one MoE layer remains;
- `--experts`, `--top-k` set the router's E and k (whatever the family calls them); grouped
  routers (`n_group`, `topk_group`) are regrouped so that E splits into groups of two or
  more and the chosen groups hold at least k experts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meo_profile.models.conditions import cache_length
from meo_profile.models.errors import SpecError

HF_PREFIX = "hf:"

# Field names the families use for the same quantity, first match wins.
EXPERTS_FIELDS = ("num_local_experts", "num_experts", "n_routed_experts", "moe_num_experts")
TOP_K_FIELDS = ("num_experts_per_tok", "moe_k", "moe_topk")
EXPERT_WIDTH_FIELDS = ("moe_intermediate_size", "intermediate_size")
FFN_WIDTH_FIELDS = ("intermediate_size", "shared_expert_intermediate_size")
ATTENTION_WIDTH_FIELDS = ("head_dim", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim",
                          "qk_rope_head_dim", "v_head_dim")
ROTARY_FIELDS = ("head_dim", "qk_rope_head_dim")  # rotated in pairs: even widths
LAYER_LIST_FIELDS = ("layer_types",)
# Not the model's shape: a quantised checkpoint's format, remote code, weights' dtype (the host
# is built with random weights in --dtype).
IGNORED_FIELDS = ("quantization_config", "auto_map", "torch_dtype", "dtype", "architectures")


@dataclass(frozen=True)
class Published:
    """A released model: its config-class fields and the sizes its model card states."""

    model_type: str
    fields: dict[str, Any]
    checkpoint: str
    params_total: float  # as published, rounded
    params_active: float


PUBLISHED: dict[str, Published] = {
    "mixtral": Published("mixtral", dict(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, num_local_experts=8, num_experts_per_tok=2,
        tie_word_embeddings=False, max_position_embeddings=32768),
        "mistralai/Mixtral-8x7B-v0.1", 46.7e9, 12.9e9),
    "qwen2-moe": Published("qwen2_moe", dict(
        vocab_size=151936, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
        num_attention_heads=28, num_key_value_heads=4, moe_intermediate_size=2560,
        shared_expert_intermediate_size=20480, num_experts=64, num_experts_per_tok=8,
        decoder_sparse_step=1, norm_topk_prob=False, tie_word_embeddings=False, qkv_bias=True,
        max_position_embeddings=131072),
        "Qwen/Qwen2-57B-A14B", 57e9, 14e9),
    "qwen3-moe": Published("qwen3_moe", dict(
        vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=48,
        num_attention_heads=32, num_key_value_heads=4, head_dim=128, moe_intermediate_size=768,
        num_experts=128, num_experts_per_tok=8, decoder_sparse_step=1, norm_topk_prob=True,
        tie_word_embeddings=False, attention_bias=False, max_position_embeddings=40960),
        "Qwen/Qwen3-30B-A3B", 30.5e9, 3.3e9),
    # The multi-token-prediction layer (14B) is not part of the transformers model: 671B is
    # the main model's count, as DeepSeek's report gives it.
    "deepseek-v3": Published("deepseek_v3", dict(
        vocab_size=129280, hidden_size=7168, intermediate_size=18432, moe_intermediate_size=2048,
        num_hidden_layers=61, num_attention_heads=128, num_key_value_heads=128,
        n_shared_experts=1, n_routed_experts=256, num_experts_per_tok=8, routed_scaling_factor=2.5,
        kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, v_head_dim=128,
        qk_nope_head_dim=128, n_group=8, topk_group=4, first_k_dense_replace=3,
        norm_topk_prob=True, tie_word_embeddings=False, attention_bias=False),
        "deepseek-ai/DeepSeek-V3", 671e9, 37e9),
    # The class default width (2048) is not the checkpoint's (1024).
    "olmoe": Published("olmoe", dict(
        vocab_size=50304, hidden_size=2048, intermediate_size=1024, num_hidden_layers=16,
        num_attention_heads=16, num_key_value_heads=16, num_experts=64, num_experts_per_tok=8,
        norm_topk_prob=False, tie_word_embeddings=False, clip_qkv=None,
        max_position_embeddings=4096),
        "allenai/OLMoE-1B-7B-0924", 6.9e9, 1.3e9),
    # Long-context RoPE scaling has no parameters and is left out.
    "phimoe": Published("phimoe", dict(
        vocab_size=32064, hidden_size=4096, intermediate_size=6400, num_hidden_layers=32,
        num_attention_heads=32, num_key_value_heads=8, num_local_experts=16, num_experts_per_tok=2,
        attention_bias=True, lm_head_bias=True, tie_word_embeddings=False,
        max_position_embeddings=131072),
        "microsoft/Phi-3.5-MoE-instruct", 41.9e9, 6.6e9),
}


# ------------------------------------------------------------------------------ reading
@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """transformers logs its opinions of a config (RoPE factors, unused fields) to stderr; a
    refusal must stay one line and a count's output clean, so it speaks only of errors here."""
    from transformers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


def is_hf(host: str) -> bool:
    return host.startswith(HF_PREFIX)


@functools.cache
def read_hf_fields(host: str) -> dict[str, Any]:
    """The fields of `hf:PATH` (a config.json, or a folder holding one); SpecError naming the
    host on a missing file, unreadable JSON or a config without a known `model_type`."""
    path = Path(host[len(HF_PREFIX):]).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise SpecError("host", host, f"no config file at {path}")
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SpecError("host", host, f"unreadable JSON: {str(e).splitlines()[0]}") from None
    if not isinstance(fields, dict) or not isinstance(fields.get("model_type"), str):
        raise SpecError("host", host, "not a transformers config: no \"model_type\"")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if fields["model_type"] not in CONFIG_MAPPING:
        raise SpecError("host", host, f"model_type {fields['model_type']!r} is unknown to this "
                        "transformers")
    # Fields the class derives from others (a saved config writes them out) would override
    # what is derived from the sizes asked for: dropped, the class derives them again.
    dropped = set(IGNORED_FIELDS) | derived_fields(fields["model_type"])
    return {k: v for k, v in fields.items() if k not in dropped}


def base_fields(host: str) -> dict[str, Any]:
    """The host's config fields at its own sizes, `model_type` included."""
    if is_hf(host):
        return dict(read_hf_fields(host))
    published = PUBLISHED[host]
    return {"model_type": published.model_type, **published.fields}


@functools.cache
def class_defaults(model_type: str) -> dict[str, Any]:
    """The config class's own values, for fields a config.json leaves out (empty when the
    class cannot be built without arguments)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    try:
        with quiet_transformers():
            return CONFIG_MAPPING[model_type]().to_dict()
    except Exception:  # some classes need arguments; their files must then say everything
        return {}


def value(fields: dict[str, Any], name: str) -> Any:
    """A field's value: the file's, else the config class's default."""
    if name in fields:
        return fields[name]
    return class_defaults(fields["model_type"]).get(name)


def first_field(fields: dict[str, Any], names: tuple[str, ...]) -> str | None:
    """The first of `names` the config sets, else the first its class gives a value."""
    stated = [n for n in names if fields.get(n) is not None]
    if stated:
        return stated[0]
    return next((n for n in names if value(fields, n) is not None), None)


def expert_width_field(fields: dict[str, Any]) -> str | None:
    return first_field(fields, EXPERT_WIDTH_FIELDS)


# ------------------------------------------------------------------------------- sizes
@dataclass(frozen=True)
class OwnSizes:
    """A config's sizes in the spec's terms (d_ff: one routed expert's width)."""

    d_model: int
    d_ff: int
    layers: int
    experts: int
    top_k: int
    vocab: int
    heads: int
    explicit_head_dim: bool  # the config states head_dim (or MLA's widths): any d_model fits


def own_sizes(host: str) -> OwnSizes:
    fields = base_fields(host)
    if isinstance(fields.get("text_config"), dict):
        raise SpecError("host", host, "a multimodal config (text_config): give the text "
                        "model's own config.json")
    named = {"experts": first_field(fields, EXPERTS_FIELDS), "top_k": first_field(fields, TOP_K_FIELDS),
             "d_ff": expert_width_field(fields)}
    missing = [k for k, name in named.items() if name is None]
    if missing or value(fields, "hidden_size") is None:
        raise SpecError("host", host, f"no MoE fields ({', '.join(missing) or 'hidden_size'}) at "
                        "the config's top level: a dense model, or one that nests them (DBRX)")
    heads = value(fields, "num_attention_heads") or 1
    explicit = any(value(fields, f) for f in ("head_dim", "qk_nope_head_dim"))
    return OwnSizes(d_model=value(fields, "hidden_size"), d_ff=value(fields, named["d_ff"]),
                    layers=value(fields, "num_hidden_layers"),
                    experts=value(fields, named["experts"]), top_k=value(fields, named["top_k"]),
                    vocab=value(fields, "vocab_size"), heads=heads, explicit_head_dim=explicit)


def check_sizes(host: str, spec: Any) -> None:
    """Refuse sizes the host's attention cannot take (SpecError naming the flag)."""
    own = own_sizes(host)
    if own.explicit_head_dim or spec.d_model == own.d_model:
        return
    if spec.d_model % own.heads or (spec.d_model // own.heads) % 2:
        raise SpecError("d_model", spec.d_model, f"must split into {own.heads} heads of an even "
                        f"width (rotary embeddings) on {host}")


def _scaled(width: int, factor: float, even: bool = False) -> int:
    if even:
        return max(2, 2 * round(width * factor / 2))
    return max(1, round(width * factor))


def sized_fields(host: str, spec: Any) -> dict[str, Any]:
    """The host's config fields with the spec's sizes written in (see the module doc)."""
    fields, own = base_fields(host), own_sizes(host)
    out = dict(fields)
    if spec.d_model != own.d_model:
        out["hidden_size"] = spec.d_model
        _scale(out, fields, ATTENTION_WIDTH_FIELDS, spec.d_model / own.d_model)
    width = expert_width_field(fields)
    if spec.d_ff != own.d_ff:
        others = tuple(f for f in FFN_WIDTH_FIELDS if f != width)
        _scale(out, fields, others, spec.d_ff / own.d_ff)
        out[width] = spec.d_ff
    if spec.layers != own.layers:
        _set_depth(out, fields, own.layers, spec.layers)
    _set_all(out, fields, EXPERTS_FIELDS, spec.num_experts)
    _set_all(out, fields, TOP_K_FIELDS, spec.top_k)
    _regroup(out, fields, spec.num_experts, spec.top_k)
    positions = value(fields, "max_position_embeddings")
    if positions is not None:
        out["max_position_embeddings"] = max(positions, cache_length(spec))  # decode: C + 1
    return out


def _set_all(out: dict, fields: dict, names: tuple[str, ...], number: int) -> None:
    """Every name the file gives the quantity (a file may hold an alias beside its field; which
    one the class reads last is its business), else the one its class has."""
    stated = [n for n in names if fields.get(n) is not None]
    for name in stated or [first_field(fields, names)]:
        out[name] = number


def _scale(out: dict, fields: dict, names: tuple[str, ...], factor: float) -> None:
    for name in names:
        width = value(fields, name)
        if isinstance(width, int) and width > 0:
            out[name] = _scaled(width, factor, even=name in ROTARY_FIELDS)


def _set_depth(out: dict, fields: dict, own_layers: int, layers: int) -> None:
    out["num_hidden_layers"] = layers
    for name in LAYER_LIST_FIELDS:  # one entry per layer: the family's pattern, cut or repeated
        entries = value(fields, name)
        if isinstance(entries, list) and len(entries) == own_layers:
            out[name] = [entries[i % own_layers] for i in range(layers)]
    if isinstance(value(fields, "mlp_only_layers"), list):
        out["mlp_only_layers"] = [i for i in value(fields, "mlp_only_layers") if i < layers]
    dense_first = value(fields, "first_k_dense_replace")
    if isinstance(dense_first, int) and dense_first >= layers:
        out["first_k_dense_replace"] = max(0, layers - 1)  # keep one MoE layer


def _regroup(out: dict, fields: dict, experts: int, top_k: int) -> None:
    """Grouped top-k (DeepSeek-V3: E experts in n_group groups, the best topk_group groups
    searched): each group must hold two experts (a group scores by its best two) and the
    chosen groups at least k."""
    groups, chosen = value(fields, "n_group"), value(fields, "topk_group")
    if not (isinstance(groups, int) and isinstance(chosen, int)):
        return
    n = max(g for g in range(1, groups + 1) if experts % g == 0 and experts // g >= 2) \
        if experts >= 2 else 1
    per_group = experts // n
    out["n_group"] = n
    out["topk_group"] = min(n, max(math.ceil(chosen * n / groups), math.ceil(top_k / per_group)))


# ------------------------------------------------------------------------------ config
def derived_fields(model_type: str) -> set[str]:
    """Fields a config class computes from others (DeepSeek-V3's qk_head_dim): passed back in,
    they would overwrite what is derived from the new sizes."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = CONFIG_MAPPING[model_type]
    if not dataclasses.is_dataclass(cls):
        return set()
    own = {f.name for f in dataclasses.fields(cls)}
    # an alias and its attribute (Qwen3-MoE writes num_experts out as num_local_experts) hold
    # the file's own value, not a derived one
    aliases = {*cls.attribute_map, *cls.attribute_map.values()}
    keep = {"model_type", "_name_or_path", "output_attentions"}
    return set(class_defaults(model_type)) - own - keep - aliases


def make_config(host: str, spec: Any):
    """The transformers config of `host` at the spec's sizes (SpecError when the class
    refuses the values)."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    fields = sized_fields(host, spec)
    model_type = fields["model_type"]
    fields = {k: v for k, v in fields.items() if k not in derived_fields(model_type)}
    try:
        with quiet_transformers():
            return CONFIG_MAPPING[model_type].from_dict(fields)
    except Exception as e:  # the class's own validation: its message, on one line
        raise SpecError("host", host, f"the config class refuses these sizes: "
                        f"{type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
