#!/usr/bin/env bash
# The GPU checks, as one prepared run for a machine with a GPU and no package index: honest
# timing (graph replay, kernel time, the phase-wise bound), the kernels (the fused MEO merge, the
# vanilla dispatches against transformers' experts, --impl auto by measurement) and the `gpu`
# preset's report. Steps run most valuable first. Run from the project root:
#
#   bash benchmarks/gpu_checks.sh            # on the GPU machine; results packed into $OUT/r.tgz
#
# Staging, on the machine with the checkout (fvcore travels as wheels in an ignored folder):
#   mkdir -p .dev && echo /.dev/ >> .git/info/exclude
#   pip wheel -q --no-deps -w .dev/whl fvcore==0.1.5.post20221221 iopath==0.1.10 yacs termcolor
# then send the checkout with .dev/whl to the GPU machine. Every step is capped by `timeout` so
# the whole run ends within BUDGET seconds, and outputs are packed after every step, so a run
# that is cut off still returns what finished.
#
# Try it on a CPU first, with small sizes (graph timing exits 2 there, by design):
#   DEVICE=cpu DTYPE=float32 BUDGET=400 PY=.venv/bin/python \
#   LAYER="--d-model 64 --d-ff 128 --experts 4 --top-k 2 --batch-size 2 --seq-len 16" \
#   BENCH="--rounds 1 --min-run-time 0.05" KERNELS="--scale 8 --rounds 1 --min-run-time 0.05" \
#   SWEEP="--preset quick" bash benchmarks/gpu_checks.sh
set -u
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bfloat16}
PY=${PY:-python3}
BUDGET=${BUDGET:-540}
LAYER=${LAYER:-"--d-model 768 --d-ff 3072 --experts 16 --top-k 4 --batch-size 8 --seq-len 128"}
BENCH=${BENCH:-"--rounds 3 --min-run-time 0.3"}
SWEEP=${SWEEP:-"--preset gpu"}
KERNELS=${KERNELS:-"--rounds 3 --min-run-time 0.3"}
WHEELS=${WHEELS:-.dev/whl}
OUT=${OUT:-$(mktemp -d)}
O=$(mktemp -d)
START=$(date +%s)
mkdir -p "$OUT"

pack() { tar czf "$OUT/r.tgz" -C "$O" . 2>/dev/null; }
step() {  # step NAME SECONDS CMD...: run CMD within SECONDS (less if the budget is short)
  local name=$1 secs=$2; shift 2
  local left=$(( START + BUDGET - $(date +%s) - 5 ))
  [ "$left" -lt "$secs" ] && secs=$left
  if [ "$secs" -lt 5 ]; then echo "=== $name skipped: out of time" | tee -a "$O/log.txt"; return; fi
  local t0; t0=$(date +%s)
  timeout "$secs" "$@" > "$O/$name.out" 2> "$O/$name.err"; local rc=$?
  echo "=== $name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$O/log.txt"
  tail -n 3 "$O/$name.out" | tee -a "$O/log.txt"
  pack
}

if ! "$PY" -c "import fvcore" 2>/dev/null; then  # the GPU machine: fvcore from the staged wheels
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$O/site" \
    "$WHEELS"/*.whl || { echo "fvcore missing and no wheels in $WHEELS" | tee -a "$O/log.txt"; pack; exit 3; }
  export PYTHONPATH="$(pwd):$O/site"
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
nvidia-smi > "$O/nvidia-smi.txt" 2>&1
MP="$PY -m cli"
ON="--host layer $LAYER --device $DEVICE --dtype $DTYPE"

step gpu_tests 120 "$PY" -m pytest -q -m gpu -p no:cacheprovider
step verify 60 $MP verify $ON --json
for mode in auto graph eager; do  # MEO's dense merge: the launch-bound case of the H200 notes
  step "latency_meo_dense_$mode" 40 $MP latency $ON --variant meo --impl dense --timing "$mode" --json
done
step latency_meo_fused 40 $MP latency $ON --variant meo --impl fused --json
step latency_meo_auto 60 $MP latency $ON --variant meo --impl auto --json  # the candidates, timed
step latency_moe_auto 60 $MP latency $ON --variant moe --impl auto --json
step latency_xmoe_auto 40 $MP latency $ON --variant xmoe --granularity 2 --json  # falls back, says why
step bench 150 "$PY" benchmarks/bench_latency.py --device "$DEVICE" --dtype "$DTYPE" $BENCH --json "$O/bench.json"
step kernels_paper 120 "$PY" benchmarks/bench_kernels.py --device "$DEVICE" --dtype "$DTYPE" --cases paper $KERNELS --graph --json "$O/kernels-paper.json"
step kernels_olmoe 150 "$PY" benchmarks/bench_kernels.py --device "$DEVICE" --dtype "$DTYPE" --cases olmoe $KERNELS --graph --json "$O/kernels-olmoe.json"
step trace 60 $MP trace $ON --variant meo --impl dense --steps 2 --out "$O/trace.json" --json
step trace_from 30 $MP trace --from "$O/trace.json" --json
step sweep 240 $MP sweep $SWEEP --out "$O/reference-gpu" --quiet  # commit as reports/reference-gpu
step kernels_gpu 240 "$PY" benchmarks/bench_kernels.py --device "$DEVICE" --dtype "$DTYPE" --cases gpu --no-loop $KERNELS --graph --json "$O/kernels-gpu.json"
pack
echo "done: $OUT/r.tgz" | tee -a "$O/log.txt"
pack
