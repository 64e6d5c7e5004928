//! Parquet files of one schema joined into one by copying their encoded column chunks:
//! nothing is decoded or compressed again, so joining costs what copying the bytes does.
//! The same splice writes a large record batch: its slices are encoded on rayon's pool,
//! each as a file in memory, and joined in order.
use crate::data::atomic::write_atomic;
use crate::error::{Error, Result};
use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use parquet::arrow::ArrowWriter;
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::ChunkReader;
use parquet::file::writer::SerializedFileWriter;
use rayon::prelude::*;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Write the row groups of `inputs`, in order, to `output` (atomically). Every input must
/// have the first one's Parquet schema; the first one's key-value metadata (an Arrow
/// writer's schema among it) is the output's, so Arrow readers see the same columns.
/// Column statistics and page indexes are carried over.
pub fn concat_files(inputs: &[PathBuf], output: &Path) -> Result<()> {
    // Footers first (the schemas checked before anything is written); each file is opened
    // again when its turn comes, so a join of many shards holds one open at a time.
    let footers = inputs
        .iter()
        .map(|path| {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            Ok((path, read_metadata(&file, path)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let Some(&(first, ref head)) = footers.first() else {
        return Err(Error::output(output, "no files to join"));
    };
    for (path, metadata) in &footers[1..] {
        if metadata.file_metadata().schema() != head.file_metadata().schema() {
            return Err(Error::config(
                path,
                format!(
                    "its Parquet schema differs from {}'s: the files cannot be joined",
                    first.display()
                ),
            ));
        }
    }
    write_atomic(output, |file| {
        let mut writer = start(file, head, WriterProperties::default(), output)?;
        for (path, metadata) in &footers {
            let input = File::open(path).map_err(|e| Error::io(path, e))?;
            append(&mut writer, &input, metadata, path, output)?;
        }
        writer
            .close()
            .map(|_| ())
            .map_err(|source| parquet_error(output, source))
    })
}

/// Rows per slice that [`write_batch_parallel`] encodes on one thread.
const SLICE_ROWS: usize = 1 << 17;

/// Slices [`write_batch_parallel`] holds encoded at once, at most (a wave: one per thread
/// of rayon's pool, up to this many).
const MAX_WAVE: usize = 8;

/// Write `batch` to `path` (atomically) with `props`, as [`ArrowWriter`] would. A batch of
/// more than [`SLICE_ROWS`] rows is cut into slices of that many rows, encoded in parallel
/// (a wave of at most [`MAX_WAVE`] at a time, so memory holds one wave's encoded bytes)
/// and joined in order: each slice is a row group of its own (more, where `props` caps a
/// group at fewer rows). The same batch always gives the same bytes.
pub fn write_batch_parallel(
    path: &Path,
    schema: Arc<Schema>,
    batch: &RecordBatch,
    props: WriterProperties,
) -> Result<()> {
    let rows = batch.num_rows();
    if rows <= SLICE_ROWS {
        return write_atomic(path, |file| {
            let mut w = ArrowWriter::try_new(file, schema, Some(props))
                .map_err(|source| parquet_error(path, source))?;
            w.write(batch)
                .map_err(|source| parquet_error(path, source))?;
            w.close()
                .map(|_| ())
                .map_err(|source| parquet_error(path, source))
        });
    }
    let starts: Vec<usize> = (0..rows).step_by(SLICE_ROWS).collect();
    let wave = rayon::current_num_threads().clamp(1, MAX_WAVE);
    write_atomic(path, |file| {
        let mut file = Some(file);
        let mut writer: Option<SerializedFileWriter<File>> = None;
        for group in starts.chunks(wave) {
            let parts = group
                .par_iter()
                .map(|&start| {
                    let slice = batch.slice(start, SLICE_ROWS.min(rows - start));
                    let mut w =
                        ArrowWriter::try_new(Vec::new(), schema.clone(), Some(props.clone()))
                            .map_err(|source| parquet_error(path, source))?;
                    w.write(&slice)
                        .map_err(|source| parquet_error(path, source))?;
                    let encoded = w
                        .into_inner()
                        .map_err(|source| parquet_error(path, source))?;
                    let bytes = bytes::Bytes::from(encoded);
                    let metadata = read_metadata(&bytes, path)?;
                    Ok((bytes, metadata))
                })
                .collect::<Result<Vec<_>>>()?;
            for (bytes, metadata) in &parts {
                if let Some(f) = file.take() {
                    writer = Some(start(f, metadata, props.clone(), path)?);
                }
                if let Some(w) = writer.as_mut() {
                    append(w, bytes, metadata, path, path)?;
                }
            }
        }
        match writer {
            Some(w) => w
                .close()
                .map(|_| ())
                .map_err(|source| parquet_error(path, source)),
            None => Ok(()),
        }
    })
}

fn parquet_error(path: &Path, source: parquet::errors::ParquetError) -> Error {
    Error::Parquet {
        path: path.to_path_buf(),
        source,
    }
}

/// The footer of a Parquet file (`label` names it in errors), with its page indexes.
fn read_metadata<R: ChunkReader>(reader: &R, label: &Path) -> Result<ParquetMetaData> {
    ParquetMetaDataReader::new()
        .with_page_index_policy(PageIndexPolicy::Optional)
        .parse_and_finish(reader)
        .map_err(|source| parquet_error(label, source))
}

/// A writer of `head`'s schema and key-value metadata (an Arrow writer's schema among
/// it), with `props` for the rest.
fn start<W: std::io::Write + Send>(
    out: W,
    head: &ParquetMetaData,
    props: WriterProperties,
    output: &Path,
) -> Result<SerializedFileWriter<W>> {
    let meta = head.file_metadata();
    let props = props
        .into_builder()
        .set_key_value_metadata(meta.key_value_metadata().cloned())
        .build();
    SerializedFileWriter::new(out, meta.schema_descr().root_schema_ptr(), Arc::new(props))
        .map_err(|source| parquet_error(output, source))
}

/// Copy the row groups of `input` (its footer `metadata`; `label` names it in errors)
/// to the end of `writer`.
fn append<R: ChunkReader, W: std::io::Write + Send>(
    writer: &mut SerializedFileWriter<W>,
    input: &R,
    metadata: &ParquetMetaData,
    label: &Path,
    output: &Path,
) -> Result<()> {
    let page_index = metadata.page_index();
    for (g, group) in metadata.row_groups().iter().enumerate() {
        let mut out = writer
            .next_row_group()
            .map_err(|source| parquet_error(output, source))?;
        for (c, column) in group.columns().iter().enumerate() {
            let close = ColumnCloseResult {
                bytes_written: column.compressed_size() as u64,
                rows_written: group.num_rows() as u64,
                metadata: column.clone(),
                bloom_filter: None,
                column_index: page_index.and_then(|p| p.column_index(g, c)).cloned(),
                offset_index: page_index.and_then(|p| p.offset_index(g, c)).cloned(),
            };
            out.append_column(input, close)
                .map_err(|source| parquet_error(label, source))?;
        }
        out.close()
            .map_err(|source| parquet_error(output, source))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::pairs::PairTable;

    fn table(n: usize, tag: &str) -> PairTable {
        PairTable {
            dataset: vec!["d".into(); n],
            query_id: (0..n).map(|i| format!("{tag}q{}", i / 3)).collect(),
            doc_id: (0..n).map(|i| format!("{tag}doc{i}")).collect(),
            rank: (0..n as i32).collect(),
            student_score: (0..n).map(|i| i as f32 * 0.5).collect(),
            is_positive: (0..n).map(|i| i % 3 == 0).collect(),
            ..Default::default()
        }
    }

    /// Joined files read back as their rows in order (an empty file among them adds
    /// none); files of another schema are refused, naming the file.
    #[test]
    fn joined_files_read_back_as_their_rows_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let parts = [
            table(10, "a"),
            table(0, "b"),
            table(7, "c"),
            table(20_000, "d"),
        ];
        let mut paths = Vec::new();
        let mut want = PairTable::default();
        for (i, t) in parts.iter().enumerate() {
            let path = dir.path().join(format!("p{i}.parquet"));
            t.write(&path).unwrap();
            paths.push(path);
            want.extend(t.clone());
        }
        let out = dir.path().join("all.parquet");
        concat_files(&paths, &out).unwrap();
        assert_eq!(PairTable::read(&out).unwrap(), want);

        let mut scored = table(4, "e");
        scored.teacher_score = Some(vec![1.0; 4]);
        let other = dir.path().join("scored.parquet");
        scored.write(&other).unwrap();
        paths.push(other.clone());
        let err = concat_files(&paths, &dir.path().join("bad.parquet")).unwrap_err();
        assert!(err.to_string().contains("scored.parquet"), "{err}");
        assert!(!dir.path().join("bad.parquet").exists());
    }

    /// A table of more than one slice is written in slices joined in order: it reads back
    /// as the same rows, each slice a row group, and the same table gives the same bytes.
    #[test]
    fn a_large_table_written_in_parallel_slices_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut t = table(2 * SLICE_ROWS + 123, "x");
        t.teacher_score = Some((0..t.len()).map(|i| (i % 97) as f32).collect());
        let (a, b) = (dir.path().join("a.parquet"), dir.path().join("b.parquet"));
        t.write(&a).unwrap();
        t.write(&b).unwrap();
        assert_eq!(PairTable::read(&a).unwrap(), t);
        assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
        let file = File::open(&a).unwrap();
        let groups = read_metadata(&file, &a).unwrap().num_row_groups();
        assert_eq!(groups, 3);
        assert!(
            std::fs::read_dir(dir.path()).unwrap().count() == 2,
            "no temporary left"
        );
    }
}
