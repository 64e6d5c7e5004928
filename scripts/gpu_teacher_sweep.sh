#!/usr/bin/env bash
# Teacher recipes compared on the dev slice only (mine + teacher stages, nothing scored),
# on the device machine from carried files (as scripts/gpu_pipeline.sh):
#   .device/distill.gz, .device/minilm/, .device/data.tgz
# Usage: bash scripts/gpu_teacher_sweep.sh PIPELINE...
# Prints one row per pipeline: teacher steps, final loss, loss first/last 10%, and per
# dataset the dev slice's student and teacher-rerank nDCG@10.
set -euo pipefail
source "$(dirname "$0")/device_setup.sh"
OUTDIR=${OUT:-/tmp/out}
for PIPELINE in "$@"; do
  start=$(date +%s)
  /tmp/distill run "$PIPELINE" --only mine 2>&1 | tee -a "$OUTDIR/sweep.log"
  /tmp/distill run "$PIPELINE" --only teacher 2>&1 | tee -a "$OUTDIR/sweep.log"
  echo "$PIPELINE wall seconds: $(( $(date +%s) - start ))" | tee -a "$OUTDIR/sweep.log"
done
python3 - "$@" <<'PY' | tee "$OUTDIR/sweep.txt"
import json, sys, tomllib
print("| pipeline | steps | s | loss first / last 10% | dataset | dev q | student | teacher | gain |")
print("|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    c = tomllib.load(open(path, "rb"))
    run = c["run"].get("output_root", "checkpoints") + "/" + c["run"]["name"]
    try:
        m = json.load(open(run + "/teacher/manifest.json"))
    except OSError:
        print(f"| {path} | failed |"); continue
    s = m["summary"]
    for ds, v in s.get("dev", {}).items():
        print(f"| {path} | {s.get('steps')} | {m['seconds']:.0f} | {s.get('loss_first', 0):.3f} / {s.get('loss_last', 0):.3f} "
              f"| {ds} | {v['queries']} | {v['student']['ndcg@10']:.4f} | {v['teacher']['ndcg@10']:.4f} | {v['gain']:+.4f} |")
PY
