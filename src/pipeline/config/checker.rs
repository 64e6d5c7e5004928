//! The checker behind [`super::Pipeline`]'s resolution: typed reads of each key against
//! its bounds, with errors that name the file, the line and the key.
use super::defaults as D;
use super::*;
use crate::error::{Error, Result};
use std::ops::Range;
use std::path::Path;
use toml::Spanned;

/// 1-based line of a byte offset.
pub(super) fn line_of(src: &str, offset: usize) -> usize {
    src[..offset.min(src.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    pub(super) src: &'a str,
}

impl Checker<'_> {
    /// A setting of how pseudo-queries are made (its default when unset), refused when
    /// the dataset makes none (`pseudo_queries` 0).
    pub(super) fn pseudo_setting<T: Copy + Default>(
        &self,
        v: &Option<Spanned<T>>,
        pseudo_queries: usize,
        key: &str,
    ) -> Result<T> {
        match v {
            Some(v) if pseudo_queries == 0 => Err(self.err(
                v.span(),
                key,
                "shapes pseudo-queries, but pseudo_queries is 0",
            )),
            Some(v) => Ok(*v.get_ref()),
            None => Ok(T::default()),
        }
    }

    pub(super) fn err(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl std::fmt::Display,
    ) -> Error {
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

    pub(super) fn positive(&self, v: &Spanned<usize>, key: &str) -> Result<usize> {
        if *v.get_ref() == 0 {
            return Err(self.err(v.span(), key, "must be at least 1"));
        }
        Ok(*v.get_ref())
    }

    pub(super) fn existing(&self, v: &Spanned<PathBuf>, key: &str, what: &str) -> Result<PathBuf> {
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

    pub(super) fn file_in(&self, span: Range<usize>, key: &str, file: PathBuf) -> Result<()> {
        if !file.is_file() {
            return Err(self.err(span, key, format!("`{}` is missing", file.display())));
        }
        Ok(())
    }

    /// The corpus, the queries and the qrels of `splits` in dataset `dir` are each there
    /// under one name only (not `corpus.jsonl` and `corpus.jsonl.gz`).
    pub(super) fn unique(
        &self,
        span: Range<usize>,
        key: &str,
        dir: &std::path::Path,
        splits: &[&str],
    ) -> Result<()> {
        crate::data::beir::check_unique(dir, splits).map_err(|e| self.err(span, key, e))
    }
}

/// "must be between lo and hi", or "at least lo" where there is no upper bound (f64::MAX
/// would print as 309 digits).
fn range_message(lo: f64, hi: f64) -> String {
    match hi >= f64::MAX {
        true => format!("must be a number at least {lo}"),
        false => format!("must be between {lo} and {hi}"),
    }
}

/// Where an optional key was set (`None`: unset).
pub(super) fn span<T>(v: &Option<Spanned<T>>) -> Option<Range<usize>> {
    v.as_ref().map(|v| v.span())
}

pub(super) fn valid_run_name(name: &str) -> bool {
    !(name.is_empty() || name.contains(['/', '\\']) || name.starts_with('.') || name == "cache")
}

impl TrainSection {
    /// Whether `dev_queries` is the only key set (what `[teacher_train]` may hold with a
    /// given teacher).
    pub(super) fn only_dev_queries(&self) -> bool {
        let mut bare = self.clone();
        bare.dev_queries = None;
        let default = TrainSection::default();
        format!("{bare:?}") == format!("{default:?}")
    }
}

impl Checker<'_> {
    pub(super) fn health(
        &self,
        h: &HealthSection,
    ) -> Result<crate::pipeline::health::HealthConfig> {
        let share = |v: &Spanned<f64>, key: &str| self.unit(v, &format!("health.{key}"), 0.0, 1.0);
        let gain = |v: &Spanned<f64>, key: &str| self.unit(v, &format!("health.{key}"), -1.0, 1.0);
        Ok(crate::pipeline::health::HealthConfig {
            min_teacher_gain: gain(&h.min_teacher_gain, "min_teacher_gain")?,
            allow_weak_teacher: h.allow_weak_teacher,
            min_teacher_auc: share(&h.min_teacher_auc, "min_teacher_auc")?,
            max_flagged_share: share(&h.max_flagged_share, "max_flagged_share")?,
            max_dropped_share: share(&h.max_dropped_share, "max_dropped_share")?,
            min_loss_drop: gain(&h.min_loss_drop, "min_loss_drop")?,
            min_dev_gain: gain(&h.min_dev_gain, "min_dev_gain")?,
            min_gain_from_teacher: gain(&h.min_gain_from_teacher, "min_gain_from_teacher")?,
        })
    }

    pub(super) fn unit(&self, v: &Spanned<f64>, key: &str, lo: f64, hi: f64) -> Result<f64> {
        let x = *v.get_ref();
        if !(x >= lo && x <= hi) {
            return Err(self.err(v.span(), key, range_message(lo, hi)));
        }
        Ok(x)
    }

    pub(super) fn opt_f64(
        &self,
        v: &Option<Spanned<f64>>,
        key: &str,
        default: f64,
        lo: f64,
        hi: f64,
    ) -> Result<f64> {
        v.as_ref()
            .map_or(Ok(default), |v| self.unit(v, key, lo, hi))
    }

    pub(super) fn train_settings(
        &self,
        t: &TrainSection,
        section: &str,
        seed: u64,
        (lr, batch_queries, negatives): (f64, usize, usize),
        min_steps: Option<u64>,
    ) -> Result<crate::training::trainer::TrainSettings> {
        let k = |name: &str| format!("{section}.{name}");
        let pos = |v: &Option<Spanned<usize>>, name: &str, default: usize| {
            v.as_ref()
                .map_or(Ok(default), |v| self.positive(v, &k(name)))
        };
        Ok(crate::training::trainer::TrainSettings {
            epochs: self.positive(&t.epochs, &k("epochs"))?,
            lr: self.opt_f64(&t.lr, &k("lr"), lr, 1e-12, 1.0)?,
            warmup_ratio: self.unit(&t.warmup_ratio, &k("warmup_ratio"), 0.0, 1.0)?,
            schedule: t.schedule,
            batch_queries: pos(&t.batch_queries, "batch_queries", batch_queries)?,
            negatives: pos(&t.negatives, "negatives", negatives)?,
            batching: t
                .batching
                .as_ref()
                .map_or(Default::default(), |b| *b.get_ref()),
            grad_accumulation: self.positive(&t.grad_accumulation, &k("grad_accumulation"))?,
            max_grad_norm: self.unit(&t.max_grad_norm, &k("max_grad_norm"), 0.0, f64::MAX)?,
            weight_decay: self.unit(&t.weight_decay, &k("weight_decay"), 0.0, 1.0)?,
            checkpoint_every: self.positive(&t.checkpoint_every, &k("checkpoint_every"))? as u64,
            // 0 keeps only the newest while training (resuming needs one).
            keep_checkpoints: *t.keep_checkpoints.get_ref(),
            after_success: t.checkpoints_after_success,
            seed,
            // 0 turns the default floor off.
            min_steps: t
                .min_steps
                .as_ref()
                .map(|v| *v.get_ref() as u64)
                .or(min_steps)
                .filter(|&n| n > 0),
        })
    }

    pub(super) fn reject_student_keys(&self, t: &TrainSection) -> Result<()> {
        let student_only = [
            (span(&t.margin_mse), "margin_mse"),
            (span(&t.kl), "kl"),
            (span(&t.infonce), "infonce"),
            (span(&t.student_scale), "student_scale"),
            (span(&t.kl_student_temperature), "kl_student_temperature"),
            (span(&t.kl_teacher_temperature), "kl_teacher_temperature"),
            (span(&t.infonce_scale), "infonce_scale"),
            (span(&t.max_seq_length), "max_seq_length"),
            (span(&t.batching), "batching"),
            (span(&t.infonce_symmetric), "infonce_symmetric"),
            (span(&t.freeze_embeddings), "freeze_embeddings"),
            (span(&t.pseudo_keep), "pseudo_keep"),
            (span(&t.eval_every), "eval_every"),
            (span(&t.eval_split), "eval_split"),
            (span(&t.keep_best), "keep_best"),
            (span(&t.wise_ft), "wise_ft"),
            (span(&t.baseline), "baseline"),
        ];
        if let Some((span, key)) = student_only
            .into_iter()
            .find_map(|(s, k)| s.map(|s| (s, k)))
        {
            return Err(self.err(
                span,
                &format!("teacher_train.{key}"),
                "is a [train] setting",
            ));
        }
        Ok(())
    }

    pub(super) fn student_train(&self, t: &TrainSection, seed: u64) -> Result<StudentTrainConfig> {
        if let Some(l) = &t.loss {
            return Err(self.err(
                l.span(),
                "train.loss",
                "is a [teacher_train] setting; [train] combines margin_mse, kl and infonce",
            ));
        }
        if let Some(v) = &t.dev_queries {
            return Err(self.err(
                v.span(),
                "train.dev_queries",
                "is a [teacher_train] setting (one dev slice serves the gate and both trainings)",
            ));
        }
        if let Some(span) = span(&t.folds).or(span(&t.with_pseudo_queries)) {
            let key = match t.folds.is_some() {
                true => "train.folds",
                false => "train.with_pseudo_queries",
            };
            return Err(self.err(span, key, "is a [teacher_train] setting"));
        }
        let f = |v: &Option<Spanned<f64>>, key: &str, default: f64, lo: f64, hi: f64| {
            self.opt_f64(v, &format!("train.{key}"), default, lo, hi)
        };
        let loss = LossConfig {
            margin_mse: f(
                &t.margin_mse,
                "margin_mse",
                D::TRAIN_MARGIN_MSE,
                0.0,
                f64::MAX,
            )?,
            kl: f(&t.kl, "kl", D::TRAIN_KL, 0.0, f64::MAX)?,
            infonce: f(&t.infonce, "infonce", D::TRAIN_INFONCE, 0.0, f64::MAX)?,
            student_scale: f(
                &t.student_scale,
                "student_scale",
                D::TRAIN_STUDENT_SCALE,
                1e-6,
                1e6,
            )?,
            kl_student_temperature: f(
                &t.kl_student_temperature,
                "kl_student_temperature",
                D::TRAIN_KL_STUDENT_TEMPERATURE,
                1e-6,
                1e6,
            )?,
            kl_teacher_temperature: f(
                &t.kl_teacher_temperature,
                "kl_teacher_temperature",
                D::TRAIN_KL_TEACHER_TEMPERATURE,
                1e-6,
                1e6,
            )?,
            infonce_scale: f(
                &t.infonce_scale,
                "infonce_scale",
                D::TRAIN_INFONCE_SCALE,
                1e-6,
                1e6,
            )?,
            infonce_symmetric: t
                .infonce_symmetric
                .as_ref()
                .map_or(D::TRAIN_INFONCE_SYMMETRIC, |v| *v.get_ref()),
            exclude_false_negatives: t
                .exclude_false_negatives
                .unwrap_or(D::TRAIN_EXCLUDE_FALSE_NEGATIVES),
        };
        if let Some(b) = &t.baseline {
            if loss.infonce <= 0.0 {
                return Err(self.err(
                    b.span(),
                    "train.baseline",
                    "the contrastive baseline trains on InfoNCE alone, but train.infonce is 0",
                ));
            }
        }
        if loss.margin_mse + loss.kl + loss.infonce <= 0.0 {
            return Err(self.err(
                0..0,
                "train",
                "at least one of margin_mse, kl, infonce must have a positive weight",
            ));
        }
        Ok(StudentTrainConfig {
            settings: self.train_settings(
                t,
                "train",
                seed,
                (D::TRAIN_LR, D::TRAIN_BATCH_QUERIES, D::TRAIN_NEGATIVES),
                None,
            )?,
            loss,
            max_seq_length: t
                .max_seq_length
                .as_ref()
                .map(|v| self.positive(v, "train.max_seq_length"))
                .transpose()?,
            freeze_embeddings: t
                .freeze_embeddings
                .as_ref()
                .map_or(D::TRAIN_FREEZE_EMBEDDINGS, |v| *v.get_ref()),
            pseudo_keep: t
                .pseudo_keep
                .as_ref()
                .map(|v| self.positive(v, "train.pseudo_keep"))
                .transpose()?,
            eval_every: t
                .eval_every
                .as_ref()
                .map(|v| self.positive(v, "train.eval_every"))
                .transpose()?,
            eval_split: t.eval_split.as_ref().map(|v| v.get_ref().clone()),
            keep_best: t
                .keep_best
                .as_ref()
                .map_or(D::TRAIN_KEEP_BEST, |v| *v.get_ref()),
            wise_ft: t
                .wise_ft
                .as_ref()
                .map(|v| match *v.get_ref() {
                    x if x > 0.0 && x <= 1.0 => Ok(x),
                    _ => Err(self.err(v.span(), "train.wise_ft", "must be above 0 and at most 1")),
                })
                .transpose()?,
            baseline: t.baseline.as_ref().map(|b| *b.get_ref()),
        })
    }
}
