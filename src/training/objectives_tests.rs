use super::*;

fn config(margin_mse: f64, kl: f64, infonce: f64) -> LossConfig {
    LossConfig {
        margin_mse,
        kl,
        infonce,
        student_scale: 2.0,
        kl_student_temperature: 1.0,
        kl_teacher_temperature: 1.0,
        infonce_scale: 20.0,
        infonce_symmetric: false,
        exclude_false_negatives: false,
    }
}

/// Two queries with two documents each (positive first), unit vectors in 3 dimensions.
fn batch() -> (Tensor, Tensor, Vec<f32>) {
    let q = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 0.0, 1.0, 0.0]).view([2, 3]);
    let d = Tensor::from_slice(&[
        0.8f32, 0.6, 0.0, // query 0's positive
        0.0, 0.6, 0.8, // query 0's negative
        0.96, 0.28, 0.0, // query 1's positive
        1.0, 0.0, 0.0, // query 1's negative
    ])
    .view([4, 3]);
    (q, d, vec![3.0, -1.0, 2.5, 0.5])
}

fn value(t: &Tensor) -> f64 {
    t.double_value(&[])
}

#[test]
fn margin_mse_alone_is_the_mean_squared_margin_difference_of_the_scaled_scores() {
    let (q, d, teacher) = batch();
    let (total, terms) = student_loss(&q, &d, &teacher, &[false; 8], &config(1.5, 0.0, 0.0));
    // Scaled student scores (x2): query 0: 1.6 and 0.0; query 1: 0.56 and 0.0.
    let want = ((1.6 - 4.0f64).powi(2) + (0.56 - 2.0f64).powi(2)) / 2.0;
    assert!((value(&terms[0].1) - want).abs() < 1e-5, "{terms:?}");
    assert_eq!(terms.len(), 1);
    assert_eq!(terms[0].0, "margin_mse");
    assert!((value(&total) - 1.5 * want).abs() < 1e-5);
}

#[test]
fn every_term_is_weighted_into_the_total() {
    let (q, d, teacher) = batch();
    let (total, terms) = student_loss(&q, &d, &teacher, &[false; 8], &config(1.0, 3.0, 0.5));
    let names: Vec<&str> = terms.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["margin_mse", "kl", "infonce"]);
    let weighted = value(&terms[0].1) + 3.0 * value(&terms[1].1) + 0.5 * value(&terms[2].1);
    assert!((value(&total) - weighted).abs() < 1e-5);
}

/// InfoNCE of query `i` over the batch's documents, computed here from the dot products
/// with the masked columns left out.
fn infonce_by_hand(q: &Tensor, d: &Tensor, masked: &[bool]) -> f64 {
    let scores = q.matmul(&d.tr()) * 20.0;
    let mut sum = 0.0;
    for i in 0..2i64 {
        let row: Vec<f64> = (0..4i64)
            .filter(|&j| !masked[(i * 4 + j) as usize])
            .map(|j| scores.double_value(&[i, j]))
            .collect();
        let lse = row.iter().map(|s| s.exp()).sum::<f64>().ln();
        sum += lse - scores.double_value(&[i, i * 2]);
    }
    sum / 2.0
}

#[test]
fn infonce_leaves_out_the_masked_in_batch_documents() {
    let (q, d, teacher) = batch();
    // Query 0's row: query 1's positive (column 2) is also a positive of query 0.
    let mut masked = [false; 8];
    masked[2] = true;
    let (_, open) = student_loss(&q, &d, &teacher, &[false; 8], &config(0.0, 0.0, 1.0));
    let (_, closed) = student_loss(&q, &d, &teacher, &masked, &config(0.0, 0.0, 1.0));
    let (open, closed) = (value(&open[0].1), value(&closed[0].1));
    assert!(
        (open - infonce_by_hand(&q, &d, &[false; 8])).abs() < 1e-4,
        "{open}"
    );
    assert!(
        (closed - infonce_by_hand(&q, &d, &masked)).abs() < 1e-4,
        "{closed}"
    );
    // The masked document outscores query 0's own positive: leaving it out matters.
    assert!(open - closed > 0.1, "{open} {closed}");
}

#[test]
fn the_teachers_terms_sum_to_its_loss() {
    let logits = Tensor::from_slice(&[2.0f32, 0.5, -1.0, 0.0, 1.0, 0.3]).view([2, 3]);
    let (listwise, _) = teacher_loss(&logits, TeacherLoss::Listwise);
    let (bce, _) = teacher_loss(&logits, TeacherLoss::Bce);
    let (both, terms) = teacher_loss(&logits, TeacherLoss::ListwiseBce);
    assert_eq!(terms.len(), 2);
    assert!((value(&both) - value(&listwise) - value(&bce)).abs() < 1e-6);
    // Listwise cross-entropy by hand: -log softmax of the positive, averaged.
    let ce = |row: [f64; 3]| row.iter().map(|s| s.exp()).sum::<f64>().ln() - row[0];
    let want = (ce([2.0, 0.5, -1.0]) + ce([0.0, 1.0, 0.3])) / 2.0;
    assert!((value(&listwise) - want).abs() < 1e-5);
}

/// Data-parallel ranks take each micro-batch reordered (`feed::balanced`): the student's
/// loss and every term, with symmetric InfoNCE and a masked in-batch document, are the
/// same for the queries in another order (with their documents, teacher scores and mask
/// rows and columns), up to float rounding.
#[test]
fn the_students_loss_does_not_depend_on_the_order_of_the_queries() {
    let (q, d, teacher) = batch();
    let mut masked = [false; 8];
    masked[2] = true;
    let mut c = config(1.0, 2.0, 0.5);
    c.infonce_symmetric = true;
    let (total, terms) = student_loss(&q, &d, &teacher, &masked, &c);
    // Query 1 first: documents [2, 3, 0, 1], teacher scores likewise, and the mask's
    // rows swapped and its columns permuted alike.
    let order = [1i64, 0];
    let docs = [2i64, 3, 0, 1];
    let q2 = q.index_select(0, &Tensor::from_slice(&order));
    let d2 = d.index_select(0, &Tensor::from_slice(&docs));
    let teacher2: Vec<f32> = docs.iter().map(|&j| teacher[j as usize]).collect();
    let masked2: Vec<bool> = order
        .iter()
        .flat_map(|&i| docs.iter().map(move |&j| (i, j)))
        .map(|(i, j)| masked[(i * 4 + j) as usize])
        .collect();
    let (total2, terms2) = student_loss(&q2, &d2, &teacher2, &masked2, &c);
    assert!((value(&total) - value(&total2)).abs() < 1e-5);
    for ((name, a), (_, b)) in terms.iter().zip(&terms2) {
        assert!((value(a) - value(b)).abs() < 1e-5, "{name}");
    }
    // The mask mattered: without it the loss differs.
    let (open, _) = student_loss(&q, &d, &teacher, &[false; 8], &c);
    assert!((value(&open) - value(&total)).abs() > 1e-3);
}

/// The teacher's listwise and pointwise losses are means over the queries: the same for
/// the queries' rows in another order.
#[test]
fn the_teachers_loss_does_not_depend_on_the_order_of_the_queries() {
    let logits = Tensor::from_slice(&[2.0f32, 0.5, -1.0, 0.0, 1.0, 0.3]).view([2, 3]);
    let swapped = logits.index_select(0, &Tensor::from_slice(&[1i64, 0]));
    for loss in [
        TeacherLoss::Listwise,
        TeacherLoss::Bce,
        TeacherLoss::ListwiseBce,
    ] {
        let (a, _) = teacher_loss(&logits, loss);
        let (b, _) = teacher_loss(&swapped, loss);
        assert!((value(&a) - value(&b)).abs() < 1e-6);
    }
}
