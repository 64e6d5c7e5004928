#!/usr/bin/env bash
# Fresh runs of one pipeline side by side on the device machine's one GPU, from carried
# files (as scripts/gpu_pipeline.sh): .device/distill.gz, .device/minilm/, .device/data.tgz
# Usage: bash scripts/gpu_runs.sh PIPELINE N [distill run args...]   (runs <name>-r1 .. <name>-rN)
# Prints per run: wall seconds, the teacher's dev-slice check, and per dataset nDCG@10 of
# the base, distilled and baseline students and the teacher rerank.
set -euo pipefail
source "$(dirname "$0")/device_setup.sh"
PIPELINE=$1; N=$2
NAME=$(python3 -c "import tomllib;print(tomllib.load(open('$PIPELINE','rb'))['run']['name'])")
ROOT=$(python3 -c "import tomllib;print(tomllib.load(open('$PIPELINE','rb'))['run'].get('output_root','checkpoints'))")
for i in $(seq 1 "$N"); do
  ( start=$(date +%s); /tmp/distill run "$PIPELINE" --name "$NAME-r$i" "${@:3}" > "$OUT/$NAME-r$i.log" 2>&1; \
    echo "rc $? wall $(( $(date +%s) - start ))" >> "$OUT/$NAME-r$i.log" ) &
  sleep 2
done
wait
python3 - "$ROOT" "$NAME" "$N" <<'PY' | tee "$OUT/runs.txt"
import json, sys, os
root, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
print("| run | wall | dataset | dev: student / teacher | base | distilled | baseline | gain from teacher | teacher rerank |")
print("|---|---|---|---|---|---|---|---|---|")
for i in range(1, n + 1):
    run = f"{root}/{name}-r{i}"
    wall = open(f"{os.environ['OUT']}/{name}-r{i}.log").read().strip().splitlines()[-1]
    try:
        dev = json.load(open(f"{run}/teacher/manifest.json"))["summary"]["dev"]
        m = json.load(open(f"{run}/eval/metrics.json"))
    except OSError as e:
        print(f"| r{i} | {wall} | failed: {e} |"); continue
    for ds, v in m.items():
        g = lambda model, sys="student": v.get(model, {}).get(sys, {}).get("ndcg@10", float("nan"))
        d = dev.get(ds, {})
        dv = f"{d['student']['ndcg@10']:.4f} / {d['teacher']['ndcg@10']:.4f}" if d else "-"
        print(f"| r{i} | {wall} | {ds} | {dv} | {g('base'):.4f} | {g('distilled'):.4f} | {g('baseline'):.4f} "
              f"| {v.get('gain_from_teacher', float('nan')):+.4f} | {g('distilled', 'student+teacher'):.4f} |")
for i in range(1, n + 1):
    run = f"{root}/{name}-r{i}"
    for stage in ["mine", "teacher", "score", "train", "baseline", "eval"]:
        p = f"{run}/{stage}/manifest.json"
        if os.path.exists(p):
            s = json.load(open(p))
            print(f"r{i} {stage:8s} {s['seconds']:7.1f} s  {json.dumps(s['summary'])[:260]}")
    h = f"{run}/report/health.json"
    if os.path.exists(h):
        for f in json.load(open(h)):
            print(f"r{i} health: {f['message']}")
PY
