use super::*;
use std::collections::BTreeMap;
use std::path::Path;

fn read(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A default as written in prose or TOML, for comparison: quotes and backticks off,
/// numbers by value.
fn same(written: &str, want: &str) -> bool {
    let w = written.trim().trim_matches(|c| c == '`' || c == '"');
    match (w.parse::<f64>(), want.parse::<f64>()) {
        (Ok(a), Ok(b)) => a == b,
        _ => w == want,
    }
}

/// The reference table's rows: each key of the first column with its default (a row of
/// several keys and as many comma-separated defaults pairs them; one default serves all).
fn reference_rows() -> BTreeMap<String, String> {
    let mut rows = BTreeMap::new();
    for line in read("docs/pipeline-reference.md").lines() {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[1].starts_with('`') {
            continue;
        }
        let keys: Vec<&str> = cells[1].split(", ").map(|k| k.trim_matches('`')).collect();
        let defaults: Vec<&str> = cells[2].split(", ").collect();
        for (i, key) in keys.iter().enumerate() {
            let d = match defaults.len() == keys.len() {
                true => defaults[i],
                false => cells[2],
            };
            rows.insert(key.to_string(), d.to_string());
        }
    }
    rows
}

#[test]
fn the_reference_table_gives_every_default_as_the_code_has_it() {
    let rows = reference_rows();
    let teacher_row = rows.get("teacher_train.*").cloned().unwrap_or_default();
    let mut wrong = Vec::new();
    for (key, want) in table() {
        match rows.get(key) {
            // `teacher_train.min_steps` shares a row with `[train]`'s: its figure comes first.
            Some(got) if key == "teacher_train.min_steps" => {
                if !got.starts_with(&format!("{want} for the teacher")) {
                    wrong.push(format!("{key}: `{got}`, code {want}"));
                }
            }
            Some(got) if !same(got, &want) => wrong.push(format!("{key}: `{got}`, code {want}")),
            Some(_) => {}
            // The teacher's optimisation defaults are listed in the `teacher_train.*` row.
            None if key.starts_with("teacher_train.") => {
                let field = key.trim_start_matches("teacher_train.");
                if !teacher_row.contains(&format!("{field} {want}")) {
                    wrong.push(format!(
                        "{key}: `teacher_train.*` row lacks `{field} {want}`"
                    ));
                }
            }
            None => wrong.push(format!("{key}: no row in docs/pipeline-reference.md")),
        }
    }
    assert!(
        wrong.is_empty(),
        "docs/pipeline-reference.md:\n{}",
        wrong.join("\n")
    );
}

/// `(section.key, value, default stated in the comment)` of every key line of
/// nightly.toml, commented out or not (the stated default: `default X`, X a value rather
/// than a phrase after a colon).
fn nightly_lines() -> Vec<(String, String, Option<String>)> {
    let mut out = Vec::new();
    let mut section = String::new();
    for line in read("pipelines/nightly.toml").lines() {
        // Commented-out keys and sections count: the file shows them with their defaults.
        let code = line.trim().trim_start_matches('#').trim();
        if code.starts_with('[') {
            let header = code.split('#').next().unwrap_or("").trim();
            section = header.trim_matches(|c| c == '[' || c == ']').to_string();
            if header.starts_with("[[") {
                section = format!("[[{section}]]");
            }
            continue;
        }
        let Some((key, rest)) = code.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || key.contains(' ') {
            continue;
        }
        let (value, comment) = rest.split_once('#').unwrap_or((rest, ""));
        let stated = comment.split_once("default ").map(|(_, after)| {
            after
                .chars()
                .take_while(|c| !c.is_whitespace() && !";,:)".contains(*c))
                .collect::<String>()
        });
        out.push((
            format!("{section}.{key}"),
            value.trim().to_string(),
            stated.filter(|v| !v.is_empty()),
        ));
    }
    out
}

/// nightly.toml shows each key at its default, unless its comment states the default
/// (`default X`), which must then be the code's.
#[test]
fn nightly_toml_shows_the_defaults_the_code_has() {
    let code: BTreeMap<&str, String> = table().into_iter().collect();
    let lines = nightly_lines();
    let mut checked = 0;
    let mut wrong = Vec::new();
    for (key, value, stated) in &lines {
        let Some(want) = code.get(key.as_str()) else {
            continue;
        };
        checked += 1;
        match stated {
            Some(d) if !same(d, want) => {
                wrong.push(format!("{key}: states default `{d}`, code {want}"))
            }
            Some(_) => {}
            None if !same(value, want) => wrong.push(format!(
                "{key} = {value}, but the default is {want} (say `default {want}` in its comment)"
            )),
            None => {}
        }
    }
    assert!(
        wrong.is_empty(),
        "pipelines/nightly.toml:\n{}",
        wrong.join("\n")
    );
    // Every key with one default appears in the file, which is the reference.
    let missing: Vec<&&str> = code
        .keys()
        .filter(|k| !lines.iter().any(|(key, _, _)| key == *k))
        .collect();
    assert!(
        missing.is_empty(),
        "pipelines/nightly.toml lacks {missing:?}"
    );
    assert!(checked >= 50, "only {checked} keys found");
}

#[test]
fn an_unchanged_file_resolves_to_the_constants() {
    let file: super::super::schema::PipelineFile = toml::from_str(
        "[run]\nname = \"x\"\n[student]\npath = \"s\"\n[teacher]\npath = \"t\"\n\
         [[dataset]]\nname = \"d\"\npath = \"p\"\n",
    )
    .unwrap();
    assert_eq!(file.run.seed, RUN_SEED);
    assert_eq!(*file.mine.top_k.get_ref(), MINE_TOP_K);
    assert_eq!(*file.eval.top_k.get_ref(), EVAL_TOP_K);
    assert_eq!(
        *file.train.checkpoint_every.get_ref(),
        TRAIN_CHECKPOINT_EVERY
    );
    assert_eq!(
        *file.health.min_teacher_auc.get_ref(),
        HEALTH_MIN_TEACHER_AUC
    );
    assert_eq!(file.datasets[0].strict, DATASET_STRICT);
}
