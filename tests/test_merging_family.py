"""The merging family beside MEO (SMEAR, Lory, Soft MoE): their specs, exact counts against the
closed form, the equalities `verify` checks (and that each can fail), gradients in training,
and the report's section, figure and finding."""

import re

import pytest
import torch
from matplotlib.colors import to_hex
from meo_profile.models import Spec, SpecError, build_model, make_inputs, sparse_layers
from meo_profile.models.merging import SegmentMerged
from synthetic_results import FAMILY_MEMBERS, family_records
from typer.testing import CliRunner

from cli import app
from meo_profile.check import family
from meo_profile.check.verify import captured_inputs, implementations_agree, verify
from meo_profile.measure import analytic
from meo_profile.measure.counting import disagreements
from meo_profile.measure.fvcore_count import count_fvcore
from meo_profile.report import document as report
from meo_profile.report import figures, views
from meo_profile.report.family import family_tables, family_view
from meo_profile.report.findings import merging_family
from meo_profile.sweep.presets import PRESETS

TINY = dict(d_model=32, d_ff=48, num_experts=4, batch_size=2, seq_len=12)


# ------------------------------------------------------------------------------ the spec
def test_every_input_reads_all_experts_and_knobs_resolve_per_variant():
    smear, lory, soft = (Spec(variant=v, top_k=2, segment_len=4, slots_per_expert=3, **TINY)
                         for v in ("smear", "lory", "soft-moe"))
    assert (smear.top_k, lory.top_k, soft.top_k) == (4, 4, 4)  # k is E whatever was asked
    assert (smear.segment_len, lory.segment_len, soft.segment_len) == (None, 4, None)
    assert (lory.slots_per_expert, soft.slots_per_expert) == (None, 3)
    assert Spec(variant="lory", **TINY).segment_len == 256  # the paper's T: one segment here
    assert Spec(variant="soft-moe", **TINY).slots_per_expert == 1
    assert Spec(variant="meo", top_k=2, segment_len=4, **TINY).segment_len is None


def test_segments_that_do_not_divide_the_sequence_are_one_line_naming_the_flag():
    with pytest.raises(SpecError, match=r"^--segment-len 5: must divide --seq-len 12"):
        Spec(variant="lory", segment_len=5, **TINY)
    result = CliRunner().invoke(app, ["flops", "--variant", "lory", "--segment-len", "48",
                                      "--seq-len", "128"])
    assert result.exit_code == 2
    assert result.stderr.strip().count("\n") == 0 and "--segment-len 48" in result.stderr


# ------------------------------------------------------------------------------ counts
GRID = [("smear", {}, 8), ("smear", {}, 16), ("lory", {"segment_len": 4}, 16),
        ("lory", {"segment_len": 32}, 8), ("soft-moe", {"slots_per_expert": 1}, 8),
        ("soft-moe", {"slots_per_expert": 3}, 16)]


@pytest.mark.parametrize("variant, knob, L", GRID)
@pytest.mark.parametrize("E, unit", [(4, "linear"), (8, "ffn")])
def test_closed_form_equals_fvcore_to_the_mac_parameters_included(variant, knob, L, E, unit):
    spec = Spec(variant=variant, num_experts=E, seq_len=L, batch_size=3, d_model=40, d_ff=72,
                expert_unit=unit, **knob)
    assert disagreements(count_fvcore(spec), analytic.count(spec)) == []


@pytest.mark.parametrize("variant, knob", [("smear", {}), ("lory", {"segment_len": 8}),
                                           ("soft-moe", {"slots_per_expert": 2})])
def test_bert_hosts_count_alike_too(variant, knob):
    spec = Spec(host="bert-small", variant=variant, num_experts=4, seq_len=16, batch_size=2, **knob)
    assert disagreements(count_fvcore(spec), analytic.count(spec)) == []


def test_lory_merges_all_experts_once_per_segment():
    d, f, E, B, L, T = 32, 48, 4, 2, 128, 32
    spec = Spec(variant="lory", d_model=d, d_ff=f, num_experts=E, batch_size=B, seq_len=L,
                segment_len=T)
    expert = (d * f + f) + (f * d + d)  # both MoE linears, weights and biases
    assert count_fvcore(spec).macs_by_part["merge"] == B * (L // T) * E * expert
    smear = count_fvcore(spec.replace(variant="smear"))
    assert smear.macs_by_part["merge"] == B * E * expert  # once per sequence


# ------------------------------------------------------------------------------ verify
def test_verify_holds_lory_to_its_equalities_and_implementations():
    checks = verify(Spec(variant="lory", segment_len=3, **TINY))
    names = {c.name for c in checks}
    assert {"lory, one self-routed segment == smear", "lory: gather == dense", "lory: fused == dense",
            "meo == moe-seq"} <= names
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    causal = next(c for c in checks if c.name.startswith("lory: a change to segment i"))
    assert "T=3, S=4, i=2" in causal.name and not causal.skipped


@pytest.mark.parametrize("variant, names", [
    ("smear", {"smear == meo at k = E (same router weights)", "smear: gather == dense"}),
    ("soft-moe", {"soft-moe: loop == stacked",
                  "soft-moe, p=1, one-hot dispatch: token t's output == expert t (token t)"}),
])
def test_smear_and_soft_moe_hold_to_theirs(variant, names):
    spec = Spec(variant=variant, **TINY)
    captured = captured_inputs(build_model(spec), make_inputs(spec))
    checks = (implementations_agree(captured, variant, spec, 1e-5)
              + family.family_checks(spec, captured, 1e-5))
    assert names <= {c.name for c in checks} and all(c.ok and not c.skipped for c in checks
                                                     if c.name in names)
    if variant == "soft-moe":  # exact, not merely within a tolerance
        assert next(c for c in checks if "one-hot" in c.name).max_abs_err == 0.0


@pytest.fixture(scope="module")
def lory_layers():
    spec = Spec(variant="lory", segment_len=3, **TINY)
    model = build_model(spec)
    return spec, captured_inputs(model, make_inputs(spec))


def test_a_lory_that_routes_each_segment_on_itself_fails_the_causal_check(lory_layers, monkeypatch):
    spec, captured = lory_layers
    assert family.lory_is_causal(spec, captured, 1e-5)[0].ok

    def own_segment(self, segments, batch_size):
        return self.router(segments.mean(dim=1))  # a segment routed on its own tokens: not causal

    monkeypatch.setattr(SegmentMerged, "route_segments", own_segment)
    assert not family.lory_is_causal(spec, captured, 1e-5)[0].ok


def test_a_smear_merge_that_ignores_its_router_fails_against_meo(monkeypatch):
    spec = Spec(variant="smear", **TINY)
    captured = captured_inputs(build_model(spec), make_inputs(spec))
    from meo_profile.models import experts

    def flat(w, b, index, gates):  # every expert weighed alike, whatever the router said
        return experts.merge_dense(w, b, index, torch.full_like(gates, 1 / gates.shape[1]))

    monkeypatch.setitem(experts.MERGES, "dense", flat)
    assert not family.smear_is_meo_at_all_experts(spec, captured, 1e-5)[0].ok


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize("variant, impl, knob", [("smear", "dense", {}), ("smear", "gather", {}),
                                                 ("lory", "dense", {"segment_len": 4}),
                                                 ("soft-moe", "stacked", {}),
                                                 ("soft-moe", "loop", {"slots_per_expert": 2})])
def test_training_gradients_reach_every_expert(variant, impl, knob):
    spec = Spec(variant=variant, impl=impl, mode="train", **TINY, **knob)
    model = build_model(spec)
    model(*make_inputs(spec)).square().mean().backward()
    for layer in sparse_layers(model):
        for w in layer.experts.weights:
            assert (w.grad.flatten(1).abs().sum(dim=1) > 0).all(), (variant, impl)
        assert all(p.grad is not None for p in layer.router.parameters())


def test_the_fused_merge_is_refused_for_training():
    with pytest.raises(SpecError, match="--impl .fused.: the fused merge has no backward"):
        Spec(variant="lory", impl="fused", mode="train", **TINY)


# ------------------------------------------------------------------------------ report
@pytest.fixture(scope="module")
def ok():
    return views.ok_rows(views.records_frame(family_records(FAMILY_MEMBERS)))


def test_view_is_per_token_with_ratios_to_vanilla_at_each_k(ok):
    view = family_view(ok)
    assert list(views.in_variant_order(view)["variant"]) == ["moe", "moe", "meo", "smear", "lory",
                                                            "soft-moe"]
    by = view[view["variant"] != "moe"].set_index("variant")
    tokens, P = 8 * 128, 2 * 512 * 2048  # one whole FFN expert's MACs per token
    top1 = (tokens * P + tokens * 512 * 16) * 2  # vanilla top-1: experts and a token router
    smear = (tokens * P + 8 * 16 * (P + 2048 + 512) + 8 * 512 * (16 + 5)) * 2
    assert by.loc["smear", "ratio_top1"] == pytest.approx(smear / top1, rel=1e-12)
    assert by.loc["lory", "mflops_per_token"] > by.loc["smear", "mflops_per_token"]  # E/T > E/L
    assert by.loc["soft-moe", "latency_us_per_token"] == pytest.approx(11.0 * 1e3 / tokens)
    assert by.loc["lory", "train_mem_kib_per_token"] == pytest.approx(3 * 2**20 / tokens / 2**10)


def test_section_table_figure_and_finding_agree(ok):
    (table,) = family_tables(ok)
    assert [row[0] for row in table.rows] == ["vanilla MoE top-1", "vanilla MoE top-4", "MEO",
                                              "SMEAR", "Lory", "Soft MoE"]
    assert "× top-1" in table.columns and "× top-4" in table.columns
    lory = table.rows[4]
    assert lory[1] == "all 16 merged per segment of 32 (dense)"
    drawn = figures.FIGURES["fig10_merging_family"].draw(ok)
    flops_ax = drawn.figure.subfigs[0].axes[0]
    colours = [to_hex(p.get_facecolor()) for p in flops_ax.patches[:4]]  # the experts part
    assert colours == [figures.VARIANT_COLOURS[v].lower() for v in ("meo", "smear", "lory", "soft-moe")]
    (sentence,) = merging_family(ok)
    cheapest = min(table.rows[2:], key=lambda r: float(r[4].replace(",", "")))
    assert f"{cheapest[0]} is the cheapest of the merging family" in sentence
    assert re.search(rf"{cheapest[4]} MFLOPs per token, {re.escape(cheapest[5])} vanilla", sentence)
    by = {row[0]: row for row in table.rows}
    assert f"SMEAR adds {by['SMEAR'][3]} (a merge of all E = 16 experts per sequence of L = 128)" \
        in sentence and f"Lory {by['Lory'][3]} (one per segment of T = 32)" in sentence
    assert (by["SMEAR"][2], by["Lory"][3], by["Soft MoE"][2]) == ("1.00", "0.50", "1.00")


def test_section_is_left_out_with_a_reason_without_the_family():
    vanilla = [r for r in family_records(FAMILY_MEMBERS) if r["variant"] == "moe"]
    built = report.build_report(vanilla, "test")
    text = report.to_markdown(built)
    assert "The merging family at one expert budget: left out, no setting has counted records" in text


def test_the_default_preset_measures_the_family_at_one_budget_without_duplicates():
    jobs, _ = PRESETS["default"].grid.expand()
    family = [(s, m) for s, m in jobs if s.variant in ("smear", "lory", "soft-moe")
              and s.d_model == 512]
    assert {(s.variant, s.mode) for s, _ in family} == {(v, m) for v in ("smear", "lory", "soft-moe")
                                                        for m in ("inference", "train")}
    assert {s.segment_len for s, _ in family if s.variant == "lory"} == {32}
    timed = [s for s, m in jobs if "latency" in m and s.variant == "moe" and s.expert_unit == "ffn"
             and s.router_scale == 8.0]
    assert len(timed) == 1  # the four methods' vanilla record serves the family too


def test_a_grid_crossing_segments_with_lengths_leaves_out_what_is_no_lory_model():
    from meo_profile.sweep.grid import Block

    block = Block({"variant": ["moe", "lory"], "segment_len": [32], "seq_len": [100, 128],
                   "num_experts": [4], "top_k": [2], "d_model": [32], "d_ff": [48]}, ("flops",))
    specs, left_out = block.specs()
    assert left_out == 1 and {(s.variant, s.seq_len) for s in specs} == {
        ("moe", 100), ("moe", 128), ("lory", 128)}
