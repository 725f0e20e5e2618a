"""Host models: where the MoE layers live.

Every host is built from a transformers config class with random weights (nothing is
downloaded), and exposes its FFN "sites": the (up, activation, down) triple of each block, the
places the MEO code swaps for MoE layers (BERT `intermediate.dense`/`output.dense`, GPT-2
`c_fc`/`c_proj`, T5 `wi`/`wo`, BART `fc1`/`fc2`). `layer` is a bare FFN block of that shape.

Native MoE hosts (Mixtral, Qwen-MoE, DeepSeek-V3, OLMoE, Phi-3.5-MoE, a user's `hf:PATH`) have
a sparse MoE block where these have an FFN: they live in `models/native.py` and share the
`HostShape` below; `models/catalog.py` looks any host up by name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from meo_profile.models.conditions import cache_length
from torch import nn


class Site(NamedTuple):
    """One FFN: `owner.up_attr`, then `act_owner.act_attr`, then `owner_down.down_attr`."""

    up: tuple[nn.Module, str]
    act: tuple[object, str]
    down: tuple[nn.Module, str]


@dataclass(frozen=True)
class HostShape:
    d_model: int
    d_ff: int
    layers: int  # blocks with an FFN (encoder + decoder for seq2seq)
    heads: int  # attention heads (1 for `layer`)
    vocab: int = 0
    build: Callable | None = None  # (spec) -> (nn.Module, list[Site])
    inputs: str = "hidden"  # "hidden": (B, T, d) floats; "ids": token ids
    bias: bool = True
    seq2seq: bool = False  # `layers` then counts encoder + decoder blocks, half each
    experts: int = 16  # default --experts / --top-k: the native model's for MoE hosts
    top_k: int = 4
    expert_unit: str = "linear"  # default --expert-unit (the MEO paper's; whole FFNs for MoE hosts)
    rope: bool = False  # rotary attention: d_model / heads must be even
    # native MoE hosts
    native: bool = False  # a transformers MoE model: its own block for `moe`, routed experts swapped otherwise
    gated: bool = False  # SwiGLU experts (a fused gate | up matrix of 2 * d_ff rows)
    router_gates: str | None = None  # the model's own router convention (models/discover.py)
    impls: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # --impl per variant, where the host's own
    check: Callable[[Any], None] | None = None  # validates a spec's sizes against the host's config
    # Every block of a stack (of each stack, for seq2seq) runs the same ops on the same shapes:
    # FLOP counting may trace a short stack and extrapolate, exactly (meo_profile/measure/
    # stacks.py). A host whose blocks differ (dense first layers, MoE every other layer,
    # alternating attention) must leave it False; one whose first block alone differs (T5's
    # relative position bias) says so with `first_block_differs`.
    uniform_blocks: bool = False
    first_block_differs: bool = False
    # How the host decodes (models/decode.py): "causal", a causal language model stepping with
    # a KV cache; "hidden", hidden states in and out with no attention (the `layer` host); or
    # "" with the reason in `no_decode`.
    decode: str = ""
    no_decode: str | None = None


class FFNBlock(nn.Module):
    """One FFN block, up -> activation -> down: the `layer` host, and T5's FFN once rewrapped
    (T5's own block reads `wo.weight`, which an MoE layer does not have)."""

    def __init__(self, up: nn.Module, act: nn.Module, down: nn.Module):
        super().__init__()
        self.up, self.act, self.down = up, act, down

    @classmethod
    def of_size(cls, d_model: int, d_ff: int) -> FFNBlock:
        return cls(nn.Linear(d_model, d_ff), nn.GELU(), nn.Linear(d_ff, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.up(x)))


class SwiGLU(nn.Module):
    """SwiGLU's step between the two matrices of a gated FFN: act(gate) * up, on a fused
    (gate | up) projection of width 2 * d_ff (OLMoE, Phi-3.5-MoE). A site whose activation is a
    SwiGLU gets SwiGLU expert banks (`ExpertBank(gated=True)`, with `act` inside)."""

    def __init__(self, act: nn.Module | None = None):
        super().__init__()
        self.act = act if act is not None else nn.SiLU()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        gate, up = h.chunk(2, dim=-1)  # (..., 2 d_ff) -> 2 x (..., d_ff)
        return self.act(gate) * up


class LogitsOnly(nn.Module):
    """Wraps a transformers model so forward takes token ids and returns the logits tensor
    (torch.jit tracing, which fvcore uses, wants tensors in and out)."""

    def __init__(self, model: nn.Module, seq2seq: bool):
        super().__init__()
        self.model, self.seq2seq = model, seq2seq

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.seq2seq:  # the decoder reads a sequence of the same length as the encoder
            return self.model(input_ids=input_ids, decoder_input_ids=input_ids).logits
        return self.model(input_ids=input_ids).logits


# ------------------------------------------------------------------------------- builders
# Each builder imports its transformers classes itself: importing transformers costs seconds,
# and only the host being built needs them.
def _build_layer(spec) -> tuple[nn.Module, list[Site]]:
    block = FFNBlock.of_size(spec.d_model, spec.d_ff)
    return block, [Site((block, "up"), (block, "act"), (block, "down"))]


def _build_bert(spec):
    from transformers import BertConfig, BertForMaskedLM

    shape = HOSTS[spec.host]
    config = BertConfig(hidden_size=spec.d_model, intermediate_size=spec.d_ff,
                        num_hidden_layers=spec.layers, num_attention_heads=shape.heads,
                        vocab_size=shape.vocab, max_position_embeddings=max(512, spec.seq_len))
    model = BertForMaskedLM(config)  # the masked-LM head is part of the paper's FLOPs
    sites = [Site((blk.intermediate, "dense"), (blk.intermediate, "intermediate_act_fn"),
                  (blk.output, "dense")) for blk in model.bert.encoder.layer]
    return LogitsOnly(model, seq2seq=False), sites


def _build_gpt2(spec):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_embd=spec.d_model, n_inner=spec.d_ff, n_layer=spec.layers,
                        n_head=HOSTS["gpt2"].heads, n_positions=gpt2_positions(spec))
    model = GPT2LMHeadModel(config)
    sites = [Site((blk.mlp, "c_fc"), (blk.mlp, "act"), (blk.mlp, "c_proj"))
             for blk in model.transformer.h]
    return LogitsOnly(model, seq2seq=False), sites


def gpt2_positions(spec) -> int:
    """GPT-2's learned positions: its published 1024, or as many as the workload reaches."""
    return max(1024, cache_length(spec))


def _build_t5(spec):
    from transformers import T5Config, T5ForConditionalGeneration

    per_stack = spec.layers // 2
    config = T5Config(d_model=spec.d_model, d_ff=spec.d_ff, num_layers=per_stack,
                      num_decoder_layers=per_stack, num_heads=HOSTS["t5-small"].heads,
                      d_kv=spec.d_model // HOSTS["t5-small"].heads)
    model = T5ForConditionalGeneration(config)
    sites = []
    for blk in list(model.encoder.block) + list(model.decoder.block):
        ffn = blk.layer[-1]  # T5LayerFF: norm -> DenseReluDense -> dropout -> residual
        dense = ffn.DenseReluDense  # its inner dropout is an eval-time no-op, dropped here
        ffn.DenseReluDense = FFNBlock(dense.wi, dense.act, dense.wo)
        sites.append(Site((ffn.DenseReluDense, "up"), (ffn.DenseReluDense, "act"),
                          (ffn.DenseReluDense, "down")))
    return LogitsOnly(model, seq2seq=True), sites


def _build_bart(spec):
    from transformers import BartConfig, BartForConditionalGeneration

    per_stack = spec.layers // 2
    heads = HOSTS["bart-base"].heads
    config = BartConfig(d_model=spec.d_model, encoder_ffn_dim=spec.d_ff, decoder_ffn_dim=spec.d_ff,
                        encoder_layers=per_stack, decoder_layers=per_stack,
                        encoder_attention_heads=heads, decoder_attention_heads=heads,
                        max_position_embeddings=max(1024, spec.seq_len))
    model = BartForConditionalGeneration(config)
    blocks = list(model.model.encoder.layers) + list(model.model.decoder.layers)
    sites = [Site((blk, "fc1"), (blk, "activation_fn"), (blk, "fc2")) for blk in blocks]
    return LogitsOnly(model, seq2seq=True), sites


ENCODER_ONLY = ("an encoder-only model: every token attends to every other, so it has no "
                "decode step")
ENCODER_DECODER = ("an encoder-decoder: its decode step reads the encoder's output beside the "
                   "decoder's cache, which this tool does not build")
HOSTS: dict[str, HostShape] = {
    "layer": HostShape(768, 3072, 1, 1, build=_build_layer, decode="hidden"),
    # BERT-Small as in Turc et al. 2019 (4 layers, 512 wide), the smallest of the paper's figure.
    "bert-small": HostShape(512, 2048, 4, 8, vocab=30522, build=_build_bert, inputs="ids",
                            uniform_blocks=True, no_decode=ENCODER_ONLY),
    "bert-base": HostShape(768, 3072, 12, 12, vocab=30522, build=_build_bert, inputs="ids",
                           uniform_blocks=True, no_decode=ENCODER_ONLY),
    "bert-large": HostShape(1024, 4096, 24, 16, vocab=30522, build=_build_bert, inputs="ids",
                            uniform_blocks=True, no_decode=ENCODER_ONLY),
    "gpt2": HostShape(768, 3072, 12, 12, vocab=50257, build=_build_gpt2, inputs="ids",
                      uniform_blocks=True, decode="causal"),
    # seq2seq hosts: `layers` counts encoder + decoder blocks (6 + 6)
    "t5-small": HostShape(512, 2048, 12, 8, vocab=32128, build=_build_t5, inputs="ids", bias=False,
                         seq2seq=True, uniform_blocks=True, first_block_differs=True,
                         no_decode=ENCODER_DECODER),
    "bart-base": HostShape(768, 3072, 12, 12, vocab=50265, build=_build_bart, inputs="ids",
                          seq2seq=True, uniform_blocks=True, no_decode=ENCODER_DECODER),
}
