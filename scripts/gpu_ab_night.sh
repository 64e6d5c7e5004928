#!/usr/bin/env bash
# The same night with two binaries on one GPU of the device machine, each from a fresh
# output folder: .device/distill-old.{gz,xz} (before a change) and .device/distill.{gz,xz}
# (after), in the order of BINS (default "old new"). Prints each stage's seconds, eval's
# reranking and the nDCG@10 of both side by side; both runs' log.jsonl come back gzipped.
# PROFILE=FROM..TO: a Kineto trace of those optimizer steps of the new binary's training
# stages (DISTILL_PROFILE_STEPS), summarised in profiles.txt; the teacher's and train's
# traces come back in traces.tgz. Each binary's stage parts (`timing` events) come back
# in timings-BIN.txt; the summary gives each training loop's model arithmetic per second
# against PEAK_TFLOPS (default 989, the H200's dense bf16).
# Usage: bash scripts/gpu_ab_night.sh PIPELINE
set -euo pipefail
source "$(dirname "$0")/device_setup.sh"
P=$1
NAME=$(python3 -c "import tomllib;print(tomllib.load(open('$P','rb'))['run']['name'])")
case " ${BINS:-old new} " in *" old "*) unpack distill-old /tmp/distill-old ;; esac
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
for bin in ${BINS:-old new}; do
  B=/tmp/distill
  [ "$bin" = old ] && B=/tmp/distill-old
  sed "0,/^\[run\]$/s//[run]\noutput_root = \"\/tmp\/ab-$bin\"/" "$P" > "/tmp/ab-$bin.toml"
  if [ -n "${PROFILE:-}" ] && [ "$bin" = new ]; then
    export DISTILL_PROFILE_STEPS=$PROFILE DISTILL_PROFILE_DIR=/tmp/ab-profile
  fi
  start=$(date +%s.%N)
  $B -q run "/tmp/ab-$bin.toml" > "$OUT/$bin.log" 2>&1 || { echo "$bin failed"; tail -n 20 "$OUT/$bin.log"; }
  echo "$bin: wall $(python3 -c "import time;print(round(time.time()-$start,1))") s"
  unset DISTILL_PROFILE_STEPS DISTILL_PROFILE_DIR
  gzip -c "/tmp/ab-$bin/$NAME/log.jsonl" > "$OUT/log-$bin.jsonl.gz" || true
  # Each stage's parts (`timing` events) in order, for where a stage's seconds go.
  python3 -c "
import json, sys
for l in open(sys.argv[1]):
    e = json.loads(l)
    if e.get('event') == 'timing':
        print(f\"{e['stage']:9s} {e['seconds']:7.2f}  {e['part']}\")
" "/tmp/ab-$bin/$NAME/log.jsonl" > "$OUT/timings-$bin.txt" 2>&1 || true
done
if [ -n "${PROFILE:-}" ]; then
  for f in /tmp/ab-profile/*.json; do
    [ -f "$f" ] || continue
    echo "## $(basename "$f")"
    python3 scripts/profile_summary.py "$f" --top 8 --host 15 | head -n 120
  done > "$OUT/profiles.txt" 2>&1
  tar czf "$OUT/traces.tgz" /tmp/ab-profile/teacher*.json /tmp/ab-profile/train*.json 2>/dev/null || true
fi
python3 - "$NAME" ${BINS:-old new} <<'PY' | tee "$OUT/summary.txt"
import json, os, sys
name, bins = sys.argv[1], sys.argv[2:]
runs = {b: f"/tmp/ab-{b}/{name}" for b in bins}
def manifest(run, stage):
    p = os.path.join(run, stage, "manifest.json")
    return json.load(open(p)) if os.path.exists(p) else None
print("| stage | " + " | ".join(f"{b} (s)" for b in bins) + " |")
print("|---|" + "---|" * len(bins))
total = {b: 0.0 for b in bins}
for stage in ["mine", "teacher", "score", "train", "baseline", "eval", "report"]:
    cells = []
    for b in bins:
        m = manifest(runs[b], stage)
        s = m["seconds"] if m else float("nan")
        total[b] += s
        cells.append(f"{s:.1f}")
    print(f"| {stage} | " + " | ".join(cells) + " |")
print("| all stages | " + " | ".join(f"{total[b]:.1f}" for b in bins) + " |")
for b in bins:
    path = os.path.join(runs[b], "log.jsonl")
    parts = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    rerank = [e for e in parts if e.get("event") == "timing" and e.get("stage") == "eval" and "reranking" in e["part"]]
    secs = sum(e["seconds"] for e in rerank)
    print(f"{b}: eval reranking {secs:.1f} s in {len(rerank)} parts; first: {rerank[0]['part'] if rerank else '-'}")
    # Model arithmetic of each training loop (`throughput` events), against the bf16
    # dense peak PEAK_TFLOPS (default 989: NVIDIA's H200 SXM figure, 1,979 with sparsity).
    peak = float(os.environ.get("PEAK_TFLOPS", "989"))
    for e in (e for e in parts if e.get("event") == "throughput"):
        rate = e["flops"] / e["seconds"] / 1e12
        print(f"{b}: {e['stage']} {e['steps']} steps, {e['rows']:,} rows, {e['tokens']:,} real tokens "
              f"in {e['seconds']:.1f} s: {e['flops'] / 1e15:.2f} PFLOP, {rate:.0f} TFLOP/s, "
              f"{100 * rate / peak:.1f}% of {peak:.0f}")
print("\n| dataset | system | " + " | ".join(bins) + " |")
print("|---|---|" + "---|" * len(bins))
metrics = {b: (json.load(open(p)) if os.path.exists(p := os.path.join(runs[b], "eval", "metrics.json")) else {}) for b in bins}
for ds, v in metrics[bins[-1]].items():
    for model in [m for m in ("base", "distilled", "baseline") if m in v]:
        for system in ["student", "student+teacher"]:
            vals = [metrics[b].get(ds, {}).get(model, {}).get(system, {}).get("ndcg@10", float("nan")) for b in bins]
            print(f"| {ds} | {model} {system} | " + " | ".join(f"{x:.4f}" for x in vals) + " |")
PY
