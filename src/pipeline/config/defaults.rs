//! Every key's default, one constant each. Parsing reads them (the serde defaults of
//! `schema`, the checker's fallbacks), `distill bench` builds its settings from them, and
//! a test checks `docs/pipeline-reference.md` and `pipelines/nightly.toml` against
//! [`table`]. Enumerations take their `#[default]` variant, which [`table`] renders.
use super::schema::{Role, Sampling};
use crate::data::pseudo::{Scope, Windows};
use crate::training::checkpoint::AfterSuccess;
use crate::training::groups::Batching;
use crate::training::objectives::TeacherLoss;
use crate::training::schedule::Decay;

pub const RUN_OUTPUT_ROOT: &str = "checkpoints";
pub const RUN_SEED: u64 = 42;
pub const RUN_DEVICE: &str = "auto";
pub const RUN_PRECISION: &str = "auto";
pub const STUDENT_BATCH_SIZE: usize = 128;
pub const TEACHER_BATCH_SIZE: usize = 64;
pub const DATASET_TRAIN_SPLIT: &str = "train";
pub const DATASET_EVAL_SPLIT: &str = "test";
pub const DATASET_STRICT: bool = true;
pub const DATASET_PSEUDO_QUERIES: usize = 0;
pub const DATASET_PSEUDO_PER_SENTENCE: usize = 1;
pub const MINE_TOP_K: usize = 100;
pub const MINE_RANGE_MIN: usize = 0;
pub const MINE_NUM_NEGATIVES: usize = 15;
pub const MINE_EXCLUDE_POSITIVES: bool = true;
pub const MINE_QUERY_CHUNK: usize = 1024;
pub const MINE_CORPUS_CHUNK: usize = 65536;
pub const SCORE_SHARD_SIZE: usize = 8192;
pub const TEACHER_TRAIN_FOLDS: usize = 1;
pub const TEACHER_TRAIN_WITH_PSEUDO_QUERIES: bool = true;
/// The teacher's recipe chosen on SciFact's dev slice (RESULTS.md): a fresh head needs a
/// larger rate and more steps than a few hundred queries give.
pub const TEACHER_TRAIN_LR: f64 = 1e-4;
pub const TEACHER_TRAIN_BATCH_QUERIES: usize = 16;
pub const TEACHER_TRAIN_NEGATIVES: usize = 15;
pub const TEACHER_TRAIN_MIN_STEPS: u64 = 1500;
pub const TRAIN_EPOCHS: usize = 1;
pub const TRAIN_LR: f64 = 2e-5;
pub const TRAIN_WARMUP_RATIO: f64 = 0.1;
pub const TRAIN_BATCH_QUERIES: usize = 32;
pub const TRAIN_NEGATIVES: usize = 7;
pub const TRAIN_GRAD_ACCUMULATION: usize = 1;
pub const TRAIN_MAX_GRAD_NORM: f64 = 1.0;
pub const TRAIN_WEIGHT_DECAY: f64 = 0.01;
pub const TRAIN_CHECKPOINT_EVERY: usize = 500;
pub const TRAIN_KEEP_CHECKPOINTS: usize = 2;
pub const TRAIN_MARGIN_MSE: f64 = 1.0;
pub const TRAIN_KL: f64 = 0.0;
pub const TRAIN_INFONCE: f64 = 1.0;
pub const TRAIN_STUDENT_SCALE: f64 = 1.0;
pub const TRAIN_KL_STUDENT_TEMPERATURE: f64 = 1.0;
pub const TRAIN_KL_TEACHER_TEMPERATURE: f64 = 1.0;
pub const TRAIN_INFONCE_SCALE: f64 = 20.0;
pub const TRAIN_INFONCE_SYMMETRIC: bool = false;
pub const TRAIN_EXCLUDE_FALSE_NEGATIVES: bool = true;
pub const TRAIN_FREEZE_EMBEDDINGS: bool = false;
pub const TRAIN_KEEP_BEST: bool = false;
pub const EVAL_TOP_K: usize = 1000;
pub const EVAL_RERANK_K: usize = 100;
pub const HEALTH_MIN_TEACHER_GAIN: f64 = 0.01;
pub const HEALTH_ALLOW_WEAK_TEACHER: bool = false;
pub const HEALTH_MIN_TEACHER_AUC: f64 = 0.75;
pub const HEALTH_MAX_FLAGGED_SHARE: f64 = 0.3;
pub const HEALTH_MAX_DROPPED_SHARE: f64 = 0.1;
pub const HEALTH_MIN_LOSS_DROP: f64 = 0.1;
pub const HEALTH_MIN_DEV_GAIN: f64 = 0.0;
pub const HEALTH_MIN_GAIN_FROM_TEACHER: f64 = 0.0;

/// An enumeration's default as a pipeline file writes it.
fn variant<T: Default + serde::Serialize>() -> String {
    match serde_json::to_value(T::default()) {
        Ok(serde_json::Value::String(s)) => s,
        _ => unreachable!("enumerations serialise as strings"),
    }
}

/// Every key that has one default, with that default as a pipeline file writes it
/// (`[[dataset]]` keys as `[[dataset]].key`).
pub fn table() -> Vec<(&'static str, String)> {
    let s = |v: &dyn std::fmt::Display| v.to_string();
    // Floats as a file writes them: `1e-4`, `20.0`.
    let f = |v: f64| match v != 0.0 && v.abs() < 1e-3 {
        true => format!("{v:e}"),
        false => format!("{v:?}"),
    };
    vec![
        ("run.output_root", s(&RUN_OUTPUT_ROOT)),
        ("run.seed", s(&RUN_SEED)),
        ("run.device", s(&RUN_DEVICE)),
        ("run.precision", s(&RUN_PRECISION)),
        ("student.batch_size", s(&STUDENT_BATCH_SIZE)),
        ("teacher.batch_size", s(&TEACHER_BATCH_SIZE)),
        ("[[dataset]].train_split", s(&DATASET_TRAIN_SPLIT)),
        ("[[dataset]].eval_split", s(&DATASET_EVAL_SPLIT)),
        ("[[dataset]].strict", s(&DATASET_STRICT)),
        ("[[dataset]].pseudo_queries", s(&DATASET_PSEUDO_QUERIES)),
        ("[[dataset]].pseudo_windows", variant::<Windows>()),
        ("[[dataset]].pseudo_scope", variant::<Scope>()),
        (
            "[[dataset]].pseudo_per_sentence",
            s(&DATASET_PSEUDO_PER_SENTENCE),
        ),
        ("[[dataset]].role", variant::<Role>()),
        ("mine.top_k", s(&MINE_TOP_K)),
        ("mine.range_min", s(&MINE_RANGE_MIN)),
        ("mine.num_negatives", s(&MINE_NUM_NEGATIVES)),
        ("mine.sampling", variant::<Sampling>()),
        ("mine.exclude_positives", s(&MINE_EXCLUDE_POSITIVES)),
        ("mine.query_chunk", s(&MINE_QUERY_CHUNK)),
        ("mine.corpus_chunk", s(&MINE_CORPUS_CHUNK)),
        ("score.shard_size", s(&SCORE_SHARD_SIZE)),
        ("teacher_train.loss", variant::<TeacherLoss>()),
        ("teacher_train.folds", s(&TEACHER_TRAIN_FOLDS)),
        (
            "teacher_train.with_pseudo_queries",
            s(&TEACHER_TRAIN_WITH_PSEUDO_QUERIES),
        ),
        ("teacher_train.lr", f(TEACHER_TRAIN_LR)),
        ("teacher_train.min_steps", s(&TEACHER_TRAIN_MIN_STEPS)),
        (
            "teacher_train.batch_queries",
            s(&TEACHER_TRAIN_BATCH_QUERIES),
        ),
        ("teacher_train.negatives", s(&TEACHER_TRAIN_NEGATIVES)),
        ("train.epochs", s(&TRAIN_EPOCHS)),
        ("train.lr", f(TRAIN_LR)),
        ("train.warmup_ratio", f(TRAIN_WARMUP_RATIO)),
        ("train.schedule", variant::<Decay>()),
        ("train.batch_queries", s(&TRAIN_BATCH_QUERIES)),
        ("train.negatives", s(&TRAIN_NEGATIVES)),
        ("train.batching", variant::<Batching>()),
        ("train.grad_accumulation", s(&TRAIN_GRAD_ACCUMULATION)),
        ("train.max_grad_norm", f(TRAIN_MAX_GRAD_NORM)),
        ("train.weight_decay", f(TRAIN_WEIGHT_DECAY)),
        ("train.checkpoint_every", s(&TRAIN_CHECKPOINT_EVERY)),
        ("train.keep_checkpoints", s(&TRAIN_KEEP_CHECKPOINTS)),
        ("train.checkpoints_after_success", variant::<AfterSuccess>()),
        ("train.margin_mse", f(TRAIN_MARGIN_MSE)),
        ("train.kl", f(TRAIN_KL)),
        ("train.infonce", f(TRAIN_INFONCE)),
        ("train.student_scale", f(TRAIN_STUDENT_SCALE)),
        (
            "train.kl_student_temperature",
            f(TRAIN_KL_STUDENT_TEMPERATURE),
        ),
        (
            "train.kl_teacher_temperature",
            f(TRAIN_KL_TEACHER_TEMPERATURE),
        ),
        ("train.infonce_scale", f(TRAIN_INFONCE_SCALE)),
        ("train.infonce_symmetric", s(&TRAIN_INFONCE_SYMMETRIC)),
        (
            "train.exclude_false_negatives",
            s(&TRAIN_EXCLUDE_FALSE_NEGATIVES),
        ),
        ("train.freeze_embeddings", s(&TRAIN_FREEZE_EMBEDDINGS)),
        ("train.keep_best", s(&TRAIN_KEEP_BEST)),
        ("eval.top_k", s(&EVAL_TOP_K)),
        ("eval.rerank_k", s(&EVAL_RERANK_K)),
        ("health.min_teacher_gain", f(HEALTH_MIN_TEACHER_GAIN)),
        ("health.allow_weak_teacher", s(&HEALTH_ALLOW_WEAK_TEACHER)),
        ("health.min_teacher_auc", f(HEALTH_MIN_TEACHER_AUC)),
        ("health.max_flagged_share", f(HEALTH_MAX_FLAGGED_SHARE)),
        ("health.max_dropped_share", f(HEALTH_MAX_DROPPED_SHARE)),
        ("health.min_loss_drop", f(HEALTH_MIN_LOSS_DROP)),
        ("health.min_dev_gain", f(HEALTH_MIN_DEV_GAIN)),
        (
            "health.min_gain_from_teacher",
            f(HEALTH_MIN_GAIN_FROM_TEACHER),
        ),
    ]
}

#[cfg(test)]
#[path = "defaults_tests.rs"]
mod tests;
