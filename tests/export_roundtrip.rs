//! Directories exported by distill load in sentence-transformers with no warnings and
//! give the same outputs.
use crate::common::*;
use distill::model::export::{export_bi_encoder, export_cross_encoder};
use distill::model::{BiEncoder, CrossEncoder};
use tch::{Device, Kind};

#[test]
fn exported_student_loads_in_sentence_transformers() {
    let model = BiEncoder::load(&student_dir(), Device::Cpu, Kind::Float, None).unwrap();
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("student");
    export_bi_encoder(&model, &dir).unwrap();

    let texts: Vec<String> = texts().into_iter().map(|t| t.text).collect();
    let ours = rows(
        &model
            .encode(distill::model::Side::Document, &texts, 16, &mut |_| {})
            .unwrap(),
    );

    let reference = out.path().join("ref.json");
    reference_embed(&dir, &reference);
    let theirs: RefEmbeddings = read_json(&reference);
    let diff = max_abs_diff(&ours, &theirs.embeddings);
    assert!(diff <= 1e-5, "exported student differs by {diff:e}");

    // And it loads back into distill with identical weights and outputs.
    let back = BiEncoder::load(&dir, Device::Cpu, Kind::Float, None).unwrap();
    assert_eq!(back.spec.max_seq_length, model.spec.max_seq_length);
    let again = rows(
        &back
            .encode(distill::model::Side::Document, &texts, 16, &mut |_| {})
            .unwrap(),
    );
    assert_eq!(max_abs_diff(&ours, &again), 0.0);
}

fn check_cross_encoder_export(model: &CrossEncoder) {
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("teacher");
    export_cross_encoder(model, &dir).unwrap();
    let reference_file = out.path().join("ref.json");
    reference_rerank(&dir, &reference_file);
    let theirs: RefScores = read_json(&reference_file);
    let pairs: Vec<(String, String)> = pairs().into_iter().map(|p| (p.query, p.passage)).collect();
    let logits = model.logits(&pairs, 8, &mut |_| {}).unwrap();
    let scores = model.score(&pairs, 8, &mut |_| {}).unwrap();
    assert_scores_match("exported cross-encoder", &logits, &scores, &theirs);

    let back = CrossEncoder::load(&dir, None, Device::Cpu, Kind::Float).unwrap();
    assert_eq!(back.activation, model.activation);
    assert_eq!(back.tokenizer.max_length(), model.tokenizer.max_length());
    let again = back.logits(&pairs, 8, &mut |_| {}).unwrap();
    assert_eq!(max_abs_diff_1d(&logits, &again), 0.0);
}

#[test]
fn exported_cross_encoder_loads_in_sentence_transformers() {
    let model =
        CrossEncoder::load(&generated("ce_msmarco"), None, Device::Cpu, Kind::Float).unwrap();
    check_cross_encoder_export(&model);
}

#[test]
fn fresh_cross_encoder_from_the_student_exports_cleanly() {
    let model =
        CrossEncoder::from_encoder(&student_dir(), Some(128), Device::Cpu, Kind::Float).unwrap();
    check_cross_encoder_export(&model);
}
