//! Whole trained runs: the contrastive baseline, fold teachers and the teacher cache, each
//! resumed after a kill.
use crate::common::distill_output as distill;
use crate::common::*;
use crate::train::{bytes, pipeline, run_ok};
use distill::data::pairs::PairTable;
use distill::pipeline::Pipeline;
use std::path::Path;

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
            ds.queries
                .text(&scored.query_id[i])
                .unwrap()
                .unwrap()
                .to_string(),
            ds.corpus
                .text(&scored.doc_id[i])
                .unwrap()
                .unwrap()
                .to_string(),
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
