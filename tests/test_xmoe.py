"""XMoE: threshold routing, capacity with first choices winning, and three executions that agree."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from meo_profile.models import Spec, build_model, make_inputs, sparse_layers
from meo_profile.models.build import layers_as, make_sparse_layer
from meo_profile.models.routing import Routing
from meo_profile.models.xmoe import XMoE, expert_capacity, queue_positions, routing_summary
from torch import nn

D = 8


def xmoe_layer(E=6, threshold=0.9, scale=1.0, max_k=None, capacity_factor=None, min_capacity=4,
               impl="grouped", d_ff=16, g=1, bias=True, seed=0) -> XMoE:
    torch.manual_seed(seed)
    spec = Spec(variant="xmoe", num_experts=E, threshold=threshold, router_scale=scale,
                max_k=max_k, capacity_factor=capacity_factor, impl=impl, granularity=g,
                d_model=D, d_ff=d_ff)
    layer = make_sparse_layer(spec, [D, d_ff, D], nn.GELU(), bias).eval()
    layer.min_capacity = min_capacity
    return layer


def chosen_by_hand(probs: torch.Tensor, t: float, max_k: int | None) -> list[int | None]:
    """Per token: walk the experts by falling probability, taking one while the mass taken is
    short of t. None where the mass lands within 1e-5 of t (float32 cannot settle it)."""
    counts = []
    for row in probs.double().tolist():
        mass, count, near = 0.0, 0, False
        for p in sorted(row, reverse=True)[: max_k or len(row)]:
            near |= abs(mass - t) < 1e-5
            if mass >= t:
                break
            count, mass = count + 1, mass + p
        counts.append(None if near else count)
    return counts


def queue_by_hand(index: list[list[int]], capacity: int | None) -> tuple[list[list[bool]], int]:
    """Kept mask and drops by serving the queue literally: rank 0 of every token in token order,
    then rank 1, ...; an expert refuses a pair once it holds `capacity`."""
    load: dict[int, int] = {}
    kept = [[False] * len(row) for row in index]
    for rank in range(len(index[0])):
        for token, row in enumerate(index):
            e = row[rank]
            if e >= 0 and (capacity is None or load.get(e, 0) < capacity):
                load[e] = load.get(e, 0) + 1
                kept[token][rank] = True
    drops = sum(e >= 0 for row in index for e in row) - sum(map(sum, kept))
    return kept, drops


@torch.no_grad()
def output_by_hand(layer: XMoE, x: torch.Tensor) -> torch.Tensor:
    """y_t = sum over kept pairs of p * f_e(x_t), one expert call per pair."""
    plan = layer.plan(_route(layer, x))
    index, weights = plan.routing
    y = torch.zeros(x.shape[0], layer.experts.d_out)
    for t in range(x.shape[0]):
        for slot in range(index.shape[1]):
            if index[t, slot] >= 0:
                y[t] += weights[t, slot] * layer.experts.forward_expert(int(index[t, slot]), x[t])
    return y


def _route(layer: XMoE, x: torch.Tensor) -> Routing:
    from meo_profile.models.routing import threshold_routing

    probs = layer.router.logits(x).softmax(dim=-1, dtype=torch.float32)
    return threshold_routing(probs, layer.threshold, layer.max_k)


def run(layer: XMoE, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return layer(x.view(1, *x.shape)).view(x.shape[0], -1)


# ------------------------------------------------------------------------------- routing
def test_threshold_one_selects_every_expert_and_a_tiny_one_exactly_one():
    layer = xmoe_layer(E=6, threshold=1.0)
    x = torch.randn(20, D)
    run(layer, x)
    assert (layer.last_routing_stats.chosen == 6).all()
    layer.threshold = 1e-6
    run(layer, x)
    assert (layer.last_routing_stats.chosen == 1).all()
    # ... and that one is the most probable expert, with its raw probability
    index, weights = _route(layer, x)
    probs = layer.router.logits(x).softmax(dim=-1)
    assert torch.equal(index[:, 0], probs.argmax(dim=-1))
    torch.testing.assert_close(weights[:, 0], probs.max(dim=-1).values)


@settings(max_examples=30, deadline=None)
@given(E=st.integers(1, 12), N=st.integers(1, 24), t=st.floats(0.05, 1.0),
       scale=st.sampled_from([0.5, 1.0, 4.0, 20.0]), max_k=st.one_of(st.none(), st.integers(1, 12)),
       seed=st.integers(0, 3))
def test_chosen_counts_match_the_brute_force(E, N, t, scale, max_k, seed):
    max_k = None if max_k is None else min(max_k, E)
    layer = xmoe_layer(E=E, threshold=t, scale=scale, max_k=max_k, seed=seed)
    x = torch.randn(N, D)
    run(layer, x)
    want = chosen_by_hand(layer.router.logits(x).softmax(dim=-1), t, max_k)
    got = layer.last_routing_stats.chosen.tolist()
    assert [g for g, w in zip(got, want, strict=True) if w is not None] == [w for w in want if w is not None]


def test_a_sharper_router_chooses_fewer_experts():
    x = torch.randn(64, D)
    means = []
    for scale in (1.0, 4.0, 16.0):
        layer = xmoe_layer(E=16, scale=scale)
        run(layer, x)
        means.append(layer.last_routing_stats.chosen.double().mean().item())
    assert means[0] > means[1] > means[2] >= 1.0


# ------------------------------------------------------------------------------ capacity
def test_capacity_formula_is_the_deepspeed_gate():
    assert expert_capacity(100, 8, 1.0) == math.ceil(100 / 8)
    assert expert_capacity(100, 8, 8.0) == 100  # the language-model runs' factor
    assert expert_capacity(10, 8, 1.0) == 4  # min_capacity
    assert expert_capacity(10, 8, None) is None  # dropless


def test_first_choices_win_on_a_hand_made_queue():
    index = torch.tensor([[0, 1], [0, -1], [0, 1], [1, 0]])
    # rank 0: t0->e0 (0), t1->e0 (1), t2->e0 (2), t3->e1 (0); rank 1: t0->e1 (1), t2->e1 (2), t3->e0 (3)
    assert queue_positions(index, 2)[index >= 0].tolist() == [0, 1, 1, 2, 2, 0, 3]
    layer = xmoe_layer(E=2, capacity_factor=1.0, min_capacity=1)  # C = ceil(4 / 2 * 1) = 2
    plan = layer.plan(Routing(index, torch.rand(4, 2) * (index >= 0)))
    assert plan.capacity == 2
    assert (plan.routing.top_k_index >= 0).tolist() == [[True, True], [True, False],
                                                        [False, False], [True, False]]
    assert int(layer.last_routing_stats.dropped_pairs) == 3


@settings(max_examples=30, deadline=None)
@given(N=st.integers(1, 20), E=st.integers(1, 6), K=st.integers(1, 6),
       cf=st.one_of(st.none(), st.floats(0.1, 3.0)), min_capacity=st.integers(1, 4),
       seed=st.integers(0, 100))
def test_capacity_drops_follow_the_papers_priority(N, E, K, cf, min_capacity, seed):
    K = min(K, E)
    gen = torch.Generator().manual_seed(seed)
    # distinct experts per token, a random-length prefix of slots used, the rest -1
    index = torch.stack([torch.randperm(E, generator=gen)[:K] for _ in range(N)])
    used = torch.randint(1, K + 1, (N, 1), generator=gen)
    index = torch.where(torch.arange(K) < used, index, -1)
    layer = xmoe_layer(E=E, capacity_factor=cf, min_capacity=min_capacity)
    plan = layer.plan(Routing(index, torch.rand(N, K, generator=gen) * (index >= 0)))
    kept, drops = queue_by_hand(index.tolist(), plan.capacity)
    assert (plan.routing.top_k_index >= 0).tolist() == kept
    assert int(layer.last_routing_stats.dropped_pairs) == drops
    assert (plan.routing.top_k_weights[plan.routing.top_k_index < 0] == 0).all()


# ----------------------------------------------------------------------------- execution
@settings(max_examples=20, deadline=None)
@given(E=st.integers(1, 8), N=st.integers(1, 16), t=st.floats(0.3, 1.0),
       cf=st.one_of(st.none(), st.floats(0.2, 4.0)), g=st.sampled_from([1, 2, 4]),
       bias=st.booleans(), seed=st.integers(0, 3))
def test_loop_grouped_and_padded_compute_the_kept_pairs(E, N, t, cf, g, bias, seed):
    layer = xmoe_layer(E=E, threshold=t, scale=4.0, capacity_factor=cf, g=g, bias=bias, seed=seed)
    x = torch.randn(N, D)
    want = output_by_hand(layer, x)
    for impl in ("loop", "grouped", "padded"):
        layer.impl = impl
        torch.testing.assert_close(run(layer, x), want, rtol=1e-5, atol=1e-6)


def test_padded_runs_every_expert_at_full_capacity():
    layer = xmoe_layer(E=4, capacity_factor=2.0, min_capacity=1, impl="padded")
    rows = []
    forward_stacked = layer.experts.forward_stacked
    layer.experts.forward_stacked = lambda h: rows.append(tuple(h.shape)) or forward_stacked(h)
    run(layer, torch.randn(10, D))
    assert rows == [(4, expert_capacity(10, 4, 2.0, 1), D)]  # (E', C, d) whatever the routing


def test_granularity_splits_the_width_and_multiplies_the_experts():
    spec = Spec(variant="xmoe", num_experts=3, granularity=4, d_model=D, d_ff=32, seq_len=4,
                batch_size=2)
    layer = sparse_layers(build_model(spec))[0]
    assert layer.experts.num_experts == 12 and layer.experts.dims == [D, 8, D]
    assert layer.router.w_gate.out_features == 12


def test_layers_as_switches_implementation_and_keeps_the_knobs():
    spec = Spec(variant="xmoe", num_experts=4, threshold=0.7, capacity_factor=1.0, d_model=D,
                d_ff=16, seq_len=6, batch_size=3, router_scale=3.0)
    model, inputs = build_model(spec).eval(), make_inputs(spec)
    with torch.no_grad():
        grouped = model(*inputs)
        with layers_as(model, "xmoe", "padded") as m:
            assert sparse_layers(m)[0].knobs == sparse_layers(model)[0].knobs
            padded = model(*inputs)
    torch.testing.assert_close(padded, grouped, rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- measurement
def test_routing_summary_pools_tokens_over_layers():
    a, b = xmoe_layer(E=8, threshold=1.0), xmoe_layer(E=8, threshold=1e-6, seed=1)
    model = nn.Sequential(a, b)
    assert routing_summary(model) == {}  # nothing has run yet
    assert a.params_active() is None
    with torch.no_grad():
        model(torch.randn(2, 5, D))
    summary = routing_summary(model)
    # 10 tokens chose all 8 in layer a, 10 chose 1 in layer b
    assert summary == {"experts_per_token_mean": 4.5, "experts_per_token_p90": 8.0,
                       "experts_per_token_max": 8, "dropped_pairs": 0}
    router = D * 8
    assert a.params_active() == router + 8 * a.experts.expert_numel
    assert b.params_active() == router + 1 * b.experts.expert_numel
    assert routing_summary(nn.Sequential(nn.Linear(2, 2))) == {}


def test_p90_is_the_nearest_rank():
    layer = xmoe_layer(E=4)
    from meo_profile.models.xmoe import RoutingStats

    layer.last_routing_stats = RoutingStats(torch.tensor([1] * 9 + [4]), torch.tensor(0))
    assert routing_summary(layer)["experts_per_token_p90"] == 1.0  # 9 of 10 chose one
    layer.last_routing_stats = RoutingStats(torch.tensor([1] * 8 + [3, 4]), torch.tensor(0))
    assert routing_summary(layer)["experts_per_token_p90"] == 3.0


@pytest.mark.parametrize("impl", ["grouped", "loop", "padded"])
def test_bfloat16_runs(impl):
    spec = Spec(variant="xmoe", num_experts=4, impl=impl, dtype="bfloat16", capacity_factor=1.5,
                d_model=16, d_ff=32, seq_len=5, batch_size=2)
    y = build_model(spec)(*make_inputs(spec))
    assert y.dtype == torch.bfloat16 and torch.isfinite(y.float()).all()
