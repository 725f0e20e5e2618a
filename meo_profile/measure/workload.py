"""One configuration made runnable: the model and inputs built once, and the call to measure.

Everything expensive (building the host, swapping experts, making inputs, moving them to the
device) happens here, outside any timed or profiled region. `step()` is what timers, memory
probes and traces run:

- inference: one forward under `torch.inference_mode()`;
- train: one forward and the backward of a scalar loss. Parameter gradients are set to None at
  the start of each step, so every step allocates them afresh (memory counts them) and nothing
  accumulates across calls. MEO's merged weights are saved by autograd for the backward, which
  is the memory cost of merging in training.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from meo_profile.models import Spec, build_model, make_inputs


def scalar_loss(output: torch.Tensor) -> torch.Tensor:
    """Mean of the output in float32: a scalar whose gradient reaches every parameter used."""
    return output.float().mean()


def inference_step(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        with torch.inference_mode():
            return model(*inputs)

    return step


def train_step(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)  # fresh gradients each call: no accumulation
        loss = scalar_loss(model(*inputs))
        loss.backward()
        return loss.detach()

    return step


STEPS: dict[str, Callable[[nn.Module, tuple[torch.Tensor, ...]], Callable[[], torch.Tensor]]] = {
    "inference": inference_step,
    "train": train_step,
}


@dataclass
class Workload:
    spec: Spec
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    step: Callable[[], torch.Tensor]

    @classmethod
    def build(cls, spec: Spec) -> Workload:
        model = build_model(spec)
        inputs = make_inputs(spec)
        return cls(spec, model, inputs, STEPS[spec.mode](model, inputs))

    def clear_grads(self) -> None:
        """Drop gradients left by earlier steps, so a memory probe starts from weights + inputs."""
        self.model.zero_grad(set_to_none=True)

    def sync(self) -> None:
        if self.spec.device == "cuda":
            torch.cuda.synchronize()

    @property
    def weights_bytes(self) -> int:
        """Parameters (tied ones once) and buffers: what stays resident between calls."""
        tensors = list(self.model.parameters()) + list(self.model.buffers())
        return sum(t.numel() * t.element_size() for t in tensors)

    @property
    def inputs_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.inputs)

    @property
    def tokens(self) -> int:
        return self.spec.batch_size * self.spec.seq_len
