//! `distill rerank`: a TREC run rescored by a cross-encoder.
use crate::common::*;
use std::path::Path;

fn rerank(run: &Path, output: &Path, top_k: &str) -> std::process::Output {
    distill_output(
        &[
            "rerank",
            "-q",
            "--model",
            generated("ce_sigmoid").to_str().unwrap(),
            "--run",
            run.to_str().unwrap(),
            "--data",
            generated("beir_tiny").to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--top-k",
            top_k,
            "--device",
            "cpu",
            "--batch-size",
            "3",
        ],
        &[("RUST_BACKTRACE", "0")],
    )
}

/// An input run: for each test query, every document with a score from its position in
/// the corpus, two documents tied (TREC order breaks the tie by document id).
fn write_input(path: &Path) {
    let ds = distill::data::beir::Dataset::load(&generated("beir_tiny"), &[], true).unwrap();
    let mut text = String::new();
    for q in ["q03", "q07", "q11"] {
        for (i, d) in ds.corpus.ids.iter().enumerate() {
            let score = if i < 2 { 0.5 } else { 1.0 / (i + 1) as f64 };
            text.push_str(&format!("{q} Q0 {d} {} {score} bm25\n", i + 1));
        }
    }
    std::fs::write(path, text).unwrap();
}

/// The output holds each query's top 6 of the input, scored as the cross-encoder scores
/// those pairs, ranked by those scores; tagged and complete.
#[test]
fn rerank_command_writes_the_cross_encoders_scores_in_their_order() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.trec"), dir.path().join("out.trec"));
    write_input(&input);
    let out = rerank(&input, &output, "6");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines = read_trec(&output);
    assert_eq!(lines.len(), 3 * 6);
    assert_reranked(
        &output,
        &input,
        &generated("ce_sigmoid"),
        &generated("beir_tiny"),
        6,
    );
    let text = std::fs::read_to_string(&output).unwrap();
    assert!(text.lines().all(|l| l.ends_with(" distill-rerank")));
    // Nothing but the output in the folder: written under a temporary name, renamed.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// A malformed line names the file and line; so does an unknown query or document,
/// naming the id; no output is written.
#[test]
fn rerank_command_errors_name_the_run_file_line_and_unknown_ids() {
    let dir = tempfile::tempdir().unwrap();
    let (input, output) = (dir.path().join("in.trec"), dir.path().join("out.trec"));
    let good = "q03 Q0 d03 1 0.9 x\n";
    for (line, want) in [
        (
            "q03 Q0 d05 2 0.8\n",
            ":2: expected 6 whitespace-separated columns",
        ),
        ("q03 Q0 d05 2 high x\n", ":2: score `high` is not a number"),
        ("q03 Q0 nope 2 0.8 x\n", ":2: document `nope` is not in"),
        ("q99 Q0 d05 2 0.8 x\n", ":2: query `q99` is not in"),
    ] {
        std::fs::write(&input, format!("{good}{line}")).unwrap();
        let out = rerank(&input, &output, "5");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        let at = format!("{}{want}", input.display());
        assert!(err.contains(&at), "{err} lacks {at}");
        assert!(!output.exists());
    }
}
