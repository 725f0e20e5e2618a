"""The `--executor` flags as given, checked, and the executor they name (a registry)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from meo_profile.core.errors import BadInput
from meo_profile.sweep.executors import Executor, LocalExecutor
from meo_profile.sweep.ray_pool import RayExecutor
from meo_profile.sweep.slurm_jobs import SLURM_CLUSTERS, SlurmParams, SubmititExecutor


@dataclass(frozen=True)
class ExecutorChoice:
    """The `--executor` flags as given; `make` builds the executor they name."""

    name: str = "local"
    ray_address: str | None = None
    ray_cpu_workers: int = 1
    slurm_cluster: str = "auto"
    slurm_partition: str | None = None
    slurm_gpus_per_job: int = 0
    slurm_cpus_per_job: int | None = None
    slurm_time_min: int = 60
    slurm_array_parallelism: int | None = None
    slurm_params: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Every flag checked before anything starts: one line naming it, exit 2."""
        if self.name not in EXECUTORS:
            raise BadInput(f"--executor {self.name!r}: unknown; choose from {', '.join(EXECUTORS)}")
        if self.slurm_cluster not in SLURM_CLUSTERS:
            raise BadInput(f"--slurm-cluster {self.slurm_cluster!r}: unknown; choose from "
                           f"{', '.join(SLURM_CLUSTERS)}")
        least = {"ray_cpu_workers": 1, "slurm_gpus_per_job": 0, "slurm_cpus_per_job": 1,
                 "slurm_time_min": 1, "slurm_array_parallelism": 1}
        for name, low in least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise BadInput(f"--{name.replace('_', '-')} {value}: must be an integer >= {low}")

    def make(self, out: Path) -> Executor:
        """The executor, or MissingExtra (exit 2) when its package is not installed."""
        return EXECUTORS[self.name](self, out)


def parse_params(items: list[str] | None) -> dict[str, str]:
    """`--slurm-param KEY=VALUE` (repeatable): extra #SBATCH lines, e.g. account=proj."""
    params = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BadInput(f"--slurm-param {item!r}: expected KEY=VALUE, e.g. account=myproject")
        params[key.strip()] = value.strip()
    return params


def _local(choice: ExecutorChoice, out: Path) -> Executor:
    return LocalExecutor()


def _ray(choice: ExecutorChoice, out: Path) -> Executor:
    return RayExecutor(choice.ray_address, choice.ray_cpu_workers)


def _slurm(choice: ExecutorChoice, out: Path) -> Executor:
    c = choice
    return SubmititExecutor(out / "submitit", c.slurm_cluster, c.slurm_gpus_per_job,
                            SlurmParams(c.slurm_partition, c.slurm_cpus_per_job, c.slurm_time_min,
                                        c.slurm_array_parallelism, c.slurm_params))


EXECUTORS: dict[str, Callable[[ExecutorChoice, Path], Executor]] = {
    "local": _local, "ray": _ray, "slurm": _slurm}
