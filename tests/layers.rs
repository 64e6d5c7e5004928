//! The dependency rule, checked on the source: data -> model -> train -> stages ->
//! pipeline runner -> commands and main. A module may use its own layer and the layers
//! below it, never one above (unit tests, after `#[cfg(test)]`, are exempt).
use crate::common::repo;
use std::path::Path;

/// The layer of a module path (`["pipeline", "runner"]`, `["train"]`, ...).
fn layer(path: &[&str]) -> Option<u8> {
    Some(match path {
        ["error" | "rng" | "device" | "progress" | "render" | "ffi" | "distributed", ..] => 0,
        ["data", ..] => 1,
        ["model" | "retrieval", ..] => 2,
        ["ranking" | "training", ..] => 3,
        // Settings and run records: what stages read and write.
        // (`pipeline::Pipeline` is the configuration's type, re-exported.)
        ["pipeline", "config" | "events" | "fingerprint" | "manifest" | "health" | "Pipeline", ..] => {
            4
        }
        ["stages", ..] => 5,
        ["pipeline", ..] => 6,
        ["commands" | "main" | "main_args" | "lib", ..] => 7,
        _ => return None,
    })
}

/// The module path of a source file (`src/pipeline/runner.rs` -> pipeline, runner).
fn module_of(file: &Path, src: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .filter(|c| c != "mod")
        .collect()
}

/// Every `crate::a::b` path the code (before its unit tests) names.
fn imports(text: &str) -> Vec<Vec<String>> {
    let code = text
        .split("#[cfg(test)]")
        .next()
        .and_then(|c| c.split("#[cfg(all(test").next())
        .unwrap_or("");
    let mut out = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        let names: Vec<String> = rest
            .split("::")
            .map(|p| {
                p.chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect::<String>()
            })
            .take_while(|p| !p.is_empty())
            .take(2)
            .collect();
        if !names.is_empty() {
            out.push(names);
        }
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs")
            && !p.to_string_lossy().ends_with("_tests.rs")
        {
            out.push(p);
        }
    }
}

#[test]
fn no_module_uses_a_layer_above_its_own() {
    let src = repo().join("src");
    let mut files = Vec::new();
    walk(&src, &mut files);
    let mut violations = Vec::new();
    for file in &files {
        let module = module_of(file, &src);
        let m: Vec<&str> = module.iter().map(String::as_str).collect();
        let own = layer(&m).unwrap_or_else(|| panic!("{}: no layer", file.display()));
        let text = std::fs::read_to_string(file).unwrap();
        for path in imports(&text) {
            let p: Vec<&str> = path.iter().map(String::as_str).collect();
            let Some(theirs) = layer(&p) else { continue };
            if theirs > own {
                violations.push(format!(
                    "{} (layer {own}) uses crate::{} (layer {theirs})",
                    file.strip_prefix(repo()).unwrap().display(),
                    path.join("::")
                ));
            }
        }
    }
    violations.sort();
    violations.dedup();
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// The stages: each file wires its inputs to its outputs; what two of them share lives in
/// `stages::shared` and `stages::paths`.
const STAGES: [&str; 6] = ["mine", "teacher", "score", "train", "eval", "report"];

#[test]
fn no_stage_imports_another() {
    let mut found = Vec::new();
    for stage in STAGES {
        let file = repo().join("src/stages").join(format!("{stage}.rs"));
        let text = std::fs::read_to_string(&file).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or("");
        for other in STAGES.iter().filter(|&&o| o != stage) {
            for form in [format!("super::{other}::"), format!("stages::{other}::")] {
                if code.contains(&form) {
                    found.push(format!("src/stages/{stage}.rs uses {form}"));
                }
            }
        }
    }
    assert!(found.is_empty(), "{}", found.join("\n"));
}

#[test]
fn the_rule_sees_a_violation() {
    // The checker itself: a training file naming a stage is caught.
    let found = imports("use crate::stages::StageEnv;\nfn f() { crate::train::data::x(); }");
    let want: Vec<Vec<String>> = vec![
        vec!["stages".into(), "StageEnv".into()],
        vec!["train".into(), "data".into()],
    ];
    assert_eq!(found, want);
    let train = layer(&["training", "trainer"]).unwrap();
    assert!(layer(&["stages"]).unwrap() > train);
    assert!(layer(&["pipeline", "runner"]).unwrap() > layer(&["stages", "eval"]).unwrap());
}
