//! The teacher gate, the health checks and watch datasets, on the CPU: the real student
//! (all-MiniLM-L6-v2, strong on the tiny animals dataset) against a random cross-encoder
//! teacher, which no dev slice can mistake for a useful one.
use crate::common::distill_output as distill;
use crate::common::*;
use distill::data::pairs::PairTable;
use std::path::{Path, PathBuf};

/// A pipeline over the tiny fixtures with the real student and the random `ce_sigmoid`
/// teacher; `dev` goes into `[teacher_train]`, `extra` at the end of the file.
fn pipeline(dir: &Path, name: &str, data: &Path, dev: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"[run]
name = "{name}"
output_root = "{out}"
seed = 7
device = "cpu"

[student]
path = "{student}"
batch_size = 16

[teacher]
path = "{teacher}"
batch_size = 16

[teacher_train]
{dev}

[[dataset]]
name = "animals"
path = "{data}"

[mine]
top_k = 20
range_min = 0
range_max = 15
num_negatives = 4

[score]
absolute_margin = 0.05

[train]
batch_queries = 4
negatives = 3
exclude_false_negatives = false

[eval]
top_k = 20
rerank_k = 10
{extra}
"#,
        out = dir.join("out").display(),
        student = student_dir().display(),
        teacher = generated("ce_sigmoid").display(),
        data = data.display(),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn run(path: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["run", path.to_str().unwrap()];
    all.extend(args);
    distill(&all, &[])
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn a_random_teacher_stops_at_the_gate_and_the_override_is_marked() {
    let dir = tempfile::tempdir().unwrap();
    let data = generated("beir_tiny");
    let path = pipeline(dir.path(), "gate", &data, "dev_queries = 6", "");
    let out = run(&path, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(4), "{err}");
    // The message names both numbers and what to try; nothing was scored.
    assert!(err.contains("teacher gate"), "{err}");
    assert!(
        err.contains("teacher rerank") && err.contains("student alone"),
        "{err}"
    );
    assert!(err.contains("--allow-weak-teacher"), "{err}");
    let run_dir = dir.path().join("out/gate");
    let dev: serde_json::Value = read_json(&run_dir.join("teacher/dev_eval.json"));
    let (s, t) = (
        dev["animals"]["student"]["ndcg@10"].as_f64().unwrap(),
        dev["animals"]["teacher"]["ndcg@10"].as_f64().unwrap(),
    );
    assert_eq!(dev["animals"]["queries"], 6);
    assert!(t - s < 0.01, "the random teacher passed: {t} vs {s}");
    assert!(err.contains(&format!("{t:.4}")) && err.contains(&format!("{s:.4}")));
    assert!(!run_dir.join("score/manifest.json").exists());
    assert!(!run_dir.join("score/teacher_scores.parquet").exists());
    // The dev queries were not mined.
    let cand = PairTable::read(&run_dir.join("mine/candidates.parquet")).unwrap();
    let held: Vec<String> = dev_ids(&data, 6);
    assert!(cand.query_id.iter().all(|q| !held.contains(q)));
    // A second run stops again, at once.
    assert_eq!(run(&path, &[]).status.code(), Some(4));

    // The override goes on; the report marks the run; --strict-health fails it.
    let out = run(&path, &["--allow-weak-teacher"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("weak teacher allowed"), "{err}");
    assert!(err.contains("health warning"), "{err}");
    let md = std::fs::read_to_string(run_dir.join("report/report.md")).unwrap();
    assert!(md.contains("WEAK TEACHER"), "{md}");
    assert!(md.contains("Teacher check on the dev slice"), "{md}");
    let health: Vec<serde_json::Value> = read_json(&run_dir.join("report/health.json"));
    assert!(health.iter().any(|f| f["check"] == "weak_teacher"));
    let log = std::fs::read_to_string(run_dir.join("log.jsonl")).unwrap();
    assert!(
        log.contains("\"event\":\"health\""),
        "no health event logged"
    );
    let out = run(&path, &["--allow-weak-teacher", "--strict-health"]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    // The eval stage measured both students on the dev slice.
    let metrics: serde_json::Value = read_json(&run_dir.join("eval/metrics.json"));
    assert_eq!(metrics["animals"]["dev"]["queries"], 6);
    assert!(metrics["animals"]["dev"]["distilled"]["ndcg@10"].is_f64());
}

/// The dev slice's ids, as the pipeline draws them (seed 7).
fn dev_ids(data: &Path, n: usize) -> Vec<String> {
    let ds = distill::data::beir::Dataset::load(data, &["train"], true).unwrap();
    let labelled: Vec<&str> = ds.qrels["train"]
        .iter()
        .filter(|(_, d)| d.values().any(|&g| g > 0))
        .map(|(q, _)| q.as_str())
        .collect();
    distill::data::dev::slice(
        "animals",
        &labelled,
        distill::data::dev::DevQueries::Count(n),
        7,
    )
    .into_iter()
    .collect()
}

/// A copy of the tiny dataset without its training qrels.
fn without_train_split(root: &Path, name: &str) -> PathBuf {
    let dst = root.join(name);
    std::fs::create_dir_all(dst.join("qrels")).unwrap();
    let tiny = generated("beir_tiny");
    for f in ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"] {
        std::fs::copy(tiny.join(f), dst.join(f)).unwrap();
    }
    dst
}

#[test]
fn a_watch_dataset_is_evaluated_and_never_mined_scored_or_trained_on() {
    let dir = tempfile::tempdir().unwrap();
    // A watch dataset needs only a corpus, queries and the evaluated qrels.
    let watch = without_train_split(dir.path(), "watch-data");
    let tiny = generated("beir_tiny");
    let extra = format!(
        "\n[[dataset]]\nname = \"watched\"\npath = \"{}\"\nrole = \"watch\"\n",
        watch.display()
    );
    // Datasets must come before [mine]: put the extra table after [eval] as a new array entry.
    let path = pipeline(
        dir.path(),
        "watch",
        &tiny,
        "dev_queries = 0",
        &format!("\n[health]\nallow_weak_teacher = true\n{extra}"),
    );
    let out = run(&path, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run_dir = dir.path().join("out/watch");
    for (stage, file) in [
        ("mine", "candidates.parquet"),
        ("score", "teacher_scores.parquet"),
    ] {
        let t = PairTable::read(&run_dir.join(stage).join(file)).unwrap();
        assert!(!t.is_empty());
        assert!(t.dataset.iter().all(|d| d == "animals"), "{stage} read it");
    }
    let metrics: serde_json::Value = read_json(&run_dir.join("eval/metrics.json"));
    let w = &metrics["watched"];
    assert_eq!(w["role"], "watch");
    for (model, system) in [
        ("base", "student"),
        ("distilled", "student"),
        ("distilled", "student+teacher"),
    ] {
        assert!(w[model][system]["ndcg@10"].is_f64(), "{model} {system}");
    }
    // The same corpus and test qrels: the base student scores the same on both names.
    assert_eq!(
        w["base"]["student"]["ndcg@10"],
        metrics["animals"]["base"]["student"]["ndcg@10"]
    );
    let md = std::fs::read_to_string(run_dir.join("report/report.md")).unwrap();
    assert!(md.contains("watch dataset"), "{md}");
    // The no-dev-slice warning is a health finding.
    let health: Vec<serde_json::Value> = read_json(&run_dir.join("report/health.json"));
    assert!(health.iter().any(|f| f["check"] == "no_dev_slice"));
}

#[test]
fn degenerate_inputs_fail_at_the_stage_that_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    // An empty training split: the check before any stage fails, naming the qrels file
    // and the key; nothing was mined.
    let empty = without_train_split(dir.path(), "empty-train");
    let tiny = generated("beir_tiny");
    std::fs::write(
        empty.join("qrels/train.tsv"),
        "query-id\tcorpus-id\tscore\n",
    )
    .unwrap();
    let path = pipeline(dir.path(), "empty", &empty, "", "");
    let out = run(&path, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("train.tsv") && err.contains("dataset.train_split"),
        "{err}"
    );
    assert!(!err.contains("mine: failed"), "{err}");
    assert!(!dir.path().join("out/empty/mine").exists());

    // A margin that flags every negative: score fails naming the key.
    let path = pipeline(
        dir.path(),
        "margin",
        &tiny,
        "dev_queries = 0",
        "[health]\nallow_weak_teacher = true\n",
    );
    let text_in = std::fs::read_to_string(&path)
        .unwrap()
        .replace("absolute_margin = 0.05", "absolute_margin = 1000.0")
        .replace("exclude_false_negatives = false", "");
    std::fs::write(&path, text_in).unwrap();
    let out = run(&path, &[]);
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("score.absolute_margin") && err.contains("flags all"),
        "{err}"
    );
}
