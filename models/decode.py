"""Decoding: B sequences, one token each per step, after a prompt; what the model keeps between
steps, and how a step is run.

Two things persist across the steps of a sequence:
- the host's KV cache (a causal host: `HostShape.decode == "causal"`): a static cache of
  `cache_length(spec)` positions (models/conditions.py), so every step has the same shapes and
  attention reads the cache it would read in a real generation; the `layer` host has none;
- each sequence-routed layer's `SequenceState` (models/layers.py, `SequenceRouted`): the
  running sum of the tokens it routed on, so that a step routes on the mean of everything the
  sequence holds (`--merge-reuse step`, and always for `moe-seq`), or the choice its prompt made
  (`--merge-reuse sequence`: a merging variant keeps each sequence's merged expert, Lory's
  inference). Token-routed layers keep nothing: every token is routed as it comes.

`Decoding` runs the prompt and the steps, and takes snapshots to return to, so a timed call
can step and then rewind: the same call, with the same cache length, every time it is repeated.
Rewinding moves no data: layer states are rebound to the tensors of the snapshot (a step makes
new ones), and the static cache only moves its write position back.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

import torch
from meo_profile.models.build import make_inputs, sparse_layers, torch_dtype
from meo_profile.models.catalog import host_shape
from meo_profile.models.conditions import cache_length, parse_workload
from meo_profile.models.imposed import route_from
from meo_profile.models.layers import SequenceRouted
from meo_profile.models.phases import phase
from meo_profile.models.spec import Spec
from meo_profile.models.variants import VARIANTS
from torch import nn

RUNNING_SUM_DTYPE = torch.float32  # a long sequence's sum of bfloat16 tokens would lose digits


# ------------------------------------------------------------------------------ one layer
class SequenceState:
    """What one sequence-routed layer keeps while B sequences decode: the running sum (B, d_in)
    of the tokens it routed on and their count, and with `reuse == "sequence"` each sequence's
    choice from its prompt (MEO: the merged expert). Empty (count 0) until the prompt."""

    def __init__(self, reuse: str):
        self.reuse = reuse  # "step": choose again every step; "sequence": keep the prompt's
        self.sum: torch.Tensor | None = None
        self.count = 0
        self.kept: Any = None

    def run(self, layer: SequenceRouted, x: torch.Tensor) -> torch.Tensor:
        """The layer's forward on x (B, T, d_in), after its own `prepare`."""
        if self.count == 0:  # the prompt: a forward over whole sequences, as a prefill runs
            out, choice = layer.whole(x, keep=self.reuse == "sequence")
            self.count = x.shape[1]
            if self.reuse == "sequence":
                self.kept = choice
            else:
                self.sum = x.sum(dim=1, dtype=RUNNING_SUM_DTYPE)  # (B, d_in)
            return out
        if self.reuse == "sequence":
            layer.last_top_k_index = None  # nothing routed: no expert touched by this step
            return layer.through(x, self.kept)
        with phase("router"):  # a new tensor, not an in-place add: a snapshot keeps the old one
            self.sum = self.sum + x.sum(dim=1, dtype=RUNNING_SUM_DTYPE)
            self.count += x.shape[1]
            mean = (self.sum / self.count).to(x.dtype)  # (B, d_in) the sequence so far
        return layer.through(x, layer.choose(mean))

    def snapshot(self) -> tuple:
        return self.sum, self.count, self.kept

    def restore(self, snap: tuple) -> None:
        self.sum, self.count, self.kept = snap

    @property
    def bytes_held(self) -> int:
        """The running sum and the kept choice, as held now."""
        return sum(t.numel() * t.element_size() for t in _tensors([self.sum, self.kept]))

    @property
    def kept_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in _tensors([self.kept]))


def _tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor in a nest of lists, tuples and named tuples (a merged expert, a routing)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


# ------------------------------------------------------------------------------ the host
def _cache_keyword(lm: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache`: the name this version's forward takes."""
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _static_cache(lm: nn.Module, length: int):
    from transformers import StaticCache  # imports transformers: only for a causal host

    return StaticCache(config=lm.config, max_cache_len=length)


def causal_lm(model: nn.Module) -> nn.Module:
    """The transformers model inside a causal host (the wrapper that returns logits only)."""
    return model.model


@dataclass
class Snapshot:
    layers: list[tuple]
    length: int  # tokens per sequence in the cache


class Decoding:
    """B sequences decoded by `model` (built from `spec`): its KV cache where the host has one,
    and a SequenceState in each of its sequence-routed layers, attached until `close`. Calls
    run under whatever grad mode the caller holds (the timing runs in inference mode)."""

    def __init__(self, model: nn.Module, spec: Spec):
        self.model, self.spec = model, spec
        self.kind = host_shape(spec.host).decode
        reuse = spec.merge_reuse or "step"  # moe-seq, which merges nothing, routes every step
        self.layers = [m for m in sparse_layers(model) if isinstance(m, SequenceRouted)]
        for layer in self.layers:
            layer.decoding = SequenceState(reuse)
        self.cache = None
        if self.kind == "causal":
            lm = causal_lm(model)
            self.cache = _static_cache(lm, cache_length(spec))
            self._call_kwargs = {_cache_keyword(lm): self.cache, "use_cache": True}
        self.length = 0

    @property
    def keeps_state(self) -> bool:
        """Whether a step depends on what came before it (a cache, or a routing state): else a
        decode step needs no prompt run first."""
        return self.cache is not None or bool(self.layers)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The next T tokens of every sequence: (B, T) ids or (B, T, d) hidden states. An
        imposed routing (`--routing`) is read at their positions, from the cache's length."""
        route_from(self.model, self.length)
        if self.kind == "causal":
            out = causal_lm(self.model)(input_ids=x, **self._call_kwargs).logits
        else:
            out = self.model(x)
        self.length += x.shape[1]
        return out

    prompt = step = __call__  # named for what the caller means

    def snapshot(self) -> Snapshot:
        return Snapshot([layer.decoding.snapshot() for layer in self.layers], self.length)

    def restore(self, snap: Snapshot) -> None:
        """Back to `snap`: layers rebound to its tensors, the cache's write position moved back
        (positions beyond it are masked, then overwritten)."""
        for layer, kept in zip(self.layers, snap.layers, strict=True):
            layer.decoding.restore(kept)
        if self.cache is not None and self.length > snap.length:
            self.cache.crop(snap.length - self.length)  # a negative count: tokens removed
        self.length = snap.length

    def close(self) -> None:
        for layer in self.layers:
            layer.decoding = None

    # ---------------------------------------------------------------------------- bytes
    @property
    def cache_bytes(self) -> int:
        """The KV cache as allocated (0 before the first call, which allocates it)."""
        if self.cache is None:
            return 0
        held = [t for layer in self.cache.layers for t in (getattr(layer, "keys", None),
                                                           getattr(layer, "values", None))]
        return sum(t.numel() * t.element_size() for t in held if isinstance(t, torch.Tensor))

    @property
    def kept_bytes(self) -> int:
        """The choices kept for every sequence (`--merge-reuse sequence`: the merged experts)."""
        return sum(layer.decoding.kept_bytes for layer in self.layers)

    @property
    def state_bytes(self) -> int:
        """Everything held between steps: the KV cache, running sums and kept choices."""
        return self.cache_bytes + sum(layer.decoding.bytes_held for layer in self.layers)


# ------------------------------------------------------------------------------ counting
def counted_calls(model: nn.Module, spec: Spec, device: str | None = None):
    """The distinct calls of `spec`'s decoding workload, for a counter to trace in order, each
    as (function of one input, its input, times the workload makes it): decode, its one step
    after the prompt is run (not counted: it is context); generate, its prompt, then one step
    standing for all N (every step has the same shapes: the static cache's length, one token).
    Trace each before asking for the next: the prompt leaves the state the steps read."""
    dec, tokens = Decoding(model, spec), decode_inputs(spec, device)
    try:
        if parse_workload(spec.workload).name == "decode":
            if dec.keeps_state:
                dec.prompt(tokens.prompt)
        else:
            def prompt(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
                # what the steps keep is an output too: a trace drops work whose result no
                # output reads (Lory's kept merge would go uncounted)
                return (dec.prompt(x), *_tensors([layer.decoding.kept for layer in dec.layers]))

            yield prompt, tokens.prompt, 1
        after = dec.snapshot()

        def step(x: torch.Tensor) -> torch.Tensor:
            out = dec.step(x)
            dec.restore(after)
            return out

        yield step, tokens.steps[0], len(tokens.steps)
    finally:
        dec.close()


# ------------------------------------------------------------------------------ inputs
@dataclass
class DecodeInputs:
    """A decoding workload's tokens: the prompt (B, P[, d]) and each step's (B, 1[, d])."""

    prompt: torch.Tensor
    steps: list[torch.Tensor]

    @property
    def all(self) -> tuple[torch.Tensor, ...]:
        return (self.prompt, *self.steps)


def decode_inputs(spec: Spec, device: str | None = None) -> DecodeInputs:
    """Seeded tokens for `spec`'s workload: a prompt of C tokens then one step (decode), or of L
    tokens then N steps (generate). The prompt is what a prefill of its length would read; the
    steps' tokens are drawn apart (as a sampler would pick them: random, not the model's)."""
    workload = parse_workload(spec.workload)
    prompt_len = spec.context if workload.name == "decode" else spec.seq_len
    steps = 1 if workload.name == "decode" else workload.steps
    prompt = make_inputs(spec.replace(workload="prefill", context=None, merge_reuse=None,
                                      seq_len=prompt_len), device)[0]
    drawn = make_inputs(spec.replace(workload="prefill", context=None, merge_reuse=None,
                                     seq_len=steps, seed=spec.seed + 1), device)[0]
    return DecodeInputs(prompt, list(drawn.split(1, dim=1)))


# ------------------------------------------------------------------------------ sizes
def merged_cache_bytes(model: nn.Module, spec: Spec) -> int | None:
    """Bytes of merged experts a merging variant keeps between steps: B × one merged expert's
    bytes (its weights and biases) × MoE layers with `--merge-reuse sequence`, 0 with `step`
    (merged again every step, nothing kept); None where nothing merges or nothing decodes.
    From the model's structure (a meta-device build serves)."""
    if spec.merge_reuse is None or not VARIANTS[spec.variant].merges:
        return None
    if spec.merge_reuse != "sequence":
        return 0
    return sum(spec.batch_size * _expert_bytes(layer) for layer in sparse_layers(model))


def _expert_bytes(layer: nn.Module) -> int:
    bank = layer.experts
    return sum(p[0].numel() * p.element_size() for p in [*bank.weights, *(bank.biases or [])])


def kv_elements_per_position(config: Any) -> int:
    """Key and value elements one position of one sequence holds in a causal host's cache, all
    layers: 2 × kv heads × head width per layer (GPT-2 and grouped-query attention); for
    DeepSeek's MLA, as transformers caches it, the compressed latent and the rotary key
    (kv_lora_rank + qk_rope_head_dim). tests/test_decode.py holds it to the cache allocated."""
    layers, heads = config.num_hidden_layers, config.num_attention_heads
    if getattr(config, "kv_lora_rank", None):
        return layers * (config.kv_lora_rank + config.qk_rope_head_dim)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return layers * 2 * (getattr(config, "num_key_value_heads", None) or heads) * head_dim


@functools.cache
def _kv_elements(spec: Spec) -> int:
    from meo_profile.models.build import build_model

    return kv_elements_per_position(causal_lm(build_model(spec, device="meta")).config)


def kv_bytes_per_position(spec: Spec) -> int:
    """The KV cache bytes of one position of one sequence (0 for a host without a cache)."""
    if host_shape(spec.host).decode != "causal":
        return 0
    key = spec.replace(device="meta", seed=0, workload="prefill", context=None, merge_reuse=None)
    return _kv_elements(key) * torch_dtype(spec).itemsize
