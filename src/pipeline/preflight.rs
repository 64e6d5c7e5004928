//! What `distill check` reads, and `distill run` before any stage: the contents behind the
//! pipeline file. Every dataset loads (qrels rows against the queries and the corpus,
//! strictly or counted), its training split has a labelled query and its evaluation split
//! a judged one, and every model directory loads on the CPU (configuration, a supported
//! architecture, a whole weights file whose tensors match the configuration), the
//! teacher as what the pipeline says it is. Errors name the file and the key; what a
//! non-strict dataset left out comes back as warnings, with the skipped qrels rows.
use super::Pipeline;
use crate::data::beir::{self, Dataset};
use crate::error::{Error, Result};
use crate::model::{BiEncoder, CrossEncoder};
use tch::{Device, Kind};

/// How many skipped qrels rows a warning names (all of them go to `log.jsonl`).
pub const LISTED: usize = 3;

/// A warning about a dataset's contents: one line, and every item it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub message: String,
    pub items: Vec<String>,
}

/// Check the contents; returns the warnings (nothing is wrong enough to stop).
pub fn check(p: &Pipeline) -> Result<Vec<Warning>> {
    let mut warnings = Vec::new();
    for d in &p.datasets {
        let mut splits = vec![d.eval_split.as_str()];
        if !d.watch && d.train_split != d.eval_split {
            splits.push(&d.train_split);
        }
        let ds = Dataset::load(&d.path, &splits, d.strict)?;
        if !d.watch {
            let labelled = ds.qrels[&d.train_split]
                .values()
                .filter(|docs| docs.values().any(|&g| g > 0))
                .count();
            // Pseudo-queries can stand in for labels only when they are asked for.
            if labelled == 0 && d.pseudo_queries == 0 {
                return Err(Error::config(
                    beir::qrels_path(&d.path, &d.train_split),
                    format!(
                        "dataset `{}`: no query of the training split (dataset.train_split = \
                         `{}`) has a relevant document (grade > 0) among the known queries \
                         and documents",
                        d.name, d.train_split
                    ),
                ));
            }
        }
        if ds.qrels[&d.eval_split].is_empty() {
            return Err(Error::config(
                beir::qrels_path(&d.path, &d.eval_split),
                format!(
                    "dataset `{}`: the evaluation split (dataset.eval_split = `{}`) judges no \
                     known query",
                    d.name, d.eval_split
                ),
            ));
        }
        warnings.extend(load_warnings(&d.name, &ds));
    }
    let (cpu, fp32) = (Device::Cpu, Kind::Float);
    let mut student = BiEncoder::load(&p.student.path, cpu, fp32, p.student.max_length)
        .map_err(|e| in_key("student.path", e))?;
    let names = &p.student_prompts;
    student
        .use_prompts(
            names.query.as_deref(),
            names.document.as_deref(),
            &p.student.path,
        )
        .map_err(|e| {
            in_key(
                "student.query_prompt_name / student.document_prompt_name",
                e,
            )
        })?;
    if p.teacher_from_base {
        CrossEncoder::from_encoder(&p.teacher.path, p.teacher.max_length, cpu, fp32)
            .map_err(|e| in_key("teacher.base", e))?;
    } else {
        is_cross_encoder(&p.teacher.path)?;
        CrossEncoder::load(&p.teacher.path, p.teacher.max_length, cpu, fp32)
            .map_err(|e| in_key("teacher.path", e))?;
    }
    Ok(warnings)
}

fn in_key(key: &str, e: Error) -> Error {
    Error::Setting {
        key: key.into(),
        message: format!("{e}"),
    }
}

/// A given teacher must be a sequence-classification checkpoint (a cross-encoder), not an
/// encoder or a bi-encoder, which would load with a random head.
fn is_cross_encoder(dir: &std::path::Path) -> Result<()> {
    let path = dir.join("config.json");
    let config: serde_json::Value = crate::error::read_json(&path)?;
    let architectures: Vec<&str> = config["architectures"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a.as_str())
        .collect();
    if architectures.is_empty()
        || architectures
            .iter()
            .any(|a| a.ends_with("ForSequenceClassification"))
    {
        return Ok(());
    }
    Err(Error::Setting {
        key: "teacher.path".into(),
        message: format!(
            "{}: architectures {:?} is not a cross-encoder (a ...ForSequenceClassification \
             checkpoint); to fine-tune one from an encoder, name it as `teacher.base`",
            path.display(),
            architectures
        ),
    })
}

/// The non-strict load's counts, each a warning, the skipped qrels rows listed.
fn load_warnings(name: &str, ds: &Dataset) -> Vec<Warning> {
    let mut out: Vec<Warning> = ds
        .warnings
        .summary()
        .into_iter()
        .filter(|line| !line.contains("qrels"))
        .map(|line| Warning {
            message: format!("{name}: {line}"),
            items: Vec::new(),
        })
        .collect();
    let unknown = &ds.warnings.unknown_qrels;
    if !unknown.is_empty() {
        let items: Vec<String> = unknown
            .iter()
            .map(|(file, line, q, d)| {
                format!(
                    "{}:{line}: query `{q}`, document `{d}`",
                    ds.dir.join(file).display()
                )
            })
            .collect();
        let shown = items.iter().take(LISTED).cloned().collect::<Vec<_>>();
        let more = match items.len() > LISTED {
            true => format!(", ... ({} in all; every row in log.jsonl)", items.len()),
            false => String::new(),
        };
        out.push(Warning {
            message: format!(
                "{name}: {} qrels rows naming an unknown query or document skipped: {}{more}",
                items.len(),
                shown.join("; ")
            ),
            items,
        });
    }
    out
}
