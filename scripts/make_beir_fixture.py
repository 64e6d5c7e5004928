#!/usr/bin/env python3
"""Write the tiny BEIR dataset the pipeline tests run on (deterministic, written by us).

    make_beir_fixture.py OUT_DIR

Documents describe made-up animals (where each lives, what it eats, its colour), with
near-duplicates that make hard negatives; queries ask about one animal. Layout: corpus.jsonl,
queries.jsonl, qrels/train.tsv, qrels/test.tsv (with a header line), as BEIR ships them.
"""
import json
import pathlib
import random
import shutil
import sys
import tempfile

ANIMALS = ["axolotl", "bittern", "caracal", "dugong", "echidna", "fossa", "gharial", "hoatzin",
           "ibex", "jerboa", "kakapo", "lemming", "markhor", "numbat", "okapi", "pangolin",
           "quokka", "saiga", "tapir", "urial", "vicuna", "wombat"]
PLACES = ["mountain lakes", "salt marshes", "dry savannas", "coral reefs", "pine forests",
          "river deltas", "desert dunes", "alpine meadows", "mangrove swamps", "tundra plains"]
FOODS = ["insects", "seagrass", "small rodents", "fruit", "roots", "fish", "leaves", "seeds",
         "lichens", "termites"]
COLOURS = ["grey", "brown", "spotted", "striped", "reddish", "pale yellow", "dark green"]


def main() -> int:
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = pathlib.Path(sys.argv[1])
    rng = random.Random(1234)
    corpus, queries, train, test = [], [], [], []
    for i, animal in enumerate(ANIMALS):
        place, food, colour = rng.choice(PLACES), rng.choice(FOODS), rng.choice(COLOURS)
        corpus.append({"_id": f"d{i:02d}", "title": animal.title(),
                       "text": f"The {animal} lives in {place} and eats mostly {food}. Its coat is {colour}."})
        # A near-duplicate about another habitat: a hard negative for the where-question.
        other = rng.choice([p for p in PLACES if p != place])
        corpus.append({"_id": f"n{i:02d}", "title": "",
                       "text": f"Unlike the {animal}, many animals of {other} eat {rng.choice(FOODS)}."})
        qid = f"q{i:02d}"
        phrasing = ["where does the {a} live?", "what does a {a} eat", "habitat and diet of the {a}"][i % 3]
        queries.append({"_id": qid, "text": phrasing.format(a=animal)})
        (test if i % 4 == 3 else train).append((qid, f"d{i:02d}", 1))
        if i % 5 == 0:  # a second, graded positive for some queries
            (test if i % 4 == 3 else train).append((qid, f"n{i:02d}", 2 if i % 2 == 0 else 0))
    # Generic documents.
    for j in range(12):
        corpus.append({"_id": f"g{j:02d}", "title": "Field notes",
                       "text": f"Observers counted {rng.randint(3, 90)} animals near the {rng.choice(PLACES)} in week {j + 1}."})
    tmp = pathlib.Path(tempfile.mkdtemp(dir=out.parent if out.parent.exists() else None))
    (tmp / "qrels").mkdir()
    with open(tmp / "corpus.jsonl", "w", encoding="utf-8") as f:
        for d in corpus:
            f.write(json.dumps(d) + "\n")
    with open(tmp / "queries.jsonl", "w", encoding="utf-8") as f:
        for q in queries:
            f.write(json.dumps(q) + "\n")
    for name, rows in [("train", train), ("test", test)]:
        with open(tmp / "qrels" / f"{name}.tsv", "w", encoding="utf-8") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for q, d, s in rows:
                f.write(f"{q}\t{d}\t{s}\n")
    if out.exists():
        shutil.rmtree(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(tmp), str(out))
    print(f"beir_tiny: {len(corpus)} documents, {len(queries)} queries, "
          f"{len(train)} train and {len(test)} test qrels -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
