"""`meo-profile`: the command line. Parses options and calls meo_profile; no logic of its own."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from meo_profile import render
from meo_profile.options import fail, with_spec
from models import Spec


class App(typer.Typer):
    """Typer, with usage errors as one line on stderr and exit code 2 (no boxed traceback)."""

    def __call__(self, *args, **kwargs):
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(130)
        except typer.TyperException as e:  # click's usage errors, as Typer re-exports them
            typer.echo(f"error: {e.format_message()}", err=True)
            sys.exit(2)
        sys.exit(code if isinstance(code, int) else 0)


app = App(name="meo-profile", no_args_is_help=True, add_completion=False,
          pretty_exceptions_enable=False,
          help="Build MoE and MEO models, count their FLOPs, time them, and check efficiency claims.")



@app.callback()
def _main() -> None:
    """Build MoE and MEO models, count their FLOPs, time them, and check efficiency claims."""


JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]


def emit_json(obj: dict) -> None:
    typer.echo(json.dumps(obj, default=str))


@app.command()
@with_spec
def verify(spec: Spec, json_out: JsonFlag = False) -> None:
    """Numerical checks: meo == moe-seq, implementations agree, k=1 is the chosen expert."""
    from meo_profile.verify import verify as run_checks

    checks = run_checks(spec)
    ok = all(c.ok for c in checks)
    if json_out:
        emit_json({"ok": ok, "checks": [c.to_dict() for c in checks]})
    else:
        render.print_table(render.checks_table(checks, spec))
    if not ok:
        raise typer.Exit(1)


Source = Annotated[str, typer.Option("--source", help="Counter: fvcore (traced forward), analytic (closed form), or both (exit 1 if they differ).")]
ByModule = Annotated[bool, typer.Option("--by-module", help="Also show MACs per module.")]
ByOperator = Annotated[bool, typer.Option("--by-operator", help="Also show MACs per operator.")]
Depth = Annotated[int, typer.Option("--depth", help="Module depth shown by --by-module.")]


@app.command()
@with_spec
def flops(spec: Spec, source: Source = "fvcore", by_module: ByModule = False,
          by_operator: ByOperator = False, depth: Depth = 4, json_out: JsonFlag = False) -> None:
    """Count one configuration: MACs, FLOPs (= 2 x MACs), parameters, parts, skipped ops."""
    from meo_profile.counting import COUNTERS, count, disagreements
    from meo_profile.record import Result

    if source not in (*COUNTERS, "both"):
        raise fail(f"--source {source!r}: choose from {', '.join(COUNTERS)}, both")
    counts = count(spec, "fvcore" if source == "both" else source)
    other = count(spec, "analytic") if source == "both" else None
    differ = disagreements(counts, other) if other else []
    if json_out:
        record = Result(spec).update(**counts.record_fields()).to_dict()
        if other:
            record.update(macs_analytic=other.macs, sources_agree=not differ)
        emit_json(record)
    else:
        render.print_counts(counts, spec, by_module=by_module, by_operator=by_operator, depth=depth)
        if other:
            render.print_table(render.comparison_table(counts, other, spec))
    if differ:
        raise fail("fvcore and analytic disagree: " + "; ".join(differ), code=1)


def main() -> None:  # pragma: no cover - `python cli.py` convenience
    app()


if __name__ == "__main__":
    main()

__all__ = ["app", "fail"]
