//! Unit tests of `text_input` (kept beside it, in their own file).
use super::*;
use crate::data::lines::tests::gzip;
use std::io::Write;

/// Every text of `path` under `policy`, read through [`TextReader`].
fn read_texts_with(
    path: &Path,
    format: TextFormat,
    policy: ReadPolicy,
) -> Result<(Vec<TextRecord>, Skipped)> {
    let mut reader = TextReader::open(path, format, policy)?;
    let mut records = Vec::new();
    while let Some(record) = reader.next_record()? {
        records.push(record);
    }
    Ok((records, reader.skipped))
}

/// Every text of `path`: duplicate ids are errors, empty texts are kept.
fn read_texts(path: &std::path::Path, format: TextFormat) -> Result<Vec<TextRecord>> {
    let policy = ReadPolicy {
        strict: true,
        allow_empty: true,
    };
    read_texts_with(path, format, policy).map(|(records, _)| records)
}

fn file(content: &[u8], ext: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(ext).tempfile().unwrap();
    f.write_all(content).unwrap();
    f
}

#[test]
fn reads_beir_jsonl_with_titles() {
    let f = file(
        b"{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"body\"}\n\n{\"_id\": 7, \"text\": \"x\"}\n",
        ".jsonl",
    );
    let r = read_texts(f.path(), TextFormat::Auto).unwrap();
    assert_eq!(r.len(), 2);
    assert_eq!((r[0].id.as_str(), r[0].text.as_str()), ("d1", "T body"));
    assert_eq!((r[1].id.as_str(), r[1].line), ("7", 3));
}

#[test]
fn errors_name_the_line() {
    let cases: [(&[u8], &str); 5] = [
        (
            b"{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"a\", \"text\": \"y\"}\n",
            "line 1",
        ),
        (b"{\"text\": \"x\"}\n", "missing key `_id`"),
        (
            b"{\"_id\": \"a\", \"text\": \"x\"}\n{not json\n",
            "malformed JSON",
        ),
        (b"{\"_id\": \"a\", \"text\": 3}\n", "must be a string"),
        (b"{\"_id\": \"a\", \"text\": \"\xff\"}\n", "invalid UTF-8"),
    ];
    for (content, needle) in cases {
        let f = file(content, ".jsonl");
        let err = read_texts(f.path(), TextFormat::Auto)
            .unwrap_err()
            .to_string();
        assert!(err.contains(needle), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
    }
}

#[test]
fn lenient_read_skips_and_counts_duplicates_and_empty_texts() {
    let f = file(
        b"{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"a\", \"text\": \"y\"}\n{\"_id\": \"b\", \"text\": \"  \"}\n",
        ".jsonl",
    );
    let lenient = ReadPolicy {
        strict: false,
        allow_empty: false,
    };
    let (r, skipped) = read_texts_with(f.path(), TextFormat::Auto, lenient).unwrap();
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].text, "x");
    assert_eq!(skipped.duplicates, vec![(2, "a".to_string())]);
    assert_eq!(skipped.empty, vec![(3, "b".to_string())]);
    let strict = ReadPolicy {
        strict: true,
        allow_empty: false,
    };
    let f = file(b"{\"_id\": \"b\", \"text\": \"\"}\n", ".jsonl");
    let err = read_texts_with(f.path(), TextFormat::Auto, strict).unwrap_err();
    assert!(err.to_string().contains(":1: empty text for `b`"), "{err}");
}

#[test]
fn plain_text_ids_are_line_numbers() {
    let f = file(b"first\r\nsecond\n", ".txt");
    let r = read_texts(f.path(), TextFormat::Auto).unwrap();
    assert_eq!(r[1].id, "2");
    assert_eq!(r[0].text, "first");
}

fn pairs(records: &[TextRecord]) -> Vec<(&str, &str, usize)> {
    records
        .iter()
        .map(|r| (r.id.as_str(), r.text.as_str(), r.line))
        .collect()
}

#[test]
fn gzip_jsonl_reads_as_the_plain_file() {
    let jsonl = b"{\"_id\": \"d1\", \"title\": \"T\", \"text\": \"body\"}\n\n{\"_id\": \"d2\", \"text\": \"x\"}\n";
    let plain = file(jsonl, ".jsonl");
    let gz = file(&gzip(jsonl), ".jsonl.gz");
    let want = read_texts(plain.path(), TextFormat::Auto).unwrap();
    assert_eq!(read_texts(gz.path(), TextFormat::Auto).unwrap(), want);
    assert_eq!(read_texts(gz.path(), TextFormat::Jsonl).unwrap(), want);
    assert_eq!(pairs(&want), vec![("d1", "T body", 1), ("d2", "x", 3)]);
}

#[test]
fn id_tab_text_lines_read_ids_and_texts() {
    let tsv = b"7\tThe first passage.\r\n\n42\tA second one, with  spaces \n";
    let want = vec![
        ("7", "The first passage.", 1),
        ("42", "A second one, with  spaces ", 3),
    ];
    // By extension (also under .gz), by content in a file of another name, or asked for.
    for (content, ext, format) in [
        (tsv.to_vec(), ".tsv", TextFormat::Auto),
        (gzip(tsv), ".tsv.gz", TextFormat::Auto),
        (tsv.to_vec(), ".txt", TextFormat::Auto),
        (gzip(tsv), ".txt.gz", TextFormat::Auto),
        (tsv.to_vec(), "", TextFormat::Tsv),
    ] {
        let f = file(&content, ext);
        let r = read_texts(f.path(), format).unwrap();
        assert_eq!(pairs(&r), want, "{ext} {format:?}");
    }
    // --format text reads each line whole; lines without one tab are plain text.
    let f = file(tsv, ".txt");
    let r = read_texts(f.path(), TextFormat::Text).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].text, "7\tThe first passage.");
    for plain in [
        &b"no tab here\nx\ty\n"[..],
        b"\ta line starting with a tab\n",
    ] {
        let f = file(plain, ".txt");
        let (format, _) = resolve_format(f.path(), TextFormat::Auto).unwrap();
        assert_eq!(format, TextFormat::Text);
    }
}

#[test]
fn a_line_that_is_not_id_tab_text_is_an_error_naming_file_and_line() {
    let cases: [(&[u8], &str, &str); 4] = [
        (
            b"1\tone\n2\ttwo\tthree\n",
            ".tsv",
            ":2: expected `id<TAB>text` (2 tab-separated columns), found 3",
        ),
        (
            b"1\tone\n\nplain line\n",
            ".tsv",
            ":3: expected `id<TAB>text`",
        ),
        (b"1\tone\n \tnone\n", ".tsv", ":2: empty id before the tab"),
        (
            b"1\tone\nplain line\n",
            ".txt",
            "from its line 1; `--format text` reads each line whole",
        ),
    ];
    for (content, ext, needle) in cases {
        let f = file(content, ext);
        let err = read_texts(f.path(), TextFormat::Auto)
            .unwrap_err()
            .to_string();
        assert!(err.starts_with(&f.path().display().to_string()), "{err}");
        assert!(err.contains(needle), "{err}");
    }
    let f = file(b"1\tone\n1\tagain\n", ".tsv");
    let err = read_texts(f.path(), TextFormat::Auto).unwrap_err();
    assert!(err.to_string().contains(":2: duplicate id `1`"), "{err}");
}

/// 10,000 lines (several parse blocks) with one fault at line `at`.
fn long_file(at: usize, fault: &[u8]) -> tempfile::NamedTempFile {
    let mut content = Vec::new();
    for line in 1..=10_000 {
        match line == at {
            true => content.extend_from_slice(fault),
            false => content.extend_from_slice(
                format!("{{\"_id\": \"d{line}\", \"text\": \"text {line}\"}}").as_bytes(),
            ),
        }
        content.push(b'\n');
    }
    file(&content, ".jsonl")
}

#[test]
fn blocks_parsed_in_parallel_hand_out_every_record_in_order_and_the_first_fault() {
    const { assert!(BLOCK_LINES < 5_000, "the file must span several blocks") };
    let f = long_file(0, b"");
    let r = read_texts(f.path(), TextFormat::Auto).unwrap();
    assert_eq!(r.len(), 10_000);
    assert!(r
        .iter()
        .enumerate()
        .all(|(i, t)| t.line == i + 1 && t.id == format!("d{}", i + 1)));
    let faults: [(usize, &[u8], &str); 3] = [
        (9_000, b"{not json", "malformed JSON"),
        (
            6_001,
            b"{\"_id\": \"d17\", \"text\": \"again\"}",
            "first seen on line 17",
        ),
        (
            4_097,
            b"{\"_id\": \"x\", \"text\": \"\xff\"}",
            "invalid UTF-8",
        ),
    ];
    // Both ways of reading: the full records, and ids alone with blocks read ahead.
    for ((at, fault, needle), ids_only) in faults.into_iter().flat_map(|f| [(f, false), (f, true)])
    {
        let f = long_file(at, fault);
        let mut reader = TextReader::open(
            f.path(),
            TextFormat::Auto,
            ReadPolicy {
                strict: true,
                allow_empty: false,
            },
        )
        .unwrap();
        if ids_only {
            reader = reader.ids_only().unwrap();
        }
        let mut n = 0;
        let err = loop {
            match reader.next_record() {
                Ok(Some(_)) => n += 1,
                Ok(None) => panic!("no error for line {at}"),
                Err(e) => break e.to_string(),
            }
        };
        // Every record before the fault, none after it.
        assert_eq!(n, at - 1, "ids only: {ids_only}: {err}");
        assert!(
            err.contains(needle) && err.contains(&format!(":{at}:")),
            "{err}"
        );
    }
}

#[test]
fn ids_only_keeps_and_skips_the_records_the_full_read_does() {
    // Blank in every way a BEIR line can be: text, title + text, whitespace title.
    let content = concat!(
        "{\"_id\": \"a\", \"text\": \"x\"}\n",
        "{\"_id\": \"b\", \"title\": \"  \", \"text\": \"\"}\n",
        "{\"_id\": \"c\", \"title\": \"T\", \"text\": \" \"}\n",
        "{\"_id\": \"d\", \"title\": null, \"text\": \"\\t\"}\n",
        "{\"_id\": 5, \"title\": \"\", \"text\": \"y\"}\n",
        "{\"_id\": \"a\", \"text\": \"again\"}\n",
        "\n",
        "{\"_id\": \"e\", \"title\": \"\", \"text\": \"\\n \"}\n",
    );
    let lenient = ReadPolicy {
        strict: false,
        allow_empty: false,
    };
    for ext in [".jsonl", ".tsv"] {
        let content = match ext {
            ".tsv" => "a\tx\nb\t \nc\tT\n\nd\t\na\tagain\n".to_string(),
            _ => content.to_string(),
        };
        let f = file(content.as_bytes(), ext);
        let (full, skipped) = read_texts_with(f.path(), TextFormat::Auto, lenient).unwrap();
        let mut reader = TextReader::open(f.path(), TextFormat::Auto, lenient)
            .unwrap()
            .ids_only()
            .unwrap();
        let mut ids = Vec::new();
        while let Some(r) = reader.next_record().unwrap() {
            assert!(r.text.is_empty(), "{ext}: {r:?}");
            ids.push((r.id, r.line));
        }
        let want: Vec<(String, usize)> = full.iter().map(|r| (r.id.clone(), r.line)).collect();
        assert_eq!(ids, want, "{ext}");
        assert_eq!(reader.skipped, skipped, "{ext}");
        let kept = if ext == ".jsonl" { 3 } else { 2 };
        assert_eq!(want.len(), kept, "{ext}: {want:?}");
    }
}

#[test]
fn a_truncated_gzip_read_ahead_reports_the_lines_before_it_then_the_error() {
    let f = long_file(0, b"");
    let whole = gzip(&std::fs::read(f.path()).unwrap());
    let cut = file(&whole[..whole.len() * 2 / 3], ".jsonl.gz");
    let policy = ReadPolicy {
        strict: true,
        allow_empty: false,
    };
    let err = count_texts(cut.path(), TextFormat::Auto, policy).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("corrupt or truncated gzip data"),
        "{message}"
    );
    assert!(
        message.starts_with(&cut.path().display().to_string()),
        "{message}"
    );
    // The records before the cut are handed out first, in order.
    let mut reader = TextReader::open(cut.path(), TextFormat::Auto, policy)
        .unwrap()
        .ids_only()
        .unwrap();
    let mut n = 0;
    while let Ok(Some(r)) = reader.next_record() {
        n += 1;
        assert_eq!(r.id, format!("d{n}"));
    }
    assert!(n > 4_096, "a block and more before the cut: {n}");
}
