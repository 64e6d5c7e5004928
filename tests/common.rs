//! Shared helpers: fixture locations (failing loudly when setup did not make them),
//! reference files, and the Python reference runner.
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::process::Command;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A fixture from `tests/fixtures/generated`; panics with the fix when it is missing.
pub fn generated(name: &str) -> PathBuf {
    let path = repo().join("tests/fixtures/generated").join(name);
    assert!(
        path.exists(),
        "missing fixture {} -- run `make fixtures` (reference outputs from transformers / \
         sentence-transformers)",
        path.display()
    );
    path
}

/// The real all-MiniLM-L6-v2 student; panics when `make setup` did not fetch it.
pub fn student_dir() -> PathBuf {
    let path = repo().join("models/all-MiniLM-L6-v2");
    assert!(
        path.join("model.safetensors").exists(),
        "the student model is missing at {} -- run `make setup`",
        path.display()
    );
    path
}

pub fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

#[derive(Debug, Deserialize)]
pub struct Text {
    pub id: String,
    pub text: String,
}

#[derive(Debug, Deserialize)]
pub struct Pair {
    pub id: String,
    pub query: String,
    pub passage: String,
}

pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Vec<T> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

pub fn texts() -> Vec<Text> {
    read_jsonl(&fixture("parity_texts.jsonl"))
}

pub fn pairs() -> Vec<Pair> {
    read_jsonl(&fixture("parity_pairs.jsonl"))
}

#[derive(Debug, Deserialize)]
pub struct RefEmbeddings {
    pub ids: Vec<String>,
    pub embeddings: Vec<Vec<f32>>,
}

#[derive(Debug, Deserialize)]
pub struct RefScores {
    pub ids: Vec<String>,
    pub logits: Vec<f32>,
    pub scores: Vec<f32>,
    /// Whether `CrossEncoder.predict` (longest-first truncation) saw the same tokens as
    /// the passage-only truncation used for `logits`.
    pub same_tokens_as_predict: Vec<bool>,
}

/// Our logits and scores against the reference: logits everywhere; scores against
/// `CrossEncoder.predict` wherever it tokenized the pair as we do.
pub fn assert_scores_match(what: &str, logits: &[f32], scores: &[f32], want: &RefScores) {
    let d = max_abs_diff_1d(logits, &want.logits);
    assert!(d <= 1e-4, "{what}: logits differ by {d:e}");
    let compared: Vec<usize> = (0..scores.len())
        .filter(|&i| want.same_tokens_as_predict[i])
        .collect();
    assert!(
        compared.len() * 2 > scores.len(),
        "{what}: too few comparable pairs"
    );
    let d = compared
        .iter()
        .map(|&i| (scores[i] - want.scores[i]).abs())
        .fold(0f32, f32::max);
    assert!(
        d <= 1e-4,
        "{what}: scores differ from CrossEncoder.predict by {d:e}"
    );
}

pub fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> T {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Largest absolute difference between two matrices of equal shape.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "row counts differ");
    a.iter()
        .zip(b)
        .map(|(x, y)| {
            assert_eq!(x.len(), y.len(), "row widths differ");
            x.iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0f32, f32::max)
        })
        .fold(0f32, f32::max)
}

pub fn max_abs_diff_1d(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "lengths differ");
    a.iter()
        .zip(b)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max)
}

pub fn rows(t: &tch::Tensor) -> Vec<Vec<f32>> {
    Vec::<Vec<f32>>::try_from(t).expect("2-d float tensor")
}

/// The venv's Python; panics when setup did not create it.
pub fn python() -> PathBuf {
    let py = repo().join(".venv/bin/python");
    assert!(
        py.exists(),
        "{} is missing -- run `make setup`",
        py.display()
    );
    py
}

/// Run `scripts/reference.py ARGS` offline; panics with its output when it fails.
pub fn reference(args: &[&str]) {
    let out = Command::new(python())
        .arg(repo().join("scripts/reference.py"))
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_OFFLINE", "1")
        .output()
        .expect("running scripts/reference.py");
    assert!(
        out.status.success(),
        "reference.py {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run the `distill` binary with `args` and extra environment variables.
pub fn distill_output(args: &[&str], envs: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
    c.args(args);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// Run the `distill` binary with `args` and extra environment variables; panics with its
/// stderr unless it succeeds.
pub fn distill_ok(args: &[&str], envs: &[(&str, &str)]) {
    let out = distill_output(args, envs);
    assert!(
        out.status.success(),
        "distill {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Run a Python snippet in the venv with `args`; panics with its stderr on failure and
/// returns its stdout.
pub fn python_stdout(script: &str, args: &[&Path]) -> String {
    let out = Command::new(python())
        .args(["-c", script])
        .args(args)
        .output()
        .expect("running python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// sentence-transformers' embeddings of the parity texts by `model`, which must load
/// without a warning.
pub fn reference_embed(model: &Path, output: &Path) {
    reference(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        fixture("parity_texts.jsonl").to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--fail-on-warning",
    ]);
}

/// transformers' logits and `CrossEncoder.predict` scores of the parity pairs by `model`,
/// which must load without a warning.
pub fn reference_rerank(model: &Path, output: &Path) {
    reference(&[
        "rerank",
        "--model",
        model.to_str().unwrap(),
        "--input",
        fixture("parity_pairs.jsonl").to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--fail-on-warning",
    ]);
}

/// pytrec_eval's mean measures of a TREC run file against a BEIR qrels file (with or
/// without a header), named as `Measures::NAMES` (MRR@10 is recip_rank when the first
/// relevant document is in the top 10, as `scripts/make_eval_reference.py` takes it),
/// and `queries`, the number of queries it evaluated (judged and retrieved).
pub fn pytrec_eval_means(run: &Path, qrels: &Path) -> serde_json::Value {
    let script = r#"
import sys, json, pytrec_eval
run_file, qrels_file = sys.argv[1], sys.argv[2]
qrels = {}
for i, line in enumerate(open(qrels_file)):
    q, d, s = line.rstrip("\n").split("\t")
    if i == 0 and not s.lstrip("-").isdigit():
        continue
    qrels.setdefault(q, {})[d] = int(s)
run = {}
for line in open(run_file):
    q, _, d, _, s, _ = line.split()
    run.setdefault(q, {})[d] = float(s)
measures = {"ndcg_cut.10", "P.10", "recall.10", "recall.100", "recall.1000", "map_cut.100", "recip_rank"}
res = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
ours = {"ndcg@10": "ndcg_cut_10", "p@10": "P_10", "recall@10": "recall_10",
        "recall@100": "recall_100", "recall@1000": "recall_1000", "map@100": "map_cut_100"}
n = len(res)
out = {k: sum(r[v] for r in res.values()) / n for k, v in ours.items()}
out["mrr@10"] = sum(r["recip_rank"] if r["recip_rank"] >= 0.1 else 0.0 for r in res.values()) / n
out["queries"] = n
print(json.dumps(out))
"#;
    let out = python_stdout(script, &[run, qrels]);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("pytrec_eval output {out:?}: {e}"))
}

/// One line of a TREC run file: query, document, rank, score.
pub type TrecLine = (String, String, usize, f32);

pub fn read_trec(path: &Path) -> Vec<TrecLine> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| {
            let c: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(c.len(), 6, "{}: {l}", path.display());
            (
                c[0].into(),
                c[2].into(),
                c[3].parse().unwrap(),
                c[4].parse().unwrap(),
            )
        })
        .collect()
}

/// `reranked` (a TREC run file) holds, per query of the run file `input`, its top `k`
/// documents in TREC order, each scored as the cross-encoder `ce` scores the (query,
/// document) pair of the BEIR folder `data`, ranked 1, 2, ... by descending score.
pub fn assert_reranked(reranked: &Path, input: &Path, ce: &Path, data: &Path, k: usize) {
    use distill::ranking::metrics::trec_order;
    let mut by_query: std::collections::BTreeMap<String, Vec<(String, f32)>> = Default::default();
    for (q, d, _, s) in read_trec(input) {
        by_query.entry(q).or_default().push((d, s));
    }
    let mut want: Vec<(String, String)> = Vec::new();
    for (q, docs) in &mut by_query {
        trec_order(docs);
        want.extend(docs.iter().take(k).map(|(d, _)| (q.clone(), d.clone())));
    }
    let got = read_trec(reranked);
    let mut got_pairs: Vec<(String, String)> = got
        .iter()
        .map(|(q, d, _, _)| (q.clone(), d.clone()))
        .collect();
    got_pairs.sort();
    want.sort();
    assert_eq!(
        got_pairs, want,
        "reranked pairs are not the input's top {k}"
    );
    let ds = distill::data::beir::Dataset::load(data, &[], true).unwrap();
    let model =
        distill::model::CrossEncoder::load(ce, None, tch::Device::Cpu, tch::Kind::Float).unwrap();
    let pairs: Vec<_> = got
        .iter()
        .map(|(q, d, _, _)| {
            let q = ds.queries.text(q).unwrap().unwrap();
            (q, ds.corpus.text(d).unwrap().unwrap())
        })
        .collect();
    let scores = model.score(&pairs, 4, &mut |_| {}).unwrap();
    let written: Vec<f32> = got.iter().map(|l| l.3).collect();
    let d = max_abs_diff_1d(&written, &scores);
    assert!(
        d <= 1e-5,
        "written scores differ from the cross-encoder's by {d:e}"
    );
    for w in got.windows(2) {
        let ((q1, _, r1, s1), (q2, _, r2, s2)) = (&w[0], &w[1]);
        if q1 == q2 {
            assert_eq!(*r2, r1 + 1, "ranks of {q1} are not consecutive");
            assert!(
                s1 >= s2,
                "{q1}: rank {r1} scores {s1} below rank {r2}'s {s2}"
            );
        } else {
            assert_eq!(*r2, 1, "{q2} does not start at rank 1");
        }
    }
    assert_eq!(got.first().map(|l| l.2), Some(1));
}

/// The shards committed in the partial folders of the stage folder `stage_dir` (mine's
/// `dsN-*` and score's `scores-*` tables; not the corpus-embedding parts, nor files being
/// written, whose names start with a dot). Counted on disk because a process killed just
/// after writing a shard may not have logged it.
pub fn committed_shards(stage_dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(stage_dir) else {
        return 0;
    };
    entries
        .map(|e| e.unwrap().path())
        .filter(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".partial-")
        })
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| {
            name.ends_with(".parquet") && !name.starts_with('.') && !name.starts_with("emb-")
        })
        .count()
}

/// The `shard_committed` events of `stage` in the log text `log`, and the stage's number
/// of shards (the largest `shards` among them; 0 with none).
pub fn shard_commits(log: &str, stage: &str) -> (usize, usize) {
    let stage_key = format!("\"stage\":\"{stage}\"");
    let commits: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.contains("\"shard_committed\"") && l.contains(&stage_key))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let total = commits
        .iter()
        .map(|v| v["shards"].as_u64().unwrap() as usize)
        .max()
        .unwrap_or(0);
    (commits.len(), total)
}
