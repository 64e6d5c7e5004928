#!/usr/bin/env bash
# CPU encode benchmark: `distill encode` against sentence-transformers' `encode` on the
# same corpus, same model, same max length, same machine, one after the other.
#   scripts/bench_cpu_encode.sh [CORPUS] [OUTDIR]
# Prints a Markdown table (docs/s, ratio, agreement with sentence-transformers fp32).
set -euo pipefail
cd "$(dirname "$0")/.."
CORPUS=${1:-../shared/data/scifact/corpus.jsonl}
OUT=${2:-target/bench-cpu}
MODEL=models/all-MiniLM-L6-v2
BATCH=32
MAXLEN=256
PY=.venv/bin/python
BIN=target/release/distill
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

for dtype in fp32 bf16; do
  $PY scripts/bench_st_encode.py --corpus "$CORPUS" --model $MODEL --batch-size $BATCH \
    --max-seq-length $MAXLEN --dtype $dtype --output "$OUT/st_$dtype.json" \
    --embeddings-out "$OUT/st_$dtype.npy"
  $BIN encode --model $MODEL --input "$CORPUS" --output "$OUT/distill_$dtype.parquet" \
    --device cpu --precision $dtype --batch-size $BATCH --max-seq-length $MAXLEN 2>&1 \
    | tail -n 1 | tee "$OUT/distill_$dtype.log"
done

$PY - "$OUT" <<'PY'
import json, re, sys, numpy as np, pyarrow.parquet as pq, platform, os
out = sys.argv[1]
ref = np.load(f"{out}/st_fp32.npy")
def agree(x):
    cos = (x * ref).sum(1) / (np.linalg.norm(x, axis=1) * np.linalg.norm(ref, axis=1))
    return np.abs(x - ref).max(), cos.min()
rows = []
for dtype in ["fp32", "bf16"]:
    st = json.load(open(f"{out}/st_{dtype}.json"))
    log = open(f"{out}/distill_{dtype}.log").read()
    m = re.search(r"encoded (\d+) texts .* in ([\d.]+) s: ([\d.]+) texts/s", log)
    ours = float(m.group(3))
    emb = np.array(pq.read_table(f"{out}/distill_{dtype}.parquet").column("embedding").to_pylist(), dtype=np.float32)
    rows.append((f"sentence-transformers {dtype}", st["docs_per_s"], st["docs_per_s"]) + agree(np.load(f"{out}/st_{dtype}.npy")))
    rows.append((f"distill {dtype}", ours, st["docs_per_s"]) + agree(emb))
base = rows[0][1]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
print(f"\n{st['num_docs']} docs, max_seq_length {st['max_seq_length']}, batch {st['batch_size']}, {os.cpu_count()} cores ({cpu}), torch threads {st['num_threads']}\n")
print("| encoder | docs/s | vs sentence-transformers fp32 | vs same-dtype sentence-transformers | max abs diff vs ST fp32 | min cosine vs ST fp32 |")
print("|---|---|---|---|---|---|")
for name, rate, same, diff, cos in rows:
    print(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {rate / same:.2f}x | {diff:.2e} | {cos:.6f} |")
PY
