"""What running a sweep through Ray costs: presets end to end, and Ray's dispatch per job.

1. Each preset through `meo-profile sweep` with each executor, into a fresh directory, as a
   user runs it (`--quiet --no-report`): the process's wall time (imports, Ray's start and
   stop included) and the sweep's own `wall` line.
2. Ray's own cost per configuration once the pool runs: N no-op jobs through the actor pool
   (the driver's loop, ray.wait, the result coming back), in milliseconds per job.

    python benchmarks/bench_executors.py [--presets quick,default] [--executors local,ray]
                                         [--noop-jobs 200] [--json out.json]

Timings on a shared machine are noisy (about 10% here): compare within one run of this script.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout, uninstalled


def noop(job):
    return job


def sweep_once(preset: str, executor: str) -> dict:
    """One sweep as on a fresh machine: an empty output directory and an empty cache directory
    (`--impl auto`'s choices are cached there; a warm cache would favour the later runs)."""
    with tempfile.TemporaryDirectory() as out, tempfile.TemporaryDirectory() as cache:
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "cli", "sweep", "--preset", preset, "--out", out,
                               "--quiet", "--no-report", "--executor", executor],
                              cwd=ROOT, capture_output=True, text=True,
                              env={**os.environ, "XDG_CACHE_HOME": cache})
        process_s = time.perf_counter() - t
    text = proc.stderr.replace("\n", " ")
    wall = re.search(r"wall ([\d.]+) s", text)
    configs = re.search(r"sweep: (\d+) configurations; measured (\d+)", text)
    if proc.returncode or not wall or not configs:
        raise SystemExit(f"{preset} / {executor} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return {"preset": preset, "executor": executor, "configurations": int(configs.group(1)),
            "measured": int(configs.group(2)), "sweep_wall_s": float(wall.group(1)),
            "process_s": round(process_s, 2)}


def ray_dispatch_ms(jobs: int) -> dict:
    """Milliseconds per no-op job through a started pool (start and stop timed apart)."""
    from meo_profile.sweep.ray_pool import RayExecutor

    executor = RayExecutor()
    t = time.perf_counter()
    executor.start()
    start_s = time.perf_counter() - t
    list(executor.run(range(4), noop))  # the first calls import what a call needs
    t = time.perf_counter()
    assert len(list(executor.run(range(jobs), noop))) == jobs
    per_job_ms = (time.perf_counter() - t) / jobs * 1e3
    t = time.perf_counter()
    executor.close()
    return {"ray_start_s": round(start_s, 2), "ray_dispatch_ms_per_job": round(per_job_ms, 2),
            "ray_stop_s": round(time.perf_counter() - t, 2), "noop_jobs": jobs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="quick,default")
    parser.add_argument("--executors", default="local,ray")
    parser.add_argument("--noop-jobs", type=int, default=200)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rows = []
    for preset in args.presets.split(","):
        for executor in args.executors.split(","):
            rows.append(sweep_once(preset, executor))
            print(json.dumps(rows[-1]), flush=True)
    if "ray" in args.executors.split(",") and args.noop_jobs:
        rows.append(ray_dispatch_ms(args.noop_jobs))
        print(json.dumps(rows[-1]), flush=True)
    for preset in args.presets.split(","):
        by = {r["executor"]: r for r in rows if r.get("preset") == preset}
        if {"local", "ray"} <= set(by):
            extra = (by["ray"]["process_s"] - by["local"]["process_s"]) / by["local"]["configurations"]
            print(f"{preset}: local {by['local']['process_s']:.1f} s, ray {by['ray']['process_s']:.1f} s "
                  f"per process; Ray adds {extra:+.2f} s per configuration end to end")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
