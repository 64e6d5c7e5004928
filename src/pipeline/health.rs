//! Whether a night's run is worth trusting. Stages record raw statistics in their
//! manifests' summaries (the teacher's and the students' numbers on the dev slice, the
//! separation of the teacher's scores, the flagged and dropped shares, the loss at both
//! ends of training); this module turns them into findings against the `[health]`
//! thresholds. The runner prints and logs the findings (and fails on them with
//! `--strict-health`), the report shows them in its Health box, and the trend report
//! carries them across nights. Nothing here is hashed: changing a threshold reruns
//! nothing.
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// `[health]`, resolved.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthConfig {
    pub min_teacher_gain: f64,
    pub allow_weak_teacher: bool,
    pub min_teacher_auc: f64,
    pub max_flagged_share: f64,
    pub max_dropped_share: f64,
    pub min_loss_drop: f64,
    pub min_dev_gain: f64,
    pub min_gain_from_teacher: f64,
}

/// One health warning.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// `weak_teacher`, `no_dev_slice`, `teacher_auc`, `flagged_share`, `dropped_share`,
    /// `loss_not_falling`, `student_below_base`, `no_gain_from_teacher`.
    pub check: String,
    pub stage: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<String>,
    pub value: f64,
    pub threshold: f64,
    pub message: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.message)
    }
}

/// The AUC of `positives` against `negatives`: the probability that a random positive
/// scores above a random negative, ties counting one half (the Mann-Whitney statistic).
/// None when either side is empty.
pub fn auc(positives: &[f32], negatives: &[f32]) -> Option<f64> {
    if positives.is_empty() || negatives.is_empty() {
        return None;
    }
    let mut neg: Vec<f32> = negatives.to_vec();
    neg.sort_by(f32::total_cmp);
    let mut wins = 0.0f64;
    for &p in positives {
        let below = neg.partition_point(|&n| n < p);
        let not_above = neg.partition_point(|&n| n <= p);
        wins += below as f64 + (not_above - below) as f64 / 2.0;
    }
    Some(wins / (positives.len() as f64 * neg.len() as f64))
}

/// Mean loss over the first and the last 10% of the steps (at least one step each); None
/// without steps.
pub fn loss_ends(loss: &[f32]) -> Option<(f64, f64)> {
    if loss.is_empty() {
        return None;
    }
    let w = loss.len().div_ceil(10);
    let mean = |v: &[f32]| v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
    Some((mean(&loss[..w]), mean(&loss[loss.len() - w..])))
}

/// The summary entry of a training stage's loss ends (`loss_first`, `loss_last`).
pub fn loss_summary(loss: &[f32]) -> Value {
    match loss_ends(loss) {
        Some((first, last)) => json!({"loss_first": first, "loss_last": last}),
        None => json!({}),
    }
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

/// The datasets whose teacher rerank does not beat the student alone on the dev slice by
/// `min_gain` (nDCG@10): (dataset, student, teacher) from the teacher stage's summary.
pub fn weak_teacher(teacher_summary: &Value, min_gain: f64) -> Vec<(String, f64, f64)> {
    let Some(dev) = teacher_summary["dev"].as_object() else {
        return Vec::new();
    };
    dev.iter()
        .filter(|(_, v)| v["queries"].as_u64() != Some(0))
        .filter_map(|(name, v)| {
            // A number that is missing (or NaN) fails: the gate never lets one through.
            let s = num(&v["student"]["ndcg@10"]).unwrap_or(f64::NAN);
            let t = num(&v["teacher"]["ndcg@10"]).unwrap_or(f64::NAN);
            (t - s < min_gain || (t - s).is_nan()).then(|| (name.clone(), s, t))
        })
        .collect()
}

/// The findings of one stage's summary.
pub fn findings(stage: &str, summary: &Value, cfg: &HealthConfig) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut add = |check: &str, dataset: Option<&str>, value: f64, threshold: f64, message| {
        out.push(Finding {
            check: check.into(),
            stage: stage.into(),
            dataset: dataset.map(str::to_string),
            value,
            threshold,
            message,
        })
    };
    match stage {
        "teacher" => {
            if summary["dev"].as_object().is_some_and(|d| d.is_empty()) {
                add(
                    "no_dev_slice",
                    None,
                    0.0,
                    0.0,
                    "no dev slice (teacher_train.dev_queries = 0): the teacher gate cannot run"
                        .to_string(),
                );
            }
            for (name, v) in summary["dev"].as_object().into_iter().flatten() {
                if v["queries"].as_u64() == Some(0) {
                    add(
                        "no_dev_slice",
                        Some(name),
                        0.0,
                        0.0,
                        format!(
                            "{name}: too few labelled training queries for a dev slice: the \
                             teacher gate cannot check this dataset"
                        ),
                    );
                }
            }
            for (name, s, t) in weak_teacher(summary, cfg.min_teacher_gain) {
                add(
                    "weak_teacher",
                    Some(&name),
                    t - s,
                    cfg.min_teacher_gain,
                    format!(
                        "{name}: the teacher's rerank ({t:.4} nDCG@10) does not beat the \
                         student alone ({s:.4}) on the dev slice by {} (health.min_teacher_gain)",
                        cfg.min_teacher_gain
                    ),
                );
            }
        }
        "score" => {
            for (name, v) in summary.as_object().into_iter().flatten() {
                if let Some(a) = num(&v["teacher_auc"]).filter(|&a| a < cfg.min_teacher_auc) {
                    add(
                        "teacher_auc",
                        Some(name),
                        a,
                        cfg.min_teacher_auc,
                        format!(
                            "{name}: the teacher separates positives from negatives with an \
                             AUC of {a:.3}, below {} (health.min_teacher_auc)",
                            cfg.min_teacher_auc
                        ),
                    );
                }
                if let Some(f) = num(&v["flagged_share"]).filter(|&f| f > cfg.max_flagged_share) {
                    add(
                        "flagged_share",
                        Some(name),
                        f,
                        cfg.max_flagged_share,
                        format!(
                            "{name}: {:.1}% of the negatives are flagged as likely false \
                             negatives, above {:.1}% (health.max_flagged_share)",
                            f * 100.0,
                            cfg.max_flagged_share * 100.0
                        ),
                    );
                }
            }
        }
        "train" => {
            if let Some(d) = num(&summary["dropped_share"]).filter(|&d| d > cfg.max_dropped_share) {
                add(
                    "dropped_share",
                    None,
                    d,
                    cfg.max_dropped_share,
                    format!(
                        "{:.1}% of the training queries were dropped for want of a negative, \
                         above {:.1}% (health.max_dropped_share)",
                        d * 100.0,
                        cfg.max_dropped_share * 100.0
                    ),
                );
            }
        }
        "eval" => {
            for (name, v) in summary.as_object().into_iter().flatten() {
                if let Some(g) =
                    num(&v["gain_from_teacher"]).filter(|&g| g <= cfg.min_gain_from_teacher)
                {
                    add(
                        "no_gain_from_teacher",
                        Some(name),
                        g,
                        cfg.min_gain_from_teacher,
                        format!(
                            "{name}: the distilled student is {g:+.4} nDCG@10 from the \
                             contrastive baseline (same data, no teacher terms), not above {} \
                             (health.min_gain_from_teacher): the teacher's scores add nothing",
                            cfg.min_gain_from_teacher
                        ),
                    );
                }
                let dev = &v["dev"];
                let (Some(b), Some(d)) = (
                    num(&dev["base"]["ndcg@10"]),
                    num(&dev["distilled"]["ndcg@10"]),
                ) else {
                    continue;
                };
                if d - b < cfg.min_dev_gain {
                    add(
                        "student_below_base",
                        Some(name),
                        d - b,
                        cfg.min_dev_gain,
                        format!(
                            "{name}: the distilled student ({d:.4} nDCG@10) is not above the \
                             base student ({b:.4}) on the dev slice by {} (health.min_dev_gain)",
                            cfg.min_dev_gain
                        ),
                    );
                }
            }
        }
        _ => {}
    }
    if let (Some(first), Some(last)) = (num(&summary["loss_first"]), num(&summary["loss_last"])) {
        let drop = if first != 0.0 {
            1.0 - last / first
        } else {
            0.0
        };
        if drop < cfg.min_loss_drop {
            add(
                "loss_not_falling",
                None,
                drop,
                cfg.min_loss_drop,
                format!(
                    "the {stage} loss fell by {:.1}% (first 10% of steps {first:.4}, last 10% \
                     {last:.4}), less than {:.1}% (health.min_loss_drop)",
                    drop * 100.0,
                    cfg.min_loss_drop * 100.0
                ),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> HealthConfig {
        HealthConfig {
            min_teacher_gain: 0.01,
            allow_weak_teacher: false,
            min_teacher_auc: 0.75,
            max_flagged_share: 0.3,
            max_dropped_share: 0.1,
            min_loss_drop: 0.1,
            min_dev_gain: 0.0,
            min_gain_from_teacher: 0.0,
        }
    }

    fn checks(stage: &str, summary: Value) -> Vec<String> {
        findings(stage, &summary, &cfg())
            .into_iter()
            .map(|f| f.check)
            .collect()
    }

    #[test]
    fn auc_counts_ties_as_halves() {
        assert_eq!(auc(&[3.0, 4.0], &[1.0, 2.0]), Some(1.0));
        assert_eq!(auc(&[1.0], &[2.0, 3.0]), Some(0.0));
        assert_eq!(auc(&[2.0], &[1.0, 2.0, 3.0]), Some(0.5));
        assert_eq!(auc(&[1.0, 1.0], &[1.0]), Some(0.5));
        assert_eq!(auc(&[], &[1.0]), None);
    }

    #[test]
    fn loss_ends_average_a_tenth_of_the_steps() {
        let loss: Vec<f32> = (0..20).map(|i| 20.0 - i as f32).collect();
        assert_eq!(loss_ends(&loss), Some((19.5, 1.5)));
        assert_eq!(loss_ends(&[2.0]), Some((2.0, 2.0)));
        assert_eq!(loss_ends(&[]), None);
    }

    #[test]
    fn each_check_fires_on_a_crafted_case_and_not_on_a_healthy_one() {
        let dev = |s: f64, t: f64| json!({"dev": {"x": {"student": {"ndcg@10": s}, "teacher": {"ndcg@10": t}}}, "loss_first": 2.77, "loss_last": 0.9});
        assert!(checks("teacher", dev(0.5, 0.6)).is_empty());
        assert_eq!(checks("teacher", dev(0.5, 0.505)), vec!["weak_teacher"]);
        assert_eq!(checks("teacher", json!({"dev": {}})), vec!["no_dev_slice"]);
        let loss = json!({"dev": {"x": {"student": {"ndcg@10": 0.5}, "teacher": {"ndcg@10": 0.7}}}, "loss_first": 2.77, "loss_last": 2.53});
        assert_eq!(checks("teacher", loss), vec!["loss_not_falling"]);

        let score = |auc: f64, flagged: f64| json!({"x": {"teacher_auc": auc, "flagged_share": flagged}, "flagged_false_negatives": 3});
        assert!(checks("score", score(0.93, 0.05)).is_empty());
        assert_eq!(checks("score", score(0.6, 0.05)), vec!["teacher_auc"]);
        assert_eq!(checks("score", score(0.93, 0.53)), vec!["flagged_share"]);

        let train =
            |dropped: f64| json!({"dropped_share": dropped, "loss_first": 4.0, "loss_last": 2.0});
        assert!(checks("train", train(0.0)).is_empty());
        assert_eq!(checks("train", train(0.37)), vec!["dropped_share"]);

        let eval = |b: f64, d: f64| json!({"x": {"dev": {"base": {"ndcg@10": b}, "distilled": {"ndcg@10": d}}}});
        assert!(checks("eval", eval(0.6, 0.65)).is_empty());
        assert_eq!(checks("eval", eval(0.6, 0.58)), vec!["student_below_base"]);
        let gain = |g: f64| json!({"x": {"gain_from_teacher": g}});
        assert!(checks("eval", gain(0.02)).is_empty());
        assert_eq!(checks("eval", gain(-0.011)), vec!["no_gain_from_teacher"]);
        assert_eq!(checks("eval", gain(0.0)), vec!["no_gain_from_teacher"]);
    }

    #[test]
    fn weak_teacher_names_each_failing_dataset() {
        let s = json!({"dev": {
            "a": {"student": {"ndcg@10": 0.5}, "teacher": {"ndcg@10": 0.13}},
            "b": {"student": {"ndcg@10": 0.5}, "teacher": {"ndcg@10": 0.6}},
        }});
        assert_eq!(weak_teacher(&s, 0.01), vec![("a".to_string(), 0.5, 0.13)]);
        assert!(weak_teacher(&s, -1.0).is_empty());
        // A missing number fails; a dataset without a slice is not gated but named.
        let s = json!({"dev": {"a": {"student": {"ndcg@10": 0.5}}, "b": {"queries": 0}}});
        assert_eq!(weak_teacher(&s, -1.0).len(), 1);
        assert_eq!(checks("teacher", s), vec!["no_dev_slice", "weak_teacher"]);
    }
}
