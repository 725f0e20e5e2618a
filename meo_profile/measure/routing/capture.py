"""Record a model's routing: a forward hook on the router of each MoE block, nothing else.

The blocks are found as native hosts find them (models/discover.py): a router beside stacked
experts, returning (logits, gates, experts) as transformers' MoE routers do. Each hook copies
the experts (and gates) its router chose for every token of the batch; the model runs as it is.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from torch import nn

from meo_profile.core.errors import BadInput
from meo_profile.models.discover import MoEBlock, MoELayoutError, find_moe_blocks
from meo_profile.models.routing_trace import RoutingTrace, TraceHeader


class CaptureError(BadInput):
    """A model whose routing cannot be recorded; `str()` is one line."""


def moe_blocks(model: nn.Module, name: str) -> list[MoEBlock]:
    """The model's MoE blocks, all with one E and one k (a trace holds one of each)."""
    try:
        blocks = find_moe_blocks(model)
    except MoELayoutError as e:
        raise CaptureError(f"{name}: {e}") from None
    shapes = {(b.num_experts, b.top_k) for b in blocks}
    if len(shapes) > 1:
        raise CaptureError(f"{name}: its MoE blocks route different (E, k): {sorted(shapes)}")
    return blocks


class Recorder:
    """What one router chose, batch after batch: (b, T, k) experts and gates per call."""

    def __init__(self, block: MoEBlock):
        self.block = block
        self.index: list[torch.Tensor] = []
        self.weights: list[torch.Tensor] = []
        self.shape: tuple[int, int] = (0, 0)  # (b, T) of the batch running now

    def __call__(self, module: nn.Module, args, output) -> None:
        if not (isinstance(output, tuple) and len(output) == 3 and output[2].dim() == 2):
            raise CaptureError(f"the router of {self.block.name} returns no (logits, gates, "
                               "experts) triple: its choice cannot be read")
        _, weights, index = output  # (b·T, k) each, sequence-major
        b, T = self.shape
        self.index.append(index.reshape(b, T, -1).to("cpu", torch.int32))
        self.weights.append(weights.reshape(b, T, -1).to("cpu", torch.float32))


@torch.inference_mode()
def capture_routing(model: nn.Module, sequences: Iterable[torch.Tensor], *, model_name: str,
                    text_name: str | None = None) -> RoutingTrace:
    """Run `model` (a transformers causal LM) over batches of token ids, (b, T) each, and
    return every MoE layer's choices as a routing trace."""
    blocks = moe_blocks(model, model_name)
    recorders = [Recorder(b) for b in blocks]
    hooks = [b.router.register_forward_hook(r) for b, r in zip(blocks, recorders, strict=True)]
    device = next(model.parameters()).device
    try:
        for batch in sequences:
            for r in recorders:
                r.shape = tuple(batch.shape)
            model(input_ids=batch.to(device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    index = np.stack([torch.cat(r.index).numpy() for r in recorders])  # (layers, S, T, k)
    weights = np.stack([torch.cat(r.weights).numpy() for r in recorders])
    _, S, T, k = index.shape
    header = TraceHeader(model_name, blocks[0].num_experts, k, S, T,
                         tuple(b.name for b in blocks), blocks[0].router_gates, text_name)
    return RoutingTrace(header, index, weights)
