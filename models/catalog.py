"""Every host by name: the FFN hosts (models/hosts.py), the published MoE models and `hf:PATH`
(models/native.py). `host_shape` is the one lookup; an unknown name is a SpecError listing
the valid ones."""

from __future__ import annotations

from typing import Any

from meo_profile.models.errors import SpecError
from meo_profile.models.hosts import HOSTS, HostShape
from meo_profile.models.names import HF_HOST_HELP
from meo_profile.models.native import NATIVE_MOE_IMPLS, native_shape
from meo_profile.models.native_configs import PUBLISHED
from meo_profile.models.variants import VARIANTS

HOST_NAMES = (*HOSTS, *PUBLISHED)


def host_shape(host: str) -> HostShape:
    if host in HOSTS:
        return HOSTS[host]
    shape = native_shape(host) if isinstance(host, str) else None
    if shape is None:
        raise SpecError("host", host, f"unknown; choose from {', '.join(HOST_NAMES)} or {HF_HOST_HELP}")
    return shape


def router_gates(spec: Any) -> dict[str, str | None]:
    """The gate convention the spec's variant routes with, and the host model's own (native
    hosts): `moe` on a native host runs the model's router; the other variants bring their own
    (models/routing.py, models/variants.py); XMoE's is a threshold."""
    shape = host_shape(spec.host)
    variant = VARIANTS[spec.variant]
    if variant.routes is None:
        used = None
    elif spec.variant == "moe" and shape.native:
        used = shape.router_gates
    else:
        used = "threshold" if spec.variant == "xmoe" else variant.gates
    return {"router_gates": used, "host_router_gates": shape.router_gates}


__all__ = ["HF_HOST_HELP", "HOST_NAMES", "NATIVE_MOE_IMPLS", "host_shape", "router_gates"]
