use super::*;

fn run(rows: &[(&str, &[(&str, f32)])]) -> Runs {
    rows.iter()
        .map(|(q, docs)| {
            let docs = docs.iter().map(|(d, s)| (d.to_string(), *s)).collect();
            (q.to_string(), docs)
        })
        .collect()
}

fn ids(run: &Runs, q: &str) -> Vec<String> {
    run[q].iter().map(|(d, _)| d.clone()).collect()
}

#[test]
fn top_of_keeps_each_querys_first_documents_in_trec_order() {
    // Equal scores go by document id, descending, as trec_eval orders them.
    let r = run(&[("q1", &[("a", 0.1), ("b", 0.9), ("c", 0.5), ("d", 0.5)])]);
    assert_eq!(ids(&top_of(&r, 3), "q1"), ["b", "d", "c"]);
    assert_eq!(ids(&top_of(&r, 9), "q1"), ["b", "d", "c", "a"]);
}

#[test]
fn the_union_holds_every_students_top_k_once() {
    let a = run(&[("q1", &[("x", 0.9), ("y", 0.8), ("z", 0.1)]), ("q2", &[])]);
    let b = run(&[("q1", &[("w", 0.2), ("y", 0.7), ("x", 0.6)])]);
    let (q1, q2, q3) = ("q1".to_string(), "q2".to_string(), "q3".to_string());
    let u = union(&[&q1, &q2, &q3], &[&a, &b], 2);
    // a's top 2: x, y; b's: y, x. z and w are below both students' top 2.
    assert_eq!(ids(&u, "q1"), ["x", "y"]);
    assert!(u["q2"].is_empty() && u["q3"].is_empty());
    let u = union(&[&q1], &[&a, &b], 3);
    assert_eq!(ids(&u, "q1"), ["w", "x", "y", "z"]);
}

#[test]
fn a_reranked_run_takes_each_candidates_score_from_the_union() {
    let candidates = run(&[("q1", &[("x", 0.9), ("y", 0.8), ("z", 0.1)])]);
    let scores = run(&[("q1", &[("w", 5.0), ("x", 1.0), ("y", 3.0), ("z", 2.0)])]);
    let q1 = "q1".to_string();
    let source = Path::new("unit.json");
    let r = reranked_from(&[&q1], &candidates, 2, &scores, source).unwrap();
    assert_eq!(r["q1"], [("x".to_string(), 1.0), ("y".to_string(), 3.0)]);
    // Its measures and the recall of its top 10 as a lone rerank gives them.
    assert_eq!(top10_recall(&[&q1], &candidates, &r)["q1"], 1.0);
    // A candidate the union lacks is an error naming the source.
    let short = run(&[("q1", &[("x", 1.0)])]);
    let err = reranked_from(&[&q1], &candidates, 2, &short, source).unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("unit.json") && text.contains("`y`"), "{text}");
}
