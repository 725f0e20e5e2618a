"""Which configuration a record measured, and how it is named: one key, one set of symbols.

A configuration is its spec fields. Costs (latency, memory) also depend on the machine, so
where they are compared or grouped the key adds `device_name`. The key holds the
implementation as asked: a record whose implementation was chosen by `--impl auto` (by rule or
by measurement) is the configuration "auto", whichever implementation won, so a resumed sweep or
a comparison finds it again. Names follow the papers' symbols
(E experts, k selected, B batch, L sequence length, d width, g granularity, t threshold,
T Lory's segment length, p Soft MoE's slots per expert).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meo_profile.models.spec import SPEC_FIELDS, Spec
from meo_profile.models.variants import VARIANTS

MACHINE_FIELD = "device_name"
SYMBOLS = {"num_experts": "E", "top_k": "k", "batch_size": "B", "seq_len": "L", "d_model": "d",
           "granularity": "g", "threshold": "t", "expert_unit": "unit", "segment_len": "T",
           "slots_per_expert": "p"}


# --------------------------------------------------------------------------------- keys
def config_fields(*, machine: bool = False, ignore: Iterable[str] = ()) -> tuple[str, ...]:
    """The fields that identify a configuration: the spec's, less `ignore`, plus the machine."""
    skipped = set(ignore)
    return tuple(f for f in SPEC_FIELDS if f not in skipped) + ((MACHINE_FIELD,) if machine else ())


def config_key(record: Mapping[str, Any], *, machine: bool = False,
               ignore: Iterable[str] = ()) -> tuple:
    """A record's (or a spec's fields') configuration as a hashable key (see `config_fields`),
    with the implementation as asked (`requested_impl`)."""
    return tuple(requested_impl(record) if f == "impl" else record.get(f)
                 for f in config_fields(machine=machine, ignore=ignore))


CHOSEN = ("rule", "measured", "cached")  # impl_choice values that mean "--impl auto"


def requested_impl(record: Mapping[str, Any]) -> str | None:
    """The implementation asked for: "auto" where the record's was chosen, else its own.

    A spec's fields say it directly. A stored record from before `impl_choice` existed says only
    what ran, always the rule's choice when auto was asked: such a record counts as "auto" when
    its implementation is the one the rule picks for it (one given by name that happens to be
    the rule's would be measured the same way)."""
    impl, choice = record.get("impl"), record.get("impl_choice")
    if choice is not None:
        return "auto" if choice in CHOSEN else impl
    if "schema_version" not in record or record.get("variant") not in VARIANTS:
        return impl
    rule = VARIANTS[record["variant"]].default_impl(_Fields(record))
    return "auto" if impl in (rule, RENAMED_RULE.get(record["variant"])) else impl


# Rule choices of older code under names that are gone: moe-seq's `batched` (B*k expert
# matrices copied per call) became `grouped` (no copies).
RENAMED_RULE = {"moe-seq": "batched"}


class _Fields:
    """A record's fields as attributes, for a variant's rule (which reads a spec's)."""

    def __init__(self, record: Mapping[str, Any]):
        self.__dict__.update(record)


# -------------------------------------------------------------------------------- names
def symbol(field: str) -> str:
    return SYMBOLS.get(field, field)


def label(variant: str) -> str:
    """How reports name a variant ('vanilla MoE', 'MEO'); an unknown name is shown as it is."""
    return VARIANTS[variant].label if variant in VARIANTS else variant


def order_variants(variants: Iterable[str]) -> list[str]:
    """The variants in the table's order (dense, vanilla, ..., MEO, compressed, XMoE)."""
    rank = {v: i for i, v in enumerate(VARIANTS)}
    return sorted(variants, key=lambda v: (rank.get(v, len(rank)), v))


def config_title(fields: Mapping[str, Any]) -> str:
    """One line naming a configuration, from a spec's fields or a stored record:
    'layer meo E=16 k=4 unit=linear impl=gather B=8 L=128 float32 cpu' (and 'train' in
    training mode, and the conditions that are not the usual ones: 'workload=decode')."""
    f = {k: _plain(v) for k, v in fields.items()}
    experts = "" if f["variant"] == "dense" else f" E={f['num_experts']} k={f['top_k']}"
    if f["variant"] == "xmoe":  # no fixed k: a threshold over E x g small experts
        experts = (f" E={f['num_experts']}x{f['granularity']} t={f['threshold']} "
                   f"scale={f['router_scale']:g}")
    elif f["variant"] == "ce":
        experts += f" n_ce={f['n_ce']}"
    elif f["variant"] in VARIANTS and VARIANTS[f["variant"]].every_expert:  # k is E: its knobs
        experts = f" E={f['num_experts']}" + "".join(
            f" {symbol(k)}={f[k]}" for k in VARIANTS[f["variant"]].knobs if f.get(k) is not None)
    mode = "" if f.get("mode", "inference") == "inference" else f" {f['mode']}"
    # a table row of a record without a condition holds NaN there (x == x is False): unnamed
    conditions = "".join(f" {name}={f[name]}" for name, usual in CONDITION_DEFAULTS.items()
                         if not _unsaid(f.get(name), usual))
    return (f"{f['host']} {f['variant']}{experts} unit={f['expert_unit']} impl={f['impl']} "
            f"B={f['batch_size']} L={f['seq_len']} {f['dtype']} {f['device']}{mode}{conditions}")


# The conditions a title names when they are not the usual ones (models/conditions.py).
CONDITION_DEFAULTS = {"scope": "model", "workload": "prefill", "context": None,
                      "merge_reuse": None, "routing": "router"}


def _unsaid(value: Any, usual: str) -> bool:
    """A condition a title leaves out: the usual one, or none recorded (an older record in a
    table, where the column is null: it was measured under the usual one)."""
    return value is None or value != value or value == usual  # value != value: NaN


def _plain(value: Any) -> Any:
    """A number as a person writes it: 4, not 4.0 (table rows hold integers as floats)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


HF_PREFIX = "hf:"  # a user's transformers config (models/native_configs.py)
SHORT_HOST_CHARS = 28  # what a legend entry or a panel title spares for a host's name


def short_host(host: str, parents: int = 0, chars: int = SHORT_HOST_CHARS) -> str:
    """How figures name a host: as it is, except a user's config (`hf:PATH`), named by the
    folder that holds it, which `save_pretrained` names after the model (family and size):
    'hf:granite-moe-small-v2' for hf:models/experiments/granite-moe-small-v2 or for
    .../granite-moe-small-v2/config.json; `parents` more folders where names collide. Cut in
    the middle past `chars` characters. Tables and titles keep the full path."""
    if not host.startswith(HF_PREFIX):
        return host
    parts = [p for p in host[len(HF_PREFIX):].replace("\\", "/").split("/") if p not in ("", ".")]
    if parts and parts[-1].endswith(".json") and len(parts) > 1:
        parts = parts[:-1]  # the config file: its folder names the model
    name = "/".join(parts[-1 - parents:]) or host[len(HF_PREFIX):]
    room = chars - len(HF_PREFIX)
    if len(name) > room:  # keep both ends: a family's name and a size or version
        head = (room - 1) // 2
        name = name[:head] + "…" + name[len(name) - (room - 1 - head):]
    return HF_PREFIX + name


def host_labels(hosts: Iterable[str]) -> dict[str, str]:
    """Each host's short name (`short_host`), with parent folders added to names that two
    configs share (run1/model and run2/model), so a legend never names two hosts alike."""
    parents = dict.fromkeys(sorted(set(hosts)), 0)
    for _ in range(8):
        labels = {h: short_host(h, n) for h, n in parents.items()}
        shared = [h for h in parents if list(labels.values()).count(labels[h]) > 1]
        if not shared:
            return labels
        for h in shared:
            parents[h] += 1
    return {h: h for h in parents}  # no short form tells them apart: the full paths


def spec_title(spec: Spec) -> str:
    return config_title(spec.to_dict())


ALWAYS_NAMED = ("host", "variant", "num_experts", "top_k", "batch_size", "seq_len")


def labeller(keys: Iterable[tuple]):
    """Short labels for a set of configuration keys (`config_key` tuples): host, variant, E, k,
    B, L, then only the other fields that tell apart configurations sharing those."""
    idx = {f: i for i, f in enumerate(SPEC_FIELDS)}
    groups: dict[tuple, list[tuple]] = {}
    for key in keys:
        groups.setdefault(tuple(key[idx[f]] for f in ALWAYS_NAMED), []).append(key)
    extra = [f for f in SPEC_FIELDS if f not in ALWAYS_NAMED
             and any(len({k[idx[f]] for k in group}) > 1 for group in groups.values())]

    def name(key: tuple) -> str:
        fields = [f for f in ALWAYS_NAMED[2:] + tuple(extra) if key[idx[f]] is not None]
        rest = " ".join(f"{symbol(f)}={key[idx[f]]}" for f in fields)
        return f"{key[idx['host']]} {key[idx['variant']]} {rest}".strip()

    return name
