"""Named phases (router, dispatch, compress, experts, merge, combine) for torch.profiler traces.

`phase(name)` is a `record_function` range while a profiler is recording and a no-op otherwise,
so timing runs pay nothing and FLOP-counting traces see no profiler ops.
"""

from __future__ import annotations

import contextlib

import torch
from torch.autograd import profiler

# The phases a MoE layer marks, in the order a layer runs them.
PHASES = ("router", "dispatch", "compress", "experts", "merge", "combine")


def phase(name: str) -> contextlib.AbstractContextManager:
    if torch.autograd._profiler_enabled():
        return profiler.record_function(name)
    return contextlib.nullcontext()
