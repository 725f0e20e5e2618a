"""One numerical check's outcome: two outputs compared by max |a - b| / max |b| (relative to the
reference's scale, robust to entries near 0), within a tolerance, or skipped with the reason."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch


@dataclass
class Check:
    name: str
    max_abs_err: float
    max_rel_err: float
    tol: float
    skipped: str | None = None  # why the check could not run here (an implementation absent)

    @property
    def ok(self) -> bool:
        return self.skipped is not None or self.max_rel_err <= self.tol

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def compare_outputs(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> Check:
    got, want = got.double(), want.double()
    abs_err = (got - want).abs().max().item()
    scale = want.abs().max().item()
    return Check(name, abs_err, abs_err / scale if scale > 0 else abs_err, tol)
