#!/usr/bin/env bash
# Run a pipeline on the device machine from carried files (see RESULTS.md):
#   .device/distill.gz         the release binary (gzip)
#   .device/minilm/            all-MiniLM-L6-v2 (fp16 safetensors, loaded as fp32)
#   .device/data.tgz           ../shared/data/{scifact,squad}
# Usage: bash scripts/gpu_pipeline.sh PIPELINE [distill run args...]
set -euo pipefail
source "$(dirname "$0")/device_setup.sh"
PIPELINE=$1; shift
OUTDIR=${OUT:-/tmp/out}
/tmp/distill --version
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
start=$(date +%s)
set +e
/tmp/distill run "$PIPELINE" "$@" 2>&1 | tee "$OUTDIR/run.log"
rc=${PIPESTATUS[0]}
set -e
echo "wall seconds: $(( $(date +%s) - start ))"
RUN=$(python3 -c "import tomllib,sys;c=tomllib.load(open('$PIPELINE','rb'));print(c['run'].get('output_root','checkpoints')+'/'+c['run']['name'])")
cp "$RUN/log.jsonl" "$OUTDIR/" 2>/dev/null || true
cp "$RUN/eval/metrics.json" "$OUTDIR/" 2>/dev/null || true
cp "$RUN/report/report.html" "$RUN/report/report.md" "$OUTDIR/" 2>/dev/null || true
python3 - "$RUN" <<'PY' | tee "$OUTDIR/summary.txt"
import json, sys, os
run = sys.argv[1]
for stage in ["mine", "teacher", "score", "train", "eval"]:
    p = os.path.join(run, stage, "manifest.json")
    if os.path.exists(p):
        m = json.load(open(p))
        s = json.dumps(m["summary"])
        print(f"{stage:8s} {m['seconds']:8.1f} s  rows {m['rows']:8d}  {s[:300]}")
p = os.path.join(run, "eval", "metrics.json")
if os.path.exists(p):
    m = json.load(open(p))
    print("\n| dataset | system | nDCG@10 | MRR@10 | R@10 | R@100 | teacher-top10 recall |")
    print("|---|---|---|---|---|---|---|")
    for ds, v in m.items():
        for model in ["base", "distilled"]:
            for system in ["student", "student+teacher"]:
                x = v[model][system]
                r = v[model]["student_recall_of_teacher_top10"] if system == "student" else float("nan")
                print(f"| {ds} | {model} {system} | {x['ndcg@10']:.4f} | {x['mrr@10']:.4f} | {x['recall@10']:.4f} | {x['recall@100']:.4f} | {r:.3f} |")
PY
exit $rc
