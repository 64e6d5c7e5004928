//! Where each stage's outputs live in its folder of a run, and the stage ids: the one
//! place a stage (or a command) names another stage's files, so that no stage imports
//! another.
use crate::pipeline::Pipeline;
use std::path::PathBuf;

/// The stages, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StageId {
    Mine,
    Teacher,
    Score,
    Train,
    Baseline,
    Eval,
    Report,
}

impl StageId {
    pub const ALL: [StageId; 7] = [
        StageId::Mine,
        StageId::Teacher,
        StageId::Score,
        StageId::Train,
        StageId::Baseline,
        StageId::Eval,
        StageId::Report,
    ];

    /// The stage's name: its folder in the run, its key in `--only` / `--from`.
    pub const fn name(self) -> &'static str {
        match self {
            StageId::Mine => "mine",
            StageId::Teacher => "teacher",
            StageId::Score => "score",
            StageId::Train => "train",
            StageId::Baseline => "baseline",
            StageId::Eval => "eval",
            StageId::Report => "report",
        }
    }

    /// The folder of this stage in `p`'s run.
    pub fn dir(self, p: &Pipeline) -> PathBuf {
        p.run_dir.join(self.name())
    }
}

/// Outputs of stage `mine` (relative to its folder).
pub mod mine {
    pub const OUTPUT: &str = "candidates.parquet";
}

/// Outputs of stage `teacher` (relative to its folder).
pub mod teacher {
    pub const MODEL_DIR: &str = "model";
    pub const WEIGHTS: &str = "model/model.safetensors";
    /// The dev-slice check: per dataset, the student alone and the teacher's rerank.
    pub const DEV_EVAL: &str = "dev_eval.json";

    /// The folder of fold `k`'s teacher (`teacher_train.folds`), beside `model`.
    pub fn fold_dir(k: usize) -> String {
        format!("fold-{k}")
    }
}

/// Outputs of stage `score` (relative to its folder).
pub mod score {
    pub const OUTPUT: &str = "teacher_scores.parquet";
}

/// Outputs of stage `train` (relative to its folder).
pub mod train {
    pub const MODEL_DIR: &str = "student";
    pub const WEIGHTS: &str = "student/model.safetensors";
    /// In-training evaluations (`train.eval_every`): nDCG@10 per dataset by step.
    pub const IN_TRAINING_EVAL: &str = "in_training_eval.json";
}

/// Outputs of stage `eval` (relative to its folder).
pub mod eval {
    pub const METRICS: &str = "metrics.json";
    pub const PER_QUERY: &str = "per_query.parquet";
}

/// Outputs of stage `report` (relative to its folder).
pub mod report {
    pub const HTML: &str = "report.html";
    pub const MARKDOWN: &str = "report.md";
    /// The run's health findings (`pipeline::health::Finding`), for `distill report`.
    pub const HEALTH: &str = "health.json";
}

/// The teacher that scores and reranks: the one the `teacher` stage trained, or the one
/// given as `teacher.path`.
pub fn teacher_dir(p: &Pipeline) -> PathBuf {
    if p.teacher_from_base {
        StageId::Teacher.dir(p).join(teacher::MODEL_DIR)
    } else {
        p.teacher.path.clone()
    }
}
