#!/usr/bin/env bash
# A night at scale on the device machine, stage by stage, from carried files (see
# scripts/device_setup.sh): a seeded dataset of N passages (scripts/make_scale_data.py),
# then each stage run alone with its wall time, peak RSS and the manifest's figures.
# Usage: bash scripts/gpu_scale.sh N TRAIN_QUERIES TEST_QUERIES "STAGES" [NEGATIVES]
#   e.g. bash scripts/gpu_scale.sh 1000000 100000 5000 "mine teacher score" 29
# A second call on the same (warm) machine with later stages goes on from the first.
# SCALE_LOCAL=1 DISTILL=target/release/distill OUT=DIR: the same on this machine (a
# smoke test with a small N), without the device setup.
# TEACHER_FAST=1: a teacher of one epoch in large batches (about 400 steps at 100k
# queries), for measuring the other stages' speed only.
# MINE_EXTRA=$'corpus_chunk = 262144': more keys of the [mine] table.
# STAGE_ARGS="--gpus 2 --force": appended to each stage's `distill run` (a second call with
# it redoes the given stages on two GPUs over the same run).
set -euo pipefail
[ -n "${SCALE_LOCAL:-}" ] || source "$(dirname "$0")/device_setup.sh"
export DISTILL=${DISTILL:-/tmp/distill}
# Batches sized for the GPU; SCALE_LOCAL runs small ones, and a short teacher.
BATCH=512; TEACHER_TRAIN=""
if [ -n "${SCALE_LOCAL:-}" ]; then
    BATCH=16; TEACHER_TRAIN=$'[teacher_train]\nmin_steps = 10\nbatch_queries = 4\nnegatives = 3'
fi
if [ -n "${TEACHER_FAST:-}" ]; then
    TEACHER_TRAIN=$'[teacher_train]\nmin_steps = 0\nbatch_queries = 256\nnegatives = 3'
fi
export STAGE_ARGS=${STAGE_ARGS:-}
N=$1; Q=$2; T=$3; STAGES=$4; NEG=${5:-29}
DATA=/tmp/scale-$N
if [ ! -f "$DATA/corpus.jsonl" ]; then
    python3 scripts/make_scale_data.py --passages "$N" --train-queries "$Q" --test-queries "$T" \
        --out "$DATA" 2>&1 | tail -1 | tee "$OUT/data.txt"
fi
PIPE=/tmp/scale-$N.toml
cat > "$PIPE" <<TOML
[run]
name = "scale-$N"
output_root = "/tmp/scale-runs"
[student]
path = "models/all-MiniLM-L6-v2"
batch_size = $BATCH
[teacher]
base = "models/all-MiniLM-L6-v2"
batch_size = $BATCH
$TEACHER_TRAIN
[[dataset]]
name = "scale"
path = "$DATA"
[mine]
top_k = 100
num_negatives = $NEG
${MINE_EXTRA:-}
[score]
absolute_margin = 0.5
[train]
epochs = 1
batch_queries = 32
negatives = 7
[eval]
top_k = 1000
rerank_k = 100
[health]
allow_weak_teacher = true
TOML
echo "| stage | rc | wall s | stage s | rows | rows/s | peak RSS GB |" | tee -a "$OUT/stages.txt"
for stage in $STAGES; do
    python3 - "$stage" "$PIPE" <<'PY' | tee -a "$OUT/stages.txt"
import json, os, resource, subprocess, sys, time
stage, pipe = sys.argv[1:3]
t = time.time()
p = subprocess.run([os.environ["DISTILL"], "-q", "run", pipe, "--only", stage] + os.environ["STAGE_ARGS"].split(),
                   stdout=subprocess.DEVNULL, stderr=open(os.environ["OUT"] + f"/{stage}.log", "w"))
wall = time.time() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024 / 1e9  # KiB
m = json.load(open(f"/tmp/scale-runs/{os.path.basename(pipe)[:-5]}/{stage}/manifest.json")) if p.returncode == 0 else {}
rows, secs = m.get("rows", 0), m.get("seconds", float("nan"))
peak = json.dumps(m.get("summary", {}).get("peak_gpu_memory_gib", "-"))
print(f"| {stage} | {p.returncode} | {wall:.1f} | {secs:.1f} | {rows} | {rows / secs if secs == secs and secs else 0:.0f} | {rss:.2f} |")
PY
done
cp /tmp/scale-runs/scale-$N/report/report.html "$OUT/" 2>/dev/null || true
# Per stage: its events, and its peak RSS as the process measured it (`stage_finished`).
gzip -c /tmp/scale-runs/scale-$N/log.jsonl > "$OUT/log.jsonl.gz" 2>/dev/null || true
