//! TREC run files: one line per retrieved document, `qid Q0 docid rank score tag`, the
//! format trec_eval and pytrec_eval read (they order a query's documents by score, not by
//! the rank column).
use crate::error::{Error, Result};
use crate::ranking::metrics::trec_order;
use crate::ranking::rerank::Runs;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, Write};
use std::path::Path;

/// Per query id, its (document id, score) list as read, scores at full precision.
pub type RunFile = BTreeMap<String, Vec<(String, f64)>>;

/// Write `run` to `path` atomically: queries in id order, each query's documents in TREC
/// order with ranks from 1, every line tagged `tag`.
pub fn write_run(path: &Path, run: &Runs, tag: &str) -> Result<()> {
    use rayon::prelude::*;
    // A query's lines do not depend on another's: they are formatted on the pool, a block
    // of queries at a time (a run of 1,000 documents a query is about 60 KB a query).
    const QUERIES_A_BLOCK: usize = 256;
    let queries: Vec<(&String, &Vec<(String, f32)>)> = run.iter().collect();
    let lines = |&(q, docs): &(&String, &Vec<(String, f32)>)| {
        let mut docs = docs.clone();
        trec_order(&mut docs);
        let mut out = Vec::with_capacity(docs.len() * 48);
        for (i, (d, s)) in docs.iter().enumerate() {
            // Writing to a Vec does not fail.
            let _ = writeln!(out, "{q} Q0 {d} {} {s} {tag}", i + 1);
        }
        out
    };
    crate::data::atomic::write_atomic(path, |f| {
        let mut w = std::io::BufWriter::new(f);
        for block in queries.chunks(QUERIES_A_BLOCK) {
            let formatted: Vec<Vec<u8>> = block.par_iter().map(lines).collect();
            for bytes in formatted {
                w.write_all(&bytes).map_err(|e| Error::io(path, e))?;
            }
        }
        w.flush().map_err(|e| Error::io(path, e))
    })
}

/// Read a TREC run file. `check(qid, docid)` vets each line's ids (an `Err` message
/// becomes an error at that line). Errors name the file and line: a line without the six
/// whitespace-separated columns, a rank that is not an integer, a score that is not a
/// number, a document listed twice for one query. Blank lines are skipped.
pub fn read_run(
    path: &Path,
    mut check: impl FnMut(&str, &str) -> std::result::Result<(), String>,
) -> Result<RunFile> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut run = RunFile::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for (i, line) in std::io::BufReader::new(file).split(b'\n').enumerate() {
        let err = |message: String| Error::Input {
            path: path.to_path_buf(),
            line: i + 1,
            message,
        };
        let bytes = line.map_err(|e| Error::io(path, e))?;
        let text = std::str::from_utf8(&bytes).map_err(|e| err(format!("invalid UTF-8 ({e})")))?;
        let cols: Vec<&str> = text.split_whitespace().collect();
        if cols.is_empty() {
            continue;
        }
        let [qid, _, docid, rank, score, _] = cols[..] else {
            return Err(err(format!(
                "expected 6 whitespace-separated columns (qid Q0 docid rank score tag), found {}",
                cols.len()
            )));
        };
        if rank.parse::<i64>().is_err() {
            return Err(err(format!("rank `{rank}` is not an integer")));
        }
        let score = score
            .parse::<f64>()
            .ok()
            .filter(|s| !s.is_nan())
            .ok_or_else(|| err(format!("score `{score}` is not a number")))?;
        check(qid, docid).map_err(err)?;
        if !seen.insert((qid.to_string(), docid.to_string())) {
            return Err(err(format!(
                "document `{docid}` is listed twice for query `{qid}`"
            )));
        }
        run.entry(qid.to_string())
            .or_default()
            .push((docid.to_string(), score));
    }
    Ok(run)
}

/// Each query's top `k` documents of `run` in TREC order (score descending, then
/// document id descending), as `Runs`.
pub fn top_k(run: &RunFile, k: usize) -> Runs {
    run.iter()
        .map(|(q, docs)| {
            let mut docs = docs.clone();
            trec_order(&mut docs);
            let top = docs
                .into_iter()
                .take(k)
                .map(|(d, s)| (d, s as f32))
                .collect();
            (q.clone(), top)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn writes_what_it_reads_in_trec_order() {
        let run: Runs = [(
            "q1".to_string(),
            vec![("a".into(), 0.5), ("b".into(), 0.5), ("c".into(), 0.75)],
        )]
        .into();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.trec");
        write_run(&path, &run, "t").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "q1 Q0 c 1 0.75 t\nq1 Q0 b 2 0.5 t\nq1 Q0 a 3 0.5 t\n");
        let back = read_run(&path, |_, _| Ok(())).unwrap();
        assert_eq!(
            top_k(&back, 2)["q1"],
            vec![("c".into(), 0.75), ("b".into(), 0.5)]
        );
    }

    #[test]
    fn malformed_lines_and_rejected_ids_name_the_line() {
        let cases = [
            ("q1 Q0 d1 1 0.5 t\n\nq1 Q0 d2 2 0.4\n", ":3: expected 6"),
            ("q1 Q0 d1 x 0.5 t\n", ":1: rank `x` is not an integer"),
            ("q1 Q0 d1 1 high t\n", ":1: score `high` is not a number"),
            (
                "q1 Q0 d1 1 0.5 t\nq1 Q0 d1 2 0.4 t\n",
                ":2: document `d1` is listed twice",
            ),
            ("q1 Q0 d1 1 0.5 t\nq2 Q0 d9 1 0.5 t\n", ":2: unknown d9"),
        ];
        for (text, want) in cases {
            let f = file(text);
            let err = read_run(f.path(), |_, d| match d {
                "d9" => Err("unknown d9".into()),
                _ => Ok(()),
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains(want), "{err} lacks {want}");
            assert!(err.contains(&f.path().display().to_string()), "{err}");
        }
    }
}
