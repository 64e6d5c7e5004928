//! Pipeline files (TOML). Our own format, so it is strict: unknown keys, missing files and
//! impossible values are rejected before any work starts, naming the file, the key and
//! the line. Relative paths are resolved against the directory the command runs in.
use crate::device::{DeviceSpec, Precision};
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::ops::Range;
use std::path::{Path, PathBuf};
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
    #[serde(default = "default_auto")]
    pub device: Spanned<String>,
    #[serde(default = "default_auto")]
    pub precision: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSection {
    pub path: Spanned<PathBuf>,
    pub max_seq_length: Option<Spanned<usize>>,
    #[serde(default = "default_encode_batch")]
    pub batch_size: Spanned<usize>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherSection {
    /// A trained cross-encoder directory.
    pub path: Spanned<PathBuf>,
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
    #[serde(default = "default_true")]
    pub strict: bool,
}

/// Stage `mine`: candidates for every training query from the student's ranking.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MineSection {
    /// Documents retrieved per query (exact inner product), at most 1000.
    #[serde(default = "default_top_k")]
    pub top_k: Spanned<usize>,
    /// Ranks (0-based) before this one are skipped.
    #[serde(default = "default_zero")]
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
    #[serde(default = "default_true")]
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

fn default_output_root() -> PathBuf {
    PathBuf::from("checkpoints")
}
fn default_seed() -> u64 {
    42
}
fn default_auto() -> Spanned<String> {
    Spanned::new(0..0, "auto".to_string())
}
fn spanned<T>(v: T) -> Spanned<T> {
    Spanned::new(0..0, v)
}
fn default_encode_batch() -> Spanned<usize> {
    spanned(128)
}
fn default_score_batch() -> Spanned<usize> {
    spanned(64)
}
fn default_train_split() -> Spanned<String> {
    spanned("train".into())
}
fn default_eval_split() -> Spanned<String> {
    spanned("test".into())
}
fn default_true() -> bool {
    true
}
fn default_zero() -> Spanned<usize> {
    spanned(0)
}
fn default_top_k() -> Spanned<usize> {
    spanned(100)
}
fn default_negatives() -> Spanned<usize> {
    spanned(15)
}
fn default_query_chunk() -> Spanned<usize> {
    spanned(1024)
}
fn default_corpus_chunk() -> Spanned<usize> {
    spanned(65536)
}
fn default_shard_size() -> Spanned<usize> {
    spanned(8192)
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
    pub student: ModelRef,
    pub teacher: ModelRef,
    pub datasets: Vec<DatasetRef>,
    pub mine: MineConfig,
    pub score: ScoreConfig,
}

/// 1-based line of a byte offset.
fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

struct Checker<'a> {
    path: &'a Path,
    src: &'a str,
}

impl Checker<'_> {
    fn err(&self, span: Range<usize>, key: &str, message: impl std::fmt::Display) -> Error {
        let line = if span.is_empty() && span.start == 0 {
            0
        } else {
            line_of(self.src, span.start)
        };
        Error::Input {
            path: self.path.to_path_buf(),
            line,
            message: format!("`{key}`: {message}"),
        }
    }

    fn positive(&self, v: &Spanned<usize>, key: &str) -> Result<usize> {
        if *v.get_ref() == 0 {
            return Err(self.err(v.span(), key, "must be at least 1"));
        }
        Ok(*v.get_ref())
    }

    fn existing(&self, v: &Spanned<PathBuf>, key: &str, what: &str) -> Result<PathBuf> {
        let p = v.get_ref();
        if !p.exists() {
            return Err(self.err(
                v.span(),
                key,
                format!("{what} `{}` does not exist", p.display()),
            ));
        }
        Ok(p.clone())
    }

    fn file_in(&self, span: Range<usize>, key: &str, file: PathBuf) -> Result<()> {
        if !file.is_file() {
            return Err(self.err(span, key, format!("`{}` is missing", file.display())));
        }
        Ok(())
    }
}

impl Pipeline {
    /// Read, parse and validate a pipeline file.
    pub fn load(path: &Path) -> Result<Self> {
        let src = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &src)
    }

    pub fn parse(path: &Path, src: &str) -> Result<Self> {
        let file: PipelineFile = toml::from_str(src).map_err(|e| {
            let line = e.span().map(|s| line_of(src, s.start)).unwrap_or(0);
            Error::Input {
                path: path.to_path_buf(),
                line,
                message: e.message().to_string(),
            }
        })?;
        let c = Checker { path, src };
        let run = &file.run;
        let name = run.name.get_ref().clone();
        if name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') {
            return Err(c.err(
                run.name.span(),
                "run.name",
                "must be a plain, non-empty folder name",
            ));
        }
        let device: DeviceSpec = run
            .device
            .get_ref()
            .parse()
            .map_err(|e: Error| c.err(run.device.span(), "run.device", e))?;
        let precision: Precision = run
            .precision
            .get_ref()
            .parse()
            .map_err(|e: Error| c.err(run.precision.span(), "run.precision", e))?;

        let s = &file.student;
        let student_path = c.existing(&s.path, "student.path", "student model directory")?;
        c.file_in(
            s.path.span(),
            "student.path",
            student_path.join("config.json"),
        )?;
        let student = ModelRef {
            path: student_path,
            max_length: s
                .max_seq_length
                .as_ref()
                .map(|v| c.positive(v, "student.max_seq_length"))
                .transpose()?,
            batch_size: c.positive(&s.batch_size, "student.batch_size")?,
        };
        let t = &file.teacher;
        let teacher_path = c.existing(&t.path, "teacher.path", "teacher model directory")?;
        c.file_in(
            t.path.span(),
            "teacher.path",
            teacher_path.join("config.json"),
        )?;
        let teacher = ModelRef {
            path: teacher_path,
            max_length: t
                .max_length
                .as_ref()
                .map(|v| c.positive(v, "teacher.max_length"))
                .transpose()?,
            batch_size: c.positive(&t.batch_size, "teacher.batch_size")?,
        };

        if file.datasets.is_empty() {
            return Err(c.err(0..0, "dataset", "at least one [[dataset]] is required"));
        }
        let mut datasets = Vec::new();
        for d in &file.datasets {
            let dname = d.name.get_ref().clone();
            if dname.is_empty() || datasets.iter().any(|x: &DatasetRef| x.name == dname) {
                return Err(c.err(
                    d.name.span(),
                    "dataset.name",
                    format!("`{dname}` is empty or used twice"),
                ));
            }
            let dir = c.existing(&d.path, "dataset.path", "dataset directory")?;
            c.file_in(
                d.path.span(),
                "dataset.path",
                crate::data::beir::corpus_path(&dir),
            )?;
            c.file_in(
                d.path.span(),
                "dataset.path",
                crate::data::beir::queries_path(&dir),
            )?;
            for (split, key) in [
                (&d.train_split, "dataset.train_split"),
                (&d.eval_split, "dataset.eval_split"),
            ] {
                let f = crate::data::beir::qrels_path(&dir, split.get_ref());
                c.file_in(split.span(), key, f)?;
            }
            datasets.push(DatasetRef {
                name: dname,
                path: dir,
                train_split: d.train_split.get_ref().clone(),
                eval_split: d.eval_split.get_ref().clone(),
                strict: d.strict,
            });
        }

        let m = &file.mine;
        let top_k = c.positive(&m.top_k, "mine.top_k")?;
        if top_k > 1000 {
            return Err(c.err(m.top_k.span(), "mine.top_k", "must be at most 1000"));
        }
        let range_min = *m.range_min.get_ref();
        let range_max = match &m.range_max {
            Some(v) => {
                if *v.get_ref() > top_k || *v.get_ref() <= range_min {
                    return Err(c.err(
                        v.span(),
                        "mine.range_max",
                        format!("must be greater than range_min ({range_min}) and at most top_k ({top_k})"),
                    ));
                }
                *v.get_ref()
            }
            None => top_k,
        };
        if range_min >= range_max {
            return Err(c.err(
                m.range_min.span(),
                "mine.range_min",
                format!("must be below range_max ({range_max})"),
            ));
        }
        let mine = MineConfig {
            top_k,
            range_min,
            range_max,
            num_negatives: c.positive(&m.num_negatives, "mine.num_negatives")?,
            sampling: m.sampling,
            exclude_positives: m.exclude_positives,
            query_chunk: c.positive(&m.query_chunk, "mine.query_chunk")?,
            corpus_chunk: c.positive(&m.corpus_chunk, "mine.corpus_chunk")?,
        };

        let sc = &file.score;
        let margin = |v: &Option<Spanned<f64>>, key: &str, max: f64| -> Result<Option<f64>> {
            match v {
                None => Ok(None),
                Some(x) if *x.get_ref() >= 0.0 && *x.get_ref() <= max => Ok(Some(*x.get_ref())),
                Some(x) => Err(c.err(x.span(), key, format!("must be between 0 and {max}"))),
            }
        };
        let score = ScoreConfig {
            shard_size: c.positive(&sc.shard_size, "score.shard_size")?,
            absolute_margin: margin(&sc.absolute_margin, "score.absolute_margin", f64::MAX)?,
            relative_margin: margin(&sc.relative_margin, "score.relative_margin", 1.0)?,
        };

        let run_dir = run.output_root.join(&name);
        Ok(Pipeline {
            file: path.to_path_buf(),
            name,
            run_dir,
            cache_dir: run.output_root.join("cache"),
            seed: run.seed,
            device,
            precision,
            student,
            teacher,
            datasets,
            mine,
            score,
        })
    }
}
