//! The pipeline file's checks (`distill check` and the checker behind `run`): keys, lines,
//! contents, the shipped pipelines, and the configuration hashes each key feeds.
use crate::common::distill_output as distill;
use crate::common::*;
use crate::pipeline::Fixture;
use distill::pipeline::Pipeline;
use std::path::{Path, PathBuf};

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
    // Under --gpus the parent reads the contents once, before any child; the children
    // (workers and ranks, each of which logs to log.jsonl) do not read them again.
    let path = f.write_full("lenient-gpus", &data, "strict = false", "", "");
    let out = distill(&["run", path.to_str().unwrap(), "--gpus", "2"], &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let log =
        std::fs::read_to_string(Pipeline::load(&path).unwrap().run_dir.join("log.jsonl")).unwrap();
    let warned = log
        .lines()
        .filter(|l| l.contains("qrels rows naming an unknown query or document skipped"))
        .count();
    assert_eq!(warned, 1, "{log}");
    assert!(
        log.contains("\"stage\":\"score\""),
        "the children ran: {log}"
    );
}

#[test]
fn the_shipped_nightly_pipeline_is_valid() {
    // Every key of pipelines/nightly.toml parses; its model and data paths are swapped
    // for the fixtures so that validation does not depend on what this machine has.
    let text = std::fs::read_to_string(repo().join("pipelines/nightly.toml")).unwrap();
    let swaps = [
        ("\"models/all-MiniLM-L6-v2\"", generated("tiny_bi_mean")),
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
    assert!(p.teacher_from_base);
}

/// Every pipeline file shipped in `pipelines/` (the experiment variants included) passes
/// `distill check`, contents and all, on a machine after `make setup` with `../shared`.
#[test]
fn every_shipped_pipeline_passes_check() {
    let mut files = Vec::new();
    for dir in ["pipelines", "pipelines/experiments"] {
        for e in std::fs::read_dir(repo().join(dir)).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "toml") {
                files.push(path);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 9, "{files:?}");
    for file in &files {
        let out = distill(&["check", file.to_str().unwrap()], &[]);
        assert!(
            out.status.success(),
            "{}: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
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
