"""`meo-profile check`: the built-in claims hold on this code, a tampered count fails the claim
that reads it, pending never passes, malformed claims exit 2 naming the claim, JUnit parses.

The built-in claims are measured once (FLOPs and parameters on the meta device, seconds); every
other test judges those records, edited, or small hand-written ones."""

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml
from meo_profile.models import Spec
from typer.testing import CliRunner

from cli import app
from meo_profile.check.claim import ClaimError, judge_all
from meo_profile.check.claims_file import load_claims, parse_claims
from meo_profile.check.quantities import PARTS
from meo_profile.check.run import pending_reasons
from meo_profile.core.paper import PAPER_NUMBERS
from meo_profile.core.units import parse_fraction, parse_number
from meo_profile.measure import fvcore_count as flops
from meo_profile.results.record import Result
from meo_profile.results.store import load


def cli(*args: str):
    return CliRunner().invoke(app, list(args))


@pytest.fixture(scope="module")
def builtin(tmp_path_factory):
    """`meo-profile check` with no RESULTS: measures what the built-in claims need."""
    out = tmp_path_factory.mktemp("check")
    result = cli("check", "--json", "--save", str(out / "run"), "--junit-xml", str(out / "junit.xml"))
    return result, json.loads(result.stdout), out


def write_records(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def verdicts(payload: dict) -> dict[str, str]:
    return {v["name"]: v["verdict"] for v in payload["verdicts"]}


# ----------------------------------------------------------------------------- built-ins
def test_builtin_claims_hold_on_this_code(builtin):
    result, payload, _ = builtin
    assert result.exit_code == 0, result.stdout + result.stderr
    got = verdicts(payload)
    # every built-in claim is checkable now that ce and xmoe are built and counted
    assert set(got.values()) == {"pass"} and len(got) == len(load_claims()), payload
    assert "fail" not in got.values() and payload["ok"] and not payload["errors"]


def test_builtin_values_are_the_papers():
    claims = {c.name: c for c in load_claims()}
    assert claims["meo-vanilla-moe-flops"].expect.target.value == PAPER_NUMBERS["flops_moe"].value * 1e9
    meo = PAPER_NUMBERS["flops_meo"]
    assert claims["meo-merged-flops"].expect.target.value / 1e9 in (meo.value, *meo.also_printed)
    # like with like: the paper's FLOPs have no router term
    assert claims["meo-vanilla-moe-flops"].quantity.exclude_parts == ("router",)


def test_measured_records_are_stored_and_judge_alike(builtin, tmp_path):
    _, payload, out = builtin
    again = cli("check", str(out / "run"), "--json")
    assert again.exit_code == 0
    assert verdicts(json.loads(again.stdout)) == verdicts(payload)


def test_parts_cover_what_the_counter_tags():
    tagged = {part for _, part in getattr(flops, "PART_OF_TYPE", ())}
    assert tagged <= set(PARTS)


# ----------------------------------------------------------------------------- tampering
def _tamper_merge(records):
    """Double the merge of the layer-host MEO record at k=4."""
    r = next(r for r in records if r["host"] == "layer" and r["variant"] == "meo" and r["top_k"] == 4)
    r["macs_by_part"]["merge"] *= 2
    r["macs"] += r["macs_by_part"]["merge"] // 2
    r["flops"] = 2 * r["macs"]


def _tamper_moe_total(records):
    """Add 1% to the vanilla BERT-base count."""
    r = next(r for r in records if r["host"] == "bert-base" and r["variant"] == "moe")
    r["macs"] = int(r["macs"] * 1.01)
    r["flops"] = 2 * r["macs"]


def _tamper_lory_per_sequence(records):
    """Count Lory's merge once per sequence instead of once per segment (L/T = 16 segments)."""
    r = next(r for r in records if r["variant"] == "lory" and r["seq_len"] == 2048)
    r["macs_by_part"]["merge"] //= 2048 // r["segment_len"]


@pytest.mark.parametrize("tamper, failing, named", [
    (_tamper_merge, {"meo-merge-cost-closed-form"}, "top_k=4"),
    (_tamper_moe_total, {"meo-vanilla-moe-flops", "meo-vs-moe-flops-ratio"}, " vs "),
    (_tamper_lory_per_sequence, {"lory-merge-overhead"}, "seq_len=2048"),
])
def test_a_tampered_count_fails_the_claim_that_reads_it(builtin, tmp_path, tamper, failing, named):
    records = copy.deepcopy(load(builtin[2] / "run").records)
    tamper(records)
    junit = tmp_path / "junit.xml"
    result = cli("check", str(write_records(tmp_path / "r.jsonl", records)), "--json",
                 "--junit-xml", str(junit))
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert {n for n, v in verdicts(payload).items() if v == "fail"} == failing
    assert all(named in v["detail"] for v in payload["verdicts"] if v["name"] in failing)
    suite = ET.parse(junit).getroot().find("testsuite")
    assert {c.get("name") for c in suite.iter("testcase") if c.find("failure") is not None} == failing
    assert suite.get("failures") == str(len(failing))


def test_table_output_names_the_failing_claim(builtin, tmp_path):
    records = copy.deepcopy(load(builtin[2] / "run").records)
    _tamper_merge(records)
    result = cli("check", str(write_records(tmp_path / "r.jsonl", records)))
    assert result.exit_code == 1
    assert "fail: meo-merge-cost-closed-form: top_k=4" in result.stderr


def test_junit_xml_is_well_formed(builtin):
    root = ET.parse(builtin[2] / "junit.xml").getroot()
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert len(cases) == len(load_claims()) == int(suite.get("tests"))
    assert all(c.find("skipped") is None and c.find("failure") is None for c in cases)
    assert suite.get("skipped") == "0" and suite.get("failures") == "0"


# ------------------------------------------------------------------------------- pending
CLAIM = """
claims:
  - name: meo-cheaper
    source: test
    select: {host: layer, d_model: 16, d_ff: 32, seq_len: 8, batch_size: 1, num_experts: 4, top_k: 2}
    ratio: {numerator: {variant: meo}, denominator: {variant: moe}}
    metric: macs
    expect: {at_most: 0.9}
"""


def tiny_records() -> list[dict]:
    """Hand-written counts for the CLAIM configuration (MEO at 60% of vanilla)."""
    base = dict(host="layer", d_model=16, d_ff=32, seq_len=8, batch_size=1, num_experts=4, top_k=2)
    out = []
    for variant, macs in (("meo", 600), ("moe", 1000)):
        r = Result(Spec(variant=variant, **base), metrics=["flops"]).update(macs=macs, flops=2 * macs)
        out.append(r.to_dict())
    return out


def test_pending_claims_never_pass(tmp_path):
    results = write_records(tmp_path / "r.jsonl", tiny_records())
    ready = tmp_path / "ready.yaml"
    ready.write_text(CLAIM)
    assert verdicts(json.loads(cli("check", str(results), "--claims", str(ready), "--json").stdout)) == {"meo-cheaper": "pass"}
    waiting = tmp_path / "waiting.yaml"
    waiting.write_text(CLAIM + "    requires: {registered: sparse-mixer}\n")
    result = cli("check", str(results), "--claims", str(waiting), "--json")
    assert result.exit_code == 2  # pending is not a failure, and not a pass: nothing was judged
    (verdict,) = json.loads(result.stdout)["verdicts"]
    assert verdict["verdict"] == "pending" and "not built yet" in verdict["detail"]


def test_a_variant_the_code_cannot_build_is_pending(tmp_path):
    claims = tmp_path / "claims.yaml"
    claims.write_text("claims:\n  - {name: future, source: test, metric: macs, expect: {at_least: 1},"
                      " select: {host: layer, variant: sparse-mixer},"
                      " requires: {registered: sparse-mixer}}\n")
    result = cli("check", "--claims", str(claims), "--json")
    assert result.exit_code == 2, result.stderr  # no claim could be judged
    (verdict,) = json.loads(result.stdout)["verdicts"]
    assert verdict["verdict"] == "pending" and "not built yet" in verdict["detail"]


def test_ce_claim_waits_while_the_counter_ignores_compression(monkeypatch):
    """Before counting supported compressed experts, it counted k whole experts per token for
    every MoE layer; the ce claim must then be pending, not judged on a wrong count."""
    from meo_profile.models.layers import SparseLayer

    from meo_profile.check.run import _probe

    def k_of_e_experts(model):  # the generic rule: (E - k) experts of each layer are idle
        return sum((m.experts.num_experts - m.router.top_k) * m.experts.expert_numel
                   for m in model.modules() if isinstance(m, SparseLayer))

    claims = [c for c in load_claims() if c.name == "ce-active-params"]
    _probe.cache_clear()
    flops.forget_counts()  # counts made before the patch would answer for the patched counter
    monkeypatch.setattr(flops, "inactive_params", k_of_e_experts)
    try:
        assert "ignores" in pending_reasons(claims)["ce-active-params"]
    finally:
        _probe.cache_clear()
        flops.forget_counts()


# ---------------------------------------------------------------------------- bad input
MALFORMED = {
    "unknown metric": ("metric: flop", "unknown metric 'flop'"),
    "unknown field": ("select: {hosts: layer}", "unknown spec field"),
    "bad tolerance": ("expect: {value: 1, tolerance: ten%}", "expect"),
    "two expectations": ("expect: {at_most: 1, at_least: 0}", "exactly one"),
    "unknown part": ("parts: [expert]", "unknown part"),
    "unknown probe": ("requires: {trained: meo}", "unknown probe"),
    "invalid config": ("select: {host: layer, variant: moe, num_experts: 2, top_k: 4}", "--top-k 4"),
}


def _claim_with(line: str) -> str:
    fields = {"name": "my-claim", "source": "test", "metric": "macs",
              "select": "{host: layer, variant: moe}", "expect": "{at_least: 1}"}
    key = line.split(":", 1)[0]
    fields[key] = line.split(":", 1)[1].strip()
    return "claims:\n  - " + "\n    ".join(f"{k}: {v}" for k, v in fields.items()) + "\n"


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_a_malformed_claim_exits_2_naming_it(tmp_path, case):
    line, message = MALFORMED[case]
    bad = tmp_path / "claims.yaml"
    bad.write_text(_claim_with(line))
    result = cli("check", "--claims", str(bad))  # refused before anything is measured
    assert result.exit_code == 2
    assert "'my-claim'" in result.stderr and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_missing_key_and_bad_yaml_exit_2(tmp_path):
    bad = tmp_path / "claims.yaml"
    bad.write_text("claims:\n  - name: no-expect\n    source: s\n    select: {host: layer}\n    metric: macs\n")
    result = cli("check", "--claims", str(bad))
    assert result.exit_code == 2 and "'no-expect'" in result.stderr and "expect" in result.stderr
    bad.write_text("claims: [name: x\n")
    result = cli("check", "--claims", str(bad))
    assert result.exit_code == 2 and "not valid YAML" in result.stderr


def test_a_claim_without_records_is_unmeasured_and_alone_exits_2(tmp_path):
    claims = tmp_path / "claims.yaml"
    claims.write_text(CLAIM.replace("d_model: 16", "d_model: 32"))
    results = write_records(tmp_path / "r.jsonl", tiny_records())
    result = cli("check", str(results), "--claims", str(claims))
    assert result.exit_code == 2  # none could be judged
    assert "unmeasured: meo-cheaper: no record for host=layer d_model=32" in result.stderr
    assert "no claim could be judged" in result.stderr and "Traceback" not in result.stderr


def test_unmeasured_claims_pass_beside_judged_ones_unless_all_are_required(tmp_path):
    claims = tmp_path / "claims.yaml"
    other = CLAIM.split("claims:\n", 1)[1].replace("meo-cheaper", "meo-cheaper-wide") \
        .replace("d_model: 16", "d_model: 32")
    claims.write_text(CLAIM + other)
    results = write_records(tmp_path / "r.jsonl", tiny_records())
    result = cli("check", str(results), "--claims", str(claims), "--json")
    assert result.exit_code == 0, result.stderr  # one judged, and it passes
    assert verdicts(json.loads(result.stdout)) == {"meo-cheaper": "pass",
                                                    "meo-cheaper-wide": "unmeasured"}
    strict = cli("check", str(results), "--claims", str(claims), "--require-all",
                 "--junit-xml", str(tmp_path / "j.xml"))
    assert strict.exit_code == 1
    assert 'type="ClaimUnmeasured"' in (tmp_path / "j.xml").read_text()


def test_a_failed_measurement_fails_the_claim(tmp_path):
    records = tiny_records()
    records[0].update(status="error", error="RuntimeError: boom", macs=None, flops=None)
    claims = tmp_path / "claims.yaml"
    claims.write_text(CLAIM)
    result = cli("check", str(write_records(tmp_path / "r.jsonl", records)), "--claims",
                 str(claims), "--json")
    assert result.exit_code == 1
    assert "boom" in json.loads(result.stdout)["verdicts"][0]["detail"]


# -------------------------------------------------------------------------- expectations
def test_numbers_and_fractions_parse():
    assert parse_number("72.0G") == 72.0e9 and parse_number("72.0e9") == 72.0e9
    assert parse_number("8Gi") == 8 * 2**30 and parse_number(3) == 3.0
    assert parse_fraction("10%") == pytest.approx(0.1) and parse_fraction(0.05) == 0.05
    with pytest.raises(ValueError):
        parse_fraction("-1%")


def test_closed_form_and_list_selections_judge_every_case():
    claims = parse_claims({"claims": [{
        "name": "merge", "source": "s", "metric": "macs", "parts": ["experts", "merge"],
        "select": {"host": "layer", "top_k": [1, 2], "seq_len": 4, "batch_size": 1},
        "ratio": {"numerator": {"variant": "meo"}, "denominator": {"variant": "moe-seq"}},
        "expect": {"closed_form": "meo_merge_ratio", "tolerance": "1%"}}]})
    records = []
    for k in (1, 2):  # P = 1 per token and expert: vanilla L*k, MEO L + k
        for variant, parts in (("moe-seq", {"experts": 4 * k}), ("meo", {"experts": 4, "merge": k})):
            records.append({**Spec(host="layer", variant=variant, top_k=k, seq_len=4,
                                   batch_size=1).to_dict(), "status": "ok",
                            "macs": sum(parts.values()), "macs_by_part": parts})
    (verdict,), errors = judge_all(claims, records, {})
    assert not errors and verdict.verdict == "pass" and len(verdict.outcomes) == 2
    records[-1]["macs_by_part"]["merge"] = 4  # k=2: MEO 8 / 8 instead of 6 / 8
    (verdict,), _ = judge_all(claims, records, {})
    assert verdict.verdict == "fail" and "top_k=2" in verdict.detail and "top_k=1" not in verdict.detail


def test_timed_ratios_pair_records_of_one_device_only():
    claims = parse_claims({"claims": [{
        "name": "faster", "source": "s", "metric": "latency_ms_median",
        "select": {"host": "layer", "batch_size": 1},
        "ratio": {"numerator": {"variant": "meo"}, "denominator": {"variant": "moe"}},
        "expect": {"at_most": 0.8}}]})

    def rec(variant, device, ms):
        return {**Spec(host="layer", variant=variant, batch_size=1).to_dict(), "status": "ok",
                "device_name": device, "latency_ms_median": ms}

    # a slow machine's MoE against a fast machine's MEO would pass; same-device pairs do not
    records = [rec("meo", "fast", 9.0), rec("moe", "fast", 10.0), rec("moe", "slow", 100.0)]
    (verdict,), _ = judge_all(claims, records, {})
    assert verdict.verdict == "fail" and len(verdict.outcomes) == 1


def test_store_round_trip_keeps_claims_judgeable(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    write_records(run / "results.jsonl", tiny_records())  # the store's file, as a sweep leaves it
    claims = tmp_path / "claims.yaml"
    claims.write_text(CLAIM)
    assert cli("check", str(tmp_path / "run"), "--claims", str(claims)).exit_code == 0


def test_save_needs_something_measured(tmp_path):
    results = write_records(tmp_path / "r.jsonl", tiny_records())
    result = cli("check", str(results), "--save", str(tmp_path / "out"))
    assert result.exit_code == 2 and "--save" in result.stderr


def test_auto_in_a_selection_matches_what_it_resolved_to():
    claims = parse_claims(yaml.safe_load(CLAIM.replace("top_k: 2}", "top_k: 2, impl: auto, device: auto}")))
    (verdict,), errors = judge_all(claims, tiny_records(), {})
    assert verdict.verdict == "pass" and not errors


def test_the_documented_example_parses():
    text = (Path(__file__).parents[1] / "docs" / "claims.md").read_text()
    example = text.split("### Example", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    assert len(parse_claims(yaml.safe_load(example))) == 3


def test_claim_errors_are_one_line():
    with pytest.raises(ClaimError, match=r"^claims: claim '#1': missing 'name'$"):
        parse_claims({"claims": [{"source": "s"}]})
