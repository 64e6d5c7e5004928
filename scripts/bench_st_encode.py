#!/usr/bin/env python3
"""Time SentenceTransformer.encode on a BEIR corpus (CPU), as the Python baseline for the Rust encoder.

    bench_st_encode.py --corpus PATH/corpus.jsonl --model DIR [--batch-size 32] [--max-seq-length 256]
                       [--limit N] --output OUT.json

Documents are embedded as BEIR does: (title + " " + text).strip() when the title is non-empty, else
text.strip(). A warm-up encode of the first 32 documents is not counted.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

transformers.utils.logging.disable_progress_bar()


def read_corpus(path: str, limit: int | None) -> tuple[list[str], list[str]]:
    ids, docs = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            if limit is not None and len(ids) >= limit:
                break
            d = json.loads(line)
            title, text = (d.get("title") or ""), (d.get("text") or "")
            ids.append(str(d["_id"]))
            docs.append((title + " " + text).strip() if title else text.strip())
    return ids, docs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", required=True, help="BEIR corpus.jsonl (_id, title, text)")
    ap.add_argument("--model", required=True)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-seq-length", type=int, default=256)
    ap.add_argument("--limit", type=int, default=None, help="only the first N documents")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="model weights dtype")
    ap.add_argument("--embeddings-out", default=None, help="also save the embeddings (.npy, ids order)")
    ap.add_argument("--output", required=True)
    args = ap.parse_args()

    from sentence_transformers import SentenceTransformer

    ids, docs = read_corpus(args.corpus, args.limit)
    if not docs:
        print(f"no documents in {args.corpus}", file=sys.stderr)
        return 1
    model = SentenceTransformer(args.model, device="cpu")
    model.max_seq_length = args.max_seq_length
    if args.dtype == "bf16":
        model = model.to(torch.bfloat16)
    model.eval()

    def encode(texts: list[str]) -> np.ndarray:
        with torch.inference_mode():
            return model.encode(texts, batch_size=args.batch_size, convert_to_numpy=True, show_progress_bar=False)

    encode(docs[:32])  # warm-up, not timed
    start = time.perf_counter()
    emb = np.asarray(encode(docs), dtype=np.float32)
    seconds = time.perf_counter() - start
    if args.embeddings_out:
        np.save(args.embeddings_out, emb)

    result = {
        "model": args.model,
        "corpus": args.corpus,
        "num_docs": len(docs),
        "batch_size": args.batch_size,
        "dtype": args.dtype,
        "max_seq_length": args.max_seq_length,
        "num_threads": torch.get_num_threads(),
        "seconds": seconds,
        "docs_per_s": len(docs) / seconds,
        "dim": int(emb.shape[1]),
        "first_ids": ids[:5],
        "first_embeddings": emb[:5].tolist(),
        "checksum": {
            "sum": float(emb.astype(np.float64).sum()),
            "abs_sum": float(np.abs(emb.astype(np.float64)).sum()),
            "sha256_f32": hashlib.sha256(np.ascontiguousarray(emb).tobytes()).hexdigest(),
        },
        "versions": {"torch": torch.__version__,
                     "sentence_transformers": __import__("sentence_transformers").__version__},
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    print(f"{len(docs)} docs in {seconds:.2f}s = {result['docs_per_s']:.1f} docs/s "
          f"(batch {args.batch_size}, max_seq_length {args.max_seq_length}, {result['num_threads']} threads) -> {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
