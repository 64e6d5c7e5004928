//! The files `distill export-data` writes: FlagEmbedding's fine-tuning JSONL with teacher
//! scores, and sentence-transformers datasets in Parquet (`query`, `positive`,
//! `negative_1` ... `negative_n`, `label`) for `MarginMSELoss` and `DistillKLDivLoss`.
use crate::data::atomic::write_atomic;
use crate::data::pairs::write_batch;
use crate::error::{Error, Result};
use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, ListBuilder, RecordBatch, StringArray,
};
use arrow::datatypes::{Field, Schema};
use std::path::Path;
use std::sync::Arc;

/// One training query with its texts and teacher scores.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportQuery<'a> {
    pub query: &'a str,
    /// (text, teacher score) of each positive.
    pub positives: Vec<(&'a str, f32)>,
    /// The negatives in the table's order (the student's rank).
    pub negatives: Vec<Negative<'a>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Negative<'a> {
    pub text: &'a str,
    pub score: f32,
    /// Flagged by the score stage as a likely false negative.
    pub flagged: bool,
}

/// The queries that are written, and how many negatives each row has.
#[derive(Debug, Clone, PartialEq)]
pub struct Selection<'a> {
    pub queries: Vec<ExportQuery<'a>>,
    /// Negatives per query; `None`: every query keeps all of its own.
    pub negatives: Option<usize>,
    /// Queries dropped for having fewer than `negatives` negatives.
    pub dropped: usize,
}

/// With `negatives = Some(n)`, or with `fixed` (a format with one column per negative)
/// where `n` is then the smallest count among the queries: the queries with at least `n`
/// negatives, each cut to its first `n`; the others are dropped (counted). Otherwise every
/// query as it is.
pub fn select(
    queries: Vec<ExportQuery<'_>>,
    negatives: Option<usize>,
    fixed: bool,
) -> Selection<'_> {
    let n = negatives.or_else(|| {
        fixed
            .then(|| queries.iter().map(|q| q.negatives.len()).min())
            .flatten()
    });
    let Some(n) = n else {
        return Selection {
            queries,
            negatives: None,
            dropped: 0,
        };
    };
    let before = queries.len();
    let kept: Vec<ExportQuery> = queries
        .into_iter()
        .filter(|q| q.negatives.len() >= n)
        .map(|mut q| {
            q.negatives.truncate(n);
            q
        })
        .collect();
    Selection {
        dropped: before - kept.len(),
        queries: kept,
        negatives: Some(n),
    }
}

/// What a writer wrote: rows (JSONL lines, Parquet rows) and (query, document) pairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Written {
    pub rows: usize,
    pub pairs: usize,
}

/// One line of FlagEmbedding's fine-tuning data with teacher scores.
#[derive(serde::Serialize)]
struct FlagLine<'a> {
    query: &'a str,
    pos: Vec<&'a str>,
    neg: Vec<&'a str>,
    pos_scores: Vec<f32>,
    neg_scores: Vec<f32>,
    /// Parallel to `neg`, with `--keep-false-negatives` only.
    #[serde(skip_serializing_if = "Option::is_none")]
    neg_flagged: Option<Vec<bool>>,
}

fn flag_line<'a>(q: &ExportQuery<'a>, with_flags: bool) -> FlagLine<'a> {
    FlagLine {
        query: q.query,
        pos: q.positives.iter().map(|p| p.0).collect(),
        neg: q.negatives.iter().map(|n| n.text).collect(),
        pos_scores: q.positives.iter().map(|p| p.1).collect(),
        neg_scores: q.negatives.iter().map(|n| n.score).collect(),
        neg_flagged: with_flags.then(|| q.negatives.iter().map(|n| n.flagged).collect()),
    }
}

/// FlagEmbedding JSONL, one line per query, written atomically.
pub fn write_flagembedding(
    path: &Path,
    queries: &[ExportQuery],
    with_flags: bool,
) -> Result<Written> {
    write_atomic(path, |file| {
        use std::io::Write;
        let mut out = std::io::BufWriter::new(file);
        for q in queries {
            serde_json::to_writer(&mut out, &flag_line(q, with_flags)).map_err(|source| {
                Error::Json {
                    path: path.to_path_buf(),
                    source,
                }
            })?;
            out.write_all(b"\n").map_err(|e| Error::io(path, e))?;
        }
        out.flush().map_err(|e| Error::io(path, e))
    })?;
    Ok(Written {
        rows: queries.len(),
        pairs: queries
            .iter()
            .map(|q| q.positives.len() + q.negatives.len())
            .sum(),
    })
}

/// What the `label` column of a sentence-transformers dataset holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Label {
    /// `[score(q, pos) - score(q, neg_i) for i in 1..n]`: `MarginMSELoss`.
    Margins,
    /// `[score(q, pos), score(q, neg_1), ..., score(q, neg_n)]`: `DistillKLDivLoss`.
    Scores,
}

impl Label {
    fn values(self, positive: f32, negatives: &[Negative]) -> Vec<f32> {
        match self {
            Label::Margins => negatives.iter().map(|n| positive - n.score).collect(),
            Label::Scores => std::iter::once(positive)
                .chain(negatives.iter().map(|n| n.score))
                .collect(),
        }
    }
}

/// A sentence-transformers dataset in Parquet, one row per (query, positive), written
/// atomically: `query`, `positive`, `negative_1` ... `negative_n`, `label` (a list of
/// floats), and with `with_flags` a last column `negative_flagged` (a list of `n` bools,
/// which a trainer must drop: it would read it as a text column). Every query has exactly
/// `n` negatives ([`select`]).
pub fn write_sentence_transformers(
    path: &Path,
    queries: &[ExportQuery],
    n: usize,
    label: Label,
    with_flags: bool,
) -> Result<Written> {
    let rows = || {
        queries
            .iter()
            .flat_map(|q| q.positives.iter().map(move |p| (q, p)))
    };
    let mut fields = vec![
        Field::new("query", arrow::datatypes::DataType::Utf8, false),
        Field::new("positive", arrow::datatypes::DataType::Utf8, false),
    ];
    let mut cols: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(rows().map(|(q, _)| q.query))),
        Arc::new(StringArray::from_iter_values(rows().map(|(_, p)| p.0))),
    ];
    for i in 0..n {
        fields.push(Field::new(
            format!("negative_{}", i + 1),
            arrow::datatypes::DataType::Utf8,
            false,
        ));
        cols.push(Arc::new(StringArray::from_iter_values(
            rows().map(|(q, _)| q.negatives[i].text),
        )));
    }
    let mut labels = ListBuilder::new(Float32Builder::new());
    let mut flags = ListBuilder::new(BooleanBuilder::new());
    for (q, p) in rows() {
        labels.append_value(label.values(p.1, &q.negatives).into_iter().map(Some));
        flags.append_value(q.negatives.iter().map(|n| Some(n.flagged)));
    }
    let mut push_list = |name: &str, array: ArrayRef| {
        fields.push(Field::new(name, array.data_type().clone(), false));
        cols.push(array);
    };
    push_list("label", Arc::new(labels.finish()));
    if with_flags {
        push_list("negative_flagged", Arc::new(flags.finish()));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|source| Error::Arrow {
        path: path.to_path_buf(),
        source,
    })?;
    write_batch(path, schema, &batch)?;
    Ok(Written {
        rows: batch.num_rows(),
        pairs: batch.num_rows() * (1 + n),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query<'a>(text: &'a str, scores: &[f32], flagged: &[bool]) -> ExportQuery<'a> {
        ExportQuery {
            query: text,
            positives: vec![("p", 5.0)],
            negatives: scores
                .iter()
                .zip(flagged)
                .map(|(&score, &flagged)| Negative {
                    text: "n",
                    score,
                    flagged,
                })
                .collect(),
        }
    }

    #[test]
    fn fixed_width_takes_the_smallest_count_or_the_given_one() {
        let qs = || {
            vec![
                query("a", &[1.0, 2.0, 3.0], &[false; 3]),
                query("b", &[1.0, 2.0], &[false; 2]),
            ]
        };
        let free = select(qs(), None, false);
        assert_eq!((free.negatives, free.dropped), (None, 0));
        assert_eq!(free.queries[0].negatives.len(), 3);
        let smallest = select(qs(), None, true);
        assert_eq!((smallest.negatives, smallest.dropped), (Some(2), 0));
        assert_eq!(smallest.queries[0].negatives[1].score, 2.0);
        assert_eq!(smallest.queries[0].negatives.len(), 2);
        let three = select(qs(), Some(3), false);
        assert_eq!((three.negatives, three.dropped), (Some(3), 1));
        assert_eq!(three.queries[0].query, "a");
        assert_eq!(select(Vec::new(), None, true).negatives, None);
    }

    #[test]
    fn labels_are_margins_or_scores() {
        let q = query("a", &[1.0, 2.5], &[false, true]);
        assert_eq!(Label::Margins.values(5.0, &q.negatives), vec![4.0, 2.5]);
        assert_eq!(Label::Scores.values(5.0, &q.negatives), vec![5.0, 1.0, 2.5]);
    }

    #[test]
    fn flag_lines_carry_flags_only_when_asked() {
        let q = query("a \"b\"", &[0.25], &[true]);
        let plain = serde_json::to_string(&flag_line(&q, false)).unwrap();
        assert_eq!(
            plain,
            r#"{"query":"a \"b\"","pos":["p"],"neg":["n"],"pos_scores":[5.0],"neg_scores":[0.25]}"#
        );
        let flagged = serde_json::to_string(&flag_line(&q, true)).unwrap();
        assert!(flagged.ends_with(r#""neg_flagged":[true]}"#), "{flagged}");
    }
}
