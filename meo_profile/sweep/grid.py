"""Grids of configurations: axes (spec field -> values) expanded into validated Specs.

A grid is a list of blocks; each block has its own axes and metrics, so one preset can count
FLOPs on full-size hosts and time a smaller layer. Built-in presets live in `PRESETS`; a YAML
config file has the same shape:

    metrics: [flops, latency, memory]        # default for blocks that do not say
    grid:                                    # one block, or `grids:` with a list of blocks
      host: layer
      variant: [moe, meo]
      top_k: [1, 2, 4]
      experts: 16                            # flag spellings (experts, top-k) are accepted too
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from meo_profile.core.errors import BadInput
from meo_profile.core.inputs import read_text, split_list
from meo_profile.measure.run import MEASUREMENTS
from meo_profile.models.spec import FLAG_OF, SPEC_FIELDS, Spec, SpecError, flag_of

# flag spelling -> spec field, so config files and axis flags take what the CLI shows
_ALIASES = {flag.lstrip("-").replace("-", "_"): name for name, flag in FLAG_OF.items()}


class GridError(BadInput):
    """A grid or config file that cannot be expanded; one line naming the key and the value."""


# What a grid leaves out when it crosses its axes (SpecErrors of kind "impossible", said wherever
# the count is printed).
NOT_A_MODEL_TEXT = ("top-k above the expert count, Lory segments that do not divide the "
                    "sequence, or a workload the host or variant cannot run")


@dataclass
class Block:
    axes: dict[str, list[Any]]
    metrics: tuple[str, ...] = MEASUREMENTS
    label: str = ""

    def specs(self) -> tuple[list[Spec], int]:
        """Every valid combination, and how many combinations were no model (NOT_A_MODEL_TEXT:
        SpecErrors of kind "impossible")."""
        names = list(self.axes)
        specs, seen, impossible = [], set(), 0
        for values in itertools.product(*(self.axes[n] for n in names)):
            try:
                spec = crossed_spec(dict(zip(names, values)))
            except SpecError as e:
                if e.kind == "impossible":  # a grid crosses k with E, T with L: simply not a model
                    impossible += 1
                    continue
                raise
            if spec not in seen:  # dense ignores E and k: one baseline, not one per cell
                seen.add(spec)
                specs.append(spec)
        return specs, impossible

    def jobs(self) -> tuple[list[tuple[Spec, tuple[str, ...]]], int]:
        specs, impossible = self.specs()
        return [(spec, self.metrics) for spec in specs], impossible

    def with_axes(self, axes: dict[str, list[Any]]) -> Block:
        return Block({**self.axes, **axes}, self.metrics, self.label)

    def with_metrics(self, metrics: tuple[str, ...]) -> Block:
        return Block(self.axes, metrics, self.label)


def crossed_spec(fields: dict[str, Any]) -> Spec:
    """The spec of one combination of a grid's axes. A value that does not apply to the rest
    (merge reuse at prefill, or for a variant that merges nothing) is dropped, as a variant's
    knob is for the other variants: `--workload prefill,decode --merge-reuse step,sequence`
    crosses into one prefill and two decodes of a merging variant, one decode of the others."""
    while True:  # each retry drops one more field given: it ends
        try:
            return Spec(**fields)
        except SpecError as e:
            if e.kind != "inapplicable" or fields.get(e.field_name) is None:
                raise
            fields = {**fields, e.field_name: None}


@dataclass
class Grid:
    blocks: list = field(default_factory=list)  # Blocks, or anything with jobs/with_axes/with_metrics

    def expand(self) -> tuple[list[tuple[Spec, tuple[str, ...]]], int]:
        """(spec, metrics) for every configuration in order, and the impossible count."""
        jobs, seen, impossible = [], set(), 0
        for block in self.blocks:
            block_jobs, skipped = block.jobs()
            impossible += skipped
            for job in block_jobs:
                if job not in seen:  # blocks may overlap: measure each configuration once
                    seen.add(job)
                    jobs.append(job)
        return jobs, impossible

    def override(self, axes: dict[str, list[Any]]) -> Grid:
        """The same grid with some axes replaced in every block (axis flags on a preset)."""
        return Grid([b.with_axes(axes) for b in self.blocks])

    def with_metrics(self, metrics: tuple[str, ...]) -> Grid:
        return Grid([b.with_metrics(metrics) for b in self.blocks])


# ------------------------------------------------------------------------------ parsing
def field_name(key: str) -> str:
    name = key.replace("-", "_")
    name = _ALIASES.get(name, name)
    if name not in SPEC_FIELDS:
        raise GridError(f"unknown key {key!r}; use spec fields or flags such as "
                        "host, variant, experts, top_k, seq_len, batch_size")
    return name


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def parse_metrics(value: Any) -> tuple[str, ...]:
    metrics = tuple(as_list(value))
    for m in metrics:
        if m not in MEASUREMENTS:
            raise GridError(f"metrics {m!r}: choose from {', '.join(MEASUREMENTS)}")
    return metrics


def block_from_mapping(axes: dict[str, Any], metrics: tuple[str, ...], label: str = "") -> Block:
    if not isinstance(axes, dict) or not axes:
        raise GridError(f"grid block {label or ''} must be a mapping of spec fields to values")
    typed = {}
    for key, values in axes.items():
        name = field_name(key)
        typed[name] = [typed_value(key, name, v) for v in as_list(values)]
    return Block(typed, metrics, label)


def typed_value(key: str, name: str, value: Any) -> Any:
    """A config-file value as its spec field's type; a wrong one names the key."""
    typ = _FIELD_TYPES[name]
    if value is None or isinstance(value, typ) and not isinstance(value, bool):
        return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    raise GridError(f"{key} {value!r}: expected {'a number' if typ is float else 'an integer' if typ is int else 'text'}")


def load_config(path: str | Path) -> Grid:
    """A grid from a YAML file; errors name the key (exit 2 at the command line)."""
    try:
        data = yaml.safe_load(read_text(path, "--config"))
    except yaml.YAMLError as e:
        raise GridError(f"--config {str(path)!r}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise GridError(f"--config {str(path)!r}: expected a mapping with `grid` or `grids`")
    unknown = set(data) - {"metrics", "grid", "grids"}
    if unknown:
        raise GridError(f"unknown key {sorted(unknown)[0]!r} at the top of {Path(path).name}; "
                        "expected metrics, grid or grids")
    metrics = parse_metrics(data.get("metrics", list(MEASUREMENTS)))
    blocks = data.get("grids") or ([data["grid"]] if "grid" in data else None)
    if not blocks:
        raise GridError(f"--config {str(path)!r}: no `grid` or `grids` given")
    return Grid([_block_entry(b, metrics, i) for i, b in enumerate(as_list(blocks))])


def _block_entry(entry: Any, metrics: tuple[str, ...], index: int) -> Block:
    if isinstance(entry, dict) and "axes" in entry:
        own = parse_metrics(entry["metrics"]) if "metrics" in entry else metrics
        return block_from_mapping(entry["axes"], own, entry.get("label", f"block {index}"))
    return block_from_mapping(entry, metrics, f"block {index}")


def parse_axis_flag(name: str, text: str) -> list[Any]:
    """`--top-k 1,2,4` -> [1, 2, 4], typed like the spec field (a bad item names the flag)."""
    typ = _FIELD_TYPES[name]
    items = split_list(text, flag_of(name))
    if name == "routing":  # `zipf:1,local:0.9` is one value: a locality belongs to the item before
        items = _with_locality(items, text)
    try:
        return [typ(t) for t in items]
    except ValueError:
        raise GridError(f"{flag_of(name)} {text!r}: expected comma-separated {typ.__name__} "
                        "values") from None


def _with_locality(items: list[str], text: str) -> list[str]:
    out: list[str] = []
    for item in items:
        if item.startswith("local:"):
            if not out:
                raise GridError(f"--routing {text!r}: local:P follows the distribution it applies to")
            out[-1] += "," + item
        else:
            out.append(item)
    return out


_FIELD_TYPES = {
    "host": str, "variant": str, "num_experts": int, "top_k": int, "d_model": int, "d_ff": int,
    "seq_len": int, "batch_size": int, "dtype": str, "device": str, "impl": str,
    "expert_unit": str, "seed": int, "mode": str, "layers": int, "n_ce": int, "ce_init": str,
    "threshold": float, "granularity": int, "max_k": int, "capacity_factor": float,
    "router_scale": float, "segment_len": int, "slots_per_expert": int, "scope": str,
    "workload": str, "context": int, "merge_reuse": str, "routing": str, "vocab_size": int,
}
