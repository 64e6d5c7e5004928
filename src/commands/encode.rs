//! `distill encode`: embed a BEIR JSONL, `id<TAB>text` or plain-text file (each possibly
//! gzipped) with a bi-encoder into Parquet.
use crate::data::embeddings::write_embeddings;
use crate::data::text_input::{read_texts, TextFormat};
use crate::device::Runtime;
use crate::error::{Error, Result};
use crate::model::BiEncoder;
use crate::progress::{Progress, Verbosity};
use std::path::PathBuf;
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct EncodeSettings {
    pub model: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub format: TextFormat,
    pub runtime: Runtime,
    pub max_seq_length: Option<usize>,
    /// A prompt of the model's `config_sentence_transformers.json`, by name (unset: its
    /// `default_prompt_name`'s, if any).
    pub prompt_name: Option<String>,
    pub verbosity: Verbosity,
}

#[derive(Debug, Clone)]
pub struct EncodeSummary {
    pub texts: usize,
    pub dim: usize,
    pub tokens: usize,
    pub seconds: f64,
}

impl EncodeSummary {
    pub fn per_second(&self) -> f64 {
        self.texts as f64 / self.seconds.max(1e-9)
    }
}

pub fn run(settings: &EncodeSettings) -> Result<EncodeSummary> {
    let (device, kind) = settings.runtime.resolve()?;
    let records = read_texts(&settings.input, settings.format)?;
    let model = BiEncoder::load(&settings.model, device, kind, settings.max_seq_length)?;
    let started = Instant::now();
    let texts: Vec<&str> = records.iter().map(|r| r.text.as_str()).collect();
    // As sentence-transformers' encode(prompt_name=...): the named prompt, else the
    // model's default prompt, else none.
    let prompt = model
        .spec
        .prompts
        .resolve(settings.prompt_name.as_deref(), &settings.model)?;
    let encoded = model.tokenize_behind(&prompt, &texts)?;
    let tokens = encoded.iter().map(|e| e.len()).sum();
    let mut progress = Progress::new("encode", records.len() as u64, settings.verbosity);
    let embeddings = model.encode_tokenized(&encoded, settings.runtime.batch_size, &mut |n| {
        progress.inc(n as u64)
    })?;
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let dim = model.dim() as usize;
    let values = Vec::<f32>::try_from(embeddings.flatten(0, -1))
        .map_err(|e| Error::torch("reading embeddings", e))?;
    let ids: Vec<String> = records.into_iter().map(|r| r.id).collect();
    let mut metadata = vec![
        ("distill.model", settings.model.display().to_string()),
        ("distill.normalized", model.spec.normalize.to_string()),
        (
            "distill.max_seq_length",
            model.spec.max_seq_length.to_string(),
        ),
    ];
    if !prompt.is_empty() {
        metadata.push(("distill.prompt", prompt));
    }
    write_embeddings(&settings.output, &ids, &values, dim, &metadata)?;
    Ok(EncodeSummary {
        texts: ids.len(),
        dim,
        tokens,
        seconds,
    })
}
