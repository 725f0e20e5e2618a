"""How a configuration is named on screen: one title per spec, shared by every renderer."""

from __future__ import annotations

from models import Spec


def spec_title(spec: Spec) -> str:
    experts = "" if spec.variant == "dense" else f" E={spec.num_experts} k={spec.top_k}"
    if spec.variant == "xmoe":  # no fixed k: a threshold over E x g small experts
        experts = f" E={spec.num_experts}x{spec.granularity} t={spec.threshold} scale={spec.router_scale:g}"
    elif spec.variant == "ce":
        experts += f" n_ce={spec.n_ce}"
    return (f"{spec.host} {spec.variant}{experts} unit={spec.expert_unit} impl={spec.impl} "
            f"B={spec.batch_size} L={spec.seq_len} {spec.dtype} {spec.device}")
