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
    assert_eq!(ds.corpus.text("d1").unwrap().as_deref(), Some("A one"));
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
        (&a.corpus.ids, a.corpus.all().unwrap()),
        (&b.corpus.ids, b.corpus.all().unwrap())
    );
    assert_eq!(
        (&a.queries.ids, a.queries.all().unwrap()),
        (&b.queries.ids, b.queries.all().unwrap())
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

#[test]
fn a_plain_corpus_stays_on_disk_and_reads_back_as_loaded() {
    let d = tempfile::tempdir().unwrap();
    // CRLF line ends, a blank line, escapes, a title, a duplicate and an empty text (both
    // skipped when lenient), a line of non-ASCII text.
    write(
        d.path(),
        "corpus.jsonl",
        "{\"_id\": \"a\", \"title\": \"T\", \"text\": \"x \\\"y\\\"\"}\r\n\n\
         {\"_id\": \"b\", \"text\": \"caf\\u00e9 \u{1F600}\"}\n\
         {\"_id\": \"a\", \"text\": \"again\"}\n\
         {\"_id\": \"e\", \"text\": \" \"}\n\
         {\"_id\": \"c\", \"text\": \"last\"}",
    );
    write(
        d.path(),
        "queries.jsonl",
        "{\"_id\": \"q\", \"text\": \"q?\"}\n",
    );
    let mut ds = Dataset::load(d.path(), &[], false).unwrap();
    assert!(ds.corpus.on_disk());
    assert!(!ds.queries.on_disk());
    let want = ["T x \"y\"", "café \u{1F600}", "last"];
    assert_eq!(ds.corpus.all().unwrap(), want);
    assert_eq!(
        ds.corpus.gather(&[2, 0, 2]).unwrap(),
        [want[2], want[0], want[2]]
    );
    assert_eq!(ds.corpus.text("b").unwrap().as_deref(), Some(want[1]));
    assert_eq!(ds.corpus.text("e").unwrap(), None);
    // Texts pushed after those on disk are held in memory; a range may span both.
    ds.corpus.push("p".into(), "pushed".into());
    assert_eq!(ds.corpus.range(1..4).unwrap(), [want[1], want[2], "pushed"]);
    assert_eq!(ds.corpus.range(3..4).unwrap(), ["pushed"]);
    let chunks: Vec<_> = ds.corpus.chunks(3).map(Result::unwrap).collect();
    assert_eq!(chunks.len(), 2);
    assert_eq!(
        (chunks[1].0.as_slice(), chunks[1].1),
        (&["pushed".into()][..], 3)
    );
    // The gzipped corpus is read into memory, to the same texts.
    gzip_into(d.path(), "corpus.jsonl", "corpus.jsonl.gz");
    let gz = Dataset::load(d.path(), &[], false).unwrap();
    assert!(!gz.corpus.on_disk());
    assert_eq!(gz.corpus.all().unwrap(), want);
}

#[test]
fn a_corpus_written_over_under_a_loaded_dataset_is_an_error_and_one_renamed_over_is_not() {
    let d = fixture("q1\td1\t1\n");
    let path = d.path().join("corpus.jsonl");
    let ds = Dataset::load(d.path(), &[], true).unwrap();
    // Another file renamed over the corpus: the loaded dataset reads the file it opened.
    let other = "{\"_id\": \"x\", \"text\": \"other\"}\n";
    write(d.path(), "new.jsonl", other);
    std::fs::rename(d.path().join("new.jsonl"), &path).unwrap();
    assert_eq!(ds.corpus.all().unwrap(), ["A one", "two"]);
    // Written in place, the same id and length: only the modification time tells.
    let ds = Dataset::load(d.path(), &[], true).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&path, other.replace("other", "OTHER")).unwrap();
    for err in [
        ds.corpus.text("x").unwrap_err(),
        ds.corpus.gather(&[0, 0]).unwrap_err(),
    ] {
        let err = err.to_string();
        let want = format!("{}:1: the file changed after it was loaded", path.display());
        assert!(err.starts_with(&want), "{err}");
        assert!(err.contains("modification time"), "{err}");
    }
}
