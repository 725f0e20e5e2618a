"""`meo-profile`: the command line. Parses options and calls meo_profile; no logic of its own.

Each command imports the layer it calls inside its body, so that `--help` and a bad flag answer
without loading torch, pandas, matplotlib or fvcore (tests/test_help.py holds it to that).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from meo_profile.sweep.choice import ExecutorChoice
from meo_profile.terminal.options import (
    TRACEBACK_VARIABLE,
    Command,
    Group,
    MaxMemory,
    as_exit,
    exits_on_bad_input,
    fail,
    int_in,
    version_text,
    with_axes,
    with_executor,
    with_spec,
    writable_file,
)

if TYPE_CHECKING:  # the Spec loads torch: `--help` must not (with_spec builds it when run)
    from meo_profile.models import Spec


class App(typer.Typer):
    """Typer, with usage errors and bad input as one line on stderr and exit code 2, and any
    other failure as one line and exit code 1 (no boxed traceback): every command is registered
    through `exits_on_bad_input`; what option callbacks raise is answered here."""

    def command(self, *args, **kwargs):
        def register(fn):
            # the command list shows the docstring's first paragraph as one line (Typer would
            # keep its line breaks there and wrap mid-sentence)
            summary = " ".join((fn.__doc__ or "").split("\n\n")[0].split())
            options = {"short_help": summary, **kwargs} if summary else dict(kwargs)
            options.setdefault("cls", Command)
            return typer.Typer.command(self, *args, **options)(exits_on_bad_input(fn))

        return register

    def __call__(self, *args, **kwargs):
        try:
            code = super().__call__(*args, standalone_mode=False, **kwargs)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(130)
        except typer.TyperException as e:  # click's usage errors, as Typer re-exports them
            if type(e).__name__ == "NoArgsIsHelpError":  # bare `meo-profile`: the help, as --help
                # (Typer's click exports no name for it; rich has printed the help already)
                typer.echo(e.format_message(), nl=False)
                sys.exit(0)
            typer.echo(f"error: {e.format_message()}", err=True)
            sys.exit(2)
        except typer.Exit as e:
            sys.exit(e.exit_code)
        except Exception as e:  # raised by an option's callback, before the command runs
            if os.environ.get(TRACEBACK_VARIABLE):
                raise
            sys.exit(as_exit(e).exit_code)
        sys.exit(code if isinstance(code, int) else 0)


app = App(name="meo-profile", no_args_is_help=True, add_completion=False, cls=Group,
          pretty_exceptions_enable=False,
          help="Build MoE and MEO models, count their FLOPs, time them, and check efficiency claims.")


def _print_version(asked: bool) -> None:
    if asked:
        typer.echo(version_text())
        raise typer.Exit(0)


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", is_eager=True, callback=_print_version,
                                                help="Print the version and exit.")] = False) -> None:
    """Build MoE and MEO models, count their FLOPs, time them, and check efficiency claims."""


JsonFlag = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]


def emit_json(obj: dict) -> None:
    typer.echo(json.dumps(obj, default=str))


Source = Annotated[str, typer.Option("--source", help="Counter: fvcore (traced forward), analytic (closed form), or both (exit 1 if they differ).")]
ByModule = Annotated[bool, typer.Option("--by-module", help="Also show MACs per module.")]
ByOperator = Annotated[bool, typer.Option("--by-operator", help="Also show MACs per operator.")]
Depth = Annotated[int, typer.Option("--depth", parser=int_in(0, 64), metavar="<int>", help="Module depth shown by --by-module.")]


@app.command(rich_help_panel="Measure one configuration")
@with_spec
def flops(spec: Spec, source: Source = "fvcore", by_module: ByModule = False,
          by_operator: ByOperator = False, depth: Depth = 4, json_out: JsonFlag = False,
          max_memory: MaxMemory = None) -> None:
    """Count one configuration: MACs, FLOPs (= 2 x MACs), parameters, parts, skipped ops."""
    from meo_profile.measure.run import measure
    from meo_profile.terminal import render

    result = measure(spec, ("flops",), source=source, max_memory_bytes=max_memory,
                     oversize="refuse")
    if json_out:
        emit_json(result.to_dict())
    elif result.status == "ok":
        render.print_counts(result, by_module=by_module, by_operator=by_operator, depth=depth)
    if result.status != "ok":
        raise fail(f"{result.status}: {result.error}", code=1)
    if result.cross_check is not None and not result.cross_check.agree:
        raise fail("fvcore and analytic disagree: " + "; ".join(result.cross_check.differences),
                   code=1)


Warmup = Annotated[int, typer.Option("--warmup", help="Untimed calls before timing.")]
MinRunTime = Annotated[float, typer.Option("--min-run-time", help="Seconds of timed calls, at least.")]
CpuAllocator = Annotated[str, typer.Option("--cpu-allocator", help="CPU malloc while timing: retain (keep freed memory, as jemalloc/tcmalloc do) or system; recorded as `allocator`.")]
Autorange = Annotated[str, typer.Option("--autorange", help="CPU timer: blocked or adaptive autorange.")]
FlushL2 = Annotated[bool, typer.Option("--flush-l2", help="CUDA: flush the L2 cache before each call.")]
TimingMode = Annotated[str, typer.Option("--timing", help="CUDA: graph (replay the step from a CUDA graph), eager (launch it op by op), or auto (graph where the step can be captured, else eager, saying why); recorded as `timing_mode`. CPU: always eager.")]


@app.command(rich_help_panel="Measure one configuration")
@with_spec
def latency(spec: Spec, json_out: JsonFlag = False, warmup: Warmup = 3, min_run_time: MinRunTime = 1.0,
            autorange: Autorange = "blocked", flush_l2: FlushL2 = False,
            cpu_allocator: CpuAllocator = "retain", timing: TimingMode = "auto",
            max_memory: MaxMemory = None) -> None:
    """One configuration: latency statistics, tokens/s, peak memory, roofline bound."""
    from meo_profile.measure.run import measure
    from meo_profile.measure.timing import TimingOptions
    from meo_profile.terminal import render
    from meo_profile.terminal.perf import latency_table

    options = TimingOptions(warmup=warmup, min_run_time=min_run_time, autorange=autorange,
                            flush_l2=flush_l2, cpu_allocator=cpu_allocator, timing_mode=timing)
    result = measure(spec, ("latency", "memory"), timing=options, max_memory_bytes=max_memory,
                     oversize="refuse")
    if result.status != "ok":
        typer.echo(f"error: {result.status}: {result.error}", err=True)
    for warning in result.timing.warnings if result.timing is not None else []:
        typer.echo(f"warning: {warning}", err=True)
    if result.below_bound:
        typer.echo(f"warning: measured {result.latency_ms_median:.4g} ms is below the roofline "
                   f"bound {result.roofline_ms:.4g} ms: distrust this measurement (another "
                   "process slowed the peak probes or the timing)", err=True)
    if json_out:
        emit_json(result.to_dict())
    elif result.status == "ok":
        render.print_table(latency_table(result))
    if result.status != "ok":
        raise typer.Exit(1)


TraceOut = Annotated[str, typer.Option("--out", help="Chrome/Perfetto trace file to write.")]
Steps = Annotated[int, typer.Option("--steps", help="Profiled steps (after --warmup unprofiled ones).")]
Top = Annotated[int, typer.Option("--top", parser=int_in(1, 10_000), metavar="<int>", help="Kernels and operators shown, by time.")]
FromTrace = Annotated[Path | None, typer.Option("--from", help="Summarise this trace file (torch.profiler's Chrome JSON, .json or .json.gz) instead of running anything; the configuration flags are then ignored.")]
Force = Annotated[bool, typer.Option("--force", help="Overwrite the --out file if it exists.")]


@app.command(rich_help_panel="Measure one configuration")
@with_spec
def trace(spec: Spec, out: TraceOut = "trace.json", json_out: JsonFlag = False, warmup: Warmup = 2,
          steps: Steps = 1, top: Top = 20, from_file: FromTrace = None, force: Force = False,
          max_memory: MaxMemory = None) -> None:
    """One configuration under torch.profiler: device time by kernel and by phase (CUDA), host
    operators by self time, a trace file; or the same summary of an existing file (--from)."""
    from meo_profile.measure.trace import summarize_file
    from meo_profile.measure.trace import trace as run_trace
    from meo_profile.terminal import perf, render

    if from_file:
        summary = summarize_file(from_file)
    else:
        summary = run_trace(spec, out, warmup=warmup, steps=steps, overwrite=force,
                            max_memory_bytes=max_memory)
    if json_out:
        emit_json(summary.to_dict())
        return
    for table in (perf.kernels_table(summary, top), perf.ops_table(summary, top),
                  perf.phases_table(summary)):
        if table is not None:
            render.print_table(table)
    for line in perf.phase_lines(summary) + perf.launch_lines(summary):
        render.print_line(line)
    if not from_file:
        render.print_line(f"trace written to {summary.trace_path}")


@app.command(rich_help_panel="Sweep")
@with_axes
@with_executor
def sweep(
    axes: dict,
    executor: ExecutorChoice,
    preset: Annotated[str | None, typer.Option("--preset", help="A built-in grid (see `meo-profile presets`); default: default.")] = None,
    config: Annotated[str | None, typer.Option("--config", help="A YAML grid file (see README).")] = None,
    out: Annotated[str | None, typer.Option("--out", help="Results directory; default: reports/<preset>.")] = None,
    metrics: Annotated[str | None, typer.Option("--metrics", help="Comma-separated: flops, latency, memory; default: each block's.")] = None,
    resume: Annotated[bool, typer.Option("--resume/--fresh", help="Skip configurations already stored for this device, or start over (old results are kept aside).")] = True,
    strict: Annotated[bool, typer.Option("--strict", help="Also exit 1 when a configuration is over the memory budget (oom); one that errored always does.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="Plain log lines instead of a progress bar.")] = False,
    max_memory: MaxMemory = None,
    warmup: Warmup = 3,
    min_run_time: MinRunTime = 0.5,
    cpu_allocator: CpuAllocator = "retain",
    timing: TimingMode = "auto",
    report: Annotated[bool, typer.Option("--report/--no-report", help="Render the report at the end.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the configurations, what is stored already, and the time and memory estimates; measure nothing.")] = False,
) -> None:
    """Run a grid of configurations; every record is stored as it is measured; report at the end."""
    from meo_profile.measure.timing import TimingOptions
    from meo_profile.report.document import render_report
    from meo_profile.sweep.executors import WorkerSetupError
    from meo_profile.sweep.plan import (
        command_line,
        long_sweep_warning,
        plan_sweep,
        preview,
        resume_command,
    )
    from meo_profile.sweep.run import run_sweep, skipped_lines
    from meo_profile.terminal import render
    from meo_profile.terminal.progress import run_with_progress
    from meo_profile.terminal.results import print_plan

    options = TimingOptions(warmup=warmup, min_run_time=min_run_time, cpu_allocator=cpu_allocator,
                            timing_mode=timing)
    plan = plan_sweep(preset, config, axes, metrics, out, resume, max_memory, options, executor)
    if dry_run:
        print_plan(plan, preview(plan))
        return
    too_long = long_sweep_warning(plan.timed, min_run_time)
    if too_long:
        typer.echo(too_long, err=True)
    out = plan.options.out
    if plan.impossible:
        from meo_profile.sweep.grid import NOT_A_MODEL_TEXT

        typer.echo(f"{plan.impossible} grid combinations left out: {NOT_A_MODEL_TEXT}", err=True)
    try:
        summary = run_with_progress(run_sweep, plan.jobs, plan.options, quiet, plan.total)
    except WorkerSetupError as e:  # no worker could run anything: one line, a run-time failure
        raise fail(str(e), code=1) from None
    render.print_sweep_summary(summary, out, skipped_lines(out))
    path = None
    if report and not summary.interrupted:
        path = render_report(out, out, command=command_line(sys.argv[1:]))
        typer.echo(f"report: {path}", err=True)
    if summary.interrupted:
        typer.echo(f"interrupted after {summary.measured} new records (stored in {out}); "
                   f"resume with: {resume_command(sys.argv[1:])}", err=True)
        raise typer.Exit(summary.exit_code)
    failed = summary.failure_line(strict, path)
    if failed:
        raise fail(failed, code=1)


@app.command(rich_help_panel="Sweep")
def presets() -> None:
    """List the built-in sweep presets, what each runs, and roughly how long it takes."""
    from meo_profile.sweep.presets import PRESETS
    from meo_profile.terminal import render

    render.Console().print(render.presets_text(PRESETS))


@app.command(rich_help_panel="Results")
def report(
    results: Annotated[str, typer.Argument(help="A results directory or its results.jsonl.")],
    out: Annotated[str | None, typer.Option("--out", help="Where report and figures/ go; default: beside the results.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="md or html.")] = "md",
) -> None:
    """Tables and figures from stored results: report.md (or .html) and figures/ (PNG and SVG)."""
    from meo_profile.report.document import render_report, report_command
    from meo_profile.terminal.results import print_report_summary

    command = report_command(results, out, fmt)
    path = render_report(results, out, fmt, command)
    print_report_summary(results, command=command)
    typer.echo(f"report: {path}", err=True)


@app.command(rich_help_panel="Check")
def check(
    results: Annotated[str | None, typer.Argument(help="A results directory or .jsonl to judge; default: measure what the claims need.")] = None,
    claims_file: Annotated[str | None, typer.Option("--claims", help="A claims YAML file (docs/claims.md); default: the built-in paper claims.")] = None,
    junit: Annotated[str | None, typer.Option("--junit-xml", callback=writable_file("--junit-xml"), help="Also write the verdicts as JUnit XML, for CI systems.")] = None,
    save: Annotated[str | None, typer.Option("--save", help="Store the records measured in this results directory (for `compare`).")] = None,
    require_all: Annotated[bool, typer.Option("--require-all", help="Fail (exit 1) when a claim is unmeasured: its records are absent from RESULTS.")] = False,
    json_out: JsonFlag = False,
    max_memory: MaxMemory = None,
) -> None:
    """Efficiency claims against results: pass, fail, unmeasured or pending; exit 1 when a
    claim fails, 2 when none could be judged."""
    from meo_profile.check.claims_file import load_claims
    from meo_profile.check.run import run_checks
    from meo_profile.terminal import checks as render_checks
    from meo_profile.terminal import render

    run = run_checks(load_claims(claims_file), results, save,
                     log=None if json_out else lambda line: typer.echo(line, err=True),
                     require_all=require_all, max_memory_bytes=max_memory)
    for line in run.skipped:
        typer.echo(f"warning: skipped {line}", err=True)
    if junit:
        Path(junit).write_text(render_checks.junit_xml(run.verdicts, run.errors,
                                                       require_all=require_all), encoding="utf-8")
    if json_out:
        emit_json({"ok": run.exit_code == 0, "verdicts": [v.to_dict() for v in run.verdicts],
                   "errors": run.errors})
    else:
        render.print_table(render_checks.check_table(run.verdicts))
        for line in render_checks.check_lines(run.verdicts):
            typer.echo(line, err=True)
        typer.echo(render_checks.check_summary(run), err=True)
    for error in run.errors:
        typer.echo(f"error: {error}", err=True)
    raise typer.Exit(run.exit_code)


@app.command(rich_help_panel="Check")
def compare(
    baseline: Annotated[Path, typer.Argument(help="The baseline results directory or .jsonl.")],
    current: Annotated[Path, typer.Argument(help="The current results directory or .jsonl.")],
    tolerance: Annotated[list[str] | None, typer.Option("--tolerance", help="METRIC=X% for macs, params (default 0: equal), latency (10%), memory (5%); repeatable.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or markdown (a pull-request comment); json is kept as an alias of --json.")] = "table",
    allow_missing: Annotated[bool, typer.Option("--allow-missing", help="Pass although configurations of the baseline are missing from current.")] = False,
    json_out: JsonFlag = False,
) -> None:
    """A baseline results set against a current one, with tolerances; exit 1 on a regression
    or on configurations missing from current."""
    from meo_profile.check.compare import compare_paths
    from meo_profile.terminal import checks as render_checks
    from meo_profile.terminal import render

    formats = ("table", "markdown", "json")
    if fmt not in formats:
        raise fail(f"--format {fmt!r}: choose from {', '.join(formats)}")
    if fmt == "json":
        typer.echo("note: --format json is deprecated; use --json", err=True)
    comparison = compare_paths(baseline, current, tolerance or (), allow_missing)
    if json_out or fmt == "json":
        emit_json(comparison.to_dict())
    elif fmt == "markdown":
        typer.echo(render_checks.compare_markdown(comparison), nl=False)
    else:
        for warning in comparison.warnings:
            typer.echo(f"warning: {warning}", err=True)
        render.print_table(render_checks.compare_table(comparison))
    raise typer.Exit(0 if comparison.ok else 1)


@app.command(rich_help_panel="Check")
@with_spec
def verify(spec: Spec, json_out: JsonFlag = False, max_memory: MaxMemory = None) -> None:
    """Numerical checks: meo == moe-seq, implementations agree, k=1 is the chosen expert."""
    from meo_profile.check.verify import verify as run_checks
    from meo_profile.terminal import render

    checks = run_checks(spec, max_memory)
    ok = all(c.ok for c in checks)
    if json_out:
        emit_json({"ok": ok, "checks": [c.to_dict() for c in checks]})
    else:
        render.print_table(render.checks_table(checks, spec))
    if not ok:
        raise typer.Exit(1)


routing_app = App(name="routing", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False,
                  help="Routing traces: record a checkpoint's router choices, describe a trace.")
app.add_typer(routing_app, rich_help_panel="Routing")
Positive = Annotated[int, typer.Option(parser=int_in(1, 2**20), metavar="INTEGER")]


@routing_app.command("capture")
def routing_capture(
    host: Annotated[str, typer.Option("--host", help="hf:DIR: a local checkpoint (config.json, safetensors weights, tokenizer); nothing is downloaded.")],
    text: Annotated[str, typer.Option("--text", help="A UTF-8 text file the model runs over.")],
    out: Annotated[str, typer.Option("--out", help="The routing trace to write (.npz; see docs/routing.md).")],
    seq_len: Annotated[int, typer.Option("--seq-len", parser=int_in(1, 2**20), metavar="INTEGER", help="Tokens per sequence; the text's remainder is dropped.")] = 128,
    batch_size: Annotated[int, typer.Option("--batch-size", parser=int_in(1, 2**16), metavar="INTEGER", help="Sequences per forward.")] = 8,
    max_sequences: Annotated[int | None, typer.Option("--max-sequences", parser=int_in(1, 2**30), metavar="INTEGER", help="At most this many sequences; default: all the text holds.")] = None,
    dtype: Annotated[str, typer.Option("--dtype", help="float32, bfloat16 or float16.")] = "float32",
    device: Annotated[str, typer.Option("--device", help="cpu, cuda, or auto (cuda when present).")] = "auto",
    force: Force = False,
) -> None:
    """Record a local checkpoint's router choices over a text into a routing trace."""
    from meo_profile.measure.routing.checkpoint import capture_checkpoint

    if dtype not in ("float32", "bfloat16", "float16"):
        raise fail(f"--dtype {dtype!r}: choose from float32, bfloat16, float16")
    if device not in ("auto", "cpu", "cuda"):
        raise fail(f"--device {device!r}: choose from auto, cpu, cuda")
    path, trace = capture_checkpoint(host, text, out, seq_len=seq_len, batch_size=batch_size,
                                     max_sequences=max_sequences, dtype=dtype, device=device,
                                     overwrite=force)
    h = trace.header
    typer.echo(f"trace written to {path}: {h.layers} MoE layers, {h.sequences} sequences of "
               f"{h.tokens} tokens, E={h.num_experts}, k={h.top_k}", err=True)


@routing_app.command("stats")
def routing_stats(trace: Annotated[str, typer.Argument(help="A routing trace (.npz).")],
                  json_out: JsonFlag = False) -> None:
    """Per layer of a routing trace: load max/mean and its coefficient of variation, the fitted
    Zipf exponent, distinct experts per sequence against independent tokens, locality."""
    from dataclasses import asdict

    from meo_profile.measure.routing.stats import open_trace, trace_stats
    from meo_profile.terminal import render
    from meo_profile.terminal.routing import trace_table

    loaded = open_trace(trace)
    stats = trace_stats(loaded)
    if json_out:
        emit_json({"trace": trace, **asdict(loaded.header), "by_layer": [asdict(s) for s in stats]})
    else:
        render.print_table(trace_table(loaded.header, stats))


def main() -> None:  # pragma: no cover - `python cli.py` convenience
    app()


if __name__ == "__main__":
    main()

__all__ = ["app", "fail"]
