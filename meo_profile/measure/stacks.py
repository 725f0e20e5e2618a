"""A stack of identical blocks, counted from two short traces.

fvcore's cost is its trace: one traced forward, whose time grows with the number of blocks (a
24-block bert-large takes ten times a 2-block one). Where every block of a stack costs the same
(the host says so: `HostShape.uniform_blocks`), the counts of a model with n blocks per stack
follow exactly from two traced models, with one and with two blocks per stack:

    count(n) = count(1) + (n - 1) * (count(2) - count(1))

for every additive quantity: MACs, MACs by part and by operator, ops counted as 0 (calls),
parameters total and active. Per-module MACs are rebuilt by name: a module outside the blocks
keeps its count (a container of blocks grows like the total), and a module of the second block
of a stack is repeated for blocks 2..n under its own index. The first block may differ from the
others (T5's relative position bias lives in block 0) and is traced, never repeated.
tests/test_flops.py holds the result equal to the full trace, field by field, on every host.

These are fvcore's counts (`flops_source: fvcore`): traced, combined by exact arithmetic.
"""

from __future__ import annotations

import dataclasses

from meo_profile.measure.counts import Counts

ADDITIVE_MAPS = ("macs_by_part", "macs_by_operator", "unsupported_ops")
ADDITIVE_TOTALS = ("macs", "params_total", "params_active")


def extend(one: Counts, two: Counts, blocks: int) -> Counts:
    """Counts of `blocks` blocks per stack from the traces with one and two (blocks >= 1)."""
    extra = blocks - 1
    totals = {f: getattr(one, f) + extra * (getattr(two, f) - getattr(one, f))
              for f in ADDITIVE_TOTALS}
    maps = {f: _extend_map(getattr(one, f), getattr(two, f), extra) for f in ADDITIVE_MAPS}
    return dataclasses.replace(two, **totals, **maps,
                               macs_by_module=_extend_modules(one.macs_by_module,
                                                              two.macs_by_module, extra))


def _extend_map(one: dict[str, int], two: dict[str, int], extra: int) -> dict[str, int]:
    return {k: one.get(k, 0) + extra * (two[k] - one.get(k, 0)) for k in two}


def block_index(name: str) -> int | None:
    """Which part of a module's dotted name is its block number (the first numeric part: 4 in
    `model.bert.encoder.layer.3.output`, where `3` sits), or None outside the blocks."""
    return next((i for i, part in enumerate(name.split(".")) if part.isdigit()), None)


def _extend_modules(one: dict[str, int], two: dict[str, int], extra: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, macs in two.items():
        at = block_index(name)
        if at is None:  # the model, a stack, the embeddings, the head
            out[name] = one.get(name, 0) + extra * (macs - one.get(name, 0))
            continue
        parts = name.split(".")
        if parts[at] == "0":
            out[name] = macs
            continue
        for block in range(1, extra + 1):  # the second block, repeated under each index
            out[".".join([*parts[:at], str(block), *parts[at + 1:]])] = macs
    return out
