//! `distill eval`: a model on BEIR folders without a pipeline, through the eval stage's
//! code; its measures against the published figure and against pytrec_eval.
use crate::common::*;
use distill::ranking::metrics::Measures;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A dataset of `/work/shared/data` (read from `../shared/data`); panics when it is missing.
fn shared_data(name: &str) -> PathBuf {
    let path = repo().join("../shared/data").join(name);
    assert!(
        path.join("corpus.jsonl").exists(),
        "the {name} dataset is missing at {}",
        path.display()
    );
    path
}

/// The distinct query ids of a qrels file (header skipped).
fn judged_queries(qrels: &Path) -> BTreeSet<String> {
    std::fs::read_to_string(qrels)
        .unwrap()
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').next().map(str::to_string))
        .collect()
}

/// Run `distill eval ARGS`; panics with its stderr when it fails.
fn eval_ok(args: &[&str]) {
    let mut all = vec!["eval"];
    all.extend(args);
    let out = distill_output(&all, &[]);
    assert!(
        out.status.success(),
        "distill {all:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Rows, distinct query ids and column names of a per-query Parquet file (pyarrow).
fn parquet_shape(path: &Path) -> (usize, usize, Vec<String>) {
    let script = "import sys, json, pyarrow.parquet as pq\n\
                  t = pq.read_table(sys.argv[1])\n\
                  print(json.dumps([t.num_rows, len(set(t.column('query_id').to_pylist())), t.column_names]))";
    let v: serde_json::Value = serde_json::from_str(&python_stdout(script, &[path])).unwrap();
    let cols = v[2].as_array().unwrap();
    (
        v[0].as_u64().unwrap() as usize,
        v[1].as_u64().unwrap() as usize,
        cols.iter()
            .map(|c| c.as_str().unwrap().to_string())
            .collect(),
    )
}

/// all-MiniLM-L6-v2's nDCG@10 on SciFact test as MTEB publishes it. Quoted in
/// /work/shared/data/README.md ("published nDCG@10 on test (MTEB): all-MiniLM-L6-v2
/// 0.6451"), where it was also recomputed with sentence-transformers and pytrec_eval
/// (nDCG@10 0.6451, MRR@10 0.6113, Recall@10 0.7833, Recall@100 0.9250).
const MTEB_SCIFACT_NDCG10: f64 = 0.6451;

/// `distill eval` with all-MiniLM-L6-v2 on SciFact test (CPU, fp32) reproduces the
/// published nDCG@10 within 0.0005 ([`MTEB_SCIFACT_NDCG10`]); every measure of its
/// metrics.json equals pytrec_eval's on the TREC run it wrote; per_query.parquet has one
/// row per judged query. Encodes the 5,183 abstracts once (a minute or two on 2 cores).
#[test]
fn eval_command_gives_the_published_scifact_ndcg_and_agrees_with_pytrec_eval() {
    let student = student_dir();
    let data = shared_data("scifact");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    eval_ok(&[
        "-q",
        "--model",
        student.to_str().unwrap(),
        "--data",
        data.to_str().unwrap(),
        "--split",
        "test",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--output",
        out.to_str().unwrap(),
    ]);
    let metrics: serde_json::Value = read_json(&out.join("metrics.json"));
    let ds = &metrics["datasets"]["scifact"];
    let ndcg = ds["student"]["ndcg@10"].as_f64().unwrap();
    eprintln!("scifact test nDCG@10 {ndcg:.4} (published {MTEB_SCIFACT_NDCG10})");
    assert!(
        (ndcg - MTEB_SCIFACT_NDCG10).abs() <= 0.0005,
        "nDCG@10 {ndcg} is not within 0.0005 of the published {MTEB_SCIFACT_NDCG10}"
    );
    let qrels = data.join("qrels/test.tsv");
    let judged = judged_queries(&qrels);
    assert_eq!(ds["queries"].as_u64().unwrap() as usize, judged.len());
    let want = pytrec_eval_means(&out.join("runs/scifact.student.trec"), &qrels);
    assert_eq!(want["queries"].as_u64().unwrap() as usize, judged.len());
    for m in Measures::NAMES {
        let (got, want) = (
            ds["student"][m].as_f64().unwrap(),
            want[m].as_f64().unwrap(),
        );
        assert!(
            (got - want).abs() < 1e-9,
            "{m}: {got} vs pytrec_eval {want}"
        );
    }
    // Depth: top_k (1000) documents for every judged query.
    let lines = read_trec(&out.join("runs/scifact.student.trec"));
    assert_eq!(lines.len(), 1000 * judged.len());
    let (rows, distinct, cols) = parquet_shape(&out.join("per_query.parquet"));
    assert_eq!((rows, distinct), (judged.len(), judged.len()));
    assert!(cols.iter().any(|c| c == "student ndcg@10"), "{cols:?}");
    assert!(!out.join("runs/scifact.student+teacher.trec").exists());
}

/// With --rerank, the cross-encoder's run and its measures are written too, and the
/// reranked run is the student's top --rerank-k in the cross-encoder's score order.
#[test]
fn eval_command_reranks_the_students_top_k_in_the_cross_encoders_order() {
    let (student, ce, data) = (
        generated("tiny_bi_mean"),
        generated("ce_sigmoid"),
        generated("beir_tiny"),
    );
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let s = |p: &Path| p.to_str().unwrap().to_string();
    eval_ok(&[
        "-q",
        "--model",
        &s(&student),
        "--data",
        &s(&data),
        "--rerank",
        &s(&ce),
        "--rerank-k",
        "5",
        "--top-k",
        "20",
        "--device",
        "cpu",
        "--output",
        &s(&out),
    ]);
    let metrics: serde_json::Value = read_json(&out.join("metrics.json"));
    let ds = &metrics["datasets"]["beir_tiny"];
    for system in ["student", "student+teacher", "gap"] {
        for m in Measures::NAMES {
            assert!(ds[system][m].is_number(), "{system} {m} missing");
        }
    }
    let r = ds["student_recall_of_teacher_top10"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&r));
    assert_eq!(metrics["rerank"]["k"], 5);
    let (run, reranked) = (
        out.join("runs/beir_tiny.student.trec"),
        out.join("runs/beir_tiny.student+teacher.trec"),
    );
    let qrels = data.join("qrels/test.tsv");
    let judged = judged_queries(&qrels);
    assert_eq!(read_trec(&run).len(), 20 * judged.len());
    assert_reranked(&reranked, &run, &ce, &data, 5);
    let want = pytrec_eval_means(&reranked, &qrels);
    for m in Measures::NAMES {
        let got = ds["student+teacher"][m].as_f64().unwrap();
        let want = want[m].as_f64().unwrap();
        assert!((got - want).abs() < 1e-9, "{m}: {got} vs {want}");
    }
    let (rows, _, cols) = parquet_shape(&out.join("per_query.parquet"));
    assert_eq!(rows, judged.len());
    for c in ["teacher ndcg@10", "student_recall_of_teacher_top10"] {
        assert!(cols.iter().any(|x| x == c), "{c} missing from {cols:?}");
    }
}

/// A split without a qrels file and a qrels file that judges nothing are errors naming
/// the file; nothing is written.
#[test]
fn eval_command_names_the_qrels_file_of_a_missing_split_or_an_empty_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("tiny");
    std::fs::create_dir_all(data.join("qrels")).unwrap();
    for f in ["corpus.jsonl", "queries.jsonl", "qrels/train.tsv"] {
        std::fs::copy(generated("beir_tiny").join(f), data.join(f)).unwrap();
    }
    std::fs::write(data.join("qrels/test.tsv"), "query-id\tcorpus-id\tscore\n").unwrap();
    let out = dir.path().join("out");
    let student = generated("tiny_bi_mean");
    for (split, want) in [
        (
            "dev",
            "qrels/dev.tsv: no qrels for split `dev` (splits here: test, train)",
        ),
        ("test", "qrels/test.tsv: judges no query"),
    ] {
        let o = distill_output(
            &[
                "eval",
                "--model",
                student.to_str().unwrap(),
                "--data",
                data.to_str().unwrap(),
                "--split",
                split,
                "--output",
                out.to_str().unwrap(),
            ],
            &[("RUST_BACKTRACE", "0")],
        );
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(err.contains(want), "{err}");
        assert!(!out.exists());
    }
}
