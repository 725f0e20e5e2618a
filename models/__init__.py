"""The model family: routers, expert banks, MoE / MEO layers, and the hosts they live in.

Its names are imported on first use (PEP 562), so that importing the package, as the command
line does to print its help, loads no torch."""

import importlib

# name -> the module of this package that defines it
_EXPORTS = {"build_model": "build", "make_inputs": "build", "sparse_layers": "build",
            "torch_dtype": "build", "SPEC_FIELDS": "spec", "Spec": "spec", "SpecError": "errors",
            "VARIANTS": "variants", "Variant": "variants"}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = sorted(_EXPORTS)
