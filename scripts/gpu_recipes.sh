#!/usr/bin/env bash
# Recipe exploration on the device machine: run PIPELINE once, then for each variant
# (a file of [train] keys that replace the pipeline's [train] section) rerun only what
# the change invalidates (train and eval), and print one table row per variant.
#   bash scripts/gpu_recipes.sh PIPELINE VARIANT_FILE...
set -euo pipefail
PIPELINE=$1; shift
OUTDIR=${OUT:-/tmp/out}
mkdir -p "$OUTDIR"
export LD_LIBRARY_PATH=$(python3 -c 'import torch,os;print(os.path.dirname(torch.__file__)+"/lib")')
bash scripts/gpu_pipeline.sh "$PIPELINE" > "$OUTDIR/base.log" 2>&1 || { tail -50 "$OUTDIR/base.log"; exit 1; }
tail -12 "$OUTDIR/base.log"
echo  # the rows below are not part of that table
RUN=$(python3 -c "import tomllib;c=tomllib.load(open('$PIPELINE','rb'));print(c['run'].get('output_root','checkpoints')+'/'+c['run']['name'])")
rows=()
for v in "$@"; do
  name=$(basename "$v" .toml)
  # The pipeline with its [train] section replaced by the variant's keys.
  python3 - "$PIPELINE" "$v" > /tmp/variant.toml <<'PY'
import sys, re
text = open(sys.argv[1]).read()
variant = open(sys.argv[2]).read()
text = re.sub(r"\n\[train\][^\n]*\n(.*?)(?=\n\[|\Z)", "\n[train]\n" + variant.strip() + "\n", text, flags=re.S)
print(text)
PY
  start=$(date +%s)
  /tmp/distill -q run /tmp/variant.toml 2>&1 | tail -5
  secs=$(( $(date +%s) - start ))
  row=$(python3 - "$RUN" "$name" "$secs" <<'PY'
import json, sys
run, name, secs = sys.argv[1:]
m = json.load(open(f"{run}/eval/metrics.json"))
cells = []
for ds in ["scifact", "squad"]:
    d = m[ds]["distilled"]["student"]["ndcg@10"]
    b = m[ds]["base"]["student"]["ndcg@10"]
    t = m[ds]["base"]["student+teacher"]["ndcg@10"]
    cells.append(f"{d:.4f} ({(d - b) / (t - b) * 100:+.0f}% of gap)")
t = json.load(open(f"{run}/train/manifest.json"))
print(f"| {name} | {' | '.join(cells)} | {t['summary']['steps']} | {secs} |")
PY
)
  echo "$row"; rows+=("$row")
  cp "$RUN/eval/metrics.json" "$OUTDIR/metrics-$name.json"
done
echo
echo "| variant | SciFact nDCG@10 (distilled) | SQuAD nDCG@10 (distilled) | steps | train+eval s |"
echo "|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
