#!/usr/bin/env bash
# Whole-pipeline variants compared on the dev slice only, on the device machine from
# carried files (as scripts/gpu_pipeline.sh): .device/distill.gz, .device/minilm/,
# .device/data.tgz.
# Usage: bash scripts/gpu_variants.sh PIPELINE...
# Prints per pipeline and dataset the dev slice's nDCG@10 of the base, distilled and
# baseline students (held-out training queries: never the test split) and the teacher's
# rerank there; the test numbers stay in the run folders until a recipe is chosen.
set -euo pipefail
source "$(dirname "$0")/device_setup.sh"
run_one() {
  local start; start=$(date +%s)
  local log; log="$OUT/$(basename "$1" .toml).log"
  /tmp/distill run "$1" --allow-weak-teacher > "$log" 2>&1 && rc=0 || rc=$?
  echo "rc $rc wall $(( $(date +%s) - start ))" >> "$log"
}
rows() {
python3 - "$@" <<'PY'
import json, sys, tomllib, os
for path in sys.argv[1:]:
    c = tomllib.load(open(path, "rb"))["run"]
    run = c.get("output_root", "checkpoints") + "/" + c["name"]
    stem = os.path.basename(path).removesuffix(".toml")
    wall = open(f"{os.environ['OUT']}/{stem}.log").read().strip().splitlines()[-1]
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
    for stage in ["mine", "teacher", "score", "train", "baseline", "eval"]:
        p = f"{run}/{stage}/manifest.json"
        if os.path.exists(p):
            s = json.load(open(p))
            print(f"{stem} {stage:8s} {s['seconds']:7.1f} s  steps {s['summary'].get('steps', '-')}", file=sys.stderr)
PY
}
echo "| pipeline | wall | dataset | dev q | base | distilled | baseline | gain from teacher | teacher rerank |" | tee "$OUT/variants.txt"
echo "|---|---|---|---|---|---|---|---|---|" | tee -a "$OUT/variants.txt"
for PIPELINE in "$@"; do
  run_one "$PIPELINE"
  rows "$PIPELINE" | tee -a "$OUT/variants.txt"
  # The run's metrics (test numbers included) come back for the record, unread here.
  name=$(python3 -c "import tomllib;print(tomllib.load(open('$PIPELINE','rb'))['run']['name'])")
  cp "checkpoints/$name/eval/metrics.json" "$OUT/$(basename "$PIPELINE" .toml).metrics.json" 2>/dev/null || true
done
