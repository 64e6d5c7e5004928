//! Memory that does not grow with the input: `distill encode` reads, tokenizes, encodes
//! and writes chunk by chunk, so its peak resident set stays flat as the corpus grows,
//! while the same input as one chunk (what the command held before) grows with it; the
//! mine stage keeps a plain corpus's texts on disk, so its peak grows with the corpus by
//! the ids and the embedding matrix only.
use crate::common::*;
use std::path::{Path, PathBuf};

/// A seeded BEIR corpus of `n` texts of 60 whole words of the tiny model's vocabulary.
fn write_corpus(path: &Path, n: usize) {
    write_corpus_of(path, n, 60)
}

/// A seeded BEIR corpus of `n` texts of `words_per_text` whole words of the tiny model's
/// vocabulary.
fn write_corpus_of(path: &Path, n: usize, words_per_text: usize) {
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
        let text: Vec<&str> = (0..words_per_text)
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

/// A BEIR dataset in `dir`: `n` documents of 600 words, 8 queries (one relevant document
/// each, the same in both splits); with `gzip`, the corpus is `corpus.jsonl.gz`.
fn write_dataset(dir: &Path, n: usize, gzip: bool) {
    std::fs::create_dir_all(dir.join("qrels")).unwrap();
    let corpus = dir.join("corpus.jsonl");
    write_corpus_of(&corpus, n, 600);
    if gzip {
        let bytes = std::fs::read(&corpus).unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        std::io::Write::write_all(&mut enc, &bytes).unwrap();
        std::fs::write(dir.join("corpus.jsonl.gz"), enc.finish().unwrap()).unwrap();
        std::fs::remove_file(&corpus).unwrap();
    }
    let (mut queries, mut qrels) = (String::new(), "query-id\tcorpus-id\tscore\n".to_string());
    for q in 0..8 {
        queries += &format!("{{\"_id\": \"q{q}\", \"text\": \"query number {q}\"}}\n");
        qrels += &format!("q{q}\td{}\t1\n", q * 7);
    }
    std::fs::write(dir.join("queries.jsonl"), queries).unwrap();
    std::fs::write(dir.join("qrels/train.tsv"), &qrels).unwrap();
    std::fs::write(dir.join("qrels/test.tsv"), &qrels).unwrap();
}

/// The mine stage alone over `data`: the peak RSS (bytes) that log.jsonl gives for it.
fn mine_peak_rss(fx: &crate::pipeline::Fixture, name: &str, data: &Path) -> f64 {
    let path = fx.write_with_data(name, data, "", "");
    let args = ["-q", "run", path.to_str().unwrap(), "--only", "mine"];
    // Chunks of 1,024 texts keep a chunk's tokens small beside the texts. One OpenMP
    // thread: the tiny model's batches of 8 ran 80 times slower with two on two cores
    // that another test kept busy.
    let envs = [
        ("DISTILL_ENCODE_CHUNK_ROWS", "1024"),
        ("OMP_NUM_THREADS", "1"),
    ];
    let out = distill_output(&args, &envs);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = distill::pipeline::Pipeline::load(&path).unwrap().run_dir;
    let log = std::fs::read_to_string(run.join("log.jsonl")).unwrap();
    let finished = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["event"] == "stage_finished" && e["stage"] == "mine")
        .unwrap_or_else(|| panic!("no finished mine stage in {log}"));
    finished["peak_rss_bytes"]
        .as_f64()
        .unwrap_or_else(|| panic!("no peak RSS in {finished}"))
}

#[test]
fn mine_memory_grows_with_the_corpus_by_its_ids_and_embeddings_not_its_texts() {
    let fx = crate::pipeline::Fixture::new();
    let data = |name: &str, n: usize, gzip: bool| {
        let dir = fx.dir.path().join(name);
        write_dataset(&dir, n, gzip);
        dir
    };
    let small = mine_peak_rss(&fx, "small", &data("small", 2_000, false));
    let large_dir = data("large", 24_000, false);
    let large = mine_peak_rss(&fx, "large", &large_dir);
    let texts = std::fs::metadata(large_dir.join("corpus.jsonl"))
        .unwrap()
        .len() as f64;
    // The same corpus gzipped is held in memory: the control that the measurement sees
    // the texts.
    let in_memory = mine_peak_rss(&fx, "gzipped", &data("gzipped", 24_000, true));
    let mb = |b: f64| b / 1e6;
    // 22,000 more documents of about 5 kB: 114 MB of text. What grows is the ids, their
    // index (each about 100 bytes), where each line lies (12 bytes), the embeddings (128
    // bytes) and the parsing blocks that the small corpus does not fill: 31 MB measured
    // (461 -> 492 MB), while the gzipped corpus, held in memory, took 88 MB more than the
    // plain one (580 MB).
    assert!(texts > 100e6, "{texts}");
    assert!(
        large - small < texts / 2.0,
        "mine's peak RSS grew from {:.1} to {:.1} MB with {:.1} MB more text",
        mb(small),
        mb(large),
        mb(texts)
    );
    assert!(
        in_memory - large > texts * 0.4,
        "the corpus held in memory ({:.1} MB) should take visibly more than on disk \
         ({:.1} MB): the measurement cannot tell them apart",
        mb(in_memory),
        mb(large)
    );
}
