//! The staged engine on tiny random models and a tiny BEIR dataset, on the CPU: skipping,
//! invalidation, resuming after a kill, `--shard`, the lock, and bad input.
use crate::common::distill_output as distill;
use crate::common::*;
use distill::data::pairs::PairTable;
use distill::pipeline::runner::{self, RunOptions, StageState};
use distill::pipeline::Pipeline;
use distill::progress::Verbosity;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A pipeline file in `dir` over the tiny fixtures; `extra` is appended to `[mine]` /
/// `[score]` through `mine` and `score`.
pub fn pipeline_text(out: &Path, data: &Path, dataset: &str, mine: &str, score: &str) -> String {
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

pub(crate) struct Fixture {
    pub(crate) dir: tempfile::TempDir,
}

impl Fixture {
    pub(crate) fn new() -> Self {
        Fixture {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn write(&self, name: &str, mine: &str, score: &str) -> PathBuf {
        self.write_with_data(name, &generated("beir_tiny"), mine, score)
    }

    pub(crate) fn write_with_data(
        &self,
        name: &str,
        data: &Path,
        mine: &str,
        score: &str,
    ) -> PathBuf {
        self.write_full(name, data, "", mine, score)
    }

    pub(crate) fn write_full(
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

/// The partial folder a stage left in its folder `stage_dir`.
fn partial_dir(stage_dir: &Path) -> PathBuf {
    std::fs::read_dir(stage_dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|d| {
            let name = d.file_name().unwrap().to_string_lossy().into_owned();
            name.starts_with(".partial-")
        })
        .unwrap()
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
    let on_disk = committed_shards(&dir);
    assert!(
        on_disk >= after.parse::<usize>().unwrap(),
        "{on_disk} shards on disk"
    );
    let log_path = dir.parent().unwrap().join("log.jsonl");
    let logged = std::fs::read_to_string(&log_path).unwrap().lines().count();
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
    // The resumed run computed exactly the shards that were not committed. (The stage's
    // number of shards comes from the reference run: mine's table writers may commit
    // every shard before the fault fires, and then the resumed run logs no count.)
    let log = std::fs::read_to_string(&log_path).unwrap();
    let resumed: Vec<&str> = log.lines().skip(logged).collect();
    let (committed, _) = shard_commits(&resumed.join("\n"), stage);
    let reference_log = Pipeline::load(&reference)
        .unwrap()
        .run_dir
        .join("log.jsonl");
    let (_, total) = shard_commits(&std::fs::read_to_string(reference_log).unwrap(), stage);
    assert!(total > 1, "{stage} has {total} shards");
    assert_eq!(
        committed + on_disk,
        total,
        "a shard was computed twice or lost"
    );
}

#[test]
fn killed_mine_resumes_to_the_same_candidates() {
    kill_and_resume("mine", "2");
}

#[test]
fn killed_score_resumes_to_the_same_scores() {
    kill_and_resume("score", "3");
}

/// Every file of a stage's output folder (partial folders aside), by relative path.
fn stage_files(path: &Path, stage: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = Pipeline::load(path).unwrap().run_dir.join(stage);
    let mut out = BTreeMap::new();
    let mut todo = vec![dir.clone()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()) {
            let name = e.strip_prefix(&dir).unwrap().display().to_string();
            if name.starts_with(".partial-") || name == "manifest.json" {
                continue;
            }
            match e.is_dir() {
                true => todo.push(e),
                false => {
                    out.insert(name, std::fs::read(&e).unwrap());
                }
            }
        }
    }
    out
}

#[test]
fn killed_eval_resumes_to_the_same_metrics_and_runs() {
    let f = Fixture::new();
    let reference = f.write("ref", "", "");
    run_lib(&reference, &quiet());
    let path = f.write("killed", "", "");
    run_lib(&path, &quiet());
    let p = path.to_str().unwrap();
    // Killed after the students' retrievals and a first reranking part, forced again.
    let out = distill(
        &["-q", "run", p, "--only", "eval", "--force"],
        &[("DISTILL_FAULT_AFTER_SHARDS", "3")],
    );
    assert!(!out.status.success(), "the fault did not fire");
    let dir = Pipeline::load(&path).unwrap().run_dir.join("eval");
    assert!(!dir.join("manifest.json").exists());
    let units = std::fs::read_dir(partial_dir(&dir))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("unit-")
        })
        .count();
    assert_eq!(units, 3);
    // A retrieval that does not read back (cut short, or written by another version) is
    // redone, with a warning, before any part reads it.
    std::fs::write(partial_dir(&dir).join("unit-00000.json"), "{\"queries\": 3").unwrap();
    let out = distill(&["run", p], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("unit-00000.json") && err.contains("redone"),
        "{err}"
    );
    let (a, b) = (stage_files(&reference, "eval"), stage_files(&path, "eval"));
    assert!(
        a.keys().any(|k| k.ends_with("+teacher.trec")),
        "{:?}",
        a.keys()
    );
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "{name} differs after resume");
    }
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
    let partial = partial_dir(&Pipeline::load(&path).unwrap().run_dir.join("score"));
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

/// When every thread that writes mine's candidate tables fails (each shard's path is taken
/// by a directory), the stage fails with the error naming a shard, instead of the search
/// waiting for writers that are gone; nothing is assembled.
#[test]
fn mine_fails_naming_the_shard_when_its_table_writers_all_fail() {
    let f = Fixture::new();
    // Pseudo-queries make the training split 77 queries: 20 chunks of 4, more than the
    // writers and their queue hold.
    let data = generated("beir_tiny");
    let path = f.write_full("blocked", &data, "pseudo_queries = 1", "", "");
    let p = path.to_str().unwrap();
    let out = distill(
        &["-q", "run", p, "--only", "mine"],
        &[("DISTILL_FAULT_AFTER_SHARDS", "1")],
    );
    assert!(!out.status.success(), "the fault did not fire");
    let mine_dir = Pipeline::load(&path).unwrap().run_dir.join("mine");
    let partial = partial_dir(&mine_dir);
    let mut blocked = 0;
    for s in 0..40 {
        let shard = partial.join(format!("ds0-{s:05}.parquet"));
        if !shard.exists() {
            std::fs::create_dir_all(shard.join("taken")).unwrap();
            blocked += 1;
        }
    }
    assert!(blocked >= 19, "only {blocked} shards left to write");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["-q", "run", p, "--only", "mine"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("mine still running 120 s after its writers failed");
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success(), "mine succeeded with no shard writable");
    assert!(err.contains(".parquet"), "{err}");
    assert!(err.contains("ds0-0"), "the error names no shard: {err}");
    assert!(!mine_dir.join("candidates.parquet").exists());
}
