#!/usr/bin/env python3
"""Variable-length attention in training, backend by backend, on the device (PyTorch with
CUDA): aten's FlashAttention-2 (`_flash_attention_forward` with cumulative sequence
lengths, what distill calls), cuDNN's fused attention over ragged sequences
(`_cudnn_attention_forward`) and the memory-efficient kernel
(`_efficient_attention_forward`), each on the packed tokens of a real step.

    python3 scripts/attention_backends.py --model models/all-MiniLM-L6-v2 \
        --data ../shared/data/scifact ../shared/data/squad

The lengths are real: the texts are tokenized with the model's tokenizer.json (truncated
at 512 tokens). For each dataset it builds a student step (64 queries and 1,024 passages
in one packed batch, as `distill train` forwards them) and a teacher step (256
query-passage pairs), draws q, k, v at MiniLM's 12 heads of 32, and times one forward and
backward pass of each backend (GPU kernel time from torch.profiler, per pass, median of 3
profiled rounds of 10 passes after 5 warm-up passes), with and without the 0.1 attention
dropout the students train with. Without dropout it also gives each backend's largest
difference from FlashAttention-2 in the output and the three gradients (over the largest
value). Prints a Markdown table; a backend this torch build cannot run shows its error.
"""
import argparse
import json
import random
import statistics

import torch
from tokenizers import Tokenizer

HEADS, HEAD_DIM, CAP = 12, 32, 512


def texts(path, name):
    with open(f"{path}/{name}.jsonl") as f:
        rows = [json.loads(line) for line in f]
    return [(r.get("title", "") + " " + r["text"]).strip() for r in rows]


def token_lengths(tokenizer, items):
    return [min(len(e.ids), CAP) for e in tokenizer.encode_batch(items)]


def steps(tokenizer, path, rng):
    """The sequence lengths of one student step and one teacher step of a dataset."""
    queries = token_lengths(tokenizer, rng.sample(texts(path, "queries"), 256))
    passages = token_lengths(tokenizer, rng.sample(texts(path, "corpus"), 1024))
    student = queries[:64] + passages
    # [CLS] query [SEP] passage [SEP]: the two encodings share one [CLS] and one [SEP].
    teacher = [min(q + p - 1, CAP) for q, p in zip(queries, passages[:256])]
    return {"student": student, "teacher": teacher}


def packed(lengths, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    tokens = sum(lengths)
    q, k, v, dy = (
        torch.randn(tokens, HEADS, HEAD_DIM, device="cuda", generator=g).bfloat16()
        for _ in range(4)
    )
    cu = torch.tensor([0] + lengths, device="cuda", dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return q, k, v, dy, cu, max(lengths)


def flash(q, k, v, cu, longest, p):
    return torch.ops.aten._flash_attention_forward(q, k, v, cu, cu, longest, longest, p, False, False)[0]


def cudnn(q, k, v, cu, longest, p):
    return torch.ops.aten._cudnn_attention_forward(
        q, k, v, None, cu, cu, longest, longest, True, p, False, False
    )[0]


def efficient(q, k, v, cu, longest, p):
    # [1, tokens, heads, dim] with cu_seqlens: the kernel's variable-length layout.
    out = torch.ops.aten._efficient_attention_forward(
        q[None], k[None], v[None], None, cu, cu, longest, longest, p, 0, True
    )[0]
    return out[0]


BACKENDS = {"flash-2 (now)": flash, "cudnn": cudnn, "efficient": efficient}


def run(fn, inputs, p):
    q, k, v, dy, cu, longest = inputs
    q, k, v = (x.detach().requires_grad_() for x in (q, k, v))
    out = fn(q, k, v, cu, longest, p)
    out.backward(dy)
    return out.detach(), q.grad, k.grad, v.grad


def kernel_ms(fn, inputs, p, passes=10):
    for _ in range(5):
        run(fn, inputs, p)
    rounds = []
    for _ in range(3):
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(passes):
                run(fn, inputs, p)
            torch.cuda.synchronize()
        total_us = sum(e.device_time_total for e in prof.key_averages() if e.device_time_total > 0
                       and not e.key.startswith("ProfilerStep"))
        rounds.append(total_us / 1000 / passes)
    return statistics.median(rounds)


def error(a, ref):
    return ((a.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="folder with tokenizer.json")
    ap.add_argument("--data", nargs="+", required=True, help="BEIR dataset folders")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    tokenizer = Tokenizer.from_file(f"{args.model}/tokenizer.json")
    tokenizer.no_truncation()
    rng = random.Random(args.seed)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, cuDNN {torch.backends.cudnn.version()}")
    print("| dataset | step | sequences | tokens | backend | fwd+bwd ms, dropout 0 | dropout 0.1 | out err | dq err | dk err | dv err |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for path in args.data:
        name = path.rstrip("/").split("/")[-1]
        for step, lengths in steps(tokenizer, path, rng).items():
            inputs = packed(lengths, args.seed)
            reference = run(flash, inputs, 0.0)
            for backend, fn in BACKENDS.items():
                head = f"| {name} | {step} | {len(lengths)} | {sum(lengths)} | {backend} |"
                try:
                    errors = [error(a, r) for a, r in zip(run(fn, inputs, 0.0), reference)]
                    times = [kernel_ms(fn, inputs, p) for p in (0.0, 0.1)]
                except Exception as e:  # noqa: BLE001 - a backend this build lacks
                    print(f"{head} {type(e).__name__}: {str(e).splitlines()[0][:120]} | | | | | |")
                    continue
                cells = [f"{t:.3f}" for t in times] + [f"{e:.2e}" for e in errors]
                print(f"{head} {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
