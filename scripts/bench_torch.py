#!/usr/bin/env python3
"""PyTorch + transformers reference side of the GPU benchmark (`distill bench` runs it and parses stdout).

    bench_torch.py --workload {w1,w2,w3,w4} [--device cuda] [--seconds 10] [--warmup 3] [--seed 0] [--small]

Model: MiniLM-L6 shapes (hidden 384, 6 layers, 12 heads, intermediate 1536, vocab 30522, 512 positions),
RANDOM weights from a BertConfig (nothing is downloaded), attn_implementation="sdpa". Inputs are padded to
the longest sequence of each batch, as the HF tokenizer does with padding="longest".

  w1 encode  BertModel forward + mean pooling over the attention mask + L2 normalise; 256 passages a batch,
             lengths uniform in [128, 256] ([CLS] ... [SEP], ids in [1000, 30000)); inference_mode, bf16
             autocast. items = passages.
  w2 score   BertForSequenceClassification(num_labels=1) on (query, passage) pairs; 256 pairs a batch, total
             lengths uniform in [128, 256], token_type_ids 0 for the first 16-32 tokens ([CLS] q [SEP]) and 1
             after; inference_mode, bf16 autocast. items = pairs.
  w3 train   one distillation step per iteration: 64 queries (lengths [16, 32]) with 1 positive + 7 negatives
             each (lengths [100, 200]); BertModel in train mode (dropout 0.1) encodes the queries (one batch)
             and the 512 passages (one batch), mean-pools, normalises. loss = MarginMSE (MSE between
             s(q,pos) - s(q,neg_i) and random teacher margins fixed per batch) + MultipleNegativesRanking
             (cross-entropy of 20 * cos(q, all 64 positives + 448 negatives), target = own positive).
             bf16 autocast forward, fp32 master weights, backward, AdamW (lr 2e-5, fused on cuda),
             zero_grad(set_to_none=True). items = queries.
  w4 mine    exact top-100 inner-product search of 100,000 queries over 1,000,000 passages (dim 384,
             random normal, L2-normalised, bf16 on the device); one iteration = one chunk of 4096 queries:
             bf16 matmul (fp32 accumulation) + torch.topk(k=100) on the bf16 scores. items = queries.

  --small shrinks everything for a CPU smoke test (tiny batches and lengths, w4: 1000 x 10,000).

Timing: a fixed set of distinct batches is generated up front on the device and cycled; --warmup iterations
run first, then the device is synchronised and peak memory stats reset, then iterations run (synchronising
only every ~0.25 s to check the clock) until --seconds have elapsed, then a final synchronise.

Output: exactly one JSON line on stdout (everything else goes to stderr):
  {"workload": "w1", "impl": "pytorch", "items": int, "seconds": float, "items_per_s": float,
   "peak_mem_bytes": int (torch.cuda.max_memory_allocated over the timed part, 0 on cpu),
   "useful_tokens": int (unpadded tokens in the timed part, 0 for w4),
   "useful_flops": float (see useful_flops(); w4: 2 * queries * passages * dim), "note": str}
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import transformers  # noqa: E402

CLS, SEP = 101, 102


def useful_flops(lengths, layers: int = 6, h: int = 384, i: int = 1536) -> float:
    """Forward matmul FLOPs of the encoder layers over the UNPADDED tokens of sequences of the given lengths.

    Per token per layer:  2 * (4*h*h + 2*h*i)   Q, K, V, output projections (4 h x h) + FFN up/down (2 h x i)
                        + 2 * 2 * L * h         Q.K^T and A.V against the L keys of the token's own sequence
    so a sequence of unpadded length L costs  layers * L * (2*(4*h*h + 2*h*i) + 4*L*h).
    Embeddings, layer norms, softmax, pooling, heads and losses are not counted; padding is not counted.
    MiniLM-L6 (h=384, i=1536): per token per layer 3,538,944 + 1,536*L.  Training (w3): multiply by 3.
    """
    L = np.asarray(lengths, dtype=np.float64)
    return float(layers * np.sum(L * (2.0 * (4 * h * h + 2 * h * i) + 4.0 * L * h)))


def bert_config(**kw) -> transformers.BertConfig:
    return transformers.BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                                   intermediate_size=1536, max_position_embeddings=512,
                                   hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
                                   attn_implementation="sdpa", **kw)


def make_batch(rng, lengths, device, segment_a=None):
    """[CLS] random ids [SEP], padded with 0 to the batch max. segment_a: per-row length of segment A
    ([CLS] q [SEP]); token_type_ids 1 after it. Returns a dict of model inputs on `device`."""
    B, T = len(lengths), int(max(lengths))
    ids = np.zeros((B, T), np.int64)
    mask = np.zeros((B, T), np.int64)
    tt = np.zeros((B, T), np.int64)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(1000, 30000, n)
        ids[r, 0], ids[r, n - 1] = CLS, SEP
        mask[r, :n] = 1
        if segment_a is not None:
            ids[r, segment_a[r] - 1] = SEP
            tt[r, segment_a[r]:n] = 1
    out = {"input_ids": ids, "attention_mask": mask}
    if segment_a is not None:
        out["token_type_ids"] = tt
    return {k: torch.from_numpy(v).to(device) for k, v in out.items()}


def mean_pool_normalise(hidden, mask):
    m = mask.unsqueeze(-1).to(hidden.dtype)
    return F.normalize((hidden * m).sum(1) / m.sum(1).clamp(min=1e-9), dim=-1)


def build(args, device, rng):
    """Returns (step(i) -> None, per-batch list of (items, tokens, flops), note)."""
    s = args.small
    nb = 4 if s else 16
    autocast = torch.autocast(device.type, dtype=torch.bfloat16)
    torch.manual_seed(args.seed)
    w = args.workload

    if w in ("w1", "w2"):
        bs, lo, hi = (8, 16, 32) if s else (256, 128, 256)
        batches, stats = [], []
        for _ in range(nb):
            lengths = rng.integers(lo, hi + 1, bs)
            seg = None  # w2: segment A = [CLS] query [SEP], 16-32 tokens (4-8 with --small)
            if w == "w2":
                seg = rng.integers(4, 9, bs) if s else rng.integers(16, 33, bs)
            batches.append(make_batch(rng, lengths, device, seg))
            stats.append((bs, int(lengths.sum()), useful_flops(lengths)))
        if w == "w1":
            model = transformers.BertModel(bert_config()).to(device).eval()

            def step(k):
                b = batches[k % nb]
                with torch.inference_mode(), autocast:
                    out = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
                    mean_pool_normalise(out.last_hidden_state, b["attention_mask"])
            return step, stats, f"BertModel sdpa, bf16 autocast, inference_mode, batch {bs}, lengths {lo}-{hi}, pad to longest"

        model = transformers.BertForSequenceClassification(bert_config(num_labels=1)).to(device).eval()

        def step(k):
            with torch.inference_mode(), autocast:
                model(**batches[k % nb]).logits
        return step, stats, f"BertForSequenceClassification(1) sdpa, bf16 autocast, inference_mode, batch {bs}, lengths {lo}-{hi}, pad to longest"

    if w == "w3":
        nq, nneg = (8, 7) if s else (64, 7)
        (qlo, qhi), (plo, phi) = ((8, 12), (16, 32)) if s else ((16, 32), (100, 200))
        batches, stats = [], []
        for _ in range(nb):
            ql = rng.integers(qlo, qhi + 1, nq)
            pl = rng.integers(plo, phi + 1, nq * (1 + nneg))  # nq positives, then nneg negatives per query
            teacher = torch.from_numpy(rng.normal(0.0, 3.0, (nq, 1 + nneg)).astype(np.float32)).to(device)
            margins = teacher[:, :1] - teacher[:, 1:]  # [nq, nneg] teacher s(q,pos) - s(q,neg_i)
            batches.append((make_batch(rng, ql, device), make_batch(rng, pl, device), margins))
            stats.append((nq, int(ql.sum() + pl.sum()), 3.0 * (useful_flops(ql) + useful_flops(pl))))
        model = transformers.BertModel(bert_config()).to(device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=(device.type == "cuda"))
        labels = torch.arange(nq, device=device)

        def step(k):
            q, p, margins = batches[k % nb]
            with autocast:
                eq = mean_pool_normalise(model(**q).last_hidden_state, q["attention_mask"])
                ep = mean_pool_normalise(model(**p).last_hidden_state, p["attention_mask"])
                pos, neg = ep[:nq], ep[nq:].view(nq, nneg, -1)
                s_pos = (eq * pos).sum(-1, keepdim=True)                  # [nq, 1]
                s_neg = torch.einsum("qd,qnd->qn", eq, neg)                # [nq, nneg]
                margin_mse = F.mse_loss((s_pos - s_neg).float(), margins)
                mnrl = F.cross_entropy(20.0 * (eq @ ep.T).float(), labels)  # all positives + all negatives
                loss = margin_mse + mnrl
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        note = (f"BertModel sdpa train (dropout 0.1), bf16 autocast fwd, fp32 master, AdamW fused={device.type == 'cuda'}, "
                f"{nq} q x (1+{nneg}) p, MarginMSE + MNRL(scale 20), flops x3")
        return step, stats, note

    # w4
    nq, npas, d, k, chunk = (1000, 10_000, 384, 100, 256) if s else (100_000, 1_000_000, 384, 100, 4096)
    g = torch.Generator(device=device).manual_seed(args.seed)
    passages = F.normalize(torch.randn(npas, d, device=device, generator=g), dim=-1).to(torch.bfloat16)
    queries = F.normalize(torch.randn(nq, d, device=device, generator=g), dim=-1).to(torch.bfloat16)
    chunks = list(torch.split(queries, chunk))
    stats = [(c.shape[0], 0, 2.0 * c.shape[0] * npas * d) for c in chunks]

    def step(j):
        torch.topk(chunks[j % len(chunks)] @ passages.T, k, dim=1)
    return step, stats, (f"exact top-{k} IP, {nq} q x {npas} p x {d}, bf16 storage + bf16 matmul (fp32 accum), "
                         f"topk on bf16 scores (not fp32), chunks of {chunk} queries")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", required=True, choices=["w1", "w2", "w3", "w4"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--small", action="store_true", help="tiny shapes, for a CPU smoke test")
    ap.add_argument("--profile", help="after timing, write a torch.profiler Chrome trace of 3 steps here")
    args = ap.parse_args()

    real_stdout, sys.stdout = sys.stdout, sys.stderr  # only the JSON line goes to stdout
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_torch: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    rng = np.random.default_rng(args.seed)

    step, stats, note = build(args, device, rng)

    # Warm-up over every distinct batch at least once (shape-specific kernel plans, e.g. cuDNN
    # attention graphs, are built before the clock starts); time the last warm-up iteration
    # alone to size the groups between clock checks.
    args.warmup = max(args.warmup, len(stats))
    for j in range(max(args.warmup - 1, 0)):
        step(j)
    sync()
    t0 = time.perf_counter()
    if args.warmup > 0:
        step(args.warmup - 1)
    sync()
    t_iter = time.perf_counter() - t0 if args.warmup > 0 else 0.0
    group = max(1, int(0.25 / t_iter)) if t_iter > 0 else 1
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)

    items = tokens = iters = 0
    flops = 0.0
    start = time.perf_counter()
    while True:
        for _ in range(group):
            step(iters)
            n_items, n_tok, n_fl = stats[iters % len(stats)]
            items, tokens, flops, iters = items + n_items, tokens + n_tok, flops + n_fl, iters + 1
        sync()
        seconds = time.perf_counter() - start
        if seconds >= args.seconds:
            break
    peak = int(torch.cuda.max_memory_allocated(device)) if cuda else 0
    if args.profile:
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
        with torch.profiler.profile(activities=acts) as prof:
            for j in range(3):
                step(iters + j)
            sync()
        prof.export_chrome_trace(args.profile)

    result = {"workload": args.workload, "impl": "pytorch", "items": int(items), "seconds": seconds,
              "items_per_s": items / seconds, "peak_mem_bytes": peak, "useful_tokens": int(tokens),
              "useful_flops": flops, "note": f"{note}; torch {torch.__version__}, transformers "
                                             f"{transformers.__version__}, {iters} iters"}
    print(f"bench_torch {args.workload} on {device}{' (small)' if args.small else ''}: {iters} iterations, "
          f"{items} items in {seconds:.3f} s = {items / seconds:,.1f} items/s, "
          f"{tokens / seconds:,.0f} useful tok/s, {flops / seconds / 1e12:.2f} useful TFLOP/s, "
          f"peak {peak / 2**30:.2f} GiB", file=sys.stderr)
    print(json.dumps(result), file=real_stdout, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
