//! The `distill` binary: encode to Parquet, errors with file and line, version string.
use crate::common::*;
use distill::model::BiEncoder;
use std::process::Command;
use tch::{Device, Kind};

fn distill() -> Command {
    Command::new(env!("CARGO_BIN_EXE_distill"))
}

/// A small BEIR corpus from the parity texts; every third document has a title.
fn write_corpus(path: &std::path::Path) -> Vec<(String, String)> {
    let mut lines = Vec::new();
    let mut expected = Vec::new();
    for (i, t) in texts().into_iter().enumerate() {
        let title = if i % 3 == 0 {
            format!("Title {i}")
        } else {
            String::new()
        };
        let obj = serde_json::json!({"_id": t.id, "title": title, "text": t.text});
        lines.push(obj.to_string());
        let embedded = if title.is_empty() {
            t.text
        } else {
            format!("{title} {}", t.text)
        };
        expected.push((t.id, embedded));
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
    expected
}

#[test]
fn encode_writes_parquet_that_pyarrow_reads() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    let output = dir.path().join("emb.parquet");
    let expected = write_corpus(&corpus);
    let student = student_dir();
    let status = distill()
        .args(["encode", "--device", "cpu", "--batch-size", "16", "--quiet"])
        .arg("--model")
        .arg(&student)
        .arg("--input")
        .arg(&corpus)
        .arg("--output")
        .arg(&output)
        .status()
        .unwrap();
    assert!(status.success());

    let (ids, values, dim) = distill::data::embeddings::read_embeddings(&output).unwrap();
    assert_eq!(dim, 384);
    assert_eq!(
        ids,
        expected.iter().map(|e| e.0.clone()).collect::<Vec<_>>()
    );
    let model = BiEncoder::load(&student, Device::Cpu, Kind::Float, None).unwrap();
    let texts: Vec<&str> = expected.iter().map(|e| e.1.as_str()).collect();
    let want = rows(
        &model
            .encode(distill::model::Side::Document, &texts, 16, &mut |_| {})
            .unwrap(),
    );
    let got: Vec<Vec<f32>> = values.chunks(dim).map(|c| c.to_vec()).collect();
    assert!(max_abs_diff(&got, &want) <= 1e-6);

    // pyarrow reads the schema and the rows.
    let script = "import sys, pyarrow.parquet as pq\n\
                  t = pq.read_table(sys.argv[1])\n\
                  print(t.schema.field('embedding').type, t.num_rows, t.column('id')[0])";
    let out = python_stdout(script, &[&output]);
    let line = out;
    assert_eq!(
        line.trim(),
        format!(
            "fixed_size_list<item: float not null>[384] {} {}",
            ids.len(),
            ids[0]
        )
    );
}

#[test]
fn malformed_input_names_file_and_line_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("corpus.jsonl");
    std::fs::write(
        &corpus,
        "{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"b\", \"text\": \"y\"}\n{\"_id\": \"c\", \"text\n",
    )
    .unwrap();
    let output = dir.path().join("emb.parquet");
    let out = distill()
        .args(["encode", "--device", "cpu"])
        .arg("--model")
        .arg(student_dir())
        .arg("--input")
        .arg(&corpus)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}:3: malformed JSON", corpus.display())),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!output.exists());
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn version_names_libtorch_and_cuda() {
    let out = distill().arg("--version").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("libtorch 2.11.0"), "{text}");
    assert!(text.contains("CUDA"), "{text}");
}

#[test]
fn errors_print_each_cause_once_and_numbers_readably() {
    let dir = tempfile::tempdir().unwrap();
    // A truncated weights file: the safetensors reader's message (which names the file)
    // appears once, not once per level of the cause chain.
    let model = dir.path().join("model");
    let copied = Command::new("cp")
        .arg("-r")
        .arg(generated("tiny_bi_mean"))
        .arg(&model)
        .status()
        .unwrap();
    assert!(copied.success());
    let weights = model.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() - 100]).unwrap();
    let input = dir.path().join("c.jsonl");
    write_corpus(&input);
    let out = distill()
        .env_remove("RUST_BACKTRACE")
        .args(["encode", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(dir.path().join("o.parquet"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.matches("MetadataIncompleteBuffer").count(), 1, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // A setting without an upper bound says so instead of printing f64::MAX.
    let text = std::fs::read_to_string(repo().join("pipelines/demo.toml"))
        .unwrap()
        .replace("[train]\n", "[train]\nkl = -1.0\n")
        .replace("\"models/", &format!("\"{}/models/", repo().display()))
        .replace("\"data/", &format!("\"{}/data/", repo().display()));
    let path = dir.path().join("p.toml");
    std::fs::write(&path, text).unwrap();
    let out = distill().arg("check").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("train.kl") && err.contains("at least 0"),
        "{err}"
    );
    assert!(
        !err.contains("17976931348623157"),
        "f64::MAX printed: {err}"
    );
}
