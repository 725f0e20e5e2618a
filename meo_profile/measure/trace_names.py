"""One-line names for the device kernels of a trace: `reduce_kernel<MeanOps>` for a demangled C++
signature that runs over ten lines.

The rule is deterministic, so rows of one kernel group under one name across traces: names that
are not C++ signatures (`nvjet_*` cuBLAS kernels, `triton_*`, `Memset (Device)`) stay as they
are; otherwise the return type, anonymous namespaces and the parameter list go, the function's
last name component stays, and one identifier from its template arguments is added in <> (the
innermost operator-like one: MeanOps, MulFunctor, CUDAFunctor_add, GeluCUDAKernelImpl, GTOp).
"""

from __future__ import annotations

import re

NAME_WIDTH = 60  # characters of a shortened name; a longer one ends in '…'

# C++ words and plain types: never the telling part of a name
_PLAIN_WORDS = frozenset({
    "void", "const", "volatile", "unsigned", "signed", "int", "long", "short", "char", "bool",
    "float", "double", "true", "false", "operator", "lambda", "auto", "std", "array", "size_t",
    "int32_t", "int64_t", "uint32_t", "uint64_t", "ul", "ull", "u", "l", "ll",
    "BFloat16", "Half", "Float8_e4m3fn", "Float8_e5m2", "bfloat16_t", "half_t",
    "TensorInfo", "OpaqueType", "TensorIteratorBase", "TensorIterator",
})
_OPLIKE = re.compile(r"(?:Ops?|Functor|Func|Impl|Assign|_functor|_impl)$|Functor_")
_IDENT = re.compile(r"[A-Za-z_]\w*")


def short_kernel_name(name: str, width: int = NAME_WIDTH) -> str:
    """One line of at most `width` characters for a kernel name (see the module doc):
    `void at::native::reduce_kernel<128, 4, ReduceOp<BFloat16, MeanOps<...>, ...> >(...)` ->
    `reduce_kernel<MeanOps>`."""
    s = " ".join(name.split())  # one line: demangled names carry newlines and runs of spaces
    if s.startswith("void ") or "::" in s or "<" in s:
        s = _signature_name(s)
    return s if len(s) <= width else s[: max(width - 1, 0)] + "…"


def _signature_name(s: str) -> str:
    """`base<hint>` of a C++ signature (the module doc's rule)."""
    s = s.removeprefix("void ").replace("(anonymous namespace)::", "")
    if s.endswith(")"):  # the parameter list
        opened = _matching_open(s, len(s) - 1, "(", ")")
        if opened > 0:
            s = s[:opened].rstrip()
    head, targs = _split_template(s)
    base = head.rsplit("::", 1)[-1] or head
    hint = _hint(targs) if targs else ""
    return f"{base}<{hint}>" if hint else base


def _matching_open(s: str, close_at: int, open_ch: str, close_ch: str) -> int:
    """Index of the bracket that opens the group closed at `close_at`, or -1."""
    depth = 0
    for i in range(close_at, -1, -1):
        if s[i] == close_ch:
            depth += 1
        elif s[i] == open_ch:
            depth -= 1
            if depth == 0:
                return i
    return -1


def _drop_groups(s: str, open_ch: str, close_ch: str) -> str:
    """`s` without its (balanced, possibly nested) `open_ch ... close_ch` groups."""
    out, depth = [], 0
    for ch in s:
        if ch == open_ch:
            depth += 1
        elif ch == close_ch and depth:
            depth -= 1
        elif not depth:
            out.append(ch)
    return "".join(out)


def _split_template(s: str) -> tuple[str, str]:
    """('qualified::base', 'template args') at the first top-level '<' ('' when none)."""
    lt = s.find("<")
    if lt < 0 or not s.endswith(">"):
        return s, ""
    return s[:lt], s[lt + 1:-1]


def _hint(targs: str) -> str:
    """The most telling identifier among template arguments: the innermost operator-like one,
    else the first that is neither a qualifier nor a plain type; '' when there is none."""
    s = _drop_groups(_drop_groups(targs, "(", ")"), "{", "}")
    best, best_depth, first = "", -1, ""
    for m in _IDENT.finditer(s):
        word, end = m.group(), m.end()
        qualifies_next = s.startswith("::", end) and (s[end + 2:end + 3].isalpha()
                                                      or s[end + 2:end + 3] == "_")
        if qualifies_next or word in _PLAIN_WORDS or word.startswith("__"):
            continue
        depth = s.count("<", 0, m.start()) - s.count(">", 0, m.start())
        if _OPLIKE.search(word) and depth > best_depth:
            best, best_depth = word, depth
        first = first or word
    return best or first
