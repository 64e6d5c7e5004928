//! Configuration hashes: the shipped pipelines' against a golden file, and which stages'
//! hashes each key moves.
use crate::common::*;
use distill::pipeline::Pipeline;

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
        (
            "student.query_prompt_name",
            "\"query\"",
            &["mine", "teacher", "train", "baseline", "eval"],
        ),
        (
            "student.document_prompt_name",
            "\"document\"",
            &["mine", "teacher", "train", "baseline", "eval"],
        ),
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
