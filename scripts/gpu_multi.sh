#!/usr/bin/env bash
# The same night on two GPUs and on one, on the device machine (nvidia-h200-x2), from the
# carried files of device_setup.sh. Two GPUs: `distill run --gpus 2` (MODE=gpus, the
# default), or MODE=ranks, which starts the same processes by hand: the training stages
# (teacher, train, baseline) as two data-parallel ranks through torchrun's environment
# and NCCL, scoring as two `--shard` workers and a merge. Prints each stage's seconds in
# both runs and the metrics side by side.
# Usage: bash scripts/gpu_multi.sh PIPELINE [STAGES_ON_ONE_GPU]
#   STAGES_ON_ONE_GPU: "all" (default) or "none" (two GPUs only).
# PROFILE=FROM..TO: a Kineto trace of those optimizer steps of every training stage on
# every rank (DISTILL_PROFILE_STEPS), summarised here; rank 0's come back gzipped. Both
# runs' log.jsonl come back gzipped (log-one, log-two).
set -euo pipefail
source "$(dirname "$0")/device_setup.sh"
P=$1
ONE=${2:-all}
MODE=${MODE:-gpus}
D=/tmp/distill
export NCCL_NVLS_ENABLE=0
if [ -n "${PROFILE:-}" ]; then
  export DISTILL_PROFILE_STEPS=$PROFILE
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 - "$P" <<'PY'
import sys, re
text = open(sys.argv[1]).read()
for name, root in [("one-gpu", "/tmp/multi/one"), ("two-gpu", "/tmp/multi/two")]:
    t = re.sub(r'(?m)^name = ".*"$', f'name = "{name}"', text, count=1)
    t = t.replace("[run]\n", f'[run]\noutput_root = "{root}"\n', 1)
    open(f"/tmp/{name}.toml", "w").write(t)
PY

# Stage STAGE as two data-parallel ranks, one per GPU.
ranks() {
  local stage=$1 port=$((29500 + RANDOM % 1000)) pids=() r
  for r in 0 1; do
    RANK=$r WORLD_SIZE=2 LOCAL_RANK=$r MASTER_ADDR=127.0.0.1 \
      MASTER_PORT=$port timeout 400 $D run /tmp/two-gpu.toml --only "$stage" \
      > "$OUT/$stage-rank$r.log" 2>&1 &
    pids+=($!)
  done
  for r in 0 1; do
    wait "${pids[$r]}" || { echo "$stage: rank $r failed"; tail -n 20 "$OUT/$stage-rank"*.log; exit 1; }
  done
}

two_start=$(date +%s.%N)
export DISTILL_PROFILE_DIR=/tmp/multi/profile-two
if [ "$MODE" = gpus ]; then
  $D run /tmp/two-gpu.toml --gpus 2 2>&1 | grep -v "^\[W" | tee "$OUT/two.log"
  for f in /tmp/multi/two/two-gpu/workers/*.log; do
    echo "$(basename "$f"): $(grep -h "steps:" "$f" | tail -n 1 || true)"
  done
else
  CUDA_VISIBLE_DEVICES=0 $D -q run /tmp/two-gpu.toml --only mine
  ranks teacher
  grep -h "steps:" "$OUT/teacher-rank0.log" | tail -n 1
  score_start=$(date +%s.%N)
  for r in 0 1; do
    CUDA_VISIBLE_DEVICES=$r $D -q run /tmp/two-gpu.toml --only score --shard $r/2 > "$OUT/score-shard$r.log" 2>&1 &
  done
  wait
  CUDA_VISIBLE_DEVICES=0 $D -q run /tmp/two-gpu.toml --only score
  echo "score on two GPUs (workers and merge): $(python3 -c "import time;print(round(time.time()-$score_start,1))") s" | tee "$OUT/score-wall.txt"
  ranks train
  grep -h "steps:" "$OUT/train-rank0.log" | tail -n 1
  ranks baseline
  CUDA_VISIBLE_DEVICES=0 $D -q run /tmp/two-gpu.toml 2>&1 | tee "$OUT/two.log"
fi
two_wall=$(python3 -c "import time;print(round(time.time()-$two_start,1))")
one_wall=0
if [ "$ONE" = all ]; then
  one_start=$(date +%s.%N)
  export DISTILL_PROFILE_DIR=/tmp/multi/profile-one
  CUDA_VISIBLE_DEVICES=0 $D -q run /tmp/one-gpu.toml 2>&1 | tee "$OUT/one.log"
  one_wall=$(python3 -c "import time;print(round(time.time()-$one_start,1))")
fi
if [ -n "${PROFILE:-}" ]; then
  for side in one two; do
    for f in /tmp/multi/profile-$side/*.json; do
      [ -f "$f" ] || continue
      echo "## $side GPU(s): $(basename "$f")"
      python3 scripts/profile_summary.py "$f" --top 8 | head -n 40
    done
  done > "$OUT/profiles.txt" 2>&1
  tar czf "$OUT/traces.tgz" /tmp/multi/profile-*/*rank0.json 2>/dev/null || true
fi
for side in one two; do
  [ -f /tmp/multi/$side/$side-gpu/log.jsonl ] && gzip -c /tmp/multi/$side/$side-gpu/log.jsonl > "$OUT/log-$side.jsonl.gz"
done
python3 - "$two_wall" "$one_wall" <<'PY' | tee "$OUT/summary.txt"
import json, os, sys
runs = {"one GPU": "/tmp/multi/one/one-gpu", "two GPUs": "/tmp/multi/two/two-gpu"}
def seconds(run, stage):
    """The stage's seconds: its manifest's, or, when workers ran it, from the first to
    the last of its events in log.jsonl (whole seconds), if longer."""
    p = os.path.join(run, stage, "manifest.json")
    if not os.path.exists(p):
        return float("nan")
    s = json.load(open(p))["seconds"]
    stamps = []
    for line in open(os.path.join(run, "log.jsonl")):
        e = json.loads(line)
        if e.get("stage") == stage and "unix" in e:
            stamps.append(e["unix"])
    return max(s, max(stamps) - min(stamps)) if stamps else s
def steady(run, stage, after=50):
    """Optimizer steps per second from step `after` to the last step (log.jsonl's
    train_step events, whole-second stamps), or nan."""
    steps = []
    path = os.path.join(run, "log.jsonl")
    for line in open(path) if os.path.exists(path) else []:
        e = json.loads(line)
        if e.get("stage") == stage and e.get("event") == "train_step" and e["step"] >= after:
            steps.append((e["step"], e["unix"]))
    steps.sort()
    if len(steps) < 2 or steps[-1][1] == steps[0][1]:
        return float("nan")
    return (steps[-1][0] - steps[0][0]) / (steps[-1][1] - steps[0][1])
print(f"wall: two GPUs {sys.argv[1]} s, one GPU {sys.argv[2]} s")
print("| stage | one GPU s | two GPUs s | speed-up | steps/s after step 50: one | two | speed-up |")
print("|---|---|---|---|---|---|---|")
for stage in ["mine", "teacher", "score", "train", "baseline", "eval", "report"]:
    sa, sb = (seconds(runs[k], stage) for k in runs)
    ra, rb = (steady(runs[k], stage) for k in runs)
    rates = f"{ra:.1f} | {rb:.1f} | {rb / ra:.2f}x" if ra == ra and rb == rb else "| |"
    print(f"| {stage} | {sa:.1f} | {sb:.1f} | {sa / sb if sb else float('nan'):.2f}x | {rates} |")
print("\n| dataset | system | one GPU nDCG@10 | two GPUs nDCG@10 | difference |")
print("|---|---|---|---|---|")
metrics = {}
for k, run in runs.items():
    p = os.path.join(run, "eval", "metrics.json")
    metrics[k] = json.load(open(p)) if os.path.exists(p) else {}
for ds, v in metrics.get("two GPUs", {}).items():
    for model in [m for m in ("base", "distilled", "baseline") if m in v]:
        for system in ["student", "student+teacher"]:
            b = v[model][system]["ndcg@10"]
            a = metrics.get("one GPU", {}).get(ds, {}).get(model, {}).get(system, {}).get("ndcg@10", float("nan"))
            print(f"| {ds} | {model} {system} | {a:.4f} | {b:.4f} | {b - a:+.4f} |")
PY
