"""The trace-file summary on a real H200 trace of one MEO layer forward (dense merge, bfloat16,
d 768, d_ff 3072, E 16, k 4, B 8, L 128; kept, trimmed, in tests/data) and on a hand-made trace:
device time split by phase, kernels and operators apart, launch statistics, one-line names."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from meo_profile.models.phases import PHASES

from meo_profile.measure.trace_file import (
    OTHER,
    TraceFileError,
    analyze_trace,
    load_trace,
    per_step,
)
from meo_profile.measure.trace_names import short_kernel_name

H200_TRACE = Path(__file__).parent / "data" / "meo-layer-trace.json"
DEVICE_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}


@pytest.fixture(scope="module")
def real():
    return load_trace(H200_TRACE), analyze_trace(H200_TRACE)


def test_the_h200_phase_split():
    """The totals the trace holds, summed by hand from its device events and their launches."""
    a = analyze_trace(H200_TRACE)
    assert a.kernel_ms_total == pytest.approx(0.208571, abs=5e-7)
    assert a.kernel_ms_by_phase == pytest.approx(
        {"router": 0.046559, "experts": 0.040351, "merge": 0.116701, "other": 0.004960}, abs=5e-7)


def test_kernel_total_is_the_sum_of_the_phases(real):
    _, a = real
    assert a.kernel_ms_total > 0
    assert sum(a.kernel_ms_by_phase.values()) == pytest.approx(a.kernel_ms_total, rel=1e-12)
    assert set(a.kernel_ms_by_phase) <= {*PHASES, OTHER}


def test_merge_and_experts_ran_on_the_device(real):
    _, a = real
    assert a.kernel_ms_by_phase["merge"] > 0 and a.kernel_ms_by_phase["experts"] > 0
    assert a.kernel_ms_by_phase["router"] > 0
    # the dense merge (gate matrix @ stacked weights) is the largest phase of this MEO layer
    assert max(a.kernel_ms_by_phase, key=a.kernel_ms_by_phase.get) == "merge"


def test_every_device_event_is_counted_once(real):
    raw, a = real
    device = [e for e in raw["traceEvents"] if e.get("ph") == "X" and e.get("cat") in DEVICE_CATS]
    assert sum(k.calls for k in a.kernels) == len(device) == a.launch.device_events == 38
    assert sum(k.total_ms for k in a.kernels) == pytest.approx(a.kernel_ms_total, rel=1e-12)
    assert a.kernel_ms_total == pytest.approx(sum(e["dur"] for e in device) / 1e3, rel=1e-12)
    for k in a.kernels:
        assert sum(k.by_phase.values()) == pytest.approx(k.total_ms, rel=1e-12)
    assert {k.kind for k in a.kernels} == {"kernel", "memcpy", "memset"}
    links = a.links
    assert links.by_correlation == 38 and links.unlinked == 0 and links.flows_matching == 38


def test_operators_and_kernels_are_separate_tables(real):
    raw, a = real
    cpu_ops = [e for e in raw["traceEvents"] if e.get("cat") == "cpu_op"]
    assert sum(o.calls for o in a.ops) == len(cpu_ops)
    assert all(o.name.startswith("aten::") for o in a.ops)
    assert not {o.name for o in a.ops} & {k.name for k in a.kernels}
    assert not any(k.name.startswith(("aten::", "cuda")) for k in a.kernels)
    assert not {o.name for o in a.ops} & {*PHASES, "cudaLaunchKernel", "cuLaunchKernelEx"}
    assert [o.self_ms for o in a.ops] == sorted((o.self_ms for o in a.ops), reverse=True)
    assert all(0 <= o.self_ms <= o.total_ms + 1e-12 for o in a.ops)
    mm = next(o for o in a.ops if o.name == "aten::mm")
    assert mm.calls == 6 and mm.self_ms < mm.total_ms  # the launches are its children


def test_the_gpu_annotations_agree_with_the_host_ranges(real):
    _, a = real
    assert a.links.gpu_annotation_disagreements == 0
    for phase, ms in a.kernel_ms_by_phase.items():
        assert a.links.gpu_annotation_ms_by_phase[phase] == pytest.approx(ms, rel=1e-9)


def test_launch_statistics(real):
    _, a = real
    s = a.launch
    assert s.launched == s.device_events == 38 and s.devices == 1
    assert 0 < s.short <= s.launched
    assert s.busy_ms == pytest.approx(a.kernel_ms_total, rel=1e-9)  # one stream: no overlap
    assert 0 < s.busy_ms <= s.span_ms and 0 < s.idle_fraction < 1
    assert 0 < s.launch_cpu_ms <= s.runtime_cpu_ms
    assert 0 < s.launch_delay_us_median <= s.launch_delay_us_mean <= s.launch_delay_us_max
    assert a.steps == 1


@pytest.mark.parametrize("width", [24, 40, 60])
def test_short_names_are_one_line_and_bounded(real, width):
    raw, _ = real
    for e in raw["traceEvents"]:
        if e.get("cat") in DEVICE_CATS:
            name = short_kernel_name(e["name"], width)
            assert "\n" not in name and 0 < len(name) <= width
    a = analyze_trace(raw, width=width)
    assert all(len(k.name) <= width and "\n" not in k.name for k in a.kernels)
    assert all(k.full_names for k in a.kernels)


def test_short_names_of_the_h200_kernels(real):
    _, a = real
    names = {k.name for k in a.kernels}
    assert {"reduce_kernel<MeanOps>", "elementwise_kernel<CUDAFunctor_add>", "gatherTopK",
            "bitonicSortKVInPlace<GTOp>", "vectorized_elementwise_kernel<GeluCUDAKernelImpl>",
            "vectorized_elementwise_kernel<MulFunctor>", "softmax_warp_forward",
            "_scatter_gather_elementwise_kernel<TensorAssign>", "splitKreduce_kernel",
            "nvjet_sm90_tst_384x8_64x4_2x1_v_bz_NNT", "Memset (Device)",
            "Memcpy DtoD (Device -> Device)"} <= names


@pytest.mark.parametrize("full, short", [
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps"
     "<float>, unsigned int, long, 4, 4> >(at::native::ReduceOp<float, at::native::ArgMaxOps"
     "<float>, unsigned int, long, 4, 4>)", "reduce_kernel<ArgMaxOps>"),
    ("void (anonymous namespace)::softmax_warp_forward<float, float, float, 8, false, false>"
     "(float*, float const*, int, int, int, bool const*, int, bool)", "softmax_warp_forward"),
    ("triton_poi_fused_add_mul_0", "triton_poi_fused_add_mul_0"),
    ("Memcpy HtoD (Pageable -> Device)", "Memcpy HtoD (Pageable -> Device)"),
    ("void at::native::elementwise_kernel<128, 2,\n at::native::gpu_kernel_impl_nocast<at::native::"
     "BinaryFunctor<float, float, float, at::native::binary_internal::MulFunctor<float> > >"
     "(at::TensorIteratorBase&)::{lambda(int)#1}>(int)", "elementwise_kernel<MulFunctor>"),
])
def test_short_name_rule(full, short):
    assert short_kernel_name(full) == short
    assert short_kernel_name(full, 10) == (short if len(short) <= 10 else short[:9] + "…")


# ---------------------------------------------------------------- a hand-made trace

def X(cat, name, ts, dur, pid=1, tid=1, **args):  # noqa: N802
    return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur,
            "args": args}


def tiny_trace() -> dict:
    """Host thread (1, 1); device 0, streams 7 and 8. Phases: router [100, 200], merge [300, 400]
    with experts [350, 390] inside it; aten::gelu at 500 outside every phase."""
    ev = [
        X("user_annotation", "ProfilerStep#3", 0, 1000),
        X("user_annotation", "router", 100, 100),
        X("cpu_op", "aten::linear", 110, 50, **{"External id": 1}),
        X("cpu_op", "aten::mm", 115, 30, **{"External id": 2}),
        X("cuda_driver", "cuLaunchKernelEx", 120, 8, correlation=10, **{"External id": 2}),
        X("user_annotation", "merge", 300, 100),
        X("cpu_op", "aten::add", 310, 20, **{"External id": 3}),
        X("cuda_runtime", "cudaLaunchKernel", 312, 6, correlation=11, **{"External id": 3}),
        X("cuda_runtime", "cudaMemsetAsync", 320, 4, correlation=12, **{"External id": 3}),
        X("user_annotation", "experts", 350, 40),
        X("cpu_op", "aten::bmm", 352, 30, **{"External id": 4}),
        X("cuda_runtime", "cudaLaunchKernel", 355, 5, correlation=13, **{"External id": 4}),
        X("cpu_op", "aten::gelu", 500, 10, **{"External id": 5}),
        X("cuda_runtime", "cudaLaunchKernel", 502, 3, correlation=14, **{"External id": 5}),
        X("cuda_runtime", "cudaDeviceSynchronize", 900, 50, correlation=15),
        # device: kernels 10 (router), 11 + memset 12 (merge), 13 (experts), 14 (other);
        # one kernel without correlation, tied to aten::bmm (experts) by External id only
        X("kernel", "void a::b::k<1, a::SumOps<float> >(int)", 130, 10, pid=0, tid=7,
          correlation=10, **{"External id": 2}),
        X("kernel", "nvjet_x", 330, 5, pid=0, tid=7, correlation=11, **{"External id": 3}),
        X("gpu_memset", "Memset (Device)", 336, 1, pid=0, tid=7, correlation=12,
          **{"External id": 3}),
        X("kernel", "nvjet_x", 370, 3, pid=0, tid=7, correlation=13, **{"External id": 4}),
        X("kernel", "lonely", 372, 4, pid=0, tid=8, **{"External id": 4}),
        X("kernel", "gelu_k", 520, 2, pid=0, tid=7, correlation=14, **{"External id": 5}),
        {"ph": "s", "cat": "ac2g", "name": "ac2g", "id": 10, "pid": 1, "tid": 1, "ts": 120},
        {"ph": "f", "cat": "ac2g", "name": "ac2g", "id": 10, "pid": 0, "tid": 7, "ts": 130,
         "bp": "e"},
        {"ph": "i", "cat": "cpu_instant_event", "name": "[memory]", "pid": 1, "tid": 1, "ts": 111,
         "s": "t", "args": {"Bytes": 4}},
    ]
    return {"traceEvents": ev}


def test_tiny_trace_phases_are_exact():
    a = analyze_trace(tiny_trace())
    assert a.kernel_ms_by_phase == {"router": 0.010, "experts": 0.007, "merge": 0.006,
                                    "other": 0.002}
    assert a.kernel_ms_total == pytest.approx(0.025, abs=1e-15)
    assert sum(a.kernel_ms_by_phase.values()) == pytest.approx(a.kernel_ms_total, abs=1e-15)
    assert a.steps == 1
    links = a.links
    assert (links.by_correlation, links.by_external_id, links.unlinked) == (5, 1, 0)
    assert links.flows_matching == 1


def test_tiny_trace_tables():
    a = analyze_trace(tiny_trace())
    ops = {o.name: o for o in a.ops}
    assert (ops["aten::linear"].self_ms, ops["aten::linear"].total_ms) == (0.020, 0.050)
    assert (ops["aten::mm"].self_ms, ops["aten::mm"].total_ms) == (0.022, 0.030)
    assert (ops["aten::add"].self_ms, ops["aten::add"].total_ms) == (0.010, 0.020)
    assert (ops["aten::bmm"].self_ms, ops["aten::gelu"].self_ms) == (0.025, 0.007)
    assert a.op_self_ms_total == pytest.approx(0.020 + 0.022 + 0.010 + 0.025 + 0.007)
    kernels = {k.name: k for k in a.kernels}
    assert set(kernels) == {"k<SumOps>", "nvjet_x", "Memset (Device)", "lonely", "gelu_k"}
    assert kernels["nvjet_x"].calls == 2 and kernels["nvjet_x"].total_ms == 0.008
    assert kernels["nvjet_x"].by_phase == {"experts": 0.003, "merge": 0.005}
    assert kernels["nvjet_x"].mean_us == 4.0
    assert kernels["Memset (Device)"].kind == "memset"
    notes = {r.name: r for r in a.annotations}
    assert notes["merge"].self_ms == pytest.approx(0.100 - 0.020 - 0.040)  # add, experts
    runtime = {r.name: r for r in a.runtime}
    assert runtime["cudaLaunchKernel"].calls == 3


def test_tiny_trace_launch_statistics():
    s = analyze_trace(tiny_trace()).launch
    assert (s.device_events, s.launched, s.devices) == (6, 5, 1)
    # device < launch: memset 1 < 4, gelu_k 2 < 3, nvjet 3 < 5; not 10 vs 8, 5 vs 6 is short too
    assert s.short == 4
    assert s.launch_cpu_ms == pytest.approx((8 + 6 + 4 + 5 + 3) / 1e3)
    assert s.runtime_cpu_ms == pytest.approx((8 + 6 + 4 + 5 + 3 + 50) / 1e3)
    delays = [130 - 120, 330 - 312, 336 - 320, 370 - 355, 520 - 502]
    assert s.launch_delay_us_mean == pytest.approx(sum(delays) / 5)
    assert s.launch_delay_us_max == 18
    assert s.span_ms == pytest.approx((522 - 130) / 1e3)
    # stream 8's 'lonely' [372, 376] overlaps stream 7's nvjet_x [370, 373]
    assert s.busy_ms == pytest.approx((10 + 5 + 1 + 6 + 2) / 1e3)
    assert s.idle_fraction == pytest.approx(1 - 24 / 392)


def test_steps_come_from_profiler_step_ranges():
    t = tiny_trace()
    t["traceEvents"].append(X("user_annotation", "ProfilerStep#4", 1000, 1000))
    assert analyze_trace(t).steps == 2
    t["traceEvents"] = [e for e in t["traceEvents"] if "ProfilerStep" not in e["name"]]
    assert analyze_trace(t).steps == 1


def test_gz_and_path_give_the_same_summary(tmp_path):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(tiny_trace(), f)
    from_gz = analyze_trace(path).to_dict()
    from_dict = analyze_trace(tiny_trace()).to_dict()
    assert from_gz.pop("source") == str(path) and from_dict.pop("source") == "<dict>"
    assert from_gz == from_dict
    json.dumps(from_dict)  # the summary is JSON as it is


def test_per_step_divides_by_the_profiled_steps():
    t = tiny_trace()
    t["traceEvents"].append(X("user_annotation", "ProfilerStep#4", 1000, 1000))
    total_ms, by_phase = per_step(analyze_trace(t))
    assert total_ms == pytest.approx(0.025 / 2)
    assert by_phase == pytest.approx({"router": 0.005, "experts": 0.0035, "merge": 0.003,
                                      "other": 0.001})


def test_a_trace_without_device_events_has_no_kernel_time():
    host_only = {"traceEvents": [e for e in tiny_trace()["traceEvents"]
                                 if e.get("cat") not in DEVICE_CATS]}
    a = analyze_trace(host_only)
    assert a.kernel_ms_total is None and a.kernel_ms_by_phase == {} and a.kernels == []
    assert a.launch is None and a.links is None
    assert per_step(a) == (None, {})
    assert a.phase_host_ms() == {"router": 0.1, "experts": 0.04, "merge": 0.1}  # inclusive


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    ("{not json", "not a JSON trace"),
    ('{"events": []}', "no traceEvents list"),
    ("[1, 2]", "no traceEvents list"),
])
def test_unreadable_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "t.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(TraceFileError, match=f"^--from '.*t.json': {message}") as info:
        analyze_trace(path)
    assert "\n" not in str(info.value)


def test_each_table_names_one_time_unit_for_all_its_time_columns():
    import re

    from meo_profile.measure.trace import TraceSummary, summarize_file
    from meo_profile.terminal import perf

    slow = tiny_trace()  # every event 1000 times longer: kernels of milliseconds, means of ms
    for event in slow["traceEvents"]:
        for key in ("ts", "dur"):
            if key in event:
                event[key] *= 1000
    tables = [table for summary in (summarize_file(H200_TRACE),
                                    TraceSummary(None, "slow.json", analyze_trace(slow)))
              for table in (perf.kernels_table(summary), perf.ops_table(summary),
                            perf.phases_table(summary))]
    for table in tables:
        units = {m.group(1) for c in table.columns
                 if (m := re.search(r"\((s|ms|us|ns)\)$", str(c.header)))}
        assert len(units) == 1, [c.header for c in table.columns]
    kernels = tables[0]
    assert kernels.columns[4].header == kernels.columns[2].header.replace("total", "mean")
