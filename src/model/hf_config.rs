//! Mirrors of Hugging Face and sentence-transformers configuration files. These are
//! other people's formats, so they are read permissively (`#[serde(default)]`): unknown
//! keys are kept out of the way, and only the keys we use are validated.
use crate::error::{read_json, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `config.json` of a BERT-family model (BertModel or BertForSequenceClassification).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BertConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub architectures: Option<Vec<String>>,
    pub model_type: String,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub intermediate_size: i64,
    pub hidden_act: String,
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub max_position_embeddings: i64,
    pub type_vocab_size: i64,
    pub initializer_range: f64,
    pub layer_norm_eps: f64,
    pub pad_token_id: i64,
    pub position_embedding_type: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id2label: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label2id: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub num_labels: Option<i64>,
    /// sentence-transformers >= 4 writes `{"activation_fn": ..., "version": ...}` here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sentence_transformers: Option<serde_json::Value>,
    /// Older sentence-transformers cross-encoders declare their activation here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sbert_ce_default_activation_function: Option<String>,
}

impl Default for BertConfig {
    fn default() -> Self {
        BertConfig {
            architectures: None,
            model_type: "bert".into(),
            vocab_size: 30522,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            intermediate_size: 3072,
            hidden_act: "gelu".into(),
            hidden_dropout_prob: 0.1,
            attention_probs_dropout_prob: 0.1,
            max_position_embeddings: 512,
            type_vocab_size: 2,
            initializer_range: 0.02,
            layer_norm_eps: 1e-12,
            pad_token_id: 0,
            position_embedding_type: "absolute".into(),
            classifier_dropout: None,
            id2label: None,
            label2id: None,
            num_labels: None,
            sentence_transformers: None,
            sbert_ce_default_activation_function: None,
        }
    }
}

impl BertConfig {
    /// Read and validate `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let config: BertConfig = read_json(path)?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |m: String| Err(Error::model(path, m));
        if !matches!(self.model_type.as_str(), "bert" | "") {
            return bad(format!(
                "model_type `{}` is not supported (BERT-family encoders only)",
                self.model_type
            ));
        }
        if self.hidden_size <= 0 || self.num_attention_heads <= 0 {
            return bad("hidden_size and num_attention_heads must be positive".into());
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.position_embedding_type != "absolute" {
            return bad(format!(
                "position_embedding_type `{}` is not supported (only `absolute`)",
                self.position_embedding_type
            ));
        }
        if !matches!(self.hidden_act.as_str(), "gelu" | "gelu_new" | "relu") {
            return bad(format!("hidden_act `{}` is not supported", self.hidden_act));
        }
        Ok(())
    }

    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads
    }

    /// Number of outputs of a sequence-classification head.
    pub fn labels(&self) -> i64 {
        self.num_labels
            .or_else(|| self.id2label.as_ref().map(|m| m.len() as i64))
            .unwrap_or(1)
    }
}

/// One entry of a sentence-transformers `modules.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModuleEntry {
    pub idx: usize,
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// `sentence_bert_config.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SentenceBertConfig {
    pub max_seq_length: Option<usize>,
    pub do_lower_case: bool,
}

/// `1_Pooling/config.json`, in either format: sentence-transformers < 6 writes one
/// boolean per mode (`pooling_mode_mean_tokens`, ...); 6.x writes `pooling_mode`, a mode
/// name or a list of them, and `embedding_dimension`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolingConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pooling_mode: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub embedding_dimension: Option<i64>,
    pub word_embedding_dimension: i64,
    pub pooling_mode_cls_token: bool,
    pub pooling_mode_mean_tokens: bool,
    pub pooling_mode_max_tokens: bool,
    pub pooling_mode_mean_sqrt_len_tokens: bool,
    pub pooling_mode_weightedmean_tokens: bool,
    pub pooling_mode_lasttoken: bool,
    pub include_prompt: bool,
}

impl Default for PoolingConfig {
    fn default() -> Self {
        PoolingConfig {
            pooling_mode: None,
            embedding_dimension: None,
            word_embedding_dimension: 0,
            pooling_mode_cls_token: false,
            pooling_mode_mean_tokens: true,
            pooling_mode_max_tokens: false,
            pooling_mode_mean_sqrt_len_tokens: false,
            pooling_mode_weightedmean_tokens: false,
            pooling_mode_lasttoken: false,
            include_prompt: true,
        }
    }
}

/// `tokenizer_config.json` (only the keys a BERT tokenizer needs).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct TokenizerConfig {
    pub do_lower_case: bool,
    pub tokenize_chinese_chars: bool,
    pub strip_accents: Option<bool>,
    pub model_max_length: Option<f64>,
    /// Special tokens are strings or `{"content": ...}` objects depending on the writer.
    pub unk_token: serde_json::Value,
    pub sep_token: serde_json::Value,
    pub pad_token: serde_json::Value,
    pub cls_token: serde_json::Value,
    pub mask_token: serde_json::Value,
}

impl Default for TokenizerConfig {
    fn default() -> Self {
        TokenizerConfig {
            do_lower_case: true,
            tokenize_chinese_chars: true,
            strip_accents: None,
            model_max_length: None,
            unk_token: "[UNK]".into(),
            sep_token: "[SEP]".into(),
            pad_token: "[PAD]".into(),
            cls_token: "[CLS]".into(),
            mask_token: "[MASK]".into(),
        }
    }
}

impl TokenizerConfig {
    /// Read `tokenizer_config.json` when present, defaults otherwise.
    pub fn load_or_default(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer_config.json");
        if path.exists() {
            read_json(&path)
        } else {
            Ok(TokenizerConfig::default())
        }
    }

    /// The text of a special token given as a string or as an AddedToken object.
    pub fn token(value: &serde_json::Value, default: &str) -> String {
        match value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Object(m) => m
                .get("content")
                .and_then(|c| c.as_str())
                .unwrap_or(default)
                .to_string(),
            _ => default.to_string(),
        }
    }

    /// `model_max_length`, ignoring the huge sentinel transformers writes when unset.
    pub fn max_length(&self) -> Option<usize> {
        self.model_max_length
            .filter(|m| *m > 0.0 && *m < 1e9)
            .map(|m| m as usize)
    }
}
