//! A Parquet table of named string and float columns (per-query metrics and the like).
use crate::data::pairs::write_batch;
use crate::error::{Error, Result};
use arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use std::path::Path;
use std::sync::Arc;

/// Write string columns, then float columns, atomically.
pub fn write_columns(
    path: &Path,
    strings: &[(&str, Vec<String>)],
    floats: &[(String, Vec<f64>)],
) -> Result<()> {
    let mut fields = Vec::new();
    let mut cols: Vec<ArrayRef> = Vec::new();
    for (name, values) in strings {
        fields.push(Field::new(*name, DataType::Utf8, false));
        cols.push(Arc::new(StringArray::from_iter_values(values)));
    }
    for (name, values) in floats {
        fields.push(Field::new(name, DataType::Float64, false));
        cols.push(Arc::new(Float64Array::from(values.clone())));
    }
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|source| Error::Arrow {
        path: path.to_path_buf(),
        source,
    })?;
    write_batch(path, schema, &batch)
}
