//! Unit tests of `qrels` (kept beside it, in their own file).
use super::*;
use std::io::Write;

fn file(content: &str, ext: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
    f.write_all(content.as_bytes()).unwrap();
    f
}

fn read(path: &Path) -> Result<(Vec<Judgement>, Option<QrelsFormat>)> {
    let mut r = QrelsReader::open(path)?;
    let mut out = Vec::new();
    while let Some(j) = r.next_judgement()? {
        out.push(j);
    }
    Ok((out, r.format()))
}

fn rows(first_line: usize, rows: &[(&str, &str, i64)]) -> Vec<Judgement> {
    rows.iter()
        .enumerate()
        .map(|(i, (q, d, g))| Judgement {
            line: first_line + i,
            query: q.to_string(),
            doc: d.to_string(),
            grade: *g,
        })
        .collect()
}

#[test]
fn beir_with_and_without_header_and_trec_read_the_same_judgements() {
    let want = [("q1", "d 2", 2), ("q1", "d1", 0), ("q2", "d1", -1)];
    let cases = [
        (
            "query-id\tcorpus-id\tscore\nq1\td 2\t2\nq1\td1\t0\nq2\td1\t-1\n",
            2,
            QrelsFormat::Beir,
        ),
        ("q1\td 2\t2\nq1\td1\t0\r\nq2\td1\t-1", 1, QrelsFormat::Beir),
        (
            "\nq1\td 2\t2\nq1\td1\t0\nq2\td1\t-1\n",
            2,
            QrelsFormat::Beir,
        ),
        // The header is the first line that is not blank.
        (
            "\nh\th\th\nq1\td 2\t2\nq1\td1\t0\nq2\td1\t-1\n",
            3,
            QrelsFormat::Beir,
        ),
    ];
    for (content, first, format) in cases {
        let f = file(content, ".tsv");
        assert_eq!(read(f.path()).unwrap(), (rows(first, &want), Some(format)));
    }
    // TREC: ids cannot hold spaces; the iteration column (0, Q0, 0.5) is not read.
    let want = [("q1", "d2", 2), ("q1", "d1", 0), ("q2", "d1", -1)];
    for content in [
        "q1 0 d2 2\nq1 0 d1 0\nq2 0 d1 -1\n",
        "q1\t0\td2\t2\nq1\tQ0\td1\t0\nq2\t0.5\td1\t-1\n",
        "q1  0 d2\t2 \nq1 0 d1 0\nq2 0 d1 -1",
    ] {
        let f = file(content, ".txt");
        let got = read(f.path()).unwrap();
        assert_eq!(
            got,
            (rows(1, &want), Some(QrelsFormat::Trec)),
            "{content:?}"
        );
    }
}

#[test]
fn mixed_or_malformed_lines_are_errors_naming_file_and_line() {
    let cases = [
        (
            "q1\td1\t1\nq1 0 d2 1\n",
            ":2: a TREC qrels (query-id iteration doc-id relevance) line in a file read as \
             BEIR qrels (query-id<TAB>corpus-id<TAB>score) from its line 1: a file holds one \
             format",
        ),
        (
            "q1 0 d2 1\n\nq1\td1\t1\n",
            ":3: a BEIR qrels (query-id<TAB>corpus-id<TAB>score) line in a file read as TREC",
        ),
        (
            "q1\td1\n",
            ":1: expected 3 tab-separated columns (query-id, corpus-id, score) or 4",
        ),
        (
            "q1\td1\t1\nq1\td2\n",
            ":2: expected 3 tab-separated columns",
        ),
        (
            "q1 0 d1 1\nq1 0 d2\n",
            ":2: expected 4 whitespace-separated columns",
        ),
        (
            "q1\td1\t1\nquery-id\tcorpus-id\tscore\n",
            ":2: score `score` is not an integer",
        ),
        ("q1 0 d1 yes\n", ":1: relevance `yes` is not an integer"),
    ];
    for (content, needle) in cases {
        let f = file(content, ".tsv");
        let err = read(f.path()).unwrap_err().to_string();
        let want = format!("{}{needle}", f.path().display());
        assert!(err.starts_with(&want), "{err}\nwant: {want}");
    }
}
