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


def main() -> None:  # pragma: no cover - `python cli.py` convenience
    app()


if __name__ == "__main__":
    main()

__all__ = ["app", "fail"]
