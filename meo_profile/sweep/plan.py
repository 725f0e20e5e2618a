"""What a `meo-profile sweep` command asks for: the grid, the jobs it expands to, where they
are stored, and how to ask again after an interruption."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meo_profile.core.identity import MACHINE_FIELD
from meo_profile.core.inputs import output_dir, split_list
from meo_profile.measure.preflight import MemoryEstimate, estimate, memory_limit
from meo_profile.measure.run import check_request
from meo_profile.measure.timing import TimingOptions
from meo_profile.models import Spec
from meo_profile.models.spec import planned_for
from meo_profile.results.record import device_name, invocation
from meo_profile.results.store import load
from meo_profile.sweep.choice import ExecutorChoice
from meo_profile.sweep.executors import Site
from meo_profile.sweep.grid import Block, Grid, GridError, load_config, parse_metrics
from meo_profile.sweep.presets import PRESETS
from meo_profile.sweep.run import Job, Jobs, SweepOptions, job_key, stored_keys


def plan_grid(preset: str | None, config: Path | None, axes: dict[str, list[Any]],
              metrics: tuple[str, ...] | None) -> tuple[Grid, str]:
    """The grid a sweep command asks for, and a name for its default output directory.

    A config file or a preset gives the blocks (the `default` preset when nothing is said);
    axis flags alone make one block; axis flags with a preset or file replace those axes.
    """
    if preset is not None and config is not None:
        raise GridError("--preset and --config: give one of them")
    if config is not None:
        grid, name = load_config(config), Path(config).stem
    elif preset is not None or not axes:
        name = preset or "default"
        if name not in PRESETS:
            raise GridError(f"--preset {name!r}: unknown; choose from {', '.join(PRESETS)}")
        grid = PRESETS[name].grid
    else:
        grid, name = Grid([Block({"device": ["auto"], **axes})]), "sweep"
    if axes and (preset is not None or config is not None):
        grid = grid.override(axes)
    if metrics:
        grid = grid.with_metrics(metrics)
    return grid, name


@dataclass
class SweepPlan:
    jobs: Jobs  # a function of the workers' Site: the grid expanded for their device
    total: int  # configurations in the grid
    options: SweepOptions
    impossible: int  # grid combinations left out as no model (sweep/grid.py NOT_A_MODEL_TEXT)
    estimate: str | None = None  # a preset's measured duration, as `meo-profile presets` says
    checked: list[Job] | None = None  # the jobs as planned and checked here (for --dry-run)

    @property
    def timed(self) -> int:
        """Configurations the grid times (resume may skip some of them)."""
        return sum("latency" in metrics for _, metrics in self.checked or [])


def plan_sweep(preset: str | None, config: str | Path | None, axes: dict[str, list[Any]],
               metrics: str | None, out: str | Path | None, resume: bool,
               max_memory_bytes: int | None, timing: TimingOptions,
               executor: ExecutorChoice | None = None) -> SweepPlan:
    """What `meo-profile sweep` runs. Every job is checked to be measurable, and the output
    directory writable, before any worker starts, so bad input stops the sweep at once rather
    than halfway.

    `device: auto` means the workers' device, known once they report (executors.Site). Here
    the grid is checked as the workers would see it: this machine's for the local executor;
    for remote ones, as if they had a GPU (so a CPU-only driver can plan a GPU sweep; CPU
    workers then refuse `device: cuda` when they report)."""
    executor = executor or ExecutorChoice()
    asked = parse_metrics(split_list(metrics, "--metrics")) if metrics is not None else None
    grid, name = plan_grid(preset, config, axes, asked)
    with planned_for(None if executor.name == "local" else "cuda"):
        jobs, impossible = grid.expand()
    for spec, measurements in jobs:
        check_request(spec, measurements, timing=timing)
    out = output_dir(Path("reports") / name if out is None else out, "--out")
    options = SweepOptions(out=out, resume=resume, max_memory_bytes=max_memory_bytes,
                           timing=timing, executor=executor.make(out))
    return SweepPlan(functools.partial(jobs_for, grid), len(jobs), options, impossible,
                     PRESETS[name].estimate if name in PRESETS else None, jobs)


def jobs_for(grid: Grid, site: Site) -> list[Job]:
    """The grid's jobs for workers at `site`: `device: auto` resolves to their device."""
    with planned_for(site.device):
        return grid.expand()[0]


# -------------------------------------------------------------------------------- dry run
@dataclass
class PlannedJob:
    spec: Spec
    metrics: tuple[str, ...]
    stored: bool  # resume would skip it
    memory: MemoryEstimate | None  # for jobs that build the model (latency, memory)
    fits: bool = True


def preview(plan: SweepPlan) -> list[PlannedJob]:
    """`sweep --dry-run`: each job, whether it is stored already, and its memory estimate
    against the limit (a job above it would be recorded as oom). Nothing is built and no
    worker starts: the jobs are as planned here, stored ones matched against this machine."""
    options = plan.options
    done = stored_keys(load(options.out).records) if options.resume else set()
    limits: dict[str, int] = {}
    out = []
    for spec, metrics in plan.checked or []:
        key = job_key({**spec.to_dict(), MACHINE_FIELD: device_name(spec.device)}, metrics,
                      options.timing.to_dict())
        memory = estimate(spec) if "latency" in metrics or "memory" in metrics else None
        if memory is not None and spec.device not in limits:
            limits[spec.device] = memory_limit(spec.device, options.max_memory_bytes)[0]
        fits = memory is None or memory.total_bytes <= limits[spec.device]
        out.append(PlannedJob(spec, metrics, key in done, memory, fits))
    return out


DAY_S = 24 * 3600


def long_sweep_warning(timed: int, min_run_time_s: float) -> str | None:
    """A warning for a grid whose timing alone, at its least, takes more than a day (nothing
    else is counted: tuning, building and counting only add to it)."""
    least_s = timed * min_run_time_s
    if least_s <= DAY_S:
        return None
    return (f"warning: {timed:,} timed configurations take at least {least_s / 3600:,.1f} h "
            f"(--min-run-time {min_run_time_s:g} s each), more than a day: trim the grid, "
            "or split it over workers (--executor ray or slurm)")


def command_line(argv: list[str]) -> str:
    """The sweep command as typed (the report names the command that rendered it)."""
    return invocation(["meo-profile", *argv])


def resume_command(argv: list[str]) -> str:
    """The command that continues an interrupted sweep: the same arguments without `--fresh`
    (which would set the stored results aside and start over)."""
    return command_line([a for a in argv if a != "--fresh"])
