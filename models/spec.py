"""The one configuration object: what to build and how to run it.

A `Spec` is frozen and validated where it is made; everything downstream trusts it. Fields that
have a sensible default depending on other fields (the host's width, the implementation `auto`
picks, compressed experts' `n_ce`) are resolved here, so a stored record always says what ran.
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

from models.hosts import HOSTS
from models.variants import VARIANTS

EXPERT_UNITS = ("linear", "ffn")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "meta")
MODES = ("inference", "train")

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


# Spec field -> command-line flag, so that an error names what the user typed.
FLAG_OF = {"num_experts": "--experts", "top_k": "--top-k"}


class SpecError(ValueError):
    """A configuration that cannot be built; `str()` is one line naming the flag and the value."""

    def __init__(self, field_name: str, value: Any, reason: str):
        self.field_name, self.value, self.reason = field_name, value, reason
        super().__init__(f"{flag_of(field_name)} {value!r}: {reason}")


def flag_of(field_name: str) -> str:
    return FLAG_OF.get(field_name, "--" + field_name.replace("_", "-"))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise SpecError(name, value, f"unknown; choose from {', '.join(allowed)}")


@dataclass(frozen=True)
class Spec:
    """One configuration: host model, MoE variant and its knobs, input sizes, numerics, device."""

    host: str = "layer"
    variant: str = "meo"
    num_experts: int | None = None  # None: the host's (16; a native MoE host's own count)
    top_k: int | None = None  # None: the host's (4; a native MoE host's own k)
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

    def __post_init__(self) -> None:
        _choice("host", self.host, tuple(HOSTS))
        _choice("variant", self.variant, tuple(VARIANTS))
        _choice("dtype", self.dtype, DTYPES)
        _choice("device", self.device, DEVICES)
        shape = HOSTS[self.host]
        self._set("num_experts", shape.experts if self.num_experts is None else self.num_experts)
        self._set("top_k", shape.top_k if self.top_k is None else self.top_k)
        self._set("expert_unit", self.expert_unit or ("ffn" if self.variant == "xmoe" else shape.expert_unit))
        _choice("expert_unit", self.expert_unit, EXPERT_UNITS)
        _choice("mode", self.mode, MODES)
        for name in ("num_experts", "top_k", "seq_len", "batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SpecError(name, getattr(self, name), "must be an integer >= 1")
        self._set("d_model", shape.d_model if self.d_model is None else self.d_model)
        self._set("d_ff", shape.d_ff if self.d_ff is None else self.d_ff)
        self._set("layers", shape.layers if self.layers is None else self.layers)
        for name in ("d_model", "d_ff", "layers"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise SpecError(name, getattr(self, name), "must be an integer >= 1")
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
        self._validate_variant()
        self._set("impl", self._resolve_impl())

    def _set(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)

    def _validate_variant(self) -> None:
        v = self.variant
        sparse = v != "dense"
        if v == "xmoe":
            g = 1 if self.granularity is None else self.granularity
            if not isinstance(g, int) or g < 1 or self.d_ff % g:
                raise SpecError("granularity", g, f"must be >= 1 and divide d_ff={self.d_ff}")
            self._set("granularity", g)
            t = 0.9 if self.threshold is None else self.threshold
            if not (isinstance(t, (int, float)) and 0.0 < t <= 1.0):
                raise SpecError("threshold", t, "must be in (0, 1]")
            self._set("threshold", t)
            if self.max_k is not None and not 1 <= self.max_k <= self.num_experts * g:
                raise SpecError("max_k", self.max_k, f"must be in 1..{self.num_experts * g}")
            if self.capacity_factor is not None and not _positive_number(self.capacity_factor):
                raise SpecError("capacity_factor", self.capacity_factor, "must be a finite number > 0")
            if self.expert_unit != "ffn":
                raise SpecError("expert_unit", self.expert_unit, "xmoe splits whole FFN experts: use ffn")
        if sparse and v != "xmoe" and self.top_k > self.num_experts:
            raise SpecError("top_k", self.top_k, f"exceeds --experts {self.num_experts}")
        if v == "ce":
            n_ce = self.top_k // 2 if self.n_ce is None else self.n_ce
            if not 0 <= n_ce < self.top_k:
                raise SpecError("n_ce", n_ce, f"must be in 0..{self.top_k - 1} (top-k {self.top_k})")
            self._set("n_ce", n_ce)
            init = self.ce_init or "ones"
            _choice("ce_init", init, ("ones", "random"))
            self._set("ce_init", init)
        other_knobs = {k for other in VARIANTS.values() for k in other.knobs} - set(VARIANTS[v].knobs)
        for knob in other_knobs:  # another variant's knob means nothing here: stored as None
            self._set(knob, None)
        if v == "dense":
            # experts and k mean nothing for the dense baseline: store 1 so records group cleanly
            self._set("num_experts", 1)
            self._set("top_k", 1)

    def _resolve_impl(self) -> str:
        variant = VARIANTS[self.variant]
        if self.impl == "auto":
            return variant.default_impl(self)
        _choice("impl", self.impl, variant.impls + ("auto",))
        return self.impl

    # ----------------------------------------------------------------------------- helpers
    @property
    def experts_total(self) -> int:
        """Experts per MoE layer as built (XMoE multiplies E by its granularity)."""
        return self.num_experts * (self.granularity or 1)

    def replace(self, **changes: Any) -> Spec:
        """A new validated spec with some fields changed."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _positive_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


SPEC_FIELDS = tuple(f.name for f in dataclasses.fields(Spec))
