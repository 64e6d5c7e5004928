//! `distill encode`: embed a BEIR JSONL, `id<TAB>text` or plain-text file (each possibly
//! gzipped) with a bi-encoder into Parquet.
use crate::data::embeddings::{write_behind, EmbeddingsWriter};
use crate::data::text_input::{count_texts, ReadPolicy, TextFormat, TextReader};
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
    /// Write a Kineto trace of the encoding here.
    pub profile: Option<PathBuf>,
    pub verbosity: Verbosity,
}

#[derive(Debug, Clone)]
pub struct EncodeSummary {
    pub texts: usize,
    pub dim: usize,
    pub tokens: usize,
    pub seconds: f64,
    /// The process's peak resident memory (Linux), for the summary line.
    pub peak_rss_bytes: Option<u64>,
}

impl EncodeSummary {
    pub fn per_second(&self) -> f64 {
        self.texts as f64 / self.seconds.max(1e-9)
    }
}

pub fn run(settings: &EncodeSettings) -> Result<EncodeSummary> {
    let (device, kind) = settings.runtime.resolve()?;
    let policy = ReadPolicy {
        strict: true,
        allow_empty: true,
    };
    // The whole input is checked (on a thread, while the model loads) before anything
    // is encoded: a bad line stops the command before any work, naming file and line.
    let (total, model) = std::thread::scope(|scope| {
        let check = scope.spawn(|| count_texts(&settings.input, settings.format, policy));
        let model = BiEncoder::load(&settings.model, device, kind, settings.max_seq_length);
        let total = check
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        Ok::<_, Error>((total?, model?))
    })?;
    let mut reader = TextReader::open(&settings.input, settings.format, policy)?;
    let started = Instant::now();
    // As sentence-transformers' encode(prompt_name=...): the named prompt, else the
    // model's default prompt, else none.
    let prompt = model
        .spec
        .prompts
        .resolve(settings.prompt_name.as_deref(), &settings.model)?;
    let dim = model.dim() as usize;
    let mut metadata = vec![
        ("distill.model", settings.model.display().to_string()),
        ("distill.normalized", model.spec.normalize.to_string()),
        (
            "distill.max_seq_length",
            model.spec.max_seq_length.to_string(),
        ),
    ];
    if !prompt.is_empty() {
        metadata.push(("distill.prompt", prompt.clone()));
    }
    // The input is read, tokenized, encoded and written chunk by chunk: memory holds a
    // chunk or two, whatever the size of the file.
    let rows = crate::model::batching::chunk_rows();
    let chunks = std::iter::from_fn(|| {
        let mut texts = Vec::new();
        let mut ids = Vec::new();
        while texts.len() < rows {
            match reader.next_record() {
                Ok(Some(r)) => {
                    texts.push(r.text);
                    ids.push(r.id);
                }
                Ok(None) => break,
                Err(e) => return Some(Err(e)),
            }
        }
        (!texts.is_empty()).then_some(Ok((texts, ids)))
    });
    let writer = EmbeddingsWriter::create(&settings.output, dim, &metadata)?;
    let mut progress = Progress::new("encode", total as u64, settings.verbosity);
    if settings.profile.is_some() {
        crate::ffi::profiler::profiler_start(device.is_cuda(), true)?;
    }
    let (tokens, _) = write_behind(writer, |queue| {
        model.encode_stream(
            &prompt,
            chunks,
            settings.runtime.batch_size,
            &mut |n| progress.inc(n as u64),
            &mut |ids: Vec<String>, emb| {
                let values = Vec::<f32>::try_from(emb.flatten(0, -1))
                    .map_err(|e| Error::torch("reading embeddings", e))?;
                queue(ids, values)
            },
        )
    })?;
    progress.finish();
    if let Some(path) = &settings.profile {
        crate::ffi::profiler::profiler_stop(path)?;
    }
    Ok(EncodeSummary {
        texts: total,
        dim,
        tokens,
        seconds: started.elapsed().as_secs_f64(),
        peak_rss_bytes: crate::progress::peak_rss_bytes(),
    })
}
