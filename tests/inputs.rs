//! Inputs as users have them, end to end: a BEIR folder with gzipped corpus and queries
//! and TREC qrels passes `distill check`, loads as the plain folder and is fingerprinted
//! by the files read; `distill encode` reads `id<TAB>text` lines, gzipped or not.
use crate::common::distill_output as distill;
use crate::common::*;
use crate::pipeline::pipeline_text;
use distill::data::beir::Dataset;
use distill::pipeline::fingerprint;
use distill::pipeline::Pipeline;
use std::io::Write;
use std::path::Path;

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// The tiny BEIR folder as users have it: gzipped corpus and queries, the training qrels
/// as space-separated TREC qrels in `qrels/train.txt`, the test qrels as tab-separated
/// TREC qrels without a header (as MS MARCO's `qrels.dev.tsv`) in `qrels/test.tsv.gz`.
fn converted(dst: &Path) {
    let src = generated("beir_tiny");
    std::fs::create_dir_all(dst.join("qrels")).unwrap();
    for name in ["corpus.jsonl", "queries.jsonl"] {
        let bytes = std::fs::read(src.join(name)).unwrap();
        std::fs::write(dst.join(format!("{name}.gz")), gzip(&bytes)).unwrap();
    }
    let trec = |split: &str, sep: &str| -> String {
        let text = std::fs::read_to_string(src.join(format!("qrels/{split}.tsv"))).unwrap();
        let rows = text.lines().skip(1).filter(|l| !l.is_empty()).map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            [c[0], "0", c[1], c[2]].join(sep) + "\n"
        });
        rows.collect()
    };
    std::fs::write(dst.join("qrels/train.txt"), trec("train", " ")).unwrap();
    let test = gzip(trec("test", "\t").as_bytes());
    std::fs::write(dst.join("qrels/test.tsv.gz"), test).unwrap();
}

#[test]
fn a_beir_folder_with_gzip_files_and_trec_qrels_passes_check_and_is_fingerprinted_as_read() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    converted(&data);
    let path = dir.path().join("p.toml");
    let text = pipeline_text(&dir.path().join("out"), &data, "", "", "");
    std::fs::write(&path, text).unwrap();
    let out = distill(&["check", path.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");

    // Read as the plain folder reads.
    let splits = ["train", "test"];
    let want = Dataset::load(&generated("beir_tiny"), &splits, true).unwrap();
    let got = Dataset::load(&data, &splits, true).unwrap();
    assert_eq!(got.corpus.ids, want.corpus.ids);
    assert_eq!(got.corpus.all().unwrap(), want.corpus.all().unwrap());
    assert_eq!(got.queries.ids, want.queries.ids);
    assert_eq!(got.queries.all().unwrap(), want.queries.all().unwrap());
    assert_eq!(got.qrels, want.qrels);
    assert!(!got.qrels["train"].is_empty() && !got.qrels["test"].is_empty());

    // The stages fingerprint the files read.
    let p = Pipeline::load(&path).unwrap();
    let mine = distill::stages::all().remove(0);
    assert_eq!(mine.name(), "mine");
    let inputs = mine.inputs(&p, &Default::default()).unwrap();
    for (key, file) in [
        ("animals/corpus", "corpus.jsonl.gz"),
        ("animals/queries", "queries.jsonl.gz"),
        ("animals/qrels/train", "qrels/train.txt"),
    ] {
        let want = fingerprint::content(&data.join(file)).unwrap();
        assert_eq!(inputs[key], want, "{key}");
    }

    // A file there under two names stops the check, naming the key and both files.
    std::fs::copy(
        generated("beir_tiny").join("qrels/train.tsv"),
        data.join("qrels/train.tsv"),
    )
    .unwrap();
    let out = distill(&["check", path.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("dataset.train_split")
            && err.contains("both `qrels/train.tsv` and `qrels/train.txt` are there"),
        "{err}"
    );
    std::fs::remove_file(data.join("qrels/train.tsv")).unwrap();

    // A TREC line among BEIR rows is an error naming the file and line.
    let mut mixed = std::fs::read_to_string(data.join("qrels/train.txt")).unwrap();
    let lines = mixed.lines().count();
    mixed.push_str("q01\td01\t1\n");
    std::fs::write(data.join("qrels/train.txt"), mixed).unwrap();
    let out = distill(&["check", path.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let want = format!(
        "train.txt:{}: a BEIR qrels (query-id<TAB>corpus-id<TAB>score) line",
        lines + 1
    );
    assert!(err.contains(&want), "{err}");
}

fn encode(input: &Path, output: &Path, format: &str) {
    let model = generated("tiny_bi_mean");
    let out = distill(
        &[
            "encode",
            "--device",
            "cpu",
            "--quiet",
            "--format",
            format,
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn encode_reads_id_tab_text_lines_as_ids_and_texts() {
    let dir = tempfile::tempdir().unwrap();
    let texts = texts();
    let tsv: String = texts
        .iter()
        .map(|t| format!("{}\t{}\n", t.id, t.text.replace(['\t', '\n'], " ")))
        .collect();
    let jsonl: String = texts
        .iter()
        .map(|t| {
            let text = t.text.replace(['\t', '\n'], " ");
            serde_json::json!({"_id": t.id, "text": text}).to_string() + "\n"
        })
        .collect();
    let reference = dir.path().join("texts.jsonl");
    std::fs::write(&reference, jsonl).unwrap();
    encode(&reference, &dir.path().join("want.parquet"), "auto");
    let want =
        distill::data::embeddings::read_embeddings(&dir.path().join("want.parquet")).unwrap();
    let ids: Vec<String> = texts.iter().map(|t| t.id.clone()).collect();
    assert_eq!(want.0, ids);
    // `.txt` detected from its first line, and `.tsv.gz` by name: the JSONL's ids and
    // embeddings.
    let plain = dir.path().join("collection.txt");
    std::fs::write(&plain, &tsv).unwrap();
    let gz = dir.path().join("collection.tsv.gz");
    std::fs::write(&gz, gzip(tsv.as_bytes())).unwrap();
    for input in [&plain, &gz] {
        let output = dir.path().join("got.parquet");
        encode(input, &output, "auto");
        let got = distill::data::embeddings::read_embeddings(&output).unwrap();
        assert_eq!(got, want, "{}", input.display());
        std::fs::remove_file(output).unwrap();
    }
    // --format text embeds each line whole, numbered.
    let output = dir.path().join("whole.parquet");
    encode(&plain, &output, "text");
    let (got_ids, got_values, _) = distill::data::embeddings::read_embeddings(&output).unwrap();
    assert_eq!(got_ids[0], "1");
    assert_eq!(got_ids.len(), ids.len());
    assert_ne!(got_values, want.1);
}
