"""Where merging pays off: the regime table pairs MEO with the best vanilla MoE per batch and
regime, the findings say what the table shows, the heatmap annotates each cell, region claims
judge every measured point, and the `regimes` preset crosses the axes the report reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from meo_profile.models.spec import planned_for
from synthetic_results import regime_records

from meo_profile.check.claim import judge_all
from meo_profile.check.claims_file import parse_claims
from meo_profile.report import views
from meo_profile.report.figures.regimes import draw_regimes
from meo_profile.report.regimes import regime_findings, regime_tables, regime_view
from meo_profile.sweep.presets import PRESETS


@pytest.fixture(scope="module")
def records():
    return regime_records()


@pytest.fixture(scope="module")
def ok(records):
    return views.ok_rows(views.records_frame(records))


def _record(records, variant, B, **fields):
    (r,) = [r for r in records if r["variant"] == variant and r["batch_size"] == B
            and all(r[k] == v for k, v in fields.items())]
    return r


def test_each_point_is_meo_over_vanilla_at_one_batch_and_regime(ok, records):
    rows = regime_view(ok)
    assert len(rows) == 3 * (4 + 2)  # batches x (prefill lengths + two decode reuses)
    kept = rows[(rows["batch_size"] == 8) & (rows["regime"] == "decode, merge kept")].iloc[0]
    vanilla = _record(records, "moe", 8, workload="decode")
    meo = _record(records, "meo", 8, workload="decode", merge_reuse="sequence")
    assert kept["speedup"] == vanilla["latency_ms_median"] / meo["latency_ms_median"]
    assert kept["bound_speedup"] == vanilla["roofline_ms"] / meo["roofline_ms"]
    assert kept["merged_cache_bytes"] == meo["merged_cache_bytes"] and kept["tokens_per_forward"] == 8
    prefill = rows[(rows["batch_size"] == 64) & (rows["tokens_per_seq"] == 32)].iloc[0]
    assert prefill["tokens_per_forward"] == 2048 and prefill["dense_ms"] == \
        _record(records, "dense", 64, seq_len=32)["latency_ms_median"]


def _cells(ok) -> dict[tuple[str, str], list[str]]:
    (table,) = regime_tables(ok)
    col = {c: i for i, c in enumerate(table.columns)}
    return {(row[col["B"]], row[col["regime"]]): row for row in table.rows}, col


def test_the_findings_say_what_the_table_shows(ok):
    (sentence,) = regime_findings(ok)
    cells, col = _cells(ok)
    speedup = {key: float(row[col["speedup"]].rstrip("×")) for key, row in cells.items()}
    tokens = {key: int(row[col["B·L"]].replace(",", "")) for key, row in cells.items()}
    prefill = [key for key in cells if key[1].startswith("L=")]
    # the prefill boundary: faster at every point from it, and it is the smallest such B·L
    threshold = int(re.search(r"B·L ≥ ([\d,]+)", sentence).group(1).replace(",", ""))
    assert all(speedup[k] > 1 for k in prefill if tokens[k] >= threshold)
    below = [tokens[k] for k in prefill if tokens[k] < threshold and speedup[k] <= 1]
    assert below and max(below) == max(t for t in map(tokens.get, prefill) if t < threshold)
    # decode with the merged expert kept: faster up to a batch, slower beyond, each as tabled
    upto = int(re.search(r"faster at B ≤ (\d+) and slower beyond", sentence).group(1))
    for b, quoted in re.findall(r"B=(\d+) ([\d.]+)×", sentence.split("kept from its prompt")[1]
                                .split("holding")[0]):
        assert float(quoted) == speedup[(b, "decode, merge kept")]
        assert (float(quoted) > 1) == (int(b) <= upto)
    kept = re.search(r"holding ([\d.]+ [GMK]iB)", sentence).group(1)
    assert cells[("64", "decode, merge kept")][col["merged experts kept"]] == kept  # one layer


def test_a_time_below_its_bound_is_left_out_of_the_findings_and_marked(records):
    edited = [dict(r) for r in records]
    meo = _record(edited, "meo", 64, seq_len=8)  # the slowest prefill point, made a broken one
    meo.update(latency_ms_median=meo["roofline_ms"] / 2, below_bound=True)
    ok = views.ok_rows(views.records_frame(edited))
    (sentence,) = regime_findings(ok)
    assert "B=64 L=8" not in sentence and "(below bound)" in str(regime_tables(ok)[0].rows)


def test_the_heatmap_annotates_speedup_bound_and_kept_bytes(ok):
    drawn = draw_regimes(ok)
    (ax,) = [a for a in drawn.figure.axes if a.get_label() != "<colorbar>"]
    texts = [t.get_text() for t in ax.texts]
    assert "4.67×" in texts and any("bound 4.00×" in t and "kept 18.0 MiB" in t for t in texts)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "8", "64"]
    assert ax.get_xticklabels()[0].get_text().startswith("decode")


REGION = {"name": "meo-wins-at-scale", "source": "s", "metric": "latency_ms_median",
          "select": {"host": "layer", "num_experts": 16, "top_k": 4, "workload": "prefill"},
          "region": {"tokens_per_forward": {"at_least": 1024}},
          "ratio": {"numerator": {"variant": "moe"}, "denominator": {"variant": "meo"}},
          "expect": {"at_least": 1.5}}


def test_a_region_claim_judges_every_measured_point_inside_it(records):
    (claim,) = parse_claims({"claims": [REGION]})
    (verdict,), errors = judge_all([claim], records, {})
    assert not errors and verdict.verdict == "pass" and len(verdict.outcomes) == 5
    assert "B·L ≥ 1,024" in verdict.quantity and "L=512 B=64" in verdict.detail
    (tight,), _ = judge_all(parse_claims({"claims": [{**REGION, "expect": {"at_least": 2}}]}),
                            records, {})
    assert tight.verdict == "fail" and "L=32 B=64" in tight.measured  # 1.70×, the only one short


def test_a_point_with_one_side_unmeasured_is_listed_and_does_not_fail(records):
    (claim,) = parse_claims({"claims": [REGION]})
    lost = [r for r in records if not (r["variant"] == "meo" and r["batch_size"] == 8
                                       and r["seq_len"] == 512)]
    (verdict,), _ = judge_all([claim], lost, {})
    assert verdict.verdict == "pass" and "1 unmeasured" in verdict.measured
    assert "L=512 B=8: not measured (no denominator record at this point)" in verdict.detail
    (none,), _ = judge_all([claim], [r for r in records if r["variant"] == "dense"], {})
    assert none.verdict == "unmeasured"


@pytest.mark.parametrize("region, words", [({"tokens": {"at_least": 1}}, "unknown coordinate"),
                                           ({"batch_size": {"above": 1}}, "at_least and/or at_most"),
                                           ([1], "region must map")])
def test_a_malformed_region_names_what_is_wrong(region, words):
    with pytest.raises(ValueError, match=words):
        parse_claims({"claims": [{**REGION, "region": region}]})


def test_the_regimes_preset_crosses_batch_and_regime_within_its_token_budget():
    jobs, impossible = PRESETS["regimes"].grid.expand()
    specs = [spec for spec, _ in jobs]
    decode = [s for s in specs if s.workload == "decode"]
    assert sorted((s.variant, str(s.merge_reuse)) for s in decode if s.batch_size == 64) == [
        ("dense", "None"), ("meo", "sequence"), ("meo", "step"), ("moe", "None")]
    assert {s.context for s in decode} == {128} and impossible == 0
    prefill = [s for s in specs if s.workload == "prefill"]
    assert max(s.batch_size * s.seq_len for s in prefill) == 2048
    assert {(s.d_model, s.d_ff, s.num_experts, s.top_k) for s in specs if s.variant != "dense"} \
        == {(768, 3072, 16, 4)}
    with planned_for("cuda"):  # the gpu preset plans for CUDA workers
        gpu = [s for s, _ in PRESETS["gpu"].grid.expand()[0] if s.workload == "decode"]
    assert {(s.d_model, s.batch_size) for s in gpu} == {(2048, 1), (2048, 8), (2048, 64)}


def test_the_documented_region_claim_parses_and_judges(records):
    text = (Path(__file__).parents[1] / "docs" / "claims.md").read_text()
    block = text.split("### Region claims", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    (claim,) = parse_claims(yaml.safe_load(block))
    (verdict,), _ = judge_all([claim], records, {})  # the toy layer: 768 x 3072, E 16, k 4
    assert verdict.verdict == "fail" and "L=8 B=64" in verdict.measured  # 0.65× at B·L = 512
