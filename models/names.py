"""The registries' names as plain data, for what must answer before torch is imported: the
command line's help and its flags (`meo-profile --help` loads no torch, pandas, matplotlib or
fvcore: nothing heavy to print a page of text).

The registries build torch modules (HOSTS in hosts.py, VARIANTS in variants.py, transformers'
experts in native.py and hf_experts.py), so their names are written here again, and
tests/test_help.py holds each tuple equal to the registry it names: a new host, variant or
implementation is added there and here. The spec's own choices live here only.
"""

from __future__ import annotations

from meo_profile.models.native_configs import HF_PREFIX, PUBLISHED

EXPERT_UNITS = ("linear", "ffn")
DTYPES = ("float32", "bfloat16", "float16")
DEVICES = ("auto", "cpu", "cuda", "meta")
MODES = ("inference", "train")

# models/hosts.py HOSTS: the FFN hosts, in their table's order
FFN_HOSTS = ("layer", "bert-small", "bert-base", "bert-large", "gpt2", "t5-small", "bart-base")
HOST_NAMES = (*FFN_HOSTS, *PUBLISHED)
HF_HOST_HELP = f"{HF_PREFIX}PATH (a transformers MoE config.json, or a folder holding one)"

# models/native.py NATIVE_MOE_IMPLS: transformers' experts kernels, by the names --impl takes
NATIVE_MOE_IMPLS = ("hf-grouped_mm", "hf-batched_mm", "hf-eager")

# models/variants.py VARIANTS: variant -> its implementations (the first is the default)
VARIANT_IMPLS = {
    "dense": ("native",),
    "moe": ("grouped", "loop", "hf-eager", "hf-batched_mm", "hf-grouped_mm"),
    "moe-seq": ("grouped", "loop"),
    "meo": ("gather", "dense", "fused"),
    "meo-token": ("gather", "dense", "fused"),
    "ce": ("grouped", "loop"),
    "xmoe": ("grouped", "loop", "padded"),
    "smear": ("dense", "gather", "fused"),
    "lory": ("dense", "gather", "fused"),
    "soft-moe": ("stacked", "loop"),
}
VARIANT_NAMES = tuple(VARIANT_IMPLS)
IMPL_NAMES = tuple(sorted({i for impls in VARIANT_IMPLS.values() for i in impls}
                          | {*NATIVE_MOE_IMPLS, "auto"}))
