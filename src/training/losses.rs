//! Distillation and ranking losses, with sentence-transformers' semantics.
//!
//! Shapes: `student` and `teacher` scores are `[queries, 1 + negatives]` with the
//! positive in column 0.
use tch::{Kind, Reduction, Tensor};

/// Margin-MSE (Hofstätter et al. 2020; sentence-transformers `MarginMSELoss`): mean
/// squared error between the student's and the teacher's (positive - negative) margins.
pub fn margin_mse(student: &Tensor, teacher: &Tensor) -> Tensor {
    let s = student.narrow(1, 0, 1) - student.narrow(1, 1, student.size()[1] - 1);
    let t = teacher.narrow(1, 0, 1) - teacher.narrow(1, 1, teacher.size()[1] - 1);
    s.mse_loss(&t.detach(), Reduction::Mean)
}

/// KL(teacher || student) over each group (sentence-transformers `DistillKLDivLoss`):
/// softmax(teacher / t_T) against log_softmax(student / s_T), batch mean, times s_T^2.
pub fn kl(
    student: &Tensor,
    teacher: &Tensor,
    student_temperature: f64,
    teacher_temperature: f64,
) -> Tensor {
    let log_q = (student / student_temperature).log_softmax(1, Kind::Float);
    let p = (teacher.detach() / teacher_temperature).softmax(1, Kind::Float);
    // p * (log p - log q), with 0 log 0 = 0 (as torch's kl_div).
    let log_p = p.clamp_min(1e-45).log();
    let kl = (&p * (log_p - log_q)).sum_dim_intlist([1].as_slice(), false, Kind::Float);
    kl.mean(Kind::Float) * (student_temperature * student_temperature)
}

/// InfoNCE (sentence-transformers `MultipleNegativesRankingLoss`): cross-entropy of each
/// query against every document of the batch (`docs`: `[n_docs, d]`), scaled by `scale`.
/// `targets[i]` is the column of query i's positive; `mask[i][j]` true removes column j
/// for query i (another positive of the same query, which is not a negative).
pub fn infonce(
    queries: &Tensor,
    docs: &Tensor,
    targets: &[i64],
    mask: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    let mut logits = queries.matmul(&docs.tr()).to_kind(Kind::Float) * scale;
    if let Some(m) = mask {
        logits = logits.masked_fill(m, f64::NEG_INFINITY);
    }
    let t = crate::model::batching::upload(&Tensor::from_slice(targets), logits.device());
    logits.cross_entropy_for_logits(&t)
}

/// The `doc_to_query` direction of sentence-transformers' `MultipleNegativesRankingLoss`
/// (with `query_to_doc`, per direction: the former `MultipleNegativesSymmetricRankingLoss`):
/// each query's positive (row `targets[i]` of `docs`) against every query of the batch,
/// query i being the target; `mask[i][j]` true removes query j (another query that has
/// the same document as a positive). That is [`infonce`] with the roles swapped.
pub fn infonce_doc_to_query(
    queries: &Tensor,
    docs: &Tensor,
    targets: &[i64],
    mask: Option<&Tensor>,
    scale: f64,
) -> Tensor {
    let rows = crate::model::batching::upload(&Tensor::from_slice(targets), docs.device());
    let own: Vec<i64> = (0..targets.len() as i64).collect();
    infonce(&docs.index_select(0, &rows), queries, &own, mask, scale)
}

/// Listwise cross-entropy for a cross-encoder: the positive (column 0) against its
/// group's negatives.
pub fn listwise_ce(logits: &Tensor) -> Tensor {
    let n = logits.size()[0];
    let t = Tensor::zeros([n], (Kind::Int64, logits.device()));
    logits.to_kind(Kind::Float).cross_entropy_for_logits(&t)
}

/// Binary cross-entropy on every pair of the groups: 1 for column 0, 0 for the others.
pub fn pointwise_bce(logits: &Tensor) -> Tensor {
    let labels = logits.zeros_like().to_kind(Kind::Float);
    let _ = labels.narrow(1, 0, 1).fill_(1.0);
    logits
        .to_kind(Kind::Float)
        .binary_cross_entropy_with_logits::<Tensor>(&labels, None, None, Reduction::Mean)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32], cols: i64) -> Tensor {
        Tensor::from_slice(v).view([-1, cols])
    }

    #[test]
    fn margin_mse_is_zero_for_equal_margins() {
        let s = t(&[3.0, 1.0, 0.0], 3);
        let te = t(&[13.0, 11.0, 10.0], 3);
        assert_eq!(margin_mse(&s, &te).double_value(&[]), 0.0);
        let te = t(&[13.0, 12.0, 10.0], 3); // margins 1 and 3 vs 2 and 3
        assert!((margin_mse(&s, &te).double_value(&[]) - 0.5).abs() < 1e-6);
    }

    #[test]
    fn kl_is_zero_for_equal_distributions_and_positive_otherwise() {
        let s = t(&[1.0, 0.0, -1.0], 3);
        assert!(kl(&s, &s, 1.0, 1.0).double_value(&[]).abs() < 1e-6);
        assert!(kl(&s, &t(&[-1.0, 0.0, 1.0], 3), 1.0, 1.0).double_value(&[]) > 0.1);
    }

    #[test]
    fn doc_to_query_infonce_is_infonce_of_the_transposed_batch() {
        // One positive per query (k = 1): the document-to-query loss is InfoNCE with the
        // roles swapped.
        let q = t(&[1.0, 0.0, 0.6, 0.8, 0.0, 1.0], 2);
        let d = t(&[0.8, 0.6, 0.0, 1.0, 1.0, 0.0], 2);
        let a = infonce_doc_to_query(&q, &d, &[0, 1, 2], None, 20.0).double_value(&[]);
        let b = infonce(&d, &q, &[0, 1, 2], None, 20.0).double_value(&[]);
        assert!((a - b).abs() < 1e-6, "{a} {b}");
        // With a hard negative after each positive (k = 2) the negatives take no part.
        let d2 = t(
            &[0.8, 0.6, 9.0, 9.0, 0.0, 1.0, 9.0, 9.0, 1.0, 0.0, 9.0, 9.0],
            2,
        );
        let c = infonce_doc_to_query(&q, &d2, &[0, 2, 4], None, 20.0).double_value(&[]);
        assert!((a - c).abs() < 1e-6, "{a} {c}");
        // Masking query 1 for document 0 (query 1 shares that positive) lowers the loss.
        let m = Tensor::from_slice(&[false, true, false, false, false, false, false, false, false])
            .view([3, 3]);
        let masked = infonce_doc_to_query(&q, &d, &[0, 1, 2], Some(&m), 20.0).double_value(&[]);
        assert!(masked < a, "{masked} {a}");
    }

    #[test]
    fn infonce_mask_removes_duplicate_positives() {
        let q = t(&[1.0, 0.0], 2);
        let d = t(&[1.0, 0.0, 1.0, 0.0, 0.0, 1.0], 2);
        let plain = infonce(&q, &d, &[0], None, 1.0).double_value(&[]);
        let mask = Tensor::from_slice(&[false, true, false]).view([1, 3]);
        let masked = infonce(&q, &d, &[0], Some(&mask), 1.0).double_value(&[]);
        assert!(masked < plain);
        let want = -(1f64.exp() / (1f64.exp() + 1.0)).ln();
        assert!((masked - want).abs() < 1e-6);
    }
}
