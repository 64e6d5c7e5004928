//! Stage `report`: one run's results as a self-contained HTML page (inline SVG charts, no
//! scripts, nothing fetched) and the same content as Markdown: base student vs distilled
//! student vs teacher rerank per dataset and metric with deltas, the loss curves, mining
//! and scoring statistics, time and throughput per stage, and the pipeline file.
use super::paths::report::{HEALTH, HTML, MARKDOWN};
use super::paths::StageId;
use super::{Outcome, Stage, StageEnv};
use crate::error::{read_json, Error, Result};
use crate::pipeline::health::{self, Finding};
use crate::pipeline::manifest::Manifest;
use crate::pipeline::Pipeline;
use crate::ranking::metrics::Measures;
use crate::render::{delta, esc, fmt, html_head, svg_chart, Table, HTML_TAIL};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use tch::Kind;

pub struct Report;

/// One line per dataset with the headline numbers of a run (nDCG@10 of the base student,
/// the distilled student and the teacher's rerank of the distilled student's top list),
/// and the report's path; None when the run has no evaluation yet.
#[path = "report_views.rs"]
mod views;

pub fn headline(run_dir: &Path) -> Option<String> {
    let metrics: Value = read_json(
        &run_dir
            .join(StageId::Eval.name())
            .join(super::paths::eval::METRICS),
    )
    .ok()?;
    let mut out = String::new();
    for (name, ds) in metrics.as_object()? {
        let g = |model: &str, sys: &str| ds[model][sys]["ndcg@10"].as_f64().unwrap_or(f64::NAN);
        let (b, d) = (g("base", "student"), g("distilled", "student"));
        let baseline = match ds["baseline"].is_object() {
            true => {
                let c = g("baseline", "student");
                format!(
                    "; contrastive baseline {}, gain from the teacher {}",
                    fmt(c),
                    delta(d - c)
                )
            }
            false => String::new(),
        };
        let _ = writeln!(
            out,
            "{name}: nDCG@10 base student {} -> distilled student {} ({}); teacher rerank {}{baseline}",
            fmt(b),
            fmt(d),
            delta(d - b),
            fmt(g("distilled", "student+teacher"))
        );
    }
    if let Ok(Some(m)) = Manifest::read(&run_dir.join(StageId::Teacher.name())) {
        for (name, v) in m.summary["dev"].as_object().into_iter().flatten() {
            let g = |sys: &str| v[sys]["ndcg@10"].as_f64().unwrap_or(f64::NAN);
            let _ = writeln!(
                out,
                "{name} dev slice ({} queries): nDCG@10 student {} -> teacher rerank {} ({})",
                v["queries"],
                fmt(g("student")),
                fmt(g("teacher")),
                delta(g("teacher") - g("student"))
            );
        }
    }
    if let Ok(findings) =
        read_json::<Vec<Finding>>(&run_dir.join(StageId::Report.name()).join(HEALTH))
    {
        match findings.len() {
            0 => out.push_str("health: no warnings\n"),
            n => {
                let _ = writeln!(out, "health: {n} warning(s)");
                for f in &findings {
                    let _ = writeln!(out, "  - {}", f.message);
                }
            }
        }
    }
    let html = run_dir.join(StageId::Report.name()).join(HTML);
    if html.exists() {
        let _ = writeln!(out, "report: {}", html.display());
    }
    Some(out)
}

/// Named series of a chart.
type Series = Vec<(String, Vec<f64>)>;

/// Read a loss curve (Parquet) into x (the step) and its named float columns.
fn read_curve(path: &Path) -> Result<(Vec<f64>, Series)> {
    use arrow::array::{Array, Float32Array, UInt64Array};
    let mut x = Vec::new();
    let mut cols: Series = Vec::new();
    for batch in crate::data::pairs::read_batches(path)? {
        let steps = batch
            .column_by_name("step")
            .and_then(|c| c.as_any().downcast_ref::<UInt64Array>().cloned())
            .ok_or_else(|| Error::config(path, "no step column"))?;
        x.extend(steps.values().iter().map(|&v| v as f64));
        for (i, f) in batch.schema().fields().iter().enumerate() {
            let Some(a) = batch.column(i).as_any().downcast_ref::<Float32Array>() else {
                continue;
            };
            let values: Vec<f64> = (0..a.len()).map(|j| a.value(j) as f64).collect();
            match cols.iter_mut().find(|(n, _)| n == f.name()) {
                Some((_, v)) => v.extend(values),
                None => cols.push((f.name().clone(), values)),
            }
        }
    }
    Ok((x, cols))
}

/// The dev slice's tables: the teacher's check (the student alone and the teacher's
/// rerank, from the teacher stage) and the base against the distilled student (from eval).
fn dev_tables(teacher: Option<&Manifest>, eval: Option<&Manifest>) -> Vec<Table> {
    let mut out = Vec::new();
    let g = |v: &Value, sys: &str, m: &str| v[sys][m].as_f64().unwrap_or(f64::NAN);
    if let Some(dev) = teacher
        .and_then(|m| m.summary["dev"].as_object())
        .filter(|d| !d.is_empty())
    {
        let rows = dev
            .iter()
            .map(|(name, v)| {
                vec![
                    name.clone(),
                    v["queries"].to_string(),
                    fmt(g(v, "student", "ndcg@10")),
                    fmt(g(v, "teacher", "ndcg@10")),
                    delta(g(v, "teacher", "ndcg@10") - g(v, "student", "ndcg@10")),
                    fmt(g(v, "student", "mrr@10")),
                    fmt(g(v, "teacher", "mrr@10")),
                ]
            })
            .collect();
        out.push(Table::new(
            "Teacher check on the dev slice (held-out training queries)",
            &[
                "dataset",
                "queries",
                "student nDCG@10",
                "teacher rerank nDCG@10",
                "gain",
                "student MRR@10",
                "teacher rerank MRR@10",
            ],
            rows,
        ));
    }
    if let Some(metrics) = eval.and_then(|m| m.summary.as_object()) {
        let rows: Vec<Vec<String>> = metrics
            .iter()
            .filter(|(_, v)| v["dev"].is_object())
            .map(|(name, v)| {
                let dev = &v["dev"];
                vec![
                    name.clone(),
                    dev["queries"].to_string(),
                    fmt(g(dev, "base", "ndcg@10")),
                    fmt(g(dev, "distilled", "ndcg@10")),
                    delta(g(dev, "distilled", "ndcg@10") - g(dev, "base", "ndcg@10")),
                ]
            })
            .collect();
        if !rows.is_empty() {
            out.push(Table::new(
                "Students on the dev slice",
                &[
                    "dataset",
                    "queries",
                    "base nDCG@10",
                    "distilled nDCG@10",
                    "delta",
                ],
                rows,
            ));
        }
    }
    out
}

impl Stage for Report {
    fn name(&self) -> &'static str {
        StageId::Report.name()
    }

    fn upstream(&self, p: &Pipeline) -> Vec<&'static str> {
        match p.train.baseline {
            Some(_) => vec![
                StageId::Mine.name(),
                StageId::Teacher.name(),
                StageId::Score.name(),
                StageId::Train.name(),
                StageId::Baseline.name(),
                StageId::Eval.name(),
            ],
            None => vec![
                StageId::Mine.name(),
                StageId::Teacher.name(),
                StageId::Score.name(),
                StageId::Train.name(),
                StageId::Eval.name(),
            ],
        }
    }

    fn config(&self, p: &Pipeline, _: Kind) -> Value {
        // The whole file, comments included: the report shows it.
        #[derive(serde::Serialize)]
        struct ReportHash {
            pipeline_file: String,
        }
        let pipeline_file = std::fs::read_to_string(&p.file).unwrap_or_default();
        super::shared::hashed(&ReportHash { pipeline_file })
    }

    fn inputs(
        &self,
        p: &Pipeline,
        upstream: &BTreeMap<String, Manifest>,
    ) -> Result<BTreeMap<String, String>> {
        // Every upstream manifest: their summaries and timings are in the report.
        self.upstream(p)
            .into_iter()
            .map(|s| {
                let m = upstream
                    .get(s)
                    .ok_or_else(|| Error::config(p.run_dir.join(s), "stage is not done"))?;
                Ok((s.to_string(), crate::pipeline::fingerprint::json(m)))
            })
            .collect()
    }

    fn progress(&self, _: &Pipeline, _: &Path) -> Option<(usize, usize)> {
        None
    }

    fn run(&self, env: &mut StageEnv) -> Result<Outcome> {
        let p = env.pipeline;
        // In pipeline order.
        let manifests: Vec<(&str, Manifest)> = self
            .upstream(p)
            .into_iter()
            .filter_map(|s| {
                Manifest::read(&p.run_dir.join(s))
                    .ok()
                    .flatten()
                    .map(|m| (s, m))
            })
            .collect();
        let manifest = |name: &str| manifests.iter().find(|(s, _)| *s == name).map(|(_, m)| m);
        let findings: Vec<Finding> = manifests
            .iter()
            .flat_map(|(s, m)| health::findings(s, &m.summary, &p.health))
            .collect();
        crate::data::atomic::write_json(&env.dir.join(HEALTH), &findings)?;
        let weak = findings.iter().any(|f| f.check == "weak_teacher");
        let metrics: Value = read_json(
            &p.run_dir
                .join(StageId::Eval.name())
                .join(super::paths::eval::METRICS),
        )?;
        let mut tables = Vec::new();
        let datasets = metrics.as_object().cloned().unwrap_or_default();
        for (name, ds) in &datasets {
            let with_baseline = ds["baseline"].is_object();
            let rows = Measures::NAMES
                .iter()
                .map(|m| {
                    let g = |model: &str, sys: &str| ds[model][sys][m].as_f64().unwrap_or(f64::NAN);
                    let (b, d, bt) = (
                        g("base", "student"),
                        g("distilled", "student"),
                        g("base", "student+teacher"),
                    );
                    let closed = if (bt - b).abs() > 1e-12 {
                        format!("{:.0}%", (d - b) / (bt - b) * 100.0)
                    } else {
                        "-".into()
                    };
                    let mut row = vec![
                        m.to_string(),
                        fmt(b),
                        fmt(d),
                        delta(d - b),
                        fmt(bt),
                        fmt(g("distilled", "student+teacher")),
                        closed,
                    ];
                    if with_baseline {
                        let c = g("baseline", "student");
                        row.extend([fmt(c), delta(d - c)]);
                    }
                    row
                })
                .collect();
            let watch = if ds["role"] == "watch" {
                " (watch dataset: evaluated only, never trained on)"
            } else {
                ""
            };
            let mut header = vec![
                "metric",
                "base student",
                "distilled student",
                "delta",
                "base + teacher",
                "distilled + teacher",
                "gap closed",
            ];
            if with_baseline {
                header.extend(["contrastive baseline", "gain from the teacher"]);
            }
            tables.push(Table::new(
                format!("{name}: {} judged queries{watch}", ds["queries"]),
                &header,
                rows,
            ));
        }
        let stage_rows = manifests
            .iter()
            .map(|(s, m)| {
                let rate = if m.seconds > 0.0 {
                    m.rows as f64 / m.seconds
                } else {
                    0.0
                };
                vec![
                    s.to_string(),
                    format!("{:.1}", m.seconds),
                    m.rows.to_string(),
                    format!("{rate:.1}"),
                ]
            })
            .collect();
        tables.push(Table::new(
            "Time and throughput per stage",
            &["stage", "seconds", "rows", "rows/s"],
            stage_rows,
        ));
        let mut stats = Vec::new();
        if let Some(m) = manifest(StageId::Mine.name()) {
            for (ds, v) in m.summary.as_object().into_iter().flatten() {
                stats.push(vec![
                    ds.clone(),
                    "mine".into(),
                    format!(
                        "{} queries, {} positives, {} negatives",
                        v["queries"], v["positives"], v["negatives"]
                    ),
                ]);
            }
        }
        if let Some(m) = manifest(StageId::Score.name()) {
            for (ds, v) in m
                .summary
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, v)| v.is_object())
            {
                let stat = |k: &str| {
                    format!(
                        "mean {:.3} [{:.3}, {:.3}]",
                        v[k]["mean"].as_f64().unwrap_or(f64::NAN),
                        v[k]["min"].as_f64().unwrap_or(f64::NAN),
                        v[k]["max"].as_f64().unwrap_or(f64::NAN)
                    )
                };
                stats.push(vec![
                    ds.clone(),
                    "score".into(),
                    format!(
                        "{} pairs, {} flagged false negatives; teacher positives {}, negatives {}",
                        v["pairs"],
                        v["flagged_false_negatives"],
                        stat("teacher_positive"),
                        stat("teacher_negative")
                    ),
                ]);
            }
        }
        tables.push(Table::new(
            "Mining and scoring",
            &["dataset", "stage", "statistics"],
            stats,
        ));
        let mut charts = Vec::new();
        for stage in [StageId::Teacher, StageId::Train, StageId::Baseline].map(StageId::name) {
            let path = p.run_dir.join(stage).join("loss_curve.parquet");
            if path.exists() {
                let (x, cols) = read_curve(&path)?;
                let series: Vec<_> = cols.into_iter().filter(|(n, _)| n != "grad_norm").collect();
                let labels = [
                    format!("step {}", x.first().copied().unwrap_or(0.0)),
                    format!("step {}", x.last().copied().unwrap_or(0.0)),
                ];
                charts.push((
                    format!("{stage} loss curve"),
                    svg_chart(
                        &format!("{stage} loss per step"),
                        &x,
                        &series,
                        [&labels[0], &labels[1]],
                        ["optimizer step", "loss"],
                    ),
                ));
            }
        }
        let config = std::fs::read_to_string(&p.file).map_err(|e| Error::io(&p.file, e))?;
        let title = format!("distill report: run `{}`", p.name);
        let mut md = format!("# {title}\n\n## Health\n\n");
        let mut html = html_head(&title);
        html.push_str("<div class=\"health\">\n<h2>Health</h2>\n");
        if weak {
            let line = "WEAK TEACHER: this run went past the teacher gate by override \
                        (--allow-weak-teacher or health.allow_weak_teacher); its distillation \
                        numbers do not come from a teacher that beats the student.";
            let _ = writeln!(md, "**{line}**\n");
            let _ = writeln!(html, "<p><strong>{}</strong></p>", esc(line));
        }
        if findings.is_empty() {
            md.push_str("No health warnings.\n\n");
            html.push_str("<p>No health warnings.</p>\n");
        } else {
            html.push_str("<ul>\n");
            for f in &findings {
                let _ = writeln!(md, "- **{}** ({}): {}", f.check, f.stage, f.message);
                let _ = writeln!(
                    html,
                    "<li><strong>{}</strong> ({}): {}</li>",
                    esc(&f.check),
                    esc(&f.stage),
                    esc(&f.message)
                );
            }
            html.push_str("</ul>\n");
            md.push('\n');
        }
        html.push_str("</div>\n");
        for t in dev_tables(
            manifest(StageId::Teacher.name()),
            manifest(StageId::Eval.name()),
        ) {
            t.markdown(&mut md);
            t.html(&mut html);
        }
        md.push_str("## Retrieval (nDCG@10 and more, test splits)\n\n");
        html.push_str("<h2>Retrieval</h2>\n");
        for (i, t) in tables.iter().enumerate() {
            if i == datasets.len() {
                md.push_str("## Stages\n\n");
                html.push_str("<h2>Stages</h2>\n");
            }
            t.markdown(&mut md);
            t.html(&mut html);
        }
        md.push_str("## Queries that changed most (test splits)\n\n");
        html.push_str("<h2>Queries that changed most</h2>\n");
        for t in views::query_changes(p, 5)? {
            t.markdown(&mut md);
            t.html(&mut html);
        }
        md.push_str("## Teacher scores\n\nThe histograms are in report.html (inline SVG).\n\n");
        html.push_str("<h2>Teacher scores</h2>\n<p>The teacher's scores of the labelled positives and the mined negatives of each dataset (shares of each, over the same bins); a teacher that separates them is what distillation needs.</p>\n");
        for (name, svg) in views::score_histograms(p)? {
            let _ = writeln!(md, "- {name}");
            let _ = write!(html, "<h3>{}</h3>\n{svg}", esc(&name));
        }
        md.push_str("\n## Loss curves\n\nThe charts are in report.html (inline SVG); the values are in each stage's loss_curve.parquet.\n\n");
        html.push_str("<h2>Loss curves</h2>\n");
        for (name, svg) in &charts {
            let _ = writeln!(md, "- {name}");
            let _ = write!(html, "<h3>{}</h3>\n{svg}", esc(name));
        }
        let _ = write!(md, "\n## Configuration\n\n```toml\n{config}\n```\n");
        let _ = write!(
            html,
            "<h2>Configuration</h2>\n<pre>{}</pre>\n{HTML_TAIL}",
            esc(&config)
        );
        for (name, text) in [(MARKDOWN, &md), (HTML, &html)] {
            let path = env.dir.join(name);
            crate::data::atomic::write_bytes(&path, text.as_bytes())?;
        }
        Ok(Outcome::Complete {
            outputs: vec![HTML.into(), MARKDOWN.into(), HEALTH.into()],
            rows: tables.len() as u64,
            summary: json!({"tables": tables.len(), "charts": charts.len(), "html": env.dir.join(HTML)}),
        })
    }
}
