"""The MEO paper's printed efficiency numbers, as data, with the setting each one refers to.

Convention: every FLOPs figure here is FLOPs = 2 x MACs (one multiply-add counts as two
floating-point operations). The paper does not state its convention; its 72.0G reproduces only
under 2 x MACs (BERT-base, L = 128, B = 1, k = 4, attention and MLM head counted, routers not
counted). Source: He et al., "Merging Experts into One", EMNLP 2023, arXiv 2310.09832, abstract.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

FLOPS_CONVENTION = "FLOPs = 2 x MACs"

# The configuration the paper's FLOPs refer to. The number of experts E does not enter the
# paper's figures (E only sizes the routers, which the paper leaves out), so it is not fixed here.
PAPER_SETTING: dict[str, Any] = {"host": "bert-base", "top_k": 4, "seq_len": 128, "batch_size": 1}


@dataclass(frozen=True)
class PaperNumber:
    """One number the paper prints, where it is measured, and how to compare against it."""

    key: str
    quantity: str
    value: float
    unit: str  # "GFLOPs" or "%"
    convention: str
    setting: dict[str, Any] = field(default_factory=dict)  # spec fields a measurement must match
    also_printed: tuple[float, ...] = ()  # other values the paper's versions print
    measurable: bool = True  # False: accuracy numbers, which profiling does not reproduce


PAPER_NUMBERS: dict[str, PaperNumber] = {n.key: n for n in (
    PaperNumber("flops_moe", "vanilla MoE FLOPs, BERT-base k=4", 72.0, "GFLOPs",
                FLOPS_CONVENTION + ", routers excluded",
                {**PAPER_SETTING, "variant": "moe"}),
    PaperNumber("flops_meo", "MEO FLOPs, BERT-base k=4", 28.6, "GFLOPs",
                FLOPS_CONVENTION + ", routers excluded",
                {**PAPER_SETTING, "variant": "meo"}, also_printed=(28.9,)),
    PaperNumber("glue_meo", "average GLUE, MEO with token-level block", 83.3, "%",
                "accuracy, fine-tuned", {"variant": "meo-token"}, measurable=False),
    PaperNumber("glue_moe", "average GLUE, vanilla MoE", 82.6, "%",
                "accuracy, fine-tuned", {"variant": "moe"}, measurable=False),
)}


def meo_flops_ratio_closed_form(top_k: float, seq_len: float) -> float:
    """MEO / vanilla MACs of one MoE linear: (B·L·P + B·k·P) / (B·L·k·P) = 1/k + 1/L.

    Vanilla top-k runs k experts per token (B·L·k·P); MEO runs one merged expert per token
    (B·L·P) after merging k weight matrices once per sequence (B·k·P). P = d_in x d_out.
    """
    return 1.0 / top_k + 1.0 / seq_len
