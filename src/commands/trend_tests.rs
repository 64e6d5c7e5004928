//! Unit tests of `trend` (kept beside it, in their own file).
use super::*;
use serde_json::json;

fn point(label: &str, t: u64, ndcg: f64) -> RunPoint {
    RunPoint {
        dir: PathBuf::from(label),
        label: label.into(),
        finished_unix: t,
        metrics: json!({"d": {"distilled": {"student": {"ndcg@10": ndcg}}}}),
        health: None,
    }
}

#[test]
fn regression_is_a_drop_beyond_the_threshold() {
    let m = vec!["ndcg@10".to_string()];
    let runs = vec![
        point("a", 1, 0.70),
        point("b", 2, 0.72),
        point("c", 3, 0.705),
    ];
    assert!(regressions_at(&runs, 0, &m, 0.01, Against::Previous).is_empty());
    assert!(regressions_at(&runs, 1, &m, 0.01, Against::Previous).is_empty());
    let r = regressions_at(&runs, 2, &m, 0.01, Against::Previous);
    assert_eq!(r.len(), 1);
    assert_eq!((r[0].reference_run.as_str(), r[0].reference), ("b", 0.72));
    assert!(regressions_at(&runs, 2, &m, 0.02, Against::Previous).is_empty());
    // Against the best earlier run, a slow slide is caught too.
    let slide = vec![
        point("a", 1, 0.72),
        point("b", 2, 0.714),
        point("c", 3, 0.708),
    ];
    assert!(regressions_at(&slide, 2, &m, 0.01, Against::Previous).is_empty());
    assert_eq!(regressions_at(&slide, 2, &m, 0.01, Against::Best).len(), 1);
}

#[test]
fn wildcards_match_like_the_shell() {
    assert!(wildcard("nightly-*", "nightly-2026-11-22"));
    assert!(wildcard("night-?", "night-3"));
    assert!(!wildcard("night-?", "night-10"));
    assert!(wildcard("*", ""));
    assert!(!wildcard("nightly-*", "cache"));
    assert!(wildcard("a*b*c", "axxbyyc"));
}

#[test]
fn a_missing_metric_in_the_newest_run_is_a_regression() {
    let m = vec!["ndcg@10".to_string()];
    let mut runs = vec![point("a", 1, 0.70), point("b", 2, 0.70)];
    runs[1].metrics = json!({"d": {"distilled": {"student": {}}}});
    assert_eq!(
        regressions_at(&runs, 1, &m, 0.01, Against::Previous).len(),
        1
    );
}
