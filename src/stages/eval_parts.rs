//! Eval's units of work (its students' retrievals and its reranking parts, each committed
//! as a file of the partial folder) and its reranking parts: the teacher scores each
//! (query, document) of a part of a dataset's judged queries once, for every student whose
//! top `rerank_k` holds it, and each student's rerank of its own candidates comes out of
//! those scores.
use super::LoadedSplit;
use crate::error::{Error, Result};
use crate::model::CrossEncoder;
use crate::pipeline::config::DatasetRef;
use crate::pipeline::Pipeline;
use crate::ranking::evaluation::{self, SystemRun};
use crate::ranking::rerank::{self, Reranker, Runs};
use crate::stages::StageEnv;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Reranking parts per dataset: its judged queries (in id order) in this many contiguous
/// parts, whatever the number of workers (a part's pairs, and so its scores, are the
/// same however the stage is run).
pub const RERANK_PARTS: usize = 4;

/// The teacher's scores of one part of a dataset's judged queries: each query against the
/// union of `students`' candidates for it, every pair scored once.
pub fn rerank_part(
    env: &mut StageEnv,
    teacher: &CrossEncoder,
    (d, loaded): (&DatasetRef, &LoadedSplit),
    part: usize,
    students: &[(PathBuf, Runs)],
) -> Result<RerankedPart> {
    let mut clock = std::time::Instant::now();
    let (ids, texts) = evaluation::judged_texts(&loaded.ds, &loaded.judged)?;
    let range = part_range(ids.len(), part);
    let (ids, texts) = (&ids[range.clone()], &texts[range]);
    let k = env.pipeline.eval.rerank_k;
    let runs: Vec<&Runs> = students.iter().map(|(_, c)| c).collect();
    let union = evaluation::union(ids, &runs, k);
    let reranker = Reranker {
        k: usize::MAX,
        ..crate::stages::shared::teacher_reranker(env.pipeline, teacher)
    };
    let pairs = reranker.pairs(&union);
    let read = students
        .iter()
        .map(|(_, s)| {
            ids.iter()
                .filter_map(|q| s.get(*q))
                .map(|c| c.len().min(k))
                .sum::<usize>()
        })
        .sum::<usize>();
    let scores = rerank::rerank(
        reranker,
        &union,
        (ids, texts),
        &loaded.ds.corpus,
        &mut |_| {},
    )?;
    let part_name = format!(
        "teacher on {}'s {}, part {} of {RERANK_PARTS}: reranking {pairs} pairs (the union of {} students' {read})",
        d.name,
        d.eval_split,
        part + 1,
        students.len()
    );
    env.timed(&part_name, &mut clock);
    let students = students
        .iter()
        .map(|(source, candidates)| {
            let reranked = evaluation::reranked_from(ids, candidates, k, &scores, source)?;
            Ok(PartEval {
                teacher: SystemRun::of(&reranked, &loaded.judged),
                recall: evaluation::top10_recall(ids, candidates, &reranked),
                run: Bits::of(reranked)?,
            })
        })
        .collect::<Result<_>>()?;
    env.timed(
        &format!(
            "teacher on {}'s {}, part {} of {RERANK_PARTS}: each student's rerank and measures",
            d.name,
            d.eval_split,
            part + 1
        ),
        &mut clock,
    );
    Ok(RerankedPart { students })
}

/// The students' retrievals of dataset `di`, read back from their units, in the order of
/// its retrieval units. None when a `--shard` worker finds one missing or not reading back
/// (another worker still owes it, or is redoing it: the parts wait for a later round, or
/// for the run that assembles); without `--shard` that is an error.
pub fn read_retrievals(
    env: &StageEnv,
    units: &[super::Unit],
    di: usize,
) -> Result<Option<Vec<(PathBuf, Runs)>>> {
    let mut students = Vec::new();
    for r in super::retrieval_units(units, di) {
        let path = super::unit_path(&env.partial, r);
        match crate::error::read_json::<super::Retrieved>(&path) {
            Ok(got) => students.push((path, got.run.candidates.into_runs())),
            Err(e) if env.shard.is_none() => return Err(e),
            Err(_) => return Ok(None),
        }
    }
    Ok(Some(students))
}

/// The `part`-th of [`RERANK_PARTS`] contiguous ranges of `n` queries.
fn part_range(n: usize, part: usize) -> std::ops::Range<usize> {
    (part * n / RERANK_PARTS)..((part + 1) * n / RERANK_PARTS)
}

/// A reranking part's results: per student (in the order of its retrieval units), the
/// teacher's rerank of its candidates over the part's queries.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct RerankedPart {
    pub students: Vec<PartEval>,
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
pub struct PartEval {
    pub run: Bits,
    /// The reranked run's measures, per query.
    pub teacher: SystemRun,
    /// Per query, the share of the teacher's top 10 in the student's own top 10.
    pub recall: BTreeMap<String, f64>,
}

/// A run with its scores as f32 bits (exact through JSON, which has no NaN).
#[derive(serde::Serialize, serde::Deserialize, Default)]
pub struct Bits(BTreeMap<String, Vec<(String, u32)>>);

impl Bits {
    /// `run` as it is (a student's scores: a diverged student's NaN reads back as NaN).
    pub fn exact(run: Runs) -> Self {
        let bits = |docs: Vec<(String, f32)>| docs.into_iter().map(|(d, s)| (d, s.to_bits()));
        Bits(
            run.into_iter()
                .map(|(q, docs)| (q, bits(docs).collect()))
                .collect(),
        )
    }

    /// The teacher's scores of `run`; a score that is not finite is an error naming the
    /// pair.
    fn of(run: Runs) -> Result<Self> {
        for (q, docs) in &run {
            if let Some((d, s)) = docs.iter().find(|(_, s)| !s.is_finite()) {
                return Err(Error::Setting {
                    key: "teacher".into(),
                    message: format!("the teacher scored query `{q}` and document `{d}` {s}"),
                });
            }
        }
        Ok(Bits::exact(run))
    }

    pub fn into_runs(self) -> Runs {
        self.0
            .into_iter()
            .map(|(q, docs)| {
                let docs = docs
                    .into_iter()
                    .map(|(d, b)| (d, f32::from_bits(b)))
                    .collect();
                (q, docs)
            })
            .collect()
    }
}

/// Eval's units of work, in order.
pub(super) enum Unit {
    /// A student's run on a dataset's evaluation split (and its dev slice).
    Retrieve {
        dataset: usize,
        label: &'static str,
        path: PathBuf,
    },
    /// The teacher's scores of a part of a dataset's queries: each query with the union of
    /// the students' top `rerank_k`.
    Rerank { dataset: usize, part: usize },
}

impl Unit {
    pub(super) fn dataset(&self) -> usize {
        match *self {
            Unit::Retrieve { dataset, .. } | Unit::Rerank { dataset, .. } => dataset,
        }
    }
}

/// Dataset by dataset (so that a process loads each split once): its retrievals, one per
/// student of [`super::students`], then its reranking parts.
pub(super) fn units(p: &Pipeline) -> Vec<Unit> {
    let mut out = Vec::new();
    for dataset in 0..p.datasets.len() {
        out.extend(
            super::students(p)
                .into_iter()
                .map(|(label, path)| Unit::Retrieve {
                    dataset,
                    label,
                    path,
                }),
        );
        out.extend((0..RERANK_PARTS).map(|part| Unit::Rerank { dataset, part }));
    }
    out
}

/// The indices of dataset `di`'s retrieval units.
pub(super) fn retrieval_units(units: &[Unit], di: usize) -> Vec<usize> {
    units
        .iter()
        .enumerate()
        .filter(|(_, u)| matches!(u, Unit::Retrieve { dataset, .. } if *dataset == di))
        .map(|(i, _)| i)
        .collect()
}

pub(super) fn unit_path(partial: &Path, u: usize) -> PathBuf {
    partial.join(format!("unit-{u:05}.json"))
}

pub(super) fn count_units(partial: &Path) -> usize {
    std::fs::read_dir(partial).map_or(0, |entries| {
        entries
            .filter_map(|e| e.ok())
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("unit-") && n.ends_with(".json")
            })
            .count()
    })
}
