//! Memory that does not grow with the input: `distill encode` reads, tokenizes, encodes
//! and writes chunk by chunk, so its peak resident set stays flat as the corpus grows,
//! while the same input as one chunk (what the command held before) grows with it.
use crate::common::*;
use std::path::{Path, PathBuf};

/// A seeded BEIR corpus of `n` texts of 60 whole words of the tiny model's vocabulary.
fn write_corpus(path: &Path, n: usize) {
    let vocab = std::fs::read_to_string(generated("tiny_bi_mean").join("vocab.txt")).unwrap();
    let words: Vec<&str> = vocab
        .lines()
        .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
        .skip(2000)
        .take(4000)
        .collect();
    let mut rng = distill::rng::SplitMix64::new(n as u64);
    let mut out = String::new();
    for i in 0..n {
        let text: Vec<&str> = (0..60)
            .map(|_| words[rng.next_u64() as usize % words.len()])
            .collect();
        out += &serde_json::json!({"_id": format!("d{i}"), "text": text.join(" ")}).to_string();
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
}

/// Encode `input` with the tiny model in chunks of `chunk` texts: the peak RSS the
/// command reports (bytes) and the output file.
fn encode(dir: &Path, input: &Path, chunk: usize) -> (f64, PathBuf) {
    let output = dir.join(format!(
        "{}-{chunk}.parquet",
        input.file_stem().unwrap().to_string_lossy()
    ));
    let model = generated("tiny_bi_mean");
    let chunk = chunk.to_string();
    let out = distill_output(
        &[
            "encode",
            "--device",
            "cpu",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
        &[("DISTILL_ENCODE_CHUNK_ROWS", &chunk)],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let gb: f64 = err
        .split("peak RSS ")
        .nth(1)
        .and_then(|s| s.split(" GB").next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {err}"));
    (gb * 1e9, output)
}

#[test]
fn encode_memory_does_not_grow_with_the_corpus() {
    let dir = tempfile::tempdir().unwrap();
    let (small, large) = (
        dir.path().join("small.jsonl"),
        dir.path().join("large.jsonl"),
    );
    write_corpus(&small, 3_000);
    write_corpus(&large, 48_000);
    let (small_rss, _) = encode(dir.path(), &small, 1024);
    let (large_rss, chunked) = encode(dir.path(), &large, 1024);
    let (whole_rss, whole) = encode(dir.path(), &large, 1 << 20);
    let mb = |b: f64| b / 1e6;
    // 45,000 more texts of about 62 tokens: their tokens alone are about 45 MB (two
    // int64 per token), the texts about 20 MB more. What may grow is the set of ids seen
    // (the duplicate check), about 130 bytes a text: 6 MB here, up to 20 MB measured on
    // a busy machine.
    assert!(
        large_rss - small_rss < 30e6,
        "peak RSS grew from {:.1} to {:.1} MB with the corpus",
        mb(small_rss),
        mb(large_rss)
    );
    assert!(
        whole_rss - large_rss > 50e6,
        "one chunk ({:.1} MB) should hold visibly more than chunks of 1,024 ({:.1} MB): \
         the measurement cannot tell them apart",
        mb(whole_rss),
        mb(large_rss)
    );
    // Chunks change which texts share a batch, not the embeddings.
    let (ids, values, dim) = distill::data::embeddings::read_embeddings(&chunked).unwrap();
    let (want_ids, want, _) = distill::data::embeddings::read_embeddings(&whole).unwrap();
    assert_eq!(ids.len(), 48_000);
    assert_eq!(ids, want_ids);
    assert_eq!(dim, 32);
    assert!(max_abs_diff_1d(&values, &want) <= 1e-5);
}
