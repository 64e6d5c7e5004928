//! Metrics against pytrec_eval, query by query.
use crate::common::*;
use distill::ranking::metrics::{evaluate, Judgements, Measures};
use std::collections::BTreeMap;

#[derive(serde::Deserialize)]
struct EvalRef {
    qrels: BTreeMap<String, Judgements>,
    run: BTreeMap<String, BTreeMap<String, f32>>,
    per_query: BTreeMap<String, BTreeMap<String, f64>>,
}

#[test]
fn metrics_equal_pytrec_eval() {
    let r: EvalRef = read_json(&generated("eval_reference.json"));
    // pytrec_eval evaluates exactly the queries that are both judged and retrieved.
    let evaluated: Vec<&String> = r.run.keys().filter(|q| r.qrels.contains_key(*q)).collect();
    assert_eq!(evaluated.len(), r.per_query.len());
    let mut checked = 0;
    for q in evaluated {
        let run: Vec<(String, f32)> = r.run[q].iter().map(|(d, s)| (d.clone(), *s)).collect();
        let m = evaluate(&run, &r.qrels[q]);
        for (name, got) in Measures::NAMES.iter().zip(m.values()) {
            let want = r.per_query[q][*name];
            assert!(
                (got - want).abs() <= 1e-6,
                "{q} {name}: {got} vs pytrec_eval {want}"
            );
            checked += 1;
        }
    }
    assert_eq!(checked, 7 * r.per_query.len());
}
