"""One configuration made runnable: the model and inputs built once, and the call to measure.

Everything expensive (building the host, swapping experts, making inputs, moving them to the
device, a decode's prompt) happens here, outside any timed or profiled region. `step()` is what
timers, memory probes and traces run, one call of the spec's workload (`--workload`):

- prefill, inference: one forward of B sequences of L tokens under `torch.inference_mode()`;
- prefill, train: one forward and the backward of a scalar loss. Parameter gradients are set to
  None at the start of each step, so every step allocates them afresh (memory counts them) and
  nothing accumulates across calls. MEO's merged weights are saved by autograd for the
  backward, which is the memory cost of merging in training;
- decode: one step of B sequences, one token each, after a prompt of C tokens run here (the
  KV cache and the routing states it leaves are the step's context); the step then rewinds,
  so every timed call is the same step at position C;
- generate:N: the prompt of L tokens and N steps, then a rewind to the empty state. Its
  `parts` time the prompt alone (`prefill_ms`) and the N steps alone from the prompt's state
  (`decode_ms_per_step`, per step).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn

from meo_profile.models import Spec, build_model, make_inputs
from meo_profile.models.conditions import parse_workload, workload_calls
from meo_profile.models.decode import DecodeInputs, Decoding, decode_inputs

Step = Callable[[], torch.Tensor]


def scalar_loss(output: torch.Tensor) -> torch.Tensor:
    """Mean of the output in float32: a scalar whose gradient reaches every parameter used."""
    return output.float().mean()


def inference_step(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Step:
    def step() -> torch.Tensor:
        with torch.inference_mode():
            return model(*inputs)

    return step


def train_step(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> Step:
    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)  # fresh gradients each call: no accumulation
        loss = scalar_loss(model(*inputs))
        loss.backward()
        return loss.detach()

    return step


STEPS: dict[str, Callable[[nn.Module, tuple[torch.Tensor, ...]], Step]] = {
    "inference": inference_step,
    "train": train_step,
}


@dataclass(frozen=True)
class Part:
    """A share of a workload timed on its own: `calls` yields its step (set up before, undone
    after), which runs `per_call` of the units its field counts (decode steps)."""

    calls: Callable[[], contextlib.AbstractContextManager[Step]]
    per_call: int = 1


@dataclass
class Workload:
    spec: Spec
    model: nn.Module
    inputs: tuple[torch.Tensor, ...]
    step: Step
    decoding: Decoding | None = None
    parts: dict[str, Part] = field(default_factory=dict)  # record field -> the share it times

    @classmethod
    def build(cls, spec: Spec) -> Workload:
        return BUILDERS[parse_workload(spec.workload).name](spec)

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
    def state_bytes(self) -> int:
        """What a decode keeps between calls: KV cache, running sums, merged experts kept."""
        return 0 if self.decoding is None else self.decoding.state_bytes

    @property
    def tokens(self) -> int:
        """Tokens one call puts through the model: B·L, B per decode step, B·(L + N) to generate."""
        return self.spec.batch_size * sum(c.tokens * c.times for c in workload_calls(self.spec))


# ------------------------------------------------------------------------------ builders
def _prefill(spec: Spec) -> Workload:
    model = build_model(spec)
    inputs = make_inputs(spec)
    return Workload(spec, model, inputs, STEPS[spec.mode](model, inputs))


def _decoding(spec: Spec) -> tuple[nn.Module, Decoding, DecodeInputs]:
    model = build_model(spec)
    return model, Decoding(model, spec), decode_inputs(spec)


def _decode(spec: Spec) -> Workload:
    """One step at position C, rewound after each call (see the module doc). A model that
    keeps nothing between steps (the `layer` host with token routing) needs no prompt."""
    model, dec, tokens = _decoding(spec)
    if dec.keeps_state:
        with torch.inference_mode():
            dec.prompt(tokens.prompt)
    after = dec.snapshot()

    def step() -> torch.Tensor:
        with torch.inference_mode():
            out = dec.step(tokens.steps[0])  # (B, 1, V) logits or (B, 1, d) hidden
            dec.restore(after)
            return out

    inputs = tokens.all if dec.keeps_state else tuple(tokens.steps)
    return Workload(spec, model, inputs, step, dec)


def _generate(spec: Spec) -> Workload:
    model, dec, tokens = _decoding(spec)
    empty = dec.snapshot()

    def run_steps(after) -> torch.Tensor:
        out = None
        for token in tokens.steps:
            out = dec.step(token)
        dec.restore(after)
        return out

    def generate() -> torch.Tensor:
        with torch.inference_mode():
            dec.prompt(tokens.prompt)
            return run_steps(empty)

    @contextlib.contextmanager
    def prefill_calls() -> Iterator[Step]:
        def call() -> torch.Tensor:
            with torch.inference_mode():
                out = dec.prompt(tokens.prompt)
                dec.restore(empty)
                return out

        yield call

    @contextlib.contextmanager
    def decode_calls() -> Iterator[Step]:
        with torch.inference_mode():
            dec.prompt(tokens.prompt)
        after = dec.snapshot()

        def call() -> torch.Tensor:
            with torch.inference_mode():
                return run_steps(after)

        try:
            yield call
        finally:
            dec.restore(empty)

    parts = {"prefill_ms": Part(prefill_calls),
             "decode_ms_per_step": Part(decode_calls, per_call=len(tokens.steps))}
    return Workload(spec, model, tokens.all, generate, dec, parts)


BUILDERS: dict[str, Callable[[Spec], Workload]] = {
    "prefill": _prefill,
    "decode": _decode,
    "generate": _generate,
}
