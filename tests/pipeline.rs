//! The staged engine on tiny random models and a tiny BEIR dataset, on the CPU: skipping,
//! invalidation, resuming after a kill, `--shard`, the lock, and bad input.
use crate::common::distill_output as distill;
use crate::common::*;
use distill::data::pairs::PairTable;
use distill::pipeline::runner::{self, RunOptions, StageState};
use distill::pipeline::Pipeline;
use distill::progress::Verbosity;
use std::path::{Path, PathBuf};

/// A pipeline file in `dir` over the tiny fixtures; `extra` is appended to `[mine]` /
/// `[score]` through `mine` and `score`.
pub(crate) fn pipeline_text(
    out: &Path,
    data: &Path,
    dataset: &str,
    mine: &str,
    score: &str,
) -> String {
    format!(
        r#"[run]
name = "tiny"
output_root = "{out}"
seed = 7
device = "cpu"

[student]
path = "{student}"
batch_size = 8

[teacher]
path = "{teacher}"
batch_size = 8

[teacher_train]
dev_queries = 0

[[dataset]]
name = "animals"
path = "{data}"
{dataset}

[mine]
top_k = 20
range_min = 1
range_max = 15
num_negatives = 4
sampling = "random"
query_chunk = 4
{mine}

[score]
shard_size = 16
absolute_margin = 0.05
{score}

[train]
batch_queries = 8
negatives = 3
exclude_false_negatives = false
"#,
        out = out.display(),
        data = data.display(),
        student = generated("tiny_bi_mean").display(),
        teacher = generated("ce_sigmoid").display(),
    )
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, mine: &str, score: &str) -> PathBuf {
        self.write_with_data(name, &generated("beir_tiny"), mine, score)
    }

    fn write_with_data(&self, name: &str, data: &Path, mine: &str, score: &str) -> PathBuf {
        self.write_full(name, data, "", mine, score)
    }

    fn write_full(
        &self,
        name: &str,
        data: &Path,
        dataset: &str,
        mine: &str,
        score: &str,
    ) -> PathBuf {
        let out = self.dir.path().join(format!("out-{name}"));
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, pipeline_text(&out, data, dataset, mine, score)).unwrap();
        path
    }
}

fn quiet() -> RunOptions {
    RunOptions {
        verbosity: Some(Verbosity::Quiet),
        ..Default::default()
    }
}

/// Run a pipeline in this process. Runs are serialised: torch's random generator is
/// process-global, so two trainings in parallel test threads would draw from one stream
/// and stop being reproducible.
fn run_lib(path: &Path, opts: &RunOptions) -> runner::RunReport {
    static IN_PROCESS: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = IN_PROCESS.lock().unwrap_or_else(|e| e.into_inner());
    let p = Pipeline::load(path).unwrap();
    runner::run(&p, opts).unwrap()
}

fn output(path: &Path, stage: &str, file: &str) -> PairTable {
    let p = Pipeline::load(path).unwrap();
    PairTable::read(&p.run_dir.join(stage).join(file)).unwrap()
}

#[test]
fn full_run_then_unchanged_rerun_skips_everything() {
    let f = Fixture::new();
    let path = f.write("a", "", "");
    let first = run_lib(&path, &quiet());
    assert_eq!(
        first.ran,
        vec!["mine", "teacher", "score", "train", "eval", "report"]
    );
    let second = run_lib(&path, &quiet());
    assert!(second.ran.is_empty());
    assert_eq!(
        second.skipped,
        vec!["mine", "teacher", "score", "train", "eval", "report"]
    );

    let cand = output(&path, "mine", "candidates.parquet");
    let scores = output(&path, "score", "teacher_scores.parquet");
    assert!(!cand.is_empty());
    // Positives are included, with their exact rank and score; no query retrieves itself.
    assert!(cand.is_positive.iter().any(|&p| p));
    for i in 0..cand.len() {
        assert_ne!(cand.query_id[i], cand.doc_id[i]);
        if !cand.is_positive[i] {
            assert!(
                (2..=15).contains(&cand.rank[i]),
                "rank {} outside the range",
                cand.rank[i]
            );
        }
    }
    // The teacher table is the candidates plus teacher columns, row for row.
    assert_eq!(scores.query_id, cand.query_id);
    assert_eq!(scores.doc_id, cand.doc_id);
    let flagged = scores.is_false_negative.as_ref().unwrap();
    let summary: serde_json::Value = read_json(
        &Pipeline::load(&path)
            .unwrap()
            .run_dir
            .join("score/manifest.json"),
    );
    assert_eq!(
        summary["summary"]["flagged_false_negatives"]
            .as_u64()
            .unwrap() as usize,
        flagged.iter().filter(|&&b| b).count()
    );
    // pyarrow reads both tables.
    let script = "import sys, pyarrow.parquet as pq\n\
                  print(*[pq.read_table(p).num_rows for p in sys.argv[1:]])";
    let p = Pipeline::load(&path).unwrap();
    let out = python_stdout(
        script,
        &[
            &p.run_dir.join("mine/candidates.parquet"),
            &p.run_dir.join("score/teacher_scores.parquet"),
        ],
    );
    assert_eq!(out.trim(), format!("{} {}", cand.len(), cand.len()));
    // One JSON line per stage event in the run's log.
    let log = std::fs::read_to_string(p.run_dir.join("log.jsonl")).unwrap();
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("\"stage_finished\""))
            .count(),
        6
    );

    // 40 bytes of the candidates overwritten, size unchanged: status names the file, run
    // redoes mine, and since the redone file is the same, no stage that reads it reruns.
    let cand_path = p.run_dir.join("mine/candidates.parquet");
    let good = std::fs::read(&cand_path).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 40] {
        *b ^= 0x5a;
    }
    std::fs::write(&cand_path, &bad).unwrap();
    let states = runner::status(&p).unwrap();
    assert_eq!(
        states[0].state,
        StageState::Stale(
            "output `candidates.parquet` was modified (its sha256 differs from the manifest's)"
                .into()
        )
    );
    // (report reruns: it shows the stages' times, and mine's are new.)
    let r = run_lib(&path, &quiet());
    assert_eq!(r.ran, vec!["mine", "report"]);
    assert_eq!(r.skipped, vec!["teacher", "score", "train", "eval"]);
    assert!(
        std::fs::read(&cand_path).unwrap() == good,
        "mine did not redo its output"
    );
}

#[test]
fn changed_score_parameter_reruns_score_only_and_mine_parameter_reruns_both() {
    let f = Fixture::new();
    let path = f.write("b", "", "");
    run_lib(&path, &quiet());
    // Same run directory, another false-negative margin.
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("absolute_margin = 0.05", "absolute_margin = 0.5");
    std::fs::write(&path, text).unwrap();
    let states: std::collections::BTreeMap<String, StageState> =
        runner::status(&Pipeline::load(&path).unwrap())
            .unwrap()
            .into_iter()
            .map(|s| (s.stage, s.state))
            .collect();
    assert_eq!(states["mine"], StageState::Done);
    // A given teacher's dev-slice check (off here) does not read the candidates.
    assert_eq!(states["teacher"], StageState::Done);
    assert_eq!(
        states["score"],
        StageState::Stale("its configuration changed".into())
    );
    let r = run_lib(&path, &quiet());
    // train reads teacher_scores, which changed; it ignores the flags here
    // (exclude_false_negatives = false), so the student comes out identical and eval,
    // whose inputs did not change, is skipped; report shows the new statistics.
    assert_eq!(
        (r.ran.clone(), r.skipped.clone()),
        (
            vec![
                "score".to_string(),
                "train".to_string(),
                "report".to_string()
            ],
            vec![
                "mine".to_string(),
                "teacher".to_string(),
                "eval".to_string()
            ]
        )
    );
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("num_negatives = 4", "num_negatives = 2");
    std::fs::write(&path, text).unwrap();
    let r = run_lib(&path, &quiet());
    assert_eq!(r.ran, vec!["mine", "score", "train", "eval", "report"]);
    // --from and --force rerun done stages.
    let r = run_lib(
        &path,
        &RunOptions {
            from: Some("score".into()),
            ..quiet()
        },
    );
    assert_eq!(r.ran, vec!["score", "train", "eval", "report"]);
    assert!(r.skipped.is_empty(), "mine is not selected by --from score");
    let r = run_lib(
        &path,
        &RunOptions {
            only: Some("mine".into()),
            force: true,
            ..quiet()
        },
    );
    assert_eq!(r.ran, vec!["mine"]);
}

/// Kill the binary after `after` committed shards, check the stage shows as partial,
/// rerun, and compare the final tables with an uninterrupted run.
fn kill_and_resume(stage: &str, after: &str) {
    let f = Fixture::new();
    let reference = f.write("ref", "", "");
    run_lib(&reference, &quiet());
    let path = f.write("killed", "", "");
    let p = path.to_str().unwrap();
    if stage == "score" {
        run_lib(
            &path,
            &RunOptions {
                only: Some("mine".into()),
                ..quiet()
            },
        );
    }
    let out = distill(&["-q", "run", p], &[("DISTILL_FAULT_AFTER_SHARDS", after)]);
    assert!(!out.status.success(), "the fault did not fire");
    let status = runner::status(&Pipeline::load(&path).unwrap()).unwrap();
    let s = status.iter().find(|s| s.stage == stage).unwrap();
    assert!(
        matches!(s.state, StageState::Partial { .. }),
        "{stage}: {}",
        s.state
    );
    // Nothing that looks complete was left behind.
    let dir = Pipeline::load(&path).unwrap().run_dir.join(stage);
    assert!(!dir.join("manifest.json").exists());
    let out = distill(&["-q", "run", p], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for (st, file) in [
        ("mine", "candidates.parquet"),
        ("score", "teacher_scores.parquet"),
    ] {
        assert_eq!(
            output(&path, st, file),
            output(&reference, st, file),
            "{st} differs after resume"
        );
    }
    // The resumed run did not redo the committed shards.
    let log = std::fs::read_to_string(dir.parent().unwrap().join("log.jsonl")).unwrap();
    let committed = log
        .lines()
        .filter(|l| {
            l.contains("\"shard_committed\"") && l.contains(&format!("\"stage\":\"{stage}\""))
        })
        .count();
    let total: usize = log
        .lines()
        .filter(|l| {
            l.contains("\"shard_committed\"") && l.contains(&format!("\"stage\":\"{stage}\""))
        })
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .map(|v| v["shards"].as_u64().unwrap() as usize)
        .max()
        .unwrap();
    assert_eq!(committed, total, "a shard was computed twice or lost");
}

#[test]
fn killed_mine_resumes_to_the_same_candidates() {
    kill_and_resume("mine", "2");
}

#[test]
fn killed_score_resumes_to_the_same_scores() {
    kill_and_resume("score", "3");
}

#[test]
fn sharded_scoring_merges_to_the_single_process_result() {
    let f = Fixture::new();
    let reference = f.write("ref", "", "");
    run_lib(&reference, &quiet());
    let path = f.write("sharded", "", "");
    let p = path.to_str().unwrap();
    for stage in ["mine", "teacher"] {
        run_lib(
            &path,
            &RunOptions {
                only: Some(stage.into()),
                ..quiet()
            },
        );
    }
    for shard in ["0/3", "1/3", "2/3"] {
        let out = distill(&["-q", "run", p, "--shard", shard], &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // All shards exist; the merge run scores nothing and assembles the file.
    let r = run_lib(&path, &quiet());
    assert_eq!(r.ran, vec!["score", "train", "eval", "report"]);
    let log =
        std::fs::read_to_string(Pipeline::load(&path).unwrap().run_dir.join("log.jsonl")).unwrap();
    let last_run = log.rsplit("\"run_started\"").next().unwrap();
    assert!(
        !last_run
            .lines()
            .any(|l| l.contains("shard_committed") && l.contains("\"stage\":\"score\"")),
        "the merge run rescored shards"
    );
    assert_eq!(
        output(&path, "score", "teacher_scores.parquet"),
        output(&reference, "score", "teacher_scores.parquet")
    );
}

#[test]
fn a_live_lock_refuses_a_second_run() {
    let f = Fixture::new();
    let path = f.write("lock", "", "");
    let p = Pipeline::load(&path).unwrap();
    std::fs::create_dir_all(&p.run_dir).unwrap();
    let owner = serde_json::json!({
        "pid": std::process::id(),
        "host": std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim(),
        "started_unix": 0
    });
    std::fs::write(p.run_dir.join("run.lock"), owner.to_string()).unwrap();
    let out = distill(&["run", path.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("locked by pid"), "{err}");
    assert!(!p.run_dir.join("mine").exists());
}

#[test]
fn check_names_file_line_and_key() {
    let f = Fixture::new();
    let cases = [
        ("bogus = 1", "", "unknown field `bogus`"),
        (
            "corpus_chunk = 0",
            "",
            "`mine.corpus_chunk`: must be at least 1",
        ),
        (
            "",
            "relative_margin = 2.0",
            "`score.relative_margin`: must be between 0 and 1",
        ),
        (
            "exclude_positives = \"yes\"",
            "",
            "invalid type: string \"yes\", expected a boolean",
        ),
    ];
    for (i, (mine, score, needle)) in cases.iter().enumerate() {
        let path = f.write(&format!("bad{i}"), mine, score);
        let out = distill(&["check", path.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "{err}");
        // file:line: ...
        let line = format!("{}:", path.display());
        let at = err
            .find(&line)
            .unwrap_or_else(|| panic!("no file in {err}"));
        let rest = &err[at + line.len()..];
        assert!(
            rest.chars().next().unwrap().is_ascii_digit() && !rest.starts_with('0'),
            "{err}"
        );
    }
    let missing = f.write_with_data("nodata", Path::new("/nonexistent/beir"), "", "");
    let out = distill(&["check", missing.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("`dataset.path`: dataset directory `/nonexistent/beir` does not exist"),
        "{err}"
    );
    let good = f.write("good", "", "");
    assert!(distill(&["check", good.to_str().unwrap()], &[])
        .status
        .success());
}

#[test]
fn train_only_keys_are_refused_in_teacher_train() {
    let f = Fixture::new();
    let student = generated("tiny_bi_mean");
    let teacher = format!("path = \"{}\"", generated("ce_sigmoid").display());
    let base = format!("base = \"{}\"", student.display());
    let cases = [
        (
            "[teacher_train]\nbatching = \"topic\"",
            "`teacher_train.batching`: is a [train] setting",
        ),
        (
            "[teacher_train]\ninfonce_symmetric = true",
            "`teacher_train.infonce_symmetric`: is a [train] setting",
        ),
        (
            "[teacher_train]\neval_every = 3",
            "`teacher_train.eval_every`: is a [train] setting",
        ),
        (
            "[teacher_train]\npseudo_keep = 3",
            "`teacher_train.pseudo_keep`: is a [train] setting",
        ),
        (
            "[teacher_train]\nfreeze_embeddings = true",
            "`teacher_train.freeze_embeddings`: is a [train] setting",
        ),
        (
            "[teacher_train]\nwise_ft = 0.5",
            "`teacher_train.wise_ft`: is a [train] setting",
        ),
        (
            "[teacher_train]\nbaseline = \"contrastive\"",
            "`teacher_train.baseline`: is a [train] setting",
        ),
        (
            "[train]\ndev_queries = 10",
            "`train.dev_queries`: is a [teacher_train] setting",
        ),
        (
            "[teacher_train]\nloss = \"listwise+bce\"\nmin_steps = 0",
            "",
        ),
        (
            "[teacher_train]\nbatching = \"topical\"",
            "unknown variant `topical`, expected `random` or `topic`",
        ),
        ("[teacher_train]\nepochs = 1", ""),
    ];
    for (i, (section, needle)) in cases.iter().enumerate() {
        let path = f.write(&format!("tt{i}"), "", "");
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(&teacher, &base)
            .replace("[teacher_train]\ndev_queries = 0\n", "");
        // A [train] case goes into the file's own [train] table.
        let text = match section.strip_prefix("[train]\n") {
            Some(keys) => text.replace("[train]\n", &format!("[train]\n{keys}\n")),
            None => format!("{text}\n{section}\n"),
        };
        std::fs::write(&path, text).unwrap();
        let out = distill(&["check", path.to_str().unwrap()], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), needle.is_empty(), "{err}");
        assert!(err.contains(needle), "{err}");
    }
}

#[test]
fn train_keys_that_need_others_are_refused() {
    let f = Fixture::new();
    let data = generated("beir_tiny");
    // (dataset lines, [train] lines, expected error; empty: accepted)
    let cases = [
        (
            "pseudo_scope = \"uncovered\"",
            "",
            "`dataset.pseudo_scope`: shapes pseudo-queries, but pseudo_queries is 0",
        ),
        (
            "pseudo_windows = \"question\"",
            "",
            "`dataset.pseudo_windows`: shapes pseudo-queries, but pseudo_queries is 0",
        ),
        (
            "pseudo_per_sentence = 2",
            "",
            "`dataset.pseudo_per_sentence`: shapes pseudo-queries, but pseudo_queries is 0",
        ),
        (
            "pseudo_queries = 3\npseudo_per_sentence = 5",
            "",
            "`dataset.pseudo_per_sentence`: must be between 1 and 4",
        ),
        (
            "pseudo_queries = 3\npseudo_per_sentence = 0",
            "",
            "`dataset.pseudo_per_sentence`: must be between 1 and 4",
        ),
        (
            "",
            "pseudo_keep = 2",
            "`train.pseudo_keep`: picks among pseudo-queries, but no [[dataset]] sets pseudo_queries",
        ),
        ("", "keep_best = true", "`train.keep_best`: needs train.eval_every"),
        ("", "wise_ft = 1.5", "`train.wise_ft`: must be above 0 and at most 1"),
        ("", "wise_ft = 0.0", "`train.wise_ft`: must be above 0 and at most 1"),
        ("", "wise_ft = 0.5", ""),
        (
            "role = \"watch\"\npseudo_queries = 3",
            "",
            "`dataset.pseudo_queries`: a watch dataset is never trained on",
        ),
        (
            "role = \"watch\"",
            "",
            "every [[dataset]] is a watch dataset",
        ),
        (
            "",
            "baseline = \"contrastive\"\ninfonce = 0.0\nmargin_mse = 1.0",
            "`train.baseline`: the contrastive baseline trains on InfoNCE alone",
        ),
        ("", "baseline = \"contrastive\"", ""),
        (
            "",
            "eval_every = 2\neval_split = \"dev\"",
            "`train.eval_split`: ",
        ),
        (
            "pseudo_queries = 3\npseudo_scope = \"uncovered\"\npseudo_windows = \"question\"\npseudo_per_sentence = 2",
            "pseudo_keep = 2",
            "",
        ),
    ];
    for (i, (dataset, train, needle)) in cases.iter().enumerate() {
        let path = f.write_full(&format!("pq{i}"), &data, dataset, "", "");
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, format!("{text}{train}\n")).unwrap();
        let out = distill(&["check", path.to_str().unwrap()], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), needle.is_empty(), "{err}");
        assert!(err.contains(needle), "{err}");
    }
}

/// A copy of the tiny dataset with `edit` applied to one of its files.
fn broken_dataset(
    root: &Path,
    case: usize,
    file: &str,
    edit: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> PathBuf {
    let src = generated("beir_tiny");
    let dst = root.join(format!("data-{case}"));
    std::fs::create_dir_all(dst.join("qrels")).unwrap();
    for f in [
        "corpus.jsonl",
        "queries.jsonl",
        "qrels/train.tsv",
        "qrels/test.tsv",
    ] {
        std::fs::copy(src.join(f), dst.join(f)).unwrap();
    }
    let bytes = std::fs::read(dst.join(file)).unwrap();
    std::fs::write(dst.join(file), edit(bytes)).unwrap();
    dst
}

#[test]
fn bad_input_is_an_error_with_file_and_line_or_a_counted_warning() {
    let f = Fixture::new();
    type Edit = Box<dyn FnOnce(Vec<u8>) -> Vec<u8>>;
    let text = |f: fn(String) -> String| -> Edit {
        Box::new(move |b: Vec<u8>| f(String::from_utf8(b).unwrap()).into_bytes())
    };
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "corpus.jsonl",
            text(|t| t.replacen('}', "", 1)),
            "corpus.jsonl:1: malformed JSON",
        ),
        (
            "corpus.jsonl",
            text(|t| format!("{t}{}\n", t.lines().next().unwrap())),
            "duplicate id `d00` (first seen on line 1)",
        ),
        (
            "queries.jsonl",
            text(|t| t.replacen("where does the axolotl live?", " ", 1)),
            "queries.jsonl:1: empty text for `q00`",
        ),
        (
            "qrels/train.tsv",
            text(|t| format!("{t}q01\tnope\t1\n")),
            "document `nope` is not in the corpus",
        ),
        (
            "corpus.jsonl",
            Box::new(|mut b: Vec<u8>| {
                b.extend_from_slice(b"{\"_id\": \"x\", \"text\": \"\xff\"}\n");
                b
            }),
            "invalid UTF-8",
        ),
    ];
    for (i, (file, edit, needle)) in cases.into_iter().enumerate() {
        let data = broken_dataset(f.dir.path(), i, file, edit);
        let path = f.write_with_data(&format!("bad{i}"), &data, "", "");
        let out = distill(&["-q", "run", path.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(1), "case {i}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "case {i}: {err}");
        let run_dir = Pipeline::load(&path).unwrap().run_dir;
        assert!(!run_dir.join("mine/manifest.json").exists());
        assert!(!run_dir.join("mine/candidates.parquet").exists());
    }
    // Lenient: unknown qrels are skipped with counts, and the run completes.
    let data = broken_dataset(f.dir.path(), 99, "qrels/train.tsv", |b| {
        let mut t = String::from_utf8(b).unwrap();
        t.push_str("q01\tnope\t1\nq99\td01\t1\n");
        t.into_bytes()
    });
    let path = f.write_full("lenient", &data, "strict = false", "", "");
    let out = distill(&["run", path.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The rows are named: on the terminal, and every one in log.jsonl.
    assert!(
        err.contains("animals: 2 qrels rows naming an unknown query or document skipped"),
        "{err}"
    );
    assert!(
        err.contains("train.tsv:") && err.contains("query `q01`, document `nope`"),
        "{err}"
    );
    let log =
        std::fs::read_to_string(Pipeline::load(&path).unwrap().run_dir.join("log.jsonl")).unwrap();
    assert!(log.contains("\"event\":\"detail\"") && log.contains("query `q99`"));
    // `distill check` reads the same contents and says the same.
    let out = distill(&["check", path.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("query `q99`, document `d01`"), "{err}");
}

#[test]
fn the_shipped_nightly_pipeline_is_valid() {
    // Every key of pipelines/nightly.toml parses; its model and data paths are swapped
    // for the fixtures so that validation does not depend on what this machine has.
    let text = std::fs::read_to_string(repo().join("pipelines/nightly.toml")).unwrap();
    let swaps = [
        ("\"models/all-MiniLM-L6-v2\"", generated("tiny_bi_mean")),
        ("\"models/teacher\"", generated("ce_sigmoid")),
        ("\"../shared/data/scifact\"", generated("beir_tiny")),
    ];
    let mut text = text;
    for (from, to) in swaps {
        assert!(text.contains(from), "nightly.toml no longer has {from}");
        text = text.replace(from, &format!("\"{}\"", to.display()));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nightly.toml");
    std::fs::write(&path, text).unwrap();
    let p = Pipeline::load(&path).unwrap();
    assert_eq!(p.name, "nightly");
    assert_eq!(p.mine.range_max, 50);
    assert_eq!(p.score.absolute_margin, Some(0.5));
}

#[test]
fn a_truncated_score_shard_is_redone_and_the_stage_completes_as_uninterrupted() {
    let f = Fixture::new();
    let reference = f.write("ref", "", "");
    run_lib(&reference, &quiet());
    let path = f.write("torn", "", "");
    let p = path.to_str().unwrap();
    run_lib(
        &path,
        &RunOptions {
            only: Some("mine".into()),
            ..quiet()
        },
    );
    let out = distill(&["-q", "run", p], &[("DISTILL_FAULT_AFTER_SHARDS", "3")]);
    assert!(!out.status.success(), "the fault did not fire");
    // A committed shard cut in half, as a full disk or a torn copy can leave it.
    let score_dir = Pipeline::load(&path).unwrap().run_dir.join("score");
    let partial = std::fs::read_dir(&score_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|d| {
            d.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(".partial-")
        })
        .unwrap();
    let shard = partial.join("scores-00001.parquet");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 2]).unwrap();
    let out = distill(&["run", p], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("scores-00001.parquet does not read back"),
        "{err}"
    );
    assert_eq!(
        output(&path, "score", "teacher_scores.parquet"),
        output(&reference, "score", "teacher_scores.parquet"),
        "score differs after the torn shard was redone"
    );
}

#[test]
fn a_corrupted_embedding_cache_entry_is_recomputed_with_a_warning() {
    let f = Fixture::new();
    let path = f.write("cache", "", "");
    let p = path.to_str().unwrap();
    let out = distill(&["-q", "run", p, "--only", "mine"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pipeline = Pipeline::load(&path).unwrap();
    let cache = pipeline.cache_dir.join("embeddings");
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|e| e.extension().is_some_and(|x| x == "parquet"))
        .unwrap();
    let good = std::fs::read(&entry).unwrap();
    // The same size, other bytes: a new night's mine must not use it.
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    for b in &mut bad[mid..mid + 40] {
        *b ^= 0x5a;
    }
    std::fs::write(&entry, &bad).unwrap();
    let out = distill(&["run", p, "--only", "mine", "--name", "night-2"], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("does not match its recorded sha256"), "{err}");
    assert!(
        std::fs::read(&entry).unwrap() == good,
        "the entry was not recomputed"
    );
    let first = PairTable::read(&pipeline.run_dir.join("mine/candidates.parquet")).unwrap();
    let second = PairTable::read(
        &pipeline
            .run_dir
            .parent()
            .unwrap()
            .join("night-2/mine/candidates.parquet"),
    )
    .unwrap();
    assert_eq!(first, second);
}

/// A copy of the generated model `name` in `root`, with `edit` applied to one of its files.
fn broken_model(
    root: &Path,
    name: &str,
    file: &str,
    edit: impl FnOnce(Vec<u8>) -> Vec<u8>,
) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dest = to.join(e.file_name());
            if e.path().is_dir() {
                copy(&e.path(), &dest);
            } else {
                std::fs::copy(e.path(), dest).unwrap();
            }
        }
    }
    let dst = root.join(format!("model-{name}-{}", file.replace('/', "_")));
    copy(&generated(name), &dst);
    let bytes = std::fs::read(dst.join(file)).unwrap();
    std::fs::write(dst.join(file), edit(bytes)).unwrap();
    dst
}

#[test]
fn check_reads_contents_and_rejects_each_bad_case_naming_file_and_key() {
    let f = Fixture::new();
    let root = f.dir.path();
    let truncated = broken_model(root, "tiny_bi_mean", "model.safetensors", |mut b| {
        b.truncate(b.len() - 100);
        b
    });
    let xlmr = broken_model(root, "ce_sigmoid", "config.json", |b| {
        String::from_utf8(b)
            .unwrap()
            .replace(
                "\"model_type\": \"bert\"",
                "\"model_type\": \"xlm-roberta\"",
            )
            .into_bytes()
    });
    let no_train = broken_dataset(root, 50, "qrels/train.tsv", |_| {
        b"query-id\tcorpus-id\tscore\n".to_vec()
    });
    let no_eval = broken_dataset(root, 51, "qrels/test.tsv", |_| {
        b"query-id\tcorpus-id\tscore\nnobody\tnothing\t1\n".to_vec()
    });
    let tiny = generated("tiny_bi_mean").display().to_string();
    let teacher = generated("ce_sigmoid").display().to_string();
    let cases: Vec<(&str, PathBuf, String, String, Vec<&str>)> = vec![
        (
            "truncated student weights",
            generated("beir_tiny"),
            String::new(),
            tiny.clone() + "=>" + &truncated.display().to_string(),
            vec!["student.path", "model.safetensors"],
        ),
        (
            "an xlm-roberta teacher",
            generated("beir_tiny"),
            String::new(),
            teacher.clone() + "=>" + &xlmr.display().to_string(),
            vec!["teacher.path", "config.json", "xlm-roberta"],
        ),
        (
            "a bi-encoder as the teacher",
            generated("beir_tiny"),
            String::new(),
            teacher.clone() + "=>" + &tiny,
            vec!["teacher.path", "not a cross-encoder", "teacher.base"],
        ),
        (
            "an empty training split",
            no_train,
            String::new(),
            String::new(),
            vec!["qrels/train.tsv", "dataset.train_split"],
        ),
        (
            "an evaluation split judging no known query",
            no_eval,
            "strict = false".into(),
            String::new(),
            vec!["qrels/test.tsv", "dataset.eval_split"],
        ),
    ];
    for (i, (what, data, dataset, swap, needles)) in cases.into_iter().enumerate() {
        let path = f.write_full(&format!("check{i}"), &data, &dataset, "", "");
        if let Some((from, to)) = swap.split_once("=>") {
            let text = std::fs::read_to_string(&path).unwrap();
            let (from, to) = (format!("\"{from}\""), format!("\"{to}\""));
            // The student's path comes first in the file, the teacher's after it.
            let text = match needles[0] {
                "student.path" => text.replacen(&from, &to, 1),
                _ => {
                    let at = text.rfind(&from).unwrap();
                    format!("{}{to}{}", &text[..at], &text[at + from.len()..])
                }
            };
            std::fs::write(&path, text).unwrap();
        }
        let out = distill(&["check", path.to_str().unwrap()], &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{what}: {err}");
        for n in needles {
            assert!(err.contains(n), "{what}: `{n}` missing from: {err}");
        }
        // `run` stops at the same check, before any stage wrote anything.
        let out = distill(&["-q", "run", path.to_str().unwrap()], &[]);
        assert_eq!(out.status.code(), Some(1), "{what}");
        let run_dir = Pipeline::load(&path).unwrap().run_dir;
        assert!(!run_dir.join("mine").exists(), "{what}: mine ran");
    }
}

/// Each stage's configuration hash for the shipped pipelines, against
/// `tests/fixtures/stage_hashes.json`. A change there reruns that stage in every existing
/// run folder, so it must be deliberate: regenerate the file with
/// `DISTILL_BLESS=1 cargo test --release --test integration stage_hashes` and say so.
/// (The report stage hashes the pipeline file's text, comments included: left out.)
#[test]
fn stage_hashes_of_the_shipped_pipelines_are_unchanged() {
    // The shipped pipelines and the experiment variants, which between them set the keys
    // that enter a hash only when set (pseudo-queries, baseline, folds, ...).
    let mut files = vec![
        "pipelines/demo.toml".to_string(),
        "pipelines/scifact.toml".to_string(),
        "pipelines/scifact-squad.toml".to_string(),
    ];
    let mut experiments: Vec<String> = std::fs::read_dir(repo().join("pipelines/experiments"))
        .unwrap()
        .map(|e| {
            format!(
                "pipelines/experiments/{}",
                e.unwrap().file_name().to_string_lossy()
            )
        })
        .filter(|f| f.ends_with(".toml"))
        .collect();
    experiments.sort();
    files.extend(experiments);
    let mut got = serde_json::Map::new();
    // Tests run in the repository root, against which the files' relative paths resolve.
    for file in &files {
        let p = Pipeline::load(&repo().join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut stages = serde_json::Map::new();
        for stage in distill::stages::all() {
            if stage.name() == "report" || !stage.enabled(&p) {
                continue;
            }
            let config = stage.config(&p, tch::Kind::Float);
            stages.insert(
                stage.name().into(),
                distill::pipeline::fingerprint::json(&config).into(),
            );
        }
        got.insert(file.clone(), stages.into());
    }
    let got = serde_json::Value::Object(got);
    let golden = repo().join("tests/fixtures/stage_hashes.json");
    if std::env::var_os("DISTILL_BLESS").is_some() {
        std::fs::write(&golden, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: serde_json::Value = read_json(&golden);
    for file in &files {
        for (stage, hash) in got[file.as_str()].as_object().unwrap() {
            assert_eq!(
                &want[file.as_str()][stage],
                hash,
                "{file}: the configuration hash of stage `{stage}` changed (existing runs \
                 would rerun it); if that is meant, regenerate {} with DISTILL_BLESS=1",
                golden.display()
            );
        }
    }
}

/// Each stage's configuration hash, for a pipeline file's text.
fn stage_hashes(text: &str) -> std::collections::BTreeMap<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.toml");
    std::fs::write(&path, text).unwrap();
    let p = Pipeline::load(&path).unwrap_or_else(|e| panic!("{e}\n{text}"));
    distill::stages::all()
        .into_iter()
        .filter(|s| s.name() != "report" && s.enabled(&p))
        .map(|s| {
            let config = s.config(&p, tch::Kind::Float);
            (
                s.name().to_string(),
                distill::pipeline::fingerprint::json(&config),
            )
        })
        .collect()
}

/// A key changes the hashes of exactly the stages whose output it changes: a hash that a
/// renamed or newly added field silently stopped feeding fails here.
#[test]
fn each_key_changes_the_hashes_of_the_stages_it_affects_and_no_others() {
    let base = |extra: &[(&str, &str)]| {
        let mut sections: Vec<(&str, Vec<String>)> = vec![
            (
                "run",
                vec!["name = \"h\"".into(), "output_root = \"/tmp/none\"".into()],
            ),
            ("student", vec!["path = \"models/all-MiniLM-L6-v2\"".into()]),
            ("teacher", vec!["base = \"models/all-MiniLM-L6-v2\"".into()]),
            ("teacher_train", vec![]),
            ("mine", vec![]),
            ("score", vec![]),
            ("train", vec!["baseline = \"contrastive\"".into()]),
            ("eval", vec![]),
            ("health", vec![]),
        ];
        for (key, value) in extra {
            let (section, name) = key.split_once('.').unwrap();
            let s = sections.iter_mut().find(|(n, _)| *n == section).unwrap();
            s.1.push(format!("{name} = {value}"));
        }
        let mut text = String::new();
        for (name, lines) in sections {
            text += &format!("[{name}]\n{}\n", lines.join("\n"));
        }
        text + "[[dataset]]\nname = \"demo\"\npath = \"data/demo\"\n"
    };
    let before = stage_hashes(&base(&[]));
    let all = ["mine", "teacher", "score", "train", "baseline", "eval"];
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "run.seed",
            "7",
            &["mine", "teacher", "train", "baseline", "eval"],
        ),
        (
            "student.max_seq_length",
            "128",
            &["mine", "teacher", "train", "baseline", "eval"],
        ),
        ("teacher.max_length", "128", &["teacher", "score", "eval"]),
        ("teacher_train.lr", "3e-5", &["teacher"]),
        ("teacher_train.folds", "2", &["teacher"]),
        ("mine.num_negatives", "3", &["mine"]),
        ("mine.sampling", "\"random\"", &["mine"]),
        ("score.absolute_margin", "0.5", &["score"]),
        ("train.lr", "3e-5", &["train", "baseline"]),
        ("train.kl", "1.0", &["train"]),
        ("train.negatives", "3", &["train", "baseline"]),
        ("train.eval_every", "10", &["train", "baseline"]),
        ("eval.top_k", "500", &["eval"]),
        ("eval.rerank_k", "50", &["teacher", "eval"]),
        ("health.min_teacher_auc", "0.5", &[]),
        ("train.checkpoints_after_success", "\"all\"", &[]),
    ];
    for (key, value, affected) in cases {
        let after = stage_hashes(&base(&[(key, value)]));
        for stage in all {
            assert_eq!(
                before[stage] != after[stage],
                affected.contains(&stage),
                "{key} = {value}: stage `{stage}`'s hash {}",
                match affected.contains(&stage) {
                    true => "did not change",
                    false => "changed",
                }
            );
        }
    }
}
