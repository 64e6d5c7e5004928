#!/usr/bin/env bash
# On the device machine (two GPUs): the split stages of `distill run --gpus 2` against one
# GPU, byte for byte. One GPU runs PIPELINE up to `score`; a copy of that run folder then
# redoes `mine` and `score` with two workers, and every file of both stages (manifests
# left out) is compared.
# Usage: bash scripts/gpu_split_identity.sh PIPELINE
set -euo pipefail
source "$(dirname "$0")/device_setup.sh"
P=$1
D=/tmp/distill
python3 - "$P" <<'PY'
import sys
text = open(sys.argv[1]).read()
for root in ["/tmp/identity/one", "/tmp/identity/two"]:
    name = root.rsplit("/", 1)[1]
    open(f"/tmp/identity-{name}.toml", "w").write(text.replace("[run]\n", f'[run]\noutput_root = "{root}"\n', 1))
PY
RUN=$(python3 -c "import tomllib;print(tomllib.load(open('$P','rb'))['run']['name'])")
CUDA_VISIBLE_DEVICES=0 $D -q run /tmp/identity-one.toml --only mine
CUDA_VISIBLE_DEVICES=0 $D -q run /tmp/identity-one.toml --only teacher
CUDA_VISIBLE_DEVICES=0 $D -q run /tmp/identity-one.toml --only score
mkdir -p /tmp/identity/two && cp -r "/tmp/identity/one/$RUN" /tmp/identity/two/
for stage in mine score; do
  start=$(date +%s.%N)
  $D -q run /tmp/identity-two.toml --only $stage --force --gpus 2
  echo "$stage with two workers: $(python3 -c "import time;print(round(time.time()-$start,1))") s"
done
python3 - "$RUN" <<'PY' | tee "$OUT/identity.txt"
import hashlib, os, sys
run = sys.argv[1]
def files(root):
    out = {}
    for stage in ["mine", "score"]:
        for d, _, names in os.walk(os.path.join(root, run, stage)):
            if "/." in d:
                continue
            for n in names:
                if n == "manifest.json" or n.startswith("."):
                    continue
                p = os.path.join(d, n)
                out[os.path.relpath(p, root)] = hashlib.sha256(open(p, "rb").read()).hexdigest()
    return out
a, b = files("/tmp/identity/one"), files("/tmp/identity/two")
print(f"files: one GPU {len(a)}, two GPUs {len(b)}")
for k in sorted(set(a) | set(b)):
    print(f"{'same' if a.get(k) == b.get(k) else 'DIFFERENT'}  {k}")
PY
