//! Stage `score`: the teacher cross-encoder scores every (query, candidate) pair of
//! `candidates.parquet`, shard by shard (`--shard I/N` splits the shards between
//! processes); when every shard exists they are assembled into `teacher_scores.parquet`,
//! with likely false negatives flagged (sentence-transformers' `mine_hard_negatives`
//! margins), rows kept.
use super::paths::score::OUTPUT;
use super::paths::StageId;
use super::{Outcome, Stage, StageEnv};
use crate::data::beir::{gather_from, Dataset};
use crate::data::pairs::{PairTable, ScoreShard};
use crate::error::{Error, Result};
use crate::model::tokenizer::Encoded;
use crate::model::CrossEncoder;
use crate::pipeline::config::ScoreConfig;
use crate::pipeline::events::Event;
use crate::pipeline::fingerprint;
use crate::pipeline::manifest::Manifest;
use crate::pipeline::Pipeline;
use rayon::prelude::*;
use serde_json::json;
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::Path;
use tch::Kind;

pub struct Score;

/// The fold teachers that score instead of the stage's teacher (`teacher_train.folds`):
/// fold k's folder, in fold order; empty without folds.
fn fold_teacher_dirs(p: &Pipeline) -> Vec<std::path::PathBuf> {
    let folds = p.teacher_train.as_ref().map_or(1, |t| t.folds);
    (0..folds)
        .filter(|_| folds > 1)
        .map(|k| {
            p.run_dir
                .join(StageId::Teacher.name())
                .join(super::paths::teacher::fold_dir(k))
        })
        .collect()
}

fn candidates_path(p: &Pipeline) -> std::path::PathBuf {
    p.run_dir
        .join(StageId::Mine.name())
        .join(super::paths::mine::OUTPUT)
}

/// What changes score's output: the fields of its configuration hash.
#[derive(serde::Serialize)]
struct ScoreHash<'a> {
    score: &'a crate::pipeline::config::ScoreConfig,
    precision: &'static str,
    teacher_max_length: Option<usize>,
    /// Per trained dataset, whether it loads strictly (which rows exist).
    strict: Vec<bool>,
}

impl Stage for Score {
    fn name(&self) -> &'static str {
        StageId::Score.name()
    }

    fn upstream(&self, _: &Pipeline) -> Vec<&'static str> {
        vec![StageId::Mine.name(), StageId::Teacher.name()]
    }

    fn config(&self, p: &Pipeline, kind: Kind) -> serde_json::Value {
        super::shared::hashed(&ScoreHash {
            score: &p.score,
            precision: super::shared::kind_name(kind),
            teacher_max_length: p.teacher.max_length,
            strict: p.trained().map(|d| d.strict).collect(),
        })
    }

    fn inputs(
        &self,
        p: &Pipeline,
        upstream: &BTreeMap<String, Manifest>,
    ) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        // The teacher that scores: the trained one's weights, or the given directory.
        let teacher = if p.teacher_from_base {
            super::shared::upstream_output(
                p,
                upstream,
                StageId::Teacher.name(),
                super::paths::teacher::WEIGHTS,
            )?
        } else {
            fingerprint::directory(&p.teacher.path)?
        };
        out.insert("teacher".into(), teacher);
        for k in 0..fold_teacher_dirs(p).len() {
            let weights = format!("{}/model.safetensors", super::paths::teacher::fold_dir(k));
            let fp =
                super::shared::upstream_output(p, upstream, StageId::Teacher.name(), &weights)?;
            out.insert(format!("teacher fold {k}"), fp);
        }
        let mine = super::shared::upstream_output(
            p,
            upstream,
            StageId::Mine.name(),
            super::paths::mine::OUTPUT,
        )?;
        out.insert("candidates".into(), mine);
        for d in p.trained() {
            super::shared::dataset_inputs(d, &[], &mut out)?;
        }
        Ok(out)
    }

    fn progress(&self, _: &Pipeline, partial: &Path) -> Option<(usize, usize)> {
        super::read_plan(partial).map(|total| (super::count_shards(partial, "scores"), total))
    }

    fn run(&self, env: &mut StageEnv) -> Result<Outcome> {
        let p = env.pipeline;
        let mut clock = std::time::Instant::now();
        let candidates = PairTable::read(&candidates_path(p))?;
        env.timed("reading the candidates", &mut clock);
        let size = p.score.shard_size;
        let total = candidates.len().div_ceil(size);
        super::write_plan(&env.partial, total)?;
        let worker = env.shard;
        let mine: Vec<usize> = (0..total)
            .filter(|&s| worker.is_none_or(|sh| sh.owns(s)))
            .filter(|&s| !env.usable_shard(&env.shard_path("scores", s), ScoreShard::read))
            .collect();
        if !mine.is_empty() {
            // Cross-fitted: each query's pairs go to the fold teacher that never saw it.
            let fold_dirs = fold_teacher_dirs(p);
            let teachers = match fold_dirs.is_empty() {
                true => vec![super::paths::teacher_dir(p)],
                false => fold_dirs,
            }
            .iter()
            .map(|dir| CrossEncoder::load(dir, p.teacher.max_length, env.device, env.kind))
            .collect::<Result<Vec<_>>>()?;
            let folds = teachers.len();
            let fold = |i: usize| {
                crate::data::dev::fold_of(
                    p.seed,
                    &candidates.dataset[i],
                    &candidates.query_id[i],
                    folds,
                )
            };
            env.timed("loading the teacher", &mut clock);
            let datasets = load_texts(p)?;
            env.timed("loading the datasets", &mut clock);
            let stage = env.name.to_string();
            let pairs_todo: usize = mine
                .iter()
                .map(|&s| (candidates.len() - s * size).min(size))
                .sum();
            env.emit(Event::WorkStarted {
                stage: stage.clone(),
                label: "score".into(),
                total: pairs_todo as u64,
            });
            // Each shard's pairs are tokenized on a thread of their own while the GPU
            // scores the shard before (a queue of one shard: two shards' tokens at most).
            let tokenizers: Vec<&crate::model::tokenizer::TextTokenizer> =
                teachers.iter().map(|t| &t.tokenizer).collect();
            let (datasets, candidates) = (&datasets, &candidates);
            let prepare = |s: usize| -> Result<Vec<(Vec<usize>, Vec<Encoded>)>> {
                let rows = s * size..((s + 1) * size).min(candidates.len());
                let mut parts = Vec::with_capacity(tokenizers.len());
                for (k, tokenizer) in tokenizers.iter().enumerate() {
                    let in_fold: Vec<usize> = rows.clone().filter(|&i| fold(i) == k).collect();
                    let pairs = pair_texts(datasets, candidates, &in_fold)?;
                    parts.push((in_fold, tokenizer.encode_pairs(&pairs)?));
                }
                Ok(parts)
            };
            crate::model::batching::prepare_ahead(
                env.device,
                mine.clone(),
                |s| Ok((s, prepare(s)?)),
                |(s, parts)| {
                    let start = s * size;
                    let mut scores = vec![0f32; (candidates.len() - start).min(size)];
                    for ((in_fold, encoded), teacher) in parts.into_iter().zip(&teachers) {
                        let events = &mut *env.events;
                        let got =
                            teacher.score_tokenized(&encoded, p.teacher.batch_size, &mut |n| {
                                events.emit(Event::WorkProgress {
                                    stage: stage.clone(),
                                    n: n as u64,
                                })
                            })?;
                        for (&i, s) in in_fold.iter().zip(got) {
                            scores[i - start] = s;
                        }
                    }
                    ScoreShard {
                        start: start as u64,
                        scores,
                    }
                    .write(&env.shard_path("scores", s))?;
                    env.committed(s, total);
                    Ok(())
                },
            )?;
            env.emit(Event::WorkFinished { stage });
            env.timed("scoring", &mut clock);
        }
        let done = super::count_shards(&env.partial, "scores");
        // Workers never assemble: others may still be writing. A run without --shard does.
        if done < total || env.shard.is_some() {
            return Ok(Outcome::Partial { done, total });
        }
        let mut teacher_scores = Vec::with_capacity(candidates.len());
        // Read on rayon's pool (a night at 30M pairs has 3,663 shards), checked in order.
        let shards = (0..total)
            .into_par_iter()
            .map(|s| ScoreShard::read(&env.shard_path("scores", s)))
            .collect::<Vec<_>>();
        for (s, shard) in shards.into_iter().enumerate() {
            let shard = shard?;
            if shard.start as usize != teacher_scores.len() {
                return Err(Error::output(
                    env.shard_path("scores", s),
                    "shard does not start where the previous one ended",
                ));
            }
            teacher_scores.extend(shard.scores);
        }
        if teacher_scores.len() != candidates.len() {
            return Err(Error::output(
                &env.partial,
                "shards do not cover every candidate",
            ));
        }
        if let Some(i) = teacher_scores.iter().position(|s| !s.is_finite()) {
            return Err(Error::config(
                super::paths::teacher_dir(p),
                format!(
                    "the teacher scored the pair (query `{}`, document `{}`) of dataset `{}` as {}",
                    candidates.query_id[i],
                    candidates.doc_id[i],
                    candidates.dataset[i],
                    teacher_scores[i]
                ),
            ));
        }
        let flags = flag_false_negatives(&candidates, &teacher_scores, &p.score);
        let summary = summarize(&candidates, &teacher_scores, &flags);
        if p.train.loss.exclude_false_negatives {
            every_negative_flagged(p, &summary)?;
        }
        let mut table = candidates;
        table.teacher_score = Some(teacher_scores);
        table.is_false_negative = Some(flags);
        table.write(&env.dir.join(OUTPUT))?;
        env.timed("assembling the scores", &mut clock);
        Ok(Outcome::Complete {
            outputs: vec![OUTPUT.into()],
            rows: table.len() as u64,
            summary,
        })
    }
}

/// Corpus and queries of every dataset, by dataset name.
fn load_texts(p: &Pipeline) -> Result<BTreeMap<String, Dataset>> {
    p.trained()
        .map(|d| Ok((d.name.clone(), d.load(&[], p.seed)?)))
        .collect()
}

/// The query and document texts of the candidates' rows `rows`, each source read with one
/// gather.
fn pair_texts<'a>(
    datasets: &'a BTreeMap<String, Dataset>,
    t: &PairTable,
    rows: &[usize],
) -> Result<Vec<(Cow<'a, str>, Cow<'a, str>)>> {
    let mut queries = Vec::with_capacity(rows.len());
    let mut docs = Vec::with_capacity(rows.len());
    for &i in rows {
        let missing = |what: &str, id: &str| Error::TrainingData {
            dataset: Some(t.dataset[i].clone()),
            message: format!(
                "{what} `{id}` of the candidates is not in it (did the dataset change?)"
            ),
        };
        let ds = datasets
            .get(&t.dataset[i])
            .ok_or_else(|| missing("dataset", &t.dataset[i]))?;
        let q = ds.queries.position(&t.query_id[i]);
        queries.push((
            &ds.queries,
            q.ok_or_else(|| missing("query", &t.query_id[i]))?,
        ));
        let d = ds.corpus.position(&t.doc_id[i]);
        docs.push((
            &ds.corpus,
            d.ok_or_else(|| missing("document", &t.doc_id[i]))?,
        ));
    }
    Ok(gather_from(&queries)?
        .into_iter()
        .zip(gather_from(&docs)?)
        .collect())
}

/// A candidate is a likely false negative when its teacher score comes within
/// `absolute_margin` of the query's lowest positive score, or reaches
/// `(1 - relative_margin)` times it (meaningful for non-negative scores such as
/// probabilities). Positives are never flagged.
pub fn flag_false_negatives(t: &PairTable, scores: &[f32], cfg: &ScoreConfig) -> Vec<bool> {
    let mut lowest: BTreeMap<(&str, &str), f32> = BTreeMap::new();
    for (i, &score) in scores.iter().enumerate() {
        if t.is_positive[i] {
            let e = lowest
                .entry((&t.dataset[i], &t.query_id[i]))
                .or_insert(f32::INFINITY);
            *e = e.min(score);
        }
    }
    (0..t.len())
        .map(|i| {
            if t.is_positive[i] {
                return false;
            }
            let Some(&pos) = lowest.get(&(t.dataset[i].as_str(), t.query_id[i].as_str())) else {
                return false;
            };
            let s = scores[i] as f64;
            let pos = pos as f64;
            cfg.absolute_margin.is_some_and(|m| s >= pos - m)
                || cfg.relative_margin.is_some_and(|m| s >= pos * (1.0 - m))
        })
        .collect()
}

/// A dataset whose every negative is flagged as a likely false negative leaves nothing to
/// train on once the flags are excluded: an error naming the margin to change.
fn every_negative_flagged(p: &Pipeline, summary: &serde_json::Value) -> Result<()> {
    for (name, v) in summary.as_object().into_iter().flatten() {
        let negatives = v["teacher_negative"]["count"].as_u64().unwrap_or(0);
        let flagged = v["flagged_false_negatives"].as_u64().unwrap_or(0);
        if negatives > 0 && flagged == negatives {
            let key = if p.score.absolute_margin.is_some() {
                "score.absolute_margin"
            } else {
                "score.relative_margin"
            };
            return Err(Error::config(
                &p.file,
                format!(
                    "`{key}` flags all {negatives} negatives of dataset `{name}` as likely false \
                     negatives, so training would have none: lower it, or check the teacher \
                     (its positive and negative scores overlap; see the teacher stage's dev \
                     numbers)"
                ),
            ));
        }
    }
    Ok(())
}

fn summarize(t: &PairTable, scores: &[f32], flags: &[bool]) -> serde_json::Value {
    let mut per: BTreeMap<&str, [Vec<f32>; 2]> = BTreeMap::new();
    let mut flagged: BTreeMap<&str, usize> = BTreeMap::new();
    for i in 0..t.len() {
        let e = per.entry(&t.dataset[i]).or_default();
        e[usize::from(t.is_positive[i])].push(scores[i]);
        *flagged.entry(&t.dataset[i]).or_insert(0) += usize::from(flags[i]);
    }
    let stats = |v: &[f32]| {
        if v.is_empty() {
            return json!(null);
        }
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let min = v.iter().copied().fold(f32::INFINITY, f32::min);
        let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        json!({"count": v.len(), "mean": mean, "min": min, "max": max})
    };
    let mut out = serde_json::Map::new();
    for (name, [neg, pos]) in &per {
        out.insert(
            name.to_string(),
            json!({
                "pairs": neg.len() + pos.len(),
                "flagged_false_negatives": flagged[name],
                "flagged_share": flagged[name] as f64 / neg.len().max(1) as f64,
                "teacher_auc": crate::pipeline::health::auc(pos, neg),
                "teacher_positive": stats(pos),
                "teacher_negative": stats(neg),
            }),
        );
    }
    out.insert(
        "flagged_false_negatives".into(),
        flags.iter().filter(|&&f| f).count().into(),
    );
    serde_json::Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> PairTable {
        let n = 5;
        PairTable {
            dataset: vec!["d".into(); n],
            query_id: vec!["q".into(), "q".into(), "q".into(), "q".into(), "r".into()],
            doc_id: (0..n).map(|i| format!("x{i}")).collect(),
            rank: vec![1; n],
            student_score: vec![0.0; n],
            is_positive: vec![true, true, false, false, false],
            teacher_score: None,
            is_false_negative: None,
        }
    }

    #[test]
    fn flags_use_the_lowest_positive_and_both_margins() {
        let t = table();
        let scores = [0.9, 0.8, 0.79, 0.5, 0.99];
        let abs = ScoreConfig {
            shard_size: 1,
            absolute_margin: Some(0.05),
            relative_margin: None,
        };
        // 0.79 >= 0.8 - 0.05; 0.5 is not; query r has no positive, never flagged.
        assert_eq!(
            flag_false_negatives(&t, &scores, &abs),
            vec![false, false, true, false, false]
        );
        let rel = ScoreConfig {
            shard_size: 1,
            absolute_margin: None,
            relative_margin: Some(0.5),
        };
        // 0.5 >= 0.8 * 0.5
        assert_eq!(
            flag_false_negatives(&t, &scores, &rel),
            vec![false, false, true, true, false]
        );
        let none = ScoreConfig {
            shard_size: 1,
            absolute_margin: None,
            relative_margin: None,
        };
        assert!(flag_false_negatives(&t, &scores, &none).iter().all(|f| !f));
    }
}
