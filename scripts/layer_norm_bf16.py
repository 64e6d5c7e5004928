#!/usr/bin/env python3
"""The encoder layers' LayerNorm in training two ways, on the device (PyTorch with CUDA):
as distill ran it before `Kernels::low_precision_norms` (the bf16 residual sum cast to
fp32, aten's LayerNorm on fp32 weights, the output cast back to bf16, and the casts'
backward), and as it runs now (a bf16 LayerNorm on bf16 copies of the weights; here
aten's throughout, where distill takes the weight's and bias's gradients with a kernel of
its own, which the unit test `train_layer_norm_weight_gradients_match_aten_on_cuda` holds
to aten's within two bf16 steps).

    python3 scripts/layer_norm_bf16.py

For each path, at MiniLM's width (384) over the packed tokens of a teacher step on one
GPU (about 77k) and of a student step (about 256k): the errors of the output, the input's
gradient and the weight's and bias's gradients against the same computation in fp64
from the same bf16 inputs (largest difference over the largest reference value), and
the device time of a forward and backward pass (CUDA events, median of 50 after 10
warm-up passes). Prints a Markdown table.
"""
import torch

H = 384
EPS = 1e-12


def inputs(tokens, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(tokens, H, device="cuda", generator=g) * 2 + 0.5).bfloat16()
    residual = torch.randn(tokens, H, device="cuda", generator=g).bfloat16()
    w = torch.randn(H, device="cuda", generator=g) * 0.3 + 1.0
    b = torch.randn(H, device="cuda", generator=g) * 0.1
    dy = torch.randn(tokens, H, device="cuda", generator=g).bfloat16()
    return x, residual, w, b, dy


def step(path, x, residual, w, b, dy):
    """One forward and backward pass; returns the output and the three gradients."""
    x = x.detach().requires_grad_()
    if path == "fp32 (before)":
        w, b = w.detach().requires_grad_(), b.detach().requires_grad_()
        y = torch.nn.functional.layer_norm((x + residual).float(), [H], w, b, EPS).bfloat16()
    elif path == "bf16 copies (now)":
        w = w.detach().bfloat16().requires_grad_()
        b = b.detach().bfloat16().requires_grad_()
        y = torch.nn.functional.layer_norm(x + residual, [H], w, b, EPS)
    else:  # the reference
        w, b = w.detach().double().requires_grad_(), b.detach().double().requires_grad_()
        y = torch.nn.functional.layer_norm((x + residual).double(), [H], w, b, EPS)
    y.backward(dy.to(y.dtype))
    return y.detach(), x.grad, w.grad.float(), b.grad.float()


def error(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max()).item()


def device_ms(fn, warmup=10, runs=50):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def main():
    rows = []
    for tokens in (77_000, 256_000):
        args = inputs(tokens, seed=tokens)
        ref = step("fp64", *args)
        for path in ("fp32 (before)", "bf16 copies (now)"):
            out = step(path, *args)
            errs = [error(a, r) for a, r in zip(out, ref)]
            ms = device_ms(lambda: step(path, *args))
            rows.append((tokens, path, *errs, ms))
    print("| tokens | path | output | input grad | weight grad | bias grad | fwd+bwd ms |")
    print("|---|---|---|---|---|---|---|")
    for t, p, *e, ms in rows:
        print(f"| {t:,} | {p} | " + " | ".join(f"{v:.2e}" for v in e) + f" | {ms:.3f} |")
    print(f"\n{torch.cuda.get_device_name()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
