"""The model family: routers, expert banks, MoE / MEO layers, and the hosts they live in."""

from meo_profile.models.build import build_model, make_inputs, sparse_layers, torch_dtype
from meo_profile.models.spec import SPEC_FIELDS, Spec, SpecError
from meo_profile.models.variants import VARIANTS, Variant

__all__ = ["SPEC_FIELDS", "VARIANTS", "Spec", "SpecError", "Variant", "build_model", "make_inputs",
           "sparse_layers", "torch_dtype"]
