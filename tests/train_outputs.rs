//! What a trained run hands on: students that sentence-transformers loads, eval's metrics
//! against pytrec_eval, and the run report.
use crate::common::*;
use crate::train::{pipeline, run_ok};
use distill::pipeline::Pipeline;
use tch::Kind;

#[test]
fn trained_models_load_in_sentence_transformers() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "export");
    // `[train]` is the file's last section: the distilled student keeps this length.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("max_seq_length = 24\n");
    std::fs::write(&path, text).unwrap();
    run_ok(&path, &[]);
    let run = Pipeline::load(&path).unwrap().run_dir;
    let student = run.join("train/student");
    let st: serde_json::Value = read_json(&student.join("sentence_bert_config.json"));
    assert_eq!(st["max_seq_length"], 24, "{st}");
    let out = dir.path().join("ref.json");
    reference_embed(&student, &out);
    let theirs: RefEmbeddings = read_json(&out);
    let model =
        distill::model::BiEncoder::load(&student, tch::Device::Cpu, Kind::Float, None).unwrap();
    let texts: Vec<String> = texts().into_iter().map(|t| t.text).collect();
    assert_eq!(model.spec.max_seq_length, 24);
    let ours = rows(
        &model
            .encode(distill::model::Side::Document, &texts, 16, &mut |_| {})
            .unwrap(),
    );
    assert!(max_abs_diff(&ours, &theirs.embeddings) <= 1e-5);
    // It changed: training moved the weights away from the base student.
    let base = distill::model::BiEncoder::load(
        &generated("tiny_bi_mean"),
        tch::Device::Cpu,
        Kind::Float,
        None,
    )
    .unwrap();
    let before = rows(
        &base
            .encode(distill::model::Side::Document, &texts, 16, &mut |_| {})
            .unwrap(),
    );
    assert!(max_abs_diff(&ours, &before) > 1e-3);

    let teacher = run.join("teacher/model");
    let out = dir.path().join("rerank.json");
    reference_rerank(&teacher, &out);
    let theirs: RefScores = read_json(&out);
    let ce =
        distill::model::CrossEncoder::load(&teacher, None, tch::Device::Cpu, Kind::Float).unwrap();
    assert_eq!(ce.activation, distill::model::Activation::Identity);
    let pairs: Vec<(String, String)> = pairs().into_iter().map(|p| (p.query, p.passage)).collect();
    let logits = ce.logits(&pairs, 8, &mut |_| {}).unwrap();
    let scores = ce.score(&pairs, 8, &mut |_| {}).unwrap();
    assert_scores_match("trained teacher", &logits, &scores, &theirs);
}

#[test]
fn eval_reports_metrics_that_pytrec_eval_recomputes_from_its_run_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "eval");
    // The teacher reranks fewer than the students retrieve, so their top documents differ.
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("\n[eval]\nrerank_k = 5\n");
    std::fs::write(&path, text).unwrap();
    run_ok(&path, &[]);
    let run = Pipeline::load(&path).unwrap().run_dir;
    let metrics: serde_json::Value = read_json(&run.join("eval/metrics.json"));
    let ds = &metrics["animals"];
    for model in ["base", "distilled"] {
        for system in ["student", "student+teacher", "gap"] {
            for m in distill::ranking::metrics::Measures::NAMES {
                assert!(
                    ds[model][system][m].is_number(),
                    "{model} {system} {m} missing"
                );
            }
        }
        let r = ds[model]["student_recall_of_teacher_top10"]
            .as_f64()
            .unwrap();
        assert!((0.0..=1.0).contains(&r));
    }
    // pytrec_eval on the TREC run files gives the same means.
    let qrels = generated("beir_tiny").join("qrels/test.tsv");
    for (model, system) in [
        ("base", "student"),
        ("distilled", "student"),
        ("distilled", "student+teacher"),
    ] {
        let tag = if system == "student" {
            model.to_string()
        } else {
            format!("{model}+teacher")
        };
        let file = run.join(format!("eval/runs/animals.{tag}.trec"));
        let want = pytrec_eval_means(&file, &qrels);
        for m in distill::ranking::metrics::Measures::NAMES {
            let got = ds[model][system][m].as_f64().unwrap();
            let want = want[m].as_f64().unwrap();
            assert!(
                (got - want).abs() < 1e-6,
                "{tag} {m}: {got} vs pytrec_eval {want}"
            );
        }
    }
    // The teacher scores each (query, document) once for every student: each reranked run
    // holds its student's top `rerank_k` (TREC order), with the same score wherever a pair
    // recurs, and that score is the teacher's own for the pair.
    let k = 5;
    let read = |tag: &str| {
        let file = run.join(format!("eval/runs/animals.{tag}.trec"));
        distill::ranking::trec::read_run(&file, |_, _| Ok(())).unwrap()
    };
    let mut seen: std::collections::BTreeMap<(String, String), f64> = Default::default();
    let mut recurring = 0;
    for model in ["base", "distilled"] {
        let (student, reranked) = (read(model), read(&format!("{model}+teacher")));
        assert_eq!(student.len(), reranked.len());
        for (q, docs) in &student {
            let mut top: Vec<(String, f64)> = docs.clone();
            distill::ranking::metrics::trec_order(&mut top);
            let mut want: Vec<&String> = top.iter().take(k).map(|(d, _)| d).collect();
            let mut got: Vec<&String> = reranked[q].iter().map(|(d, _)| d).collect();
            want.sort();
            got.sort();
            assert_eq!(got, want, "{model}: query {q}");
            for (d, s) in &reranked[q] {
                let prev = seen.insert((q.clone(), d.clone()), *s);
                assert!(prev.is_none_or(|p| p == *s), "{q} {d}: {prev:?} vs {s}");
                recurring += usize::from(prev.is_some());
            }
        }
    }
    assert!(recurring > 0, "no pair in both students' top {k}");
    let p = Pipeline::load(&path).unwrap();
    let data = distill::data::beir::Dataset::load(&p.datasets[0].path, &["test"], false).unwrap();
    let teacher = distill::stages::paths::teacher_dir(&p);
    let teacher =
        distill::model::CrossEncoder::load(&teacher, Some(64), tch::Device::Cpu, Kind::Float)
            .unwrap();
    let pairs: Vec<(String, String)> = seen
        .keys()
        .take(40)
        .map(|(q, d)| {
            let q = data.queries.text(q).unwrap().unwrap().into_owned();
            (q, data.corpus.text(d).unwrap().unwrap().into_owned())
        })
        .collect();
    let theirs = teacher.score(&pairs, 8, &mut |_| {}).unwrap();
    assert_eq!(theirs.len(), seen.len().min(40));
    for (((q, d), ours), s) in seen.iter().zip(&theirs) {
        assert!((ours - *s as f64).abs() < 1e-5, "{q} {d}: {ours} vs {s}");
    }
    // Per-query rows: one per (model, judged query).
    let script = "import sys, pyarrow.parquet as pq\nt = pq.read_table(sys.argv[1])\nprint(t.num_rows, 'student ndcg@10' in t.column_names)";
    let out = python_stdout(script, &[&run.join("eval/per_query.parquet")]);
    let queries = ds["queries"].as_u64().unwrap();
    assert_eq!(out.trim(), format!("{} True", 2 * queries));
}

#[test]
fn report_is_self_contained_html_with_every_table_and_chart() {
    let dir = tempfile::tempdir().unwrap();
    let path = pipeline(dir.path(), "report");
    run_ok(&path, &[]);
    let run = Pipeline::load(&path).unwrap().run_dir;
    let metrics: serde_json::Value = read_json(&run.join("eval/metrics.json"));
    let html = std::fs::read_to_string(run.join("report/report.html")).unwrap();
    let md = std::fs::read_to_string(run.join("report/report.md")).unwrap();
    // Well-formed (an XML parser reads it); one table per dataset, one for the stages, one
    // for mining and scoring; one chart per loss curve (teacher, train).
    let script = "import sys, xml.etree.ElementTree as ET\n\
                  r = ET.parse(sys.argv[1]).getroot()\n\
                  print(len(r.findall('.//table')), len(r.findall('.//{http://www.w3.org/2000/svg}svg')))";
    let out = python_stdout(script, &[&run.join("report/report.html")]);
    // Tables: the dataset's, the queries it improved and hurt most, stages, mining and
    // scoring; charts: the two loss curves and the teacher's score histogram.
    assert_eq!(out.trim(), "5 3");
    // The health box comes first; every chart names its axes.
    let health = html.find("<div class=\"health\">").expect("no health box");
    assert!(health < html.find("<h2>Retrieval</h2>").unwrap());
    for axis in [
        "optimizer step",
        "loss",
        "teacher score",
        "share of the pairs",
    ] {
        assert!(
            html.contains(&format!(">{axis}</text>")),
            "axis `{axis}` unnamed"
        );
    }
    // The improved (hurt) queries rose (fell) from base to distilled nDCG@10; at most five
    // of each.
    let script = "import sys, xml.etree.ElementTree as ET, pyarrow.parquet as pq\n\
                  r = ET.parse(sys.argv[1]).getroot()\n\
                  title, n = None, 0\n\
                  for e in r.iter():\n\
                  \x20   if e.tag == 'h3': title = e.text\n\
                  \x20   if e.tag == 'tr' and title and 'most' in title:\n\
                  \x20       c = [x.text or '' for x in e.findall('td')]\n\
                  \x20       if not c or not c[1]: continue\n\
                  \x20       b, d = float(c[1]), float(c[2])\n\
                  \x20       assert (d > b) if 'improved' in title else (d < b), (title, c)\n\
                  \x20       n += 1\n\
                  print(n)";
    let rows = python_stdout(script, &[&run.join("report/report.html")]);
    let changed = rows.trim().parse::<usize>().unwrap();
    assert!(changed <= 10, "{changed}");
    // Self-contained: no scripts, no links or sources to fetch.
    for needle in ["<script", "src=", "href=", "<link"] {
        assert!(!html.contains(needle), "{needle} in the report");
    }
    // The numbers are metrics.json's.
    for model in ["base", "distilled"] {
        let v = metrics["animals"][model]["student"]["ndcg@10"]
            .as_f64()
            .unwrap();
        let cell = format!("{v:.4}");
        assert!(
            html.contains(&format!("<td>{cell}</td>")),
            "{cell} missing from the HTML"
        );
        assert!(md.contains(&cell), "{cell} missing from the Markdown");
    }
    for section in [
        "## Retrieval",
        "## Queries that changed most",
        "## Teacher scores",
        "## Stages",
        "## Loss curves",
        "## Configuration",
    ] {
        assert!(md.contains(section), "{section} missing");
    }
}
