//! Parquet files of one schema joined into one by copying their encoded column chunks:
//! nothing is decoded or compressed again, so joining costs what copying the bytes does.
use crate::data::atomic::write_atomic;
use crate::error::{Error, Result};
use parquet::column::writer::ColumnCloseResult;
use parquet::file::metadata::{PageIndexPolicy, ParquetMetaData, ParquetMetaDataReader};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Write the row groups of `inputs`, in order, to `output` (atomically). Every input must
/// have the first one's Parquet schema; the first one's key-value metadata (an Arrow
/// writer's schema among it) is the output's, so Arrow readers see the same columns.
/// Column statistics and page indexes are carried over.
pub fn concat_files(inputs: &[PathBuf], output: &Path) -> Result<()> {
    let Some(first) = inputs.first() else {
        return Err(Error::output(output, "no files to join"));
    };
    let opened = inputs
        .iter()
        .map(|path| {
            let file = File::open(path).map_err(|e| Error::io(path, e))?;
            let metadata = ParquetMetaDataReader::new()
                .with_page_index_policy(PageIndexPolicy::Optional)
                .parse_and_finish(&file)
                .map_err(|source| Error::Parquet {
                    path: path.clone(),
                    source,
                })?;
            Ok((path, file, metadata))
        })
        .collect::<Result<Vec<(&PathBuf, File, ParquetMetaData)>>>()?;
    let head = opened[0].2.file_metadata();
    for (path, _, metadata) in &opened[1..] {
        if metadata.file_metadata().schema() != head.schema() {
            return Err(Error::config(
                path,
                format!(
                    "its Parquet schema differs from {}'s: the files cannot be joined",
                    first.display()
                ),
            ));
        }
    }
    let props = WriterProperties::builder()
        .set_key_value_metadata(head.key_value_metadata().cloned())
        .build();
    let schema = head.schema_descr().root_schema_ptr();
    write_atomic(output, |file| {
        let perr = |source| Error::Parquet {
            path: output.to_path_buf(),
            source,
        };
        let mut writer = SerializedFileWriter::new(file, schema, Arc::new(props)).map_err(perr)?;
        for (path, input, metadata) in &opened {
            let page_index = metadata.page_index();
            for (g, group) in metadata.row_groups().iter().enumerate() {
                let mut out = writer.next_row_group().map_err(perr)?;
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
                        .map_err(|source| Error::Parquet {
                            path: (*path).clone(),
                            source,
                        })?;
                }
                out.close().map_err(perr)?;
            }
        }
        writer.close().map_err(perr)?;
        Ok(())
    })
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
}
