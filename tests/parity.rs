//! Our encoders against transformers / sentence-transformers on CPU fp32.
use crate::common::*;
use distill::model::{Activation, BiEncoder, CrossEncoder};
use tch::{Device, Kind};

fn embed(dir: &std::path::Path, batch_size: usize) -> (BiEncoder, Vec<Vec<f32>>) {
    let model = BiEncoder::load(dir, Device::Cpu, Kind::Float, None).expect("load bi-encoder");
    let texts: Vec<String> = texts().into_iter().map(|t| t.text).collect();
    let emb = model
        .encode(&texts, batch_size, &mut |_| {})
        .expect("encode");
    (model, rows(&emb))
}

fn check_embeddings(dir: &std::path::Path, reference: &std::path::Path, tol: f32) {
    let want: RefEmbeddings = read_json(reference);
    let ids: Vec<String> = texts().into_iter().map(|t| t.id).collect();
    assert_eq!(want.ids, ids, "reference rows are not in fixture order");
    for batch_size in [1, 16] {
        let (_, got) = embed(dir, batch_size);
        let diff = max_abs_diff(&got, &want.embeddings);
        assert!(
            diff <= tol,
            "{}: max abs diff {diff:e} > {tol:e} (batch size {batch_size})",
            dir.display()
        );
    }
}

#[test]
fn minilm_matches_sentence_transformers() {
    let dir = student_dir();
    check_embeddings(&dir, &generated("minilm_embeddings.json"), 1e-5);
    let (model, got) = embed(&dir, 16);
    assert_eq!(model.spec.max_seq_length, 256);
    assert!(model.spec.normalize);
    for row in &got {
        let norm: f32 = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "norm {norm}");
    }
}

#[test]
fn every_pooling_mode_matches_sentence_transformers() {
    for name in [
        "tiny_bi_mean",
        "tiny_bi_cls",
        "tiny_bi_max",
        "tiny_bi_mean_sqrt",
    ] {
        let dir = generated(name);
        check_embeddings(&dir, &dir.join("embeddings.json"), 1e-5);
    }
}

#[test]
fn pytorch_bin_with_bert_prefix_and_gamma_beta_loads() {
    let dir = generated("tiny_bi_gamma_beta");
    assert!(dir.join("pytorch_model.bin").exists());
    assert!(!dir.join("model.safetensors").exists());
    check_embeddings(&dir, &dir.join("embeddings.json"), 1e-5);
}

fn check_cross_encoder(
    dir: &std::path::Path,
    reference: &str,
    max_length: Option<usize>,
) -> Activation {
    let model =
        CrossEncoder::load(dir, max_length, Device::Cpu, Kind::Float).expect("load cross-encoder");
    let want: RefScores = read_json(&dir.join(reference));
    let pairs: Vec<(String, String)> = pairs().into_iter().map(|p| (p.query, p.passage)).collect();
    let ids: Vec<String> = crate::common::pairs().into_iter().map(|p| p.id).collect();
    assert_eq!(want.ids, ids, "reference rows are not in fixture order");
    let logits = model.logits(&pairs, 8, &mut |_| {}).expect("logits");
    let scores = model.score(&pairs, 8, &mut |_| {}).expect("scores");
    assert_scores_match(reference, &logits, &scores, &want);
    model.activation
}

#[test]
fn msmarco_shaped_cross_encoder_matches_transformers() {
    let dir = generated("ce_msmarco");
    // The hub layout: pytorch_model.bin and a slow tokenizer (vocab.txt only).
    assert!(!dir.join("tokenizer.json").exists());
    let act = check_cross_encoder(&dir, "logits.json", None);
    assert_eq!(act, Activation::Identity);
    check_cross_encoder(&dir, "logits_128.json", Some(128));
    // At 64 tokens several queries alone overflow: both sides are cut, longest first.
    let out = tempfile::tempdir().unwrap();
    let reference_file = out.path().join("logits_64.json");
    reference(&[
        "rerank",
        "--model",
        dir.to_str().unwrap(),
        "--input",
        fixture("parity_pairs.jsonl").to_str().unwrap(),
        "--output",
        reference_file.to_str().unwrap(),
        "--max-length",
        "64",
    ]);
    let want: RefScores = read_json(&reference_file);
    let model = CrossEncoder::load(&dir, Some(64), Device::Cpu, Kind::Float).unwrap();
    let pairs: Vec<(String, String)> = pairs().into_iter().map(|p| (p.query, p.passage)).collect();
    let logits = model.logits(&pairs, 8, &mut |_| {}).unwrap();
    let scores = model.score(&pairs, 8, &mut |_| {}).unwrap();
    assert_scores_match("logits at 64", &logits, &scores, &want);
}

#[test]
fn sentence_transformers_cross_encoder_with_sigmoid_matches() {
    let dir = generated("ce_sigmoid");
    let act = check_cross_encoder(&dir, "logits.json", None);
    assert_eq!(act, Activation::Sigmoid);
}

#[test]
fn dropout_is_active_only_in_training_mode() {
    use distill::model::tokenizer::{Batch, Encoded};
    let model =
        BiEncoder::load(&generated("tiny_bi_mean"), Device::Cpu, Kind::Float, None).unwrap();
    let texts = ["dropout changes training outputs", "but never inference"];
    let encoded: Vec<Encoded> = model.tokenizer.encode_texts(&texts).unwrap();
    let items: Vec<&Encoded> = encoded.iter().collect();
    let batch = Batch::new(&items, model.tokenizer.pad_id(), Device::Cpu);
    tch::manual_seed(1);
    let eval_a = model.forward_t(&batch, false);
    let eval_b = model.forward_t(&batch, false);
    assert!(eval_a.equal(&eval_b));
    let train_a = model.forward_t(&batch, true);
    let train_b = model.forward_t(&batch, true);
    let diff = |a: &tch::Tensor, b: &tch::Tensor| (a - b).abs().max().double_value(&[]);
    assert!(
        diff(&train_a, &train_b) > 1e-4,
        "dropout did nothing in training mode"
    );
    assert!(diff(&train_a, &eval_a) > 1e-4);
    // Same seed, same dropout masks: training is reproducible.
    tch::manual_seed(7);
    let s1 = model.forward_t(&batch, true);
    tch::manual_seed(7);
    let s2 = model.forward_t(&batch, true);
    assert!(s1.equal(&s2));
}
