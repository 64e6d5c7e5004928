//! `distill export-data` on a tiny run (mine, teacher and score over the tiny BEIR fixture,
//! with pseudo-queries): each format read back against the run's scores table and the
//! dataset files, and the sentence-transformers files through one training step of
//! sentence-transformers' own `MarginMSELoss` and `DistillKLDivLoss`.
use crate::common::distill_output as distill;
use crate::common::*;
use crate::pipeline::pipeline_text;
use arrow::array::{Array, BooleanArray, Float32Array, ListArray, StringArray};
use distill::data::pairs::{read_batches, PairTable};
use distill::pipeline::Pipeline;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// A run done up to `score`, shared by the tests (made once per process).
struct ScoredRun {
    pipeline: PathBuf,
    run_dir: PathBuf,
    out: PathBuf,
}

fn scored_run() -> &'static ScoredRun {
    static RUN: OnceLock<ScoredRun> = OnceLock::new();
    RUN.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("export-data");
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let pipeline = root.join("tiny.toml");
        let text = pipeline_text(
            &root.join("runs"),
            &generated("beir_tiny"),
            "pseudo_queries = 1",
            "",
            "",
        );
        std::fs::write(&pipeline, text).unwrap();
        for stage in ["mine", "teacher", "score"] {
            let out = distill(
                &["-q", "run", pipeline.to_str().unwrap(), "--only", stage],
                &[],
            );
            assert!(
                out.status.success(),
                "{stage}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let run_dir = Pipeline::load(&pipeline).unwrap().run_dir;
        let out = root.join("exports");
        std::fs::create_dir_all(&out).unwrap();
        ScoredRun {
            pipeline,
            run_dir,
            out,
        }
    })
}

/// Run `distill export-data` on the shared run; its stderr (the summary).
fn export(format: &str, output: &Path, extra: &[&str]) -> String {
    let run = scored_run();
    let mut args = vec![
        "export-data",
        run.run_dir.to_str().unwrap(),
        "--pipeline",
        run.pipeline.to_str().unwrap(),
        "--format",
        format,
        "--output",
        output.to_str().unwrap(),
    ];
    args.extend(extra);
    let out = distill(&args, &[]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "export-data {format}: {err}");
    err
}

/// What a query's export should hold, built from the scores table and the dataset files
/// (documents as `title + " " + text` from corpus.jsonl, read here).
#[derive(Debug)]
struct Expected {
    query: String,
    positives: Vec<(String, f32)>,
    /// (text, teacher score, flagged)
    negatives: Vec<(String, f32, bool)>,
}

fn corpus_texts() -> HashMap<String, String> {
    let path = generated("beir_tiny").join("corpus.jsonl");
    read_jsonl::<serde_json::Value>(&path)
        .into_iter()
        .map(|d| {
            let (title, text) = (d["title"].as_str().unwrap(), d["text"].as_str().unwrap());
            let joined = match title {
                "" => text.to_string(),
                t => format!("{t} {text}"),
            };
            (d["_id"].as_str().unwrap().to_string(), joined)
        })
        .collect()
}

/// The queries in the table's order; flagged negatives left out unless `keep_flagged`;
/// queries without a positive or a negative dropped (their count returned).
fn expected(keep_flagged: bool) -> (Vec<Expected>, usize) {
    let run = scored_run();
    let p = Pipeline::load(&run.pipeline).unwrap();
    // Query texts as the pipeline makes them (pseudo-queries are cut from the corpus).
    let ds = p.datasets[0].load(&["train"], p.seed).unwrap();
    let docs = corpus_texts();
    let table = PairTable::read(&run.run_dir.join("score/teacher_scores.parquet")).unwrap();
    let (scores, flags) = (
        table.teacher_score.as_ref().unwrap(),
        table.is_false_negative.as_ref().unwrap(),
    );
    let mut order: Vec<String> = Vec::new();
    let mut groups: HashMap<String, Expected> = HashMap::new();
    for i in 0..table.len() {
        let q = &table.query_id[i];
        let g = groups.entry(q.clone()).or_insert_with(|| {
            order.push(q.clone());
            Expected {
                query: ds.queries.text(q).unwrap().unwrap().to_string(),
                positives: vec![],
                negatives: vec![],
            }
        });
        let doc = docs[&table.doc_id[i]].clone();
        if table.is_positive[i] {
            g.positives.push((doc, scores[i]));
        } else if keep_flagged || !flags[i] {
            g.negatives.push((doc, scores[i], flags[i]));
        }
    }
    let all: Vec<Expected> = order
        .into_iter()
        .map(|q| groups.remove(&q).unwrap())
        .collect();
    let before = all.len();
    let kept: Vec<Expected> = all
        .into_iter()
        .filter(|g| !g.positives.is_empty() && !g.negatives.is_empty())
        .collect();
    let dropped = before - kept.len();
    (kept, dropped)
}

fn strings(v: &serde_json::Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_string())
        .collect()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_f64().unwrap() as f32)
        .collect()
}

#[test]
fn flagembedding_lines_hold_the_scored_pairs_and_texts() {
    let run = scored_run();
    let table = PairTable::read(&run.run_dir.join("score/teacher_scores.parquet")).unwrap();
    let flagged = table
        .is_false_negative
        .as_ref()
        .unwrap()
        .iter()
        .filter(|&&f| f)
        .count();
    assert!(
        flagged > 0,
        "the tiny run flags no negative: nothing to test"
    );
    assert!(table.query_id.iter().any(|q| q.starts_with("pseudo:")));
    for keep in [false, true] {
        let output = run.out.join(format!("flag-{keep}.jsonl"));
        let err = export(
            "flagembedding",
            &output,
            if keep {
                &["--keep-false-negatives"]
            } else {
                &[]
            },
        );
        let (want, dropped) = expected(keep);
        let lines: Vec<serde_json::Value> = read_jsonl(&output);
        assert_eq!(lines.len(), want.len(), "keep {keep}");
        for (line, g) in lines.iter().zip(&want) {
            assert_eq!(line["query"].as_str().unwrap(), g.query);
            let pos: Vec<String> = g.positives.iter().map(|p| p.0.clone()).collect();
            let pos_scores: Vec<f32> = g.positives.iter().map(|p| p.1).collect();
            let neg: Vec<String> = g.negatives.iter().map(|n| n.0.clone()).collect();
            let neg_scores: Vec<f32> = g.negatives.iter().map(|n| n.1).collect();
            assert_eq!(strings(&line["pos"]), pos);
            assert_eq!(floats(&line["pos_scores"]), pos_scores);
            assert_eq!(strings(&line["neg"]), neg);
            assert_eq!(floats(&line["neg_scores"]), neg_scores);
            match keep {
                true => {
                    let flags: Vec<bool> = g.negatives.iter().map(|n| n.2).collect();
                    let got: Vec<bool> = line["neg_flagged"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|b| b.as_bool().unwrap())
                        .collect();
                    assert_eq!(got, flags);
                }
                false => assert!(line.get("neg_flagged").is_none()),
            }
        }
        let pairs: usize = want
            .iter()
            .map(|g| g.positives.len() + g.negatives.len())
            .sum();
        let left_out = if keep { 0 } else { flagged };
        let summary = format!(
            "exported {} queries, {} rows, {pairs} (query, document) pairs; dropped {dropped} \
             queries without a negative, 0 with too few negatives; flagged false negatives: \
             {left_out} left out, {} kept",
            want.len(),
            want.len(),
            flagged - left_out
        );
        assert!(err.contains(&summary), "{err}\nwanted: {summary}");
    }
}

/// The rows of an st-margin / st-kl file: (texts: query, positive, negatives; label;
/// flags when present).
type StRow = (Vec<String>, Vec<f32>, Option<Vec<bool>>);

fn read_st(path: &Path) -> (Vec<String>, Vec<StRow>) {
    let batches = read_batches(path).unwrap();
    let schema = batches[0].schema();
    let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
    let mut rows = Vec::new();
    for b in &batches {
        let texts: Vec<&StringArray> = names
            .iter()
            .filter(|n| *n == "query" || *n == "positive" || n.starts_with("negative_"))
            .filter(|n| *n != "negative_flagged")
            .map(|n| {
                b.column_by_name(n)
                    .unwrap()
                    .as_any()
                    .downcast_ref()
                    .unwrap()
            })
            .collect();
        let list = |name: &str| {
            b.column_by_name(name)
                .map(|c| c.as_any().downcast_ref::<ListArray>().unwrap().clone())
        };
        let (labels, flags) = (list("label").unwrap(), list("negative_flagged"));
        for r in 0..b.num_rows() {
            let label = labels.value(r);
            let label = label.as_any().downcast_ref::<Float32Array>().unwrap();
            let flag = flags.as_ref().map(|f| {
                let v = f.value(r);
                let v = v.as_any().downcast_ref::<BooleanArray>().unwrap();
                (0..v.len()).map(|i| v.value(i)).collect()
            });
            rows.push((
                texts.iter().map(|t| t.value(r).to_string()).collect(),
                label.values().to_vec(),
                flag,
            ));
        }
    }
    (names, rows)
}

/// The rows an st file should hold: one per (query, positive) of the queries with at
/// least `n` negatives, each with its first `n`.
fn expected_st(want: &[Expected], n: usize, margins: bool) -> Vec<StRow> {
    let mut rows = Vec::new();
    for g in want.iter().filter(|g| g.negatives.len() >= n) {
        let negs = &g.negatives[..n];
        for (pos, score) in &g.positives {
            let mut texts = vec![g.query.clone(), pos.clone()];
            texts.extend(negs.iter().map(|n| n.0.clone()));
            let label: Vec<f32> = match margins {
                true => negs.iter().map(|n| score - n.1).collect(),
                false => std::iter::once(*score)
                    .chain(negs.iter().map(|n| n.1))
                    .collect(),
            };
            rows.push((texts, label, None));
        }
    }
    rows
}

#[test]
fn sentence_transformers_files_hold_the_scores_and_train_one_step() {
    let run = scored_run();
    let (want, _) = expected(false);
    let smallest = want.iter().map(|g| g.negatives.len()).min().unwrap();
    let largest = want.iter().map(|g| g.negatives.len()).max().unwrap();
    assert!(
        smallest < largest,
        "every query has the same number of negatives"
    );

    // st-margin: n is the smallest count, nothing dropped.
    let margin = run.out.join("margin.parquet");
    let err = export("st-margin", &margin, &[]);
    assert!(err.contains(&format!("{smallest} negatives each")), "{err}");
    assert!(err.contains("0 with too few negatives"), "{err}");
    let (names, rows) = read_st(&margin);
    let mut columns = vec!["query".to_string(), "positive".to_string()];
    columns.extend((1..=smallest).map(|i| format!("negative_{i}")));
    columns.push("label".into());
    assert_eq!(names, columns);
    assert_eq!(rows, expected_st(&want, smallest, true));

    // st-kl with --negatives above the smallest count: queries with fewer are dropped.
    let n = smallest + 1;
    let kl = run.out.join("kl.parquet");
    let err = export("st-kl", &kl, &["--negatives", &n.to_string()]);
    let fewer = want.iter().filter(|g| g.negatives.len() < n).count();
    assert!(fewer > 0);
    assert!(
        err.contains(&format!("{fewer} with too few negatives")),
        "{err}"
    );
    let (_, rows) = read_st(&kl);
    assert_eq!(rows, expected_st(&want, n, false));

    // With the flagged negatives: a list column of their flags.
    let (with_flagged, _) = expected(true);
    let m = with_flagged
        .iter()
        .map(|g| g.negatives.len())
        .min()
        .unwrap();
    let flagged = run.out.join("margin-flagged.parquet");
    export("st-margin", &flagged, &["--keep-false-negatives"]);
    let (names, rows) = read_st(&flagged);
    assert_eq!(names.last().unwrap(), "negative_flagged");
    let mut want_rows = Vec::new();
    for g in with_flagged.iter() {
        let flags: Vec<bool> = g.negatives[..m].iter().map(|n| n.2).collect();
        want_rows.extend(g.positives.iter().map(|_| Some(flags.clone())));
    }
    assert_eq!(
        rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>(),
        want_rows
    );
    assert!(want_rows.iter().flatten().flatten().any(|&f| f));

    // sentence-transformers trains a step on each, loaded with `datasets`.
    let out = std::process::Command::new(python())
        .arg(repo().join("scripts/check_export_st.py"))
        .arg("--model")
        .arg(generated("tiny_bi_mean"))
        .arg("--margin")
        .arg(&margin)
        .arg("--kl")
        .arg(&kl)
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_DATASETS_OFFLINE", "1")
        .env("HF_DATASETS_CACHE", run.out.join("hf-datasets"))
        .output()
        .expect("running scripts/check_export_st.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "check_export_st.py failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 2, "{stdout}");
    for (r, negatives) in results.iter().zip([smallest, n]) {
        assert!(r["loss"].as_f64().unwrap().is_finite(), "{r}");
        assert_eq!(r["negatives"].as_u64().unwrap() as usize, negatives);
    }
}

#[test]
fn export_refuses_a_pipeline_the_run_was_not_mined_with() {
    let run = scored_run();
    let text = std::fs::read_to_string(&run.pipeline).unwrap();
    let other = run.out.join("other-seed.toml");
    std::fs::write(&other, text.replace("seed = 7", "seed = 8")).unwrap();
    let output = run.out.join("refused.jsonl");
    let out = distill(
        &[
            "export-data",
            run.run_dir.to_str().unwrap(),
            "--pipeline",
            other.to_str().unwrap(),
            "--format",
            "flagembedding",
            "--output",
            output.to_str().unwrap(),
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("is not the pipeline") && err.contains("settings differ in `seed`"),
        "{err}"
    );
    assert!(!output.exists());
}
