"""Where a training checkpoint's time goes on a GPU machine's host: copying the teacher's
273 MB (weights and both AdamW moments, fp32) to the host, as one tensor, as 300 and into
pinned memory, and writing them as three files with and without fsync.

Usage (on the device machine): python3 scripts/checkpoint_io.py [FOLDER]
"""
import os
import sys
import time

import torch


def best_of(label, f, reps=3):
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - start)
    print(f"{label:40s} {best * 1000:8.1f} ms")


def main():
    folder = sys.argv[1] if len(sys.argv) > 1 else "/tmp/checkpoint-io"
    os.makedirs(folder, exist_ok=True)
    n = 273 * 2**20 // 4
    x = torch.randn(n, device="cuda")
    torch.cuda.synchronize()
    best_of("to the host, one pageable tensor", lambda: x.cpu())
    chunks = list(torch.split(x, 227_000))
    best_of(f"to the host, {len(chunks)} pageable tensors", lambda: [c.cpu() for c in chunks], 2)
    pinned = torch.empty(n, pin_memory=True)
    best_of("to the host, pinned", lambda: (pinned.copy_(x), torch.cuda.synchronize()))
    data = pinned.numpy().tobytes()

    def write(sync):
        for k in range(3):
            with open(os.path.join(folder, f"part{k}"), "wb") as f:
                f.write(data[k * len(data) // 3 : (k + 1) * len(data) // 3])
                if sync:
                    f.flush()
                    os.fsync(f.fileno())

    best_of("write 3 files, 273 MB", lambda: write(False))
    best_of("write 3 files, 273 MB, fsync", lambda: write(True))


if __name__ == "__main__":
    main()
