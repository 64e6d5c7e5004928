//! Export to directories that sentence-transformers and transformers load as they are:
//! a `SentenceTransformer` for the student, a `CrossEncoder` for the teacher.
use crate::error::{read_json, Error, Result};
use crate::model::bi_encoder::BiEncoder;
use crate::model::cross_encoder::CrossEncoder;
use crate::model::hf_config::BertConfig;
use crate::model::weights;
use serde_json::{json, Value};
use std::path::Path;

/// Tokenizer files copied from the source model when present.
const TOKENIZER_FILES: [&str; 3] = ["tokenizer.json", "vocab.txt", "special_tokens_map.json"];

/// Version string written into exported configs.
const EXPORTER: &str = concat!("distill ", env!("CARGO_PKG_VERSION"));

fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))
}

/// Copy the tokenizer files of `src` into `dst`, with `model_max_length` set to
/// `max_length` in `tokenizer_config.json` (written from defaults when the source had none).
fn copy_tokenizer(src: &Path, dst: &Path, max_length: usize) -> Result<()> {
    for name in TOKENIZER_FILES {
        let from = src.join(name);
        if from.exists() {
            std::fs::copy(&from, dst.join(name)).map_err(|e| Error::io(&from, e))?;
        }
    }
    let cfg_path = src.join("tokenizer_config.json");
    let mut cfg: Value = if cfg_path.exists() {
        read_json(&cfg_path)?
    } else {
        json!({"do_lower_case": true, "tokenizer_class": "BertTokenizer"})
    };
    if let Some(map) = cfg.as_object_mut() {
        map.insert("model_max_length".into(), json!(max_length));
    }
    write_json(&dst.join("tokenizer_config.json"), &cfg)
}

fn model_config(config: &BertConfig, architecture: &str) -> BertConfig {
    let mut config = config.clone();
    config.architectures = Some(vec![architecture.to_string()]);
    config
}

/// Write `model` as a sentence-transformers directory (Transformer, Pooling and, when
/// the model normalises, Normalize) into `dir`.
pub fn export_bi_encoder(model: &BiEncoder, dir: &Path) -> Result<()> {
    let spec = &model.spec;
    create_dir(dir)?;
    let hidden = spec.config.hidden_size;
    write_json(
        &dir.join("config.json"),
        &model_config(&spec.config, "BertModel"),
    )?;
    weights::export(&model.vs, &dir.join("model.safetensors"))?;
    copy_tokenizer(&spec.transformer_dir, dir, spec.max_seq_length)?;
    write_json(
        &dir.join("sentence_bert_config.json"),
        &json!({"max_seq_length": spec.max_seq_length, "do_lower_case": false}),
    )?;
    let pooling_dir = dir.join("1_Pooling");
    create_dir(&pooling_dir)?;
    write_json(
        &pooling_dir.join("config.json"),
        &spec.pooling.to_config(hidden),
    )?;
    let mut modules = vec![
        json!({"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}),
        json!({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}),
    ];
    if spec.normalize {
        create_dir(&dir.join("2_Normalize"))?;
        modules.push(json!({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}));
    }
    write_json(&dir.join("modules.json"), &modules)?;
    write_json(
        &dir.join("config_sentence_transformers.json"),
        &json!({
            "__version__": {"distill": EXPORTER},
            "prompts": spec.prompts.prompts,
            "default_prompt_name": spec.prompts.default_prompt_name,
            "similarity_fn_name": if spec.normalize { "cosine" } else { "dot" },
        }),
    )
}

/// Write `model` as a Hugging Face `BertForSequenceClassification` directory with the
/// activation declared the way sentence-transformers' `CrossEncoder` reads it.
pub fn export_cross_encoder(model: &CrossEncoder, dir: &Path) -> Result<()> {
    create_dir(dir)?;
    let mut config = model_config(&model.config, "BertForSequenceClassification");
    let labels = config.labels();
    config.id2label = Some(
        (0..labels)
            .map(|i| (i.to_string(), json!(format!("LABEL_{i}"))))
            .collect(),
    );
    config.label2id = Some(
        (0..labels)
            .map(|i| (format!("LABEL_{i}"), json!(i)))
            .collect(),
    );
    config.num_labels = None;
    config.sbert_ce_default_activation_function = None;
    config.sentence_transformers = Some(json!({
        "activation_fn": model.activation.class_path(),
        "version": EXPORTER,
    }));
    write_json(&dir.join("config.json"), &config)?;
    weights::export(&model.vs, &dir.join("model.safetensors"))?;
    copy_tokenizer(&model.source_dir, dir, model.tokenizer.max_length())
}
