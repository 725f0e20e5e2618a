"""Imposed routing (`--routing`): each distribution against its definition over many draws, the
choice drawn once and run through the variant's own dispatch with its own gate convention, its
statistics in the record, FLOPs that do not move with it, and what it refuses."""

from __future__ import annotations

import math

import pytest
import torch
from meo_profile.models import Spec, SpecError, build_model, make_inputs, sparse_layers
from meo_profile.models.distributions import choice_table
from meo_profile.models.imposed import ImposedRouting, route_from
from meo_profile.models.routing import GATES, Router

from meo_profile.measure.counting import count
from meo_profile.measure.routing.stats import chosen_mask, expert_loads, neighbours, routing_fields

E, K = 8, 2
TINY = dict(host="layer", d_model=32, d_ff=64, num_experts=E, top_k=K, seq_len=16, batch_size=4)


def draw(kind: str, param=None, local=0.0, B=64, P=512, k=K, seed=0) -> torch.Tensor:
    return choice_table(kind, param, local, B, P, E, k, torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("routing", [("uniform", None, 0.0), ("balanced", None, 0.0),
                                     ("zipf", 1.5, 0.0), ("biased", 2.0, 0.5)])
def test_every_input_chooses_k_distinct_experts(routing):
    table = draw(*routing, k=3, B=16, P=256)
    assert table.shape == (16, 256, 3) and table.min() >= 0 and table.max() < E
    assert (table.sort(dim=-1).values.diff(dim=-1) > 0).all()  # k distinct per input


def test_zipf_popularity_follows_rank_to_the_minus_s():
    s = 1.0
    table = draw("zipf", s, k=1, B=100, P=1000)  # 100k first picks: exactly ∝ rank^-s
    rank = torch.randperm(E, generator=torch.Generator().manual_seed(0)) + 1  # the layer's ranking
    share = torch.bincount(table.flatten(), minlength=E).double() / table.numel()
    want = rank.double() ** -s / (torch.arange(1, E + 1).double() ** -s).sum()
    assert (share - want).abs().max() < 0.01, (share, want)


def test_biased_experts_are_chosen_in_the_order_of_their_bias():
    table = draw("biased", 0.5, k=1, B=100, P=500)
    bias = 0.5 * torch.randn(E, generator=torch.Generator().manual_seed(0))  # the layer's bias
    share = torch.bincount(table.flatten(), minlength=E)
    assert torch.equal(share.argsort(), bias.argsort())
    unbiased = torch.bincount(draw("biased", 0.0, k=1, B=100, P=500).flatten(), minlength=E)
    assert unbiased.max() / unbiased.double().mean() < 1.05  # STD 0: the uniform choice


def test_locality_keeps_the_previous_tokens_experts_with_probability_p():
    p = 0.7
    mask = chosen_mask(draw("uniform", local=p), E)
    _, same = neighbours(mask)
    independent = 1 / math.comb(E, K)  # two independent draws of 2 of 8 agree
    assert same == pytest.approx(p + (1 - p) * independent, abs=0.01)
    loads = expert_loads(mask)  # locality leaves every position's own distribution uniform
    assert loads.max() / loads.mean() < 1.05


def test_balanced_loads_the_experts_exactly_evenly_in_any_run_of_whole_positions():
    table = draw("balanced", B=4, P=16)  # 4 sequences x 2 picks = 8 = E pairs per position
    for start, end in ((0, 16), (3, 4), (5, 11)):
        loads = expert_loads(chosen_mask(table[:, start:end], E))
        assert loads.min() == loads.max()


# ------------------------------------------------------------------- through the layers
@pytest.mark.parametrize("gates", ["topk_softmax", "softmax_topk"])
def test_the_gates_keep_the_routers_convention_at_the_imposed_experts(gates):
    router = Router(16, E, K, gates=gates)
    chosen = torch.tensor([[5, 1], [0, 7], [3, 2]])
    router.imposed = ImposedRouting(chosen.view(3, 1, K), None, sequences=3)
    h = torch.randn(3, 16)
    index, weights = router(h)
    assert (index.sort(dim=-1).values == chosen.sort(dim=-1).values).all()
    want = GATES[gates](router.logits(h), index)
    assert torch.allclose(weights, want) and (weights.diff(dim=-1) <= 0).all()  # ranked
    if gates == "topk_softmax":
        assert torch.allclose(weights.sum(dim=-1), torch.ones(3))


def test_timed_calls_reuse_one_routing_drawn_at_build():
    spec = Spec(variant="moe", routing="zipf:1,local:0.5", **TINY)
    model, x = build_model(spec), make_inputs(spec)[0]
    model(x)
    first = [chosen(layer) for layer in sparse_layers(model)]
    torch.manual_seed(123)  # no global random number enters a forward
    model(x + 1.0)  # nor does the input (it moves the gates, so the ranking of the k, only)
    assert all(torch.equal(a, chosen(layer))
               for a, layer in zip(first, sparse_layers(model), strict=True))
    assert not torch.equal(first[0], first[1])  # each layer draws its own


def chosen(layer) -> torch.Tensor:
    """The experts a layer last chose, as sets (sorted), whatever their gates' order."""
    return layer.last_top_k_index.sort(dim=-1).values


def test_a_sequence_level_layer_routes_at_its_position_and_a_decode_step_at_its_own():
    spec = Spec(variant="meo", routing="uniform", **TINY)
    model, x = build_model(spec), make_inputs(spec)[0]
    layer = sparse_layers(model)[0]
    table = layer.router.imposed.table  # (B, P, k)
    model(x)
    assert torch.equal(chosen(layer), table[:, 0].sort(-1).values)
    route_from(model, 5)
    model(x[:, :1])
    assert torch.equal(chosen(layer), table[:, 5].sort(-1).values)


@pytest.mark.parametrize("variant", ["moe", "meo"])
def test_balanced_routing_records_a_max_over_mean_load_of_one(variant):
    spec = Spec(variant=variant, routing="balanced", **TINY)
    model = build_model(spec)
    model(*make_inputs(spec))
    fields = routing_fields(model, spec)
    assert fields["expert_load_max_over_mean"] == 1.0 and fields["experts_touched_mean"] == E
    # a sequence's tokens take consecutive round-robin numbers: all E, as independent tokens
    assert fields["experts_per_sequence_mean"] == (E if variant == "moe" else K)


def test_flops_of_top_k_variants_do_not_change_with_routing():
    for variant, impl in (("moe", "grouped"), ("moe", "loop"), ("meo", "gather"), ("ce", "grouped")):
        macs = {r: count(Spec(variant=variant, impl=impl, routing=r, **TINY)).macs
                for r in ("router", "zipf:1.5,local:0.9")}
        assert len(set(macs.values())) == 1, (variant, impl, macs)


@pytest.mark.parametrize("fields, says", [
    ({"variant": "xmoe", "routing": "uniform"}, "threshold"),
    ({"variant": "moe", "routing": "router,local:0.5", "workload": "decode"}, "decode"),
    ({"host": "phimoe", "variant": "moe", "routing": "zipf:1"}, "sparsemixer"),
])
def test_a_routing_that_cannot_apply_is_refused_in_one_line(fields, says):
    with pytest.raises(SpecError) as e:
        Spec(**fields)
    assert str(e.value).startswith("--routing") and says in str(e.value) and "\n" not in str(e.value)


def test_the_dense_baseline_has_no_routing_to_vary():
    assert Spec(variant="dense", routing="zipf:1").routing == "router"
