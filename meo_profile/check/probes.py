"""Probes: questions about the current code that decide whether a claim can be measured yet.

A claim's `requires` names probes ("is this variant built?", "does the counter account for its
active parameters?"). Each probe answers None (ready) or the reason the claim cannot be measured
yet; such a claim is `pending`. Probes look at behaviour on a tiny model, so a claim becomes a
real check by itself as soon as the code can measure it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from meo_profile.measure.counting import count
from meo_profile.models import VARIANTS, Spec, build_model, make_inputs, sparse_layers

# A model small enough that building, tracing and running it costs well under a second.
TINY = dict(host="layer", d_model=64, d_ff=128, num_experts=4, top_k=2, seq_len=8, batch_size=2,
            device="cpu")


# ----------------------------------------------------------------------------------- probes
def registered(variant: str) -> str | None:
    """The variant has a layer in the model family (`dense` keeps the host's own FFN)."""
    if variant == "dense" or (variant in VARIANTS and VARIANTS[variant].layer is not None):
        return None
    return f"variant {variant!r} is not built yet (no layer in meo_profile.models.variants.VARIANTS)"


def counted(variant: str) -> str | None:
    """The FLOP counter runs on the variant (a tiny configuration counts without an error)."""
    reason = registered(variant)
    if reason:
        return reason
    try:
        count(Spec(variant=variant, **TINY), "fvcore")
    except Exception as e:  # any failure means: not countable yet
        return f"the counter cannot count {variant!r} yet ({type(e).__name__}: {str(e)[:120]})"
    return None


def params_accounted(variant: str) -> str | None:
    """The counter's `params_active` follows the variant's own accounting, where its layers
    define one (`params_active()`: compressed experts read m whole experts and n_ce vectors,
    not k experts). Checked on a tiny model after one forward (XMoE's depends on routing)."""
    reason = counted(variant)
    if reason:
        return reason
    spec = Spec(variant=variant, **TINY)
    model = build_model(spec, "cpu").eval()
    with torch.no_grad():
        model(*make_inputs(spec, "cpu"))
    layers = [m for m in sparse_layers(model) if callable(getattr(m, "params_active", None))]
    if not layers:
        return None  # the counter's generic rule (k of E experts per token) is the variant's
    total = sum(p.numel() for p in model.parameters())
    expected = total - sum(sum(p.numel() for p in m.parameters()) - m.params_active() for m in layers)
    counted_active = count(spec, "fvcore").params_active
    if counted_active == expected:
        return None
    return (f"the counter's params_active ({counted_active:,}) ignores the {variant} layers' own "
            f"accounting ({expected:,}) on a tiny model: counting does not support {variant!r} yet")


PROBES: dict[str, Callable[[str], str | None]] = {
    "registered": registered,
    "counted": counted,
    "params_accounted": params_accounted,
}


