//! The parts of the run report that read the stages' outputs beyond their manifests: the
//! teacher's score distributions (from `score`'s table) and, per dataset, the queries the
//! distilled student improved and hurt most (from `eval`'s per-query table and runs).
use crate::data::beir::Dataset;
use crate::data::pairs::{for_each_batch_of, read_batches};
use crate::error::{Error, Result};
use crate::pipeline::Pipeline;
use crate::render::{fmt, svg_histogram, Table};
use crate::stages::paths::StageId;
use arrow::array::{Array, BooleanArray, Float32Array, Float64Array, StringArray};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

/// Per trained dataset, an SVG histogram of the teacher's scores of the labelled
/// positives against the mined negatives.
pub fn score_histograms(p: &Pipeline) -> Result<Vec<(String, String)>> {
    let path = p
        .run_dir
        .join(StageId::Score.name())
        .join(crate::stages::paths::score::OUTPUT);
    // Three columns of the table, a batch at a time (the ids are not read: at 30M pairs
    // the whole table would be gigabytes).
    let mut by_dataset: BTreeMap<String, [Vec<f64>; 2]> = BTreeMap::new();
    let names = ["dataset", "is_positive", "teacher_score"];
    for_each_batch_of(&path, &names, |batch| {
        let Some(scores) = batch.column_by_name("teacher_score") else {
            return Ok(());
        };
        let scores = scores
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| Error::output(&path, "column `teacher_score` is not float32"))?;
        let positive = batch
            .column_by_name("is_positive")
            .and_then(|c| c.as_any().downcast_ref::<BooleanArray>())
            .ok_or_else(|| Error::output(&path, "column `is_positive` is missing"))?;
        let dataset = strings(&batch, "dataset", &path)?;
        for i in 0..batch.num_rows() {
            let side = usize::from(!(positive.is_valid(i) && positive.value(i)));
            let entry = match by_dataset.get_mut(dataset.value(i)) {
                Some(e) => e,
                None => by_dataset.entry(dataset.value(i).to_string()).or_default(),
            };
            entry[side].push(scores.value(i) as f64);
        }
        Ok(())
    })?;
    Ok(by_dataset
        .into_iter()
        .map(|(ds, [positives, negatives])| {
            let title = format!("{ds}: teacher scores of positives and negatives");
            let series = [
                ("positives".to_string(), positives),
                ("negatives".to_string(), negatives),
            ];
            let svg = svg_histogram(&title, &series, 40, ["teacher score", "share of the pairs"]);
            (title, svg)
        })
        .collect())
}

/// A string column of a record batch, by name.
fn strings<'a>(
    batch: &'a arrow::record_batch::RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a StringArray> {
    batch
        .column_by_name(name)
        .and_then(|c| c.as_any().downcast_ref::<StringArray>())
        .ok_or_else(|| Error::output(path, format!("column `{name}` is missing or not a string")))
}

/// Per (dataset, model, query id), nDCG@10 of the student alone (`per_query.parquet`).
fn ndcg_by_query(path: &Path) -> Result<HashMap<(String, String, String), f64>> {
    let mut out = HashMap::new();
    for batch in read_batches(path)? {
        let (ds, model, q) = (
            strings(&batch, "dataset", path)?,
            strings(&batch, "model", path)?,
            strings(&batch, "query_id", path)?,
        );
        let v = batch
            .column_by_name("student ndcg@10")
            .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
            .ok_or_else(|| Error::output(path, "column `student ndcg@10` is missing"))?;
        for i in 0..batch.num_rows() {
            let key = (ds.value(i).into(), model.value(i).into(), q.value(i).into());
            out.insert(key, v.value(i));
        }
    }
    Ok(out)
}

/// Per query of `wanted`, its documents in the order of the TREC run file at `path` (rank
/// order, as eval writes it). Every line is checked; only the wanted queries' are kept
/// (a run of 1,000 documents a query holds millions of lines).
fn read_run(path: &Path, wanted: &HashSet<&str>) -> Result<HashMap<String, Vec<String>>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let mut f = line.split_whitespace();
        let (Some(q), Some(_), Some(d)) = (f.next(), f.next(), f.next()) else {
            return Err(six_fields(path, n));
        };
        if f.count() != 3 {
            return Err(six_fields(path, n));
        }
        if wanted.contains(q) {
            out.entry(q.into()).or_default().push(d.into());
        }
    }
    Ok(out)
}

fn six_fields(path: &Path, n: usize) -> Error {
    Error::Input {
        path: path.to_path_buf(),
        line: n + 1,
        message: "a TREC run line has 6 fields".into(),
    }
}

/// Per dataset, the `n` judged queries whose nDCG@10 the distilled student raised most
/// and the `n` it lowered most against the base student: the query's text, both nDCG@10,
/// the rank of its first relevant document in each student's ranking (1-based; `-` when
/// not retrieved) and that document (its id and the start of its text, which begins with
/// its title where the corpus has titles).
pub fn query_changes(p: &Pipeline, n: usize) -> Result<Vec<Table>> {
    let eval = p.run_dir.join(StageId::Eval.name());
    let ndcg = ndcg_by_query(&eval.join(crate::stages::paths::eval::PER_QUERY))?;
    let mut tables = Vec::new();
    for d in &p.datasets {
        let ds = Dataset::load(&d.path, &[&d.eval_split], d.strict)?;
        let judged = &ds.qrels[&d.eval_split];
        let mut changes: Vec<(f64, &String)> = judged
            .keys()
            .filter_map(|q| {
                let get = |model: &str| {
                    ndcg.get(&(d.name.clone(), model.to_string(), q.clone()))
                        .copied()
                };
                Some((get("distilled")? - get("base")?, q))
            })
            .collect();
        changes.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(b.1)));
        let improved: Vec<_> = changes.iter().take(n).filter(|c| c.0 > 0.0).collect();
        let hurt: Vec<_> = changes.iter().rev().take(n).filter(|c| c.0 < 0.0).collect();
        let wanted: HashSet<&str> = improved.iter().chain(&hurt).map(|c| c.1.as_str()).collect();
        let run =
            |label: &str| read_run(&eval.join(format!("runs/{}.{label}.trec", d.name)), &wanted);
        let (base_run, distilled_run) = rayon::join(|| run("base"), || run("distilled"));
        let (base_run, distilled_run) = (base_run?, distilled_run?);
        let first_relevant = |run: &HashMap<String, Vec<String>>, q: &str| {
            let relevant = &judged[q];
            run.get(q).and_then(|docs| {
                docs.iter()
                    .position(|doc| relevant.get(doc).is_some_and(|&g| g > 0))
                    .map(|r| (r + 1, docs[r].clone()))
            })
        };
        for (title, picked) in [("improved most", improved), ("hurt most", hurt)] {
            let mut rows: Vec<Vec<String>> = picked
                .into_iter()
                .map(|&(change, q)| {
                    let (b, dd) = (
                        first_relevant(&base_run, q),
                        first_relevant(&distilled_run, q),
                    );
                    let rank = |r: &Option<(usize, String)>| {
                        r.as_ref().map_or("-".into(), |r| r.0.to_string())
                    };
                    // The relevant document the distilled student ranks first (else the base's).
                    let doc = match dd.as_ref().or(b.as_ref()) {
                        None => String::from("-"),
                        Some((_, id)) => {
                            let text = ds.corpus.text(id)?.unwrap_or_default();
                            let text: String = text.chars().take(80).collect();
                            format!("{id}: {text}")
                        }
                    };
                    let before = ndcg[&(d.name.clone(), "base".into(), q.clone())];
                    Ok(vec![
                        ds.queries.text(q)?.unwrap_or_default().into_owned(),
                        fmt(before),
                        fmt(before + change),
                        rank(&b),
                        rank(&dd),
                        doc,
                    ])
                })
                .collect::<Result<_>>()?;
            if rows.is_empty() {
                let none = match title.starts_with("improved") {
                    true => "no query's nDCG@10 rose".to_string(),
                    false => "no query's nDCG@10 fell".to_string(),
                };
                rows.push(
                    [none]
                        .into_iter()
                        .chain(std::iter::repeat_n(String::new(), 5))
                        .collect(),
                );
            }
            tables.push(Table::new(
                format!("{}: the queries the distilled student {title}", d.name),
                &[
                    "query",
                    "nDCG@10 base",
                    "nDCG@10 distilled",
                    "first relevant, base rank",
                    "distilled rank",
                    "relevant document",
                ],
                rows,
            ));
        }
    }
    Ok(tables)
}
