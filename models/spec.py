"""The one configuration object: what to build and how to run it.

A `Spec` is frozen and validated where it is made; everything downstream trusts it. Fields that
have a sensible default depending on other fields (the host's width, compressed experts' `n_ce`)
are resolved here. `impl` stays as asked: "auto" is resolved where the measurement is taken
(counting by the variant's rule, `impl_by_rule`; timing by measurement), and the record stores
the implementation that ran beside how it was chosen.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from meo_profile.models.catalog import host_shape
from meo_profile.models.conditions import (
    MERGE_REUSE,
    SCOPES,
    WorkloadKind,
    parse_routing,
    parse_workload,
)
from meo_profile.models.errors import FLAG_OF, SpecError, flag_of  # noqa: F401 (their home was here)
from meo_profile.models.imposed import check_routing
from meo_profile.models.merging import LORY_SEGMENT_LEN
from meo_profile.models.names import DEVICES, DTYPES, EXPERT_UNITS, MODES
from meo_profile.models.soft_moe import SLOTS_PER_EXPERT
from meo_profile.models.variants import VARIANTS

# Integer fields and their largest value: far beyond any model profiled here (DeepSeek-V3 has
# 256 experts, 61 layers, width 7168), and small enough that no value makes a build loop run
# for hours. Sizes of 2**40 still count in seconds on the meta device.
INT_LIMITS = {"num_experts": 2**16, "top_k": 2**16, "d_model": 2**20, "d_ff": 2**22,
              "layers": 2**10, "seq_len": 2**40, "batch_size": 2**40}
# Optional integer fields (None: the host's or the variant's own) and their largest value.
OPTIONAL_INT_LIMITS = {"context": 2**40, "vocab_size": 2**24, "segment_len": 2**40,
                       "slots_per_expert": 2**16}
MAX_SEED = 2**62

# The device of the workers a sweep driver plans for, when they are not this process (a Ray
# cluster, Slurm jobs): `auto` resolves to it and `cuda` is valid without a GPU here.
_WORKERS_DEVICE: contextvars.ContextVar[str | None] = contextvars.ContextVar("workers_device",
                                                                            default=None)


@contextlib.contextmanager
def planned_for(device: str | None) -> Iterator[None]:
    """Make specs for workers whose device is `device` ("cuda" or "cpu"; None: this process)."""
    token = _WORKERS_DEVICE.set(device)
    try:
        yield
    finally:
        _WORKERS_DEVICE.reset(token)


def _cuda_where_it_runs() -> tuple[bool, str]:
    workers = _WORKERS_DEVICE.get()
    if workers is None:
        return torch.cuda.is_available(), "this machine"
    return workers == "cuda", "the workers"


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecError(name, value, f"unknown; choose from {', '.join(allowed)}")


@dataclass(frozen=True)
class Spec:
    """One configuration: host model, MoE variant and its knobs, input sizes, numerics, device."""

    host: str = "layer"
    variant: str = "meo"
    num_experts: int | None = None  # None: the host's (16; a native MoE host's own count)
    top_k: int | None = None  # None: the host's (4; a native MoE host's own k); E for smear, lory, soft-moe
    d_model: int | None = None  # None: the host's own width
    d_ff: int | None = None
    seq_len: int = 128
    batch_size: int = 8
    dtype: str = "float32"
    device: str = "cpu"  # "auto" resolves to cuda when present
    impl: str = "auto"
    expert_unit: str | None = None  # None: the host's ("linear", the paper's; "ffn" on MoE hosts), "ffn" for xmoe
    seed: int = 0
    mode: str = "inference"
    layers: int | None = None  # None: the host's own depth
    # variant knobs (ignored by variants that do not use them, and then stored as None)
    n_ce: int | None = None  # compressed experts: how many of the top-k become vectors
    ce_init: str | None = None  # "ones" (the paper's init) or "random" (a trained-like spread)
    threshold: float | None = None  # XMoE: probability mass the chosen experts must reach
    granularity: int | None = None  # XMoE: expert width divided by g, experts multiplied by g
    max_k: int | None = None  # XMoE: optional cap on experts per token
    capacity_factor: float | None = None  # XMoE: None means dropless
    router_scale: float = 1.0  # multiplies router logits; >1 sharpens a random router
    segment_len: int | None = None  # lory: tokens per segment (T, default 256), merged and routed together
    slots_per_expert: int | None = None  # soft-moe: slots each expert processes (p, default 1)
    # conditions: what is measured, and under which workload and routing (models/conditions.py)
    scope: str = "model"  # model (the whole host), blocks (its block stack) or moe (MoE sublayers)
    workload: str = "prefill"  # prefill, decode or generate:N
    context: int | None = None  # decode: tokens already in the cache (C); None: L
    merge_reuse: str | None = None  # merging variants at decode: step (the default) or sequence
    routing: str = "router"  # router, uniform, balanced, zipf:S, biased:STD (,local:P), replay:FILE
    vocab_size: int | None = None  # None: the host's own vocabulary

    def __post_init__(self) -> None:
        shape = host_shape(self.host)  # SpecError for an unknown name or an unusable hf: config
        _choice("variant", self.variant, tuple(VARIANTS))
        _choice("dtype", self.dtype, DTYPES)
        _choice("device", self.device, DEVICES)
        self._set("num_experts", shape.experts if self.num_experts is None else self.num_experts)
        self._set("top_k", shape.top_k if self.top_k is None else self.top_k)
        if self.expert_unit is None:  # "" is a value given, and refused below
            self._set("expert_unit", "ffn" if self.variant == "xmoe" else shape.expert_unit)
        _choice("expert_unit", self.expert_unit, EXPERT_UNITS)
        _choice("mode", self.mode, MODES)
        self._set("d_model", shape.d_model if self.d_model is None else self.d_model)
        self._set("d_ff", shape.d_ff if self.d_ff is None else self.d_ff)
        self._set("layers", shape.layers if self.layers is None else self.layers)
        for name, most in INT_LIMITS.items():
            _integer(name, getattr(self, name), 1, most)
        _integer("seed", self.seed, 0, MAX_SEED)
        if self.d_model % shape.heads:
            raise SpecError("d_model", self.d_model, f"must be divisible by {self.host}'s {shape.heads} heads")
        if shape.rope and (self.d_model // shape.heads) % 2:
            raise SpecError("d_model", self.d_model, f"must be an even multiple of {self.host}'s {shape.heads} heads (rotary embeddings)")
        if shape.seq2seq and self.layers % 2:
            raise SpecError("layers", self.layers, f"{self.host} splits layers between encoder and decoder: use an even number")
        has_cuda, where = _cuda_where_it_runs()
        if self.device == "auto":
            self._set("device", "cuda" if has_cuda else "cpu")
        if self.device == "cuda" and not has_cuda:
            raise SpecError("device", "cuda", f"no CUDA device is available on {where}")
        if not _positive_number(self.router_scale):
            raise SpecError("router_scale", self.router_scale, "must be a finite number > 0")
        self._validate_conditions()
        self._validate_knob_values()
        self._validate_variant()
        if shape.check is not None:  # a native host holds the sizes to its config
            shape.check(self)
        self._validate_impl()
        check_routing(self)  # after E and k are final: a replayed trace must match them

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _validate_conditions(self) -> None:
        """Scope, workload and routing as normalised text; the decode context resolved."""
        for name, most in OPTIONAL_INT_LIMITS.items():
            if getattr(self, name) is not None:
                _integer(name, getattr(self, name), 1, most)
        _choice("scope", self.scope, SCOPES)
        workload = parse_workload(self.workload)
        self._set("workload", workload.text)
        self._set("routing", parse_routing(self.routing).text)
        if self.merge_reuse is not None:
            _choice("merge_reuse", self.merge_reuse, MERGE_REUSE)
        if not workload.decodes:
            for name in ("context", "merge_reuse"):
                if getattr(self, name) is not None:
                    raise SpecError(name, getattr(self, name), "applies at decode: use it with "
                                    "--workload decode or generate:N", "inapplicable")
            return
        self._validate_decoding(workload)

    def _validate_decoding(self, workload: WorkloadKind) -> None:
        """What decodes: a host with a decode step, a variant with one, in inference; the
        context (decode: C, default L; generate: its own prompt of L) and, for a merging
        variant, how its merged expert is reused (default `step`: merged again every step)."""
        shape, variant = host_shape(self.host), VARIANTS[self.variant]
        if not shape.decode:
            raise SpecError("workload", workload.text, f"{self.host} is {shape.no_decode}; use "
                            "--workload prefill, or a causal host (gpt2, olmoe, mixtral, ...)",
                            "impossible")
        if variant.no_decode:
            raise SpecError("workload", workload.text, f"{variant.label} {variant.no_decode}; "
                            "use --workload prefill", "impossible")
        if self.mode != "inference":
            raise SpecError("mode", self.mode, f"--workload {workload.text} is inference (a "
                            "decode step has no backward here): use --mode inference", "impossible")
        if workload.name == "generate" and self.context not in (None, self.seq_len):
            raise SpecError("context", self.context, f"generate decodes after its own prompt of "
                            f"--seq-len {self.seq_len} tokens: set --seq-len instead",
                            "inapplicable")
        self._set("context", self.seq_len if self.context is None else self.context)
        if not variant.merges:
            if self.merge_reuse is not None:
                raise SpecError("merge_reuse", self.merge_reuse, f"{self.variant} merges no "
                                "experts; merge reuse applies to the merging variants ("
                                f"{', '.join(v for v, e in VARIANTS.items() if e.merges)})",
                                "inapplicable")
            return
        self._set("merge_reuse", self.merge_reuse or "step")

    def _validate_knob_values(self) -> None:
        """Each knob given is a valid value, whichever variant reads it (a bad value for a knob
        the variant ignores is still a mistake worth saying)."""
        if self.granularity is not None:
            _integer("granularity", self.granularity, 1, INT_LIMITS["d_ff"])
        if self.max_k is not None:
            _integer("max_k", self.max_k, 1, INT_LIMITS["num_experts"] * INT_LIMITS["d_ff"])
        if self.n_ce is not None:
            _integer("n_ce", self.n_ce, 0, INT_LIMITS["top_k"])
        if self.ce_init is not None:
            _choice("ce_init", self.ce_init, ("ones", "random"))
        t = self.threshold
        if t is not None and not (_positive_number(t) and t <= 1.0):
            raise SpecError("threshold", t, "must be in (0, 1]")
        if self.capacity_factor is not None and not _positive_number(self.capacity_factor):
            raise SpecError("capacity_factor", self.capacity_factor, "must be a finite number > 0")

    def _validate_variant(self) -> None:
        v = self.variant
        sparse = v != "dense"
        if v == "xmoe":
            g = 1 if self.granularity is None else self.granularity
            if self.d_ff % g:
                raise SpecError("granularity", g, f"must be >= 1 and divide d_ff={self.d_ff}")
            self._set("granularity", g)
            self._set("threshold", 0.9 if self.threshold is None else self.threshold)
            if self.max_k is not None and not 1 <= self.max_k <= self.num_experts * g:
                raise SpecError("max_k", self.max_k, f"must be in 1..{self.num_experts * g}")
            if self.expert_unit != "ffn":
                raise SpecError("expert_unit", self.expert_unit, "xmoe splits whole FFN experts: use ffn")
        if VARIANTS[v].every_expert:  # the merging family reads all E: k is E, whatever was asked
            self._set("top_k", self.num_experts)
        if sparse and v != "xmoe" and self.top_k > self.num_experts:
            raise SpecError("top_k", self.top_k, f"exceeds --experts {self.num_experts}",
                            "impossible")
        if v == "ce":
            n_ce = self.top_k // 2 if self.n_ce is None else self.n_ce
            if not 0 <= n_ce < self.top_k:
                raise SpecError("n_ce", n_ce, f"must be in 0..{self.top_k - 1} (top-k {self.top_k})")
            self._set("n_ce", n_ce)
            self._set("ce_init", "ones" if self.ce_init is None else self.ce_init)
        if v == "lory":
            self._validate_segments()
        if v == "soft-moe" and self.slots_per_expert is None:
            self._set("slots_per_expert", SLOTS_PER_EXPERT)
        other_knobs = {k for other in VARIANTS.values() for k in other.knobs} - set(VARIANTS[v].knobs)
        for knob in other_knobs:  # another variant's knob means nothing here: stored as None
            self._set(knob, None)
        if v == "dense":
            # experts, k and routing mean nothing for the dense baseline: store 1, 1 and the
            # default so records group cleanly (one baseline, whatever a grid crosses it with)
            self._set("num_experts", 1)
            self._set("top_k", 1)
            self._set("routing", "router")

    def _validate_segments(self) -> None:
        """Lory's segments are equal: T divides L, or one segment (T >= L) holds the sequence."""
        T = LORY_SEGMENT_LEN if self.segment_len is None else self.segment_len
        if self.seq_len > T and self.seq_len % T:
            raise SpecError("segment_len", T, f"must divide --seq-len {self.seq_len} (Lory's "
                            "segments are equal), or be at least it (one segment)", "impossible")
        self._set("segment_len", T)

    @property
    def host_impls(self) -> tuple[str, ...] | None:
        """The implementations of this variant when the host runs it itself (a native host's
        own MoE block for `moe`: transformers' experts kernels); None where the variant's own
        implementations apply."""
        return host_shape(self.host).impls.get(self.variant) or None

    def _validate_impl(self) -> None:
        host_impls = self.host_impls
        if host_impls:
            if self.expert_unit != "ffn":
                raise SpecError("expert_unit", self.expert_unit, f"{self.variant} on {self.host} runs "
                                "the model's own block, whose experts are SwiGLU FFNs: use ffn")
            if self.impl != "auto" and self.impl not in host_impls:
                raise SpecError("impl", self.impl, f"{self.variant} on {self.host} runs the model's "
                                f"own block: choose {', '.join(host_impls)}")
            return
        variant = VARIANTS[self.variant]
        if self.impl != "auto" and self.impl not in variant.impls:
            raise SpecError("impl", self.impl, f"not an implementation of --variant "
                            f"{self.variant}; choose from {', '.join(variant.impls + ('auto',))}")
        reason = None if self.impl == "auto" else variant.unavailable(self.impl, self)
        if reason:
            raise SpecError("impl", self.impl, reason)

    @property
    def impl_by_rule(self) -> str:
        """The implementation a plain build runs and counting counts: the one asked for, or
        for `auto` the host's or the variant's deterministic rule (the same on every machine)."""
        if self.impl != "auto":
            return self.impl
        host_impls = self.host_impls
        return host_impls[0] if host_impls else VARIANTS[self.variant].default_impl(self)

    # ----------------------------------------------------------------------------- helpers
    @property
    def experts_total(self) -> int:
        """Experts per MoE layer as built (XMoE multiplies E by its granularity)."""
        return self.num_experts * (self.granularity or 1)

    def replace(self, **changes: Any) -> Spec:
        """A new validated spec with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        # every field is a plain immutable value: no deep copy (dataclasses.asdict's) needed,
        # and planning a large grid calls this for every configuration
        return {name: getattr(self, name) for name in SPEC_FIELDS}


def _positive_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _integer(name: str, value: Any, least: int, most: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not least <= value <= most:
        raise SpecError(name, value, f"must be an integer in {least}..{most:,}")


SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(Spec))
