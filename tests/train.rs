//! Training against its references (sentence-transformers losses, torch AdamW,
//! transformers schedules) and the teacher + train stages end to end on tiny models:
//! exact resume after a kill, and exported models that sentence-transformers loads.
use crate::common::distill_output as distill;
use crate::common::*;
use distill::pipeline::Pipeline;
use distill::training::losses;
use distill::training::optimizer::{AdamW, AdamWConfig};
use distill::training::schedule::{Decay, Schedule};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tch::{Kind, Tensor};

#[derive(Deserialize)]
struct AdamStep {
    lr: f64,
    grad_w: Vec<Vec<f64>>,
    grad_bias: Vec<f64>,
    w: Vec<Vec<f64>>,
    bias: Vec<f64>,
}

#[derive(Deserialize)]
struct AdamRef {
    init: serde_json::Value,
    weight_decay: f64,
    steps: Vec<AdamStep>,
}

#[derive(Deserialize)]
struct SchedRef {
    peak: f64,
    warmup: u64,
    total: u64,
    lrs: Vec<f64>,
}

#[derive(Deserialize)]
struct TrainRef {
    queries: Vec<Vec<f32>>,
    docs: Vec<Vec<Vec<f32>>>,
    teacher: Vec<Vec<f32>>,
    margin_mse: f64,
    kl: f64,
    kl_student_temperature: f64,
    kl_teacher_temperature: f64,
    infonce: f64,
    infonce_symmetric: f64,
    infonce_scale: f64,
    adamw: AdamRef,
    schedules: std::collections::BTreeMap<String, SchedRef>,
}

fn reference() -> TrainRef {
    read_json(&generated("train_reference.json"))
}

fn mat(rows: &[Vec<f32>]) -> Tensor {
    let flat: Vec<f32> = rows.concat();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

fn mat64(rows: &[Vec<f64>]) -> Tensor {
    let flat: Vec<f32> = rows.concat().into_iter().map(|x| x as f32).collect();
    Tensor::from_slice(&flat).view([rows.len() as i64, -1])
}

#[test]
fn losses_match_sentence_transformers() {
    let r = reference();
    let q = mat(&r.queries);
    let docs: Vec<Tensor> = r.docs.iter().map(|d| mat(d)).collect();
    let (b, k) = (q.size()[0], docs.len() as i64);
    // student scores [b, k]: dot products with the positive, then each negative
    let cols: Vec<Tensor> = docs
        .iter()
        .map(|d| (&q * d).sum_dim_intlist([1].as_slice(), false, Kind::Float))
        .collect();
    let student = Tensor::stack(&cols, 1);
    let teacher = mat(&r.teacher);
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{what}: {got} vs {want}"
        )
    };
    close(
        losses::margin_mse(&student, &teacher).double_value(&[]),
        r.margin_mse,
        "margin_mse",
    );
    let kl = losses::kl(
        &student,
        &teacher,
        r.kl_student_temperature,
        r.kl_teacher_temperature,
    );
    close(kl.double_value(&[]), r.kl, "kl");
    // Documents row-major (query i's group at i*k..): the positive of query i is column i*k.
    let d = Tensor::stack(&docs, 1).view([b * k, -1]);
    let targets: Vec<i64> = (0..b).map(|i| i * k).collect();
    let info = losses::infonce(&q, &d, &targets, None, r.infonce_scale);
    close(info.double_value(&[]), r.infonce, "infonce");
    let back = losses::infonce_doc_to_query(&q, &d, &targets, None, r.infonce_scale);
    close(
        ((info + back) / 2.0).double_value(&[]),
        r.infonce_symmetric,
        "infonce_symmetric",
    );
}

#[test]
fn adamw_matches_torch() {
    let r = reference().adamw;
    let init: std::collections::BTreeMap<String, serde_json::Value> =
        serde_json::from_value(r.init).unwrap();
    let w0: Vec<Vec<f64>> = serde_json::from_value(init["w"].clone()).unwrap();
    let b0: Vec<f64> = serde_json::from_value(init["bias"].clone()).unwrap();
    let w = mat64(&w0).set_requires_grad(true);
    let bias = Tensor::from_slice(&b0.iter().map(|&x| x as f32).collect::<Vec<_>>())
        .set_requires_grad(true);
    let vars = [
        ("layer.weight".to_string(), w.shallow_clone()),
        ("layer.bias".to_string(), bias.shallow_clone()),
    ];
    let mut opt = AdamW::new(
        vars.into_iter().collect(),
        AdamWConfig {
            weight_decay: r.weight_decay,
            ..Default::default()
        },
    );
    for (i, s) in r.steps.iter().enumerate() {
        opt.zero_grad();
        // Make gradients exactly the reference's: d(sum(p * g))/dp = g.
        let gw = mat64(&s.grad_w);
        let gb = Tensor::from_slice(&s.grad_bias.iter().map(|&x| x as f32).collect::<Vec<_>>());
        ((&w * &gw).sum(Kind::Float) + (&bias * &gb).sum(Kind::Float)).backward();
        opt.step(s.lr).unwrap();
        let dw = (&w - mat64(&s.w)).abs().max().double_value(&[]);
        let want_b = Tensor::from_slice(&s.bias.iter().map(|&x| x as f32).collect::<Vec<_>>());
        let db = (&bias - want_b).abs().max().double_value(&[]);
        assert!(
            dw < 1e-6 && db < 1e-6,
            "step {i}: weight diff {dw:e}, bias diff {db:e}"
        );
    }
}

#[test]
fn schedules_match_transformers() {
    for (name, r) in reference().schedules {
        let decay = if name == "cosine" {
            Decay::Cosine
        } else {
            Decay::Linear
        };
        let s = Schedule {
            peak: r.peak,
            warmup_steps: r.warmup,
            total_steps: r.total,
            decay,
        };
        for (step, want) in r.lrs.iter().enumerate() {
            let got = s.lr(step as u64);
            assert!(
                (got - want).abs() < 1e-12,
                "{name} step {step}: {got} vs {want}"
            );
        }
    }
}

/// A pipeline with a teacher trained from the tiny encoder, then distillation.
pub(crate) fn pipeline(dir: &Path, name: &str) -> PathBuf {
    let g = |n: &str| generated(n).display().to_string();
    let text = format!(
        r#"[run]
name = "{name}"
output_root = "{out}"
seed = 11
device = "cpu"

[student]
path = "{student}"
batch_size = 8

[teacher]
base = "{student}"
max_length = 64
batch_size = 8

[teacher_train]
dev_queries = 0
min_steps = 0
epochs = 2
lr = 1e-3
batch_queries = 4
negatives = 3
checkpoint_every = 3
keep_checkpoints = 2

[[dataset]]
name = "animals"
path = "{data}"

[mine]
top_k = 20
range_min = 1
range_max = 15
num_negatives = 4
query_chunk = 8

[score]
shard_size = 32
absolute_margin = 0.01

[train]
epochs = 3
lr = 1e-3
batch_queries = 4
negatives = 3
grad_accumulation = 2
checkpoint_every = 2
keep_checkpoints = 2
checkpoints_after_success = "all"
kl = 0.5
schedule = "cosine"
"#,
        // One output root (and so one cache) per run: the kill tests must train.
        out = dir.join(format!("out-{name}")).display(),
        student = g("tiny_bi_mean"),
        data = g("beir_tiny"),
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

pub(crate) fn run_ok(path: &Path, envs: &[(&str, &str)]) {
    crate::common::distill_ok(&["-q", "run", path.to_str().unwrap()], envs);
}

/// The tensors of a safetensors file, by name.
fn weights(path: &Path) -> std::collections::BTreeMap<String, Tensor> {
    Tensor::read_safetensors(path)
        .unwrap()
        .into_iter()
        .collect()
}

/// The tensor of `weights` named `name`, up to a prefix (a checkpoint's names and an
/// exported model's differ by the model's own prefix).
fn named<'a>(weights: &'a std::collections::BTreeMap<String, Tensor>, name: &str) -> &'a Tensor {
    weights
        .iter()
        .find(|(n, _)| n.ends_with(name) || name.ends_with(n.as_str()))
        .unwrap_or_else(|| panic!("no tensor named like {name}"))
        .1
}

pub(crate) fn bytes(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn killed_training_resumes_to_the_same_weights() {
    let dir = tempfile::tempdir().unwrap();
    let reference = pipeline(dir.path(), "reference");
    run_ok(&reference, &[]);
    let r = Pipeline::load(&reference).unwrap().run_dir;

    // Kill the teacher stage at step 4 (after the checkpoint at 3, before the next one),
    // then the train stage at step 5 (between the checkpoints at 4 and 6).
    let killed = pipeline(dir.path(), "killed");
    let k = Pipeline::load(&killed).unwrap().run_dir;
    let p = killed.to_str().unwrap();
    let out = distill(&["-q", "run", p], &[("DISTILL_FAULT_AT_STEP", "teacher:4")]);
    assert!(!out.status.success(), "the teacher fault did not fire");
    assert!(k.join("mine/manifest.json").exists());
    assert!(!k.join("teacher/manifest.json").exists());
    let out = distill(&["-q", "run", p], &[("DISTILL_FAULT_AT_STEP", "train:5")]);
    assert!(!out.status.success(), "the train fault did not fire");
    assert!(k.join("teacher/manifest.json").exists());
    assert!(!k.join("train/manifest.json").exists());
    let status = distill(&["status", p], &[]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("train    partial (4 of"), "{status}");
    run_ok(&killed, &[]);

    for f in [
        "teacher/model/model.safetensors",
        "score/teacher_scores.parquet",
        "train/student/model.safetensors",
    ] {
        assert!(
            bytes(&r.join(f)) == bytes(&k.join(f)),
            "{f} differs after resume"
        );
    }
    // Same loss curve, row for row, including the steps replayed after the kill.
    let curve = |d: &Path| {
        let script =
            "import sys, pyarrow.parquet as pq\nprint(pq.read_table(sys.argv[1]).to_pydict())";
        python_stdout(script, &[&d.join("train/loss_curve.parquet")])
    };
    let c = curve(&r);
    assert_eq!(c, curve(&k));
    for column in ["'margin_mse'", "'kl'", "'infonce'", "'lr'", "'grad_norm'"] {
        assert!(c.contains(column), "{column} missing from the loss curve");
    }
    // Every optimizer step is a typed event in log.jsonl, with its loss and terms.
    let log = std::fs::read_to_string(r.join("log.jsonl")).unwrap();
    let steps: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["event"] == "train_step" && v["stage"] == "train")
        .collect();
    let manifest: serde_json::Value = read_json(&r.join("train/manifest.json"));
    assert_eq!(
        steps.len() as u64,
        manifest["summary"]["steps"].as_u64().unwrap()
    );
    assert!(steps
        .iter()
        .all(|v| v["loss"].is_f64() && v["terms"]["kl"].is_f64()));
    // Each training stage logs its real work and its model arithmetic: for the tiny
    // model's 2 layers (hidden 32, intermediate 64), 6 x 16,384 FLOPs a token and 768 a
    // squared length (between tokens and tokens x 64 for the teacher's 64-token pairs).
    for (stage, most) in [("teacher", 64.0), ("train", 512.0)] {
        let t = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|v| v["event"] == "throughput" && v["stage"] == stage)
            .unwrap_or_else(|| panic!("no throughput event for {stage}"));
        let manifest: serde_json::Value = read_json(&r.join(stage).join("manifest.json"));
        assert_eq!(t["steps"], manifest["summary"]["steps"], "{stage}: {t}");
        let (tokens, flops) = (t["tokens"].as_f64().unwrap(), t["flops"].as_f64().unwrap());
        assert!(tokens > t["rows"].as_f64().unwrap(), "{stage}: {t}");
        let linear = 6.0 * 16384.0 * tokens;
        assert!(flops >= linear + 768.0 * tokens, "{stage}: {t}");
        assert!(flops <= linear + 768.0 * tokens * most, "{stage}: {t}");
        assert!(t["seconds"].as_f64().unwrap() > 0.0, "{stage}: {t}");
        assert_eq!(
            (t["from_step"].as_u64(), t["ranks"].as_u64()),
            (Some(0), Some(1))
        );
        // The killed run's resumed process counts its own steps, from the checkpoint.
        let resumed = std::fs::read_to_string(k.join("log.jsonl")).unwrap();
        let last = resumed
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .rfind(|v| v["event"] == "throughput" && v["stage"] == stage)
            .unwrap_or_else(|| panic!("no throughput event for the resumed {stage}"));
        let from = last["from_step"].as_u64().unwrap();
        assert!(from > 0, "{stage}: {last}");
        assert_eq!(
            from + last["steps"].as_u64().unwrap(),
            manifest["summary"]["steps"].as_u64().unwrap(),
            "{stage}: {last}"
        );
    }
    // Retention: the last 2 checkpoints are kept while training; after success the
    // teacher's are removed (the default) and the student's kept whole ("all").
    let kept: Vec<_> = std::fs::read_dir(k.join("train/checkpoints"))
        .unwrap()
        .collect();
    assert_eq!(kept.len(), 2);
    assert!(!k.join("teacher/checkpoints").exists());

    // The same run with the embedding layer frozen reruns train: the student's embeddings
    // come out as the base student's, bit for bit, while its layers learn.
    let text = std::fs::read_to_string(&reference).unwrap();
    std::fs::write(
        &reference,
        text.replace("[train]\n", "[train]\nfreeze_embeddings = true\n"),
    )
    .unwrap();
    run_ok(&reference, &[]);
    let base = weights(&generated("tiny_bi_mean").join("model.safetensors"));
    let frozen = weights(&r.join("train/student/model.safetensors"));
    let thawed = weights(&k.join("train/student/model.safetensors"));
    let (mut same, mut moved) = (0, 0);
    for (name, w) in &frozen {
        let b = named(&base, name);
        if name.split('.').any(|p| p == "embeddings") {
            assert!(w.equal(b), "{name} moved");
            assert!(!thawed[name].equal(b), "{name} did not move unfrozen");
            same += 1;
        } else if !w.equal(b) {
            moved += 1;
        }
    }
    assert!(same >= 4 && moved > 10, "{same} frozen, {moved} moved");

    // WiSE-FT, with the run killed at step 5 and resumed: the exported student is
    // 0.25 x the trained weights + 0.75 x the base's (the base, not the checkpoint that
    // the resumed run started from).
    let text = std::fs::read_to_string(&killed).unwrap();
    std::fs::write(
        &killed,
        text.replace("[train]\n", "[train]\nwise_ft = 0.25\n"),
    )
    .unwrap();
    let out = distill(&["-q", "run", p], &[("DISTILL_FAULT_AT_STEP", "train:5")]);
    assert!(!out.status.success(), "the train fault did not fire");
    run_ok(&killed, &[]);
    let wise = weights(&k.join("train/student/model.safetensors"));
    assert_eq!(wise.len(), thawed.len());
    for (name, w) in &wise {
        let want = &thawed[name] * 0.25 + named(&base, name) * 0.75;
        let diff = (w - &want).abs().max().double_value(&[]);
        assert!(diff < 1e-6, "{name}: {diff} from the interpolation");
        if !thawed[name].equal(named(&base, name)) {
            assert!(!w.equal(&thawed[name]), "{name} was not interpolated");
        }
    }
}

#[test]
fn pseudo_keep_trains_on_at_most_that_many_pseudo_queries_per_document() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "keep");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text
        .replace(
            "name = \"animals\"\n",
            "name = \"animals\"\npseudo_queries = 3\n",
        )
        .replace(
            "[train]\n",
            "[train]\npseudo_keep = 1\nexclude_false_negatives = false\n",
        );
    std::fs::write(&path, text).unwrap();
    run_ok(&path, &[]);
    let run = Pipeline::load(&path).unwrap().run_dir;
    let scores =
        distill::data::pairs::PairTable::read(&run.join("score/teacher_scores.parquet")).unwrap();
    let pseudo = scores
        .query_id
        .iter()
        .filter(|q| q.starts_with("pseudo:"))
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    #[derive(Deserialize)]
    struct Manifest {
        summary: serde_json::Value,
    }
    let m: Manifest = read_json(&run.join("train/manifest.json"));
    let left_out = m.summary["groups"]["pseudo_left_out"].as_u64().unwrap() as usize;
    // The stage leaves out what the selection names (its rule is checked in the unit
    // test), some but not all of the pseudo-queries (every query keeps its negatives here,
    // so none is dropped for lacking them).
    let named = distill::training::groups::pseudo_left_out(&scores, &run, 1, |_, _| true).unwrap();
    assert_eq!(left_out, named.len(), "{}", m.summary);
    assert!(0 < left_out && left_out < pseudo, "{left_out} of {pseudo}");

    // `pseudo_per_sentence = 1` is the default: every stage that makes or reads the
    // pseudo-queries stays done (report, which shows the pipeline file, reruns on any
    // edit of it). 2 changes the pseudo-queries, so mine is stale.
    let status = |per_sentence: usize| {
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace(
            "pseudo_queries = 3\n",
            &format!("pseudo_queries = 3\npseudo_per_sentence = {per_sentence}\n"),
        );
        let edited = dir.path().join(format!("per_sentence_{per_sentence}.toml"));
        std::fs::write(&edited, text).unwrap();
        let out = distill(&["status", edited.to_str().unwrap()], &[]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let same = status(1);
    for stage in ["mine", "teacher", "score", "train", "eval"] {
        assert!(
            same.lines()
                .any(|l| l.trim_start().starts_with(stage) && l.ends_with("done")),
            "{same}"
        );
    }
    let two = status(2);
    assert!(
        two.lines().any(|l| l.trim_start().starts_with("mine")
            && l.contains("stale (its configuration changed)")),
        "{two}"
    );
}

#[test]
fn in_training_eval_matches_the_eval_stage_keeps_the_best_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let with_eval = |name: &str| {
        let path = pipeline(dir.path(), name);
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("[train]\n", "[train]\neval_every = 3\nkeep_best = true\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    let reference = with_eval("evaluated");
    run_ok(&reference, &[]);
    let r = Pipeline::load(&reference).unwrap().run_dir;
    #[derive(Deserialize)]
    struct Point {
        step: u64,
        ndcg10: Vec<(String, f64)>,
        mean: f64,
    }
    #[derive(Deserialize)]
    struct Record {
        best_step: u64,
        points: Vec<Point>,
    }
    let record: Record = read_json(&r.join("train/in_training_eval.json"));
    let steps: Vec<u64> = record.points.iter().map(|p| p.step).collect();
    let last = *steps.last().unwrap();
    let mut want: Vec<u64> = (1..=last / 3).map(|i| i * 3).collect();
    if last % 3 != 0 {
        want.push(last);
    }
    assert_eq!(steps, want);
    let best = record.points.iter().fold(
        &record.points[0],
        |b, p| if p.mean > b.mean { p } else { b },
    );
    assert_eq!(record.best_step, best.step);
    // Here the best (step 3) is not the last (step 6), so keeping it is what is tested.
    assert_ne!(best.step, last, "the best evaluation is the last one");
    // The exported student is the best checkpoint's weights, kept from pruning, and the
    // eval stage measures on it what training measured at that step.
    let ckpt = r.join(format!("train/checkpoints/step-{:08}", best.step));
    let kept = weights(&ckpt.join("weights.safetensors"));
    let exported = weights(&r.join("train/student/model.safetensors"));
    for (name, w) in &kept {
        assert!(
            w.equal(named(&exported, name)),
            "{name} is not the best checkpoint's"
        );
    }
    let metrics: serde_json::Value = read_json(&r.join("eval/metrics.json"));
    let staged = metrics["animals"]["distilled"]["student"]["ndcg@10"]
        .as_f64()
        .unwrap();
    let (dataset, measured) = &best.ndcg10[0];
    assert_eq!(dataset, "animals");
    assert!(
        (staged - measured).abs() < 1e-6 && (best.mean - measured).abs() < 1e-12,
        "eval stage {staged}, in training {measured}"
    );
    // Killed between evaluations (after the one at 3 and the checkpoint at 4), the run
    // resumes to the same evaluations and the same student.
    let killed = with_eval("killed");
    let k = Pipeline::load(&killed).unwrap().run_dir;
    let out = distill(
        &["-q", "run", killed.to_str().unwrap()],
        &[("DISTILL_FAULT_AT_STEP", "train:5")],
    );
    assert!(!out.status.success(), "the train fault did not fire");
    run_ok(&killed, &[]);
    for f in [
        "train/in_training_eval.json",
        "train/student/model.safetensors",
    ] {
        assert!(
            bytes(&r.join(f)) == bytes(&k.join(f)),
            "{f} differs after resume"
        );
    }
}
