"""Synthetic result sets with realistic values, for report and figure tests (no measuring).

FLOPs follow the analytic model of the MEO paper's setting (bert-base, k=4, L=128, B=1:
vanilla ~72.4e9 with routers, ~72.0e9 without; MEO ~29e9). Latency, memory and roofline numbers
come from a toy cost model (a 100 GFLOP/s, 12 GB/s CPU): MEO's merge is bandwidth-bound, so its
speedup falls short of its FLOPs ratio, as on real machines. `method_records` adds vanilla MoE,
MEO, compressed experts and XMoE at one expert budget (FFN experts), for the methods section;
`family_records` the merging family (SMEAR, Lory, Soft MoE) at that budget.
"""

from __future__ import annotations

from meo_profile.models import Spec

from meo_profile.measure import analytic
from meo_profile.results.record import Result

ENV = {"torch_version": "2.13.0", "fvcore_version": "0.1.5.post20221221",
       "transformers_version": "5.0.0", "python_version": "3.12.3",
       "device_name": "Test CPU (2 cores)", "num_threads": 2, "git_commit": "abc1234"}
GPU_NAME = "NVIDIA H100 80GB HBM3"
VOCAB = 30522


def bert_macs(spec: Spec) -> dict[str, int]:
    """MACs by part for a BERT host with linear experts (both FFN linears MoE layers)."""
    d, d_ff, n, B, L, E, k = (spec.d_model, spec.d_ff, spec.layers, spec.batch_size,
                              spec.seq_len, spec.num_experts, spec.top_k)
    ffn_copy = n * B * L * 2 * d * d_ff
    parts = {"attention": n * B * (4 * d * d * L + 2 * L * L * d),
             "head": B * L * (d * d + d * VOCAB)}
    if spec.variant == "moe":
        parts |= {"experts": k * ffn_copy, "router": n * B * L * (d + d_ff) * E}
    else:  # meo: one merged copy per token, the merge once per sequence, a sequence router
        parts |= {"experts": ffn_copy, "merge": n * B * k * 2 * d * d_ff,
                  "router": n * B * (d + d_ff) * E}
    return parts


def layer_macs(spec: Spec) -> dict[str, int]:
    d, d_ff, B, L, E, k = (spec.d_model, spec.d_ff, spec.batch_size, spec.seq_len,
                           spec.num_experts, spec.top_k)
    P2 = 2 * d * d_ff  # both linears of the FFN
    tokens = B * L
    if spec.variant == "dense":
        return {"ffn": tokens * P2}
    if spec.variant in ("moe", "moe-seq"):
        routed = tokens if spec.variant == "moe" else B
        return {"experts": tokens * k * P2, "router": routed * (d + d_ff) * E}
    return {"experts": tokens * P2, "merge": B * k * P2, "router": B * (d + d_ff) * E}


def counted(spec: Spec, parts: dict[str, int]) -> dict:
    macs = sum(parts.values())
    return {"macs": macs, "flops": 2 * macs, "flops_source": "analytic", "macs_by_part": parts,
            "count_device": "meta"}


def flops_records(hosts=("bert-small", "bert-base", "bert-large"), ks=(1, 2, 4, 8, 16, 32),
                  experts: int = 32) -> list[dict]:
    out = []
    for host in hosts:
        for variant in ("moe", "meo"):
            for k in ks:
                spec = Spec(host=host, variant=variant, num_experts=experts, top_k=k,
                            seq_len=128, batch_size=1, device="cpu")
                out.append(Result(spec, env=dict(ENV), **counted(spec, bert_macs(spec))).to_dict())
    return out


# Toy machine: matmul throughput and memory bandwidth, and what each implementation wastes.
PEAK_FLOPS = 150e9
BANDWIDTH_BYTES_S = 12e9
EFFICIENCY = {"dense": 0.75, "moe": 0.6, "moe-seq": 0.65, "meo": 0.7}


def layer_timing(spec: Spec, flops: int) -> dict:
    d, d_ff, B, E, k = spec.d_model, spec.d_ff, spec.batch_size, spec.num_experts, spec.top_k
    matrix_bytes = 2 * d * d_ff * 4  # both linears of one expert, float32
    reads = {"dense": 1, "moe": E, "moe-seq": min(E, B * k),
             "meo": min(E, B * k) + 2 * B}[spec.variant]  # merge reads, writes and rereads B copies
    compute_ms, memory_ms = flops / PEAK_FLOPS * 1e3, reads * matrix_bytes / BANDWIDTH_BYTES_S * 1e3
    # the phase-wise bound: MEO's merge moves bytes, then its matmuls compute; one phase otherwise
    by_phase = ({"experts": compute_ms, "merge": memory_ms} if spec.variant == "meo" else
                {"host" if spec.variant == "dense" else "experts": max(compute_ms, memory_ms)})
    bound_ms = sum(by_phase.values())
    dispatch_ms = {"moe": 0.4 * E, "moe-seq": 0.1 * E}.get(spec.variant, 0.0)
    # phases do not overlap in this toy: the merge streams weights, then the matmul computes
    median = (compute_ms + memory_ms) / EFFICIENCY[spec.variant] + dispatch_ms
    weights = matrix_bytes * (1 if spec.variant == "dense" else E)
    merged = B * matrix_bytes if spec.variant == "meo" else 0
    activations = spec.batch_size * spec.seq_len * d_ff * 4 * 3
    train = 3 if spec.mode == "train" else 1
    peak = weights + (merged + activations) * train
    return {"latency_ms_median": median, "latency_ms_p20": median * 0.97,
            "latency_ms_p80": median * 1.04, "latency_runs": 20, "timer": "torch_benchmark",
            "latency_samples_ms": [median * f for f in (0.96, 0.98, 1.0, 1.02, 1.05)],
            "tokens_per_s": B * spec.seq_len / median * 1e3, "roofline_ms": bound_ms,
            "roofline_by_phase": by_phase, "roofline_overlap_ms": max(compute_ms, memory_ms),
            "roofline_ratio": median / bound_ms, "below_bound": median < bound_ms,
            "timing_mode": "eager", "peak_mem_bytes": peak,
            "peak_mem_above_weights_bytes": peak - weights, "weights_bytes": weights,
            "mem_method": "tracemalloc"}


def layer_records(experts=(4, 8, 16, 32, 64), ks=(1, 2, 4, 8),
                  variants=("dense", "moe", "moe-seq", "meo"), modes=("inference",),
                  device: str = "cpu", dtype: str = "float32") -> list[dict]:
    out = []
    for mode in modes:
        for variant in variants:
            grid = [(1, 1)] if variant == "dense" else [(e, k) for e in experts for k in ks if k <= e]
            for e, k in grid:
                spec = Spec(host="layer", variant=variant, num_experts=e, top_k=k, seq_len=128,
                            batch_size=8, device="cpu", dtype=dtype, mode=mode)
                counts = counted(spec, layer_macs(spec))
                record = Result(spec, env=dict(ENV), **counts,
                                **layer_timing(spec, counts["flops"])).to_dict()
                out.append(_on_device(record, device))
    return out


def _on_device(record: dict, device: str) -> dict:
    """A record as if measured on `device` (Spec refuses cuda where there is none)."""
    if device == "cuda":
        scale = 0.02  # a GPU is ~50x faster on these shapes
        for key in ("latency_ms_median", "latency_ms_p20", "latency_ms_p80", "roofline_ms"):
            if record[key] is not None:  # method records have no roofline bound (XMoE: no closed form)
                record[key] *= scale
        record["latency_samples_ms"] = [t * scale for t in record["latency_samples_ms"]]
        if record["tokens_per_s"] is not None:
            record["tokens_per_s"] /= scale
        record.update(device="cuda", device_name=GPU_NAME, timer="cuda_events",
                      mem_method="cuda_max_allocated", **cuda_timing(record))
    return record


# Launches the toy GPU waits for per eager step (ms): one per operator, ~10 us each.
LAUNCH_MS = {"dense": 0.06, "moe": 0.8, "moe-seq": 0.3, "meo": 1.0, "ce": 0.9, "xmoe": 1.2}


def cuda_timing(record: dict) -> dict:
    """What a CUDA record adds: graph-replayed latency, eager time, kernel time by phase."""
    graph_ms = record["latency_ms_median"]
    kernel_ms = 0.95 * graph_ms
    eager_ms = graph_ms + LAUNCH_MS.get(record["variant"], 0.5)
    split = {"meo": {"router": 0.1, "merge": 0.5, "experts": 0.4},
             "dense": {"other": 1.0}}.get(record["variant"],
                                          {"router": 0.1, "dispatch": 0.1, "experts": 0.7,
                                           "combine": 0.1})
    return {"timing_mode": "graph", "eager_ms_median": eager_ms, "kernel_ms": kernel_ms,
            "kernel_ms_by_phase": {p: share * kernel_ms for p, share in split.items()},
            "launch_overhead": 1 - kernel_ms / eager_ms}


# The four methods at one expert budget: 16 FFN experts of width 2048 (XMoE: 64 of width 512),
# k=4, n_ce=2, threshold 0.9, router logits x8, as the presets measure them. Counts follow the
# layer's closed forms; XMoE's routing and compressed experts' error are fixed, plausible values.
XMOE_CHOSEN = {"experts_per_token_mean": 3.66, "experts_per_token_p90": 7.0,
               "experts_per_token_max": 17, "dropped_pairs": 0}
CE_REL_L2_ERROR = 0.115


def method_macs(spec: Spec) -> tuple[dict[str, int], int]:
    """(MACs by part, active parameters per token) of one FFN-expert MoE block."""
    d, d_ff, B, L, E, k = (spec.d_model, spec.d_ff, spec.batch_size, spec.seq_len,
                           spec.num_experts, spec.top_k)
    P2, T = 2 * d * d_ff, B * L  # one whole FFN expert's MACs per token; tokens
    if spec.variant == "meo":  # dense merge (B*k > E): all E experts weighed once per sequence
        return {"experts": T * P2, "merge": B * E * P2, "router": B * d * E}, k * P2 + d * E
    if spec.variant == "ce":
        kept = k - spec.n_ce
        return ({"experts": T * kept * P2, "compress": T * spec.n_ce * 5 * d, "router": T * d * E},
                kept * P2 + spec.n_ce * 3 * d + d * E)
    if spec.variant == "xmoe":
        g, chosen = spec.granularity, XMOE_CHOSEN["experts_per_token_mean"]
        return ({"experts": int(T * chosen * P2 / g), "router": T * d * E * g},
                int(chosen * P2 / g) + d * E * g)
    return {"experts": T * k * P2, "router": T * d * E}, k * P2 + d * E


def method_records(variants=("moe", "meo", "ce", "xmoe"), device: str = "cpu",
                   dtype: str = "float32", timed: bool = True) -> list[dict]:
    out = []
    for variant in variants:
        spec = Spec(host="layer", variant=variant, expert_unit="ffn", num_experts=16, top_k=4,
                    d_model=512, d_ff=2048, batch_size=8, seq_len=128, granularity=4,
                    router_scale=8.0, device="cpu", dtype=dtype)
        parts, active = method_macs(spec)
        counts = counted(spec, parts)
        extra = {"ce": {"rel_l2_error": CE_REL_L2_ERROR}, "xmoe": XMOE_CHOSEN}.get(variant, {})
        record = Result(spec, env=dict(ENV), **counts, params_active=active,
                        params_total=16 * 2 * 512 * 2048, **extra,
                        **(_method_timing(spec, counts["flops"]) if timed else {})).to_dict()
        out.append(_on_device(record, device))
    return out


def _method_timing(spec: Spec, flops: int) -> dict:
    median = flops / PEAK_FLOPS * 1e3 / 0.6 + 2.0  # 60% of the matmul peak, 2 ms of dispatch
    weights = 16 * 2 * 512 * 2048 * 4
    return {"latency_ms_median": median, "latency_ms_p20": median * 0.97,
            "latency_ms_p80": median * 1.05, "latency_runs": 20, "timer": "torch_benchmark",
            "latency_samples_ms": [median * f for f in (0.96, 0.98, 1.0, 1.02, 1.05)],
            "tokens_per_s": spec.batch_size * spec.seq_len / median * 1e3,
            "peak_mem_bytes": weights + flops // 1000, "weights_bytes": weights,
            "mem_method": "tracemalloc"}


# routing -> vanilla MoE's (experts touched, busiest expert's load over the mean, experts per
# sequence, latency factor against uniform): skew slows its grouped matmul, locality speeds it
ROUTING_TOY = {"uniform": (16.0, 1.1, 15.9, 1.0), "balanced": (16.0, 1.0, 16.0, 0.97),
               "zipf:1.5": (16.0, 3.4, 12.3, 1.15), "uniform,local:0.9": (16.0, 1.2, 9.6, 0.9)}


def routing_records() -> list[dict]:
    """The paper layer under each routing of ROUTING_TOY: vanilla MoE's latency moves with it,
    the sequence-routed variants' does not (one choice per sequence)."""
    out = []
    for routing, (touched, peak, per_sequence, factor) in ROUTING_TOY.items():
        for variant in ("moe", "moe-seq", "meo"):
            spec = Spec(host="layer", variant=variant, num_experts=16, top_k=4, seq_len=128,
                        batch_size=8, device="cpu", routing=routing)
            counts = counted(spec, layer_macs(spec))
            timing = layer_timing(spec, counts["flops"])
            stats = (touched, peak, per_sequence) if variant == "moe" else (14.0, 1.5, 4.0)
            if variant == "moe":
                for key in ("latency_ms_median", "latency_ms_p20", "latency_ms_p80"):
                    timing[key] *= factor
            out.append(Result(spec, env=dict(ENV), **counts, **timing,
                              experts_touched_mean=stats[0], expert_load_max_over_mean=stats[1],
                              experts_per_sequence_mean=stats[2]).to_dict())
    return out


# Where merging pays off: the paper's layer (two MoE linears, 768 x 3072, E 16, k 4) on the toy
# machine, phase by phase: vanilla reads the experts its tokens touch and computes k per token;
# MEO reads the experts its sequences chose, writes and rereads B merged copies, and computes one
# per token; kept from the prompt, a decode step only rereads the B merged copies.
REGIME_LAYER = dict(host="layer", d_model=768, d_ff=3072, num_experts=16, top_k=4, device="cpu")
EXPERT_PAIR_BYTES = 2 * 768 * 3072 * 4  # both linears of one expert, float32
EXPERT_PAIR_MACS = 2 * 768 * 3072


def regime_cost_ms(spec: Spec) -> tuple[float, float]:
    """(compute ms, memory ms) of one call: a prefill of B x L tokens or a decode step."""
    B, E, k = spec.batch_size, spec.num_experts, spec.top_k
    tokens = B * (1 if spec.workload == "decode" else spec.seq_len)
    if spec.variant == "dense":
        experts, per_token = 1, 1
    elif spec.variant == "moe":
        experts, per_token = min(E, tokens * k), k
    elif spec.merge_reuse == "sequence":
        experts, per_token = B, 1
    else:
        experts, per_token = min(E, B * k) + 2 * B, 1
    merge = 0 if spec.variant != "meo" or spec.merge_reuse == "sequence" else B * k
    macs = (tokens * per_token + merge) * EXPERT_PAIR_MACS
    return macs / (PEAK_FLOPS / 2) * 1e3, experts * EXPERT_PAIR_BYTES / BANDWIDTH_BYTES_S * 1e3


def regime_records(batches=(1, 8, 64), lengths=(8, 32, 128, 512), device: str = "cpu") -> list[dict]:
    out, seen = [], set()
    for B in batches:
        cases = [dict(seq_len=L) for L in lengths]
        cases += [dict(workload="decode", seq_len=128, merge_reuse=r) for r in ("step", "sequence")]
        for case in cases:
            for variant in ("dense", "moe", "meo"):
                reuse = case.get("merge_reuse") if variant == "meo" else None
                spec = Spec(variant=variant, batch_size=B, **REGIME_LAYER,
                            **{**case, "merge_reuse": reuse})
                if spec in seen:  # vanilla and dense decode once, whatever MEO's reuse
                    continue
                seen.add(spec)
                compute_ms, memory_ms = regime_cost_ms(spec)
                bound = compute_ms + memory_ms
                median = bound / EFFICIENCY[variant]
                kept = (B * 2 * EXPERT_PAIR_BYTES // 2 if reuse == "sequence" else
                        0 if reuse == "step" else None)  # two layers, one linear of each
                record = Result(spec, env=dict(ENV), latency_ms_median=median,
                                latency_ms_p20=median * 0.97, latency_ms_p80=median * 1.04,
                                latency_samples_ms=[median * f for f in (0.97, 1.0, 1.04)],
                                timer="torch_benchmark", roofline_ms=bound,
                                roofline_ratio=median / bound, below_bound=False,
                                merged_cache_bytes=kept).to_dict()
                out.append(_on_device(record, device))
    return out


def failure_records() -> list[dict]:
    oom = Result(Spec(host="bert-large", variant="moe", num_experts=64, top_k=32, device="cpu"),
                 status="oom", error="estimated 41.2 GiB exceeds --max-memory 8 GiB", env=dict(ENV))
    err = Result(Spec(host="layer", variant="meo", num_experts=4, top_k=4, device="cpu"),
                 status="error", error="RuntimeError: boom", env=dict(ENV))
    return [oom.to_dict(), err.to_dict()]


# The merging family at the methods' budget and setting, as the default preset measures it
# (Lory T = 32, Soft MoE p = 8): closed-form counts; toy times (a vanilla MoE at k other than
# 4 only counted) and memory, a training step's three times an inference's.
FAMILY_SETTING = dict(host="layer", expert_unit="ffn", num_experts=16, d_model=512, d_ff=2048,
                      batch_size=8, seq_len=128, router_scale=8.0, device="cpu")
FAMILY_MEMBERS = (("moe", {"top_k": 1}), ("moe", {"top_k": 4}), ("meo", {"top_k": 4}),
                  ("smear", {}), ("lory", {"segment_len": 32}),
                  ("soft-moe", {"slots_per_expert": 8}))
FAMILY_TOY_MS = {"moe": 40.0, "meo": 12.0, "smear": 14.0, "lory": 20.0, "soft-moe": 11.0}


def family_records(members=FAMILY_MEMBERS[3:] + FAMILY_MEMBERS[:1]) -> list[dict]:
    """By default the members the methods' records do not hold already (vanilla top-1 and the
    three merging variants)."""
    out = []
    for variant, knob in members:
        for mode in ("inference", "train"):
            spec = Spec(variant=variant, mode=mode, **FAMILY_SETTING, **knob)
            spec = spec.replace(impl=spec.impl_by_rule)  # a record names what ran
            fields = counted(spec, analytic.count(spec).macs_by_part) if mode == "inference" else {}
            if variant != "moe" or spec.top_k == 4:
                ms = FAMILY_TOY_MS[variant]
                fields |= {"peak_mem_above_weights_bytes": (3 if mode == "train" else 1) * 2**20}
                if mode == "inference":
                    fields |= {"latency_ms_median": ms, "latency_ms_p20": 0.9 * ms,
                               "latency_ms_p80": 1.1 * ms, "roofline_ms": ms / 2}
            if fields:
                out.append(Result(spec, env=dict(ENV), **fields).to_dict())
    return out


def full_set(gpu: bool = False, train: bool = False) -> list[dict]:
    records = flops_records() + layer_records(modes=("inference", "train") if train else ("inference",))
    records += method_records() + routing_records() + family_records() + regime_records()
    if gpu:
        records += layer_records(device="cuda", dtype="bfloat16")
        records += method_records(device="cuda", dtype="bfloat16")
    return records + failure_records()
