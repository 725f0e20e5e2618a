"""The fused MEO merge (one Triton kernel) against the project's other merges, on CPU through
Triton's interpreter: the same kernel source a GPU compiles.

Tolerances, with u = 2^-24 (float32 unit round-off) and S = sum_i |g_i| |W_i| per element:
- float32: bit for bit equal to `merge_gather` (slot order, one fused multiply-add per expert
  from 0, as the CPU embedding_bag), within k*u*S of a float64 reference (a k-term recursive
  sum) and within 2*k*u*S of `merge_dense` (a matmul, another order);
- bfloat16: the float32 sum rounded once to nearest even, so within half an ulp (2^-8 |exact|)
  plus k*u*S of the exact value; against gather and dense one ulp (2^-7 |exact|), plus 2^-9 S
  when gates come in float32 (those two round the gates to bfloat16 first; this merge does not).
Sizes are tiny: the interpreter runs each program in numpy, milliseconds a program.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("numpy")  # the interpreter runs on numpy

from meo_profile.models.experts import merge_dense, merge_gather  # noqa: E402
from meo_profile.models.kernels import fused_merge as fm  # noqa: E402

U32 = 2.0**-24


@pytest.fixture(autouse=True)
def interpreter():
    with fm.interpreted():
        yield


def make(E, d_out, d_in, B, k, dtype, bias=True, gates_dtype=None, seed=0, same=False):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(E, d_out, d_in, generator=g).to(dtype)
    b = torch.randn(E, d_out, generator=g).to(dtype) if bias else None
    if same:  # every sequence picks the same experts: repeats across sequences
        index = torch.randperm(E, generator=g)[:k].repeat(B, 1)
    else:  # distinct within a row, as topk gives
        index = torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(B)])
    gates = torch.randn(B, k, generator=g).softmax(-1).to(gates_dtype or dtype)
    return w, b, index, gates


def exact(w, b, index, gates):
    """float64 merges of weights and bias, each with its error scale S."""
    g = gates.double()
    pairs = [(w.double().flatten(1)[index], w.shape[1:])]
    if b is not None:
        pairs.append((b.double()[index], b.shape[1:]))
    return [(torch.einsum("bk,bkp->bp", g, x).view(-1, *shape),
             torch.einsum("bk,bkp->bp", g.abs(), x.abs()).view(-1, *shape)) for x, shape in pairs]


def assert_within(x, y, bound, what):
    err = (x.double() - y.double()).abs()
    bad = err > bound
    assert not bad.any(), f"{what}: {int(bad.sum())} of {x.numel()} out of bound"


def check(out, ref, scale, gathered, densed, k, gates_dtype):
    assert out.dtype == gathered.dtype and out.shape == ref.shape
    if out.dtype == torch.float32:
        assert torch.equal(out, gathered), "float32 must equal merge_gather bit for bit"
        assert_within(out, ref, k * U32 * scale, "float32 vs float64")
        assert_within(out, densed, 2 * k * U32 * scale, "float32 vs merge_dense")
        return
    assert_within(out, ref, 2.0**-8 * ref.abs() + k * U32 * scale, "bf16 vs exact, rounded")
    gate_rounding = 2.0**-9 * scale if gates_dtype == torch.float32 else 0.0
    for other, name in ((gathered, "gather"), (densed, "dense")):
        assert_within(out, other, 2.0**-7 * ref.abs() + 2 * k * U32 * scale + gate_rounding,
                      f"bf16 vs {name}")


# (E, d_out, d_in, B, k, block): P = d_out * d_in, a multiple of the block only where said
CASES = {
    "odd": (5, 7, 13, 3, 2, 32),  # P 91: 2 blocks + 27; bias 7 in one partial block
    "k1": (4, 6, 11, 4, 1, 16),  # one expert: a gated copy
    "kE": (4, 5, 9, 3, 4, 16),  # every expert in every sequence
    "bias_spans": (3, 40, 3, 2, 2, 16),  # bias over three blocks, the last partial
    "tiny": (3, 2, 3, 2, 2, 64),  # P 6 < block
    "exact": (4, 8, 8, 2, 2, 16),  # P 64, a multiple of the block
    "k_rolled": (36, 2, 3, 2, 34, 8),  # k > 32: the kernel's rolled loop
}


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("case", list(CASES))
def test_agrees_with_the_project_merges(case, dtype, bias):
    E, d_out, d_in, B, k, block = CASES[case]
    w, b, index, gates = make(E, d_out, d_in, B, k, dtype, bias)
    out = fm.merge_fused(w, b, index, gates, block=block, mode="rows")
    gathered, densed = merge_gather(w, b, index, gates), merge_dense(w, b, index, gates)
    for j, (ref, scale) in enumerate(exact(w, b, index, gates)):
        check(out[j], ref, scale, gathered[j], densed[j], k, gates.dtype)
    assert (out[1] is None) == (not bias)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_modes_and_program_orders_give_the_same_bits(dtype):
    w, b, index, gates = make(6, 5, 7, 5, 2, dtype, seed=1)
    base = fm.merge_fused(w, b, index, gates, block=16, mode="rows")
    for kw in ({"mode": "blocks"}, {"mode": "rows", "seq_fastest": False}, {}):
        other = fm.merge_fused(w, b, index, gates, block=16, **kw)
        assert torch.equal(base[0], other[0]) and torch.equal(base[1], other[1]), kw


def test_float32_gates_with_bf16_weights_int32_ids_and_repeated_experts():
    """Gates applied in float32 as given: the result is the exact sum rounded once (gather and
    dense round the gates to bfloat16 first, so they are held to the exact value elsewhere)."""
    w, b, index, gates = make(6, 7, 9, 3, 2, torch.bfloat16, gates_dtype=torch.float32, seed=3,
                              same=True)
    out = fm.merge_fused(w, b, index.int(), gates, block=32, mode="rows")
    for j, (ref, scale) in enumerate(exact(w, b, index, gates)):
        assert out[j].dtype == torch.bfloat16
        assert_within(out[j], ref, 2.0**-8 * ref.abs() + 2 * U32 * scale, "bf16, float32 gates")


def test_bf16_rounds_to_nearest_even_like_torch():
    """Ties (the interpreter's own cast would truncate), NaN and infinities."""
    vals = torch.tensor([[1.0, 1.0, -1.0, 3.0, float("nan"), float("inf"), -float("inf"), 0.0],
                         [1 + 2**-7, 1 + 2**-6, -(1 + 2**-7), 3.0, 1.0, 1.0, 1.0, -0.0]])
    w = vals.to(torch.bfloat16).view(2, 1, 8)
    out, _ = fm.merge_fused(w, None, torch.tensor([[0, 1]]), torch.tensor([[0.5, 0.5]]), block=16)
    expected = (0.5 * vals[0] + 0.5 * vals[1]).to(torch.bfloat16)  # torch: half to even
    got = out.view(-1)
    assert torch.equal(got.isnan(), expected.isnan())
    assert torch.equal(got[~expected.isnan()], expected[~expected.isnan()])
    assert got[0].item() == 1.0  # 1 + 2^-8 is a tie: to even


def test_the_operator_has_a_shape_function_and_the_bank_merge_uses_it():
    w, b, index, gates = make(4, 3, 5, 2, 2, torch.float32)
    with torch.device("meta"):
        meta = fm.fused_merge_op(w.to("meta"), b.to("meta"), index.to("meta"), gates.to("meta"))
    assert [t.shape for t in meta] == [(2, 3, 5), (2, 3)]
    merged_w, merged_b = fm.merge_fused_expert(w, None, index, gates)
    assert merged_b is None and torch.equal(merged_w, merge_gather(w, None, index, gates)[0])


def test_bad_shapes_are_refused():
    w, b, index, gates = make(4, 3, 5, 2, 2, torch.float32)
    assert fm.merge_fused(w, b, index[:0], gates[:0])[0].shape == (0, 3, 5)
    for kwargs in ({"gates": gates[:, :1]}, {"block": 48}, {"mode": "columns"}):
        args = {"w": w, "b": b, "index": index, "gates": gates} | kwargs
        extra = {k: args.pop(k) for k in ("block", "mode") if k in args}
        with pytest.raises(ValueError):
            fm.merge_fused(args["w"], args["b"], args["index"], args["gates"], **extra)


def test_cpu_without_the_interpreter_is_one_clear_refusal(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(fm.triton.knobs.runtime, "interpret", False)
    assert "TRITON_INTERPRET" in fm.unavailable("cpu")
    assert fm.unavailable("cuda") is None
    w, b, index, gates = make(4, 3, 5, 2, 2, torch.float32)
    with pytest.raises(RuntimeError, match="cannot run here"):
        fm.merge_fused(w, b, index, gates)


def test_compiles_for_sm90():
    """Compiled ahead of time for an H100/H200 (Triton ships ptxas; no GPU needed): catches
    what the interpreter lets pass, and checks the weight loads and stores are 16-byte vectors."""
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e:
        pytest.skip(f"this triton has no ahead-of-time API: {e}")
    ptrs = ["w_ptr", "bias_ptr", "index_ptr", "gates_ptr", "out_w_ptr", "out_b_ptr"]
    for wdt, idt, K, block, has_bias in [("bf16", "i64", 2, 2048, True),
                                        ("fp32", "i32", 40, 1024, False)]:  # k > 32: rolled
        sig = dict(zip(ptrs, [f"*{wdt}", f"*{wdt}", f"*{idt}", f"*{wdt}", f"*{wdt}", f"*{wdt}"]))
        sig |= {name: "i32" for name in ["P", "D_OUT", "n_groups", "n_blk", "seqs"]}
        const = {"K": K, "BLOCK": block, "HAS_BIAS": has_bias, "SEQ_FASTEST": True,
                 "ROUND_BY_HAND": False}
        sig |= {name: "constexpr" for name in const}
        attrs = {(i,): [["tt.divisibility", 16]] for i in range(7)}  # pointers and P
        try:
            compiled = triton.compile(ASTSource(fm._kernel(False), sig, const, attrs),
                                      target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})
        except TypeError as e:  # another triton's signature for these internals
            pytest.skip(f"ahead-of-time API differs in this triton: {e}")
        ptx = compiled.asm["ptx"]
        assert "ld.global.v4" in ptx and "st.global.v4" in ptx and "fma.rn.f32" in ptx


@pytest.mark.gpu
def test_compiled_kernel_agrees_on_cuda():
    for dtype in (torch.float32, torch.bfloat16):
        w, b, index, gates = (t.cuda() for t in make(16, 96, 80, 8, 4, dtype, seed=5))
        fused = fm.merge_fused(w, b, index, gates)
        densed = merge_dense(w, b, index, gates)
        for got, want in zip(fused, densed):
            torch.testing.assert_close(got, want, rtol=2**-7, atol=1e-6)
