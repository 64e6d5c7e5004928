//! `distill report RUN_DIR...`: the trend over nightly runs. Each run's `eval` stage
//! (its manifest says when it finished; `metrics.json` holds the numbers) becomes one
//! point: per dataset and metric, line charts of the base student, the distilled student
//! and the teacher rerank over the runs; a table of the last runs with each drop beyond
//! the threshold (against the run before) highlighted; and a verdict on the newest run,
//! which the binary turns into its exit code for cron jobs.
use crate::error::{read_json, Error, Result};
use crate::pipeline::manifest::Manifest;
use crate::ranking::metrics::Measures;
use crate::render::{delta, esc, fmt, html_head, svg_chart, utc, Table, HTML_TAIL};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub const HTML: &str = "trend.html";
pub const MARKDOWN: &str = "trend.md";

/// What the newest run is compared with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Against {
    /// The run before it.
    Previous,
    /// The best value of each metric over the earlier runs.
    Best,
}

#[derive(Debug, Clone)]
pub struct TrendSettings {
    /// Run directories (`<output_root>/<name>`), or folders of run directories.
    pub runs: Vec<PathBuf>,
    /// Where `trend.html` and `trend.md` are written.
    pub output: PathBuf,
    /// Metrics tabulated and checked for regressions (names as in metrics.json).
    pub metrics: Vec<String>,
    /// A drop of the distilled student larger than this (absolute) is a regression.
    pub threshold: f64,
    pub against: Against,
    /// Runs shown in the table (the charts show all).
    pub last: usize,
}

/// One completed run.
#[derive(Debug, Clone)]
pub struct RunPoint {
    pub dir: PathBuf,
    pub label: String,
    pub finished_unix: u64,
    metrics: Value,
    /// The run's health warnings (its completed report's `health.json`); None when the
    /// run has no completed report or the file does not read.
    pub health: Option<Vec<crate::pipeline::health::Finding>>,
}

impl RunPoint {
    /// A metric of one system: `model` is `base` or `distilled`, `system` is `student`
    /// or `student+teacher`. NaN when the run does not have it.
    pub fn value(&self, dataset: &str, model: &str, system: &str, metric: &str) -> f64 {
        self.metrics[dataset][model][system][metric]
            .as_f64()
            .unwrap_or(f64::NAN)
    }
}

/// A drop of the distilled student beyond the threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct Regression {
    pub dataset: String,
    pub metric: String,
    pub run: String,
    pub value: f64,
    pub reference_run: String,
    pub reference: f64,
}

impl std::fmt::Display for Regression {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {} has {:.4}, {} had {:.4} ({:+.4})",
            self.dataset,
            self.metric,
            self.run,
            self.value,
            self.reference_run,
            self.reference,
            self.value - self.reference
        )
    }
}

#[derive(Debug)]
pub struct TrendOutcome {
    pub runs: Vec<RunPoint>,
    /// Directories given (or found) that have no completed `eval` stage, and why.
    pub skipped: Vec<(PathBuf, String)>,
    /// Regressions of the newest run.
    pub regressions: Vec<Regression>,
    pub html: PathBuf,
    pub markdown: PathBuf,
}

fn is_run(dir: &Path) -> bool {
    dir.join("eval").is_dir() || dir.join("mine").is_dir() || dir.join("train").is_dir()
}

/// Shell wildcard match: `*` any run of characters, `?` one character.
fn wildcard(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// A path whose last component is a pattern (`*`, `?`) that the shell left unexpanded
/// (quoted, or from a systemd unit): the matching entries of its folder, sorted.
fn glob(path: &Path) -> Result<Option<Vec<PathBuf>>> {
    let Some(pattern) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(None);
    };
    if path.exists() || !pattern.contains(['*', '?']) {
        return Ok(None);
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut found: Vec<PathBuf> = std::fs::read_dir(&parent)
        .map_err(|e| Error::io(&parent, e))?
        .filter_map(|e| e.ok())
        .filter(|e| wildcard(&pattern, &e.file_name().to_string_lossy()))
        .map(|e| e.path())
        .collect();
    if found.is_empty() {
        return Err(Error::config(path, "no directory matches"));
    }
    found.sort();
    Ok(Some(found))
}

/// A directory left out of the trend, and why.
type Skipped = (PathBuf, String);

/// The run directories named: patterns are expanded, and a folder that is not a run is
/// taken as a folder of runs. A folder that is neither (one holding only a `log.jsonl`, a
/// stray output folder) is skipped with its reason, not an error.
fn expand(paths: &[PathBuf]) -> Result<(Vec<PathBuf>, Vec<Skipped>)> {
    let mut named = Vec::new();
    for p in paths {
        match glob(p)? {
            Some(found) => named.extend(found),
            None => named.push(p.clone()),
        }
    }
    let mut out = Vec::new();
    let mut skipped = Vec::new();
    for p in &named {
        if !p.is_dir() {
            return Err(Error::config(
                p,
                "not a directory (expected a run directory)",
            ));
        }
        if is_run(p) {
            out.push(p.clone());
            continue;
        }
        let mut children: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| Error::io(p, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|c| c.is_dir() && is_run(c))
            .collect();
        if children.is_empty() {
            skipped.push((
                p.clone(),
                "neither a run directory (no eval/, mine/ or train/) nor a folder of them".into(),
            ));
            continue;
        }
        children.sort();
        out.extend(children);
    }
    out.dedup();
    Ok((out, skipped))
}

fn load(dir: &Path) -> Result<std::result::Result<RunPoint, String>> {
    let eval = dir.join("eval");
    let Some(manifest) = Manifest::read(&eval)? else {
        return Ok(Err("its eval stage has not completed".into()));
    };
    let metrics: Value = read_json(&eval.join(crate::stages::paths::eval::METRICS))?;
    if !metrics.is_object() {
        return Err(Error::config(
            eval.join(crate::stages::paths::eval::METRICS),
            "expected an object of datasets",
        ));
    }
    let label = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    let report = dir.join("report");
    let health = match Manifest::read(&report).ok().flatten() {
        Some(_) => read_json(&report.join(crate::stages::paths::report::HEALTH)).ok(),
        None => None,
    };
    Ok(Ok(RunPoint {
        dir: dir.to_path_buf(),
        label,
        finished_unix: manifest.finished_unix,
        metrics,
        health,
    }))
}

fn datasets(runs: &[RunPoint]) -> Vec<String> {
    let mut names: Vec<String> = runs
        .iter()
        .flat_map(|r| r.metrics.as_object().into_iter().flatten().map(|(k, _)| k))
        .cloned()
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Regressions of run `i` against the runs before it (none for the first run).
pub fn regressions_at(
    runs: &[RunPoint],
    i: usize,
    metrics: &[String],
    threshold: f64,
    against: Against,
) -> Vec<Regression> {
    if i == 0 {
        return Vec::new();
    }
    let run = &runs[i];
    let mut out = Vec::new();
    for ds in datasets(&runs[i..=i]) {
        for m in metrics {
            let value = run.value(&ds, "distilled", "student", m);
            let mut earlier = runs[..i]
                .iter()
                .map(|r| (r, r.value(&ds, "distilled", "student", m)))
                .filter(|(_, v)| v.is_finite());
            let reference = match against {
                Against::Previous => earlier.next_back(),
                Against::Best => {
                    earlier.fold(None, |best: Option<(&RunPoint, f64)>, c| match best {
                        Some(b) if b.1 >= c.1 => Some(b),
                        _ => Some(c),
                    })
                }
            };
            let Some((r, reference)) = reference else {
                continue;
            };
            // A missing value (NaN) in the new run is a regression too.
            let within = reference - value <= threshold;
            if !within {
                out.push(Regression {
                    dataset: ds.clone(),
                    metric: m.clone(),
                    run: run.label.clone(),
                    value,
                    reference_run: r.label.clone(),
                    reference,
                });
            }
        }
    }
    out
}

pub fn run(s: &TrendSettings) -> Result<TrendOutcome> {
    for m in &s.metrics {
        if !Measures::NAMES.contains(&m.as_str()) {
            return Err(Error::Setting {
                key: "--metrics".into(),
                message: format!(
                    "unknown metric `{m}` (one of {})",
                    Measures::NAMES.join(", ")
                ),
            });
        }
    }
    let mut runs = Vec::new();
    let (dirs, mut skipped) = expand(&s.runs)?;
    for dir in dirs {
        match load(&dir)? {
            Ok(r) => runs.push(r),
            Err(why) => skipped.push((dir, why)),
        }
    }
    if runs.is_empty() {
        let why: Vec<String> = skipped
            .iter()
            .map(|(d, why)| format!("{}: {why}", d.display()))
            .collect();
        return Err(Error::Setting {
            key: "RUN_DIR".into(),
            message: format!(
                "no run with a completed eval stage among the directories given ({})",
                why.join("; ")
            ),
        });
    }
    runs.sort_by(|a, b| (a.finished_unix, &a.label).cmp(&(b.finished_unix, &b.label)));
    let newest = runs.len() - 1;
    let regressions = regressions_at(&runs, newest, &s.metrics, s.threshold, s.against);
    let (md, html) = render(s, &runs, &skipped, &regressions);
    std::fs::create_dir_all(&s.output).map_err(|e| Error::io(&s.output, e))?;
    for (name, text) in [(MARKDOWN, &md), (HTML, &html)] {
        let path = s.output.join(name);
        crate::data::atomic::write_bytes(&path, text.as_bytes())?;
    }
    Ok(TrendOutcome {
        runs,
        skipped,
        regressions,
        html: s.output.join(HTML),
        markdown: s.output.join(MARKDOWN),
    })
}

/// One table per dataset: the last runs, each metric of the distilled student with its
/// change from the run before (regressions flagged), the base student and the teacher
/// rerank on the first metric.
fn tables(s: &TrendSettings, runs: &[RunPoint]) -> Vec<Table> {
    let first = runs.len().saturating_sub(s.last.max(1));
    let mut out = Vec::new();
    for ds in datasets(runs) {
        let mut header = vec!["run".to_string(), "finished (UTC)".to_string()];
        for m in &s.metrics {
            header.push(format!("distilled {m}"));
            header.push("change".into());
        }
        let lead = s.metrics.first().map(String::as_str).unwrap_or("ndcg@10");
        header.push(format!("base {lead}"));
        header.push(format!("distilled + teacher {lead}"));
        header.push(format!(
            "gain from the teacher ({lead}, vs the contrastive baseline)"
        ));
        let watch = runs.iter().any(|r| r.metrics[&ds]["role"] == "watch");
        let mut table = Table {
            title: format!(
                "{ds}{}: the last {} runs",
                if watch { " (watch dataset)" } else { "" },
                runs.len() - first
            ),
            header,
            rows: Vec::new(),
            flagged: Vec::new(),
        };
        for i in first..runs.len() {
            let r = &runs[i];
            let mut row = vec![r.label.clone(), utc(r.finished_unix)];
            let flagged: Vec<Regression> =
                regressions_at(runs, i, &s.metrics, s.threshold, Against::Previous)
                    .into_iter()
                    .filter(|g| g.dataset == ds)
                    .collect();
            for m in &s.metrics {
                let v = r.value(&ds, "distilled", "student", m);
                let prev = (i > 0)
                    .then(|| runs[i - 1].value(&ds, "distilled", "student", m))
                    .filter(|p| p.is_finite());
                row.push(fmt(v));
                row.push(prev.map_or("-".into(), |p| delta(v - p)));
                if flagged.iter().any(|g| &g.metric == m) {
                    let row_i = table.rows.len();
                    table.flagged.push((row_i, row.len() - 2));
                    table.flagged.push((row_i, row.len() - 1));
                }
            }
            row.push(fmt(r.value(&ds, "base", "student", lead)));
            row.push(fmt(r.value(&ds, "distilled", "student+teacher", lead)));
            let baseline = r.value(&ds, "baseline", "student", lead);
            row.push(match baseline.is_finite() {
                true => delta(r.value(&ds, "distilled", "student", lead) - baseline),
                false => "-".into(),
            });
            table.rows.push(row);
        }
        out.push(table);
    }
    out
}

fn render(
    s: &TrendSettings,
    runs: &[RunPoint],
    skipped: &[(PathBuf, String)],
    regressions: &[Regression],
) -> (String, String) {
    let newest = &runs[runs.len() - 1];
    let title = format!("distill trend: {} runs", runs.len());
    let against = match s.against {
        Against::Previous => "the run before it",
        Against::Best => "the best earlier run",
    };
    let verdict = if regressions.is_empty() {
        format!(
            "No regression: the newest run `{}` is within {} of {against} on {} (distilled student).",
            newest.label,
            s.threshold,
            s.metrics.join(", ")
        )
    } else {
        format!(
            "REGRESSION: the newest run `{}` dropped more than {} below {against}:",
            newest.label, s.threshold
        )
    };
    let mut md = format!("# {title}\n\n{verdict}\n\n");
    let mut html = html_head(&title);
    let _ = writeln!(html, "<p class=\"verdict\">{}</p>", esc(&verdict));
    if !regressions.is_empty() {
        html.push_str("<ul class=\"regressions\">\n");
        for g in regressions {
            let _ = writeln!(md, "- {g}");
            let _ = writeln!(html, "<li>{}</li>", esc(&g.to_string()));
        }
        html.push_str("</ul>\n");
        md.push('\n');
    }
    md.push_str("## Health\n\n");
    html.push_str("<h2>Health</h2>\n");
    let first = runs.len().saturating_sub(s.last.max(1));
    let rows: Vec<Vec<String>> = runs[first..]
        .iter()
        .map(|r| match &r.health {
            Some(found) => {
                let checks: Vec<&str> = found.iter().map(|f| f.check.as_str()).collect();
                vec![
                    r.label.clone(),
                    found.len().to_string(),
                    if checks.is_empty() {
                        "-".into()
                    } else {
                        checks.join(", ")
                    },
                ]
            }
            None => vec![r.label.clone(), "?".into(), "no completed report".into()],
        })
        .collect();
    let health = Table::new(
        "Health warnings per run",
        &["run", "warnings", "checks"],
        rows,
    );
    health.markdown(&mut md);
    health.html(&mut html);
    let newest_health = newest.health.as_deref().unwrap_or_default();
    if !newest_health.is_empty() {
        let _ = writeln!(md, "The newest run `{}`:\n", newest.label);
        let _ = writeln!(
            html,
            "<p>The newest run <code>{}</code>:</p>\n<ul>",
            esc(&newest.label)
        );
        for f in newest_health {
            let _ = writeln!(md, "- {}", f.message);
            let _ = writeln!(html, "<li>{}</li>", esc(&f.message));
        }
        html.push_str("</ul>\n");
        md.push('\n');
    }
    md.push_str("## Last runs\n\n");
    html.push_str("<h2>Last runs</h2>\n");
    for t in tables(s, runs) {
        t.markdown(&mut md);
        t.html(&mut html);
    }
    md.push_str("## Metrics over time\n\nThe charts are in trend.html (inline SVG).\n\n");
    html.push_str("<h2>Metrics over time</h2>\n");
    let x: Vec<f64> = (0..runs.len()).map(|i| i as f64).collect();
    let labels = [utc(runs[0].finished_unix), utc(newest.finished_unix)];
    for ds in datasets(runs) {
        for m in Measures::NAMES {
            let series: Vec<(String, Vec<f64>)> = [
                ("base student", "base", "student"),
                ("distilled student", "distilled", "student"),
                ("distilled + teacher", "distilled", "student+teacher"),
            ]
            .iter()
            .map(|(name, model, system)| {
                (
                    name.to_string(),
                    runs.iter()
                        .map(|r| r.value(&ds, model, system, m))
                        .collect(),
                )
            })
            .collect();
            let name = format!("{ds} {m}");
            let _ = writeln!(md, "- {name}");
            let _ = write!(
                html,
                "<h3>{}</h3>\n{}",
                esc(&name),
                svg_chart(&name, &x, &series, [&labels[0], &labels[1]], ["run", m])
            );
        }
    }
    md.push_str("\n## Runs\n\n");
    html.push_str("<h2>Runs</h2>\n<ul>\n");
    for r in runs {
        let line = format!(
            "{} ({}): {}",
            r.label,
            utc(r.finished_unix),
            r.dir.display()
        );
        let _ = writeln!(md, "- {line}");
        let _ = writeln!(html, "<li>{}</li>", esc(&line));
    }
    for (dir, why) in skipped {
        let line = format!("skipped {}: {why}", dir.display());
        let _ = writeln!(md, "- {line}");
        let _ = writeln!(html, "<li>{}</li>", esc(&line));
    }
    html.push_str("</ul>\n");
    html.push_str(HTML_TAIL);
    (md, html)
}

#[cfg(test)]
#[path = "trend_tests.rs"]
mod tests;
