//! `distill run --gpus N` on the CPU (N worker processes): the split stages give the
//! single-process outputs byte for byte; a failing worker fails the parent, naming its
//! rank and log, with no worker left running; a rerun resumes from the committed shards.
use crate::common::distill_output as distill;
use crate::pipeline::Fixture;
use distill::pipeline::Pipeline;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Small encoding chunks, so that the two workers share the corpus encoding (a part is a
/// chunk; the single process runs with the same chunks, so the same batches).
const PARTS: (&str, &str) = ("DISTILL_ENCODE_CHUNK_ROWS", "16");

use crate::common::distill_ok as run_ok;
use crate::common::{committed_shards, shard_commits};

/// Every file under `dirs` of `root` (relative path -> bytes), manifests left out (they
/// hold timings), as are partial folders.
fn files(root: &Path, dirs: &[&str]) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "manifest.json" {
                continue;
            }
            if path.is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    for d in dirs {
        walk(root, &root.join(d), &mut out);
    }
    out
}

/// The entries of a run's embedding cache: file name -> (ids, values, dim).
type Entries = BTreeMap<String, (Vec<String>, Vec<f32>, usize)>;

fn embeddings(run_dir: &Path) -> Entries {
    let cache = run_dir.join("../cache/embeddings");
    std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            (
                name,
                distill::data::embeddings::read_embeddings(&p).unwrap(),
            )
        })
        .collect()
}

fn run_dir(path: &Path) -> PathBuf {
    Pipeline::load(path).unwrap().run_dir
}

fn assert_same(a: &BTreeMap<String, Vec<u8>>, b: &BTreeMap<String, Vec<u8>>) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "not the same files"
    );
    for (name, bytes) in a {
        assert!(bytes == &b[name], "{name} differs");
    }
}

/// Processes whose command line mentions `needle`.
fn running_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(|e| e.ok()) {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

#[test]
fn two_workers_give_the_single_process_outputs_byte_for_byte() {
    let f = Fixture::new();
    let single = f.write("single", "", "");
    run_ok(&["-q", "run", single.to_str().unwrap()], &[PARTS]);
    // Two workers from the pipeline file (`run.gpus`).
    let split = f.write("split", "", "");
    let text = std::fs::read_to_string(&split).unwrap();
    std::fs::write(
        &split,
        text.replace("device = \"cpu\"\n", "device = \"cpu\"\ngpus = 2\n"),
    )
    .unwrap();
    let p = split.to_str().unwrap();
    assert_eq!(Pipeline::load(&split).unwrap().gpus, 2);
    // The training stages run alone here (their data-parallel ranks need the distributed
    // training); mine, score and eval each run as two workers and an assembly (the
    // given teacher is only evaluated, in the parent).
    for stage in ["mine", "teacher", "score", "train", "eval"] {
        let alone: &[&str] = if stage == "train" {
            &["--gpus", "1"]
        } else {
            &[]
        };
        let args = [&["-q", "run", p, "--only", stage][..], alone].concat();
        run_ok(&args, &[PARTS]);
    }
    assert!(!run_dir(&split).join("workers/train-rank-0.log").exists());
    let dir = run_dir(&split);
    for (stage, ranks) in [("mine", 2), ("score", 2), ("eval", 2)] {
        for rank in 0..ranks {
            let log = dir.join(format!("workers/{stage}-rank-{rank}.log"));
            assert!(log.exists(), "{} is missing", log.display());
        }
    }
    // The workers shared the corpus encoding, in parts.
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    assert!(
        log.contains("of 4 corpus parts encoded here"),
        "no shared corpus encoding"
    );
    // Eval's reranking parts wait for every student's retrieval: the workers ran again
    // and did them, so the parent only assembled.
    let eval_partials: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["event"] == "stage_partial" && e["stage"] == "eval")
        .collect();
    assert!(eval_partials.len() >= 4, "{eval_partials:?}");
    assert!(
        eval_partials.iter().any(|e| e["done"] == e["total"]),
        "the workers left units to the parent: {eval_partials:?}"
    );
    let compared = ["mine", "score", "eval"];
    let (a, b) = (files(&run_dir(&single), &compared), files(&dir, &compared));
    assert!(a.keys().any(|k| k.ends_with("metrics.json")));
    assert!(a.keys().any(|k| k.ends_with("per_query.parquet")));
    assert!(a.keys().any(|k| k.ends_with("candidates.parquet")));
    assert!(a.keys().any(|k| k.ends_with("teacher_scores.parquet")));
    assert_same(&a, &b);
    // The corpus embeddings of both students (the distilled one's entry names its run's
    // model folder in its metadata, so the values are compared, not the bytes).
    let (a, b) = (embeddings(&run_dir(&single)), embeddings(&dir));
    assert_eq!(a.len(), 2, "{:?}", a.keys());
    assert!(a == b, "the corpus embeddings differ");
    // The report completes on top of them.
    run_ok(&["-q", "run", p, "--gpus", "2"], &[PARTS]);
    assert!(dir.join("report/manifest.json").exists());
}

#[test]
fn a_failed_worker_fails_the_run_naming_its_rank_and_a_rerun_resumes() {
    let f = Fixture::new();
    let single = f.write("one", "", "");
    run_ok(
        &["-q", "run", single.to_str().unwrap(), "--only", "mine"],
        &[PARTS],
    );
    let split = f.write("workers", "", "");
    let p = split.to_str().unwrap();
    let args = ["-q", "run", p, "--only", "mine", "--gpus", "2"];
    // Every worker aborts (as if killed) after its first committed shard.
    let out = distill(&args, &[PARTS, ("DISTILL_FAULT_AFTER_SHARDS", "1")]);
    assert!(!out.status.success(), "the fault did not fire");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("stage `mine`: worker rank") && err.contains("was killed by signal"),
        "{err}"
    );
    let dir = run_dir(&split);
    let rank = err
        .split("worker rank ")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    let log = dir.join(format!("workers/mine-rank-{rank}.log"));
    assert!(err.contains(&log.display().to_string()), "{err}");
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("DISTILL_FAULT_AFTER_SHARDS"),
        "the rank's log does not hold its output"
    );
    let left = running_with(p);
    assert!(left.is_empty(), "workers left running: {left:?}");
    assert!(!dir.join("mine/manifest.json").exists());
    // The shards the workers committed before the run failed (the first to abort did,
    // after its first; the parent may stop its sibling before the sibling's first).
    let on_disk = committed_shards(&dir.join("mine"));
    assert!(
        on_disk >= 1,
        "the fault fires after a committed shard: {on_disk}"
    );
    let logged = std::fs::read_to_string(dir.join("log.jsonl"))
        .unwrap()
        .lines()
        .count();

    run_ok(&args, &[PARTS]);
    assert_same(
        &files(&run_dir(&single), &["mine", "../cache/embeddings"]),
        &files(&dir, &["mine", "../cache/embeddings"]),
    );
    // No query chunk was mined twice: the rerun mined only the ones not committed. (The
    // stage's number of shards comes from the one-process run: a worker's table writers
    // may have committed every shard before its fault fired, and then the rerun commits
    // none and logs no count.)
    let log = std::fs::read_to_string(dir.join("log.jsonl")).unwrap();
    let rerun: Vec<&str> = log.lines().skip(logged).collect();
    let (commits, _) = shard_commits(&rerun.join("\n"), "mine");
    let single_log = std::fs::read_to_string(run_dir(&single).join("log.jsonl")).unwrap();
    let (_, total) = shard_commits(&single_log, "mine");
    assert!(total > 1, "the stage has {total} shards");
    assert_eq!(commits + on_disk, total, "a chunk was mined twice or lost");
}

#[test]
fn workers_die_with_a_parent_killed_by_sigkill() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    let f = Fixture::new();
    let path = f.write("orphans", "", "");
    let p = path.to_str().unwrap();
    let mut parent = Command::new(env!("CARGO_BIN_EXE_distill"))
        .args(["-q", "run", p, "--only", "mine", "--gpus", "2"])
        .env(PARTS.0, PARTS.1)
        .env("DISTILL_FAULT_HANG_AFTER_SHARDS", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dir = run_dir(&path);
    let hanging = || {
        (0..2)
            .filter(|r| {
                std::fs::read_to_string(dir.join(format!("workers/mine-rank-{r}.log")))
                    .is_ok_and(|log| log.contains("DISTILL_FAULT_HANG_AFTER_SHARDS"))
            })
            .count()
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    while hanging() < 2 {
        assert!(
            Instant::now() < deadline,
            "the workers did not reach their first shard"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The parent and its two workers.
    assert_eq!(running_with(p).len(), 3, "{:?}", running_with(p));
    parent.kill().unwrap();
    parent.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !running_with(p).is_empty() {
        assert!(
            Instant::now() < deadline,
            "workers outlived their killed parent: {:?}",
            running_with(p)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The rerun is not stopped by a worker's lock and finishes the stage.
    run_ok(&["-q", "run", p, "--only", "mine", "--gpus", "2"], &[PARTS]);
    assert!(dir.join("mine/manifest.json").exists());
}

#[test]
fn a_pipeline_naming_one_gpu_is_refused_under_gpus() {
    let f = Fixture::new();
    let path = f.write("cuda1", "", "");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(
        &path,
        text.replace("device = \"cpu\"", "device = \"cuda:1\""),
    )
    .unwrap();
    let out = distill(&["-q", "run", path.to_str().unwrap(), "--gpus", "2"], &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("run.device = \"cuda:1\" names one GPU, but under --gpus 2")
            && err.contains(path.to_str().unwrap()),
        "{err}"
    );
    assert!(!run_dir(&path).exists(), "the refused run wrote its folder");
}
