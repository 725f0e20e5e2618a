"""How long the MEO paper's figure takes to count: 36 fvcore counts.

BERT-Small/Base/Large x k in 1, 2, 4, 8, 16, 32 x vanilla MoE vs MEO (E = 32, L = 128, B = 1),
each counted by fvcore on the meta device (no weights in memory: bert-large at 32 experts per
linear would be ~26 GB of float32), from one trace of a single encoder block extrapolated to
the host's depth, exactly (meo_profile/measure/stacks.py). The time includes the first
count's imports. Goal (issue 16): under 10 s in total on a 2-core CPU (24.8 s before).

    python benchmarks/bench_flops.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, uninstalled

from meo_profile.models import Spec  # noqa: E402

from meo_profile.measure.counting import count  # noqa: E402

HOSTS = ("bert-small", "bert-base", "bert-large")
TOP_K = (1, 2, 4, 8, 16, 32)
GOAL_S = 10.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the timings and counts here")
    args = parser.parse_args(argv)
    rows, per_host = [], Counter()
    start = time.perf_counter()
    for host in HOSTS:
        for k in TOP_K:
            for variant in ("moe", "meo"):
                spec = Spec(host=host, variant=variant, num_experts=32, top_k=k, seq_len=128,
                            batch_size=1)
                t = time.perf_counter()
                counts = count(spec)
                seconds = time.perf_counter() - t
                per_host[host] += seconds
                rows.append({"host": host, "variant": variant, "top_k": k, "flops": counts.flops,
                             "flops_source": counts.source, "count_device": counts.count_device,
                             "seconds": seconds})
    total = time.perf_counter() - start
    for host in HOSTS:
        print(f"{host:>10}: 12 counts in {per_host[host]:5.1f} s")
    sources = Counter((r["flops_source"], r["count_device"]) for r in rows)
    print(f"total: {len(rows)} counts in {total:.1f} s (goal < {GOAL_S:.0f} s: "
          f"{'met' if total < GOAL_S else 'MISSED'}); sources: "
          + ", ".join(f"{n} {src} on {dev}" for (src, dev), n in sources.items()))
    if args.json:
        args.json.write_text(json.dumps({"total_s": total, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
