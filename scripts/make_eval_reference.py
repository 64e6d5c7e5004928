#!/usr/bin/env python3
"""pytrec_eval reference values for distill's metrics.

    make_eval_reference.py OUT.json

Seeded random qrels (grades 0-3, some queries without a relevant document, one query absent
from the run) and runs (up to 1,200 documents, scores rounded so that ties are frequent),
evaluated by pytrec_eval (trec_eval's code): ndcg_cut_10, P_10, recall_10/100/1000,
map_cut_100, recip_rank. MRR@10 is recip_rank when the first relevant document is within
the top 10 (recip_rank >= 0.1), else 0.
"""
import json
import random
import sys

import pytrec_eval


def main() -> int:
    rng = random.Random(99)
    qrels, run = {}, {}
    for q in range(40):
        qid = f"q{q}"
        docs = [f"d{rng.randint(0, 1500)}" for _ in range(rng.randint(1, 25))]
        qrels[qid] = {d: (0 if q % 9 == 0 else rng.choice([0, 1, 1, 2, 3])) for d in docs}
        if q == 39:
            continue  # judged, never retrieved: not in the run
        n = rng.choice([5, 20, 150, 1200])
        pool = list(qrels[qid]) + [f"d{rng.randint(0, 1500)}" for _ in range(n)]
        run[qid] = {d: round(rng.random(), 1 if q % 2 else 3) for d in pool[:n]}
    run["unjudged"] = {"d1": 1.0, "d2": 0.5}
    measures = {"ndcg_cut.10", "P.10", "recall.10", "recall.100", "recall.1000", "map_cut.100", "recip_rank"}
    res = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    per_query = {
        q: {
            "ndcg@10": m["ndcg_cut_10"],
            "mrr@10": m["recip_rank"] if m["recip_rank"] >= 0.1 else 0.0,
            "p@10": m["P_10"],
            "recall@10": m["recall_10"],
            "recall@100": m["recall_100"],
            "recall@1000": m["recall_1000"],
            "map@100": m["map_cut_100"],
        }
        for q, m in res.items()
    }
    with open(sys.argv[1], "w") as f:
        json.dump({"qrels": qrels, "run": run, "per_query": per_query}, f)
    print(f"eval reference: {len(per_query)} queries evaluated by pytrec_eval -> {sys.argv[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
