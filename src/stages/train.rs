//! Stage `train`: distil the teacher into the student. Groups of 1 positive + n negatives
//! per query with the teacher's scores (likely false negatives left out when asked);
//! margin-MSE, KL and InfoNCE combined with their weights. Student scores are dot
//! products of the student's embeddings, which for a model with a Normalize module
//! (all-MiniLM-L6-v2) are cosine similarities. Exports a sentence-transformers directory
//! and the loss curve.
use super::paths::train::{IN_TRAINING_EVAL, MODEL_DIR};
use super::paths::StageId;
use super::shared::load_datasets;
use super::shared::upstream_output;
use super::{Outcome, Stage, StageEnv};
use crate::data::beir::Dataset;
use crate::data::pairs::PairTable;
use crate::error::Result;
use crate::model::export::export_bi_encoder;
use crate::model::BiEncoder;
use crate::pipeline::config::{PromptNames, StudentTrainConfig};
use crate::pipeline::fingerprint;
use crate::pipeline::manifest::Manifest;
use crate::pipeline::Pipeline;
use crate::training::groups::TrainingSet;
use crate::training::objectives::StudentObjective;
use crate::training::trainer;
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use tch::{Kind, Tensor};

/// Stage `train` (the distilled student) or, with `baseline`, stage `baseline`: the same
/// recipe with the teacher's loss terms at zero (`train.baseline = "contrastive"`), so
/// that every night shows what the teacher adds.
pub struct Train {
    pub baseline: bool,
}

impl Train {
    pub const DISTILLED: Train = Train { baseline: false };
    pub const BASELINE: Train = Train { baseline: true };

    fn settings(&self, p: &Pipeline) -> StudentTrainConfig {
        match self.baseline {
            true => p.train.contrastive(),
            false => p.train.clone(),
        }
    }
}

/// Per dataset, the split evaluated in training: `train.eval_split`, else the dataset's
/// `eval_split`; none when in-training evaluation is off.
fn eval_splits(p: &Pipeline) -> Vec<Option<&str>> {
    p.trained()
        .map(|d| {
            p.train
                .eval_every
                .map(|_| p.train.eval_split.as_deref().unwrap_or(&d.eval_split))
        })
        .collect()
}

/// Evaluation of `model` during training on each dataset's split of [`eval_splits`], with
/// the eval stage's retrieval and nDCG@10 (the corpus encoded chunk by chunk each time). Selecting the best
/// weights on the split that eval reports is warned about.
fn in_training_eval<'a>(
    env: &mut StageEnv,
    p: &'a Pipeline,
    model: &'a BiEncoder,
    every: u64,
    keep_best: bool,
) -> Result<trainer::Monitor<'a>> {
    let mut splits = Vec::new();
    for (d, split) in p.trained().zip(eval_splits(p)) {
        let split = split.unwrap_or(&d.eval_split);
        if keep_best && split == d.eval_split {
            env.warn(format!(
                "train.keep_best selects on `{split}`, the split eval reports for {}: \
                 its numbers are then optimistic (name a dev split in train.eval_split)",
                d.name
            ));
        }
        let ds = Dataset::load(&d.path, &[split], d.strict)?;
        let judged = ds.qrels[split].clone();
        splits.push((d, ds, judged));
    }
    Ok(trainer::Monitor {
        every,
        keep_best,
        evaluate: Box::new(move || {
            splits
                .iter()
                .map(|(d, ds, judged)| {
                    let v = super::shared::student_ndcg10(p, model, ds, judged)?;
                    Ok((d.name.clone(), v))
                })
                .collect()
        }),
    })
}

/// The variables that learn: all of them, or (`freeze_embeddings`) all but the embedding
/// layer's, which stop requiring gradients. Freezing a model without an embedding layer
/// (no variable named `*.embeddings.*`) is an error rather than a silent no-op.
pub fn trainable(
    vars: HashMap<String, Tensor>,
    freeze_embeddings: bool,
    model: &Path,
) -> Result<BTreeMap<String, Tensor>> {
    let total = vars.len();
    let out: BTreeMap<String, Tensor> = vars
        .into_iter()
        .filter_map(|(name, t)| {
            let frozen = freeze_embeddings && name.split('.').any(|part| part == "embeddings");
            if frozen {
                let _ = t.set_requires_grad(false);
            }
            (!frozen).then_some((name, t))
        })
        .collect();
    if freeze_embeddings && out.len() == total {
        return Err(crate::error::Error::model(
            model,
            "train.freeze_embeddings: the student has no variable named *.embeddings.*",
        ));
    }
    Ok(out)
}

/// A copy of every variable (on its device).
fn snapshot(vars: &HashMap<String, Tensor>) -> HashMap<String, Tensor> {
    let _guard = tch::no_grad_guard();
    vars.iter().map(|(n, t)| (n.clone(), t.copy())).collect()
}

/// WiSE-FT (Wortsman et al. 2022): each variable becomes `alpha` x itself + (1 - alpha) x
/// the same variable of `base`, in place.
fn interpolate(vars: &HashMap<String, Tensor>, base: &HashMap<String, Tensor>, alpha: f64) {
    let _guard = tch::no_grad_guard();
    for (name, t) in vars {
        // t + (1 - alpha) (base - t): exact where the two are equal (frozen variables).
        let _ = t.shallow_clone().lerp_(&base[name], 1.0 - alpha);
    }
}

/// What changes a trained student: the fields of its configuration hash.
#[derive(serde::Serialize)]
struct TrainHash<'a> {
    train: StudentTrainConfig,
    student_max_seq_length: Option<usize>,
    #[serde(skip_serializing_if = "PromptNames::is_default")]
    student_prompts: &'a PromptNames,
    precision: &'static str,
    /// Stage `baseline` only: which baseline.
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline: Option<Option<crate::pipeline::config::Baseline>>,
    /// What the in-training evaluation reads besides `[train]` (left out when it is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    in_training_eval: Option<InTrainingEvalHash<'a>>,
}

#[derive(serde::Serialize)]
struct InTrainingEvalHash<'a> {
    splits: Vec<Option<&'a str>>,
    eval_top_k: usize,
    batch_size: usize,
}

impl Stage for Train {
    fn name(&self) -> &'static str {
        match self.baseline {
            true => StageId::Baseline.name(),
            false => StageId::Train.name(),
        }
    }

    fn enabled(&self, p: &Pipeline) -> bool {
        !self.baseline || p.train.baseline.is_some()
    }

    fn upstream(&self, _: &Pipeline) -> Vec<&'static str> {
        vec![StageId::Score.name()]
    }

    fn config(&self, p: &Pipeline, kind: Kind) -> serde_json::Value {
        super::shared::hashed(&TrainHash {
            train: self.settings(p),
            student_max_seq_length: p.student.max_length,
            student_prompts: &p.student_prompts,
            precision: super::shared::kind_name(kind),
            baseline: self.baseline.then_some(p.train.baseline),
            in_training_eval: p.train.eval_every.map(|_| InTrainingEvalHash {
                splits: eval_splits(p),
                eval_top_k: p.eval.top_k,
                batch_size: p.student.batch_size,
            }),
        })
    }

    fn inputs(
        &self,
        p: &Pipeline,
        upstream: &BTreeMap<String, Manifest>,
    ) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        out.insert("student".into(), fingerprint::directory(&p.student.path)?);
        out.insert(
            "teacher_scores".into(),
            upstream_output(
                p,
                upstream,
                StageId::Score.name(),
                super::paths::score::OUTPUT,
            )?,
        );
        for (d, split) in p.trained().zip(eval_splits(p)) {
            let mut splits = vec![d.train_split.as_str()];
            splits.extend(split);
            super::shared::dataset_inputs(d, &splits, &mut out)?;
        }
        Ok(out)
    }

    fn progress(&self, _: &Pipeline, partial: &Path) -> Option<(usize, usize)> {
        super::training_progress(partial)
    }

    fn run(&self, env: &mut StageEnv) -> Result<Outcome> {
        let p = env.pipeline;
        let cfg = &self.settings(p);
        // fp32 master weights (bf16 activations on CUDA, set below). Fresh tensors (a
        // pooler missing from the checkpoint) are drawn from the run seed, the same for
        // the baseline as for the distilled student.
        tch::manual_seed(crate::training::trainer::init_seed(p.seed, "train"));
        let mut model = p.load_student(
            &p.student.path,
            env.device,
            Kind::Float,
            cfg.max_seq_length.or(p.student.max_length),
        )?;
        // Mixed precision where the run's precision is bf16 (on CUDA by default, on the CPU
        // when asked for): bf16 activations over fp32 master weights.
        if env.kind == Kind::BFloat16 {
            model.bert.set_compute_kind(Kind::BFloat16);
        }
        let scores = p
            .run_dir
            .join(StageId::Score.name())
            .join(super::paths::score::OUTPUT);
        let table = PairTable::read(&scores)?;
        let mut set = TrainingSet::from_table(
            &table,
            &load_datasets(p, true)?,
            cfg.loss.exclude_false_negatives,
        )?;
        if let Some(keep) = cfg.pseudo_keep {
            set = set.keep_pseudo(&table, &scores, keep)?;
        }
        let (_, total) = trainer::plan(&set, &cfg.settings);
        super::write_plan(&env.partial, total as usize)?;
        let task = StudentObjective::new(&model, &set, &cfg.loss)?;
        let vars = trainable(model.vs.variables(), cfg.freeze_embeddings, &p.student.path)?;
        // WiSE-FT's weight and the base's weights (copied before a resumed run restores a
        // checkpoint).
        let wise = cfg
            .wise_ft
            .map(|alpha| (alpha, snapshot(&model.vs.variables())));
        let checkpoints = env.partial.join("checkpoints");
        let world = super::world(env)?;
        let primary = world
            .as_ref()
            .is_none_or(crate::distributed::World::is_primary);
        let monitor = match cfg.eval_every.filter(|_| primary) {
            Some(every) => Some(in_training_eval(
                env,
                p,
                &model,
                every as u64,
                cfg.keep_best,
            )?),
            None => None,
        };
        let curve = trainer::train(
            env,
            &task,
            vars,
            &set,
            &cfg.settings,
            &checkpoints,
            monitor,
            world.as_ref(),
        )?;
        if let Some(w) = world.as_ref().filter(|w| !w.is_primary()) {
            return Ok(Outcome::Follower { rank: w.rank() });
        }
        if let Some((alpha, base)) = &wise {
            interpolate(&model.vs.variables(), base, *alpha);
        }
        export_bi_encoder(&model, &env.dir.join(MODEL_DIR))?;
        let mut outcome = super::finish_training(
            env,
            &curve,
            (&checkpoints, cfg.settings.after_success),
            MODEL_DIR,
            &set.stats,
        )?;
        if let Outcome::Complete { summary, .. } = &mut outcome {
            let s = &set.stats;
            let before = s.queries + s.dropped_without_negatives + s.pseudo_left_out;
            summary["dropped_share"] =
                json!(s.dropped_without_negatives as f64 / before.max(1) as f64);
        }
        if cfg.eval_every.is_some() {
            let best = curve.best_eval();
            let splits: BTreeMap<&str, Option<&str>> = p
                .trained()
                .map(|d| d.name.as_str())
                .zip(eval_splits(p))
                .collect();
            let record = json!({
                "splits": splits,
                "keep_best": cfg.keep_best,
                "best_step": best.map(|b| b.step),
                "points": curve.evals,
            });
            crate::data::atomic::write_json(&env.dir.join(IN_TRAINING_EVAL), &record)?;
            if let Outcome::Complete {
                outputs, summary, ..
            } = &mut outcome
            {
                outputs.push(IN_TRAINING_EVAL.into());
                summary["in_training_eval"] = json!({
                    "best_step": best.map(|b| b.step),
                    "best_ndcg@10": best.map(|b| b.mean),
                    "last_ndcg@10": curve.evals.last().map(|e| e.mean),
                });
            }
        }
        Ok(outcome)
    }
}
