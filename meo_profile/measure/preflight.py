"""Memory pre-flight: refuse to materialise a model that cannot fit, before trying."""

from __future__ import annotations

import os

import torch

from meo_profile.core.units import human_bytes
from models import Spec, build_model


class DoesNotFit(MemoryError):
    """The configuration's weights alone exceed the memory this device has free."""


def weight_bytes(spec: Spec) -> int:
    """Bytes of the spec's parameters, from a meta-device build (no memory used)."""
    model = build_model(spec, device="meta")
    return sum(p.numel() * p.element_size() for p in model.parameters())


def available_bytes(device: str) -> int:
    if device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 1 << 62  # unknown: let the allocator decide


def check_fits(spec: Spec, limit_bytes: int | None = None, headroom: float = 0.8) -> int:
    """Raise DoesNotFit when the weights need more than `headroom` of the free memory (or
    more than `limit_bytes`); return the weight bytes otherwise."""
    need = weight_bytes(spec)
    have = limit_bytes if limit_bytes is not None else int(available_bytes(spec.device) * headroom)
    if need > have:
        raise DoesNotFit(f"{spec.host} with {spec.num_experts} experts needs "
                         f"{human_bytes(need)} of weights; {human_bytes(have)} allowed")
    return need
