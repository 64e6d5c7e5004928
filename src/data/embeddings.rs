//! Parquet file of embeddings: `id` (Utf8) and `embedding` (FixedSizeList<Float32, dim>).
use crate::data::atomic::{AtomicFile, Sha256Writer};
use crate::error::{Error, Result};
use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use std::path::Path;
use std::sync::Arc;

/// Rows per record batch / row group written.
const ROWS_PER_GROUP: usize = 8192;

pub fn embeddings_schema(dim: i32) -> Schema {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    Schema::new(vec![
        Field::new("id", DataType::Utf8, false),
        Field::new("embedding", DataType::FixedSizeList(item, dim), false),
    ])
}

/// An embeddings file written in pieces, in row order, under a temporary name: nothing
/// is at `path` until [`EmbeddingsWriter::finish`], and a writer dropped unfinished leaves
/// nothing. Row groups are [`ROWS_PER_GROUP`] rows, so memory does not grow with the file.
pub struct EmbeddingsWriter {
    file: AtomicFile,
    writer: ArrowWriter<Sha256Writer<std::fs::File>>,
    schema: Arc<Schema>,
    dim: usize,
}

impl EmbeddingsWriter {
    /// Start the file; `metadata` goes into the Parquet key-value metadata.
    pub fn create(path: &Path, dim: usize, metadata: &[(&str, String)]) -> Result<Self> {
        let schema = Arc::new(embeddings_schema(dim as i32));
        let kv = metadata
            .iter()
            .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.to_string(), v.clone()))
            .collect();
        let props = WriterProperties::builder()
            .set_key_value_metadata(Some(kv))
            .set_max_row_group_row_count(Some(ROWS_PER_GROUP))
            .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
            .build();
        let file = AtomicFile::create(path)?;
        let writer = ArrowWriter::try_new(
            Sha256Writer::new(file.handle()?),
            schema.clone(),
            Some(props),
        )
        .map_err(|source| Error::Parquet {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(EmbeddingsWriter {
            file,
            writer,
            schema,
            dim,
        })
    }

    /// Append `ids` and their row-major `values` (`ids.len() x dim`).
    pub fn write<S: AsRef<str>>(&mut self, ids: &[S], values: &[f32]) -> Result<()> {
        let path = self.file.path().to_path_buf();
        let dim = self.dim;
        if values.len() != ids.len() * dim {
            return Err(Error::config(
                &path,
                format!("{} values for {} ids of dim {dim}", values.len(), ids.len()),
            ));
        }
        for start in (0..ids.len()).step_by(ROWS_PER_GROUP) {
            let end = (start + ROWS_PER_GROUP).min(ids.len());
            let batch = embeddings_batch(
                &self.schema,
                &ids[start..end],
                &values[start * dim..end * dim],
                dim,
            )
            .map_err(|source| Error::Arrow {
                path: path.clone(),
                source,
            })?;
            self.writer.write(&batch).map_err(|source| Error::Parquet {
                path: path.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Close the file and rename it into place; its content's sha256 (hex), hashed as it
    /// was written.
    pub fn finish(self) -> Result<String> {
        let path = self.file.path().to_path_buf();
        // `into_inner` writes the footer (once: it is not to follow `close`).
        let (_, digest) = self
            .writer
            .into_inner()
            .map_err(|source| Error::Parquet {
                path: path.clone(),
                source,
            })?
            .finish()
            .map_err(|e| Error::io(&path, e))?;
        self.file.commit()?;
        Ok(digest)
    }
}

/// Run `produce` with a function that queues rows (ids and row-major values) for
/// `writer`, which writes them on its own thread, so compression and writing stay off
/// the caller's path (a queue of two). The file is committed when `produce` and every
/// write succeeded (with its content's sha256, hex); otherwise nothing is left at its
/// path, and a failed write's error is the one returned.
pub fn write_behind<R>(
    mut writer: EmbeddingsWriter,
    produce: impl FnOnce(&mut dyn FnMut(Vec<String>, Vec<f32>) -> Result<()>) -> Result<R>,
) -> Result<(R, String)> {
    let path = writer.file.path().to_path_buf();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<String>, Vec<f32>)>(2);
        let written = scope.spawn(move || -> Result<EmbeddingsWriter> {
            for (ids, values) in rx {
                writer.write(&ids, &values)?;
            }
            Ok(writer)
        });
        let mut queue = |ids: Vec<String>, values: Vec<f32>| {
            tx.send((ids, values))
                .map_err(|_| Error::output(&path, "the writer stopped before the last rows"))
        };
        let produced = produce(&mut queue);
        drop(tx);
        let writer = written
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))?;
        let out = produced?;
        let digest = writer.finish()?;
        Ok((out, digest))
    })
}

/// Write `ids` and row-major `values` (`ids.len() x dim`) to `path` atomically: the file
/// is written under a temporary name beside it and renamed when closed, so a reader
/// never sees a half-written file. `metadata` goes into the Parquet key-value metadata.
pub fn write_embeddings<S: AsRef<str>>(
    path: &Path,
    ids: &[S],
    values: &[f32],
    dim: usize,
    metadata: &[(&str, String)],
) -> Result<()> {
    let mut w = EmbeddingsWriter::create(path, dim, metadata)?;
    w.write(ids, values)?;
    w.finish().map(|_| ())
}

fn embeddings_batch<S: AsRef<str>>(
    schema: &Arc<Schema>,
    ids: &[S],
    values: &[f32],
    dim: usize,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let flat = Arc::new(Float32Array::from(values.to_vec()));
    let list = FixedSizeListArray::try_new(item, dim as i32, flat, None)?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            ids.iter().map(|s| s.as_ref()),
        )),
        Arc::new(list),
    ];
    RecordBatch::try_new(schema.clone(), columns)
}

/// Read back an embeddings file: ids and row-major values.
pub fn read_embeddings(path: &Path) -> Result<(Vec<String>, Vec<f32>, usize)> {
    let (mut ids, mut values, mut dim) = (Vec::new(), Vec::new(), 0usize);
    for_each_embeddings(path, |batch_ids, batch_values, d| {
        dim = d;
        ids.extend(batch_ids.iter().map(|s| s.unwrap_or_default().to_string()));
        values.extend_from_slice(batch_values);
        Ok(())
    })?;
    Ok((ids, values, dim))
}

/// Hand an embeddings file to `f` one record batch at a time: its ids, its row-major
/// values and the dimension, so a reader need not hold the whole file.
pub fn for_each_embeddings(
    path: &Path,
    mut f: impl FnMut(&StringArray, &[f32], usize) -> Result<()>,
) -> Result<()> {
    use arrow::array::Array;
    let bad = |m: &str| Error::config(path, m.to_string());
    crate::data::pairs::for_each_batch(path, |batch| {
        let id = batch
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| bad("column `id` (Utf8) is missing"))?;
        let emb = batch
            .column_by_name("embedding")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
            .ok_or_else(|| bad("column `embedding` (FixedSizeList<Float32>) is missing"))?;
        let dim = emb.value_length() as usize;
        let flat = emb
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| bad("`embedding` items are not Float32"))?;
        let offset = emb.offset() * dim;
        f(id, &flat.values()[offset..offset + emb.len() * dim], dim)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    /// The digest `write_behind` gives is the sha256 of the committed file's content (what
    /// a cache check reads it against), over row groups written in several pieces; a
    /// failed produce leaves nothing at the path.
    #[test]
    fn write_behind_gives_the_written_files_sha256() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.parquet");
        let dim = 3;
        let ids: Vec<String> = (0..20_000).map(|i| format!("d{i}")).collect();
        let values: Vec<f32> = (0..ids.len() * dim).map(|i| i as f32 * 0.25).collect();
        let writer = EmbeddingsWriter::create(&path, dim, &[("k", "v".into())]).unwrap();
        let (rows, digest) = write_behind(writer, |queue| {
            for start in (0..ids.len()).step_by(7_000) {
                let end = (start + 7_000).min(ids.len());
                queue(
                    ids[start..end].to_vec(),
                    values[start * dim..end * dim].to_vec(),
                )?;
            }
            Ok(ids.len())
        })
        .unwrap();
        assert_eq!(rows, 20_000);
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(
            digest,
            crate::data::atomic::hex(&sha2::Sha256::digest(&bytes))
        );
        let (got_ids, got_values, got_dim) = read_embeddings(&path).unwrap();
        assert_eq!((got_ids, got_values, got_dim), (ids.clone(), values, dim));

        let failed = dir.path().join("f.parquet");
        let writer = EmbeddingsWriter::create(&failed, dim, &[]).unwrap();
        let r = write_behind(writer, |queue| {
            queue(ids[..2].to_vec(), vec![0.0; 2 * dim])?;
            Err::<(), _>(Error::output(&failed, "stopped"))
        });
        assert!(r.is_err());
        assert!(!failed.exists());
    }
}
