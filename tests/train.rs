//! Training against its references (sentence-transformers losses, torch AdamW,
//! transformers schedules) and the teacher + train stages end to end on tiny models:
//! exact resume after a kill, and exported models that sentence-transformers loads.
use crate::common::distill_output as distill;
use crate::common::*;
use distill::data::pairs::PairTable;
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
    let out = distill(&["-q", "run", path.to_str().unwrap()], envs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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

fn bytes(path: &Path) -> Vec<u8> {
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

#[test]
fn trained_models_load_in_sentence_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "export");
    // `[train]` is the file's last section: the distilled student keeps this length.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("max_seq_length = 24\n");
    std::fs::write(&path, text).unwrap();
    run_ok(&path, &[]);
    let run = Pipeline::load(&path).unwrap().run_dir;
    let student = run.join("train/student");
    let st: serde_json::Value = read_json(&student.join("sentence_bert_config.json"));
    assert_eq!(st["max_seq_length"], 24, "{st}");
    let out = dir.path().join("ref.json");
    reference_embed(&student, &out);
    let theirs: RefEmbeddings = read_json(&out);
    let model =
        distill::model::BiEncoder::load(&student, tch::Device::Cpu, Kind::Float, None).unwrap();
    let texts: Vec<String> = texts().into_iter().map(|t| t.text).collect();
    assert_eq!(model.spec.max_seq_length, 24);
    let ours = rows(
        &model
            .encode(distill::model::Side::Document, &texts, 16, &mut |_| {})
            .unwrap(),
    );
    assert!(max_abs_diff(&ours, &theirs.embeddings) <= 1e-5);
    // It changed: training moved the weights away from the base student.
    let base = distill::model::BiEncoder::load(
        &generated("tiny_bi_mean"),
        tch::Device::Cpu,
        Kind::Float,
        None,
    )
    .unwrap();
    let before = rows(
        &base
            .encode(distill::model::Side::Document, &texts, 16, &mut |_| {})
            .unwrap(),
    );
    assert!(max_abs_diff(&ours, &before) > 1e-3);

    let teacher = run.join("teacher/model");
    let out = dir.path().join("rerank.json");
    reference_rerank(&teacher, &out);
    let theirs: RefScores = read_json(&out);
    let ce =
        distill::model::CrossEncoder::load(&teacher, None, tch::Device::Cpu, Kind::Float).unwrap();
    assert_eq!(ce.activation, distill::model::Activation::Identity);
    let pairs: Vec<(String, String)> = pairs().into_iter().map(|p| (p.query, p.passage)).collect();
    let logits = ce.logits(&pairs, 8, &mut |_| {}).unwrap();
    let scores = ce.score(&pairs, 8, &mut |_| {}).unwrap();
    assert_scores_match("trained teacher", &logits, &scores, &theirs);
}

#[test]
fn eval_reports_metrics_that_pytrec_eval_recomputes_from_its_run_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "eval");
    run_ok(&path, &[]);
    let run = Pipeline::load(&path).unwrap().run_dir;
    let metrics: serde_json::Value = read_json(&run.join("eval/metrics.json"));
    let ds = &metrics["animals"];
    for model in ["base", "distilled"] {
        for system in ["student", "student+teacher", "gap"] {
            for m in distill::ranking::metrics::Measures::NAMES {
                assert!(
                    ds[model][system][m].is_number(),
                    "{model} {system} {m} missing"
                );
            }
        }
        let r = ds[model]["student_recall_of_teacher_top10"]
            .as_f64()
            .unwrap();
        assert!((0.0..=1.0).contains(&r));
    }
    // pytrec_eval on the TREC run files gives the same means.
    let qrels = generated("beir_tiny").join("qrels/test.tsv");
    for (model, system) in [
        ("base", "student"),
        ("distilled", "student"),
        ("distilled", "student+teacher"),
    ] {
        let tag = if system == "student" {
            model.to_string()
        } else {
            format!("{model}+teacher")
        };
        let file = run.join(format!("eval/runs/animals.{tag}.trec"));
        let want = pytrec_eval_means(&file, &qrels);
        for m in distill::ranking::metrics::Measures::NAMES {
            let got = ds[model][system][m].as_f64().unwrap();
            let want = want[m].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-6,
                "{tag} {m}: {got} vs pytrec_eval {want}"
            );
        }
    }
    // Per-query rows: one per (model, judged query).
    let script = "import sys, pyarrow.parquet as pq\nt = pq.read_table(sys.argv[1])\nprint(t.num_rows, 'student ndcg@10' in t.column_names)";
    let out = python_stdout(script, &[&run.join("eval/per_query.parquet")]);
    let queries = ds["queries"].as_u64().unwrap();
    assert_eq!(out.trim(), format!("{} True", 2 * queries));
}

#[test]
fn report_is_self_contained_html_with_every_table_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "report");
    run_ok(&path, &[]);
    let run = Pipeline::load(&path).unwrap().run_dir;
    let metrics: serde_json::Value = read_json(&run.join("eval/metrics.json"));
    let html = std::fs::read_to_string(run.join("report/report.html")).unwrap();
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    // Well-formed (an XML parser reads it); one table per dataset, one for the stages, one
    // for mining and scoring; one chart per loss curve (teacher, train).
    let script = "import sys, xml.etree.ElementTree as ET\n\
                  r = ET.parse(sys.argv[1]).getroot()\n\
                  print(len(r.findall('.//table')), len(r.findall('.//{http://www.w3.org/2000/svg}svg')))";
    let out = python_stdout(script, &[&run.join("report/report.html")]);
    // Tables: the dataset's, the queries it improved and hurt most, stages, mining and
    // scoring; charts: the two loss curves and the teacher's score histogram.
    assert_eq!(out.trim(), "5 3");
    // The health box comes first; every chart names its axes.
    let health = html.find("<div class=\"health\">").expect("no health box");
    assert!(health < html.find("<h2>Retrieval</h2>").unwrap());
    for axis in [
        "optimizer step",
        "loss",
        "teacher score",
        "share of the pairs",
    ] {
        assert!(
            html.contains(&format!(">{axis}</text>")),
            "axis `{axis}` unnamed"
        );
    }
    // The improved (hurt) queries rose (fell) from base to distilled nDCG@10; at most five
    // of each.
    let script = "import sys, xml.etree.ElementTree as ET, pyarrow.parquet as pq\n\
                  r = ET.parse(sys.argv[1]).getroot()\n\
                  title, n = None, 0\n\
                  for e in r.iter():\n\
                  \x20   if e.tag == 'h3': title = e.text\n\
                  \x20   if e.tag == 'tr' and title and 'most' in title:\n\
                  \x20       c = [x.text or '' for x in e.findall('td')]\n\
                  \x20       if not c or not c[1]: continue\n\
                  \x20       b, d = float(c[1]), float(c[2])\n\
                  \x20       assert (d > b) if 'improved' in title else (d < b), (title, c)\n\
                  \x20       n += 1\n\
                  print(n)";
    let rows = python_stdout(script, &[&run.join("report/report.html")]);
    let changed = rows.trim().parse::<usize>().unwrap();
    assert!(changed <= 10, "{changed}");
    // Self-contained: no scripts, no links or sources to fetch.
    for needle in ["<script", "src=", "href=", "<link"] {
        assert!(!html.contains(needle), "{needle} in the report");
    }
    // The numbers are metrics.json's.
    for model in ["base", "distilled"] {
        let v = metrics["animals"][model]["student"]["ndcg@10"]
            .as_f64()
            .unwrap();
        let cell = format!("{v:.4}");
        assert!(
            html.contains(&format!("<td>{cell}</td>")),
            "{cell} missing from the HTML"
        );
        assert!(md.contains(&cell), "{cell} missing from the Markdown");
    }
    for section in [
        "## Retrieval",
        "## Queries that changed most",
        "## Teacher scores",
        "## Stages",
        "## Loss curves",
        "## Configuration",
    ] {
        assert!(md.contains(section), "{section} missing");
    }
}

#[test]
fn the_contrastive_baseline_trains_on_infonce_alone_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let with_baseline = |name: &str| {
        let path = pipeline(dir.path(), name);
        let text = std::fs::read_to_string(&path).unwrap();
        std::fs::write(
            &path,
            text.replace("[train]\n", "[train]\nbaseline = \"contrastive\"\n"),
        )
        .unwrap();
        path
    };
    let reference = with_baseline("reference");
    run_ok(&reference, &[]);
    let r = Pipeline::load(&reference).unwrap().run_dir;

    // Killed at step 5 of the baseline's training (between its checkpoints at 4 and 6):
    // the distilled student is done, the baseline resumes and ends byte for byte the same.
    let killed = with_baseline("killed");
    let k = Pipeline::load(&killed).unwrap().run_dir;
    let p = killed.to_str().unwrap();
    let out = distill(
        &["-q", "run", p],
        &[("DISTILL_FAULT_AT_STEP", "baseline:5")],
    );
    assert!(!out.status.success(), "the baseline fault did not fire");
    assert!(k.join("train/manifest.json").exists());
    assert!(!k.join("baseline/manifest.json").exists());
    let status = distill(&["status", p], &[]);
    let status = String::from_utf8_lossy(&status.stdout);
    assert!(status.contains("baseline partial (4 of"), "{status}");
    run_ok(&killed, &[]);
    for f in [
        "train/student/model.safetensors",
        "baseline/student/model.safetensors",
    ] {
        assert!(
            bytes(&r.join(f)) == bytes(&k.join(f)),
            "{f} differs after resume"
        );
    }
    assert!(
        bytes(&r.join("train/student/model.safetensors"))
            != bytes(&r.join("baseline/student/model.safetensors")),
        "the teacher's terms changed nothing"
    );

    // The baseline's loss is InfoNCE alone (weight 1 here): no teacher term in its curve,
    // and its total equals the InfoNCE term at every step; the same steps as train's.
    let script = "import sys, json, pyarrow.parquet as pq\n\
                  print(json.dumps(pq.read_table(sys.argv[1]).to_pydict()))";
    let curve = |stage: &str| -> serde_json::Value {
        let out = python_stdout(script, &[&r.join(stage).join("loss_curve.parquet")]);
        serde_json::from_str(&out).unwrap()
    };
    let (train, baseline) = (curve("train"), curve("baseline"));
    assert!(train["kl"].is_array() && train["margin_mse"].is_array());
    assert!(baseline["kl"].is_null() && baseline["margin_mse"].is_null());
    let (loss, infonce) = (
        baseline["loss"].as_array().unwrap(),
        baseline["infonce"].as_array().unwrap(),
    );
    assert_eq!(loss.len(), train["loss"].as_array().unwrap().len());
    for (l, i) in loss.iter().zip(infonce) {
        let (l, i) = (l.as_f64().unwrap(), i.as_f64().unwrap());
        assert!((l - i).abs() <= 1e-5 * l.abs().max(1.0), "{l} vs {i}");
    }

    // The gain from the teacher is in metrics.json, the report and the headline.
    let metrics: serde_json::Value = read_json(&r.join("eval/metrics.json"));
    let m = &metrics["animals"];
    let gain = m["gain_from_teacher"].as_f64().unwrap();
    let (d, b) = (
        m["distilled"]["student"]["ndcg@10"].as_f64().unwrap(),
        m["baseline"]["student"]["ndcg@10"].as_f64().unwrap(),
    );
    assert!((gain - (d - b)).abs() < 1e-12);
    let md = std::fs::read_to_string(r.join("report/report.md")).unwrap();
    assert!(md.contains("contrastive baseline") && md.contains("gain from the teacher"));
    let out = distill(&["run", reference.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gain from the teacher"), "{err}");

    // Model directories are tracked whole: a deleted tokenizer or pooling file makes its
    // stage stale, named; the rerun puts it back and what reads the weights is kept.
    std::fs::remove_file(r.join("teacher/model/tokenizer.json")).unwrap();
    std::fs::remove_file(r.join("train/student/modules.json")).unwrap();
    let out = distill(&["status", reference.to_str().unwrap()], &[]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("teacher  stale (output `model/tokenizer.json` is missing"),
        "{status}"
    );
    let out = distill(&["run", reference.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(r.join("teacher/model/tokenizer.json").exists());
    assert!(r.join("train/student/modules.json").exists());
    assert!(err.contains("score: skipped"), "{err}");
}

#[test]
fn fold_teachers_score_the_queries_they_never_saw_and_resume_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let with_folds = |name: &str| {
        let path = pipeline(dir.path(), name);
        let text = std::fs::read_to_string(&path).unwrap();
        let text = text.replace("[teacher_train]\n", "[teacher_train]\nfolds = 2\n");
        std::fs::write(&path, text).unwrap();
        path
    };
    let reference = with_folds("reference");
    run_ok(&reference, &[]);
    let p = Pipeline::load(&reference).unwrap();
    let r = p.run_dir.clone();

    // Each fold teacher trained on the queries outside its fold, and the summary says so.
    let manifest: serde_json::Value = read_json(&r.join("teacher/manifest.json"));
    let folds = manifest["summary"]["folds"].as_array().unwrap();
    assert_eq!(folds.len(), 2);
    let cand = PairTable::read(&r.join("mine/candidates.parquet")).unwrap();
    let queries: std::collections::BTreeSet<(String, String)> = (0..cand.len())
        .map(|i| (cand.dataset[i].clone(), cand.query_id[i].clone()))
        .collect();
    let fold = |ds: &str, q: &str| distill::data::dev::fold_of(p.seed, ds, q, 2);
    for (k, f) in folds.iter().enumerate() {
        let outside = queries.iter().filter(|(d, q)| fold(d, q) != k).count();
        assert_eq!(f["queries"], outside, "fold {k}");
        assert!(outside > 0 && outside < queries.len());
    }
    let files = manifest["outputs"].to_string();
    assert!(files.contains("fold-0/model.safetensors") && files.contains("fold-1/tokenizer.json"));

    // Every pair was scored by its query's fold teacher, not by the stage's teacher.
    let scored = PairTable::read(&r.join("score/teacher_scores.parquet")).unwrap();
    let got = scored.teacher_score.as_ref().unwrap();
    let ds = distill::data::beir::Dataset::load(&generated("beir_tiny"), &[], true).unwrap();
    let pair = |i: usize| {
        (
            ds.queries.text(&scored.query_id[i]).unwrap().to_string(),
            ds.corpus.text(&scored.doc_id[i]).unwrap().to_string(),
        )
    };
    let load = |d: &str| {
        distill::model::CrossEncoder::load(
            &r.join("teacher").join(d),
            Some(64),
            tch::Device::Cpu,
            tch::Kind::Float,
        )
        .unwrap()
    };
    let (main, teachers) = (load("model"), [load("fold-0"), load("fold-1")]);
    let mut differs = false;
    for (i, &g) in got.iter().enumerate() {
        let k = fold(&scored.dataset[i], &scored.query_id[i]);
        let pairs = [pair(i)];
        let want = teachers[k].score(&pairs, 8, &mut |_| {}).unwrap()[0];
        assert!((g - want).abs() < 1e-4, "row {i}: {g} vs {want}");
        differs |= (main.score(&pairs, 8, &mut |_| {}).unwrap()[0] - want).abs() > 1e-3;
    }
    assert!(differs, "the fold teachers score like the stage's teacher");

    // Killed in the stage's teacher, the run resumes to the same fold teachers and scores.
    let killed = with_folds("killed");
    let k = Pipeline::load(&killed).unwrap().run_dir;
    let out = distill(
        &["-q", "run", killed.to_str().unwrap()],
        &[("DISTILL_FAULT_AT_STEP", "teacher:4")],
    );
    assert!(!out.status.success(), "the teacher fault did not fire");
    run_ok(&killed, &[]);
    for f in [
        "teacher/fold-0/model.safetensors",
        "teacher/fold-1/model.safetensors",
        "score/teacher_scores.parquet",
    ] {
        assert!(
            bytes(&r.join(f)) == bytes(&k.join(f)),
            "{f} differs after resume"
        );
    }

    // A fold teacher changed by hand makes the teacher stage stale, and score after it.
    std::fs::remove_file(r.join("teacher/fold-1/config.json")).unwrap();
    let out = distill(&["status", reference.to_str().unwrap()], &[]);
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(status.contains("fold-1/config.json"), "{status}");
}

#[test]
fn an_unchanged_night_reuses_the_teacher_and_a_changed_cache_entry_is_retrained() {
    let dir = tempfile::tempdir().unwrap();
    // Two nights in one output root (so one cache), the second keeping no checkpoints
    // while training and the last one's weights after.
    let night = |name: &str, train_keys: &str| {
        let path = pipeline(dir.path(), name);
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace(&format!("out-{name}"), "out")
            .replace("[train]\n", &format!("[train]\n{train_keys}\n"));
        std::fs::write(&path, text).unwrap();
        path
    };
    let first = night("first", "");
    run_ok(&first, &[]);
    let second = night(
        "second",
        "keep_checkpoints = 0\ncheckpoints_after_success = \"last\"",
    )
    .to_str()
    .unwrap()
    .to_string();
    // The keys above replace the ones the helper wrote.
    let text = std::fs::read_to_string(&second).unwrap().replace(
        "keep_checkpoints = 2\ncheckpoints_after_success = \"all\"\n",
        "",
    );
    std::fs::write(&second, text).unwrap();
    let out = distill(&["run", &second], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("reused from"), "{err}");
    let (a, b) = (
        Pipeline::load(&first).unwrap().run_dir,
        Pipeline::load(Path::new(&second)).unwrap().run_dir,
    );
    let weights = "teacher/model/model.safetensors";
    assert!(bytes(&a.join(weights)) == bytes(&b.join(weights)));
    let manifest: serde_json::Value = read_json(&b.join("teacher/manifest.json"));
    assert_eq!(manifest["summary"]["cached"], true);
    assert!(manifest["summary"]["steps"].as_u64().unwrap() > 0);
    // keep_checkpoints = 0 and "last": one checkpoint, weights and state only.
    let kept: Vec<String> = std::fs::read_dir(b.join("train/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    let mut files: Vec<String> = std::fs::read_dir(b.join("train/checkpoints").join(&kept[0]))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    assert_eq!(files, ["state.json", "weights.safetensors"]);

    // A cache entry changed on disk (same size) is not trusted: the teacher trains again,
    // with a warning, to the same weights.
    let cache = dir.path().join("out/cache/teacher");
    let entry = std::fs::read_dir(&cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let cached = entry
        .join("files")
        .join(weights.trim_start_matches("teacher/"));
    let mut data = std::fs::read(&cached).unwrap();
    let n = data.len();
    data[n - 8..].copy_from_slice(b"\x00\x01\x02\x03\x04\x05\x06\x07");
    std::fs::write(&cached, data).unwrap();
    let third = night("third", "");
    let out = distill(&["run", third.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("does not match its recorded sha256"), "{err}");
    assert!(!err.contains("reused from"), "{err}");
    let c = Pipeline::load(&third).unwrap().run_dir;
    assert!(bytes(&a.join(weights)) == bytes(&c.join(weights)));
}
