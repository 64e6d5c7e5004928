//! Which training checkpoints to keep: the last `keep_last`, plus the best one when asked.
//! A pure function, so the policy is tested without touching files.

/// Given the steps of existing checkpoints, return the ones to delete.
pub fn to_delete(steps: &[u64], keep_last: usize, best: Option<u64>) -> Vec<u64> {
    let mut sorted: Vec<u64> = steps.to_vec();
    sorted.sort_unstable();
    sorted.dedup();
    let keep_from = sorted.len().saturating_sub(keep_last.max(1));
    sorted
        .iter()
        .enumerate()
        .filter(|(i, s)| *i < keep_from && Some(**s) != best)
        .map(|(_, s)| *s)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_k_and_the_best() {
        assert_eq!(to_delete(&[100, 300, 200, 400], 2, None), vec![100, 200]);
        assert_eq!(to_delete(&[100, 200, 300, 400], 2, Some(100)), vec![200]);
        assert_eq!(to_delete(&[100, 200], 5, None), Vec::<u64>::new());
        // keep_last 0 still keeps the newest: resuming needs one.
        assert_eq!(to_delete(&[1, 2, 3], 0, None), vec![1, 2]);
        assert_eq!(to_delete(&[], 2, None), Vec::<u64>::new());
    }
}
