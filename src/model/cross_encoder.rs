//! The teacher: a BERT cross-encoder (`BertForSequenceClassification`, one logit) that
//! reads a (query, passage) pair and scores it.
use crate::error::{read_json, Error, Result};
use crate::model::batching::{map_sorted_batches, Batch};
use crate::model::bert::{BertModel, Kernels};
use crate::model::bi_encoder::BiEncoderSpec;
use crate::model::hf_config::{BertConfig, TokenizerConfig};
use crate::model::tokenizer::{Encoded, TextTokenizer};
use crate::model::weights::{self, ImportReport, Layout};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// The activation applied to logits by `score`, as the checkpoint declares it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    Identity,
    Sigmoid,
    Tanh,
}

impl Activation {
    const IDENTITY: &'static str = "torch.nn.modules.linear.Identity";
    const SIGMOID: &'static str = "torch.nn.modules.activation.Sigmoid";
    const TANH: &'static str = "torch.nn.modules.activation.Tanh";

    /// sentence-transformers' resolution order: `activation_fn` in
    /// `config_sentence_transformers.json` (6.x), `sentence_transformers.activation_fn` in
    /// `config.json` (4.x-5.x), `sbert_ce_default_activation_function` (older), else
    /// Sigmoid for one label.
    pub fn from_config(dir: &Path, config: &BertConfig) -> Result<Self> {
        let st_path = dir.join("config_sentence_transformers.json");
        let st: Option<serde_json::Value> = if st_path.exists() {
            Some(read_json(&st_path)?)
        } else {
            None
        };
        let from_st = st
            .as_ref()
            .and_then(|v| v.get("activation_fn"))
            .and_then(|v| v.as_str());
        let from_config = config
            .sentence_transformers
            .as_ref()
            .and_then(|v| v.get("activation_fn"))
            .and_then(|v| v.as_str());
        let declared = from_st
            .or(from_config)
            .or(config.sbert_ce_default_activation_function.as_deref());
        let path = if from_st.is_some() {
            st_path
        } else {
            dir.join("config.json")
        };
        match declared {
            None if config.labels() == 1 => Ok(Activation::Sigmoid),
            None => Ok(Activation::Identity),
            Some(name) => Self::parse(name).ok_or_else(|| Error::Unsupported {
                path,
                message: format!("cross-encoder activation `{name}`"),
            }),
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name.rsplit('.').next()? {
            "Identity" => Some(Activation::Identity),
            "Sigmoid" => Some(Activation::Sigmoid),
            "Tanh" => Some(Activation::Tanh),
            _ => None,
        }
    }

    /// The class path sentence-transformers writes for this activation.
    pub fn class_path(self) -> &'static str {
        match self {
            Activation::Identity => Self::IDENTITY,
            Activation::Sigmoid => Self::SIGMOID,
            Activation::Tanh => Self::TANH,
        }
    }

    pub fn apply(self, logits: &Tensor) -> Tensor {
        match self {
            Activation::Identity => logits.shallow_clone(),
            Activation::Sigmoid => logits.sigmoid(),
            Activation::Tanh => logits.tanh(),
        }
    }
}

pub struct CrossEncoder {
    pub vs: nn::VarStore,
    pub bert: BertModel,
    classifier: nn::Linear,
    pub config: BertConfig,
    pub activation: Activation,
    pub tokenizer: TextTokenizer,
    pub import: ImportReport,
    /// Directory the tokenizer files come from (copied on export).
    pub source_dir: PathBuf,
    classifier_dropout: f64,
}

impl CrossEncoder {
    fn build(
        dir: &Path,
        config: BertConfig,
        max_length: Option<usize>,
        device: Device,
    ) -> Result<(nn::VarStore, BertModel, nn::Linear, TextTokenizer)> {
        let tok = TokenizerConfig::load_or_default(dir)?;
        let max_pos = config.max_position_embeddings as usize;
        let max_length = max_length
            .or(tok.max_length())
            .unwrap_or(max_pos)
            .min(max_pos);
        let tokenizer = TextTokenizer::load(dir, max_length)?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let bert = BertModel::new(&root / "bert", &config);
        // Hugging Face's initialisation for a fresh head: N(0, initializer_range), bias 0.
        let init = nn::LinearConfig {
            ws_init: nn::Init::Randn {
                mean: 0.0,
                stdev: config.initializer_range,
            },
            bs_init: Some(nn::Init::Const(0.0)),
            bias: true,
        };
        let classifier = nn::linear(
            &root / "classifier",
            config.hidden_size,
            config.labels(),
            init,
        );
        Ok((vs, bert, classifier, tokenizer))
    }

    /// Load a cross-encoder checkpoint (e.g. shaped like
    /// `cross-encoder/ms-marco-MiniLM-L-6-v2`). `max_length` overrides the tokenizer's.
    pub fn load(dir: &Path, max_length: Option<usize>, device: Device, kind: Kind) -> Result<Self> {
        let config = BertConfig::load(&dir.join("config.json"))?;
        let activation = Activation::from_config(dir, &config)?;
        let (mut vs, bert, classifier, tokenizer) =
            Self::build(dir, config.clone(), max_length, device)?;
        let file = weights::weights_file(dir)?;
        let import = weights::import(&mut vs, &file, Layout::SequenceClassification, &[])?;
        Ok(Self::finish(
            vs, bert, classifier, config, activation, tokenizer, import, dir, kind,
        ))
    }

    /// A new cross-encoder initialised from an encoder checkpoint (a sentence-transformers
    /// or plain BERT directory) with a fresh one-logit classifier and raw-logit scores.
    /// The report lists the freshly initialised tensors (the classifier, and the pooler
    /// if the encoder checkpoint had none).
    pub fn from_encoder(
        dir: &Path,
        max_length: Option<usize>,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let spec = BiEncoderSpec::read(dir)?;
        let mut config = spec.config.clone();
        config.architectures = Some(vec!["BertForSequenceClassification".into()]);
        config.num_labels = Some(1);
        config.id2label = None;
        let max_length = max_length.or(Some(spec.max_seq_length));
        let (mut vs, bert, classifier, tokenizer) =
            Self::build(&spec.transformer_dir, config.clone(), max_length, device)?;
        let file = weights::weights_file(&spec.transformer_dir)?;
        let import = weights::import(
            &mut vs,
            &file,
            Layout::SequenceClassification,
            &["classifier.", "bert.pooler."],
        )?;
        Ok(Self::finish(
            vs,
            bert,
            classifier,
            config,
            Activation::Identity,
            tokenizer,
            import,
            &spec.transformer_dir,
            kind,
        ))
    }

    #[allow(clippy::too_many_arguments)]
    fn finish(
        mut vs: nn::VarStore,
        mut bert: BertModel,
        classifier: nn::Linear,
        config: BertConfig,
        activation: Activation,
        tokenizer: TextTokenizer,
        import: ImportReport,
        dir: &Path,
        kind: Kind,
    ) -> Self {
        if kind == Kind::BFloat16 {
            vs.bfloat16();
            bert.set_compute_kind(Kind::BFloat16);
        }
        let classifier_dropout = config
            .classifier_dropout
            .unwrap_or(config.hidden_dropout_prob);
        CrossEncoder {
            vs,
            bert,
            classifier,
            config,
            activation,
            tokenizer,
            import,
            source_dir: dir.to_path_buf(),
            classifier_dropout,
        }
    }

    pub fn device(&self) -> Device {
        self.vs.device()
    }

    /// Choose the encoder's kernels (see [`Kernels`]; both on by default).
    pub fn set_kernels(&mut self, kernels: Kernels) {
        self.bert.set_kernels(kernels);
    }

    /// Differentiable forward: raw logits `[batch, num_labels]` in fp32.
    pub fn forward_t(&self, batch: &Batch, train: bool) -> Tensor {
        let first = self.bert.token_states(batch, train).first();
        // The head runs in fp32 whatever the encoder's precision: teacher margins are what
        // the student learns from, and bf16 would quantise them to steps of 1/32 near 5.
        let pooled = self
            .bert
            .pool(&first.to_kind(Kind::Float))
            .dropout(self.classifier_dropout, train);
        crate::model::bert::linear(&self.classifier, &pooled).to_kind(Kind::Float)
    }

    /// Raw first logit of each (query, passage) pair, in input order, under no-grad with
    /// length-sorted batches.
    pub fn logits<Q, P>(
        &self,
        pairs: &[(Q, P)],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>>
    where
        Q: AsRef<str> + Sync,
        P: AsRef<str> + Sync,
    {
        let encoded = self.tokenizer.encode_pairs(pairs)?;
        self.logits_tokenized(&encoded, batch_size, progress)
    }

    /// As [`CrossEncoder::logits`], for pairs already tokenized.
    pub fn logits_tokenized(
        &self,
        encoded: &[Encoded],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>> {
        let logits = map_sorted_batches(
            encoded,
            batch_size,
            self.tokenizer.pad_id(),
            self.device(),
            progress,
            |batch| self.forward_t(batch, false).select(1, 0),
        )?;
        Vec::<f32>::try_from(&logits).map_err(|e| Error::torch("reading cross-encoder logits", e))
    }

    /// Scores with the checkpoint's activation applied (what sentence-transformers'
    /// `CrossEncoder.predict` returns).
    pub fn score<Q, P>(
        &self,
        pairs: &[(Q, P)],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>>
    where
        Q: AsRef<str> + Sync,
        P: AsRef<str> + Sync,
    {
        let chunks = pairs
            .chunks(crate::model::batching::chunk_rows())
            .map(|c| Ok(c.iter().map(|(q, p)| (q.as_ref(), p.as_ref())).collect()));
        self.score_stream(chunks, batch_size, progress)
    }

    /// As [`CrossEncoder::score`], for pairs that come a chunk at a time (from any
    /// iterator: each chunk is made on the thread that tokenizes it), in order.
    pub fn score_stream<C, Q, P>(
        &self,
        chunks: C,
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>>
    where
        C: Iterator<Item = Result<Vec<(Q, P)>>> + Send,
        Q: AsRef<str> + Sync,
        P: AsRef<str> + Sync,
    {
        // Chunk by chunk, the next one tokenized on a thread while the device scores the
        // current one: memory holds two chunks' tokens, however many pairs there are.
        let tokenizer = &self.tokenizer;
        let mut scores = Vec::new();
        crate::model::batching::prepare_ahead(
            self.device(),
            chunks,
            |chunk| tokenizer.encode_pairs(&chunk?),
            |encoded| {
                scores.extend(self.score_tokenized(&encoded, batch_size, progress)?);
                Ok(())
            },
        )?;
        Ok(scores)
    }

    /// As [`CrossEncoder::score`], for pairs already tokenized.
    pub fn score_tokenized(
        &self,
        encoded: &[Encoded],
        batch_size: usize,
        progress: &mut dyn FnMut(usize),
    ) -> Result<Vec<f32>> {
        let logits = self.logits_tokenized(encoded, batch_size, progress)?;
        let t = self.activation.apply(&Tensor::from_slice(&logits));
        Vec::<f32>::try_from(&t).map_err(|e| Error::torch("applying activation", e))
    }
}
