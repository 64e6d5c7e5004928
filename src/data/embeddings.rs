//! Parquet file of embeddings: `id` (Utf8) and `embedding` (FixedSizeList<Float32, dim>).
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

/// Write `ids` and row-major `values` (`ids.len() x dim`) to `path` atomically: the file
/// is written under a temporary name beside it and renamed when closed, so a reader
/// never sees a half-written file. `metadata` goes into the Parquet key-value metadata.
pub fn write_embeddings(
    path: &Path,
    ids: &[String],
    values: &[f32],
    dim: usize,
    metadata: &[(&str, String)],
) -> Result<()> {
    if values.len() != ids.len() * dim {
        return Err(Error::config(
            path,
            format!("{} values for {} ids of dim {dim}", values.len(), ids.len()),
        ));
    }
    let schema = Arc::new(embeddings_schema(dim as i32));
    let kv = metadata
        .iter()
        .map(|(k, v)| parquet::file::metadata::KeyValue::new(k.to_string(), v.clone()))
        .collect();
    let props = WriterProperties::builder()
        .set_key_value_metadata(Some(kv))
        .set_compression(parquet::basic::Compression::ZSTD(Default::default()))
        .build();
    crate::data::atomic::write_atomic(path, |file| {
        let perr = |source| Error::Parquet {
            path: path.to_path_buf(),
            source,
        };
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(perr)?;
        for start in (0..ids.len()).step_by(ROWS_PER_GROUP) {
            let end = (start + ROWS_PER_GROUP).min(ids.len());
            let batch = embeddings_batch(
                &schema,
                &ids[start..end],
                &values[start * dim..end * dim],
                dim,
            )
            .map_err(|source| Error::Arrow {
                path: path.to_path_buf(),
                source,
            })?;
            writer.write(&batch).map_err(perr)?;
        }
        writer.close().map_err(perr)?;
        Ok(())
    })
}

fn embeddings_batch(
    schema: &Arc<Schema>,
    ids: &[String],
    values: &[f32],
    dim: usize,
) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let flat = Arc::new(Float32Array::from(values.to_vec()));
    let list = FixedSizeListArray::try_new(item, dim as i32, flat, None)?;
    let columns: Vec<ArrayRef> = vec![Arc::new(StringArray::from_iter_values(ids)), Arc::new(list)];
    RecordBatch::try_new(schema.clone(), columns)
}

/// Read back an embeddings file: ids and row-major values.
pub fn read_embeddings(path: &Path) -> Result<(Vec<String>, Vec<f32>, usize)> {
    use arrow::array::Array;
    let bad = |m: &str| Error::config(path, m.to_string());
    let (mut ids, mut values, mut dim) = (Vec::new(), Vec::new(), 0usize);
    for batch in crate::data::pairs::read_batches(path)? {
        let id = batch
            .column_by_name("id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| bad("column `id` (Utf8) is missing"))?;
        let emb = batch
            .column_by_name("embedding")
            .and_then(|c| c.as_any().downcast_ref::<FixedSizeListArray>())
            .ok_or_else(|| bad("column `embedding` (FixedSizeList<Float32>) is missing"))?;
        dim = emb.value_length() as usize;
        let flat = emb
            .values()
            .as_any()
            .downcast_ref::<Float32Array>()
            .ok_or_else(|| bad("`embedding` items are not Float32"))?;
        ids.extend(id.iter().map(|s| s.unwrap_or_default().to_string()));
        let offset = emb.offset() * dim;
        values.extend_from_slice(&flat.values()[offset..offset + emb.len() * dim]);
    }
    Ok((ids, values, dim))
}
