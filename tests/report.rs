//! `distill report RUN_DIR...` over fixture runs (one real tiny run, copied as later
//! nights with changed numbers), and the base student's run cached across runs.
use crate::common::distill_output as distill;
use crate::common::*;
use crate::train::{pipeline, run_ok};
use distill::pipeline::Pipeline;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// A copy of `run` as the run `name`, finished `days` later, with the distilled
/// student's nDCG@10 on every dataset moved by `change`.
fn later_night(run: &Path, name: &str, days: u64, change: f64) -> PathBuf {
    let dir = run.parent().unwrap().join(name);
    copy_dir(run, &dir);
    let manifest = dir.join("eval/manifest.json");
    let mut m: Value = read_json(&manifest);
    let t = m["finished_unix"].as_u64().unwrap() + days * 86_400;
    m["finished_unix"] = t.into();
    std::fs::write(&manifest, serde_json::to_string(&m).unwrap()).unwrap();
    let metrics = dir.join("eval/metrics.json");
    let mut v: Value = read_json(&metrics);
    for (_, ds) in v.as_object_mut().unwrap() {
        let x = &mut ds["distilled"]["student"]["ndcg@10"];
        *x = (x.as_f64().unwrap() + change).into();
    }
    std::fs::write(&metrics, serde_json::to_string(&v).unwrap()).unwrap();
    dir
}

fn report(args: &[&str], out: &Path) -> (i32, String, String) {
    let mut all = vec!["report", "--output", out.to_str().unwrap()];
    all.extend_from_slice(args);
    let o = distill(&all, &[]);
    let html = std::fs::read_to_string(out.join("trend.html")).unwrap_or_default();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stderr).into_owned(),
        html,
    )
}

/// (tables, charts, regression cells) in an HTML report, read by an XML parser.
fn structure(html: &Path) -> String {
    let script = "import sys, xml.etree.ElementTree as ET\n\
                  r = ET.parse(sys.argv[1]).getroot()\n\
                  print(len(r.findall('.//table')), len(r.findall('.//{http://www.w3.org/2000/svg}svg')), len(r.findall(\".//td[@class='regression']\")))";
    python_stdout(script, &[html]).trim().to_string()
}

#[test]
fn trend_over_two_and_three_runs_flags_the_regression_in_its_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "night-1");
    run_ok(&path, &[]);
    let first = Pipeline::load(&path).unwrap().run_dir;
    let second = later_night(&first, "night-2", 1, 0.02);
    let third = later_night(&first, "night-3", 2, -0.01);
    let root = first.parent().unwrap().to_path_buf();
    // --name puts a run (one per night) beside the others under the same output root.
    let o = distill(
        &["status", path.to_str().unwrap(), "--name", "night-9"],
        &[],
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        text.contains(&format!(
            "run `night-9` in {}",
            root.join("night-9").display()
        )),
        "{text}"
    );
    let o = distill(&["status", path.to_str().unwrap(), "--name", "../up"], &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--name"));
    let out = dir.path().join("trend");
    let s = |p: &Path| p.to_str().unwrap().to_string();

    // Two runs, the second better: exit 0, one table, 7 charts per dataset, no flag.
    let (code, err, html) = report(&[&s(&first), &s(&second)], &out);
    assert_eq!(code, 0, "{err}");
    // (The first table is the health warnings per run.)
    assert_eq!(structure(&out.join("trend.html")), "2 7 0");
    assert!(html.contains("Health warnings per run"), "no health table");
    for needle in ["<script", "src=", "href=", "<link"] {
        assert!(!html.contains(needle), "{needle} in the report");
    }
    // The numbers are the runs' metrics.json, in time order.
    let v = |run: &Path| -> f64 {
        let m: Value = read_json(&run.join("eval/metrics.json"));
        m["animals"]["distilled"]["student"]["ndcg@10"]
            .as_f64()
            .unwrap()
    };
    let (a, b) = (
        html.find(&format!("<td>{:.4}</td>", v(&first))),
        html.find(&format!("<td>{:.4}</td>", v(&second))),
    );
    assert!(
        a.is_some() && b.is_some() && a < b,
        "runs missing or out of order"
    );
    assert!(html.contains(&format!(
        "<td class=\"pos\">{:+.4}</td>",
        v(&second) - v(&first)
    )));

    // Three runs through a quoted glob, given out of order: the newest dropped by 0.03
    // from the one before, beyond the default threshold -> exit code 3, cells flagged. A
    // stray folder the glob also matches (only a log) is skipped with a warning.
    let stray = root.join("night-stray");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("log.jsonl"), "{}\n").unwrap();
    let glob = format!("{}/night-*", root.display());
    let (code, err, html) = report(&[&glob], &out);
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("warning: skipped") && err.contains("night-stray"),
        "{err}"
    );
    assert!(
        err.contains("regression: animals ndcg@10: night-3"),
        "{err}"
    );
    assert_eq!(structure(&out.join("trend.html")), "2 7 2");
    assert!(html.contains("REGRESSION"));
    let md = std::fs::read_to_string(out.join("trend.md")).unwrap();
    assert!(md.contains("(regression)**"), "{md}");
    assert!(md.contains(&third.display().to_string()), "{md}");

    // A threshold above the drop: no regression. Against the best earlier run, the
    // drop is the same here (night-2 is the best).
    let (code, err, _) = report(&[&glob, "--threshold", "0.05"], &out);
    assert_eq!(code, 0, "{err}");
    let (code, _, _) = report(&[&glob, "--against", "best"], &out);
    assert_eq!(code, 3);

    // The output root as a folder of runs: the cache folder is not a run; a run whose
    // eval has not completed is listed and skipped with a warning.
    let broken = later_night(&first, "night-4", 3, 0.0);
    std::fs::remove_file(broken.join("eval/manifest.json")).unwrap();
    let (code, err, html) = report(&[&s(&root)], &out);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("skipped") && err.contains("night-4"), "{err}");
    assert!(html.contains("3 runs"));

    // Bad arguments: an unknown metric names the flag; a folder without runs says so.
    let (code, err, _) = report(&[&s(&first), "--metrics", "ndcg@11"], &out);
    assert_eq!(code, 1);
    assert!(
        err.contains("--metrics") && err.contains("ndcg@11"),
        "{err}"
    );
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let (code, err, _) = report(&[&s(&empty)], &out);
    assert_eq!(code, 1);
    assert!(
        err.contains("empty") && err.contains("run director"),
        "{err}"
    );
}

#[test]
fn base_student_evaluation_is_cached_across_runs() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "cached");
    run_ok(&path, &[]);
    let p = Pipeline::load(&path).unwrap();
    let eval = p.run_dir.join("eval");
    let metrics = std::fs::read(eval.join("metrics.json")).unwrap();
    let trec = std::fs::read(eval.join("runs/animals.base+teacher.trec")).unwrap();
    let entries = std::fs::read_dir(p.cache_dir.join("eval")).unwrap().count();
    assert_eq!(entries, 1, "one cache entry per dataset");

    // Evaluating again (another night) takes the base student's run from the cache and
    // gives the same bytes (the teacher reranks its candidates with the others').
    let o = distill(
        &["run", path.to_str().unwrap(), "--only", "eval", "--force"],
        &[],
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("base student's run from"), "{err}");
    assert_eq!(std::fs::read(eval.join("metrics.json")).unwrap(), metrics);
    assert_eq!(
        std::fs::read(eval.join("runs/animals.base+teacher.trec")).unwrap(),
        trec
    );
}
