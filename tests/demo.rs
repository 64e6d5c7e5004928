//! The shipped demo pipeline (`pipelines/demo.toml`, what `make demo` runs) on a reduced
//! copy of the demo data: every stage completes, and the report has its sections.
use crate::common::distill_output as distill;
use crate::common::*;
use std::path::Path;

#[test]
fn demo_pipeline_runs_every_stage_on_reduced_demo_data() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo-data");
    let out = std::process::Command::new(python())
        .arg(repo().join("scripts/make_demo_data.py"))
        .args(["--reduced", "60", "--out"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The shipped file, pointed at the reduced data, the fetched student and a temporary
    // output root. One more change: a teacher trained for 4 steps on 60 queries scores
    // every candidate alike, so the false-negative margin would flag them all and leave
    // no negative to train on; the flags are kept out of it here.
    let shipped = std::fs::read_to_string(repo().join("pipelines/demo.toml")).unwrap();
    let student = student_dir().display().to_string();
    let text = shipped
        .replace(
            "\"data/demo\"",
            &format!("{:?}", data.display().to_string()),
        )
        .replace("\"models/all-MiniLM-L6-v2\"", &format!("{student:?}"))
        .replace("absolute_margin = 0.5", "")
        // (The shipped file already lets its weak teacher through the gate.)
        .replace(
            "output_root = \"checkpoints\"",
            &format!(
                "output_root = {:?}",
                dir.path().join("out").display().to_string()
            ),
        );
    assert_ne!(text, shipped);
    let path = dir.path().join("demo.toml");
    std::fs::write(&path, text).unwrap();

    let o = distill(&["run", path.to_str().unwrap()], &[]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    // The headline numbers and the report's path are printed.
    assert!(err.contains("demo: nDCG@10 base student"), "{err}");
    assert!(err.contains("report: "), "{err}");

    // Every stage's manifest is complete: `status` says done for each of them.
    let o = distill(&["status", path.to_str().unwrap()], &[]);
    let status = String::from_utf8_lossy(&o.stdout);
    let run = dir.path().join("out/demo");
    for stage in ["mine", "teacher", "score", "train", "eval", "report"] {
        let line = status
            .lines()
            .find(|l| l.trim_start().starts_with(stage))
            .unwrap_or_else(|| panic!("{stage} missing from status:\n{status}"));
        assert!(line.trim_end().ends_with(" done"), "{line}");
        assert!(run.join(stage).join("manifest.json").exists());
    }
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    for section in [
        "## Health",
        "Teacher check on the dev slice",
        "## Retrieval",
        "### demo:",
        "## Stages",
        "## Loss curves",
        "## Configuration",
    ] {
        assert!(md.contains(section), "{section} missing from the report");
    }
    assert!(Path::new(&run.join("report/report.html")).exists());
}
