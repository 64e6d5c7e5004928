#!/usr/bin/env python3
"""Compare Kineto (Chrome) traces from `distill bench --profile DIR`.

For each trace: the profiled span, the GPU's busy time (union of kernel, memcpy and
memset intervals), the number of kernels, and the kernels grouped into families (GEMM,
attention, normalisation, elementwise, reduction, optimizer, copy) with their total time.
With --top N, the N most expensive kernel names as well. With --host N, per host thread
its busy time (the union of its outermost operator spans) and the N operators with the
most self time (their span less their children's on the same thread), where the host
bounds a step.

Usage: scripts/profile_summary.py DIR/w3-distill.json DIR/w3-pytorch.json [--top 15] [--host 15]
"""
import argparse
import json
import re
import sys
from collections import defaultdict

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}

FAMILIES = [
    ("column sums finish", r"column_sums_finish"),  # distill's bias gradients
    ("column sums", r"column_sums"),  # (ffi/kernels.cpp, ffi/linear.cpp)
    ("gemm", r"gemm|sm90_xmma|cutlass|ampere_|sm80_|nvjet|matmul|splitK|cublas"),
    ("attention", r"flash|fmha|attention|efficient_attention|mem_eff"),
    ("layernorm", r"layer_norm|LayerNorm|layernorm"),
    ("optimizer", r"fused_adam|FusedAdam|multi_tensor|foreach|_amp_"),
    ("dropout", r"dropout|fused_dropout|bernoulli"),
    ("softmax/loss", r"softmax|nll_loss|cross_entropy|log_softmax|mse"),
    ("reduction", r"reduce_kernel|Reduce|sum_|norm"),
    ("embedding", r"embedding|index_select|indexSelect|index_put|scatter|gather"),
    ("copy/cast", r"copy|Memcpy|Memset|direct_copy|cast|to_copy"),
    ("elementwise", r"elementwise|vectorized|unrolled|gelu|Gelu|add|mul|where"),
]


def family(name):
    for fam, pattern in FAMILIES:
        if re.search(pattern, name):
            return fam
    return "other"


def union(intervals):
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop <= end:
            continue
        total += stop - max(start, end)
        end = stop
    return total


def host_threads(host):
    """Per thread: busy ms (outermost spans' union) and self ms per operator name."""
    threads = defaultdict(list)
    for e in host:
        threads[e["tid"]].append(e)
    out = {}
    for tid, events in threads.items():
        events.sort(key=lambda e: (e["ts"], -e["dur"]))
        own = defaultdict(float)
        stack = []  # [end, name, children's time, duration]
        outer = []
        for e in events:
            while stack and stack[-1][0] <= e["ts"]:
                end, name, children, dur = stack.pop()
                own[name] += dur - children
            # A child that outlasts its parent by the trace's rounding ends with it.
            end = e["ts"] + e["dur"] if not stack else min(e["ts"] + e["dur"], stack[-1][0])
            if stack:
                stack[-1][2] += end - e["ts"]
            else:
                outer.append((e["ts"], end))
            stack.append([end, e["name"], 0.0, end - e["ts"]])
        for end, name, children, dur in stack:
            own[name] += dur - children
        out[tid] = (union(outer) / 1e3, {k: v / 1e3 for k, v in own.items()}, len(events))
    return out


def summarise(path):
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    spans = [e for e in events if e.get("ph") == "X" and "dur" in e]
    gpu = [e for e in spans if e.get("cat") in GPU_CATS]
    host = [e for e in spans if e.get("cat") in ("cpu_op", "user_annotation", "cuda_runtime")]
    everything = gpu + host
    begin = min(e["ts"] for e in everything)
    end = max(e["ts"] + e["dur"] for e in everything)
    families, names = defaultdict(float), defaultdict(lambda: [0.0, 0])
    for e in gpu:
        families[family(e["name"])] += e["dur"]
        names[e["name"]][0] += e["dur"]
        names[e["name"]][1] += 1
    syncs = sum(1 for e in host if re.search(r"Synchronize|StreamSynchronize|_local_scalar_dense|item", e["name"]))
    return {
        "span_ms": (end - begin) / 1e3,
        "gpu_busy_ms": union([(e["ts"], e["ts"] + e["dur"]) for e in gpu]) / 1e3,
        "kernels": len(gpu),
        "syncs": syncs,
        "families": {k: v / 1e3 for k, v in families.items()},
        "names": {k: (v[0] / 1e3, v[1]) for k, v in names.items()},
        "host": host_threads(host),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("traces", nargs="+")
    ap.add_argument("--top", type=int, default=0)
    ap.add_argument("--host", type=int, default=0)
    args = ap.parse_args()
    sums = [summarise(p) for p in args.traces]
    heads = [p.rsplit("/", 1)[-1] for p in args.traces]
    print("| | " + " | ".join(heads) + " |")
    print("|---|" + "---|" * len(heads))
    for key in ("span_ms", "gpu_busy_ms", "kernels", "syncs"):
        print(f"| {key} | " + " | ".join(f"{s[key]:.1f}" if isinstance(s[key], float) else str(s[key]) for s in sums) + " |")
    fams = sorted({f for s in sums for f in s["families"]}, key=lambda f: -max(s["families"].get(f, 0) for s in sums))
    for f in fams:
        print(f"| {f} ms | " + " | ".join(f"{s['families'].get(f, 0.0):.2f}" for s in sums) + " |")
    for head, s in zip(heads, sums):
        if args.top:
            print(f"\n{head}: top {args.top} kernels (ms, count)")
            for name, (ms, n) in sorted(s["names"].items(), key=lambda kv: -kv[1][0])[: args.top]:
                print(f"  {ms:8.2f} {n:5d}  {name[:150]}")
        if args.host:
            threads = sorted(s["host"].items(), key=lambda kv: -kv[1][0])
            for tid, (busy, own, count) in threads[:4]:
                print(f"\n{head}: host thread {tid}: busy {busy:.1f} ms, {count} events; top {args.host} by self time (ms)")
                for name, ms in sorted(own.items(), key=lambda kv: -kv[1])[: args.host]:
                    print(f"  {ms:8.2f}  {name[:120]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
