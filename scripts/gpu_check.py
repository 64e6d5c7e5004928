#!/usr/bin/env python3
"""GPU check of the encoders: distill on CUDA (fp32 and bf16) against sentence-transformers.

Runs on the device machine (PyTorch + sentence-transformers there, no Rust toolchain):

    python3 scripts/gpu_check.py --bin DIR/distill --model DIR/minilm --texts tests/fixtures/parity_texts.jsonl \
        --corpus corpus.jsonl.gz --out $OUT

1. parity: embeddings of the parity texts from `distill encode --device cuda` in fp32 and bf16,
   against SentenceTransformer on the CPU in fp32 (same weights);
2. throughput: the corpus encoded by distill (bf16) and by SentenceTransformer on CUDA
   (fp32 and bf16 weights), same batch size and max length.
Prints a Markdown table last.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import torch  # noqa: E402


def beir_docs(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def embedded_text(d: dict) -> str:
    title = d.get("title") or ""
    return f"{title} {d['text']}" if title else d["text"]


def distill_encode(binary: str, model: str, inp: str, out: str, precision: str, batch: int) -> float:
    cmd = [binary, "encode", "--model", model, "--input", inp, "--output", out, "--device", "cuda",
           "--precision", precision, "--batch-size", str(batch)]
    res = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(res.stderr[-2000:])
    if res.returncode != 0:
        raise SystemExit(f"distill failed: {' '.join(cmd)}")
    m = re.search(r"([\d.]+) texts/s", res.stderr)
    return float(m.group(1)) if m else float("nan")


def read_parquet(path: str) -> np.ndarray:
    return np.array(pq.read_table(path).column("embedding").to_pylist(), dtype=np.float32)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--model", required=True)
    ap.add_argument("--texts", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch-size", type=int, default=256)
    args = ap.parse_args()
    from sentence_transformers import SentenceTransformer

    os.makedirs(args.out, exist_ok=True)
    print(subprocess.run([args.bin, "--version"], capture_output=True, text=True).stdout.strip())
    print("torch", torch.__version__, torch.cuda.get_device_name(0))

    # 1. parity on the parity texts
    rows = [json.loads(line) for line in open(args.texts, encoding="utf-8") if line.strip()]
    beir = os.path.join(args.out, "texts.jsonl")
    with open(beir, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"_id": r["id"], "text": r["text"]}) + "\n")
    texts = [r["text"] for r in rows]
    ref = SentenceTransformer(args.model, device="cpu").encode(texts, batch_size=16, convert_to_numpy=True)
    table = []
    for precision in ["fp32", "bf16"]:
        out = os.path.join(args.out, f"texts_{precision}.parquet")
        distill_encode(args.bin, args.model, beir, out, precision, 16)
        got = read_parquet(out)
        cos = (got * ref).sum(1)
        table.append((f"distill cuda {precision}", np.abs(got - ref).max(), cos.min()))
    st_gpu = SentenceTransformer(args.model, device="cuda")
    for precision in ["fp32", "bf16"]:
        m = st_gpu if precision == "fp32" else st_gpu.to(torch.bfloat16)
        got = np.asarray(m.encode(texts, batch_size=16, convert_to_numpy=True), dtype=np.float32)
        cos = (got * ref).sum(1)
        table.append((f"sentence-transformers cuda {precision}", np.abs(got - ref).max(), cos.min()))

    # 2. throughput on the corpus
    docs = beir_docs(args.corpus)
    corpus = os.path.join(args.out, "corpus.jsonl")
    with open(corpus, "w", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")
    corpus_texts = [embedded_text(d) for d in docs]
    speed = []
    st_gpu = SentenceTransformer(args.model, device="cuda")
    for precision in ["fp32", "bf16"]:
        m = st_gpu if precision == "fp32" else st_gpu.to(torch.bfloat16)
        m.encode(corpus_texts[:512], batch_size=args.batch_size)
        torch.cuda.synchronize()
        t = time.perf_counter()
        m.encode(corpus_texts, batch_size=args.batch_size, convert_to_numpy=True)
        torch.cuda.synchronize()
        speed.append((f"sentence-transformers cuda {precision}", len(docs) / (time.perf_counter() - t)))
    for precision in ["fp32", "bf16"]:
        rate = distill_encode(args.bin, args.model, corpus, os.path.join(args.out, f"corpus_{precision}.parquet"),
                              precision, args.batch_size)
        speed.append((f"distill cuda {precision}", rate))

    print("\n| parity texts (%d) vs SentenceTransformer CPU fp32 | max abs diff | min cosine |" % len(texts))
    print("|---|---|---|")
    for name, diff, cos in table:
        print(f"| {name} | {diff:.2e} | {cos:.6f} |")
    print(f"\n| corpus ({len(docs)} docs, batch {args.batch_size}) | docs/s |")
    print("|---|---|")
    for name, rate in speed:
        print(f"| {name} | {rate:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
