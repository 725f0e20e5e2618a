"""Routing distributions: which k of E experts each routed input chooses, drawn once per layer,
before anything is timed (`--routing uniform|balanced|zipf:S|biased:STD`, each optionally
followed by `,local:P`).

Symbols: E experts, k chosen per input, B sequences, P positions. A routed input is a token
(token-level variants) or a sequence (sequence-level ones). Choices are drawn as a table over
(sequence, position), (B, P, k), so that a call of any number of tokens reads its own slice of it
(models/imposed.py):

| kind       | one input's k experts                                                            |
|------------|----------------------------------------------------------------------------------|
| uniform    | k of E uniformly, without replacement                                            |
| balanced   | round robin, the best case: input i takes experts ik, ..., ik + k - 1 mod E, the   |
|            | inputs numbered position by position (sequence b takes number (b + p) mod B of     |
|            | position p), so any run of whole positions loads the experts within one pair of    |
|            | each other, evenly when its pairs are a multiple of E                            |
| zipf:S     | popularity of the expert ranked r ∝ r^-S (ranks: a random order of the experts,    |
|            | one per layer); k drawn without replacement in proportion to it: Gumbel top-k on   |
|            | log-popularity, the Plackett-Luce draw (its first pick is exactly ∝ r^-S)         |
| biased:STD | Megatron-LM's forced-biased router: logits N(0, 1) per input and expert, plus a    |
|            | per-expert bias N(0, STD²) fixed per layer; the top k                             |

`,local:P`: within a sequence, each position keeps the previous position's experts with
probability P (position 0 always draws afresh). P = 0 is independent inputs; any P leaves every
position's own distribution the base one, and changes only how often neighbours agree.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

# (sequences B, positions P, experts E, k, the kind's parameter, generator) -> (B, P, k) int64
Draw = Callable[[int, int, int, int, float | None, torch.Generator], torch.Tensor]


def gumbel_top_k(log_weights: torch.Tensor, inputs: int, k: int,
                 gen: torch.Generator) -> torch.Tensor:
    """`inputs` draws of k distinct experts, without replacement, each pick in proportion to
    exp(log_weights) among those left: top-k of log-weight + Gumbel noise. (E,) -> (inputs, k)."""
    u = torch.rand(inputs, log_weights.numel(), generator=gen, dtype=torch.float64)
    gumbel = -torch.log(-torch.log(u.clamp_(min=1e-300)))  # (inputs, E); u = 0 would give inf
    return (log_weights.double() + gumbel).topk(k, dim=-1).indices  # (inputs, k)


def uniform(B: int, P: int, E: int, k: int, _: float | None, gen: torch.Generator) -> torch.Tensor:
    return gumbel_top_k(torch.zeros(E), B * P, k, gen).view(B, P, k)


def zipf(B: int, P: int, E: int, k: int, s: float | None, gen: torch.Generator) -> torch.Tensor:
    rank = torch.randperm(E, generator=gen) + 1  # (E,) each expert's popularity rank, 1 = most
    return gumbel_top_k(-s * rank.double().log(), B * P, k, gen).view(B, P, k)


def biased(B: int, P: int, E: int, k: int, std: float | None, gen: torch.Generator) -> torch.Tensor:
    bias = std * torch.randn(E, generator=gen)  # (E,) fixed for the layer
    logits = torch.randn(B * P, E, generator=gen) + bias  # (B·P, E)
    return logits.topk(k, dim=-1).indices.view(B, P, k)


def balanced(B: int, P: int, E: int, k: int, _: float | None, gen: torch.Generator) -> torch.Tensor:
    p, b = torch.arange(P)[None, :], torch.arange(B)[:, None]
    # Slots numbered position-major, so every run of whole positions is one run of the round
    # robin; sequence b takes slot (b + p) mod B of position p, so that a sequence does not keep
    # the same k experts from one position to the next (with B·k = E it would, for ever).
    i = p * B + (b + p) % B  # (B, P)
    return (i[..., None] * k + torch.arange(k)) % E  # (B, P, k)


DRAWS: dict[str, Draw] = {"uniform": uniform, "balanced": balanced, "zipf": zipf,
                          "biased": biased}


def source_positions(B: int, P: int, local: float, gen: torch.Generator) -> torch.Tensor:
    """Where each position takes its experts from under `,local:P`: itself when it draws afresh
    (probability 1 - P, and always at position 0), else its predecessor's source. (B, P) int64."""
    keep = torch.rand(B, P, generator=gen) < local  # (B, P)
    keep[:, 0] = False
    positions = torch.arange(P).expand(B, P)
    # the last position at or before p that drew afresh: a running maximum of fresh positions
    return torch.where(keep, 0, positions).cummax(dim=1).values


def choice_table(kind: str, param: float | None, local: float, B: int, P: int, E: int, k: int,
                 gen: torch.Generator) -> torch.Tensor:
    """The k experts of every (sequence, position): (B, P, k) int64, drawn from `gen` alone."""
    fresh = DRAWS[kind](B, P, E, k, param, gen)  # (B, P, k)
    if not local:
        return fresh
    source = source_positions(B, P, local, gen)  # (B, P)
    return fresh.gather(1, source[..., None].expand(B, P, k))
