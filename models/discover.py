"""Find the sparse MoE blocks of a transformers model from its modules, not from class names.

A sparse block is a module with
- exactly one child holding stacked expert weights: its own 3-D parameters sharing a leading
  E >= 2 (transformers 5: `gate_up_proj` [E, 2I, H] + `down_proj` [E, H, I], or transposed,
  or `up_proj` + `down_proj` when not gated, optional `*_bias` [E, .]);
- a sibling router whose weight (its own, or a descendant nn.Linear's) is [E, H];
- optionally shared experts: sibling H -> H MLPs of nn.Linear layers, every token through
  them, and a shared-expert gate, a sibling nn.Linear(H, 1) (Qwen2-MoE: sigmoid(gate(x))).

The router's gate convention is probed on a float32 CPU copy with random weights and matched
against the known ones: `softmax_topk` (softmax over E, top-k, not renormalised),
`softmax_topk_renorm` (the same renormalised: equal to softmax over the top-k logits),
`sigmoid_topk[_renorm]`, `sparsemixer` (Phi-3.5-MoE), else `custom`; suffixes say
`+grouped` (a grouped top-k, DeepSeek-V3), `+bias` (a selection bias) and `*s` (a scale).

`find_moe_blocks(model)` raises MoELayoutError, one line, when there is no block, or one whose
routed experts cannot be replaced faithfully (an own gate function, a norm after each expert,
interleaved gate/up rows, a block returning a tuple, unknown children).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn


class MoELayoutError(ValueError):
    """No MoE block, or a block the project cannot swap (one-line message)."""


@dataclass
class MoEBlock:
    name: str  # dotted path in the model, e.g. "model.layers.3.mlp"
    parent: nn.Module  # the module holding the block ...
    attr: str  # ... as this attribute
    block: nn.Module
    experts_attr: str
    router_attr: str
    num_experts: int
    top_k: int
    hidden: int  # H
    expert_width: int  # I, one routed expert's intermediate width
    gated: bool  # gate_up_proj (SwiGLU-style) or a plain up_proj
    expert_bias: bool
    activation: nn.Module
    router_gates: str
    kernels: bool  # the experts dispatch by `experts_implementation` (eager, batched_mm, grouped_mm)
    shared: list[str] = field(default_factory=list)  # attributes of the shared-expert MLPs
    shared_width: int = 0  # their summed intermediate width
    shared_gate: str | None = None  # attribute of a Linear(H, 1) gating the shared output

    @property
    def experts(self) -> nn.Module:
        return getattr(self.block, self.experts_attr)

    @property
    def router(self) -> nn.Module:
        return getattr(self.block, self.router_attr)

    @property
    def expert_numel(self) -> int:
        """Parameters of one routed expert."""
        return sum(p[0].numel() for p in self.experts.parameters(recurse=False) if p.dim() >= 2)


# ---------------------------------------------------------------------------- the experts
def _stacked(module: nn.Module) -> dict[str, torch.Tensor]:
    return dict(module.named_parameters(recurse=False))


def holds_stacked_experts(module: nn.Module) -> bool:
    if isinstance(module, nn.modules.conv._ConvNd):  # conv kernels are 3-D too
        return False
    three = [p for p in _stacked(module).values() if p.dim() == 3]
    return bool(three) and len({p.shape[0] for p in three}) == 1 and three[0].shape[0] >= 2


def expert_layout(experts: nn.Module) -> dict:
    """E, H, I, gated and bias of a stacked-experts module, or MoELayoutError."""
    params, cls = _stacked(experts), type(experts).__name__
    gated = "gate_up_proj" in params
    up = params.get("gate_up_proj", params.get("up_proj"))
    down = params.get("down_proj")
    if up is None or down is None or up.dim() != 3 or down.dim() != 3:
        shapes = {n: tuple(p.shape) for n, p in params.items()}
        raise MoELayoutError(f"{cls}: unrecognised stacked expert weights {shapes}")
    # standard storage: up [E, m*I, H], down [E, H, I]; transposed: up [E, H, m*I], down [E, I, H]
    transposed = bool(getattr(experts, "is_transposed", False))
    up_in, up_out = (up.shape[1], up.shape[2]) if transposed else (up.shape[2], up.shape[1])
    down_in, down_out = (down.shape[1], down.shape[2]) if transposed else (down.shape[2], down.shape[1])
    if up_out != (2 if gated else 1) * down_in or down_out != up_in or up.shape[0] != down.shape[0]:
        raise MoELayoutError(f"{cls}: expert shapes {tuple(up.shape)} and {tuple(down.shape)} "
                             "do not pair up")
    bias = any(n.endswith("_bias") for n in params)
    return dict(E=up.shape[0], H=up_in, I=down_in, gated=gated, bias=bias)


# ------------------------------------------------------------------------------ the router
def _router_weight(module: nn.Module, E: int, H: int) -> torch.Tensor | None:
    for sub in module.modules():
        w = getattr(sub, "weight", None)
        if isinstance(w, torch.Tensor) and tuple(w.shape) == (E, H):
            return w
    return None


def _probe_copy(router: nn.Module, H: int) -> nn.Module:
    """A float32 CPU copy with weights of std 1/sqrt(H) (logits of order 1: no saturated
    softmax) and selection biases at zero."""
    probe = copy.deepcopy(router)
    if any(t.is_meta for t in [*probe.parameters(), *probe.buffers()]):
        probe = probe.to_empty(device="cpu")
    probe = probe.to(device="cpu", dtype=torch.float32).eval()
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in probe.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / H**0.5)
        for b in probe.buffers():
            if b.is_floating_point():
                b.zero_()
    return probe


def router_gates(router: nn.Module, H: int) -> tuple[str, int | None]:
    """(gate convention, k) of a router, probed on 64 random tokens (k None: not probed)."""
    x = torch.randn(64, H, generator=torch.Generator().manual_seed(1))
    try:
        with torch.no_grad():
            out = _probe_copy(router, H)(x)
    except Exception:  # a router with inputs of its own: its convention stays unknown
        return "custom", None
    if not (isinstance(out, tuple) and len(out) == 3 and all(torch.is_tensor(t) for t in out)):
        return "custom", None
    logits, weights, index = (t.float() if t.is_floating_point() else t for t in out)
    if index.dim() != 2 or weights.shape != index.shape:
        return "custom", None
    return _name_convention(router, logits, weights, index) + _suffixes(router, weights, logits, index), index.shape[1]


def _name_convention(router, logits, weights, index) -> str:
    def close(a, b):
        return torch.allclose(a, b, rtol=1e-4, atol=1e-6)

    for base, scores in (("softmax", logits.softmax(-1)), ("sigmoid", logits.sigmoid())):
        picked = scores.gather(1, index)
        renormed = picked / picked.sum(-1, keepdim=True)
        for name, gates in ((f"{base}_topk", picked), (f"{base}_topk_renorm", renormed)):
            if close(weights, gates * (weights / gates).mean()):
                return name
    return "sparsemixer" if "sparsemixer" in type(router).__module__ + _source(router) else "custom"


def _source(router: nn.Module) -> str:
    import inspect

    try:
        return inspect.getsource(type(router).forward)
    except (OSError, TypeError):
        return ""


def _suffixes(router, weights, logits, index) -> str:
    out = ""
    if (getattr(router, "num_group", None) or getattr(router, "n_group", None) or 1) > 1:
        out += "+grouped"
    if hasattr(router, "e_score_correction_bias"):
        out += "+bias"
    scale = getattr(router, "routed_scaling_factor", None)
    if isinstance(scale, (int, float)) and scale != 1:
        out += f"*{scale:g}"
    return out


# --------------------------------------------------------------------------- shared experts
def _shared_width(module: nn.Module, H: int) -> int | None:
    """Intermediate width of an H -> H MLP of nn.Linear layers, else None."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if len(linears) < 2 or any(p.dim() == 3 for p in module.parameters()):
        return None
    if not any(lin.in_features == H for lin in linears) or linears[-1].out_features != H:
        return None
    return linears[-1].in_features  # the down projection, the last linear, reads the width


def _is_gate(module: nn.Module, H: int) -> bool:
    return isinstance(module, nn.Linear) and (module.in_features, module.out_features) == (H, 1)


def _returns_tensor(block: nn.Module, experts: nn.Module, H: int) -> bool:
    """Run the block on a tiny input of its own device (meta costs nothing) with batched_mm
    experts (the eager loop needs real data); a tuple return cannot be swapped for a tensor."""
    p = next(block.parameters())
    x = torch.zeros(1, 3, H, device=p.device, dtype=p.dtype)
    config = getattr(experts, "config", None)
    saved = getattr(config, "_experts_implementation_internal", None)
    try:
        if config is not None and saved is not None:
            config._experts_implementation_internal = "batched_mm"
        with torch.no_grad():
            out = block(x)
    except Exception:  # a block that needs more than hidden states: not ours to run
        return False
    finally:
        if config is not None and saved is not None:
            config._experts_implementation_internal = saved
    return torch.is_tensor(out) and out.shape == x.shape


# ---------------------------------------------------------------------------------- the walk
def _parents(model: nn.Module) -> dict[int, tuple[nn.Module, str]]:
    return {id(child): (parent, attr) for parent in model.modules()
            for attr, child in parent.named_children()}


def _block_at(name: str, block: nn.Module, parents, probed: dict, config_k: int | None) -> MoEBlock:
    """Read one candidate block (it holds stacked experts), or MoELayoutError. k is the
    router's own, as probed, else what the router, the block or the config says."""
    cls = type(block).__name__
    stacked = [(a, c) for a, c in block.named_children() if holds_stacked_experts(c)]
    if len(stacked) > 1:
        raise MoELayoutError(f"{cls}: {len(stacked)} stacked-expert children "
                             f"({', '.join(a for a, _ in stacked)}), expected one")
    experts_attr, experts = stacked[0]
    lay = expert_layout(experts)
    E, H = lay["E"], lay["H"]
    router_attr = next((a for a, c in block.named_children()
                        if c is not experts and _router_weight(c, E, H) is not None), None)
    if router_attr is None:
        raise MoELayoutError(f"{cls}: stacked experts [E={E}] but no sibling router with an "
                             f"[{E}, {H}] weight")
    router = getattr(block, router_attr)
    if type(router) not in probed:  # one probe per router class: the convention is the class's
        probed[type(router)] = router_gates(router, H)
    gates, k = probed[type(router)]
    k = k or getattr(router, "top_k", None) or getattr(block, "top_k", None) or config_k
    shared = {a: _shared_width(c, H) for a, c in block.named_children()
              if a not in (experts_attr, router_attr)}
    gate = next((a for a, c in block.named_children() if _is_gate(c, H)), None)
    parent, attr = parents[id(block)]
    info = MoEBlock(name=name, parent=parent, attr=attr, block=block, experts_attr=experts_attr,
                    router_attr=router_attr, num_experts=E, top_k=k, hidden=H,
                    expert_width=lay["I"], gated=lay["gated"], expert_bias=lay["bias"],
                    activation=getattr(experts, "act_fn", None), router_gates=gates,
                    kernels=hasattr(experts, "has_gate") and hasattr(experts, "config"),
                    shared=[a for a, w in shared.items() if w], shared_gate=gate,
                    shared_width=sum(w for w in shared.values() if w))
    _refuse_unswappable(info, probed)
    return info


def _refuse_unswappable(info: MoEBlock, probed: dict) -> None:
    """What a replacement of the routed experts could not reproduce, as MoELayoutError."""
    experts, cls = info.experts, type(info.block).__name__
    reasons = []
    gate_fn = getattr(type(experts), "_apply_gate", None)
    if gate_fn is not None and gate_fn.__name__ != "_default_apply_gate":
        reasons.append(f"{type(experts).__name__} has its own gate function")
    if getattr(experts, "has_post_expert_norm", False):
        reasons.append("a norm after each expert")
    if getattr(experts, "is_concatenated", True) is False:
        reasons.append("gate and up rows interleaved")
    if info.activation is None:
        reasons.append("experts without an act_fn")
    if not info.top_k:
        reasons.append("its router's k is unknown")
    known = {info.experts_attr, info.router_attr, info.shared_gate, *info.shared}
    extra = [a for a, c in info.block.named_children() if a not in known and any(c.parameters())]
    if extra or any(True for _ in info.block.parameters(recurse=False)):
        reasons.append(f"parameters of unknown role ({', '.join(extra) or 'its own'})")
    if not reasons and ("returns", type(info.block)) not in probed:
        probed[("returns", type(info.block))] = _returns_tensor(info.block, experts, info.hidden)
    if not reasons and not probed[("returns", type(info.block))]:
        reasons.append("it does not map hidden states to a tensor of their shape")
    if reasons:
        raise MoELayoutError(f"cannot swap the experts of {cls} at {info.name}: {'; '.join(reasons)}")


def find_moe_blocks(model: nn.Module) -> list[MoEBlock]:
    """Every sparse MoE block of `model`, in module order (see the module doc)."""
    parents, probed = _parents(model), {}
    config = getattr(model, "config", None)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    config_k = getattr(text, "num_experts_per_tok", None)
    found, first_problem = [], None
    for name, module in model.named_modules():
        if not any(holds_stacked_experts(c) for c in module.children()):
            continue
        try:
            found.append(_block_at(name, module, parents, probed, config_k))
        except MoELayoutError as e:
            if found or "cannot swap" in str(e):
                raise
            first_problem = first_problem or str(e)
    if not found:
        detail = f" ({first_problem})" if first_problem else ""
        raise MoELayoutError(f"{type(model).__name__}: no MoE block (no module holds stacked "
                             f"expert weights beside a router){detail}")
    return found
