"""transformers' own experts kernels as vanilla MoE implementations (`--impl hf-eager`,
`hf-batched_mm`, `hf-grouped_mm`), so a user sees the library they use beside this tool's
dispatch, on the same weights and routing.

transformers' MoE models keep their experts as a module of stacked weights, `gate_up_proj`
(E, 2I, H) with the gate first, and `down_proj` (E, H, I), and pick a forward by name from
`config._experts_implementation` (`transformers.integrations.moe`): `eager` (the model's own
per-expert loop), `batched_mm` (each (token, expert) pair's matrices gathered, one bmm) and
`grouped_mm` (pairs sorted by expert, one grouped matmul). That is exactly a gated (SwiGLU)
expert bank's layout, `weights[0]` (E, 2 d_ff, d) and `weights[1]` (E, d, d_ff), so the module
here is transformers' OLMoE experts class holding the bank's own parameters (shared, not copied).
"""

from __future__ import annotations

import torch
from meo_profile.models.experts import ExpertBank
from meo_profile.models.routing import Routing

HF_IMPLS = {"hf-eager": "eager", "hf-batched_mm": "batched_mm", "hf-grouped_mm": "grouped_mm"}


def refusal(bank: ExpertBank) -> str | None:
    """Why transformers' experts cannot run this bank (None: they can)."""
    if not bank.gated or len(bank.weights) != 2:
        return "transformers' experts kernels run SwiGLU FFN experts (gate | up, then down)"
    if bank.biases is not None:
        return "transformers' OLMoE-style experts have no biases"
    return None


def hf_experts(bank: ExpertBank, impl: str) -> torch.nn.Module:
    """transformers' experts module over the bank's parameters, built once per bank and kernel
    (kept in a plain dict, not registered as a submodule: the bank owns the parameters)."""
    built = bank.__dict__.setdefault("_hf_experts", {})
    if impl not in built:
        reason = refusal(bank)
        if reason:
            raise ValueError(f"--impl {impl}: {reason}")
        from transformers import OlmoeConfig
        from transformers.models.olmoe.modeling_olmoe import OlmoeExperts

        d, d_ff = bank.dims[0], bank.dims[1]
        config = OlmoeConfig(hidden_size=d, intermediate_size=d_ff,
                             num_experts=bank.num_experts, num_experts_per_tok=1)
        config._experts_implementation = HF_IMPLS[impl]
        with torch.device("meta"):  # its own (E, 2I, H) weights would be dropped at once
            module = OlmoeExperts(config)
        module.gate_up_proj, module.down_proj = bank.weights[0], bank.weights[1]
        module.act_fn = bank.act  # the bank's activation, whatever the config's default
        built[impl] = module
    return built[impl]


def dispatch_hf(impl: str):
    """A token-level dispatch (`meo_profile.models.layers.TOKEN_DISPATCH`) through transformers' kernel."""

    def dispatch(bank: ExpertBank, x: torch.Tensor, routing: Routing,
                 scales: list | None = None) -> torch.Tensor:
        if scales is not None:
            raise ValueError(f"--impl {impl} takes no per-row input scales")
        return hf_experts(bank, impl)(x, routing.top_k_index, routing.top_k_weights)  # (N, d)

    return dispatch
