"""The conditions a configuration is measured under: parsed once, stored as normalised text, and
read back from records written before they existed as the defaults those were measured under."""

from __future__ import annotations

import json

import pytest
from meo_profile.models import Spec, SpecError
from meo_profile.models.conditions import parse_routing, parse_workload

from meo_profile.core.identity import config_key
from meo_profile.results.store import parse_line
from meo_profile.sweep.grid import GridError, parse_axis_flag


def test_conditions_are_stored_as_normalised_text():
    spec = Spec(workload="decode", routing="zipf:1.20, local:0.80")
    assert (spec.workload, spec.routing, spec.scope) == ("decode", "zipf:1.2,local:0.8", "model")
    assert spec.context == spec.seq_len  # a decode step's context defaults to L
    assert parse_workload("generate:16").steps == 16
    choice = parse_routing(spec.routing)
    assert (choice.kind, choice.param, choice.local, choice.imposed) == ("zipf", 1.2, 0.8, True)
    assert not parse_routing("router").imposed and parse_routing("router,local:0.5").imposed
    assert parse_routing("replay:traces/olmoe.npz").path == "traces/olmoe.npz"


@pytest.mark.parametrize("fields, flag", [
    ({"workload": "generate:0"}, "--workload"), ({"workload": "gen"}, "--workload"),
    ({"routing": "zipf"}, "--routing"), ({"routing": "zipf:nan"}, "--routing"),
    ({"routing": "biased:-1"}, "--routing"), ({"routing": "uniform:2"}, "--routing"),
    ({"routing": "uniform,local:1.5"}, "--routing"), ({"routing": "replay:t.npz,local:0.5"}, "--routing"),
    ({"scope": "layer"}, "--scope"), ({"context": 64}, "--context"),
    ({"merge_reuse": "step"}, "--merge-reuse"),
    ({"workload": "decode", "merge_reuse": "always"}, "--merge-reuse"),
    ({"vocab_size": 0}, "--vocab-size"), ({"segment_len": 0}, "--segment-len"),
])
def test_a_bad_condition_is_one_line_naming_its_flag(fields, flag):
    with pytest.raises(SpecError) as e:
        Spec(**fields)
    assert str(e.value).startswith(flag) and "\n" not in str(e.value)


def test_a_routing_axis_keeps_each_locality_with_its_distribution():
    assert parse_axis_flag("routing", "uniform,zipf:1,local:0.9,balanced") == [
        "uniform", "zipf:1,local:0.9", "balanced"]
    with pytest.raises(GridError):
        parse_axis_flag("routing", "local:0.5,uniform")


def test_a_record_from_before_the_conditions_reads_as_measured_under_their_defaults():
    spec = Spec()
    stored = {"schema_version": 1, "status": "ok", **spec.to_dict()}
    for name in ("scope", "workload", "context", "merge_reuse", "routing", "vocab_size",
                 "segment_len", "slots_per_expert"):
        del stored[name]
    record = parse_line(json.dumps(stored).encode())
    assert (record["scope"], record["workload"], record["routing"]) == ("model", "prefill", "router")
    assert config_key(record) == config_key(spec.to_dict())  # a resumed sweep finds it
