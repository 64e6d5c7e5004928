#!/usr/bin/env python3
"""Host time of the encoder's bf16 matrix products when their token dimension changes
from call to call, against the same products with the token count rounded up as
`batching::packed_rows` does (32 sizes an octave).

Runs on the device machine (PyTorch with CUDA):  python3 scripts/gemm_shapes.py

The shapes are those of a MiniLM-L6 (hidden size 384) training step of 60k to 120k packed
tokens: a weight gradient [h, T] @ [T, h], an input gradient [T, h] @ [h, h], a linear
layer's forward with its bias, and a bias gradient (a sum over T). Each call is timed on
the host only (the device is synchronised every 64 calls, outside the timing), so the
figures are what launching costs the thread that issues the step: cuBLAS chooses a kernel
for every shape it has not seen. Prints a Markdown table.
"""
import random
import time

import torch

H = 384


def packed_rows(t):
    """As src/model/batching.rs: rounded up to a multiple of 2^(floor(log2 t) - 5)."""
    step = 1 << max(t.bit_length() - 1 - 5, 0)
    return -(-t // step) * step


def timings(sizes):
    big = torch.randn(2, max(sizes), H, device="cuda", dtype=torch.bfloat16)
    views = {t: (big[0, :t], big[1, :t]) for t in set(sizes)}
    w = torch.randn(H, H, device="cuda", dtype=torch.bfloat16)
    bias = torch.randn(H, device="cuda", dtype=torch.bfloat16)
    torch.cuda.synchronize()
    products = [
        ("weight gradient [h,T]@[T,h]", lambda a, b: a.t().mm(b)),
        ("input gradient [T,h]@[h,h]", lambda a, b: a.mm(w)),
        ("linear forward with bias", lambda a, b: torch.nn.functional.linear(a, w, bias)),
        ("bias gradient (sum over T)", lambda a, b: a.sum(0)),
    ]
    out = {}
    for name, f in products:
        ts = []
        for i, t in enumerate(sizes):
            a, b = views[t]
            s = time.perf_counter()
            f(a, b)
            ts.append(time.perf_counter() - s)
            if i % 64 == 63:
                torch.cuda.synchronize()
        torch.cuda.synchronize()
        ts.sort()
        out[name] = (1e6 * ts[len(ts) // 2], 1e6 * ts[9 * len(ts) // 10])
    return out


def main():
    random.seed(0)
    raw = [random.randint(60_000, 120_000) for _ in range(600)]
    timings(raw)  # warm-up: cuBLAS, the allocator
    fresh = [random.randint(60_000, 120_000) for _ in range(600)]
    runs = [("token count as it comes", timings(fresh)), ("rounded up (packed_rows)", timings([packed_rows(t) for t in fresh]))]
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, 600 calls each, host microseconds")
    print("| product | " + " | ".join(f"{label}: p50 / p90" for label, _ in runs) + " |")
    print("|---|" + "---|" * len(runs))
    for name in runs[0][1]:
        cells = " | ".join(f"{r[name][0]:.1f} / {r[name][1]:.1f}" for _, r in runs)
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
