"""The results store: `results.jsonl` (one record a line, appended and flushed as measured),
`results.csv` regenerated from it, and `environment.json` beside them.

Loading tolerates what an interrupted writer or a hand edit leaves: a truncated line, bytes that
are not UTF-8, or an object without the record's required fields is reported and skipped, never
a crash and never filled in with defaults. A record whose field breaks its rule (a NaN latency,
a negative count: results/validate.py) is left out too and listed apart, as `invalid`: the
commands that judge results (`compare`, `check`) refuse a set that holds one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from meo_profile.core.errors import BadInput
from meo_profile.results.record import (
    Result,
    later_spec_defaults,
    record_problem,
    to_json_line,
)
from meo_profile.results.validate import invalid_field

RESULTS_FILE = "results.jsonl"
CSV_FILE = "results.csv"
ENVIRONMENT_FILE = "environment.json"


class InvalidRecord(ValueError):
    """A stored record with a field out of its rule (its type, finiteness or range)."""


@dataclass
class Loaded:
    records: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # "file:line: why", one per unreadable line
    invalid: list[str] = field(default_factory=list)  # "file:line: field: why", one per record

    @property
    def left_out(self) -> list[str]:
        """Every line kept out of the records, saying why: unreadable lines, then invalid
        records ("invalid record results.jsonl:3: latency_ms_median: NaN is not ...")."""
        return ([f"unreadable line {line}" for line in self.skipped]
                + [f"invalid record {line}" for line in self.invalid])

    def invalid_line(self) -> str | None:
        """One line naming the first invalid record, for a command that refuses the set."""
        if not self.invalid:
            return None
        more = len(self.invalid) - 1
        return (f"invalid record at {self.invalid[0]}"
                + (f" (and {more} more invalid record{'s' * (more > 1)})" if more else ""))


def results_path(path: str | Path) -> Path:
    """A directory holding results.jsonl, or the .jsonl file itself."""
    path = Path(path)
    return path / RESULTS_FILE if path.is_dir() or path.suffix != ".jsonl" else path


def load(path: str | Path) -> Loaded:
    """Every readable, valid record of a results file; unreadable lines are listed in
    `skipped`, records with an invalid field in `invalid`."""
    loaded = Loaded()
    file = results_path(path)
    if not file.exists():
        return loaded
    try:
        lines = file.read_bytes().split(b"\n")
    except OSError as e:
        raise BadInput(f"{str(file)!r}: cannot read it ({e.strerror or e})") from None
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = parse_line(raw)
        except InvalidRecord as e:
            loaded.invalid.append(f"{file.name}:{lineno}: {e}")
            continue
        except ValueError as e:
            loaded.skipped.append(f"{file.name}:{lineno}: {str(e)[:100]}")
            continue
        loaded.records.append(record)
    return loaded


def parse_line(raw: bytes) -> dict[str, Any]:
    """One stored line as a record; ValueError saying why it is not one (InvalidRecord, naming
    the field, when it is one whose value breaks its rule). Fields added to the spec after
    schema 1 read as their defaults, and are then checked like the rest."""
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"not UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") from None
    except ValueError as e:
        raise ValueError(f"not JSON ({e})") from None
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    problem = record_problem(record)
    if problem:
        raise ValueError(problem)
    record = record | {k: v for k, v in later_spec_defaults().items() if k not in record}
    problem = invalid_field(record)
    if problem:
        raise InvalidRecord(problem)
    return record


def read_environment(directory: str | Path) -> dict[str, Any]:
    """`environment.json` of a results directory; {} when absent or unreadable (it describes the
    results, it never holds them)."""
    try:
        env = json.loads((Path(directory) / ENVIRONMENT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return env if isinstance(env, dict) else {}


def load_warnings(directory: str | Path) -> list[str]:
    """The load guard's warnings of every sweep run stored in `directory` (see load_guard.py)."""
    runs = read_environment(directory).get("load_guard") or []
    return [w for run in runs if isinstance(run, dict) for w in run.get("warnings") or []]


def frame(records: Iterable[dict[str, Any]]) -> pd.DataFrame:
    """Records as a DataFrame, one row each (dict-valued fields kept as objects)."""
    return pd.DataFrame(list(records))


class Store:
    """Appends records to `<dir>/results.jsonl`, each flushed and fsynced as it is written, so a
    killed process loses at most the configuration in flight."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.file = self.dir / RESULTS_FILE
        self._repair_tail()

    def _repair_tail(self) -> None:
        # A writer killed mid-line leaves no trailing newline; start the next record on a fresh
        # line so only the broken one is lost.
        if self.file.exists() and self.file.stat().st_size:
            with open(self.file, "rb+") as f:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    f.write(b"\n")

    def append(self, result: Result | dict[str, Any]) -> None:
        """One record (a Result, or its dict as it came back from a worker), as one line."""
        line = to_json_line(result) if isinstance(result, Result) else json.dumps(result, default=str)
        with open(self.file, "a", encoding="utf-8") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict[str, Any]]:
        return load(self.file).records

    def write_csv(self) -> Path:
        """Regenerate results.csv from the JSONL (dict and list fields as JSON text)."""
        df = frame(self.records())
        for col in df.columns:
            if df[col].map(lambda v: isinstance(v, (dict, list))).any():
                df[col] = df[col].map(lambda v: json.dumps(v) if isinstance(v, (dict, list)) else v)
        out = self.dir / CSV_FILE
        df.to_csv(out, index=False)
        return out
