"""What produced a results set and what failed in it: the report's setup table (the commands
that measured the records, the one that rendered them, machines, numerics, library versions,
timing options, outcomes, load) and its failure tables. Nothing here measures."""

from __future__ import annotations

from collections.abc import Iterable

import pandas as pd

from meo_profile.core.identity import config_title
from meo_profile.core.units import NA
from meo_profile.report import views
from meo_profile.report.tables import Table, table


# ------------------------------------------------------------------------------ setup
def _unique(df: pd.DataFrame, col: str) -> str:
    values = [str(v) for v in pd.unique(df[col].dropna())] if col in df else []
    return ", ".join(sorted(values)) or NA


SETUP_FIELDS = (("device", "device"), ("machine", "device_name"), ("workers", "worker"),
                ("dtype", "dtype"), ("torch", "torch_version"), ("fvcore", "fvcore_version"),
                ("transformers", "transformers_version"), ("python", "python_version"),
                ("threads", "num_threads"), ("timer", "timer"), ("timing mode", "timing_mode"),
                ("allocator", "allocator"), ("memory method", "mem_method"),
                ("git commit", "git_commit"))
WORKERS_NAMED = 8  # more than this many workers are counted, not listed


def setup_table(all_rows: pd.DataFrame, skipped_lines: int = 0, command: str | None = None,
                load_warnings: Iterable[str] = ()) -> Table:
    """What produced the results: the commands that measured them, the one that rendered
    them, machines, workers, numerics, library versions, timing options, outcomes, and the load
    the sweep ran under when its guard saw contention; one column per machine when the records
    come from more than one."""
    machines = sorted(str(m) for m in pd.unique(all_rows["device_name"].dropna())) \
        if "device_name" in all_rows else []
    groups = ([("value", all_rows)] if len(machines) < 2 else
              [(m, all_rows[all_rows["device_name"] == m]) for m in machines])

    def across(name: str, value: str) -> list[str]:  # a row that is the same for every machine
        return [name, value, *[""] * (len(groups) - 1)]

    rows = [across("produced by", c) for c in producing_commands(all_rows)]
    rows += [across("rendered by", command)] if command else []
    rows += [[name, *(_setup_value(g, col) for _, g in groups)] for name, col in SETUP_FIELDS
             if not (col == "device_name" and len(groups) > 1)]  # the machines head the columns
    rows.append(["timing options", *(_timing_options(g) for _, g in groups)])
    rows.append(["configurations", *(_outcomes(g) for _, g in groups)])
    if skipped_lines:
        rows.append(across("lines left out (unreadable or invalid)", str(skipped_lines)))
    rows += [across("load warning", w) for w in load_warnings]
    return table("Setup", [("field", False), *((name, False) for name, _ in groups)], rows)


def _setup_value(df: pd.DataFrame, col: str) -> str:
    if col == "worker" and col in df and df[col].nunique() > WORKERS_NAMED:
        return f"{df[col].nunique()} workers"
    return _unique(df, col)


def _outcomes(df: pd.DataFrame) -> str:
    latest, fixed = views.outcomes(df)
    counts = latest["status"].value_counts()
    outcome = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("ok", "oom", "error"))
    return (f"{len(latest)}: {outcome} (each one's latest record)"
            + (f"; {len(fixed)} earlier failures fixed since" if len(fixed) else ""))


def producing_commands(all_rows: pd.DataFrame) -> list[str]:
    """Each distinct command that measured records here, in the order they first ran, with
    how many records it wrote; records from before commands were stored are counted apart."""
    ordered = all_rows.sort_values("created_utc", na_position="first", kind="stable")
    commands = ordered["command"] if "command" in ordered else pd.Series(dtype=object)
    counts = commands.value_counts(sort=False, dropna=True)
    lines = [f"{c} ({n} records)" for c, n in counts.items()]
    unnamed = int(commands.isna().sum())
    return lines + ([f"not recorded ({unnamed} records from before commands were stored)"]
                    if unnamed else [])


def _timing_options(all_rows: pd.DataFrame) -> str:
    """The distinct timing options of the timed records, as 'warmup=3, min_run_time=0.5, ...'."""
    options = all_rows["timing_options"] if "timing_options" in all_rows else pd.Series(dtype=object)
    seen = {", ".join(f"{k}={v}" for k, v in o.items()) for o in options if isinstance(o, dict)}
    return "; ".join(sorted(seen)) or NA


# ------------------------------------------------------------------------------ failures
def failures_table(all_rows: pd.DataFrame) -> Table | None:
    """Configurations whose latest record is a failure (an older failure that a later record
    fixed is history: see `history_table`)."""
    latest, _ = views.outcomes(all_rows)
    bad = latest[latest["status"] != "ok"]
    if bad.empty:
        return None
    rows = [[r["status"], config_title(r), _message(r)] for r in bad.to_dict("records")]
    return table("", [("status", False), ("configuration", False), ("message", False)], rows)


def _message(record: dict) -> str:
    """A failure's message without the configuration's title that begins some (the row shows
    it), shortened to what a table cell holds."""
    text = str(record["error"] or "").removeprefix(config_title(record)).lstrip(" :")
    return text if len(text) <= 160 else text[:159] + "…"


def history_table(all_rows: pd.DataFrame) -> Table | None:
    """Failures that a later record of the same configuration fixed (a resumed sweep with more
    memory, a fixed bug): kept as history, with when they happened."""
    _, fixed = views.outcomes(all_rows)
    if fixed.empty:
        return None
    rows = [[r["status"], config_title(r), _message(r), str(r["created_utc"])]
            for r in fixed.to_dict("records")]
    return table("", [("status", False), ("configuration", False), ("message", False),
                      ("when", False)], rows,
                 "Each configuration here has a later successful record, which the report uses.")


