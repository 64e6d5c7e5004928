//! Length-sorted batching: inputs of similar length share a batch, so padding is small.
//! And [`upload`]: host tensors to the device without waiting for it; [`prepare_ahead`]:
//! the next chunk's host work on a thread while the device works on the current one.
use crate::error::Result;
use tch::{Device, Tensor};

/// Copy a CPU tensor to `device`. On CUDA it goes through pinned (page-locked) memory
/// with a non-blocking copy: a copy from ordinary memory makes the host wait until the
/// GPU has finished everything queued before it.
pub fn upload(host: &Tensor, device: Device) -> Tensor {
    match device {
        Device::Cuda(n) => {
            crate::ffi::memory::pinned_upload(host, n).unwrap_or_else(|_| host.to_device(device))
        }
        _ => host.to_device(device),
    }
}

/// Texts per chunk when a long list is encoded chunk by chunk
/// ([`crate::model::BiEncoder::encode_stream`]): each chunk is tokenized, length-sorted and
/// encoded on its own, so memory holds a chunk's tokens, not the corpus's.
pub const CHUNK_ROWS: usize = 32_768;

/// [`CHUNK_ROWS`], or `DISTILL_ENCODE_CHUNK_ROWS` when set to a positive number (the tests
/// use tiny chunks). Which rows share a batch depends on it, so the corpus parts that
/// `--shard` workers share carry it in their names.
pub fn chunk_rows() -> usize {
    std::env::var("DISTILL_ENCODE_CHUNK_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(CHUNK_ROWS)
}

/// Run `prepare` over `items` on a thread, one item ahead of `consume`, which gets each
/// prepared item in order on the calling thread (a queue of one: at most two prepared
/// items exist at once). The first error of either side stops both and is returned; a
/// failed `prepare` is returned when `consume` reaches it. Encoding, the cross-encoder's
/// scoring and the score stage tokenize this way while the device works.
pub fn prepare_ahead<I, P, F, C>(items: I, prepare: F, mut consume: C) -> Result<()>
where
    I: IntoIterator,
    I::IntoIter: Send,
    P: Send,
    F: Fn(I::Item) -> Result<P> + Send,
    C: FnMut(P) -> Result<()>,
{
    let items = items.into_iter();
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            for item in items {
                // The receiver is gone when `consume` failed: stop.
                if tx.send(prepare(item)).is_err() {
                    break;
                }
            }
        });
        for prepared in rx {
            consume(prepared?)?;
        }
        Ok(())
    })
}

/// Split indices `0..lengths.len()` into batches of at most `batch_size` items, longest
/// first. With `max_tokens`, a batch also stops growing once `rows x longest` would
/// exceed it (at least one item per batch). Ties keep input order, so the result is
/// deterministic.
pub fn length_sorted_batches(
    lengths: &[usize],
    batch_size: usize,
    max_tokens: Option<usize>,
) -> Vec<Vec<usize>> {
    let batch_size = batch_size.max(1);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    order.sort_by(|&a, &b| lengths[b].cmp(&lengths[a]).then(a.cmp(&b)));
    let mut batches = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in order {
        // Sorted longest first, so the batch's padded width is its first item's length.
        let width = current.first().map_or(lengths[i], |&f| lengths[f]);
        let over_tokens = max_tokens.is_some_and(|m| (current.len() + 1) * width > m);
        if !current.is_empty() && (current.len() == batch_size || over_tokens) {
            batches.push(std::mem::take(&mut current));
        }
        current.push(i);
    }
    if !current.is_empty() {
        batches.push(current);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_longest_first_and_covers_every_index_once() {
        let lengths = [3, 9, 1, 9, 5, 2, 7];
        let batches = length_sorted_batches(&lengths, 3, None);
        assert_eq!(batches, vec![vec![1, 3, 6], vec![4, 0, 5], vec![2]]);
        let mut all: Vec<usize> = batches.concat();
        all.sort();
        assert_eq!(all, (0..lengths.len()).collect::<Vec<_>>());
    }

    #[test]
    fn token_budget_limits_rows() {
        let lengths = [10, 10, 10, 2, 2, 2, 2];
        let batches = length_sorted_batches(&lengths, 100, Some(20));
        assert_eq!(batches[0], vec![0, 1]);
        assert_eq!(batches[1], vec![2, 3]);
        // A single item longer than the budget still gets its own batch.
        let batches = length_sorted_batches(&[50, 1], 4, Some(20));
        assert_eq!(batches, vec![vec![0], vec![1]]);
    }

    #[test]
    fn empty_input_gives_no_batches() {
        assert!(length_sorted_batches(&[], 8, None).is_empty());
    }
}
