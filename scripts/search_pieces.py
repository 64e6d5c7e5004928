# Timing of the pieces of mine's exact search on the device, in PyTorch, on random unit
# vectors: 100,000 queries x 1,000,000 passages, dim 384, top-100, in fp32 and bf16, for
# three chunk shapes (queries x corpus rows): the GEMM alone, with the block top-k and the
# merge that `retrieval::search` does, and with a rank count and the copy back as well.
# Prints milliseconds per query chunk and seconds per 100k queries (BENCHMARKS.md, "Where
# mine's time goes at 1M"). Usage, on the device machine: python3 scripts/search_pieces.py
# (--small: smaller shapes, for a smoke test on the CPU).
import torch, time, sys
torch.manual_seed(0)
dev = "cuda" if torch.cuda.is_available() else "cpu"
nq_total, nc, d, k = 100_000, 1_000_000, 384, 100
if "--small" in sys.argv:  # a smoke test on the CPU
    nq_total, nc = 2_048, 300_000
def sync():
    if dev == "cuda":
        torch.cuda.synchronize()
def normal(n):
    t = torch.randn(n, d, device=dev)
    return t / t.norm(dim=1, keepdim=True)
Q, C = normal(nq_total), normal(nc)
def block_top_k(s, k, block=128):
    # As retrieval::block_top_k: rows narrower than 4 k block go straight to top-k; else
    # the k blocks with the largest maxima, plus the columns after the last whole block.
    rows, n = s.shape
    if n < 4 * k * block:
        return s.topk(k, 1, True, False)
    blocks = n // block
    whole = s[:, :blocks*block].view(rows, blocks, block)
    m = whole.amax(2)
    _, chosen = m.topk(k, 1, True, False)
    vals = whole.gather(1, chosen.unsqueeze(2).expand(rows, k, block)).view(rows, k*block)
    cols = (chosen.unsqueeze(2)*block + torch.arange(block, device=dev).view(1,1,block)).view(rows, k*block)
    if n > blocks * block:
        vals = torch.cat([vals, s[:, blocks*block:]], 1)
        tail = torch.arange(blocks*block, n, device=dev).unsqueeze(0).expand(rows, -1)
        cols = torch.cat([cols, tail], 1)
    v, pos = vals.topk(k, 1, True, False)
    return v, cols.gather(1, pos)
def timeit(name, f, reps=3):
    f(); sync()
    t = time.time()
    for _ in range(reps): f()
    sync()
    dt = (time.time()-t)/reps
    print(f"{name:60s} {dt*1000:9.1f} ms", flush=True)
    return dt
for kind in [torch.float32, torch.bfloat16]:
    Ck = C.to(kind)
    for qc, cc in [(1024, 65536), (4096, 65536), (1024, 262144)]:
        q = Q[:qc].to(kind)
        scale = 100_000 / q.shape[0]  # per 100k queries (over this corpus)
        def gemm():
            for s in range(0, nc, cc):
                x = q @ Ck[s:s+cc].T
        own = torch.rand(q.shape[0], device=dev)
        def search(count):
            best = None
            above = torch.zeros(q.shape[0], dtype=torch.long, device=dev)
            for s in range(0, nc, cc):
                x = q @ Ck[s:s+cc].T
                if count:
                    above += (x > own.unsqueeze(1)).sum(1)
                v, i = block_top_k(x, k)
                i = i + s
                if best is None: best = (v, i)
                else:
                    v = torch.cat([best[0], v], 1); i = torch.cat([best[1], i], 1)
                    v2, pos = v.topk(k, 1, True, True); best = (v2, i.gather(1, pos))
            if count:
                best[0].float().cpu(); best[1].cpu(); above.cpu()
        gemm_topk = lambda: search(False)
        full = lambda: search(True)
        for name, f in [("gemm", gemm), ("gemm+topk", gemm_topk), ("gemm+topk+count+copy", full)]:
            dt = timeit(f"{str(kind)[6:]} q{q.shape[0]} c{cc} {name}", f)
            print(f"{'':60s}   -> {dt*scale:6.2f} s per 100k queries", flush=True)
def bf16_gemm_with_fp32_outputs():
    # aten::mm.dtype (CUDA only): bf16 inputs, fp32 outputs.
    try:
        a = Q[:1024].bfloat16(); b = C[:65536].bfloat16()
        r = torch.mm(a, b.T, out_dtype=torch.float32)
        print("mm out_dtype fp32 works", r.dtype)
        timeit("bf16 in, fp32 out gemm q1024 c65536 x16", lambda: [torch.mm(a, b.T, out_dtype=torch.float32) for _ in range(16)])
    except Exception as e:
        print("no out_dtype:", e)
bf16_gemm_with_fp32_outputs()
