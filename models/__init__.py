"""The model family: routers, expert banks, MoE / MEO layers, and the hosts they live in."""

from models.build import build_model, make_inputs, sparse_layers, torch_dtype
from models.spec import IMPLS, SPEC_FIELDS, VARIANTS, Spec, SpecError

__all__ = ["IMPLS", "SPEC_FIELDS", "VARIANTS", "Spec", "SpecError", "build_model", "make_inputs",
           "sparse_layers", "torch_dtype"]
