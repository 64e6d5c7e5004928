//! Our encoders against transformers / sentence-transformers on CPU fp32.
use crate::common::*;
use distill::model::{Activation, BiEncoder, CrossEncoder};
use tch::{Device, Kind};

fn embed(dir: &std::path::Path, batch_size: usize) -> (BiEncoder, Vec<Vec<f32>>) {
    let model = BiEncoder::load(dir, Device::Cpu, Kind::Float, None).expect("load bi-encoder");
    let texts: Vec<String> = texts().into_iter().map(|t| t.text).collect();
    let emb = model
        .encode(
            distill::model::Side::Document,
            &texts,
            batch_size,
            &mut |_| {},
        )
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
    use distill::model::batching::Batch;
    use distill::model::tokenizer::Encoded;
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

/// Prompts (`config_sentence_transformers.json`): `distill encode --prompt-name` and the
/// default prompt against sentence-transformers' `encode(prompt_name=...)`, and the
/// pipeline's query and document sides against `encode_query` / `encode_document`.
#[test]
fn prompts_match_sentence_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    let copy = std::process::Command::new("cp")
        .args([
            "-r",
            generated("tiny_bi_mean").to_str().unwrap(),
            model.to_str().unwrap(),
        ])
        .status()
        .unwrap();
    assert!(copy.success());
    let config = serde_json::json!({
        "prompts": {
            "query": "query: ",
            "document": "doc: ",
            "passage": "passage: ",
            "classify": "Classify the topic: ",
        },
        "default_prompt_name": "classify",
    });
    std::fs::write(
        model.join("config_sentence_transformers.json"),
        config.to_string(),
    )
    .unwrap();
    let texts: Vec<String> = texts().into_iter().map(|t| t.text).collect();
    let input = dir.path().join("texts.jsonl");
    let lines: Vec<String> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"_id": i.to_string(), "text": t}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    // distill encode: a named prompt, and the default one.
    for name in ["passage", ""] {
        let out = dir.path().join(format!("encode-{name}.parquet"));
        let mut args = vec![
            "encode",
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            out.to_str().unwrap(),
            "--device",
            "cpu",
            "--precision",
            "fp32",
        ];
        if !name.is_empty() {
            args.extend(["--prompt-name", name]);
        }
        let run = distill_output(&args, &[]);
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    // The pipeline's sides, as a stage loads the student.
    let student = BiEncoder::load(&model, Device::Cpu, Kind::Float, None).unwrap();
    assert_eq!(student.query_prompt, "query: ");
    assert_eq!(student.document_prompt, "doc: ");
    let sides = serde_json::json!({
        "query": rows(&student.encode(distill::model::Side::Query, &texts, 16, &mut |_| {}).unwrap()),
        "document": rows(&student.encode(distill::model::Side::Document, &texts, 16, &mut |_| {}).unwrap()),
    });
    // Export writes the prompts back.
    let exported = dir.path().join("exported");
    distill::model::export::export_bi_encoder(&student, &exported).unwrap();
    let written: serde_json::Value = read_json(&exported.join("config_sentence_transformers.json"));
    assert_eq!(written["prompts"], config["prompts"]);
    assert_eq!(written["default_prompt_name"], "classify");
    let sides_path = dir.path().join("sides.json");
    std::fs::write(&sides_path, sides.to_string()).unwrap();
    let script = r#"
import json, sys
import numpy as np, pyarrow.parquet as pq
from sentence_transformers import SentenceTransformer
model_dir, texts_path, tmp = sys.argv[1:4]
texts = [json.loads(l)["text"] for l in open(texts_path)]
m = SentenceTransformer(model_dir, device="cpu")
def distill(name):
    t = pq.read_table(f"{tmp}/encode-{name}.parquet")
    return np.array(t.column("embedding").to_pylist(), dtype=np.float32)
sides = json.load(open(f"{tmp}/sides.json"))
diffs = {
    "named": float(np.abs(distill("passage") - m.encode(texts, prompt_name="passage")).max()),
    "default": float(np.abs(distill("") - m.encode(texts)).max()),
    "query": float(np.abs(np.array(sides["query"]) - m.encode_query(texts)).max()),
    "document": float(np.abs(np.array(sides["document"]) - m.encode_document(texts)).max()),
    # The prompts change the embeddings: without one they differ.
    "unprompted": float(np.abs(distill("passage") - m.encode(texts, prompt="")).max()),
}
print(json.dumps(diffs))
"#;
    let out = python_stdout(script, &[&model, &input, dir.path()]);
    let diffs: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    for key in ["named", "default", "query", "document"] {
        let d = diffs[key].as_f64().unwrap();
        assert!(
            d <= 1e-5,
            "{key}: max abs diff {d:e} from sentence-transformers"
        );
    }
    assert!(diffs["unprompted"].as_f64().unwrap() > 1e-3, "{diffs}");
}
