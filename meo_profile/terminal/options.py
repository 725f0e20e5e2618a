"""The configuration flags every measuring command shares, declared once.

`@with_spec` adds the flags below to a Typer command's signature and hands the command one
validated `Spec` instead; a configuration error becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import functools
import inspect
import os
import typing
from collections.abc import Callable
from importlib.metadata import version
from typing import Annotated, Any

import typer

from meo_profile.core.errors import BadInput
from meo_profile.core.inputs import describe_os_error, output_file
from meo_profile.core.units import parse_bytes
from meo_profile.models.conditions import MERGE_REUSE, ROUTINGS, SCOPES, WORKLOADS
from meo_profile.models.errors import SpecError, flag_of
from meo_profile.models.names import (
    DEVICES,
    DTYPES,
    EXPERT_UNITS,
    HF_HOST_HELP,
    HOST_NAMES,
    IMPL_NAMES,
    MODES,
    VARIANT_NAMES,
)
from meo_profile.sweep.choice import ExecutorChoice, parse_params

# Nothing imported here loads torch, pandas, matplotlib or fvcore: the help answers at once.
# The registries' names come from models/names.py; what builds or parses a configuration is
# imported where it runs (the Spec, the grid's axis parser).


def _opt(flag: str, help: str, **kw: Any) -> Any:
    return typer.Option(flag, help=help, rich_help_panel="Configuration", **kw)


def _cond(flag: str, help: str, **kw: Any) -> Any:
    return typer.Option(flag, help=help, rich_help_panel="Conditions", **kw)


# (spec field, type, default, option). Defaults None mean "the host's own" or "the variant's".
SPEC_OPTIONS: list[tuple[str, Any, Any, Any]] = [
    ("host", str, "layer", _opt("--host", f"Host model: {', '.join(HOST_NAMES)}, or {HF_HOST_HELP}.")),
    ("variant", str, "meo", _opt("--variant", f"MoE variant: {', '.join(VARIANT_NAMES)}.")),
    ("num_experts", int | None, None, _opt("--experts", "Experts per MoE layer (E); default: 16, or a MoE host's own.")),
    ("top_k", int | None, None, _opt("--top-k", "Experts selected per token or sequence (k); default: 4, or a MoE host's own.")),
    ("d_model", int | None, None, _opt("--d-model", "Model width; default: the host's.")),
    ("d_ff", int | None, None, _opt("--d-ff", "FFN width (a MoE host: one routed expert's); default: the host's.")),
    ("layers", int | None, None, _opt("--layers", "Blocks with an FFN; default: the host's.")),
    ("seq_len", int, 128, _opt("--seq-len", "Tokens per sequence (L).")),
    ("batch_size", int, 8, _opt("--batch-size", "Sequences per batch (B).")),
    ("dtype", str, "float32", _opt("--dtype", f"Numeric type: {', '.join(DTYPES)}.")),
    ("device", str, "auto", _opt("--device", f"{', '.join(DEVICES)}; auto picks cuda when present.")),
    ("impl", str, "auto", _opt("--impl", f"Implementation: {', '.join(IMPL_NAMES)}; auto picks per variant (moe on a native MoE host: the model's own block under hf-*).")),
    ("expert_unit", str | None, None, _opt("--expert-unit", f"{' or '.join(EXPERT_UNITS)}: an expert is one FFN linear (paper) or a whole FFN.")),
    ("mode", str, "inference", _opt("--mode", f"{' or '.join(MODES)} (train = forward + backward).")),
    ("seed", int, 0, _opt("--seed", "Seed for weights and inputs.")),
    ("n_ce", int | None, None, _opt("--n-ce", "ce: top-k experts replaced by vectors (default k/2).")),
    ("ce_init", str | None, None, _opt("--ce-init", "ce: vector init, ones (paper) or random.")),
    ("threshold", float | None, None, _opt("--threshold", "xmoe: probability mass to reach (default 0.9).")),
    ("granularity", int | None, None, _opt("--granularity", "xmoe: split expert width by g, multiply experts by g.")),
    ("max_k", int | None, None, _opt("--max-k", "xmoe: cap on experts per token.")),
    ("capacity_factor", float | None, None, _opt("--capacity-factor", "xmoe: expert capacity factor (default dropless).")),
    ("router_scale", float, 1.0, _opt("--router-scale", "Multiplies router logits; >1 sharpens a random router.")),
    ("segment_len", int | None, None, _opt("--segment-len", "lory: tokens per segment (T), merged and routed together.")),
    ("slots_per_expert", int | None, None, _opt("--slots-per-expert", "soft-moe: slots each expert processes (p).")),
    ("scope", str, "model", _cond("--scope", f"What is measured: {', '.join(SCOPES)} (the whole host; its block stack without embeddings and head; its MoE sublayers alone, fed the hidden states they would see).")),
    ("workload", str, "prefill", _cond("--workload", f"{' | '.join(WORKLOADS)}: one forward over B x L tokens; one step of B sequences adding a token after --context tokens; a prefill then N decode steps.")),
    ("context", int | None, None, _cond("--context", "decode: tokens already in the cache (C); default: --seq-len.")),
    ("merge_reuse", str | None, None, _cond("--merge-reuse", f"Merging variants at decode: {' or '.join(MERGE_REUSE)} (route and merge again every step, or merge once from the prompt and keep it).")),
    ("routing", str, "router", _cond("--routing", f"Which experts are chosen: {', '.join(ROUTINGS)}; all but replay take ,local:P (a token keeps the previous token's experts with probability P).")),
    ("vocab_size", int | None, None, _opt("--vocab-size", "Vocabulary of a host with embeddings; default: the host's.")),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


TRACEBACK_VARIABLE = "MEO_PROFILE_TRACEBACK"  # set to 1 to see the traceback of a failure


def as_exit(e: BaseException) -> typer.Exit:
    """Any exception as one line on stderr and its exit code: bad input (a SpecError from a
    configuration, a BadInput from a file, a path or a flag's value) is 2; an OS error met while
    running (a full disk, a file that vanished) and anything unexpected are 1."""
    if isinstance(e, (SpecError, BadInput)):
        return fail(str(e))
    if isinstance(e, OSError):
        return fail(describe_os_error(e), code=1)
    first = (str(e).strip().splitlines() or [""])[0][:300]
    return fail(f"{type(e).__name__}: {first} (set {TRACEBACK_VARIABLE}=1 for the traceback)",
                code=1)


def exits_on_bad_input(command: Callable) -> Callable:
    """Every exception raised in `command`, other than the command line's own exits, becomes one
    line on stderr and an exit code (see `as_exit`): never a traceback, unless asked for."""

    @functools.wraps(command)  # keeps the signature Typer reads
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except (typer.Exit, typer.Abort, typer.TyperException):
            raise
        except Exception as e:
            if os.environ.get(TRACEBACK_VARIABLE) and not isinstance(e, (SpecError, BadInput)):
                raise
            raise as_exit(e) from None

    return wrapper


# ------------------------------------------------------------------------------ help
def _without_flag_types(params: list) -> list:
    """A flag takes no value, so help shows no type beside it (Typer would print <bool>)."""
    for param in params:
        if getattr(param, "is_flag", False):
            param.metavar = ""
    return params


class Command(typer.core.TyperCommand):
    """Every command's class: its help names no type for a flag (`--json`, `--help`)."""

    def get_params(self, ctx):
        return _without_flag_types(super().get_params(ctx))


class Group(typer.core.TyperGroup):
    """The command group's class: as `Command`, for `--version` and `--help`."""

    def get_params(self, ctx):
        return _without_flag_types(super().get_params(ctx))


# ------------------------------------------------------------------------ typed options
def parse_size(text: str) -> int:
    """`--max-memory 8GiB` -> bytes (a bad size is a usage error: one line, exit 2)."""
    try:
        return parse_bytes(text, flag="")
    except ValueError as e:
        raise typer.BadParameter(str(e).strip()) from None


def int_in(least: int, most: int) -> Callable[[str], int]:
    """A parser for an integer option in least..most (a bad value is a usage error naming it)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise typer.BadParameter(f"{text!r}: expected an integer") from None
        if not least <= value <= most:
            raise typer.BadParameter(f"{text!r}: must be an integer in {least}..{most}")
        return value

    return parse


MaxMemory = Annotated[int | None, typer.Option(
    "--max-memory", parser=parse_size, metavar="<size>",
    help="Memory a configuration may use, e.g. 8GiB (default: 90% of what the device has free); "
         "a configuration whose estimate is above it is refused (a sweep records it as oom).")]


def writable_file(flag: str) -> Callable[[str | None], str | None]:
    """An option callback: the file named can be written (checked before any work)."""
    return lambda value: None if value is None else str(output_file(value, flag))


def version_text() -> str:
    """`meo-profile --version`: the package version and the commit it runs from."""
    from meo_profile.results.record import git_commit

    commit = git_commit()
    return f"meo-profile {version('meo-profile')}" + (f" (commit {commit})" if commit else "")


def own_parameters(command: Callable, replaced: str) -> list[inspect.Parameter]:
    """`command`'s parameters, string annotations resolved, less the one a decorator replaces.
    `Spec` resolves to Any: the command line imports it for type checkers only (it loads
    torch), and the `spec` parameter it annotates is the one `with_spec` replaces."""
    hints = typing.get_type_hints(command, include_extras=True, localns={"Spec": Any})
    return [p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(command).parameters.values() if p.name != replaced]


def with_signature(wrapper: Callable, parameters: list[inspect.Parameter]) -> Callable:
    """What Typer reads: the signature, and annotations that match it (functools.wraps copied
    the command's own, whose `spec: Spec` would be evaluated)."""
    wrapper.__signature__ = inspect.Signature(parameters)
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper


def with_spec(command: Callable) -> Callable:
    """Give `command(spec: Spec, ...)` the configuration flags; it receives the built Spec."""
    own = own_parameters(command, "spec")
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                               annotation=Annotated[typ, option])
             for name, typ, default, option in SPEC_OPTIONS]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        from meo_profile.models.spec import Spec  # builds on torch: imported once it is needed

        fields = {name: kwargs.pop(name) for name, *_ in SPEC_OPTIONS}
        return command(spec=Spec(**fields), **kwargs)

    return with_signature(wrapper, own + added)


def with_axes(command: Callable) -> Callable:
    """Give `command(axes: dict, ...)` the configuration flags as comma-separated lists
    (`--variant moe,meo --top-k 1,2,4`); it receives {spec field: [values]} for those given."""
    own = own_parameters(command, "axes")
    added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None,
                               annotation=Annotated[str | None, typer.Option(
                                   flag_of(name), help=option.help + " Comma-separated list.",
                                   rich_help_panel="Sweep axes")])
             for name, _, _, option in SPEC_OPTIONS]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        from meo_profile.sweep.grid import parse_axis_flag  # builds Specs: imported when run

        given = {name: kwargs.pop(name) for name, *_ in SPEC_OPTIONS}
        axes = {name: parse_axis_flag(name, text) for name, text in given.items() if text is not None}
        return command(axes=axes, **kwargs)

    return with_signature(wrapper, own + added)


def _exec_opt(flag: str, help: str) -> Any:
    return typer.Option(flag, help=help, rich_help_panel="Where it runs")


# (ExecutorChoice field, type, default, option): the flags of `sweep --executor`.
EXECUTOR_OPTIONS: list[tuple[str, Any, Any, Any]] = [
    ("name", str, "local", _exec_opt("--executor", "local (this process), ray (one worker per GPU, or CPU workers) or slurm (submitit jobs; local processes without Slurm).")),
    ("ray_address", str | None, None, _exec_opt("--ray-address", "ray: a running cluster's address, or auto to join the one on this node; default: start a private Ray here.")),
    ("ray_cpu_workers", int, 1, _exec_opt("--ray-cpu-workers", "ray without GPUs: workers sharing the CPUs (more than one makes timings compete).")),
    ("slurm_cluster", str, "auto", _exec_opt("--slurm-cluster", "slurm: slurm, local (subprocesses here), debug (in this process) or auto (Slurm where present, else local).")),
    ("slurm_partition", str | None, None, _exec_opt("--slurm-partition", "slurm: the partition to submit to.")),
    ("slurm_gpus_per_job", int, 0, _exec_opt("--slurm-gpus-per-job", "slurm: GPUs per job (one configuration per job).")),
    ("slurm_cpus_per_job", int | None, None, _exec_opt("--slurm-cpus-per-job", "slurm: CPUs per job; default: the cluster's.")),
    ("slurm_time_min", int, 60, _exec_opt("--slurm-time-min", "slurm: time limit per job, minutes.")),
    ("slurm_array_parallelism", int | None, None, _exec_opt("--slurm-array-parallelism", "slurm: jobs running at once; default: Slurm's throttle on Slurm, 1 locally (one per GPU set with --slurm-gpus-per-job).")),
    ("slurm_params", list[str] | None, None, _exec_opt("--slurm-param", "slurm: KEY=VALUE added as #SBATCH --KEY=VALUE (account, qos, constraint...); repeatable.")),
]


def with_executor(command: Callable) -> Callable:
    """Give `command(executor: ExecutorChoice, ...)` the `--executor` flags, checked (one line
    and exit 2 on a bad value) before the command runs."""
    own = own_parameters(command, "executor")
    added = [inspect.Parameter("executor_" + name, inspect.Parameter.KEYWORD_ONLY, default=default,
                               annotation=Annotated[typ, option])
             for name, typ, default, option in EXECUTOR_OPTIONS]

    @functools.wraps(command)
    def wrapper(**kwargs: Any) -> Any:
        given = {name: kwargs.pop("executor_" + name) for name, *_ in EXECUTOR_OPTIONS}
        given["slurm_params"] = parse_params(given["slurm_params"])
        return command(executor=ExecutorChoice(**given), **kwargs)

    return with_signature(wrapper, own + added)
