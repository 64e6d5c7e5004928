//! Stage `teacher`: when the pipeline names a base encoder instead of a trained
//! cross-encoder, fine-tune one: the encoder's weights with a fresh one-logit classifier,
//! trained on the training positives against the hard negatives from `mine`, with
//! listwise cross-entropy over (positive + n negatives) per query (or binary
//! cross-entropy, or both). Exports a Hugging Face cross-encoder directory (raw logits).
//!
//! Either way (trained here, or given as `teacher.path`), the teacher is then checked on
//! the dev slice (`data::dev`): it reranks the base student's top `eval.rerank_k` of each
//! held-out training query, and both rankings are scored (nDCG@10, MRR@10). The numbers
//! go into `dev_eval.json` and the manifest's summary, where the runner's gate reads them
//! before `score`.
use super::paths::teacher::{DEV_EVAL, MODEL_DIR};
use super::paths::StageId;
use super::{shared, Outcome, Stage, StageEnv};
use crate::data::pairs::PairTable;
use crate::error::{Error, Result};
use crate::model::export::export_cross_encoder;
use crate::model::CrossEncoder;
use crate::pipeline::config::PromptNames;
use crate::pipeline::events::Event;
use crate::pipeline::fingerprint;
use crate::pipeline::manifest::Manifest;
use crate::pipeline::Pipeline;
use crate::training::groups::TrainingSet;
use crate::training::objectives::TeacherObjective;
use crate::training::trainer;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Kind;

pub struct Teacher;

/// What changes the teacher stage's outputs: the fields of its configuration hash. A
/// trained teacher hashes its recipe, a given one `given: true`.
#[derive(serde::Serialize)]
struct TeacherHash<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    teacher_train: Option<&'a Option<crate::pipeline::config::TeacherTrainConfig>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    given: Option<bool>,
    max_length: Option<usize>,
    precision: &'static str,
    dev: DevHash<'a>,
}

/// The dev-slice evaluation's settings.
#[derive(serde::Serialize)]
struct DevHash<'a> {
    dev_queries: crate::data::dev::DevQueries,
    seed: u64,
    rerank_k: usize,
    student_max_seq_length: Option<usize>,
    #[serde(skip_serializing_if = "PromptNames::is_default")]
    student_prompts: &'a PromptNames,
}

impl Stage for Teacher {
    fn name(&self) -> &'static str {
        StageId::Teacher.name()
    }

    fn upstream(&self, _: &Pipeline) -> Vec<&'static str> {
        vec![StageId::Mine.name()]
    }

    fn config(&self, p: &Pipeline, kind: Kind) -> serde_json::Value {
        let trained = p.teacher_from_base;
        shared::hashed(&TeacherHash {
            teacher_train: trained.then_some(&p.teacher_train),
            given: (!trained).then_some(true),
            max_length: p.teacher.max_length,
            precision: shared::kind_name(kind),
            dev: DevHash {
                dev_queries: p.dev_queries,
                seed: p.seed,
                rerank_k: p.eval.rerank_k,
                student_max_seq_length: p.student.max_length,
                student_prompts: &p.student_prompts,
            },
        })
    }

    fn inputs(
        &self,
        p: &Pipeline,
        upstream: &BTreeMap<String, Manifest>,
    ) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        out.insert("student".into(), fingerprint::directory(&p.student.path)?);
        if p.teacher_from_base {
            out.insert("base".into(), fingerprint::directory(&p.teacher.path)?);
            out.insert(
                "candidates".into(),
                shared::upstream_output(
                    p,
                    upstream,
                    StageId::Mine.name(),
                    super::paths::mine::OUTPUT,
                )?,
            );
        } else {
            out.insert("teacher".into(), fingerprint::directory(&p.teacher.path)?);
        }
        for d in p.trained() {
            shared::dataset_inputs(d, &[&d.train_split], &mut out)?;
        }
        Ok(out)
    }

    fn progress(&self, _: &Pipeline, partial: &Path) -> Option<(usize, usize)> {
        super::training_progress(partial)
    }

    fn run(&self, env: &mut StageEnv) -> Result<Outcome> {
        let p = env.pipeline;
        if !p.teacher_from_base {
            let dev = dev_eval(env, &p.teacher.path)?;
            return Ok(Outcome::Complete {
                outputs: vec![DEV_EVAL.into()],
                rows: 0,
                summary: json!({ "dev": dev }),
            });
        }
        let cfg = p
            .teacher_train
            .clone()
            .ok_or_else(|| Error::config(&p.file, "the teacher stage needs teacher.base"))?;
        // An unchanged night (same settings, base, student and candidates) reuses the
        // teacher trained before, from the run root's cache.
        let world = super::world(env)?;
        let cache = shared::StageCache::new(env, world.as_ref().map_or(1, |w| w.size()));
        let rank = world.as_ref().map_or(0, crate::distributed::World::rank);
        let cached = match rank {
            0 => cache.restore(env)?,
            _ => None,
        };
        // Every rank learns whether rank 0 found the teacher in the cache.
        let hit = match &world {
            Some(w) => w.agree(i64::from(cached.is_some()))? == 1,
            None => cached.is_some(),
        };
        match (cached, hit) {
            (Some(outcome), _) => return Ok(outcome),
            (None, true) => return Ok(Outcome::Follower { rank }),
            (None, false) => {}
        }
        let mut clock = std::time::Instant::now();
        let table = PairTable::read(
            &p.run_dir
                .join(StageId::Mine.name())
                .join(super::paths::mine::OUTPUT),
        )?;
        let with_pseudo = cfg.with_pseudo_queries;
        let set = TrainingSet::from_table(&table, &shared::load_datasets(p, false)?, false)?
            .retain(|_, q| with_pseudo || crate::data::pseudo::parse_query_id(q).is_none());
        // Fold k's teacher trains on every query outside fold k (pseudo-queries included,
        // when the teacher has them): it scores fold k, which it never saw.
        let fold_sets: Vec<TrainingSet> = (0..cfg.folds)
            .filter(|_| cfg.folds > 1)
            .map(|k| {
                set.clone()
                    .retain(|ds, q| crate::data::dev::fold_of(p.seed, ds, q, cfg.folds) != k)
            })
            .collect();
        let total: u64 = std::iter::once(&set)
            .chain(&fold_sets)
            .map(|s| trainer::plan(s, &cfg.settings).1)
            .sum();
        super::write_plan(&env.partial, total as usize)?;
        let checkpoints = env.partial.join("checkpoints");
        let stage = env.name;
        let w = world.as_ref();
        env.timed("reading the candidates and the datasets", &mut clock);
        let curve = train_one(env, &cfg, &set, stage, &checkpoints, MODEL_DIR, w)?;
        env.timed("training", &mut clock);
        let mut folds = Vec::new();
        for (k, fold_set) in fold_sets.iter().enumerate() {
            let name = format!("{stage} fold {k}");
            let dir = super::paths::teacher::fold_dir(k);
            let ckpt = env.partial.join(format!("checkpoints-{dir}"));
            let c = train_one(env, &cfg, fold_set, &name, &ckpt, &dir, w)?;
            folds.push(json!({
                "fold": k,
                "queries": fold_set.stats.queries,
                "steps": c.step.len(),
                "final_loss": c.loss.last(),
            }));
        }
        if !fold_sets.is_empty() {
            env.timed("training the fold teachers", &mut clock);
        }
        if rank > 0 {
            return Ok(Outcome::Follower { rank });
        }
        // Checked before the checkpoints leave the partial folder: a kill during the check
        // resumes from the last checkpoint, not from step 0. After the fold teachers, so
        // that data-parallel ranks do not wait for rank 0's check between two trainings.
        let dev = dev_eval(env, &env.dir.join(MODEL_DIR))?;
        env.timed("the dev check", &mut clock);
        let mut outcome = super::finish_training(
            env,
            &curve,
            (&checkpoints, cfg.settings.after_success),
            MODEL_DIR,
            &set.stats,
        )?;
        if let Outcome::Complete {
            outputs, summary, ..
        } = &mut outcome
        {
            for k in 0..fold_sets.len() {
                outputs.extend(super::model_files(
                    &env.dir,
                    &super::paths::teacher::fold_dir(k),
                )?);
            }
            outputs.push(DEV_EVAL.into());
            summary["dev"] = dev;
            if !folds.is_empty() {
                summary["folds"] = folds.into();
            }
        }
        cache.store(env, &outcome)?;
        Ok(outcome)
    }
}

/// One cross-encoder fine-tuned from the base on `set` (the stage's teacher, or a fold
/// teacher), its fresh tensors drawn from (run seed, `name`), exported to `out` in the
/// stage's folder (by rank 0 of a data-parallel `world`); resumes from `checkpoints`.
fn train_one(
    env: &mut StageEnv,
    cfg: &crate::pipeline::config::TeacherTrainConfig,
    set: &TrainingSet,
    name: &str,
    checkpoints: &Path,
    out: &str,
    world: Option<&crate::distributed::World>,
) -> Result<crate::training::curve::LossCurve> {
    let p = env.pipeline;
    // Fresh tensors (a new classifier, a missing pooler) are drawn from the run seed.
    tch::manual_seed(crate::training::trainer::init_seed(p.seed, name));
    let mut model = CrossEncoder::from_encoder(
        &p.teacher.path,
        p.teacher.max_length,
        env.device,
        Kind::Float,
    )?;
    // Mixed precision where the run's precision is bf16 (on CUDA by default, on the CPU
    // when asked for): bf16 activations over fp32 master weights.
    if env.kind == Kind::BFloat16 {
        model.bert.set_compute_kind(Kind::BFloat16);
    }
    let who = match name == env.name {
        true => String::new(),
        false => format!("{name}: "),
    };
    env.warn(format!(
        "{who}initialised fresh from {}: {}",
        p.teacher.path.display(),
        model.import.initialised.join(", ")
    ));
    let task = TeacherObjective::new(&model, set, cfg.loss);
    let vars = model.vs.variables().into_iter().collect();
    let curve = trainer::train(
        env,
        &task,
        vars,
        set,
        &cfg.settings,
        checkpoints,
        None,
        world,
    )?;
    if world.is_none_or(crate::distributed::World::is_primary) {
        export_cross_encoder(&model, &env.dir.join(out))?;
    }
    Ok(curve)
}

/// The teacher in `teacher_dir` on each trained dataset's dev slice: the base student's
/// top `eval.rerank_k` alone and reranked by the teacher (nDCG@10, MRR@10). Written to
/// `dev_eval.json`; an empty object when the slice is off.
fn dev_eval(env: &mut StageEnv, teacher_dir: &Path) -> Result<serde_json::Value> {
    let p = env.pipeline;
    let mut out = serde_json::Map::new();
    if p.dev_queries.is_off() {
        env.warn(
            "teacher_train.dev_queries = 0: no dev slice, so the teacher gate cannot run".into(),
        );
    } else {
        let teacher = CrossEncoder::load(teacher_dir, p.teacher.max_length, env.device, env.kind)?;
        let student =
            p.load_student(&p.student.path, env.device, env.kind, p.student.max_length)?;
        let fp = fingerprint::directory(&p.student.path)?;
        for d in p.trained() {
            let ds = d.load(&[&d.train_split], p.seed)?;
            let dev = shared::dev_slice(p, d, &ds);
            if dev.is_empty() {
                // Too few labelled queries for a slice: recorded, so the health check names it.
                out.insert(d.name.clone(), json!({"queries": 0}));
                continue;
            }
            let corpus = shared::corpus_embeddings(env, &student, &fp, d, &ds)?;
            let (s, t) =
                shared::evaluate_slice(env, (&student, &corpus), Some(&teacher), &ds, &dev)?;
            let t = t.unwrap_or_default();
            let stage = env.name.to_string();
            env.emit(Event::Note {
                stage,
                message: format!(
                    "{}: dev slice of {} queries: nDCG@10 student {:.4}, teacher rerank {:.4} ({:+.4})",
                    d.name,
                    dev.len(),
                    s.ndcg_10,
                    t.ndcg_10,
                    t.ndcg_10 - s.ndcg_10
                ),
            });
            out.insert(
                d.name.clone(),
                json!({
                    "queries": dev.len(),
                    "student": shared::headline_measures(&s),
                    "teacher": shared::headline_measures(&t),
                    "gain": t.ndcg_10 - s.ndcg_10,
                }),
            );
        }
    }
    let value = serde_json::Value::Object(out);
    crate::data::atomic::write_json(&env.dir.join(DEV_EVAL), &value)?;
    Ok(value)
}
