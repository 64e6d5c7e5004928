#!/usr/bin/env python3
"""Reference values for distill's training code, from the libraries its users know:

- sentence-transformers' MarginMSELoss, DistillKLDivLoss and MultipleNegativesRankingLoss
  (one direction, and both: query_to_doc + doc_to_query, per_direction)
  (compute_loss_from_embeddings) on seeded random, L2-normalised embeddings;
- torch.optim.AdamW over a few steps with given gradients and learning rates;
- transformers' linear and cosine schedules with warmup.

    make_train_reference.py OUT.json [--model DIR]   (DIR: any SentenceTransformer, needed only
                                                    to construct the loss objects)
"""
import argparse
import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from sentence_transformers import SentenceTransformer, losses  # noqa: E402
from transformers import get_cosine_schedule_with_warmup, get_linear_schedule_with_warmup  # noqa: E402


def tolist(t):
    return t.detach().double().tolist()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("output")
    ap.add_argument("--model", default="tests/fixtures/generated/tiny_bi_mean")
    args = ap.parse_args()
    torch.manual_seed(20261121)
    model = SentenceTransformer(args.model, device="cpu")
    b, n, d = 4, 3, 8
    norm = torch.nn.functional.normalize
    q = norm(torch.randn(b, d), dim=1)
    docs = [norm(torch.randn(b, d), dim=1) for _ in range(1 + n)]  # positive, then negatives
    teacher = torch.randn(b, 1 + n) * 3
    out = {"queries": tolist(q), "docs": [tolist(x) for x in docs], "teacher": tolist(teacher)}
    emb = [q] + docs
    out["margin_mse"] = losses.MarginMSELoss(model).compute_loss_from_embeddings(emb, teacher).item()
    kl = losses.DistillKLDivLoss(model, student_temperature=0.5, teacher_temperature=2.0)
    out["kl_student_temperature"], out["kl_teacher_temperature"] = 0.5, 2.0
    out["kl"] = kl.compute_loss_from_embeddings(emb, teacher).item()
    mnrl = losses.MultipleNegativesRankingLoss(model, scale=20.0)
    out["infonce_scale"] = 20.0
    out["infonce"] = mnrl.compute_loss_from_embeddings(emb, None).item()
    # Both directions, a softmax each, averaged (the former MultipleNegativesSymmetricRankingLoss).
    sym = losses.MultipleNegativesRankingLoss(model, scale=20.0, directions=("query_to_doc", "doc_to_query"),
                                              partition_mode="per_direction")
    out["infonce_symmetric"] = sym.compute_loss_from_embeddings(emb, None).item()

    # AdamW
    torch.manual_seed(7)
    w = torch.randn(3, 5, requires_grad=True)
    bias = torch.randn(5, requires_grad=True)
    init = {"w": tolist(w), "bias": tolist(bias)}
    opt = torch.optim.AdamW([{"params": [w], "weight_decay": 0.1}, {"params": [bias], "weight_decay": 0.0}],
                            lr=1e-2, betas=(0.9, 0.999), eps=1e-8)
    steps = []
    for lr in [1e-2, 5e-3, 2e-2, 1e-3]:
        gw, gb = torch.randn(3, 5), torch.randn(5)
        for g in opt.param_groups:
            g["lr"] = lr
        w.grad, bias.grad = gw.clone(), gb.clone()
        opt.step()
        steps.append({"lr": lr, "grad_w": tolist(gw), "grad_bias": tolist(gb), "w": tolist(w), "bias": tolist(bias)})
    out["adamw"] = {"init": init, "weight_decay": 0.1, "steps": steps}

    # Schedules: the learning rate each optimizer step uses.
    sched = {}
    for name, make in [("linear", get_linear_schedule_with_warmup), ("cosine", get_cosine_schedule_with_warmup)]:
        p = torch.nn.Parameter(torch.zeros(1))
        o = torch.optim.SGD([p], lr=0.5)
        s = make(o, num_warmup_steps=3, num_training_steps=11)
        lrs = []
        for _ in range(11):
            lrs.append(o.param_groups[0]["lr"])
            o.step()
            s.step()
        sched[name] = {"peak": 0.5, "warmup": 3, "total": 11, "lrs": lrs}
    out["schedules"] = sched
    with open(args.output, "w") as f:
        json.dump(out, f)
    print(f"train reference: margin_mse {out['margin_mse']:.6f}, kl {out['kl']:.6f}, "
          f"infonce {out['infonce']:.6f}, 4 AdamW steps, 2 schedules -> {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
