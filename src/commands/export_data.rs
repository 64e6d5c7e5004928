//! `distill export-data`: a run's mined and teacher-scored pairs as training data for
//! other trainers (FlagEmbedding's JSONL, sentence-transformers Parquet for
//! `MarginMSELoss` or `DistillKLDivLoss`), texts joined from the run's datasets.
//!
//! A run folder records ids and the datasets' fingerprints, not the datasets' paths, so
//! the command takes the pipeline file the run was made with beside the run folder, and
//! checks the two against each other before joining any text: the run's `mine` manifest
//! must hold that pipeline's mining settings (seed, datasets, pseudo-queries) and the
//! fingerprints of its dataset files as they are now, and the scores must be whole and of
//! those candidates.
use super::export_formats::{
    select, write_flagembedding, write_sentence_transformers, ExportQuery, Label, Negative, Written,
};
use crate::data::pairs::PairTable;
use crate::error::{Error, Result};
use crate::pipeline::fingerprint;
use crate::pipeline::manifest::{Manifest, MANIFEST};
use crate::pipeline::Pipeline;
use crate::stages::paths::{self, StageId};
use crate::stages::Stage;
use crate::training::groups::TrainingSet;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

/// What `export-data` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// FlagEmbedding's fine-tuning JSONL with teacher scores (one line per query).
    #[value(name = "flagembedding")]
    FlagEmbedding,
    /// sentence-transformers Parquet, `label` = teacher margins (MarginMSELoss).
    StMargin,
    /// sentence-transformers Parquet, `label` = teacher scores (DistillKLDivLoss).
    StKl,
}

impl ExportFormat {
    /// The sentence-transformers label, for the Parquet formats (one column per negative).
    fn label(self) -> Option<Label> {
        match self {
            ExportFormat::FlagEmbedding => None,
            ExportFormat::StMargin => Some(Label::Margins),
            ExportFormat::StKl => Some(Label::Scores),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ExportSettings {
    /// The run folder (`<output_root>/<name>`).
    pub run_dir: PathBuf,
    /// The pipeline file the run was made with.
    pub pipeline: PathBuf,
    pub format: ExportFormat,
    pub output: PathBuf,
    /// Keep the negatives that the score stage flagged as likely false negatives.
    pub keep_false_negatives: bool,
    /// Negatives per query (the first ones, by the student's rank); queries with fewer are
    /// dropped. Unset: all of them (FlagEmbedding), the smallest count (Parquet).
    pub negatives: Option<usize>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    pub queries: usize,
    /// JSONL lines, or Parquet rows (one per query and positive).
    pub rows: usize,
    /// (query, document) pairs written.
    pub pairs: usize,
    /// Negatives per query, when every query has the same number.
    pub negatives: Option<usize>,
    pub dropped_without_negatives: usize,
    pub dropped_few_negatives: usize,
    /// Pseudo-queries left out by the pipeline's `train.pseudo_keep`.
    pub pseudo_left_out: usize,
    pub flagged_left_out: usize,
    pub flagged_kept: usize,
}

impl std::fmt::Display for ExportSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} queries, {} rows, {} (query, document) pairs",
            self.queries, self.rows, self.pairs
        )?;
        if let Some(n) = self.negatives {
            write!(f, ", {n} negatives each")?;
        }
        write!(
            f,
            "; dropped {} queries without a negative, {} with too few negatives",
            self.dropped_without_negatives, self.dropped_few_negatives
        )?;
        if self.pseudo_left_out > 0 {
            write!(
                f,
                ", {} pseudo-queries (train.pseudo_keep)",
                self.pseudo_left_out
            )?;
        }
        write!(
            f,
            "; flagged false negatives: {} left out, {} kept",
            self.flagged_left_out, self.flagged_kept
        )
    }
}

pub fn run(settings: &ExportSettings) -> Result<ExportSummary> {
    if settings.negatives == Some(0) {
        return Err(Error::Setting {
            key: "negatives".into(),
            message: "must be at least 1".into(),
        });
    }
    let p = open_run(&settings.run_dir, &settings.pipeline)?;
    let scores_path = check_run(&p, &settings.pipeline)?;
    let table = PairTable::read(&scores_path)?;
    let Some(teacher) = &table.teacher_score else {
        return Err(Error::config(&scores_path, "has no column `teacher_score`"));
    };
    if let Some(i) = teacher.iter().position(|s| !s.is_finite()) {
        return Err(Error::output(
            &scores_path,
            format!(
                "the teacher score of query `{}` and document `{}` is {}",
                table.query_id[i], table.doc_id[i], teacher[i]
            ),
        ));
    }
    let datasets = crate::stages::shared::load_datasets(&p, true)?;
    let mut set = TrainingSet::from_table(&table, &datasets, !settings.keep_false_negatives)?;
    if let Some(keep) = p.train.pseudo_keep {
        set = set.keep_pseudo(&table, &scores_path, keep)?;
    }
    let queries = export_queries(&set, &table);
    let label = settings.format.label();
    let selection = select(queries, settings.negatives, label.is_some());
    if selection.queries.is_empty() {
        return Err(Error::TrainingData {
            dataset: None,
            message: format!(
                "no query of {} is left to export ({} without a negative, {} with fewer than \
                 {} negatives)",
                scores_path.display(),
                set.stats.dropped_without_negatives,
                selection.dropped,
                selection.negatives.unwrap_or(1)
            ),
        });
    }
    let keep = settings.keep_false_negatives;
    let written: Written = match label {
        // A fixed-width selection of some queries has its width.
        Some(label) => {
            let n = selection.negatives.unwrap_or_default();
            write_sentence_transformers(&settings.output, &selection.queries, n, label, keep)?
        }
        None => write_flagembedding(&settings.output, &selection.queries, keep)?,
    };
    Ok(ExportSummary {
        queries: selection.queries.len(),
        rows: written.rows,
        pairs: written.pairs,
        negatives: selection.negatives,
        dropped_without_negatives: set.stats.dropped_without_negatives,
        dropped_few_negatives: selection.dropped,
        pseudo_left_out: set.stats.pseudo_left_out,
        flagged_left_out: set.stats.excluded_false_negatives,
        flagged_kept: selection
            .queries
            .iter()
            .flat_map(|q| &q.negatives)
            .filter(|n| n.flagged)
            .count(),
    })
}

/// The set's queries with their texts, teacher scores and flags (from `table`, the one
/// the set was built from).
fn export_queries<'a>(set: &'a TrainingSet, table: &'a PairTable) -> Vec<ExportQuery<'a>> {
    let flagged: HashSet<(&str, &str, &str)> = (0..table.len())
        .filter(|&i| table.is_false_negative.as_ref().is_some_and(|f| f[i]))
        .map(|i| {
            (
                table.dataset[i].as_str(),
                table.query_id[i].as_str(),
                table.doc_id[i].as_str(),
            )
        })
        .collect();
    set.groups
        .iter()
        .map(|g| ExportQuery {
            query: &set.texts[g.text],
            positives: g
                .positives
                .iter()
                .map(|d| (set.texts[d.text].as_str(), d.teacher))
                .collect(),
            negatives: g
                .negatives
                .iter()
                .map(|d| Negative {
                    text: &set.texts[d.text],
                    score: d.teacher,
                    flagged: flagged.contains(&(&g.dataset, &g.query_id, &d.id)),
                })
                .collect(),
        })
        .collect()
}

/// The pipeline `pipeline` with its run folder set to `run_dir` (a run made with
/// `--name`, or moved, lives elsewhere than the file's `run.name` says).
fn open_run(run_dir: &Path, pipeline: &Path) -> Result<Pipeline> {
    if !run_dir.is_dir() {
        return Err(Error::config(run_dir, "is not a run folder"));
    }
    let mut p = Pipeline::load(pipeline)?;
    p.run_dir = run_dir.to_path_buf();
    if let Some(name) = run_dir.file_name() {
        p.name = name.to_string_lossy().into_owned();
    }
    Ok(p)
}

/// A stage's manifest and the path of its output `file`, which must have the sha256 the
/// manifest records.
fn completed(p: &Pipeline, stage: StageId, file: &str) -> Result<(Manifest, PathBuf)> {
    let dir = stage.dir(p);
    let missing = || Error::MissingUpstream {
        dir: dir.clone(),
        stage: stage.name().into(),
        file: file.into(),
    };
    let manifest = Manifest::read(&dir)?.ok_or_else(|| {
        Error::config(
            &p.run_dir,
            format!(
                "stage `{0}` has not completed in this run folder (no {0}/{MANIFEST})",
                stage.name()
            ),
        )
    })?;
    let want = manifest.output_fingerprint(file).ok_or_else(missing)?;
    let path = dir.join(file);
    if fingerprint::content(&path)? != want {
        return Err(Error::output(
            &path,
            format!(
                "its sha256 is not the one {} records",
                dir.join(MANIFEST).display()
            ),
        ));
    }
    Ok((manifest, path))
}

/// The run's teacher scores, once they are whole, of the run's candidates, and the run was
/// mined with `p` (`file`) from the dataset files as they are now: then the texts joined
/// to the ids are the ones that were mined and scored. The precision is not the machine's
/// business here: a run mined in bf16 on a GPU exports on a CPU.
fn check_run(p: &Pipeline, file: &Path) -> Result<PathBuf> {
    let (mine, _) = completed(p, StageId::Mine, paths::mine::OUTPUT)?;
    let (score, scores) = completed(p, StageId::Score, paths::score::OUTPUT)?;
    // The score stage's name for its input `mine/candidates.parquet`.
    if score.inputs.get("candidates").map(String::as_str)
        != mine.output_fingerprint(paths::mine::OUTPUT)
    {
        return Err(Error::output(
            &scores,
            "scores other candidates than mine/candidates.parquet (rerun: distill run --from score)",
        ));
    }
    let stage = crate::stages::mine::Mine;
    let mismatch = |what: String| {
        Error::config(
            file,
            format!(
                "is not the pipeline {} was mined with ({what}); pass the pipeline file the \
                 run was made with",
                p.run_dir.display()
            ),
        )
    };
    let configs = [tch::Kind::Float, tch::Kind::BFloat16].map(|k| stage.config(p, k));
    if !configs.contains(&mine.config) {
        // Named against the precision the run was mined in.
        let keys = configs
            .iter()
            .map(|c| differing_keys(c, &mine.config))
            .min_by_key(Vec::len)
            .unwrap_or_default();
        return Err(mismatch(format!(
            "the mine stage's settings differ in `{}`",
            keys.join("`, `")
        )));
    }
    let inputs = stage.inputs(p, &BTreeMap::new())?;
    if let Some(key) =
        differing_keys(&serde_json::json!(inputs), &serde_json::json!(mine.inputs)).first()
    {
        return Err(mismatch(format!(
            "the mine stage's input `{key}` is not the one the run recorded"
        )));
    }
    Ok(scores)
}

/// The top-level keys in which two JSON objects differ (sorted).
fn differing_keys(a: &serde_json::Value, b: &serde_json::Value) -> Vec<String> {
    let null = serde_json::Value::Null;
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else {
        return vec!["the whole configuration".into()];
    };
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k).unwrap_or(&null) != b.get(*k).unwrap_or(&null))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn differing_keys_names_what_changed() {
        let a = json!({"seed": 1, "mine": {"top_k": 5}, "only_a": true});
        let b = json!({"seed": 2, "mine": {"top_k": 5}});
        assert_eq!(differing_keys(&a, &b), vec!["only_a", "seed"]);
        assert!(differing_keys(&a, &a).is_empty());
    }

    #[test]
    fn the_summary_names_every_count() {
        let s = ExportSummary {
            queries: 3,
            rows: 4,
            pairs: 12,
            negatives: Some(2),
            dropped_without_negatives: 1,
            dropped_few_negatives: 2,
            pseudo_left_out: 0,
            flagged_left_out: 5,
            flagged_kept: 0,
        };
        assert_eq!(
            s.to_string(),
            "3 queries, 4 rows, 12 (query, document) pairs, 2 negatives each; dropped 1 \
             queries without a negative, 2 with too few negatives; flagged false negatives: \
             5 left out, 0 kept"
        );
    }
}
