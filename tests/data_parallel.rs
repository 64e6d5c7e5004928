//! Data-parallel training on the CPU: ranks of a Gloo process group, started here the way
//! `distill run --gpus N` (or torchrun) starts them, through torchrun's environment.
use crate::common::distill_output as distill;
use crate::common::*;
use crate::train::{bytes, pipeline, run_ok};
use distill::pipeline::Pipeline;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tch::Tensor;

/// The tiny student without dropout, so that a rank's slice of a batch sees the same
/// network as the one-process batch (dropout masks follow the batch's layout).
fn student_without_dropout(dir: &Path) -> PathBuf {
    let from = generated("tiny_bi_mean");
    let to = dir.join("tiny_no_dropout");
    let copied = Command::new("cp")
        .arg("-r")
        .args([&from, &to])
        .status()
        .unwrap();
    assert!(copied.success());
    let config = to.join("config.json");
    let mut c: serde_json::Value = read_json(&config);
    c["hidden_dropout_prob"] = 0.0.into();
    c["attention_probs_dropout_prob"] = 0.0.into();
    std::fs::write(&config, c.to_string()).unwrap();
    to
}

/// `pipeline(dir, name)` on the dropout-free student, its teacher trained on both of its
/// losses (listwise alone leaves the classifier's bias without a gradient).
fn dp_pipeline(dir: &Path, name: &str, student: &Path) -> PathBuf {
    let path = pipeline(dir, name);
    let text = std::fs::read_to_string(&path).unwrap();
    let tiny = generated("tiny_bi_mean").display().to_string();
    let text = text.replace(&tiny, &student.display().to_string()).replace(
        "[teacher_train]\n",
        "[teacher_train]\nloss = \"listwise+bce\"\n",
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// `distill -q run P ARGS...` as `size` ranks; rank r also gets the environment
/// `extra(r)`. Returns whether each rank succeeded (after at most two minutes; stragglers
/// are killed and the test fails).
fn ranks(
    p: &Path,
    args: &[&str],
    size: usize,
    extra: impl Fn(usize) -> Vec<(&'static str, String)>,
) -> Vec<bool> {
    let port = distill::distributed::free_port().unwrap().to_string();
    let mut children: Vec<Child> = (0..size)
        .map(|r| {
            let mut c = Command::new(env!("CARGO_BIN_EXE_distill"));
            c.args(["-q", "run", p.to_str().unwrap()])
                .args(args)
                .env("RANK", r.to_string())
                .env("WORLD_SIZE", size.to_string())
                .env("LOCAL_RANK", r.to_string())
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", &port)
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            for (k, v) in extra(r) {
                c.env(k, v);
            }
            c.spawn().unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ok = vec![None; size];
    while ok.iter().any(Option::is_none) {
        for (r, c) in children.iter_mut().enumerate() {
            if ok[r].is_none() {
                if let Some(status) = c.try_wait().unwrap() {
                    ok[r] = Some(status.success());
                }
            }
        }
        if Instant::now() > deadline {
            for c in &mut children {
                let _ = c.kill();
            }
            panic!("ranks still running after two minutes: {ok:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    ok.into_iter().map(Option::unwrap).collect()
}

fn none(_: usize) -> Vec<(&'static str, String)> {
    Vec::new()
}

fn weights(path: &Path) -> Vec<(String, Tensor)> {
    Tensor::read_safetensors(path).unwrap()
}

/// The largest absolute difference between two models' tensors (same names), leaving
/// out the attention's key biases: their gradient is zero in exact arithmetic (a
/// softmax row does not change when a constant is added to it), so what AdamW's
/// normalised step makes of them is rounding noise, which depends on how the batch is
/// laid out; they change no output.
fn max_difference(a: &Path, b: &Path) -> f64 {
    let (a, b) = (weights(a), weights(b));
    assert_eq!(a.len(), b.len());
    a.iter()
        .filter(|(name, _)| !name.ends_with("attention.self.key.bias"))
        .map(|(name, t)| {
            let u = &b.iter().find(|(n, _)| n == name).unwrap().1;
            (t - u).abs().max().double_value(&[])
        })
        .fold(0.0, f64::max)
}

#[test]
fn two_gloo_ranks_train_to_the_one_process_weights_and_a_killed_rank_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let student = student_without_dropout(dir.path());
    let one = dp_pipeline(dir.path(), "one", &student);
    run_ok(&one, &[]);
    let o = Pipeline::load(&one).unwrap().run_dir;

    // The teacher on two ranks (micro-batches of 4 queries, 2 per rank): the one-process
    // weights.
    let two = dp_pipeline(dir.path(), "two", &student);
    let t = Pipeline::load(&two).unwrap().run_dir;
    let only = |stage: &'static str| ["--only", stage];
    run_ok_args(&two, &only("mine"));
    assert_eq!(ranks(&two, &only("teacher"), 2, none), vec![true, true]);
    let teacher = "teacher/model/model.safetensors";
    let d = max_difference(&o.join(teacher), &t.join(teacher));
    assert!(
        d < 1e-6,
        "teacher: two ranks differ from one process by {d}"
    );
    assert!(!t.join("teacher/.partial").exists());

    // The student on two ranks: KL and InfoNCE over each micro-batch's 4 queries and 16
    // documents, whose embeddings come from both ranks. The same weights as one process
    // on the same scores.
    run_ok_args(&two, &only("score"));
    assert_eq!(ranks(&two, &only("train"), 2, none), vec![true, true]);
    let student_file = t.join("train/student/model.safetensors");
    let dp = dir.path().join("dp.safetensors");
    std::fs::copy(&student_file, &dp).unwrap();
    run_ok_args(&two, &["--only", "train", "--force"]);
    let d = max_difference(&dp, &student_file);
    assert!(
        d < 1e-6,
        "student: two ranks differ from one process by {d}"
    );
    let moved = max_difference(&dp, &student.join("model.safetensors"));
    assert!(moved > 1e-4, "training moved no weight ({moved})");

    // Rank 1 killed after step 3: both ranks stop; a rerun resumes from rank 0's
    // checkpoint at step 2 and ends byte for byte as the uninterrupted two-rank run.
    let killed = ranks(&two, &["--only", "train", "--force"], 2, |r| match r {
        1 => vec![("DISTILL_FAULT_AT_STEP", "train:3".into())],
        _ => Vec::new(),
    });
    assert_eq!(killed, vec![false, false]);
    assert!(!t.join("train/manifest.json").exists());
    let status = distill(&["status", two.to_str().unwrap()], &[]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("partial (2 of 5"), "{status}");
    assert_eq!(ranks(&two, &only("train"), 2, none), vec![true, true]);
    assert!(
        bytes(&dp) == bytes(&student_file),
        "the resumed run differs"
    );
}

fn run_ok_args(path: &Path, args: &[&str]) {
    distill_ok(
        &[&["-q", "run", path.to_str().unwrap()][..], args].concat(),
        &[],
    );
}

/// `distill run P --gpus 2` end to end on the CPU: shard workers for mine, score and eval,
/// two Gloo ranks for the teacher and the student. The dropout-free pipeline ends with
/// the one-process teacher and student (within 1e-6) and the same measures (1e-5).
#[test]
fn a_whole_night_with_two_workers_ends_as_one_process() {
    let dir = tempfile::tempdir().unwrap();
    let student = student_without_dropout(dir.path());
    let one = dp_pipeline(dir.path(), "one", &student);
    run_ok(&one, &[]);
    let two = dp_pipeline(dir.path(), "two", &student);
    run_ok_args(&two, &["--gpus", "2"]);
    let (o, t) = (
        Pipeline::load(&one).unwrap().run_dir,
        Pipeline::load(&two).unwrap().run_dir,
    );
    for model in [
        "teacher/model/model.safetensors",
        "train/student/model.safetensors",
    ] {
        let d = max_difference(&o.join(model), &t.join(model));
        assert!(
            d < 1e-6,
            "{model}: two workers differ from one process by {d}"
        );
    }
    for rank in 0..2 {
        let log = t.join(format!("workers/train-rank-{rank}.log"));
        assert!(log.exists(), "no log of rank {rank} at {}", log.display());
    }
    let (a, b): (serde_json::Value, serde_json::Value) = (
        read_json(&o.join("eval/metrics.json")),
        read_json(&t.join("eval/metrics.json")),
    );
    let ndcg = |m: &serde_json::Value| {
        m["animals"]["distilled"]["student"]["ndcg@10"]
            .as_f64()
            .unwrap()
    };
    assert!(
        (ndcg(&a) - ndcg(&b)).abs() < 1e-5,
        "{} vs {}",
        ndcg(&a),
        ndcg(&b)
    );
}
