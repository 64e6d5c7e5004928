#!/usr/bin/env python3
"""Write a seeded BEIR-layout dataset of any size for scale tests, from real sentences.

    python3 scripts/make_scale_data.py --passages N --out DIR [--train-queries Q]
        [--test-queries T] [--seed S] [--source DIR]

Sizes in use: 20k passages (CPU smoke test), 1M and 8.8M (GPU). The output is never
committed: it is built from the `../shared/data` corpora, whose licences forbid
redistribution here, and it is large.

Sentences: the `text` of every `corpus.jsonl` (or `corpus.jsonl.gz`) in the dataset folders
directly under --source is split into sentences after `.`, `?` or `!` followed by white
space and an upper-case letter or a digit; white space is collapsed, sentences of 5 to 60
words are kept, deduplicated and sorted (about 54k from scifact and squad). Only this pool is
held in memory: passages and the corpus file are generated and written line by line.

Passages: N of them, ids `p0000000`, `p0000001`, ..., empty `title`; each `text` is 2 to 6
sentences drawn uniformly from the pool with replacement (so in no particular order, and a
passage may, rarely, repeat a sentence).

Queries: pseudo-queries. Each picks a passage uniformly (with replacement: a passage may get
several), one of its sentences, and a window of 6 to 14 consecutive words of that sentence
(the whole sentence when shorter); its one qrel is that passage, score 1. Train queries are
`train-0000000`, ..., in qrels/train.tsv; test queries `test-0000000`, ..., in qrels/test.tsv.
Every sentence is in about N * 4 / pool passages (about 1.5 at 20k, 74 at 1M, 650 at 8.8M),
so a query's words are also in passages that are not labelled relevant, as in real data but
far more so at the large sizes: at 8.8M the qrels measure throughput and rough quality, not
fine differences in nDCG. Train and test queries are drawn independently, so a test query
may ask about a passage that also has a train query.

Defaults: --train-queries min(N // 10, 500,000), --test-queries min(N // 100, 10,000), each
at least 1 (20k passages: 2,000 and 200; 1M: 100,000 and 10,000; 8.8M: 500,000 and 10,000);
--seed 42; --source ../shared/data beside the repository root.

Files: corpus.jsonl, queries.jsonl (sorted by id), qrels/train.tsv and qrels/test.tsv (header
`query-id corpus-id score`), and make_scale_data.json (arguments, pool size, total words,
the source files with sizes and sha256). They are written to DIR.tmp and renamed to DIR at
the end. The same arguments and source files give byte-identical output; the corpus depends
only on --passages, --seed and the sources, not on the query counts. Python standard library
only; progress on stderr every million passages, a one-line summary on stdout.
"""
import argparse
import gzip
import hashlib
import json
import pathlib
import random
import re
import shutil
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "data"
OUTPUT_FILES = {"corpus.jsonl", "queries.jsonl", "qrels", "make_scale_data.json"}
SOURCE_NAMES = ("corpus.jsonl", "corpus.jsonl.gz")
SENTENCE_END = re.compile(r"(?<=[.?!])\s+(?=[A-Z0-9])")
MIN_WORDS, MAX_WORDS = 5, 60  # words in a pooled sentence
MIN_SENTENCES, MAX_SENTENCES = 2, 6  # sentences in a passage
MIN_QUERY, MAX_QUERY = 6, 14  # words in a query window
PROGRESS_EVERY = 1_000_000
CHUNK = 10_000  # corpus lines joined per write


def source_files(source: pathlib.Path) -> list:
    files = sorted(p for d in source.iterdir() if d.is_dir()
                   for p in (d / name for name in SOURCE_NAMES) if p.is_file())
    if not files:
        sys.exit(f"no {' or '.join(SOURCE_NAMES)} in the folders under {source}")
    return files


def sentence_pool(files) -> list:
    """Every sentence of 5 to 60 words in the corpora's texts, deduplicated and sorted."""
    pool = set()
    for path in files:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                for sentence in SENTENCE_END.split(json.loads(line).get("text") or ""):
                    words = sentence.split()
                    if MIN_WORDS <= len(words) <= MAX_WORDS:
                        pool.add(" ".join(words))
    return sorted(pool)


def sha256(path: pathlib.Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def draw_targets(rng, passages: int, counts) -> list:
    """(passage, query number) of every query, sorted by passage; query numbers run over the
    splits in order (train first)."""
    targets = [(rng.randrange(passages), q) for q in range(sum(counts))]
    targets.sort()
    return targets


def query_text(rng, sentence: str) -> str:
    words = sentence.split()
    size = min(len(words), rng.randint(MIN_QUERY, MAX_QUERY))
    start = rng.randrange(len(words) - size + 1)
    return " ".join(words[start:start + size])


def write_corpus(path, pool, passages: int, seed: int, targets, queries) -> int:
    """Write the passages; fill `queries[q]` with (text, passage id) for each target.
    Returns the number of words written."""
    # A passage's line is built from JSON-escaped sentences: escaping works character by
    # character, so the result is what json.dumps(..., ensure_ascii=False) writes.
    escaped = [json.dumps(s, ensure_ascii=False)[1:-1] for s in pool]
    word_counts = [len(s.split()) for s in pool]
    width = max(7, len(str(passages - 1)))
    rng, query_rng = random.Random(seed), random.Random(f"{seed}/queries")
    rand, n, spread = rng.random, len(pool), MAX_SENTENCES - MIN_SENTENCES + 1
    pending = iter(targets)
    next_target, next_query = next(pending, (passages, None))
    words, lines, start = 0, [], time.monotonic()
    with open(path, "w", encoding="utf-8", newline="\n", buffering=1 << 20) as f:
        for i in range(passages):
            chosen = [int(rand() * n) for _ in range(MIN_SENTENCES + int(rand() * spread))]
            words += sum([word_counts[s] for s in chosen])
            pid = f"p{i:0{width}d}"
            lines.append(f'{{"_id": "{pid}", "title": "", "text": "'
                         f'{" ".join([escaped[s] for s in chosen])}"}}\n')
            while next_target == i:
                sentence = pool[chosen[query_rng.randrange(len(chosen))]]
                queries[next_query] = (query_text(query_rng, sentence), pid)
                next_target, next_query = next(pending, (passages, None))
            if len(lines) == CHUNK:
                f.write("".join(lines))
                lines.clear()
            if (i + 1) % PROGRESS_EVERY == 0:
                print(f"make_scale_data: {i + 1:,} of {passages:,} passages "
                      f"({time.monotonic() - start:.0f} s)", file=sys.stderr, flush=True)
        f.write("".join(lines))
    return words


def write_queries(tmp: pathlib.Path, queries, counts) -> None:
    """queries.jsonl sorted by id, one qrels file per split."""
    rows, offset = [], 0
    for split, count in zip(("train", "test"), counts):
        width = max(7, len(str(count - 1)))
        ids = [f"{split}-{q:0{width}d}" for q in range(count)]
        pairs = queries[offset:offset + count]
        offset += count
        rows += [(qid, text) for qid, (text, _) in zip(ids, pairs)]
        with open(tmp / "qrels" / f"{split}.tsv", "w", encoding="utf-8", newline="\n") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            f.writelines(f"{qid}\t{pid}\t1\n" for qid, (_, pid) in zip(ids, pairs))
    rows.sort()
    with open(tmp / "queries.jsonl", "w", encoding="utf-8", newline="\n") as f:
        f.writelines(json.dumps({"_id": qid, "text": text}, ensure_ascii=False) + "\n"
                     for qid, text in rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, required=True, metavar="N",
                        help="number of passages")
    parser.add_argument("--train-queries", type=int, metavar="Q",
                        help="train queries (default: min(N // 10, 500000), at least 1)")
    parser.add_argument("--test-queries", type=int, metavar="T",
                        help="test queries (default: min(N // 100, 10000), at least 1)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default: 42)")
    parser.add_argument("--out", type=pathlib.Path, required=True, help="output folder")
    parser.add_argument("--source", type=pathlib.Path, default=DEFAULT_SOURCE,
                        help="folder of BEIR datasets to take sentences from "
                             "(default: ../shared/data beside the repository root)")
    args = parser.parse_args()
    if args.passages < 1:
        parser.error("--passages must be at least 1")
    train = args.train_queries
    if train is None:
        train = max(1, min(args.passages // 10, 500_000))
    test = args.test_queries
    if test is None:
        test = max(1, min(args.passages // 100, 10_000))
    if train < 1 or test < 1:
        parser.error("--train-queries and --test-queries must be at least 1")
    if not args.source.is_dir():
        parser.error(f"--source {args.source} is not a folder")
    out = args.out
    if out.exists() and not {p.name for p in out.iterdir()} <= OUTPUT_FILES:
        sys.exit(f"refusing to replace {out}: it holds files this script did not write")

    start = time.monotonic()
    files = source_files(args.source)
    pool = sentence_pool(files)
    if not pool:
        sys.exit(f"no sentences of {MIN_WORDS} to {MAX_WORDS} words in {args.source}")
    counts = (train, test)
    targets = draw_targets(random.Random(f"{args.seed}/targets"), args.passages, counts)

    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "qrels").mkdir(parents=True)
    queries = [None] * (train + test)
    words = write_corpus(tmp / "corpus.jsonl", pool, args.passages, args.seed, targets,
                         queries)
    write_queries(tmp, queries, counts)
    record = {
        "script": "scripts/make_scale_data.py",
        "passages": args.passages, "train_queries": train, "test_queries": test,
        "seed": args.seed, "sentences": len(pool), "words": words,
        "sources": [{"path": p.relative_to(args.source).as_posix(), "bytes": p.stat().st_size,
                     "sha256": sha256(p)} for p in files],
    }
    with open(tmp / "make_scale_data.json", "w", encoding="utf-8", newline="\n") as f:
        f.write(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    print(f"make_scale_data: {args.passages:,} passages from {len(pool):,} sentences, "
          f"{train:,} train and {test:,} test queries, {words:,} words, "
          f"{time.monotonic() - start:.1f} s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
