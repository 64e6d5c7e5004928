#!/usr/bin/env bash
# Whole-pipeline variants compared on the dev slice only, on the device machine from
# carried files (as scripts/gpu_pipeline.sh): .device/distill.gz, .device/minilm/,
# .device/data.tgz. Each pipeline runs fresh under its own run name, two at a time.
# Usage: bash scripts/gpu_variants.sh PIPELINE...
# Prints per pipeline and dataset the dev slice's nDCG@10 of the base, distilled and
# baseline students (held-out training queries: never the test split) and the teacher's
# rerank there; the test numbers stay in the run folders until a recipe is chosen.
set -euo pipefail
source "$(dirname "$0")/device_setup.sh"
run_one() {
  local name; name=$(python3 -c "import tomllib;print(tomllib.load(open('$1','rb'))['run']['name'])")
  local start; start=$(date +%s)
  /tmp/distill run "$1" --allow-weak-teacher > "$OUT/$name.log" 2>&1 && rc=0 || rc=$?
  echo "rc $rc wall $(( $(date +%s) - start ))" >> "$OUT/$name.log"
}
pending=()
for PIPELINE in "$@"; do
  run_one "$PIPELINE" &
  pending+=($!)
  if (( ${#pending[@]} >= 2 )); then wait "${pending[0]}"; pending=("${pending[@]:1}"); fi
  sleep 2
done
wait
python3 - "$@" <<'PY' | tee "$OUT/variants.txt"
import json, sys, tomllib, os
print("| pipeline | wall | dataset | dev q | base | distilled | baseline | gain from teacher | teacher rerank |")
print("|---|---|---|---|---|---|---|---|---|")
for path in sys.argv[1:]:
    c = tomllib.load(open(path, "rb"))["run"]
    run = c.get("output_root", "checkpoints") + "/" + c["name"]
    wall = open(f"{os.environ['OUT']}/{c['name']}.log").read().strip().splitlines()[-1]
    try:
        m = json.load(open(run + "/eval/metrics.json"))
        t = json.load(open(run + "/teacher/manifest.json"))["summary"]["dev"]
    except OSError as e:
        print(f"| {path} | {wall} | failed: {e} |"); continue
    for ds, v in m.items():
        d = v.get("dev", {})
        g = lambda k: d.get(k, {}).get("ndcg@10", float("nan"))
        tr = t.get(ds, {}).get("teacher", {}).get("ndcg@10", float("nan"))
        print(f"| {path} | {wall} | {ds} | {d.get('queries')} | {g('base'):.4f} | {g('distilled'):.4f} "
              f"| {g('baseline'):.4f} | {g('distilled') - g('baseline'):+.4f} | {tr:.4f} |")
for path in sys.argv[1:]:
    c = tomllib.load(open(path, "rb"))["run"]
    run = c.get("output_root", "checkpoints") + "/" + c["name"]
    for stage in ["mine", "teacher", "score", "train", "baseline", "eval"]:
        p = f"{run}/{stage}/manifest.json"
        if os.path.exists(p):
            s = json.load(open(p))
            summary = {k: v for k, v in s["summary"].items() if k != "dev"}
            print(f"{c['name']} {stage:8s} {s['seconds']:7.1f} s  {json.dumps(summary)[:300]}")
PY
# The run folders' metrics (test numbers included) come back for the record, unread here.
for PIPELINE in "$@"; do
  name=$(python3 -c "import tomllib;print(tomllib.load(open('$PIPELINE','rb'))['run']['name'])")
  cp "checkpoints/$name/eval/metrics.json" "$OUT/$name.metrics.json" 2>/dev/null || true
done
