//! Stage `teacher`: when the pipeline names a base encoder instead of a trained
//! cross-encoder, fine-tune one: the encoder's weights with a fresh one-logit classifier,
//! trained on the training positives against the hard negatives from `mine`, with
//! listwise cross-entropy over (positive + n negatives) per query (or binary
//! cross-entropy). Exports a Hugging Face cross-encoder directory (raw logits).
use super::{Outcome, Stage, StageEnv};
use crate::data::beir::Dataset;
use crate::data::pairs::PairTable;
use crate::error::{Error, Result};
use crate::model::export::export_cross_encoder;
use crate::model::CrossEncoder;
use crate::pipeline::config::TeacherLoss;
use crate::pipeline::fingerprint;
use crate::pipeline::manifest::Manifest;
use crate::pipeline::Pipeline;
use crate::train::data::{Example, TrainingSet};
use crate::train::losses;
use crate::train::trainer::{self, Task};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Kind, Tensor};

pub const MODEL_DIR: &str = "model";
pub const WEIGHTS: &str = "model/model.safetensors";

pub struct Teacher;

/// Corpus and queries (and `splits` qrels) of every dataset, by name.
pub fn load_datasets(p: &Pipeline, with_train_qrels: bool) -> Result<BTreeMap<String, Dataset>> {
    p.datasets
        .iter()
        .map(|d| {
            let splits: Vec<&str> = if with_train_qrels {
                vec![&d.train_split]
            } else {
                vec![]
            };
            Ok((d.name.clone(), d.load(&splits, p.seed)?))
        })
        .collect()
}

struct TeacherTask<'a> {
    model: &'a CrossEncoder,
    set: &'a TrainingSet,
    loss: TeacherLoss,
}

impl Task for TeacherTask<'_> {
    fn loss(&self, examples: &[Example]) -> Result<(Tensor, Vec<(String, Tensor)>)> {
        let k = 1 + examples.first().map_or(0, |e| e.negatives.len()) as i64;
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for e in examples {
            let g = &self.set.groups[e.query];
            pairs.push((&g.text, &g.positives[e.positive].text));
            pairs.extend(
                e.negatives
                    .iter()
                    .map(|&n| (g.text.as_str(), g.negatives[n].text.as_str())),
            );
        }
        let encoded = self.model.tokenizer.encode_pairs(&pairs)?;
        let items: Vec<_> = encoded.iter().collect();
        let batch = crate::model::tokenizer::Batch::new(
            &items,
            self.model.tokenizer.pad_id(),
            self.model.device(),
        );
        let logits = self
            .model
            .forward_t(&batch, true)
            .select(1, 0)
            .view([-1, k]);
        let (name, loss) = match self.loss {
            TeacherLoss::Listwise => ("listwise_ce", losses::listwise_ce(&logits)),
            TeacherLoss::Bce => ("bce", losses::pointwise_bce(&logits)),
        };
        let value = loss.detach();
        Ok((loss, vec![(name.to_string(), value)]))
    }
}

impl Stage for Teacher {
    fn name(&self) -> &'static str {
        "teacher"
    }

    fn enabled(&self, p: &Pipeline) -> bool {
        p.teacher_from_base
    }

    fn upstream(&self, _: &Pipeline) -> Vec<&'static str> {
        vec!["mine"]
    }

    fn config(&self, p: &Pipeline, kind: Kind) -> serde_json::Value {
        json!({
            "teacher_train": p.teacher_train,
            "max_length": p.teacher.max_length,
            "precision": super::mine::kind_name(kind),
        })
    }

    fn inputs(
        &self,
        p: &Pipeline,
        upstream: &BTreeMap<String, Manifest>,
    ) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        out.insert("base".into(), fingerprint::directory(&p.teacher.path)?);
        out.insert(
            "candidates".into(),
            upstream_output(p, upstream, "mine", super::mine::OUTPUT)?,
        );
        for d in &p.datasets {
            super::mine::dataset_inputs(d, &[], &mut out)?;
        }
        Ok(out)
    }

    fn progress(&self, _: &Pipeline, partial: &Path) -> Option<(usize, usize)> {
        super::training_progress(partial)
    }

    fn run(&self, env: &mut StageEnv) -> Result<Outcome> {
        let p = env.pipeline;
        let cfg = p
            .teacher_train
            .clone()
            .ok_or_else(|| Error::config(&p.file, "the teacher stage needs teacher.base"))?;
        // Fresh tensors (a new classifier, a missing pooler) are drawn from the run seed.
        tch::manual_seed(crate::train::trainer::init_seed(p.seed, env.name));
        let mut model = CrossEncoder::from_encoder(
            &p.teacher.path,
            p.teacher.max_length,
            env.device,
            Kind::Float,
        )?;
        // Mixed precision on CUDA: bf16 activations over fp32 master weights.
        if env.device.is_cuda() {
            model.bert.set_compute_kind(Kind::BFloat16);
        }
        env.warn(format!(
            "initialised fresh from {}: {}",
            p.teacher.path.display(),
            model.import.initialised.join(", ")
        ));
        let table = PairTable::read(&p.run_dir.join("mine").join(super::mine::OUTPUT))?;
        let set = TrainingSet::from_table(&table, &load_datasets(p, false)?, false)?;
        let (_, total) = trainer::plan(&set, &cfg.settings);
        super::write_plan(&env.partial, total as usize)?;
        let task = TeacherTask {
            model: &model,
            set: &set,
            loss: cfg.loss,
        };
        let vars = model.vs.variables().into_iter().collect();
        let checkpoints = env.partial.join("checkpoints");
        let curve = trainer::train(env, &task, vars, &set, &cfg.settings, &checkpoints, None)?;
        export_cross_encoder(&model, &env.dir.join(MODEL_DIR))?;
        super::finish_training(env, &curve, &checkpoints, MODEL_DIR, &set.stats)
    }
}

/// The fingerprint of an upstream stage's output file.
pub fn upstream_output(
    p: &Pipeline,
    upstream: &BTreeMap<String, Manifest>,
    stage: &str,
    file: &str,
) -> Result<String> {
    upstream
        .get(stage)
        .and_then(|m| m.output_fingerprint(file))
        .map(str::to_string)
        .ok_or_else(|| {
            Error::config(
                p.run_dir.join(stage),
                format!("stage {stage} has no output {file}"),
            )
        })
}
