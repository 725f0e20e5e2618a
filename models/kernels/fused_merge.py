"""MEO's merge in one Triton launch: W_b = sum_i g_bi W[index_bi], b_b = sum_i g_bi bias[index_bi].

Contract (that of `meo_profile.models.experts.merge_gather`): w (E, d_out, d_in), bias (E, d_out) or None,
index (B, k) int64/int32, gates (B, k) floating. Returns merged weights (B, d_out, d_in) in w's
dtype and merged bias (B, d_out) in the bias's dtype (or None). Gates are read and applied in
float32; the k products are accumulated in float32, one fused multiply-add per expert in slot
order from 0, and the sum is rounded once, to nearest even, to the output dtype. In float32 that
is the order and rounding of the CPU `embedding_bag` behind `merge_gather`, so the two agree bit
for bit; in bfloat16 it equals `merge_dense` (a float32-accumulating matmul rounded once).

Why a kernel: the merge is pure bandwidth (k multiply-adds per output element, far below any
GPU's ridge point), so only bytes across DRAM matter. Its floor is (distinct experts the routing
touched) * P read + B * P written, P = d_out * d_in. On an H200, `embedding_bag` ran 10-25x
above that and a gate-matrix matmul reads all E experts; this kernel reaches the floor.

Design:
- Weights are viewed flat, (E, P): the merge is elementwise in P, so every load is a contiguous
  run of BLOCK elements (16-byte vectors per thread).
- One program per (sequence, block of P) ("rows" mode), looping over the k experts; k is a
  compile-time constant, unrolled up to 32 so the k loads are in flight together.
- One flat grid axis, sequences varying fastest: programs issue roughly in id order, so the B
  programs reading block j of P run together and an expert chosen by several sequences leaves
  DRAM once (the others hit L2). That is the dense merge's byte count without its B*E
  multiply-adds. A flat axis also avoids CUDA's 65535 limit on grid axes 1 and 2.
- "blocks" mode (one program per block of P over all B sequences) makes the reuse explicit, in
  L1; which mode wins is a measurement (benchmarks/bench_kernels.py times both).
- The bias rides in the same launch: programs whose block starts below d_out merge that block
  of the bias too. A second launch would cost more than the whole bias merge.
- Offsets: expert and sequence bases are int64 (E * P passes 2^31 at d 2048, d_ff 8192, E 128);
  offsets within one matrix stay int32 (checked: P + BLOCK < 2^31).

Where it runs: CUDA tensors get the compiled kernel. CPU tensors get Triton's interpreter, only
when TRITON_INTERPRET=1 is set at the call (`interpreted()` sets it for a block of code): it runs
each program in numpy, for correctness checks, never for timing. The kernel is wrapped per
device on first use rather than by `@triton.jit` at import, because the decorator reads
TRITON_INTERPRET once, when it runs: a process could then hold only one kind.

The merge is registered as the operator `meo_profile::fused_merge`, with a shape function, so it
runs on the meta device and shows by name in traces and FLOP counts. It has no backward.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the module still imports; the merge then says why it cannot run
    triton = None
    tl = None

MODES = ("rows", "blocks")
# Unroll the expert loop up to here; past it the compiler hoists every load and spills (255
# registers at k = 128 on sm_90). A constexpr: kernels may read no other global.
UNROLL_MAX_K = tl.constexpr(32) if tl is not None else 32
# Interpreted, each program costs milliseconds of Python: few programs, each as large as Triton
# allows a block to be comfortably (2^18 of its 2^20 elements), in "blocks" mode (one program per
# block for all sequences). Every mode and order does the same arithmetic per element (tested).
INTERPRETED_BLOCK = 1 << 18


def _merge_kernel(w_ptr, bias_ptr, index_ptr, gates_ptr, out_w_ptr, out_b_ptr,
                  P, D_OUT, n_groups, n_blk, seqs,
                  K: tl.constexpr, BLOCK: tl.constexpr, HAS_BIAS: tl.constexpr,
                  SEQ_FASTEST: tl.constexpr, ROUND_BY_HAND: tl.constexpr):
    """The kernel's source, left undecorated (`_kernel` wraps it per device).

    It calls no @triton.jit function, ours or triton.language's (tl.zeros, tl.cdiv, tl.sum
    are built interpreted or compiled once, at `import triton`, so a kernel of the other kind
    could not call them); builtins (tl.full, tl.load, tl.fma, tl.where) serve both kinds."""
    pid = tl.program_id(0)
    if SEQ_FASTEST:  # neighbours: the same block of P for other sequences (L2 reuse)
        group = pid % n_groups
        blk = pid // n_groups
    else:  # neighbours: the next block of P (only to measure what the order is worth)
        group = pid // n_blk
        blk = pid % n_blk
    offs = blk * BLOCK + tl.arange(0, BLOCK)  # int32: P + BLOCK < 2^31
    mask = offs < P
    for s in range(0, seqs):  # seqs is 1 (rows) or B (blocks): never past the batch
        b = group * seqs + s
        acc = tl.full([BLOCK], 0.0, tl.float32)
        if K <= UNROLL_MAX_K:
            for i in tl.static_range(K):  # unrolled: the k loads in flight together
                e = tl.load(index_ptr + b * K + i).to(tl.int64)  # int64: e * P may pass 2^31
                g = tl.load(gates_ptr + b * K + i).to(tl.float32)
                x = tl.load(w_ptr + e * P + offs, mask=mask, other=0.0).to(tl.float32)
                acc = tl.fma(x, g, acc)  # one rounding per expert, in slot order
        else:
            for i in range(K):
                e = tl.load(index_ptr + b * K + i).to(tl.int64)
                g = tl.load(gates_ptr + b * K + i).to(tl.float32)
                x = tl.load(w_ptr + e * P + offs, mask=mask, other=0.0).to(tl.float32)
                acc = tl.fma(x, g, acc)
        out = acc.to(out_w_ptr.dtype.element_ty)
        if ROUND_BY_HAND:  # noqa: SIM102 (compile-time tests)
            if out_w_ptr.dtype.element_ty == tl.bfloat16:
                # The interpreter's float32 -> bfloat16 cast truncates; the GPU's rounds to
                # nearest even, as torch does. Round on the bits so both agree with torch.
                bits = acc.to(tl.uint32, bitcast=True)
                rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
                rounded = tl.where(acc != acc, 0x7FC0, rounded)  # NaN stays NaN
                out = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
        tl.store(out_w_ptr + b.to(tl.int64) * P + offs, out, mask=mask)
        if HAS_BIAS:  # noqa: SIM102 (compile time; the test below is per program)
            # Fresh names: a variable assigned under a runtime `if` must keep its type when
            # compiled, which the interpreter does not check (the sm_90 compile test does).
            if blk * BLOCK < D_OUT:  # the first cdiv(d_out, BLOCK) blocks carry the bias
                b_mask = offs < D_OUT
                acc_b = tl.full([BLOCK], 0.0, tl.float32)
                for j in range(K):  # rolled: d_out / P of the bytes, latency is no matter
                    e_b = tl.load(index_ptr + b * K + j).to(tl.int64)
                    g_b = tl.load(gates_ptr + b * K + j).to(tl.float32)
                    x_b = tl.load(bias_ptr + e_b * D_OUT + offs, mask=b_mask, other=0.0)
                    acc_b = tl.fma(x_b.to(tl.float32), g_b, acc_b)
                out_b = acc_b.to(out_b_ptr.dtype.element_ty)
                if ROUND_BY_HAND:  # noqa: SIM102
                    if out_b_ptr.dtype.element_ty == tl.bfloat16:
                        bits_b = acc_b.to(tl.uint32, bitcast=True)
                        rnd_b = (bits_b + 0x7FFF + ((bits_b >> 16) & 1)) >> 16
                        rnd_b = tl.where(acc_b != acc_b, 0x7FC0, rnd_b)
                        out_b = rnd_b.to(tl.uint16).to(tl.bfloat16, bitcast=True)
                tl.store(out_b_ptr + b.to(tl.int64) * D_OUT + offs, out_b, mask=b_mask)


_KERNELS: dict[bool, object] = {}


def _kernel(interpret: bool):
    """The kernel interpreted (CPU tensors) or compiled (GPU tensors), built on first use."""
    if interpret not in _KERNELS:
        if interpret:
            from triton.runtime.interpreter import InterpretedFunction
            _KERNELS[interpret] = InterpretedFunction(_merge_kernel)
        else:
            from triton.runtime.jit import JITFunction
            _KERNELS[interpret] = JITFunction(_merge_kernel)
    return _KERNELS[interpret]


# --------------------------------------------------------------------------- availability
def interpreter_requested() -> bool:
    """TRITON_INTERPRET set now: read at each call (triton >= 3.4 keeps it in `knobs`)."""
    if triton is None:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@contextlib.contextmanager
def interpreted() -> Iterator[None]:
    """Let CPU tensors run the merge through Triton's interpreter inside this block (what
    `verify` and the tests use); the environment is restored on exit."""
    before = os.environ.get("TRITON_INTERPRET")
    knobs = getattr(triton, "knobs", None)
    knob_before = knobs.runtime.interpret if knobs is not None else None
    os.environ["TRITON_INTERPRET"] = "1"
    if knobs is not None:
        knobs.runtime.interpret = True
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TRITON_INTERPRET", None)
        else:
            os.environ["TRITON_INTERPRET"] = before
        if knobs is not None:
            knobs.runtime.interpret = knob_before


def unavailable(device_type: str) -> str | None:
    """Why the merge cannot run on tensors of `device_type` now, or None when it can."""
    if triton is None:
        return "triton is not installed (it ships with CUDA builds of torch; pip install triton)"
    if device_type == "cuda":  # ROCm builds of torch name their devices "cuda" too
        return None
    if device_type == "cpu":
        if interpreter_requested():
            return None
        return "on CPU it runs only in Triton's interpreter (TRITON_INTERPRET=1), for checks"
    return f"no triton backend for device {device_type!r}"


def default_block(dtype: torch.dtype, interpret: bool = False) -> int:
    """4096 bytes of one expert per program on a GPU (2048 bf16 or 1024 float32 elements:
    two 16-byte loads per thread of 4 warps, per expert); large blocks when interpreted."""
    return INTERPRETED_BLOCK if interpret else max(16, 4096 // dtype.itemsize)


# ------------------------------------------------------------------------------ the merge
def _check(w, b, index, gates, mode: str, block: int) -> None:
    if w.dim() != 3 or index.dim() != 2 or gates.shape != index.shape:
        raise ValueError(f"expected w (E, d_out, d_in), index and gates (B, k); got "
                         f"{tuple(w.shape)}, {tuple(index.shape)}, {tuple(gates.shape)}")
    if any(t is not None and t.device != w.device for t in (b, index, gates)):
        raise ValueError("w, b, index and gates must be on one device")
    if index.dtype not in (torch.int64, torch.int32) or not gates.is_floating_point():
        raise ValueError(f"index must be int64/int32 and gates floating, got {index.dtype}, "
                         f"{gates.dtype}")
    if b is not None and b.shape != w.shape[:2]:
        raise ValueError(f"bias must be (E, d_out) = {tuple(w.shape[:2])}, got {tuple(b.shape)}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if block <= 0 or block & (block - 1):
        raise ValueError(f"block must be a power of 2, got {block}")
    if w.shape[1] * w.shape[2] + block > 2**31:
        raise ValueError(f"one expert matrix has {w.shape[1] * w.shape[2]} elements: too many "
                         "for int32 offsets")


def merge_fused(w: torch.Tensor, b: torch.Tensor | None, index: torch.Tensor,
                gates: torch.Tensor, *, mode: str | None = None, block: int | None = None,
                num_warps: int = 4, seq_fastest: bool = True) -> tuple:
    """The merge in one launch (see the module doc). `mode` ("rows" compiled, "blocks"
    interpreted, by default), `block` (a power of 2), `num_warps` and `seq_fastest` (the
    program order) are tuning knobs."""
    reason = unavailable(w.device.type)
    if reason:
        raise RuntimeError(f"the fused merge cannot run here: {reason}")
    interpret = w.device.type == "cpu"
    mode = mode or ("blocks" if interpret else "rows")
    block = block or default_block(w.dtype, interpret)
    _check(w, b, index, gates, mode, block)
    (_, d_out, d_in), (B, k) = w.shape, index.shape
    P = d_out * d_in
    w, index, gates = w.contiguous(), index.contiguous(), gates.contiguous()
    b = None if b is None else b.contiguous()
    out_w = w.new_empty(B, d_out, d_in)
    out_b = None if b is None else b.new_empty(B, d_out)
    if B == 0 or P == 0:
        return out_w, out_b
    if k == 0:  # nothing selected: the empty sum
        return out_w.zero_(), None if out_b is None else out_b.zero_()
    seqs = 1 if mode == "rows" else B
    n_groups, n_blk = B // seqs, triton.cdiv(P, block)
    if n_groups * n_blk >= 2**31:  # program ids are int32
        raise ValueError(f"{n_groups * n_blk} programs: raise the block size")
    _kernel(interpret)[(n_groups * n_blk,)](
        w, w if b is None else b, index, gates, out_w, out_w if out_b is None else out_b,
        P, d_out, n_groups, n_blk, seqs,  # without bias: placeholders, never read (HAS_BIAS)
        K=k, BLOCK=block, HAS_BIAS=b is not None, SEQ_FASTEST=seq_fastest,
        ROUND_BY_HAND=interpret, num_warps=num_warps)
    return out_w, out_b


# ------------------------------------------------------------------------- the operator
@torch.library.custom_op("meo_profile::fused_merge", mutates_args=())
def fused_merge_op(w: torch.Tensor, b: torch.Tensor | None, index: torch.Tensor,
                   gates: torch.Tensor) -> list[torch.Tensor]:
    """[merged weights] or [merged weights, merged bias]: `merge_fused` as a torch operator."""
    out_w, out_b = merge_fused(w, b, index, gates)
    return [out_w] if out_b is None else [out_w, out_b]


@fused_merge_op.register_fake
def _(w, b, index, gates):
    out = [w.new_empty(index.shape[0], *w.shape[1:])]  # (B, d_out, d_in)
    return out if b is None else [*out, b.new_empty(index.shape[0], b.shape[1])]


def merge_fused_expert(w: torch.Tensor, b: torch.Tensor | None, index: torch.Tensor,
                       gates: torch.Tensor) -> tuple:
    """The bank's merge signature (`meo_profile.models.experts.MERGES`): (merged W, merged b or None)."""
    out = fused_merge_op(w, b, index, gates)
    return out[0], (out[1] if len(out) > 1 else None)
