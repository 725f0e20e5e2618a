"""The conditions a configuration is measured under, beside what it is: how much of the model is
measured (`--scope`), which call (`--workload`), and how experts are chosen (`--routing`).

Each is a short text a user types, parsed here, once, into a small frozen value; the Spec keeps
the text (normalised: `zipf:1.20` is stored as `zipf:1.2`), so records, keys and grids stay plain
data, and whoever acts on a condition parses the Spec's text with the same function:

    --scope     model | blocks | moe
    --workload  prefill | decode | generate:N
    --routing   router | uniform | balanced | zipf:S | biased:STD | replay:FILE, each but replay
                optionally followed by `,local:P`

A bad text is a SpecError naming the flag, the value and what is valid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from meo_profile.models.errors import SpecError

SCOPES = ("model", "blocks", "moe")  # the whole host, its block stack, its MoE sublayers alone
MERGE_REUSE = ("step", "sequence")  # merging variants at decode: merge every step, or once


# ------------------------------------------------------------------------------ workload
@dataclass(frozen=True)
class WorkloadKind:
    """`prefill` (one forward over B sequences of L tokens), `decode` (one step: B sequences add
    one token each after a context) or `generate` (a prefill, then `steps` decode steps)."""

    name: str
    steps: int = 0  # decode steps of `generate:N`

    @property
    def text(self) -> str:
        return f"generate:{self.steps}" if self.name == "generate" else self.name

    @property
    def decodes(self) -> bool:
        return self.name != "prefill"


WORKLOADS = ("prefill", "decode", "generate:N")
MAX_GENERATE_STEPS = 2**16


@dataclass(frozen=True)
class Call:
    """One forward of a workload, as counters and bounds read it: `tokens` per sequence go
    through the model, its attention reads `keys` positions per sequence (the KV cache's
    length at decode; `tokens` when there is none), and `chooses`: whether the layers that route
    each sequence as a whole route (and the merging ones merge) in it, or reuse the choice the
    prompt made (`--merge-reuse sequence`). `times`: how many such calls the workload makes."""

    tokens: int
    keys: int
    chooses: bool = True
    times: int = 1
    cached: bool = False  # the call reads and writes a KV cache (decoding a causal host)
    keeps: bool = False  # a prompt whose choice later steps keep (`--merge-reuse sequence`)


def workload_calls(spec) -> list[Call]:
    """The forwards one call of the spec's workload makes, in order. Decoding keeps a static
    KV cache of `cache_length(spec)` positions, which every step's attention reads whole
    (masked beyond what it has written), as transformers' static cache does; a prompt into an
    empty cache attends to its own tokens only (transformers then runs plain causal attention):
        prefill       one forward of L tokens, attending L
        decode        one step: 1 token per sequence after C, attending C + 1
        generate:N    a prompt of L tokens attending L, then N steps of 1, each attending L + N"""
    workload = parse_workload(spec.workload)
    chooses = spec.merge_reuse != "sequence"  # with reuse, a decode step chooses nothing
    if not workload.decodes:
        return [Call(spec.seq_len, spec.seq_len)]
    keys = cache_length(spec)
    if workload.name == "decode":
        return [Call(1, keys, chooses, cached=True)]
    return [Call(spec.seq_len, spec.seq_len, cached=True, keeps=not chooses),
            Call(1, keys, chooses, times=workload.steps, cached=True)]


def cache_length(spec) -> int:
    """Positions per sequence a decoding workload's KV cache holds: C + 1 for one step after C
    tokens, L + N for a prompt of L and N steps; the prefill's L otherwise (also for sizes
    without a workload: a config read at the host's own sizes)."""
    workload = parse_workload(getattr(spec, "workload", "prefill"))
    if workload.name == "decode":
        return spec.context + 1
    return spec.seq_len + workload.steps


def parse_workload(text: str) -> WorkloadKind:
    name, _, arg = str(text).strip().partition(":")
    if name in ("prefill", "decode") and not arg:
        return WorkloadKind(name)
    if name == "generate":
        steps = _number("workload", text, arg, int)
        if not 1 <= steps <= MAX_GENERATE_STEPS:
            raise SpecError("workload", text, f"generate:N takes N in 1..{MAX_GENERATE_STEPS:,}")
        return WorkloadKind(name, steps)
    raise SpecError("workload", text, f"unknown; choose from {', '.join(WORKLOADS)}")


# ------------------------------------------------------------------------------- routing
# kind -> what its parameter is (None: it takes none)
ROUTING_PARAMS = {"router": None, "uniform": None, "balanced": None, "zipf": "S",
                  "biased": "STD", "replay": "FILE"}
ROUTINGS = tuple(k if p is None else f"{k}:{p}" for k, p in ROUTING_PARAMS.items())


@dataclass(frozen=True)
class RoutingChoice:
    """Which experts the layers choose: the router's own choice (`router`), a distribution
    imposed on it (`uniform`, `balanced`, `zipf` with exponent `param`, `biased` with bias std
    `param`), or a recorded trace (`replay` of `path`); `local` is the probability that a token
    keeps the previous token's experts within its sequence (0: independent tokens)."""

    kind: str
    param: float | None = None
    path: str | None = None
    local: float = 0.0

    @property
    def text(self) -> str:
        base = self.kind
        if self.param is not None:
            base += f":{self.param:g}"
        elif self.path is not None:
            base += f":{self.path}"
        return base + (f",local:{self.local:g}" if self.local else "")

    @property
    def imposed(self) -> bool:
        """Whether the choice is made for the router rather than by it."""
        return self.kind != "router" or self.local > 0


def parse_routing(text: str) -> RoutingChoice:
    text = str(text).strip()
    base, local = text, 0.0
    head, sep, tail = text.rpartition(",")
    if sep and tail.strip().startswith("local:"):
        base = head.strip()
        local = _number("routing", text, tail.strip().removeprefix("local:"), float)
        if not 0.0 <= local <= 1.0:
            raise SpecError("routing", text, "local:P takes a probability P in [0, 1]")
    kind, _, arg = base.partition(":")
    if kind not in ROUTING_PARAMS:
        raise SpecError("routing", text, f"unknown; choose from {', '.join(ROUTINGS)}, "
                        "each but replay optionally followed by ,local:P")
    wants = ROUTING_PARAMS[kind]
    if wants is None:
        if arg:
            raise SpecError("routing", text, f"{kind} takes no parameter")
        return RoutingChoice(kind, local=local)
    if not arg:
        raise SpecError("routing", text, f"{kind} needs its parameter: {kind}:{wants}")
    if kind == "replay":
        if local:
            raise SpecError("routing", text, "a replayed trace keeps its own locality: drop ,local:P")
        return RoutingChoice(kind, path=arg)
    value = _number("routing", text, arg, float)
    if value < 0:
        raise SpecError("routing", text, f"{kind}:{wants} must be >= 0")
    return RoutingChoice(kind, param=value, local=local)


def _number(flag: str, text: str, arg: str, typ: type) -> float:
    try:
        value = typ(arg)
    except ValueError:
        kind = "an integer" if typ is int else "a number"
        raise SpecError(flag, text, f"{arg!r} is not {kind}") from None
    if not math.isfinite(value):
        raise SpecError(flag, text, f"{arg!r} is not a finite number")
    return value
