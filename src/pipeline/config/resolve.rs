//! From the file as written to [`Pipeline`]: every key resolved against its default and
//! checked (the checker names the file, the line and the key of what is wrong).
use super::defaults as D;
use super::*;
use crate::device::{DeviceSpec, Precision};
use crate::error::{Error, Result};
use std::path::Path;
use toml::Spanned;

use super::checker::{line_of, span, valid_run_name, Checker};

impl Pipeline {
    /// Read, parse and validate a pipeline file.
    pub fn load(path: &Path) -> Result<Self> {
        let src = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(path, &src)
    }

    /// The same pipeline under another run name (run directory `<output_root>/<name>`),
    /// e.g. one per night.
    pub fn with_name(mut self, name: &str) -> Result<Self> {
        if !valid_run_name(name) {
            return Err(Error::Setting {
                key: "--name".into(),
                message: format!("`{name}` must be a plain, non-empty folder name"),
            });
        }
        let root = self
            .run_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        self.run_dir = root.join(name);
        self.name = name.to_string();
        Ok(self)
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
        if !valid_run_name(&name) {
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
        let gpus = match &run.gpus {
            Some(n) => c.positive(n, "run.gpus")?,
            None => 1,
        };

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
        let (teacher_spanned, teacher_from_base) = match (&t.path, &t.base) {
            (Some(p), None) => (p, false),
            (None, Some(b)) => (b, true),
            _ => {
                let span = t
                    .path
                    .as_ref()
                    .or(t.base.as_ref())
                    .map(|s| s.span())
                    .unwrap_or(0..0);
                return Err(c.err(span, "teacher", "give exactly one of `path` (a trained cross-encoder) and `base` (an encoder the teacher stage fine-tunes)"));
            }
        };
        let key = if teacher_from_base {
            "teacher.base"
        } else {
            "teacher.path"
        };
        let teacher_path = c.existing(teacher_spanned, key, "teacher model directory")?;
        c.file_in(
            teacher_spanned.span(),
            key,
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
        let dev_queries = match file
            .teacher_train
            .as_ref()
            .and_then(|t| t.dev_queries.as_ref())
        {
            None => crate::data::dev::DevQueries::Auto,
            Some(v) => crate::data::dev::DevQueries::Count(*v.get_ref()),
        };
        let teacher_train = match (&file.teacher_train, teacher_from_base) {
            (Some(section), false) if !section.only_dev_queries() => {
                return Err(c.err(
                    teacher_spanned.span(),
                    "teacher_train",
                    "is only used with `teacher.base` (with `teacher.path`, it may hold `dev_queries` alone)",
                ))
            }
            (Some(_), false) => None,
            (section, true) => {
                let section = section.clone().unwrap_or_default();
                Some(TeacherTrainConfig {
                    settings: c.train_settings(
                        &section,
                        "teacher_train",
                        run.seed,
                        (
                            D::TEACHER_TRAIN_LR,
                            D::TEACHER_TRAIN_BATCH_QUERIES,
                            D::TEACHER_TRAIN_NEGATIVES,
                        ),
                        Some(D::TEACHER_TRAIN_MIN_STEPS),
                    )?,
                    loss: section
                        .loss
                        .as_ref()
                        .map(|l| *l.get_ref())
                        .unwrap_or_default(),
                    folds: match &section.folds {
                        None => D::TEACHER_TRAIN_FOLDS,
                        Some(v) if (1..=10).contains(v.get_ref()) => *v.get_ref(),
                        Some(v) => {
                            return Err(c.err(
                                v.span(),
                                "teacher_train.folds",
                                "must be between 1 (no fold teachers) and 10",
                            ))
                        }
                    },
                    with_pseudo_queries: section
                        .with_pseudo_queries
                        .as_ref()
                        .map_or(D::TEACHER_TRAIN_WITH_PSEUDO_QUERIES, |v| *v.get_ref()),
                })
            }
            (None, false) => None,
        };
        if let Some(section) = &file.teacher_train {
            c.reject_student_keys(section)?;
        }
        let train = c.student_train(&file.train, run.seed)?;
        let ev = &file.eval;
        let eval = EvalConfig {
            top_k: c.positive(&ev.top_k, "eval.top_k")?,
            rerank_k: c.positive(&ev.rerank_k, "eval.rerank_k")?,
        };
        if eval.rerank_k > eval.top_k {
            return Err(c.err(
                ev.rerank_k.span(),
                "eval.rerank_k",
                format!("must be at most eval.top_k ({})", eval.top_k),
            ));
        }

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
            c.unique(d.path.span(), "dataset.path", &dir, &[])?;
            let watch = d.role.as_ref().is_some_and(|r| *r.get_ref() == Role::Watch);
            if watch {
                let pseudo = d
                    .pseudo_windows
                    .as_ref()
                    .map(|v| v.span())
                    .or(span(&d.pseudo_scope))
                    .or(span(&d.pseudo_per_sentence))
                    .or((*d.pseudo_queries.get_ref() > 0).then(|| d.pseudo_queries.span()));
                if let Some(span) = pseudo {
                    return Err(c.err(
                        span,
                        "dataset.pseudo_queries",
                        "a watch dataset is never trained on: it takes no pseudo-queries",
                    ));
                }
            }
            for (split, key) in [
                (&d.train_split, "dataset.train_split"),
                (&d.eval_split, "dataset.eval_split"),
            ] {
                if watch && key == "dataset.train_split" {
                    continue;
                }
                c.unique(split.span(), key, &dir, &[split.get_ref()])?;
                let f = crate::data::beir::qrels_path(&dir, split.get_ref());
                c.file_in(split.span(), key, f)?;
            }
            let watch = d.role.as_ref().is_some_and(|r| *r.get_ref() == Role::Watch);
            datasets.push(DatasetRef {
                watch,
                name: dname,
                path: dir,
                train_split: d.train_split.get_ref().clone(),
                eval_split: d.eval_split.get_ref().clone(),
                strict: d.strict,
                pseudo_queries: {
                    let n = *d.pseudo_queries.get_ref();
                    if n > 100 {
                        return Err(c.err(
                            d.pseudo_queries.span(),
                            "dataset.pseudo_queries",
                            "must be at most 100",
                        ));
                    }
                    n
                },
                pseudo_windows: c.pseudo_setting(
                    &d.pseudo_windows,
                    *d.pseudo_queries.get_ref(),
                    "dataset.pseudo_windows",
                )?,
                pseudo_scope: c.pseudo_setting(
                    &d.pseudo_scope,
                    *d.pseudo_queries.get_ref(),
                    "dataset.pseudo_scope",
                )?,
                pseudo_per_sentence: match &d.pseudo_per_sentence {
                    None => D::DATASET_PSEUDO_PER_SENTENCE,
                    Some(v) => {
                        let key = "dataset.pseudo_per_sentence";
                        let n = c.pseudo_setting(
                            &d.pseudo_per_sentence,
                            *d.pseudo_queries.get_ref(),
                            key,
                        )?;
                        if !(1..=4).contains(&n) {
                            return Err(c.err(v.span(), key, "must be between 1 and 4"));
                        }
                        n
                    }
                },
            });
        }
        if datasets.iter().all(|d| d.watch) {
            return Err(c.err(
                0..0,
                "dataset.role",
                "every [[dataset]] is a watch dataset: at least one must be trained on",
            ));
        }
        let t = &file.train;
        if t.eval_every.is_none() {
            let needs = [
                (span(&t.eval_split), "train.eval_split"),
                (
                    t.keep_best
                        .as_ref()
                        .filter(|v| *v.get_ref())
                        .map(|v| v.span()),
                    "train.keep_best",
                ),
            ];
            if let Some((span, key)) = needs.into_iter().find_map(|(s, k)| s.map(|s| (s, k))) {
                return Err(c.err(span, key, "needs train.eval_every"));
            }
        }
        if let Some(split) = &t.eval_split {
            for d in datasets.iter().filter(|d| !d.watch) {
                c.unique(
                    split.span(),
                    "train.eval_split",
                    &d.path,
                    &[split.get_ref()],
                )?;
                let f = crate::data::beir::qrels_path(&d.path, split.get_ref());
                c.file_in(split.span(), "train.eval_split", f)?;
            }
        }
        if let Some(k) = &file.train.pseudo_keep {
            if datasets.iter().all(|d| d.pseudo_queries == 0) {
                return Err(c.err(
                    k.span(),
                    "train.pseudo_keep",
                    "picks among pseudo-queries, but no [[dataset]] sets pseudo_queries",
                ));
            }
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

        let health = c.health(&file.health)?;
        let run_dir = run.output_root.join(&name);
        Ok(Pipeline {
            file: path.to_path_buf(),
            name,
            run_dir,
            cache_dir: run.output_root.join("cache"),
            seed: run.seed,
            device,
            precision,
            gpus,
            student,
            student_prompts: PromptNames {
                query: file
                    .student
                    .query_prompt_name
                    .as_ref()
                    .map(|v| v.get_ref().clone()),
                document: file
                    .student
                    .document_prompt_name
                    .as_ref()
                    .map(|v| v.get_ref().clone()),
            },
            teacher,
            datasets,
            mine,
            score,
            teacher_from_base,
            teacher_train,
            train,
            eval,
            dev_queries,
            health,
        })
    }
}
