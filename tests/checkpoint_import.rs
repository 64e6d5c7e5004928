//! Checkpoint import errors name the tensor and the file; a fresh classifier is reported.
use crate::common::*;
use distill::model::{BiEncoder, CrossEncoder};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Copy a model directory (one level of subfolders) into a temp dir.
fn copy_model(src: &Path) -> tempfile::TempDir {
    let dst = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let to = dst.path().join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&to).unwrap();
            for inner in std::fs::read_dir(entry.path()).unwrap() {
                let inner = inner.unwrap();
                std::fs::copy(inner.path(), to.join(inner.file_name())).unwrap();
            }
        } else {
            std::fs::copy(entry.path(), &to).unwrap();
        }
    }
    dst
}

/// Rewrite the model's weights after `edit`.
fn edit_weights(dir: &Path, edit: impl FnOnce(&mut Vec<(String, Tensor)>)) {
    let file = dir.join("model.safetensors");
    let mut tensors = Tensor::read_safetensors(&file).unwrap();
    edit(&mut tensors);
    Tensor::write_safetensors(&tensors, &file).unwrap();
}

fn load_err(dir: &Path) -> String {
    match BiEncoder::load(dir, Device::Cpu, Kind::Float, None) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_model(&generated("tiny_bi_mean"));
    let victim = "encoder.layer.1.output.dense.weight";
    edit_weights(dir.path(), |t| t.retain(|(n, _)| n != victim));
    let err = load_err(dir.path());
    assert!(err.contains(victim), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");
}

#[test]
fn unexpected_tensor_is_named() {
    let dir = copy_model(&generated("tiny_bi_mean"));
    edit_weights(dir.path(), |t| {
        t.push((
            "cls.predictions.bias".into(),
            Tensor::zeros([4], (Kind::Float, Device::Cpu)),
        ))
    });
    let err = load_err(dir.path());
    assert!(err.contains("cls.predictions.bias"), "{err}");
}

#[test]
fn wrong_shape_is_named() {
    let dir = copy_model(&generated("tiny_bi_mean"));
    let victim = "embeddings.LayerNorm.weight";
    edit_weights(dir.path(), |t| {
        for (n, v) in t.iter_mut() {
            if n == victim {
                *v = Tensor::ones([7], (Kind::Float, Device::Cpu));
            }
        }
    });
    let err = load_err(dir.path());
    assert!(err.contains(victim) && err.contains("[7]"), "{err}");
}

#[test]
fn cross_encoder_from_encoder_reports_the_fresh_classifier() {
    let dir = student_dir();
    let ce = CrossEncoder::from_encoder(&dir, Some(64), Device::Cpu, Kind::Float).unwrap();
    assert_eq!(
        ce.import.initialised,
        vec![
            "classifier.bias".to_string(),
            "classifier.weight".to_string()
        ]
    );
    assert_eq!(ce.tokenizer.max_length(), 64);
    // The encoder weights are the student's: same word embeddings.
    let student = BiEncoder::load(&dir, Device::Cpu, Kind::Float, None).unwrap();
    let a = ce.vs.variables()["bert.embeddings.word_embeddings.weight"].shallow_clone();
    let b = student.vs.variables()["embeddings.word_embeddings.weight"].shallow_clone();
    assert!(a.equal(&b));
    // A fresh head is N(0, 0.02) with zero bias, as transformers initialises it.
    let w = ce.vs.variables()["classifier.weight"].shallow_clone();
    let std = w.std(true).double_value(&[]);
    assert!(std > 0.01 && std < 0.03, "classifier std {std}");
    assert_eq!(
        ce.vs.variables()["classifier.bias"]
            .abs()
            .sum(Kind::Float)
            .double_value(&[]),
        0.0
    );
}

#[test]
fn cross_encoder_checkpoint_without_classifier_is_an_error() {
    // Loading an encoder directory as a trained cross-encoder must not silently invent a
    // head: the classifier is reported missing.
    let err = match CrossEncoder::load(&generated("tiny_bi_mean"), None, Device::Cpu, Kind::Float) {
        Ok(_) => panic!("should fail"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("classifier."), "{err}");
}
