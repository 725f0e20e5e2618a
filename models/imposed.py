"""The routing a configuration imposes on its routers (`--routing` other than `router`): drawn
once, when the model is built, and read by every call, so that timed calls, which reuse one
input, reuse one routing, and no random number is drawn while timing.

Every MoE layer holds an `ImposedRouting`: a table of choices over (sequence, position),
(B, P, k), drawn from a distribution (models/distributions.py, seeded by the spec's seed and
the layer's place in the model) or read from a trace (models/routing_trace.py: layer i replays
the trace's layer i mod its layers, sequence b its sequence b mod its sequences, positions from
its first token). A call routing N rows of B sequences reads positions [start, start + N/B):
a token-level layer every token's choice, a sequence-level layer (one row per sequence, T = 1)
the choice at `start`, its one routed input per call. `start` is 0 for a prefill; a decode step
routes at its own position (`route_from`).

Only which experts are chosen changes. The router still computes its logits, the gates are the
variant's convention evaluated on them at the imposed experts (models/routing.GATES), ranked as
a router ranks them, and the choice runs through the variant's own dispatch: its timing is the
real kernel's. On a native host, `moe` keeps the model's own router running and a forward hook
replaces its choice, and its gates by the model's own convention; a convention that cannot be
evaluated at other experts (Phi-3.5-MoE's sparsemixer, a custom router) refuses `--routing`.

`router,local:P` keeps the router's own choice and applies the locality within each forward
(which positions keep their predecessor's experts is drawn at build); a decode step routes one
position per call, so it is refused there.
"""

from __future__ import annotations

import numpy as np
import torch
from meo_profile.models.catalog import host_shape
from meo_profile.models.conditions import (
    RoutingChoice,
    cache_length,
    parse_routing,
    parse_workload,
)
from meo_profile.models.distributions import choice_table, source_positions
from meo_profile.models.errors import SpecError
from meo_profile.models.layers import SparseLayer
from meo_profile.models.native import NativeMoE
from meo_profile.models.routing import GATES, ranked
from meo_profile.models.routing_trace import RoutingTrace, TraceError, load_trace, read_header
from torch import nn

# The variants whose router chooses k of E experts per routed input: the ones a choice can be
# imposed on. Why the others cannot take one:
TOP_K_VARIANTS = ("moe", "moe-seq", "meo", "meo-token", "ce")
NOT_TOP_K = {"xmoe": "chooses a variable number of experts per token (a probability threshold)",
             "smear": "merges all E experts, weighted by a softmax over all of them",
             "lory": "merges all E experts per segment, weighted by a softmax over all of them",
             "soft-moe": "sends every token to every expert through weighted slots"}


class ImposedRouting:
    """One layer's imposed choice: a drawn table of experts (B, P, k), or, for `router,local:P`,
    the position (B, P) each position takes the router's own choice from."""

    def __init__(self, table: torch.Tensor | None, source: torch.Tensor | None, sequences: int):
        self.table, self.source, self.sequences = table, source, sequences
        self.start = 0  # the position of a call's first token
        self._calls: dict[tuple[int, int], torch.Tensor] = {}

    @property
    def drawn(self) -> bool:
        """Whether the experts are drawn (else the router's own, made local)."""
        return self.table is not None

    def choice(self, rows: int, own: torch.Tensor | None = None) -> torch.Tensor:
        """The experts of a call routing `rows` rows, sequence-major: (rows, k) int64. The
        slice is cut once per (start, rows) and kept, so repeated calls only look it up."""
        key = (self.start, rows)
        if key not in self._calls:
            self._calls[key] = self._slice(rows)
        if self.drawn:
            return self._calls[key]
        B, k = self.sequences, own.shape[1]
        source = self._calls[key]  # (B, T) within the call
        return own.view(B, -1, k).gather(1, source[..., None].expand(-1, -1, k)).view(rows, k)

    def _slice(self, rows: int) -> torch.Tensor:
        B, start = self.sequences, self.start
        whole = self.table if self.drawn else self.source
        if rows % B:
            raise ValueError(f"a call routes {rows} rows, not a whole number per sequence of {B}")
        end = start + rows // B
        if end > whole.shape[1]:
            raise ValueError(f"routing drawn for {whole.shape[1]} positions; this call routes "
                             f"positions {start}..{end - 1}")
        if self.drawn:  # (B, T, k) -> (B·T, k), sequence-major as layers flatten (B, T)
            return whole[:, start:end].reshape(rows, -1).contiguous()
        return (whole[:, start:end] - start).clamp(min=0).contiguous()  # (B, T) within the call


# ------------------------------------------------------------------------------- building
def positions_routed(spec) -> int:
    """Positions a configuration's calls route, per sequence: L for a prefill; a decode step's
    context C and its own; the prompt and the N steps of `generate:N`."""
    return cache_length(spec)  # the positions a decoding workload's cache holds, the same


def layer_seed(seed: int, layer: int) -> int:
    """A generator seed per (spec seed, layer): layers draw independently, reproducibly."""
    return (seed * 1_000_003 + 7_919 * (layer + 1)) % 2**63


def imposed_for(choice: RoutingChoice, spec, layer: int, num_experts: int, top_k: int,
                device: torch.device | str, trace: RoutingTrace | None = None) -> ImposedRouting:
    """Layer `layer`'s imposed routing (see the module doc), on `device`; on the meta device
    the shapes alone (counting reads no routing)."""
    B, P = spec.batch_size, positions_routed(spec)
    if torch.device(device).type == "meta":
        if choice.kind == "router":
            return ImposedRouting(None, torch.empty(B, P, dtype=torch.long, device="meta"), B)
        return ImposedRouting(torch.empty(B, P, top_k, dtype=torch.long, device="meta"), None, B)
    gen = torch.Generator().manual_seed(layer_seed(spec.seed, layer))
    if choice.kind == "router":
        return ImposedRouting(None, source_positions(B, P, choice.local, gen).to(device), B)
    if choice.kind == "replay":
        table = replayed(trace, layer, B, P)
    else:
        table = choice_table(choice.kind, choice.param, choice.local, B, P, num_experts, top_k, gen)
    return ImposedRouting(table.to(device), None, B)


def replayed(trace: RoutingTrace, layer: int, B: int, P: int) -> torch.Tensor:
    """The trace's choices for layer `layer` (cycling over its layers), sequences 0..B-1
    (cycling over its sequences), positions 0..P-1: (B, P, k) int64."""
    index = trace.top_k_index[layer % trace.header.layers]  # (S, T, k)
    rows = np.arange(B) % trace.header.sequences
    return torch.from_numpy(index[rows, :P].astype(np.int64))


def routed_modules(model: nn.Module) -> list[nn.Module]:
    """The model's MoE layers in model order: the project's, or a native host's own blocks."""
    return [m for m in model.modules() if isinstance(m, (SparseLayer, NativeMoE))]


def impose_routing(model: nn.Module, spec) -> None:
    """Give every MoE layer of `model` the spec's routing; a native host's own blocks get a
    hook that records their choice (and imposes one when asked)."""
    choice = parse_routing(spec.routing)
    trace = load_trace(choice.path) if choice.kind == "replay" else None
    for i, module in enumerate(routed_modules(model)):
        device = next(module.parameters()).device
        if isinstance(module, NativeMoE):
            imposed = (imposed_for(choice, spec, i, module.num_experts, module.top_k, device, trace)
                       if choice.imposed else None)
            hook_native_router(module, imposed)
        elif choice.imposed:
            router = module.router
            router.imposed = imposed_for(choice, spec, i, module.experts.num_experts,
                                         router.top_k, device, trace)


def route_from(model: nn.Module, start: int) -> None:
    """Route the next calls from position `start` (a decode step: its position)."""
    for module in routed_modules(model):
        imposed = module.imposed if isinstance(module, NativeMoE) else module.router.imposed
        if imposed is not None:
            imposed.start = start


# ------------------------------------------------------------------------ native hosts
def native_gates(convention: str | None):
    """(logits, chosen experts) -> gates of a native router's convention, as models/discover.py
    names it (`softmax_topk_renorm`, `sigmoid_topk_renorm+grouped+bias*2.5`, ...): the base and a
    `*s` scale; `+grouped` and `+bias` change only which experts are chosen. None when the
    gates cannot be evaluated at other experts (sparsemixer, custom)."""
    base, _, scale = (convention or "").partition("*")
    gates = GATES.get(base.split("+")[0])
    if gates is None:
        return None
    factor = float(scale) if scale else 1.0
    return gates if factor == 1.0 else (lambda logits, index: factor * gates(logits, index))


def hook_native_router(block: NativeMoE, imposed: ImposedRouting | None) -> None:
    """A forward hook on the block's router: it keeps the chosen experts on the block
    (`last_top_k_index`, read after timing) and, with `imposed`, replaces the router's
    (logits, gates, experts) by the imposed experts and their gates by its convention."""
    gates = native_gates(block.router_gates)
    block.imposed = imposed

    def hook(module: nn.Module, args, output):
        if not (isinstance(output, tuple) and len(output) == 3):  # a router of its own kind
            return output
        logits, weights, index = output
        if imposed is not None:
            own = None if imposed.drawn else index
            chosen = imposed.choice(index.shape[0], own)  # (N, k)
            routing = ranked(chosen, gates(logits, chosen))
            weights, index = routing.top_k_weights.to(weights.dtype), routing.top_k_index.to(index.dtype)
        block.last_top_k_index = index
        return logits, weights, index

    block.router.register_forward_hook(hook)


# ------------------------------------------------------------------------------ validation
def check_routing(spec) -> None:
    """SpecError (naming --routing) for a routing the configuration cannot take (see the
    module doc); a replayed trace must match its E and k and cover its positions."""
    choice = parse_routing(spec.routing)
    if not choice.imposed:
        return

    def refuse(reason: str) -> SpecError:
        return SpecError("routing", spec.routing, reason)

    if spec.variant not in TOP_K_VARIANTS:
        why = NOT_TOP_K.get(spec.variant, "does not choose k of E experts per input")
        raise refuse(f"{spec.variant} {why}; --routing imposes k of E: use router")
    if choice.kind == "router" and parse_workload(spec.workload).decodes:
        raise refuse("router,local:P keeps choices within one forward, and a decode step routes "
                     "one position: draw the routing instead (uniform,local:P)")
    shape = host_shape(spec.host)
    if spec.variant == "moe" and shape.native and native_gates(shape.router_gates) is None:
        raise refuse(f"{spec.host}'s own router ({shape.router_gates}) has gates that cannot be "
                     "evaluated at other experts: use router, or another variant")
    if choice.kind == "replay":
        check_trace(choice.path, spec, refuse)


def check_trace(path: str, spec, refuse) -> None:
    try:
        header = read_header(path)
    except TraceError as e:
        raise refuse(str(e)) from None
    if (header.num_experts, header.top_k) != (spec.experts_total, spec.top_k):
        raise refuse(f"the trace routes k={header.top_k} of E={header.num_experts}; this "
                     f"configuration routes k={spec.top_k} of E={spec.experts_total}")
    if positions_routed(spec) > header.tokens:
        raise refuse(f"the trace holds {header.tokens} tokens per sequence; this configuration "
                     f"routes {positions_routed(spec)} positions per sequence")
