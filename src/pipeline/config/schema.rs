//! The pipeline file as written: one struct per section, strict (`deny_unknown_fields`),
//! with serde defaults; `resolve` turns it into the settings the stages read.
use super::defaults as D;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
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
    #[serde(default = "default_allow_weak_teacher")]
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
    #[serde(default = "default_min_gain_from_teacher")]
    pub min_gain_from_teacher: Spanned<f64>,
}

impl Default for HealthSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("defaults parse"))
    }
}

fn default_min_teacher_gain() -> Spanned<f64> {
    spanned(D::HEALTH_MIN_TEACHER_GAIN)
}
fn default_min_teacher_auc() -> Spanned<f64> {
    spanned(D::HEALTH_MIN_TEACHER_AUC)
}
fn default_max_flagged_share() -> Spanned<f64> {
    spanned(D::HEALTH_MAX_FLAGGED_SHARE)
}
fn default_max_dropped_share() -> Spanned<f64> {
    spanned(D::HEALTH_MAX_DROPPED_SHARE)
}
fn default_min_dev_gain() -> Spanned<f64> {
    spanned(D::HEALTH_MIN_DEV_GAIN)
}
fn default_min_gain_from_teacher() -> Spanned<f64> {
    spanned(D::HEALTH_MIN_GAIN_FROM_TEACHER)
}
fn default_allow_weak_teacher() -> bool {
    D::HEALTH_ALLOW_WEAK_TEACHER
}
fn default_min_loss_drop() -> Spanned<f64> {
    spanned(D::HEALTH_MIN_LOSS_DROP)
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
    #[serde(default = "default_rerank_k")]
    pub rerank_k: Spanned<usize>,
}

impl Default for EvalSection {
    fn default() -> Self {
        toml::from_str("").unwrap_or_else(|_| unreachable!("defaults parse"))
    }
}

/// `[train]` and `[teacher_train]`: optimisation settings, and the loss settings of
/// their stage (`margin_mse`, `kl`, `infonce`, ... for `train`; `loss` for `teacher_train`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    #[serde(default = "default_epochs")]
    pub epochs: Spanned<usize>,
    pub lr: Option<Spanned<f64>>,
    #[serde(default = "default_warmup")]
    pub warmup_ratio: Spanned<f64>,
    #[serde(default)]
    pub schedule: crate::training::schedule::Decay,
    pub batch_queries: Option<Spanned<usize>>,
    pub negatives: Option<Spanned<usize>>,
    /// [train] only: "random" or "topic" batches.
    pub batching: Option<Spanned<crate::training::groups::Batching>>,
    #[serde(default = "default_grad_accumulation")]
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
    pub checkpoints_after_success: crate::training::checkpoint::AfterSuccess,
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

/// The student trained beside the distilled one to measure what the teacher adds.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Baseline {
    /// InfoNCE alone: margin-MSE and KL at zero.
    Contrastive,
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
    #[serde(default = "default_device")]
    pub device: Spanned<String>,
    #[serde(default = "default_precision")]
    pub precision: Spanned<String>,
    /// Worker processes, one per GPU of this host (`distill run --gpus` overrides it).
    pub gpus: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSection {
    pub path: Spanned<PathBuf>,
    pub max_seq_length: Option<Spanned<usize>>,
    #[serde(default = "default_encode_batch")]
    pub batch_size: Spanned<usize>,
    /// The student's prompt for queries, by name (`config_sentence_transformers.json`).
    pub query_prompt_name: Option<Spanned<String>>,
    /// The student's prompt for documents, by name.
    pub document_prompt_name: Option<Spanned<String>>,
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
    #[serde(default = "default_strict")]
    pub strict: bool,
    /// Pseudo-queries cut from each corpus document and added to the training split (see
    /// `data::pseudo`); 0 (the default) adds none.
    #[serde(default = "default_pseudo_queries")]
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
    #[serde(default = "default_mine_top_k")]
    pub top_k: Spanned<usize>,
    /// Ranks (0-based) before this one are skipped.
    #[serde(default = "default_range_min")]
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
    #[serde(default = "default_exclude_positives")]
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

fn default_epochs() -> Spanned<usize> {
    spanned(D::TRAIN_EPOCHS)
}
fn default_grad_accumulation() -> Spanned<usize> {
    spanned(D::TRAIN_GRAD_ACCUMULATION)
}
fn default_warmup() -> Spanned<f64> {
    spanned(D::TRAIN_WARMUP_RATIO)
}
fn default_clip() -> Spanned<f64> {
    spanned(D::TRAIN_MAX_GRAD_NORM)
}
fn default_weight_decay() -> Spanned<f64> {
    spanned(D::TRAIN_WEIGHT_DECAY)
}
fn default_checkpoint_every() -> Spanned<usize> {
    spanned(D::TRAIN_CHECKPOINT_EVERY)
}
fn default_keep() -> Spanned<usize> {
    spanned(D::TRAIN_KEEP_CHECKPOINTS)
}

fn default_output_root() -> PathBuf {
    PathBuf::from(D::RUN_OUTPUT_ROOT)
}
fn default_seed() -> u64 {
    D::RUN_SEED
}
fn default_device() -> Spanned<String> {
    spanned(D::RUN_DEVICE.to_string())
}
fn default_precision() -> Spanned<String> {
    spanned(D::RUN_PRECISION.to_string())
}
fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn default_encode_batch() -> Spanned<usize> {
    spanned(D::STUDENT_BATCH_SIZE)
}
fn default_score_batch() -> Spanned<usize> {
    spanned(D::TEACHER_BATCH_SIZE)
}
fn default_train_split() -> Spanned<String> {
    spanned(D::DATASET_TRAIN_SPLIT.into())
}
fn default_eval_split() -> Spanned<String> {
    spanned(D::DATASET_EVAL_SPLIT.into())
}
fn default_strict() -> bool {
    D::DATASET_STRICT
}
fn default_exclude_positives() -> bool {
    D::MINE_EXCLUDE_POSITIVES
}
fn default_pseudo_queries() -> Spanned<usize> {
    spanned(D::DATASET_PSEUDO_QUERIES)
}
fn default_range_min() -> Spanned<usize> {
    spanned(D::MINE_RANGE_MIN)
}
fn default_eval_top_k() -> Spanned<usize> {
    spanned(D::EVAL_TOP_K)
}
fn default_mine_top_k() -> Spanned<usize> {
    spanned(D::MINE_TOP_K)
}
fn default_rerank_k() -> Spanned<usize> {
    spanned(D::EVAL_RERANK_K)
}
fn default_negatives() -> Spanned<usize> {
    spanned(D::MINE_NUM_NEGATIVES)
}
fn default_query_chunk() -> Spanned<usize> {
    spanned(D::MINE_QUERY_CHUNK)
}
fn default_corpus_chunk() -> Spanned<usize> {
    spanned(D::MINE_CORPUS_CHUNK)
}
fn default_shard_size() -> Spanned<usize> {
    spanned(D::SCORE_SHARD_SIZE)
}
