//! Parquet tables of (query, document) pairs: `candidates` (stage mine) and
//! `teacher_scores` (stage score), plus the score stage's shards.
use crate::error::{Error, Result};
use arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Int32Array, RecordBatch, StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

/// Rows of `candidates` / `teacher_scores`, column-wise. The teacher columns are present
/// only in `teacher_scores`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PairTable {
    pub dataset: Vec<String>,
    pub query_id: Vec<String>,
    pub doc_id: Vec<String>,
    /// 1-based rank of the document in the student's ranking of the whole corpus.
    pub rank: Vec<i32>,
    pub student_score: Vec<f32>,
    pub is_positive: Vec<bool>,
    pub teacher_score: Option<Vec<f32>>,
    pub is_false_negative: Option<Vec<bool>>,
}

impl PairTable {
    pub fn len(&self) -> usize {
        self.query_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.query_id.is_empty()
    }

    /// Append the rows of `other` (same columns).
    pub fn extend(&mut self, other: PairTable) {
        self.dataset.extend(other.dataset);
        self.query_id.extend(other.query_id);
        self.doc_id.extend(other.doc_id);
        self.rank.extend(other.rank);
        self.student_score.extend(other.student_score);
        self.is_positive.extend(other.is_positive);
        if let Some(t) = other.teacher_score {
            self.teacher_score.get_or_insert_with(Vec::new).extend(t);
        }
        if let Some(t) = other.is_false_negative {
            self.is_false_negative
                .get_or_insert_with(Vec::new)
                .extend(t);
        }
    }

    fn schema(&self) -> Schema {
        let mut fields = vec![
            Field::new("dataset", DataType::Utf8, false),
            Field::new("query_id", DataType::Utf8, false),
            Field::new("doc_id", DataType::Utf8, false),
            Field::new("rank", DataType::Int32, false),
            Field::new("student_score", DataType::Float32, false),
            Field::new("is_positive", DataType::Boolean, false),
        ];
        if self.teacher_score.is_some() {
            fields.push(Field::new("teacher_score", DataType::Float32, false));
        }
        if self.is_false_negative.is_some() {
            fields.push(Field::new("is_false_negative", DataType::Boolean, false));
        }
        Schema::new(fields)
    }

    fn columns(&self) -> Vec<ArrayRef> {
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(&self.dataset)),
            Arc::new(StringArray::from_iter_values(&self.query_id)),
            Arc::new(StringArray::from_iter_values(&self.doc_id)),
            Arc::new(Int32Array::from(self.rank.clone())),
            Arc::new(Float32Array::from(self.student_score.clone())),
            Arc::new(BooleanArray::from(self.is_positive.clone())),
        ];
        if let Some(t) = &self.teacher_score {
            cols.push(Arc::new(Float32Array::from(t.clone())));
        }
        if let Some(t) = &self.is_false_negative {
            cols.push(Arc::new(BooleanArray::from(t.clone())));
        }
        cols
    }

    /// Write atomically (temporary name, renamed when closed).
    pub fn write(&self, path: &Path) -> Result<()> {
        let schema = Arc::new(self.schema());
        let batch = RecordBatch::try_new(schema.clone(), self.columns()).map_err(|source| {
            Error::Arrow {
                path: path.to_path_buf(),
                source,
            }
        })?;
        write_batch(path, schema, &batch)
    }

    /// The `query_id` and `is_positive` columns of the table at `path` alone (a reader
    /// of a few columns skips the others' pages).
    pub fn read_queries_and_positives(path: &Path) -> Result<(Vec<String>, Vec<bool>)> {
        let (mut queries, mut positive) = (Vec::new(), Vec::new());
        for_each_batch_of(path, &["query_id", "is_positive"], |batch| {
            let c = Columns {
                path,
                batch: &batch,
            };
            queries.extend(c.strings("query_id")?);
            positive.extend(
                c.get::<BooleanArray>("is_positive")?
                    .iter()
                    .map(|b| b.unwrap_or(false)),
            );
            Ok(())
        })?;
        Ok((queries, positive))
    }

    pub fn read(path: &Path) -> Result<Self> {
        let mut t = PairTable::default();
        for batch in read_batches(path)? {
            let c = Columns {
                path,
                batch: &batch,
            };
            t.dataset.extend(c.strings("dataset")?);
            t.query_id.extend(c.strings("query_id")?);
            t.doc_id.extend(c.strings("doc_id")?);
            t.rank
                .extend(c.get::<Int32Array>("rank")?.values().iter().copied());
            t.student_score.extend(
                c.get::<Float32Array>("student_score")?
                    .values()
                    .iter()
                    .copied(),
            );
            t.is_positive.extend(
                c.get::<BooleanArray>("is_positive")?
                    .iter()
                    .map(|b| b.unwrap_or(false)),
            );
            if batch.column_by_name("teacher_score").is_some() {
                let v = c.get::<Float32Array>("teacher_score")?;
                t.teacher_score
                    .get_or_insert_with(Vec::new)
                    .extend(v.values().iter().copied());
            }
            if batch.column_by_name("is_false_negative").is_some() {
                let v = c.get::<BooleanArray>("is_false_negative")?;
                t.is_false_negative
                    .get_or_insert_with(Vec::new)
                    .extend(v.iter().map(|b| b.unwrap_or(false)));
            }
        }
        Ok(t)
    }
}

/// One committed shard of teacher scores: rows `start..start + scores.len()` of
/// `candidates`.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreShard {
    pub start: u64,
    pub scores: Vec<f32>,
}

impl ScoreShard {
    pub fn write(&self, path: &Path) -> Result<()> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("row", DataType::UInt64, false),
            Field::new("teacher_score", DataType::Float32, false),
        ]));
        let rows: Vec<u64> = (self.start..self.start + self.scores.len() as u64).collect();
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from(rows)),
            Arc::new(Float32Array::from(self.scores.clone())),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|source| Error::Arrow {
            path: path.to_path_buf(),
            source,
        })?;
        write_batch(path, schema, &batch)
    }

    pub fn read(path: &Path) -> Result<Self> {
        let mut rows = Vec::new();
        let mut scores = Vec::new();
        for batch in read_batches(path)? {
            let c = Columns {
                path,
                batch: &batch,
            };
            rows.extend(c.get::<UInt64Array>("row")?.values().iter().copied());
            scores.extend(
                c.get::<Float32Array>("teacher_score")?
                    .values()
                    .iter()
                    .copied(),
            );
        }
        let start = rows.first().copied().unwrap_or(0);
        if rows.iter().enumerate().any(|(i, &r)| r != start + i as u64) {
            return Err(Error::output(path, "shard rows are not contiguous"));
        }
        Ok(ScoreShard { start, scores })
    }
}

pub fn write_batch(path: &Path, schema: Arc<Schema>, batch: &RecordBatch) -> Result<()> {
    let props = WriterProperties::builder()
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    crate::data::concat::write_batch_parallel(path, schema, batch, props)
}

pub fn read_batches(path: &Path) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    for_each_batch(path, |b| {
        out.push(b);
        Ok(())
    })?;
    Ok(out)
}

/// Hand the record batches of `path` to `f` one at a time, so only one is in memory.
pub fn for_each_batch(path: &Path, f: impl FnMut(RecordBatch) -> Result<()>) -> Result<()> {
    batches_of(path, None, f)
}

/// [`for_each_batch`] with only the columns `names` read (those the file has): a reader
/// of a few columns of a large table skips the others' pages.
pub fn for_each_batch_of(
    path: &Path,
    names: &[&str],
    f: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    batches_of(path, Some(names), f)
}

fn batches_of(
    path: &Path,
    names: Option<&[&str]>,
    mut f: impl FnMut(RecordBatch) -> Result<()>,
) -> Result<()> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let perr = |source| Error::Parquet {
        path: path.to_path_buf(),
        source,
    };
    let mut builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(perr)?;
    if let Some(names) = names {
        let mask = parquet::arrow::ProjectionMask::columns(
            builder.parquet_schema(),
            names.iter().copied(),
        );
        builder = builder.with_projection(mask);
    }
    let reader = builder.build().map_err(perr)?;
    for b in reader {
        f(b.map_err(|source| Error::Arrow {
            path: path.to_path_buf(),
            source,
        })?)?;
    }
    Ok(())
}

struct Columns<'a> {
    path: &'a Path,
    batch: &'a RecordBatch,
}

impl Columns<'_> {
    fn get<T: Array + 'static>(&self, name: &str) -> Result<&T> {
        self.batch
            .column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .ok_or_else(|| {
                Error::config(
                    self.path,
                    format!("column `{name}` is missing or has the wrong type"),
                )
            })
    }

    fn strings(&self, name: &str) -> Result<Vec<String>> {
        Ok(self
            .get::<StringArray>(name)?
            .iter()
            .map(|s| s.unwrap_or_default().to_string())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip() {
        let d = tempfile::tempdir().unwrap();
        let mut t = PairTable {
            dataset: vec!["a".into(), "a".into()],
            query_id: vec!["q".into(), "q".into()],
            doc_id: vec!["d1".into(), "d2".into()],
            rank: vec![3, 1],
            student_score: vec![0.5, 0.9],
            is_positive: vec![true, false],
            teacher_score: None,
            is_false_negative: None,
        };
        t.write(&d.path().join("c.parquet")).unwrap();
        assert_eq!(PairTable::read(&d.path().join("c.parquet")).unwrap(), t);
        t.teacher_score = Some(vec![2.0, -1.0]);
        t.is_false_negative = Some(vec![false, true]);
        t.write(&d.path().join("s.parquet")).unwrap();
        assert_eq!(PairTable::read(&d.path().join("s.parquet")).unwrap(), t);
        // Read by column: only those asked for (and in the file) come back.
        let mut seen = Vec::new();
        let names = ["teacher_score", "dataset", "no_such_column"];
        for_each_batch_of(&d.path().join("s.parquet"), &names, |b| {
            let schema = b.schema();
            let fields = schema.fields().iter().map(|f| f.name().clone());
            seen.push((fields.collect::<Vec<_>>(), b.num_rows()));
            let scores = b.column_by_name("teacher_score").unwrap();
            let scores = scores.as_any().downcast_ref::<Float32Array>().unwrap();
            assert_eq!(scores.values().to_vec(), vec![2.0, -1.0]);
            Ok(())
        })
        .unwrap();
        let want = vec!["dataset".to_string(), "teacher_score".to_string()];
        assert_eq!(seen, vec![(want, 2)]);
        let s = ScoreShard {
            start: 10,
            scores: vec![1.0, 2.0],
        };
        s.write(&d.path().join("shard.parquet")).unwrap();
        assert_eq!(
            ScoreShard::read(&d.path().join("shard.parquet")).unwrap(),
            s
        );
    }
}
