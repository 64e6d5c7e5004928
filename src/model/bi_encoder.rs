//! The student: a sentence-transformers bi-encoder (Transformer -> Pooling -> Normalize).
use crate::error::{read_json, Error, Result};
use crate::model::batching::Batch;
use crate::model::bert::{BertModel, Kernels};
use crate::model::hf_config::{
    BertConfig, ModuleEntry, PoolingConfig, SentenceBertConfig, TokenizerConfig,
};
use crate::model::pooling::{l2_normalize, Pooling};
use crate::model::tokenizer::{Encoded, TextTokenizer};
use crate::model::weights::{self, ImportReport, Layout};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// Module classes are matched by class name: sentence-transformers 6 moved them
/// (`sentence_transformers.models.Pooling` became `...modules.pooling.Pooling`).
const TRANSFORMER: &str = "Transformer";
const POOLING: &str = "Pooling";
const NORMALIZE: &str = "Normalize";

/// The module stack of a sentence-transformers directory, as far as we support it.
#[derive(Debug, Clone)]
pub struct BiEncoderSpec {
    /// Folder of the Transformer module (config.json, weights, tokenizer).
    pub transformer_dir: PathBuf,
    pub config: BertConfig,
    pub pooling: Pooling,
    pub normalize: bool,
    pub max_seq_length: usize,
    /// `prompts` and `default_prompt_name` of `config_sentence_transformers.json`.
    pub prompts: Prompts,
}

/// A model's prompts, as sentence-transformers keeps them: texts put in front of an
/// input (`"query: "`, an instruction), by name, and the name used when none is asked for.
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize, serde::Serialize)]
pub struct Prompts {
    #[serde(default)]
    pub prompts: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    pub default_prompt_name: Option<String>,
}

/// Which side of retrieval a text is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Query,
    Document,
}

impl Prompts {
    /// Read from `dir/config_sentence_transformers.json`, with `query` and `document`
    /// prompts (empty) where the file has none, as sentence-transformers 6 fills them in.
    fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config_sentence_transformers.json");
        let mut prompts: Prompts = match path.exists() {
            true => read_json(&path)?,
            false => Prompts::default(),
        };
        for side in ["query", "document"] {
            prompts.prompts.entry(side.into()).or_default();
        }
        if let Some(name) = &prompts.default_prompt_name {
            if !prompts.prompts.contains_key(name) {
                return Err(Error::model(
                    dir,
                    format!("default_prompt_name `{name}` is not among its prompts"),
                ));
            }
        }
        Ok(prompts)
    }

    /// The prompt named `name` (an error listing the model's prompts when it has none of
    /// that name), or without a name the default prompt, as sentence-transformers'
    /// `encode(prompt_name=...)` resolves it.
    pub fn resolve(&self, name: Option<&str>, dir: &Path) -> Result<String> {
        match name.or(self.default_prompt_name.as_deref()) {
            None => Ok(String::new()),
            Some(n) => self.prompts.get(n).cloned().ok_or_else(|| {
                Error::model(
                    dir,
                    format!(
                        "has no prompt named `{n}` (its prompts: {:?})",
                        self.prompts.keys().collect::<Vec<_>>()
                    ),
                )
            }),
        }
    }

    /// The prompt of `side` as sentence-transformers' `encode_query` / `encode_document`
    /// choose it: `name` when given; else `query` for queries, the first of `document`,
    /// `passage`, `corpus` for documents, when the model has it (with `query` and
    /// `document` always there, possibly empty, those two); else the default prompt.
    pub fn for_side(&self, side: Side, name: Option<&str>, dir: &Path) -> Result<String> {
        let conventional: &[&str] = match side {
            Side::Query => &["query"],
            Side::Document => &["document", "passage", "corpus"],
        };
        let name = name.or_else(|| {
            conventional
                .iter()
                .copied()
                .find(|n| self.prompts.contains_key(*n))
        });
        self.resolve(name, dir)
    }
}

impl BiEncoderSpec {
    /// Read `modules.json` and the module configs. A directory without `modules.json` is
    /// treated as sentence-transformers does: a plain transformer with mean pooling and
    /// no normalisation.
    pub fn read(dir: &Path) -> Result<Self> {
        let modules_path = dir.join("modules.json");
        let (transformer_dir, pooling, normalize) = if modules_path.exists() {
            let modules: Vec<ModuleEntry> = read_json(&modules_path)?;
            parse_modules(dir, &modules_path, &modules)?
        } else {
            (dir.to_path_buf(), Pooling::mean(), false)
        };
        let config = BertConfig::load(&transformer_dir.join("config.json"))?;
        let st_path = transformer_dir.join("sentence_bert_config.json");
        let st: SentenceBertConfig = if st_path.exists() {
            read_json(&st_path)?
        } else {
            SentenceBertConfig::default()
        };
        if st.do_lower_case {
            return Err(Error::Unsupported {
                path: st_path,
                message: "do_lower_case = true is not implemented".into(),
            });
        }
        let tok = TokenizerConfig::load_or_default(&transformer_dir)?;
        let max_pos = config.max_position_embeddings as usize;
        let max_seq_length = st
            .max_seq_length
            .or(tok.max_length())
            .unwrap_or(max_pos)
            .min(max_pos);
        Ok(BiEncoderSpec {
            transformer_dir,
            config,
            pooling,
            normalize,
            max_seq_length,
            prompts: Prompts::read(dir)?,
        })
    }
}

fn parse_modules(
    dir: &Path,
    path: &Path,
    modules: &[ModuleEntry],
) -> Result<(PathBuf, Pooling, bool)> {
    let mut sorted: Vec<&ModuleEntry> = modules.iter().collect();
    sorted.sort_by_key(|m| m.idx);
    let kinds: Vec<&str> = sorted
        .iter()
        .map(|m| m.kind.rsplit('.').next().unwrap_or(""))
        .collect();
    let ok_stack = matches!(
        kinds.as_slice(),
        [TRANSFORMER, POOLING] | [TRANSFORMER, POOLING, NORMALIZE]
    );
    if !ok_stack {
        return Err(Error::Unsupported {
            path: path.to_path_buf(),
            message: format!(
                "module stack {kinds:?}; supported: Transformer, Pooling[, Normalize]"
            ),
        });
    }
    let transformer_dir = dir.join(&sorted[0].path);
    let pooling_path = dir.join(&sorted[1].path).join("config.json");
    let pooling_config: PoolingConfig = read_json(&pooling_path)?;
    let pooling = Pooling::from_config(&pooling_config, &pooling_path)?;
    Ok((transformer_dir, pooling, sorted.len() == 3))
}

/// A bi-encoder ready to run: weights in their own `VarStore`, tokenizer, pooling.
pub struct BiEncoder {
    pub vs: nn::VarStore,
    pub bert: BertModel,
    pub spec: BiEncoderSpec,
    pub tokenizer: TextTokenizer,
    pub import: ImportReport,
    /// The prompts put in front of queries and of documents (empty: none).
    pub query_prompt: String,
    pub document_prompt: String,
}

impl BiEncoder {
    /// Load a sentence-transformers (or plain Hugging Face BERT) directory onto `device`,
    /// with weights in `kind` (fp32 or bf16).
    /// `max_seq_length` overrides the model's own.
    pub fn load(
        dir: &Path,
        device: Device,
        kind: Kind,
        max_seq_length: Option<usize>,
    ) -> Result<Self> {
        let mut spec = BiEncoderSpec::read(dir)?;
        if let Some(m) = max_seq_length {
            spec.max_seq_length = m.min(spec.config.max_position_embeddings as usize);
        }
        let tokenizer = TextTokenizer::load(&spec.transformer_dir, spec.max_seq_length)?;
        let mut vs = nn::VarStore::new(device);
        let mut bert = BertModel::new(vs.root(), &spec.config);
        let file = weights::weights_file(&spec.transformer_dir)?;
        // The pooler is not used by a bi-encoder; checkpoints saved without it still load.
        let import = weights::import(&mut vs, &file, Layout::Encoder, &["pooler."])?;
        if kind == Kind::BFloat16 {
            vs.bfloat16();
            bert.set_compute_kind(Kind::BFloat16);
        }
        // As sentence-transformers' encode_query / encode_document without a prompt name.
        let query_prompt = spec.prompts.for_side(Side::Query, None, dir)?;
        let document_prompt = spec.prompts.for_side(Side::Document, None, dir)?;
        Ok(BiEncoder {
            vs,
            bert,
            spec,
            tokenizer,
            import,
            query_prompt,
            document_prompt,
        })
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Choose the encoder's kernels (see [`Kernels`]; both on by default).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.bert.set_kernels(kernels);
    }

    /// Embedding width.
    pub fn dim(&self) -> i64 {
        self.spec.pooling.dim(self.spec.config.hidden_size)
    }

    /// Differentiable forward: `[batch, dim]` fp32 embeddings, L2-normalised when the
    /// model has a Normalize module. Dropout is active when `train`.
    pub fn forward_t(&self, batch: &Batch, train: bool) -> Tensor {
        let states = self.bert.token_states(batch, train);
        let pooled = self
            .spec
            .pooling
            .forward_states(states, &batch.attention_mask);
        if self.spec.normalize {
            l2_normalize(&pooled)
        } else {
            pooled
        }
    }

    /// Use the model's prompts named `query` and `document` (each, when given, instead of
    /// the one sentence-transformers would pick for that side): `dir` is the model's, for
    /// errors.
    pub fn use_prompts(
        &mut self,
        query: Option<&str>,
        document: Option<&str>,
        dir: &Path,
    ) -> Result<()> {
        self.query_prompt = self.spec.prompts.for_side(Side::Query, query, dir)?;
        self.document_prompt = self.spec.prompts.for_side(Side::Document, document, dir)?;
        Ok(())
    }

    /// The prompt in front of `side`'s texts.
    pub fn prompt(&self, side: Side) -> &str {
        match side {
            Side::Query => &self.query_prompt,
            Side::Document => &self.document_prompt,
        }
    }

    /// Tokenize `texts` of `side`, each behind that side's prompt.
    pub fn tokenize<S: AsRef<str> + Sync>(&self, side: Side, texts: &[S]) -> Result<Vec<Encoded>> {
        tokenize_behind(&self.tokenizer, self.prompt(side), texts)
    }

    /// Embed a stream of text chunks behind `prompt`, one chunk at a time: the next chunk
    /// is read and tokenized on a thread while the device encodes the current one (a
    /// queue of one chunk), each in length-sorted batches of at most `batch_size`. A chunk
    /// comes with a tag (its first row, its ids) that `sink` gets back with the chunk's
    /// `[rows, dim]` fp32 embeddings in input order, chunk after chunk: on the device
    /// when it is a GPU and the chunk has at most `READBACK_ROWS` rows (a copy into a
    /// device matrix stays there), on the host otherwise. At most two
    /// chunks' tokens are held at once, so memory does not grow with the number of texts.
    /// A chunk that fails to read stops the stream with its error. Returns the number of
    /// tokens encoded.
    pub fn encode_stream<C, S, T>(
        &self,
        prompt: &str,
        chunks: C,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
        sink: &mut dyn FnMut(T, Tensor) -> Result<()>,
    ) -> Result<usize>
    where
        C: Iterator<Item = Result<(Vec<S>, T)>> + Send,
        S: AsRef<str> + Sync,
        T: Send,
    {
        let tokenizer = &self.tokenizer;
        let mut tokens_seen = 0;
        crate::model::batching::prepare_ahead(
            self.device(),
            chunks,
            |chunk| {
                let (texts, tag) = chunk?;
                Ok((tokenize_behind(tokenizer, prompt, &texts)?, tag))
            },
            |(tokens, tag)| {
                tokens_seen += tokens.iter().map(Encoded::len).sum::<usize>();
                let embeddings = self.encode_kept(&tokens, batch_size, progress)?;
                sink(tag, embeddings)
            },
        )?;
        Ok(tokens_seen)
    }

    /// Embed `texts` of `side` (behind its prompt) chunk by chunk
    /// ([`BiEncoder::encode_stream`]) into one `[n, dim]` fp32 tensor on the model's
    /// device: besides that matrix, memory holds a chunk at a time.
    pub fn encode_to_device(
        &self,
        side: Side,
        texts: &crate::data::beir::Texts,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Tensor> {
        let out = Tensor::f_zeros(
            [texts.len() as i64, self.dim()],
            (Kind::Float, self.device()),
        )
        .map_err(|e| Error::torch("allocating embeddings", e))?;
        self.encode_stream(
            self.prompt(side),
            texts.chunks(crate::model::batching::chunk_rows()),
            batch_size,
            progress,
            &mut |start, emb| {
                out.narrow(0, start as i64, emb.size()[0])
                    .f_copy_(&emb)
                    .map_err(|e| Error::torch("copying embeddings", e))
            },
        )?;
        Ok(out)
    }

    /// Embed `texts` of `side` (behind its prompt) under no-grad: length-sorted batches of
    /// at most `batch_size`, results in input order as a `[n, dim]` fp32 CPU tensor.
    /// `progress` is called with the number of texts finished after each batch.
    pub fn encode<S: AsRef<str> + Sync>(
        &self,
        side: Side,
        texts: &[S],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Tensor> {
        let encoded = self.tokenize(side, texts)?;
        self.encode_tokenized(&encoded, batch_size, progress)
    }

    /// As [`BiEncoder::encode`], for inputs already tokenized.
    pub fn encode_tokenized(
        &self,
        encoded: &[Encoded],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Tensor> {
        Ok(self
            .encode_kept(encoded, batch_size, progress)?
            .to_device(Device::Cpu))
    }

    /// [`BiEncoder::encode_tokenized`], the embeddings left where they were put in order
    /// ([`BiEncoder::gather`]).
    fn encode_kept(
        &self,
        encoded: &[Encoded],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Tensor> {
        let lengths: Vec<usize> = encoded.iter().map(Encoded::len).collect();
        let batches = crate::model::batching::length_sorted_batches(&lengths, batch_size, None);
        self.gather(encoded, &batches, progress)
    }

    /// The rows of `encoded` that `batches` (some of the length-sorted batches of
    /// [`crate::model::batching::length_sorted_batches`]) cover, in ascending index
    /// order, as a `[rows, dim]` fp32 CPU tensor: the values [`BiEncoder::encode_tokenized`]
    /// gives those rows, so a corpus can be encoded in parts by several processes.
    pub fn encode_batches(
        &self,
        encoded: &[Encoded],
        batches: &[Vec<usize>],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Tensor> {
        Ok(self
            .gather(encoded, batches, progress)?
            .to_device(Device::Cpu))
    }

    /// [`BiEncoder::encode_batches`], the embeddings left where they were put in order
    /// ([`crate::model::batching::gather_batches`]): on a GPU for at most its read-back
    /// rows, on the host otherwise.
    fn gather(
        &self,
        encoded: &[Encoded],
        batches: &[Vec<usize>],
        progress: &mut dyn FnMut(usize),
    ) -> Result<Tensor> {
        if batches.is_empty() {
            return Ok(Tensor::zeros([0, self.dim()], (Kind::Float, Device::Cpu)));
        }
        crate::model::batching::gather_batches(
            encoded,
            batches,
            self.tokenizer.pad_id(),
            self.device(),
            progress,
            |batch| self.forward_t(batch, false),
        )
    }
}

/// Tokenize `texts` with `tokenizer`, each behind `prompt`.
fn tokenize_behind<S: AsRef<str> + Sync>(
    tokenizer: &TextTokenizer,
    prompt: &str,
    texts: &[S],
) -> Result<Vec<Encoded>> {
    if prompt.is_empty() {
        return tokenizer.encode_texts(texts);
    }
    let prompted: Vec<String> = texts
        .iter()
        .map(|t| format!("{prompt}{}", t.as_ref()))
        .collect();
    tokenizer.encode_texts(&prompted)
}

#[cfg(test)]
#[path = "bi_encoder_tests.rs"]
mod tests;
