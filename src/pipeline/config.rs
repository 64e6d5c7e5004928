//! Pipeline files (TOML). Our own format, so it is strict: unknown keys, missing files and
//! impossible values are rejected before any work starts, naming the file, the key and
//! the line. Relative paths are resolved against the directory the command runs in.
use crate::device::{DeviceSpec, Precision};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineFile {
    pub run: RunSection,
    pub student: StudentSection,
    pub teacher: TeacherSection,
    #[serde(rename = "dataset")]
    pub datasets: Vec<DatasetSection>,
    #[serde(default)]
    pub mine: MineSection,
    #[serde(default)]
    pub score: ScoreSection,
    /// Stage `teacher` (only with `teacher.base`).
    pub teacher_train: Option<TrainSection>,
    /// Stage `train`.
    #[serde(default)]
    pub train: TrainSection,
    /// Stage `eval`.
    #[serde(default)]
    pub eval: EvalSection,
    /// The teacher gate and the run's health checks (thresholds; no stage hashes them).
    #[serde(default)]
    pub health: HealthSection,
}

/// `[health]`: the gate before `score` and the thresholds of the health checks
/// (`pipeline::health`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthSection {
    /// The teacher's rerank must beat the student alone on each dataset's dev slice by
    /// this much nDCG@10, or the run stops before `score`.
    #[serde(default = "default_min_teacher_gain")]
    pub min_teacher_gain: Spanned<f64>,
    /// Go on past a teacher that fails the gate (the report marks the run).
    #[serde(default)]
    pub allow_weak_teacher: bool,
    /// Warn when the teacher separates positives from negatives worse than this (AUC of
    /// positive vs negative teacher scores over the candidates).
    #[serde(default = "default_min_teacher_auc")]
    pub min_teacher_auc: Spanned<f64>,
    /// Warn when more than this share of the negatives is flagged as false negatives.
    #[serde(default = "default_max_flagged_share")]
    pub max_flagged_share: Spanned<f64>,
    /// Warn when more than this share of the training queries is dropped for want of a
    /// negative.
    #[serde(default = "default_max_dropped_share")]
    pub max_dropped_share: Spanned<f64>,
    /// Warn when a training loss falls by less than this share (mean of the last 10% of
    /// steps against the first 10%).
    #[serde(default = "default_min_loss_drop")]
    pub min_loss_drop: Spanned<f64>,
    /// Warn when the distilled student's nDCG@10 on the dev slice is not above the base
    /// student's by at least this much.
    #[serde(default = "default_min_dev_gain")]
    pub min_dev_gain: Spanned<f64>,
    /// Warn when the distilled student's nDCG@10 is not above the contrastive baseline's
    /// (`train.baseline`) by more than this.
    #[serde(default = "default_min_dev_gain")]
    pub min_gain_from_teacher: Spanned<f64>,
}

impl Default for HealthSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("defaults parse"))
    }
}

fn default_min_teacher_gain() -> Spanned<f64> {
    spanned(0.01)
}
fn default_min_teacher_auc() -> Spanned<f64> {
    spanned(0.75)
}
fn default_max_flagged_share() -> Spanned<f64> {
    spanned(0.3)
}
fn default_max_dropped_share() -> Spanned<f64> {
    spanned(0.1)
}
fn default_min_dev_gain() -> Spanned<f64> {
    spanned(0.0)
}
fn default_min_loss_drop() -> Spanned<f64> {
    spanned(0.1)
}

/// Stage `eval`: retrieval metrics of the base and distilled students, and the teacher
/// reranking their top documents.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSection {
    /// Documents retrieved per query (Recall@1000 needs 1000).
    #[serde(default = "default_eval_top_k")]
    pub top_k: Spanned<usize>,
    /// Documents of the student's ranking the teacher reranks.
    #[serde(default = "default_top_k")]
    pub rerank_k: Spanned<usize>,
}

impl Default for EvalSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("defaults parse"))
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalConfig {
    pub top_k: usize,
    pub rerank_k: usize,
}

/// `[train]` and `[teacher_train]`: optimisation settings, and the loss settings of
/// their stage (`margin_mse`, `kl`, `infonce`, ... for `train`; `loss` for `teacher_train`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    #[serde(default = "one")]
    pub epochs: Spanned<usize>,
    pub lr: Option<Spanned<f64>>,
    #[serde(default = "default_warmup")]
    pub warmup_ratio: Spanned<f64>,
    #[serde(default)]
    pub schedule: crate::train::schedule::Decay,
    pub batch_queries: Option<Spanned<usize>>,
    pub negatives: Option<Spanned<usize>>,
    /// [train] only: "random" or "topic" batches.
    pub batching: Option<Spanned<crate::train::data::Batching>>,
    #[serde(default = "one")]
    pub grad_accumulation: Spanned<usize>,
    #[serde(default = "default_clip")]
    pub max_grad_norm: Spanned<f64>,
    #[serde(default = "default_weight_decay")]
    pub weight_decay: Spanned<f64>,
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: Spanned<usize>,
    #[serde(default = "default_keep")]
    pub keep_checkpoints: Spanned<usize>,
    /// What is left of the resume checkpoints once the stage has succeeded.
    #[serde(default)]
    pub checkpoints_after_success: crate::train::checkpoint::AfterSuccess,
    // [train] only
    pub margin_mse: Option<Spanned<f64>>,
    pub kl: Option<Spanned<f64>>,
    pub infonce: Option<Spanned<f64>>,
    pub student_scale: Option<Spanned<f64>>,
    pub kl_student_temperature: Option<Spanned<f64>>,
    pub kl_teacher_temperature: Option<Spanned<f64>>,
    pub infonce_scale: Option<Spanned<f64>>,
    /// InfoNCE in both directions, averaged (sentence-transformers'
    /// `MultipleNegativesSymmetricRankingLoss`).
    pub infonce_symmetric: Option<Spanned<bool>>,
    pub exclude_false_negatives: Option<bool>,
    /// The distilled student's `max_seq_length` (saved with it, and used by eval for
    /// it); unset: the student's own.
    pub max_seq_length: Option<Spanned<usize>>,
    /// Keep the student's embedding layer (word, position and type embeddings and their
    /// LayerNorm) as it was: only the transformer layers learn.
    pub freeze_embeddings: Option<Spanned<bool>>,
    /// Pseudo-queries kept per document: those the teacher confirms and the student finds
    /// hardest (`train::data::pseudo_left_out`); unset keeps all.
    pub pseudo_keep: Option<Spanned<usize>>,
    /// In-training evaluation every this many steps (and after the last).
    pub eval_every: Option<Spanned<usize>>,
    /// The qrels split evaluated in training (default: each dataset's `eval_split`).
    pub eval_split: Option<Spanned<String>>,
    /// End with the weights of the best in-training evaluation.
    pub keep_best: Option<Spanned<bool>>,
    /// WiSE-FT: the exported student is this x the trained weights + (1 - this) x the
    /// base student's.
    pub wise_ft: Option<Spanned<f64>>,
    /// Optimizer steps at least (more epochs when `epochs` gives fewer).
    pub min_steps: Option<Spanned<usize>>,
    /// [train] only: "contrastive" trains a second student (stage `baseline`) with the
    /// same data, seed, negatives and steps and the teacher's loss terms at zero.
    pub baseline: Option<Spanned<Baseline>>,
    // [teacher_train] only
    pub loss: Option<Spanned<crate::pipeline::config::TeacherLoss>>,
    /// Labelled training queries per dataset held out as the teacher's dev slice (unset:
    /// 10%, at least 50 where the split allows, at most 500; 0: none, and no gate).
    pub dev_queries: Option<Spanned<usize>>,
    /// Cross-fitted scores: this many fold teachers, each trained without one fold of the
    /// training queries, score that fold (1: the one teacher scores everything).
    pub folds: Option<Spanned<usize>>,
    /// Whether the teacher trains on the pseudo-queries too (unset: yes). Without them,
    /// its scores on their candidate lists are judgements of queries it never saw.
    pub with_pseudo_queries: Option<Spanned<bool>>,
}

impl Default for TrainSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("defaults parse"))
    }
}

/// Loss of the `teacher` stage.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TeacherLoss {
    /// Cross-entropy of the positive against its group's negatives.
    #[default]
    Listwise,
    /// Binary cross-entropy on every pair.
    Bce,
    /// Both, summed: the listwise term ranks, the pointwise one anchors each score.
    #[serde(rename = "listwise+bce")]
    ListwiseBce,
}

/// The student trained beside the distilled one to measure what the teacher adds.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// InfoNCE alone: margin-MSE and KL at zero.
    Contrastive,
}

/// Loss settings of the `train` stage.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LossConfig {
    pub margin_mse: f64,
    pub kl: f64,
    pub infonce: f64,
    /// Student scores (dot products) are multiplied by this for margin-MSE and KL.
    pub student_scale: f64,
    pub kl_student_temperature: f64,
    pub kl_teacher_temperature: f64,
    /// InfoNCE logits are dot products times this (sentence-transformers' `scale`).
    pub infonce_scale: f64,
    /// Left out of the hash when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub infonce_symmetric: bool,
    pub exclude_false_negatives: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StudentTrainConfig {
    pub settings: crate::train::trainer::TrainSettings,
    pub loss: LossConfig,
    /// Unset keeps the run's hash as it was before the key existed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_seq_length: Option<usize>,
    /// Left out of the hash when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub freeze_embeddings: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pseudo_keep: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_every: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_split: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub keep_best: bool,
    /// Weight of the trained weights against the base's in the exported student
    /// (WiSE-FT); unset: the trained weights as they are.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wise_ft: Option<f64>,
    /// The baseline student (stage `baseline`); not part of the distilled student's hash.
    #[serde(skip)]
    pub baseline: Option<Baseline>,
}

impl StudentTrainConfig {
    /// The same recipe with the teacher's loss terms at zero: the contrastive baseline.
    pub fn contrastive(&self) -> StudentTrainConfig {
        let mut c = self.clone();
        c.loss.margin_mse = 0.0;
        c.loss.kl = 0.0;
        // Unused without those terms: left at their defaults so they do not rerun it.
        c.loss.student_scale = 1.0;
        c.loss.kl_student_temperature = 1.0;
        c.loss.kl_teacher_temperature = 1.0;
        c
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TeacherTrainConfig {
    pub settings: crate::train::trainer::TrainSettings,
    pub loss: TeacherLoss,
    /// Fold teachers for cross-fitted scores (`crate::data::dev::fold_of`); 1: none.
    #[serde(skip_serializing_if = "is_one")]
    pub folds: usize,
    #[serde(skip_serializing_if = "is_true")]
    pub with_pseudo_queries: bool,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunSection {
    pub name: Spanned<String>,
    /// Run directory is `<output_root>/<name>`.
    #[serde(default = "default_output_root")]
    pub output_root: PathBuf,
    #[serde(default = "default_seed")]
    pub seed: u64,
    #[serde(default = "default_auto")]
    pub device: Spanned<String>,
    #[serde(default = "default_auto")]
    pub precision: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSection {
    pub path: Spanned<PathBuf>,
    pub max_seq_length: Option<Spanned<usize>>,
    #[serde(default = "default_encode_batch")]
    pub batch_size: Spanned<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSection {
    /// A trained cross-encoder directory ...
    pub path: Option<Spanned<PathBuf>>,
    /// ... or an encoder checkpoint from which the `teacher` stage trains one.
    pub base: Option<Spanned<PathBuf>>,
    pub max_length: Option<Spanned<usize>>,
    #[serde(default = "default_score_batch")]
    pub batch_size: Spanned<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSection {
    pub name: Spanned<String>,
    pub path: Spanned<PathBuf>,
    #[serde(default = "default_train_split")]
    pub train_split: Spanned<String>,
    #[serde(default = "default_eval_split")]
    pub eval_split: Spanned<String>,
    /// Duplicate ids, empty texts and qrels naming unknown ids are errors (true) or
    /// skipped with a warning and counts (false).
    #[serde(default = "default_true")]
    pub strict: bool,
    /// Pseudo-queries cut from each corpus document and added to the training split (see
    /// `data::pseudo`); 0 (the default) adds none.
    #[serde(default = "default_zero")]
    pub pseudo_queries: Spanned<usize>,
    /// Where each pseudo-query's window sits in its sentence: "random", "informative" or
    /// "question".
    pub pseudo_windows: Option<Spanned<crate::data::pseudo::Windows>>,
    /// Which documents get pseudo-queries: "all" or "uncovered" (those no training query
    /// judges relevant).
    pub pseudo_scope: Option<Spanned<crate::data::pseudo::Scope>>,
    /// Windows cut from each sentence at most (1 to 4; default 1), each in the widest
    /// stretch of words the earlier ones leave.
    pub pseudo_per_sentence: Option<Spanned<usize>>,
    /// "train" (the default) or "watch": evaluated only, never mined, scored or trained
    /// on (needs a corpus, queries and the eval split's qrels).
    pub role: Option<Spanned<Role>>,
}

/// What a dataset is for.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Train,
    /// Evaluation only: a domain the night watches for forgetting.
    Watch,
}

/// Stage `mine`: candidates for every training query from the student's ranking.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MineSection {
    /// Documents retrieved per query (exact inner product), at most 1000.
    #[serde(default = "default_top_k")]
    pub top_k: Spanned<usize>,
    /// Ranks (0-based) before this one are skipped.
    #[serde(default = "default_zero")]
    pub range_min: Spanned<usize>,
    /// Ranks from this one on are not used (defaults to `top_k`).
    pub range_max: Option<Spanned<usize>>,
    /// Negatives kept per query.
    #[serde(default = "default_negatives")]
    pub num_negatives: Spanned<usize>,
    /// `top` (the best-ranked in range) or `random` (seeded sample of the range).
    #[serde(default)]
    pub sampling: Sampling,
    /// Leave labelled positives out of the negatives.
    #[serde(default = "default_true")]
    pub exclude_positives: bool,
    /// Queries per committed shard (and per retrieval chunk).
    #[serde(default = "default_query_chunk")]
    pub query_chunk: Spanned<usize>,
    /// Corpus rows per scoring block: memory is query_chunk x corpus_chunk scores.
    #[serde(default = "default_corpus_chunk")]
    pub corpus_chunk: Spanned<usize>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Sampling {
    #[default]
    Top,
    Random,
}

/// Stage `score`: teacher scores of every candidate pair.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreSection {
    /// Pairs per committed shard.
    #[serde(default = "default_shard_size")]
    pub shard_size: Spanned<usize>,
    /// Flag a candidate as a likely false negative when its teacher score is at least
    /// (lowest positive score - absolute_margin).
    pub absolute_margin: Option<Spanned<f64>>,
    /// ... or at least (lowest positive score x (1 - relative_margin)).
    pub relative_margin: Option<Spanned<f64>>,
}

impl Default for MineSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("defaults parse"))
    }
}

impl Default for ScoreSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("defaults parse"))
    }
}

fn one() -> Spanned<usize> {
    spanned(1)
}
fn default_warmup() -> Spanned<f64> {
    spanned(0.1)
}
fn default_clip() -> Spanned<f64> {
    spanned(1.0)
}
fn default_weight_decay() -> Spanned<f64> {
    spanned(0.01)
}
fn default_checkpoint_every() -> Spanned<usize> {
    spanned(500)
}
fn default_keep() -> Spanned<usize> {
    spanned(2)
}

fn default_output_root() -> PathBuf {
    PathBuf::from("checkpoints")
}
fn default_seed() -> u64 {
    42
}
fn default_auto() -> Spanned<String> {
    Spanned::new(0..0, "auto".to_string())
}
fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn default_encode_batch() -> Spanned<usize> {
    spanned(128)
}
fn default_score_batch() -> Spanned<usize> {
    spanned(64)
}
fn default_train_split() -> Spanned<String> {
    spanned("train".into())
}
fn default_eval_split() -> Spanned<String> {
    spanned("test".into())
}
fn default_true() -> bool {
    true
}
fn default_zero() -> Spanned<usize> {
    spanned(0)
}
fn default_eval_top_k() -> Spanned<usize> {
    spanned(1000)
}
fn default_top_k() -> Spanned<usize> {
    spanned(100)
}
fn default_negatives() -> Spanned<usize> {
    spanned(15)
}
fn default_query_chunk() -> Spanned<usize> {
    spanned(1024)
}
fn default_corpus_chunk() -> Spanned<usize> {
    spanned(65536)
}
fn default_shard_size() -> Spanned<usize> {
    spanned(8192)
}

/// Values of the mine section that determine its output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct MineConfig {
    pub top_k: usize,
    pub range_min: usize,
    pub range_max: usize,
    pub num_negatives: usize,
    pub sampling: Sampling,
    pub exclude_positives: bool,
    pub query_chunk: usize,
    /// Does not change the output; kept out of the config hash.
    #[serde(skip)]
    pub corpus_chunk: usize,
}

/// Values of the score section that determine its output.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ScoreConfig {
    pub shard_size: usize,
    pub absolute_margin: Option<f64>,
    pub relative_margin: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelRef {
    pub path: PathBuf,
    /// Student: max_seq_length override; teacher: max_length override.
    pub max_length: Option<usize>,
    #[serde(skip)]
    pub batch_size: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DatasetRef {
    pub name: String,
    pub path: PathBuf,
    pub train_split: String,
    pub eval_split: String,
    pub strict: bool,
    /// Pseudo-queries per corpus document added to the training split (0: none).
    pub pseudo_queries: usize,
    #[serde(skip_serializing_if = "crate::data::pseudo::Windows::is_default")]
    pub pseudo_windows: crate::data::pseudo::Windows,
    #[serde(skip_serializing_if = "crate::data::pseudo::Scope::is_default")]
    pub pseudo_scope: crate::data::pseudo::Scope,
    /// Windows per sentence at most (the mine stage hashes it when it is not 1, as it
    /// hashes the other pseudo-query settings when they are not their defaults).
    pub pseudo_per_sentence: usize,
    /// Evaluated only (`role = "watch"`): never mined, scored or trained on.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub watch: bool,
}

impl DatasetRef {
    /// The dataset with the qrels of `splits`, and its pseudo-queries (drawn from
    /// `seed`, in the training split's qrels when that split is loaded).
    pub fn load(
        &self,
        splits: &[&str],
        seed: u64,
    ) -> crate::error::Result<crate::data::beir::Dataset> {
        // The uncovered scope reads the training qrels even where `splits` leaves them
        // out, so that every stage sees the same pseudo-queries.
        let borrowed = self.pseudo_queries > 0
            && !self.pseudo_scope.is_default()
            && !splits.contains(&self.train_split.as_str());
        let mut all = splits.to_vec();
        if borrowed {
            all.push(&self.train_split);
        }
        let mut ds = crate::data::beir::Dataset::load(&self.path, &all, self.strict)?;
        if self.pseudo_queries > 0 {
            crate::data::pseudo::add_to(
                &mut ds,
                &self.train_split,
                self.pseudo_queries,
                self.pseudo_per_sentence,
                self.pseudo_windows,
                self.pseudo_scope,
                seed,
            )?;
        }
        if borrowed {
            ds.qrels.remove(&self.train_split);
        }
        Ok(ds)
    }
}

/// Settings resolved once from the file (and command-line overrides) and validated.
#[derive(Debug, Clone)]
pub struct Pipeline {
    pub file: PathBuf,
    pub name: String,
    pub run_dir: PathBuf,
    /// Shared cache (corpus embeddings), `<output_root>/cache`.
    pub cache_dir: PathBuf,
    pub seed: u64,
    pub device: DeviceSpec,
    pub precision: Precision,
    pub student: ModelRef,
    pub teacher: ModelRef,
    pub datasets: Vec<DatasetRef>,
    pub mine: MineConfig,
    pub score: ScoreConfig,
    /// True when the `teacher` stage trains the teacher from `teacher.path` (a base
    /// encoder); false when `teacher.path` is a trained cross-encoder.
    pub teacher_from_base: bool,
    pub teacher_train: Option<TeacherTrainConfig>,
    pub train: StudentTrainConfig,
    pub eval: EvalConfig,
    /// The teacher's dev slice (`teacher_train.dev_queries`), with a trained or a given
    /// teacher.
    pub dev_queries: crate::data::dev::DevQueries,
    pub health: crate::pipeline::health::HealthConfig,
}

impl Pipeline {
    /// The datasets that are mined, scored and trained on (not the watch datasets).
    pub fn trained(&self) -> impl Iterator<Item = &DatasetRef> {
        self.datasets.iter().filter(|d| !d.watch)
    }
}

/// 1-based line of a byte offset.
fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

struct Checker<'a> {
    path: &'a Path,
    src: &'a str,
}

impl Checker<'_> {
    /// A setting of how pseudo-queries are made (its default when unset), refused when
    /// the dataset makes none (`pseudo_queries` 0).
    fn pseudo_setting<T: Copy + Default>(
        &self,
        v: &Option<Spanned<T>>,
        pseudo_queries: usize,
        key: &str,
    ) -> Result<T> {
        match v {
            Some(v) if pseudo_queries == 0 => Err(self.err(
                v.span(),
                key,
                "shapes pseudo-queries, but pseudo_queries is 0",
            )),
            Some(v) => Ok(*v.get_ref()),
            None => Ok(T::default()),
        }
    }

    fn err(&self, span: Range<usize>, key: &str, message: impl std::fmt::Display) -> Error {
        let line = if span.is_empty() && span.start == 0 {
            0
        } else {
            line_of(self.src, span.start)
        };
        Error::Input {
            path: self.path.to_path_buf(),
            line,
            message: format!("`{key}`: {message}"),
        }
    }

    fn positive(&self, v: &Spanned<usize>, key: &str) -> Result<usize> {
        if *v.get_ref() == 0 {
            return Err(self.err(v.span(), key, "must be at least 1"));
        }
        Ok(*v.get_ref())
    }

    fn existing(&self, v: &Spanned<PathBuf>, key: &str, what: &str) -> Result<PathBuf> {
        let p = v.get_ref();
        if !p.exists() {
            return Err(self.err(
                v.span(),
                key,
                format!("{what} `{}` does not exist", p.display()),
            ));
        }
        Ok(p.clone())
    }

    fn file_in(&self, span: Range<usize>, key: &str, file: PathBuf) -> Result<()> {
        if !file.is_file() {
            return Err(self.err(span, key, format!("`{}` is missing", file.display())));
        }
        Ok(())
    }
}

/// Where an optional key was set (`None`: unset).
/// "must be between lo and hi", or "at least lo" where there is no upper bound (f64::MAX
/// would print as 309 digits).
fn range_message(lo: f64, hi: f64) -> String {
    match hi >= f64::MAX {
        true => format!("must be a number at least {lo}"),
        false => format!("must be between {lo} and {hi}"),
    }
}

fn span<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
    v.as_ref().map(|v| v.span())
}

fn valid_run_name(name: &str) -> bool {
    !(name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') || name == "cache")
}

impl Pipeline {
    /// Read, parse and validate a pipeline file.
    pub fn load(path: &Path) -> Result<Self> {
        let src = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &src)
    }

    /// The same pipeline under another run name (run directory `<output_root>/<name>`),
    /// e.g. one per night.
    pub fn with_name(mut self, name: &str) -> Result<Self> {
        if !valid_run_name(name) {
            return Err(Error::Setting {
                key: "--name".into(),
                message: format!("`{name}` must be a plain, non-empty folder name"),
            });
        }
        let root = self
            .run_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        self.run_dir = root.join(name);
        self.name = name.to_string();
        Ok(self)
    }

    pub fn parse(path: &Path, src: &str) -> Result<Self> {
        let file: PipelineFile = toml::from_str(src).map_err(|e| {
            let line = e.span().map(|s| line_of(src, s.start)).unwrap_or(0);
            Error::Input {
                path: path.to_path_buf(),
                line,
                message: e.message().to_string(),
            }
        })?;
        let c = Checker { path, src };
        let run = &file.run;
        let name = run.name.get_ref().clone();
        if !valid_run_name(&name) {
            return Err(c.err(
                run.name.span(),
                "run.name",
                "must be a plain, non-empty folder name",
            ));
        }
        let device: DeviceSpec = run
            .device
            .get_ref()
            .parse()
            .map_err(|e: Error| c.err(run.device.span(), "run.device", e))?;
        let precision: Precision = run
            .precision
            .get_ref()
            .parse()
            .map_err(|e: Error| c.err(run.precision.span(), "run.precision", e))?;

        let s = &file.student;
        let student_path = c.existing(&s.path, "student.path", "student model directory")?;
        c.file_in(
            s.path.span(),
            "student.path",
            student_path.join("config.json"),
        )?;
        let student = ModelRef {
            path: student_path,
            max_length: s
                .max_seq_length
                .as_ref()
                .map(|v| c.positive(v, "student.max_seq_length"))
                .transpose()?,
            batch_size: c.positive(&s.batch_size, "student.batch_size")?,
        };
        let t = &file.teacher;
        let (teacher_spanned, teacher_from_base) = match (&t.path, &t.base) {
            (Some(p), None) => (p, false),
            (None, Some(b)) => (b, true),
            _ => {
                let span = t
                    .path
                    .as_ref()
                    .or(t.base.as_ref())
                    .map(|s| s.span())
                    .unwrap_or(0..0);
                return Err(c.err(span, "teacher", "give exactly one of `path` (a trained cross-encoder) and `base` (an encoder the teacher stage fine-tunes)"));
            }
        };
        let key = if teacher_from_base {
            "teacher.base"
        } else {
            "teacher.path"
        };
        let teacher_path = c.existing(teacher_spanned, key, "teacher model directory")?;
        c.file_in(
            teacher_spanned.span(),
            key,
            teacher_path.join("config.json"),
        )?;
        let teacher = ModelRef {
            path: teacher_path,
            max_length: t
                .max_length
                .as_ref()
                .map(|v| c.positive(v, "teacher.max_length"))
                .transpose()?,
            batch_size: c.positive(&t.batch_size, "teacher.batch_size")?,
        };
        let dev_queries = match file
            .teacher_train
            .as_ref()
            .and_then(|t| t.dev_queries.as_ref())
        {
            None => crate::data::dev::DevQueries::Auto,
            Some(v) => crate::data::dev::DevQueries::Count(*v.get_ref()),
        };
        let teacher_train = match (&file.teacher_train, teacher_from_base) {
            (Some(section), false) if !section.only_dev_queries() => {
                return Err(c.err(
                    teacher_spanned.span(),
                    "teacher_train",
                    "is only used with `teacher.base` (with `teacher.path`, it may hold `dev_queries` alone)",
                ))
            }
            (Some(_), false) => None,
            (section, true) => {
                let section = section.clone().unwrap_or_default();
                Some(TeacherTrainConfig {
                    // The recipe chosen on SciFact's dev slice (RESULTS.md): a fresh head
                    // needs a larger rate and more steps than a few hundred queries give.
                    settings: c.train_settings(
                        &section,
                        "teacher_train",
                        run.seed,
                        (1e-4, 16, 15),
                        Some(1500),
                    )?,
                    loss: section
                        .loss
                        .as_ref()
                        .map(|l| *l.get_ref())
                        .unwrap_or_default(),
                    folds: match &section.folds {
                        None => 1,
                        Some(v) if (1..=10).contains(v.get_ref()) => *v.get_ref(),
                        Some(v) => {
                            return Err(c.err(
                                v.span(),
                                "teacher_train.folds",
                                "must be between 1 (no fold teachers) and 10",
                            ))
                        }
                    },
                    with_pseudo_queries: section
                        .with_pseudo_queries
                        .as_ref()
                        .is_none_or(|v| *v.get_ref()),
                })
            }
            (None, false) => None,
        };
        if let Some(section) = &file.teacher_train {
            c.reject_student_keys(section)?;
        }
        let train = c.student_train(&file.train, run.seed)?;
        let ev = &file.eval;
        let eval = EvalConfig {
            top_k: c.positive(&ev.top_k, "eval.top_k")?,
            rerank_k: c.positive(&ev.rerank_k, "eval.rerank_k")?,
        };
        if eval.rerank_k > eval.top_k {
            return Err(c.err(
                ev.rerank_k.span(),
                "eval.rerank_k",
                format!("must be at most eval.top_k ({})", eval.top_k),
            ));
        }

        if file.datasets.is_empty() {
            return Err(c.err(0..0, "dataset", "at least one [[dataset]] is required"));
        }
        let mut datasets = Vec::new();
        for d in &file.datasets {
            let dname = d.name.get_ref().clone();
            if dname.is_empty() || datasets.iter().any(|x: &DatasetRef| x.name == dname) {
                return Err(c.err(
                    d.name.span(),
                    "dataset.name",
                    format!("`{dname}` is empty or used twice"),
                ));
            }
            let dir = c.existing(&d.path, "dataset.path", "dataset directory")?;
            c.file_in(
                d.path.span(),
                "dataset.path",
                crate::data::beir::corpus_path(&dir),
            )?;
            c.file_in(
                d.path.span(),
                "dataset.path",
                crate::data::beir::queries_path(&dir),
            )?;
            let watch = d.role.as_ref().is_some_and(|r| *r.get_ref() == Role::Watch);
            if watch {
                let pseudo = d
                    .pseudo_windows
                    .as_ref()
                    .map(|v| v.span())
                    .or(span(&d.pseudo_scope))
                    .or(span(&d.pseudo_per_sentence))
                    .or((*d.pseudo_queries.get_ref() > 0).then(|| d.pseudo_queries.span()));
                if let Some(span) = pseudo {
                    return Err(c.err(
                        span,
                        "dataset.pseudo_queries",
                        "a watch dataset is never trained on: it takes no pseudo-queries",
                    ));
                }
            }
            for (split, key) in [
                (&d.train_split, "dataset.train_split"),
                (&d.eval_split, "dataset.eval_split"),
            ] {
                if watch && key == "dataset.train_split" {
                    continue;
                }
                let f = crate::data::beir::qrels_path(&dir, split.get_ref());
                c.file_in(split.span(), key, f)?;
            }
            let watch = d.role.as_ref().is_some_and(|r| *r.get_ref() == Role::Watch);
            datasets.push(DatasetRef {
                watch,
                name: dname,
                path: dir,
                train_split: d.train_split.get_ref().clone(),
                eval_split: d.eval_split.get_ref().clone(),
                strict: d.strict,
                pseudo_queries: {
                    let n = *d.pseudo_queries.get_ref();
                    if n > 100 {
                        return Err(c.err(
                            d.pseudo_queries.span(),
                            "dataset.pseudo_queries",
                            "must be at most 100",
                        ));
                    }
                    n
                },
                pseudo_windows: c.pseudo_setting(
                    &d.pseudo_windows,
                    *d.pseudo_queries.get_ref(),
                    "dataset.pseudo_windows",
                )?,
                pseudo_scope: c.pseudo_setting(
                    &d.pseudo_scope,
                    *d.pseudo_queries.get_ref(),
                    "dataset.pseudo_scope",
                )?,
                pseudo_per_sentence: match &d.pseudo_per_sentence {
                    None => 1,
                    Some(v) => {
                        let key = "dataset.pseudo_per_sentence";
                        let n = c.pseudo_setting(
                            &d.pseudo_per_sentence,
                            *d.pseudo_queries.get_ref(),
                            key,
                        )?;
                        if !(1..=4).contains(&n) {
                            return Err(c.err(v.span(), key, "must be between 1 and 4"));
                        }
                        n
                    }
                },
            });
        }
        if datasets.iter().all(|d| d.watch) {
            return Err(c.err(
                0..0,
                "dataset.role",
                "every [[dataset]] is a watch dataset: at least one must be trained on",
            ));
        }
        let t = &file.train;
        if t.eval_every.is_none() {
            let needs = [
                (span(&t.eval_split), "train.eval_split"),
                (
                    t.keep_best
                        .as_ref()
                        .filter(|v| *v.get_ref())
                        .map(|v| v.span()),
                    "train.keep_best",
                ),
            ];
            if let Some((span, key)) = needs.into_iter().find_map(|(s, k)| s.map(|s| (s, k))) {
                return Err(c.err(span, key, "needs train.eval_every"));
            }
        }
        if let Some(split) = &t.eval_split {
            for d in datasets.iter().filter(|d| !d.watch) {
                let f = crate::data::beir::qrels_path(&d.path, split.get_ref());
                c.file_in(split.span(), "train.eval_split", f)?;
            }
        }
        if let Some(k) = &file.train.pseudo_keep {
            if datasets.iter().all(|d| d.pseudo_queries == 0) {
                return Err(c.err(
                    k.span(),
                    "train.pseudo_keep",
                    "picks among pseudo-queries, but no [[dataset]] sets pseudo_queries",
                ));
            }
        }

        let m = &file.mine;
        let top_k = c.positive(&m.top_k, "mine.top_k")?;
        if top_k > 1000 {
            return Err(c.err(m.top_k.span(), "mine.top_k", "must be at most 1000"));
        }
        let range_min = *m.range_min.get_ref();
        let range_max = match &m.range_max {
            Some(v) => {
                if *v.get_ref() > top_k || *v.get_ref() <= range_min {
                    return Err(c.err(
                        v.span(),
                        "mine.range_max",
                        format!("must be greater than range_min ({range_min}) and at most top_k ({top_k})"),
                    ));
                }
                *v.get_ref()
            }
            None => top_k,
        };
        if range_min >= range_max {
            return Err(c.err(
                m.range_min.span(),
                "mine.range_min",
                format!("must be below range_max ({range_max})"),
            ));
        }
        let mine = MineConfig {
            top_k,
            range_min,
            range_max,
            num_negatives: c.positive(&m.num_negatives, "mine.num_negatives")?,
            sampling: m.sampling,
            exclude_positives: m.exclude_positives,
            query_chunk: c.positive(&m.query_chunk, "mine.query_chunk")?,
            corpus_chunk: c.positive(&m.corpus_chunk, "mine.corpus_chunk")?,
        };

        let sc = &file.score;
        let margin = |v: &Option<Spanned<f64>>, key: &str, max: f64| -> Result<Option<f64>> {
            match v {
                None => Ok(None),
                Some(x) if *x.get_ref() >= 0.0 && *x.get_ref() <= max => Ok(Some(*x.get_ref())),
                Some(x) => Err(c.err(x.span(), key, format!("must be between 0 and {max}"))),
            }
        };
        let score = ScoreConfig {
            shard_size: c.positive(&sc.shard_size, "score.shard_size")?,
            absolute_margin: margin(&sc.absolute_margin, "score.absolute_margin", f64::MAX)?,
            relative_margin: margin(&sc.relative_margin, "score.relative_margin", 1.0)?,
        };

        let health = c.health(&file.health)?;
        let run_dir = run.output_root.join(&name);
        Ok(Pipeline {
            file: path.to_path_buf(),
            name,
            run_dir,
            cache_dir: run.output_root.join("cache"),
            seed: run.seed,
            device,
            precision,
            student,
            teacher,
            datasets,
            mine,
            score,
            teacher_from_base,
            teacher_train,
            train,
            eval,
            dev_queries,
            health,
        })
    }
}

impl TrainSection {
    /// Whether `dev_queries` is the only key set (what `[teacher_train]` may hold with a
    /// given teacher).
    fn only_dev_queries(&self) -> bool {
        let mut bare = self.clone();
        bare.dev_queries = None;
        let default = TrainSection::default();
        format!("{bare:?}") == format!("{default:?}")
    }
}

impl Checker<'_> {
    fn health(&self, h: &HealthSection) -> Result<crate::pipeline::health::HealthConfig> {
        let share = |v: &Spanned<f64>, key: &str| self.unit(v, &format!("health.{key}"), 0.0, 1.0);
        let gain = |v: &Spanned<f64>, key: &str| self.unit(v, &format!("health.{key}"), -1.0, 1.0);
        Ok(crate::pipeline::health::HealthConfig {
            min_teacher_gain: gain(&h.min_teacher_gain, "min_teacher_gain")?,
            allow_weak_teacher: h.allow_weak_teacher,
            min_teacher_auc: share(&h.min_teacher_auc, "min_teacher_auc")?,
            max_flagged_share: share(&h.max_flagged_share, "max_flagged_share")?,
            max_dropped_share: share(&h.max_dropped_share, "max_dropped_share")?,
            min_loss_drop: gain(&h.min_loss_drop, "min_loss_drop")?,
            min_dev_gain: gain(&h.min_dev_gain, "min_dev_gain")?,
            min_gain_from_teacher: gain(&h.min_gain_from_teacher, "min_gain_from_teacher")?,
        })
    }

    fn unit(&self, v: &Spanned<f64>, key: &str, lo: f64, hi: f64) -> Result<f64> {
        let x = *v.get_ref();
        if !(x >= lo && x <= hi) {
            return Err(self.err(v.span(), key, range_message(lo, hi)));
        }
        Ok(x)
    }

    fn opt_f64(
        &self,
        v: &Option<Spanned<f64>>,
        key: &str,
        default: f64,
        lo: f64,
        hi: f64,
    ) -> Result<f64> {
        v.as_ref()
            .map_or(Ok(default), |v| self.unit(v, key, lo, hi))
    }

    fn train_settings(
        &self,
        t: &TrainSection,
        section: &str,
        seed: u64,
        (lr, batch_queries, negatives): (f64, usize, usize),
        min_steps: Option<u64>,
    ) -> Result<crate::train::trainer::TrainSettings> {
        let k = |name: &str| format!("{section}.{name}");
        let pos = |v: &Option<Spanned<usize>>, name: &str, default: usize| {
            v.as_ref()
                .map_or(Ok(default), |v| self.positive(v, &k(name)))
        };
        Ok(crate::train::trainer::TrainSettings {
            epochs: self.positive(&t.epochs, &k("epochs"))?,
            lr: self.opt_f64(&t.lr, &k("lr"), lr, 1e-12, 1.0)?,
            warmup_ratio: self.unit(&t.warmup_ratio, &k("warmup_ratio"), 0.0, 1.0)?,
            schedule: t.schedule,
            batch_queries: pos(&t.batch_queries, "batch_queries", batch_queries)?,
            negatives: pos(&t.negatives, "negatives", negatives)?,
            batching: t
                .batching
                .as_ref()
                .map_or(Default::default(), |b| *b.get_ref()),
            grad_accumulation: self.positive(&t.grad_accumulation, &k("grad_accumulation"))?,
            max_grad_norm: self.unit(&t.max_grad_norm, &k("max_grad_norm"), 0.0, f64::MAX)?,
            weight_decay: self.unit(&t.weight_decay, &k("weight_decay"), 0.0, 1.0)?,
            checkpoint_every: self.positive(&t.checkpoint_every, &k("checkpoint_every"))? as u64,
            // 0 keeps only the newest while training (resuming needs one).
            keep_checkpoints: *t.keep_checkpoints.get_ref(),
            after_success: t.checkpoints_after_success,
            seed,
            // 0 turns the default floor off.
            min_steps: t
                .min_steps
                .as_ref()
                .map(|v| *v.get_ref() as u64)
                .or(min_steps)
                .filter(|&n| n > 0),
        })
    }

    fn reject_student_keys(&self, t: &TrainSection) -> Result<()> {
        let student_only = [
            (span(&t.margin_mse), "margin_mse"),
            (span(&t.kl), "kl"),
            (span(&t.infonce), "infonce"),
            (span(&t.student_scale), "student_scale"),
            (span(&t.kl_student_temperature), "kl_student_temperature"),
            (span(&t.kl_teacher_temperature), "kl_teacher_temperature"),
            (span(&t.infonce_scale), "infonce_scale"),
            (span(&t.max_seq_length), "max_seq_length"),
            (span(&t.batching), "batching"),
            (span(&t.infonce_symmetric), "infonce_symmetric"),
            (span(&t.freeze_embeddings), "freeze_embeddings"),
            (span(&t.pseudo_keep), "pseudo_keep"),
            (span(&t.eval_every), "eval_every"),
            (span(&t.eval_split), "eval_split"),
            (span(&t.keep_best), "keep_best"),
            (span(&t.wise_ft), "wise_ft"),
            (span(&t.baseline), "baseline"),
        ];
        if let Some((span, key)) = student_only
            .into_iter()
            .find_map(|(s, k)| s.map(|s| (s, k)))
        {
            return Err(self.err(
                span,
                &format!("teacher_train.{key}"),
                "is a [train] setting",
            ));
        }
        Ok(())
    }

    fn student_train(&self, t: &TrainSection, seed: u64) -> Result<StudentTrainConfig> {
        if let Some(l) = &t.loss {
            return Err(self.err(
                l.span(),
                "train.loss",
                "is a [teacher_train] setting; [train] combines margin_mse, kl and infonce",
            ));
        }
        if let Some(v) = &t.dev_queries {
            return Err(self.err(
                v.span(),
                "train.dev_queries",
                "is a [teacher_train] setting (one dev slice serves the gate and both trainings)",
            ));
        }
        if let Some(span) = span(&t.folds).or(span(&t.with_pseudo_queries)) {
            let key = match t.folds.is_some() {
                true => "train.folds",
                false => "train.with_pseudo_queries",
            };
            return Err(self.err(span, key, "is a [teacher_train] setting"));
        }
        let f = |v: &Option<Spanned<f64>>, key: &str, default: f64, lo: f64, hi: f64| {
            self.opt_f64(v, &format!("train.{key}"), default, lo, hi)
        };
        let loss = LossConfig {
            margin_mse: f(&t.margin_mse, "margin_mse", 1.0, 0.0, f64::MAX)?,
            kl: f(&t.kl, "kl", 0.0, 0.0, f64::MAX)?,
            infonce: f(&t.infonce, "infonce", 1.0, 0.0, f64::MAX)?,
            student_scale: f(&t.student_scale, "student_scale", 1.0, 1e-6, 1e6)?,
            kl_student_temperature: f(
                &t.kl_student_temperature,
                "kl_student_temperature",
                1.0,
                1e-6,
                1e6,
            )?,
            kl_teacher_temperature: f(
                &t.kl_teacher_temperature,
                "kl_teacher_temperature",
                1.0,
                1e-6,
                1e6,
            )?,
            infonce_scale: f(&t.infonce_scale, "infonce_scale", 20.0, 1e-6, 1e6)?,
            infonce_symmetric: t.infonce_symmetric.as_ref().is_some_and(|v| *v.get_ref()),
            exclude_false_negatives: t.exclude_false_negatives.unwrap_or(true),
        };
        if let Some(b) = &t.baseline {
            if loss.infonce <= 0.0 {
                return Err(self.err(
                    b.span(),
                    "train.baseline",
                    "the contrastive baseline trains on InfoNCE alone, but train.infonce is 0",
                ));
            }
        }
        if loss.margin_mse + loss.kl + loss.infonce <= 0.0 {
            return Err(self.err(
                0..0,
                "train",
                "at least one of margin_mse, kl, infonce must have a positive weight",
            ));
        }
        Ok(StudentTrainConfig {
            settings: self.train_settings(t, "train", seed, (2e-5, 32, 7), None)?,
            loss,
            max_seq_length: t
                .max_seq_length
                .as_ref()
                .map(|v| self.positive(v, "train.max_seq_length"))
                .transpose()?,
            freeze_embeddings: t.freeze_embeddings.as_ref().is_some_and(|v| *v.get_ref()),
            pseudo_keep: t
                .pseudo_keep
                .as_ref()
                .map(|v| self.positive(v, "train.pseudo_keep"))
                .transpose()?,
            eval_every: t
                .eval_every
                .as_ref()
                .map(|v| self.positive(v, "train.eval_every"))
                .transpose()?,
            eval_split: t.eval_split.as_ref().map(|v| v.get_ref().clone()),
            keep_best: t.keep_best.as_ref().is_some_and(|v| *v.get_ref()),
            wise_ft: t
                .wise_ft
                .as_ref()
                .map(|v| match *v.get_ref() {
                    x if x > 0.0 && x <= 1.0 => Ok(x),
                    _ => Err(self.err(v.span(), "train.wise_ft", "must be above 0 and at most 1")),
                })
                .transpose()?,
            baseline: t.baseline.as_ref().map(|b| *b.get_ref()),
        })
    }
}
