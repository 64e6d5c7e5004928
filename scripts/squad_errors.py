#!/usr/bin/env python3
"""Where each system's top-1 goes on the SQuAD split's test questions when it misses:
another paragraph of the gold paragraph's own article, another held-out article, or a
training article (an article is a corpus id's part before '-'). Reads the TREC run files
that the eval stage wrote.

    squad_errors.py RUN_DIR [DATA_DIR]    (RUN_DIR: checkpoints/<name>; DATA_DIR: ../shared/data/squad)
"""
import collections
import sys


def qrels(data, split):
    out = {}
    with open(f"{data}/qrels/{split}.tsv") as f:
        next(f)  # header
        for line in f:
            q, d, _ = line.split()
            out[q] = d
    return out


def main() -> int:
    run = sys.argv[1]
    data = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/squad"
    test, train = qrels(data, "test"), qrels(data, "train")
    article = lambda d: d.split("-")[0]  # noqa: E731
    train_articles = {article(d) for d in train.values()}
    print("| system | top-1 right | same article | other held-out article | training article "
          "| mean rank of the gold paragraph (capped at 101) |")
    print("|---|---|---|---|---|---|")
    for label in ["base", "base+teacher", "distilled", "distilled+teacher"]:
        top, rank = {}, {}
        with open(f"{run}/eval/runs/squad.{label}.trec") as f:
            for line in f:
                q, _, d, r, *_ = line.split()
                if q not in test:
                    continue
                if r == "1":
                    top[q] = d
                if d == test[q]:
                    rank[q] = int(r)
        c = collections.Counter()
        for q, gold in test.items():
            d = top.get(q)
            if d == gold:
                c["right"] += 1
            elif d is None:
                c["none"] += 1
            elif article(d) == article(gold):
                c["same"] += 1
            elif article(d) in train_articles:
                c["train"] += 1
            else:
                c["other"] += 1
        n = len(test)
        mean_rank = sum(min(rank.get(q, 101), 101) for q in test) / n
        print(f"| {label} | {c['right'] / n:.3f} | {c['same'] / n:.3f} | {c['other'] / n:.3f} "
              f"| {c['train'] / n:.3f} | {mean_rank:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
