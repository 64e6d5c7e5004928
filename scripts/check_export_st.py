"""One training step of sentence-transformers on datasets written by `distill export-data`.

    check_export_st.py --model DIR [--margin FILE.parquet] [--kl FILE.parquet]

Each file is loaded with `datasets.Dataset.from_parquet`; its columns must be exactly
`query, positive, negative_1 .. negative_n, label`, with `n` floats per label for
`--margin` (st-margin) and `n + 1` for `--kl` (st-kl). Its first batch goes through
sentence-transformers' own data collator into `MarginMSELoss` or `DistillKLDivLoss` on
the SentenceTransformer at `--model`, and one AdamW step is taken. Prints one JSON line per
file (`{"file", "loss", "rows", "negatives"}`); exits non-zero when a check fails, the
loss is not finite, or the step leaves every weight as it was. Runs offline, on the CPU.
"""

import argparse
import json
import math
import sys

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer, losses
from sentence_transformers.sentence_transformer.data_collator import (
    SentenceTransformerDataCollator,
)


def fail(message: str) -> None:
    print(message, file=sys.stderr)
    sys.exit(1)


def one_step(model_dir: str, path: str, kind: str, batch_size: int) -> dict:
    torch.manual_seed(0)
    model = SentenceTransformer(model_dir, device="cpu")
    data = Dataset.from_parquet(path)
    n = sum(c.startswith("negative_") for c in data.column_names)
    texts = ["query", "positive"] + [f"negative_{i}" for i in range(1, n + 1)]
    if data.column_names != texts + ["label"]:
        fail(f"{path}: columns {data.column_names}, expected {texts + ['label']}")
    width = n if kind == "margin" else n + 1
    if n == 0 or any(len(label) != width for label in data["label"]):
        fail(f"{path}: every label must hold {width} floats for {n} negatives")
    loss = (
        losses.MarginMSELoss(model)
        if kind == "margin"
        else losses.DistillKLDivLoss(model)
    )
    collator = SentenceTransformerDataCollator(preprocess_fn=model.preprocess)
    batch = collator([data[i] for i in range(min(batch_size, len(data)))])
    labels = batch.pop("label")
    # As the trainer's collect_features: one feature dict per text column, in order.
    features = [
        {k[len(c) + 1 :]: v for k, v in batch.items() if k.startswith(c + "_")}
        for c in texts
    ]
    model.train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    value = loss(features, labels)
    value.backward()
    optimizer.step()
    if not math.isfinite(value.item()):
        fail(f"{path}: the loss is {value.item()}")
    if all(torch.equal(b, p.detach()) for b, p in zip(before, model.parameters())):
        fail(f"{path}: the optimizer step changed no weight")
    return {"file": path, "loss": value.item(), "rows": len(data), "negatives": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--margin", help="an st-margin Parquet file")
    parser.add_argument("--kl", help="an st-kl Parquet file")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    if not args.margin and not args.kl:
        parser.error("give --margin and/or --kl")
    for kind, path in (("margin", args.margin), ("kl", args.kl)):
        if path:
            print(json.dumps(one_step(args.model, path, kind, args.batch_size)))


if __name__ == "__main__":
    main()
