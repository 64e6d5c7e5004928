//! Pipeline files (TOML). Our own format, so it is strict: unknown keys, missing files and
//! impossible values are rejected before any work starts, naming the file, the key and
//! the line. Relative paths are resolved against the directory the command runs in.
use crate::device::{DeviceSpec, Precision};

use serde::Serialize;
use std::path::PathBuf;

mod checker;
pub mod defaults;
mod resolve;
mod schema;
pub use crate::training::objectives::{LossConfig, TeacherLoss};
pub use schema::*;

/// The student's prompts by name (unset: those sentence-transformers' `encode_query` and
/// `encode_document` would pick). Hashed by the stages that encode with the student only
/// when set.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PromptNames {
    pub query: Option<String>,
    pub document: Option<String>,
}

impl PromptNames {
    pub fn is_default(&self) -> bool {
        *self == PromptNames::default()
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct EvalConfig {
    pub top_k: usize,
    pub rerank_k: usize,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StudentTrainConfig {
    pub settings: crate::training::trainer::TrainSettings,
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
    pub settings: crate::training::trainer::TrainSettings,
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
    /// `run.gpus`: worker processes for `distill run` (1: the run's own process alone).
    pub gpus: usize,
    pub student: ModelRef,
    /// `student.query_prompt_name` and `student.document_prompt_name`.
    pub student_prompts: PromptNames,
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

impl Pipeline {
    /// A student (the base one, or one a stage exported) loaded with the pipeline's
    /// prompts: `max_length` overrides its own.
    pub fn load_student(
        &self,
        dir: &std::path::Path,
        device: tch::Device,
        kind: tch::Kind,
        max_length: Option<usize>,
    ) -> crate::error::Result<crate::model::BiEncoder> {
        let mut student = crate::model::BiEncoder::load(dir, device, kind, max_length)?;
        let names = &self.student_prompts;
        student.use_prompts(names.query.as_deref(), names.document.as_deref(), dir)?;
        Ok(student)
    }
}
