//! Unit tests of `beir` (kept beside it, in their own file).
use super::*;
use crate::data::lines::tests::gzip;

fn write(dir: &Path, name: &str, content: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

fn fixture(qrels: &str) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    write(
        d.path(),
        "corpus.jsonl",
        "{\"_id\": \"d1\", \"title\": \"A\", \"text\": \"one\"}\n{\"_id\": \"d2\", \"text\": \"two\"}\n",
    );
    write(
        d.path(),
        "queries.jsonl",
        "{\"_id\": \"q1\", \"text\": \"which?\"}\n",
    );
    write(d.path(), "qrels/test.tsv", qrels);
    d
}

#[test]
fn loads_a_dataset_with_header_and_grades() {
    let d = fixture("query-id\tcorpus-id\tscore\nq1\td2\t2\nq1\td1\t0\n");
    let ds = Dataset::load(d.path(), &["test"], true).unwrap();
    assert_eq!(ds.corpus.text("d1"), Some("A one"));
    assert_eq!(ds.qrels["test"]["q1"]["d2"], 2);
    assert_eq!(ds.qrels["test"]["q1"]["d1"], 0);
    assert!(ds.warnings.is_empty());
}

#[test]
fn unknown_ids_in_qrels_are_errors_or_counted() {
    let d = fixture("query-id\tcorpus-id\tscore\nq1\td9\t1\nq7\td1\t1\nq1\td1\t1\n");
    let err = Dataset::load(d.path(), &["test"], true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test.tsv:2: document `d9` is not in the corpus"),
        "{err}"
    );
    let ds = Dataset::load(d.path(), &["test"], false).unwrap();
    assert_eq!(ds.warnings.unknown_qrels.len(), 2);
    assert_eq!(ds.qrels["test"]["q1"].len(), 1);
    assert_eq!(ds.warnings.summary().len(), 1);
}

#[test]
fn malformed_qrels_lines_are_errors_even_when_lenient() {
    let d = fixture("q1\td1\n");
    let err = Dataset::load(d.path(), &["test"], false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test.tsv:1: expected 3 tab-separated columns"),
        "{err}"
    );
    let d = fixture("h\th\th\nq1\td1\tx\n");
    let err = Dataset::load(d.path(), &["test"], false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("test.tsv:2: score `x` is not an integer"),
        "{err}"
    );
}

#[test]
fn missing_split_names_the_file() {
    let d = fixture("q1\td1\t1\n");
    let err = Dataset::load(d.path(), &["train"], true)
        .unwrap_err()
        .to_string();
    assert!(err.contains("qrels/train.tsv"), "{err}");
}

/// Replace `dir/name` with its gzip, `dir/<new_name>`.
fn gzip_into(dir: &Path, name: &str, new_name: &str) {
    let bytes = std::fs::read(dir.join(name)).unwrap();
    std::fs::write(dir.join(new_name), gzip(&bytes)).unwrap();
    std::fs::remove_file(dir.join(name)).unwrap();
}

fn same(a: &Dataset, b: &Dataset) {
    assert_eq!(
        (&a.corpus.ids, &a.corpus.texts),
        (&b.corpus.ids, &b.corpus.texts)
    );
    assert_eq!(
        (&a.queries.ids, &a.queries.texts),
        (&b.queries.ids, &b.queries.texts)
    );
    assert_eq!(a.qrels, b.qrels);
    assert_eq!(a.warnings, b.warnings);
}

const QRELS: &str = "query-id\tcorpus-id\tscore\nq1\td2\t2\nq1\td1\t0\n";

#[test]
fn gzip_corpus_queries_and_qrels_load_as_the_plain_ones() {
    let plain = fixture(QRELS);
    let want = Dataset::load(plain.path(), &["test"], true).unwrap();
    let gz = fixture(QRELS);
    for name in ["corpus.jsonl", "queries.jsonl", "qrels/test.tsv"] {
        gzip_into(gz.path(), name, &format!("{name}.gz"));
    }
    let got = Dataset::load(gz.path(), &["test"], true).unwrap();
    same(&got, &want);
    // The files read are the ones fingerprinted and named.
    assert_eq!(corpus_path(gz.path()), gz.path().join("corpus.jsonl.gz"));
    assert_eq!(queries_path(gz.path()), gz.path().join("queries.jsonl.gz"));
    let qrels = gz.path().join("qrels/test.tsv.gz");
    assert_eq!(qrels_path(gz.path(), "test"), qrels);
    assert_eq!(corpus_path(plain.path()), plain.path().join("corpus.jsonl"));
}

#[test]
fn qrels_without_header_and_trec_qrels_under_each_name_load_as_with_header() {
    let want = Dataset::load(fixture(QRELS).path(), &["test"], true).unwrap();
    let cases = [
        ("qrels/test.tsv", "q1\td2\t2\nq1\td1\t0\n"),
        ("qrels/test.tsv", "q1\t0\td2\t2\nq1\t0\td1\t0\n"),
        ("qrels/test.txt", "q1 0 d2 2\nq1 0 d1 0\n"),
        ("qrels/test.qrels", "q1 Q0 d2 2\n\nq1  1   d1 0\n"),
    ];
    for (name, qrels) in cases {
        let d = fixture("");
        std::fs::remove_file(d.path().join("qrels/test.tsv")).unwrap();
        write(d.path(), name, qrels);
        let got = Dataset::load(d.path(), &["test"], true).unwrap();
        same(&got, &want);
        assert_eq!(qrels_path(d.path(), "test"), d.path().join(name));
    }
}

#[test]
fn unknown_ids_in_trec_qrels_name_the_file_read() {
    let d = fixture("");
    std::fs::remove_file(d.path().join("qrels/test.tsv")).unwrap();
    write(d.path(), "qrels/test.txt", "q1 0 d1 1\nq1 0 d9 1\n");
    let err = Dataset::load(d.path(), &["test"], true).unwrap_err();
    let want = "test.txt:2: document `d9` is not in the corpus";
    assert!(err.to_string().contains(want), "{err}");
    let ds = Dataset::load(d.path(), &["test"], false).unwrap();
    let (file, line, _, doc) = &ds.warnings.unknown_qrels[0];
    assert_eq!(
        (file.as_str(), *line, doc.as_str()),
        ("qrels/test.txt", 2, "d9")
    );
}

#[test]
fn a_file_there_under_two_names_is_refused() {
    let d = fixture(QRELS);
    gzip_into(d.path(), "corpus.jsonl", "corpus.jsonl.gz");
    write(
        d.path(),
        "corpus.jsonl",
        "{\"_id\": \"d1\", \"text\": \"stale\"}\n",
    );
    let err = Dataset::load(d.path(), &["test"], true)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("both `corpus.jsonl` and `corpus.jsonl.gz` are there"),
        "{err}"
    );
    std::fs::remove_file(d.path().join("corpus.jsonl")).unwrap();
    write(d.path(), "qrels/test.txt", "q1 0 d1 1\n");
    let err = check_unique(d.path(), &["test"]).unwrap_err().to_string();
    assert!(
        err.contains("both `qrels/test.tsv` and `qrels/test.txt`"),
        "{err}"
    );
    // Splits not asked for are not looked at.
    assert!(check_unique(d.path(), &["train"]).is_ok());
}
