"""A stack of identical blocks, counted from one short trace.

fvcore's cost is its trace: one traced forward, whose time grows with the number of blocks (a
24-block bert-large takes twenty times a 1-block one). Where every block of a stack costs the
same (the host says so: `HostShape.uniform_blocks`), a model of n blocks per stack follows
exactly from a model with t of them, traced once, and the count of its last block (each stack's
block t-1, read from the same trace by module):

    count(n) = count(t) + (n - t) * count(block t-1)

for every additive quantity: MACs, MACs by part and by operator, ops counted as 0 (calls),
parameters total and active. t is 1, or 2 where the first block differs from the rest (T5's
relative position bias lives in block 0: `HostShape.first_block_differs`), so the first block is
traced, never repeated. Per-module MACs are rebuilt by name: a module of the repeated block is
repeated under each new index, a module outside the blocks gains the repeated blocks it holds
(the model, a stack), and every other module keeps its traced count.
tests/test_flops.py holds the result equal to the full trace, field by field, on every host.

These are fvcore's counts (`flops_source: fvcore`): traced, combined by exact arithmetic.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from meo_profile.measure.counts import Counts

ADDITIVE_MAPS = ("macs_by_part", "macs_by_operator", "unsupported_ops")
ADDITIVE_TOTALS = ("macs", "params_total", "params_active")


def block_index(name: str) -> int | None:
    """Which part of a module's dotted name is its block number (the first numeric part: 4 in
    `model.bert.encoder.layer.3.output`, where `3` sits), or None outside the blocks."""
    return next((i for i, part in enumerate(name.split(".")) if part.isdigit()), None)


def block_roots(names: Iterable[str], index: int) -> list[str]:
    """The block modules numbered `index`, one per stack (`...encoder.layer.0`, and for a
    seq2seq model `...encoder.block.0` and `...decoder.block.0`)."""
    roots = []
    for name in names:
        at = block_index(name)
        parts = name.split(".")
        if at is not None and at == len(parts) - 1 and parts[at] == str(index):
            roots.append(name)
    return sorted(roots)


def extend(traced: Counts, block: Counts, roots: list[str], blocks: int) -> Counts:
    """Counts of `blocks` blocks per stack, from a trace whose last block per stack is `roots`
    (counted alone as `block`)."""
    first_new = int(roots[0].split(".")[-1]) + 1  # blocks traced per stack
    extra = blocks - first_new
    totals = {f: getattr(traced, f) + extra * getattr(block, f) for f in ADDITIVE_TOTALS}
    maps = {f: _add_map(getattr(traced, f), getattr(block, f), extra) for f in ADDITIVE_MAPS}
    modules = _extend_modules(traced.macs_by_module, block.macs_by_module, roots,
                              range(first_new, blocks))
    return dataclasses.replace(traced, **totals, **maps, macs_by_module=modules)


def _add_map(base: dict[str, int], block: dict[str, int], times: int) -> dict[str, int]:
    return {k: base.get(k, 0) + times * block.get(k, 0) for k in sorted(set(base) | set(block))}


def _extend_modules(traced: dict[str, int], block: dict[str, int], roots: list[str],
                    new_indices: range) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, macs in traced.items():
        if block_index(name) is None:  # the model, a stack, the embeddings, the head
            held = sum(block[r] for r in roots if not name or r.startswith(f"{name}."))
            out[name] = macs + len(new_indices) * held
        else:
            out[name] = macs
    for name, macs in block.items():  # the repeated block, under each new index
        at = block_index(name)
        parts = name.split(".")
        for index in new_indices:
            out[".".join([*parts[:at], str(index), *parts[at + 1:]])] = macs
    return out
