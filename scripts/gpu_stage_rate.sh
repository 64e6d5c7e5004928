#!/usr/bin/env bash
# One training stage of a pipeline, alone, with the carried binary and an older one, on
# one GPU and on two (`--gpus 2`), on the device machine (nvidia-h200-x2): its seconds and
# its optimizer steps per second from step 50 (log.jsonl's train_step events), for telling
# two binaries' rates apart on the same host. Prints a line per run and appends it to
# $OUT/rates.txt.
#   .device/distill.gz       the binary under test ("new")
#   .device/distill-old.gz   the one to compare with ("old"), when BINS names it
# Usage: [STAGE=teacher] [BINS="old new"] [MODES="one two"] bash scripts/gpu_stage_rate.sh PIPELINE
# The stages before STAGE run once, with the new binary, on one GPU.
set -euo pipefail
source "$(dirname "$0")/device_setup.sh"
export NCCL_NVLS_ENABLE=0
P=$1
STAGE=${STAGE:-teacher}
[ -f .device/distill-old.gz ] && gunzip -c .device/distill-old.gz > /tmp/distill-old && chmod +x /tmp/distill-old
python3 - "$P" <<'PY'
import re, sys
t = open(sys.argv[1]).read()
t = re.sub(r'(?m)^name = ".*"$', 'name = "rate"', t, count=1)
t = t.replace("[run]\n", '[run]\noutput_root = "/tmp/rate"\n', 1)
open("/tmp/rate.toml", "w").write(t)
PY
R=/tmp/rate/rate
for s in mine teacher score train baseline; do
  [ "$s" = "$STAGE" ] && break
  CUDA_VISIBLE_DEVICES=0 /tmp/distill -q run /tmp/rate.toml --only "$s"
done
for bin in ${BINS:-old new}; do
  B=/tmp/distill; [ "$bin" = old ] && B=/tmp/distill-old
  for mode in ${MODES:-one two}; do
    rm -f $R/log.jsonl
    start=$(date +%s.%N)
    if [ "$mode" = one ]; then
      CUDA_VISIBLE_DEVICES=0 $B -q run /tmp/rate.toml --only "$STAGE" --force > "$OUT/$bin-$mode.log" 2>&1 || true
    else
      $B -q run /tmp/rate.toml --only "$STAGE" --force --gpus 2 > "$OUT/$bin-$mode.log" 2>&1 || true
    fi
    python3 - "$bin" "$mode" "$start" "$STAGE" <<'PY' | tee -a "$OUT/rates.txt"
import json, sys, time
bin_, mode, start, stage = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
steps = {}
for line in open("/tmp/rate/rate/log.jsonl"):
    e = json.loads(line)
    if e.get("stage") == stage and e.get("event") == "train_step" and e["step"] >= 50:
        steps.setdefault(e["step"], e["unix"])
k = sorted(steps)
rate = (k[-1] - k[0]) / (steps[k[-1]] - steps[k[0]]) if len(k) > 1 else float("nan")
m = json.load(open(f"/tmp/rate/rate/{stage}/manifest.json"))
print(f"{bin_} {mode}: {stage} {m['seconds']:.1f} s, wall {time.time() - start:.1f} s, {rate:.1f} steps/s after step 50")
PY
  done
done
