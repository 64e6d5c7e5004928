//! Batches: length-sorted batching (inputs of similar length share a batch, so padding
//! is small); padded batches and their packing ([`Batch`]), built on the host
//! ([`HostBatch`]) and moved with [`upload`] (host tensors to the device without waiting
//! for it); [`map_batches`], a model over batches with rare read-backs; and
//! [`prepare_ahead`]: the next chunk's host work on a thread while the device works on
//! the current one.
use crate::device::InlineHostOps;
use crate::error::Result;
use crate::model::tokenizer::Encoded;
use tch::{Device, Kind, Tensor};

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
///
/// On a GPU the preparing thread's parallel work (rayon) runs on a pool of all cores
/// but two, and libtorch's host operations run inline while `consume` runs
/// ([`InlineHostOps`]): the thread that launches the device's work keeps a core. (A
/// Kineto trace of `distill encode` on an H200 showed each batch's pinned copy taking 6
/// to 12 ms, the GPU idle, while the next chunk was tokenized on every core.)
pub fn prepare_ahead<I, P, F, C>(device: Device, items: I, prepare: F, mut consume: C) -> Result<()>
where
    I: IntoIterator,
    I::IntoIter: Send,
    P: Send,
    F: Fn(I::Item) -> Result<P> + Send,
    C: FnMut(P) -> Result<()>,
{
    let items = items.into_iter();
    let pool = match device.is_cuda() {
        true => host_pool(),
        false => None,
    };
    let _inline = InlineHostOps::on(device);
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        scope.spawn(move || {
            let run = move || {
                for item in items {
                    // The receiver is gone when `consume` failed: stop.
                    if tx.send(prepare(item)).is_err() {
                        break;
                    }
                }
            };
            match &pool {
                Some(pool) => pool.install(run),
                None => run(),
            }
        });
        for prepared in rx {
            consume(prepared?)?;
        }
        Ok(())
    })
}

/// A rayon pool of all cores but two (at least one), for host work beside a GPU; `None`
/// when it cannot be built (the global pool serves then).
fn host_pool() -> Option<rayon::ThreadPool> {
    let threads = rayon::current_num_threads().saturating_sub(2).max(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("host-{i}"))
        .build()
        .ok()
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

/// A padded batch on a device.
#[derive(Debug)]
pub struct Batch {
    /// `[batch, seq]` int64 token ids.
    pub input_ids: Tensor,
    /// `[batch, seq]` int64, 1 for real tokens and 0 for padding.
    pub attention_mask: Tensor,
    /// `[batch, seq]` int64 segment ids (0 = first text, 1 = second text of a pair).
    pub token_type_ids: Tensor,
    /// True when every row has the same length (no padding anywhere).
    pub unpadded: bool,
    /// On CUDA: where the real tokens are, for the packed (unpadded) encoder path.
    pub packing: Option<Packing>,
}

/// The real tokens of a padded batch laid end to end.
#[derive(Debug)]
pub struct Packing {
    /// `[tokens]` int64: flat position (`row * seq + column`) of each real token.
    pub index: Tensor,
    /// `[tokens]` int64: the column of each real token (its position id).
    pub positions: Tensor,
    /// `[sequences + 1]` int32: offset of each row's first token, then of each filler
    /// sequence's, then the total.
    pub cu_seqlens: Tensor,
    /// Longest row.
    pub max_len: i64,
    /// Real tokens: the first `tokens` entries of `index` and `positions`; the rest are
    /// filler ([`packed_rows`]).
    pub tokens: i64,
}

/// The rows a batch of `tokens` real tokens is packed into: rounded up to a multiple of
/// 2^(floor(log2 tokens) - 5), at most 1/32 more (32 sizes an octave). The encoder's
/// matrix products take the packed rows as a dimension, and cuBLAS chooses a kernel for
/// each new shape on the host (about 250 us for a product of 60k to 120k rows on an H200,
/// against 25 us for a shape seen before, BENCHMARKS.md): with the token count of every
/// batch new, a training step paid that choice for each of its products. The filler rows
/// are sequences of their own (copies of the batch's first token), so attention keeps
/// them apart, and the encoder's output drops them: no real token's value or gradient
/// depends on them beyond the rounding of the products they widen.
pub fn packed_rows(tokens: usize) -> usize {
    if tokens == 0 {
        return 0;
    }
    let log2 = usize::BITS - 1 - tokens.leading_zeros();
    let step = 1usize << log2.saturating_sub(5);
    tokens.div_ceil(step) * step
}

/// The host side of a [`Batch`]: the padded ids, mask and segments (and, for CUDA, the
/// packing of the real tokens) in one buffer, pinned when it is bound for CUDA. Building
/// it needs no device, so a thread can build the next batch while the device runs the
/// current one; [`HostBatch::upload`] then only queues the copy.
#[derive(Debug)]
pub struct HostBatch {
    all: Tensor,
    rows: usize,
    width: usize,
    /// Real tokens.
    tokens: usize,
    /// The sum of the rows' squared lengths (attention's work).
    squares: u64,
    /// Packed rows ([`packed_rows`]) when packed.
    slots: usize,
    /// The rows' sequences and the filler sequences, when packed.
    sequences: usize,
    unpadded: bool,
    packed: bool,
}

impl HostBatch {
    /// Pad `items` to the longest one, for `device`: on CUDA with the packing of the real
    /// tokens, in pinned memory.
    pub fn new(items: &[&Encoded], pad_id: i64, device: Device) -> HostBatch {
        let batch = Self::build(items, pad_id, device.is_cuda());
        match batch.packed {
            true => HostBatch {
                all: crate::ffi::memory::pin(&batch.all).unwrap_or(batch.all),
                ..batch
            },
            false => batch,
        }
    }

    /// [`HostBatch::new`] in ordinary memory, packed or not.
    fn build(items: &[&Encoded], pad_id: i64, packed: bool) -> HostBatch {
        let rows = items.len();
        let width = items.iter().map(|e| e.len()).max().unwrap_or(0).max(1);
        let plane = rows * width;
        let tokens: usize = items.iter().map(|e| e.len()).sum();
        let squares = items.iter().map(|e| (e.len() as u64).pow(2)).sum();
        let (slots, fillers) = match packed {
            true => {
                let slots = packed_rows(tokens);
                (slots, (slots - tokens).div_ceil(width))
            }
            false => (0, 0),
        };
        // [ids | mask | segments] (rows x width each), then when packed [index | positions]
        // (`slots` each: the real tokens, then the filler rows) and the sequence offsets
        // (rows, then the filler sequences of at most `width` rows, + 1).
        let extra = if packed {
            2 * slots + rows + fillers + 1
        } else {
            0
        };
        let mut host = vec![0i64; 3 * plane + extra];
        host[..plane].fill(pad_id);
        let mut at = 3 * plane;
        for (r, e) in items.iter().enumerate() {
            let off = r * width;
            host[off..off + e.len()].copy_from_slice(&e.ids);
            host[plane + off..plane + off + e.len()].fill(1);
            host[2 * plane + off..2 * plane + off + e.len()].copy_from_slice(&e.type_ids);
            if packed {
                for c in 0..e.len() {
                    host[at] = (off + c) as i64;
                    host[at + slots] = c as i64;
                    at += 1;
                }
            }
        }
        if packed {
            // Filler rows: index 0 (the first row's first token), positions counted within
            // each filler sequence.
            for f in 0..slots - tokens {
                host[3 * plane + slots + tokens + f] = (f % width) as i64;
            }
            let cu = 3 * plane + 2 * slots;
            let lengths = items
                .iter()
                .map(|e| e.len())
                .chain((0..fillers).map(|f| (slots - tokens - f * width).min(width)));
            for (r, len) in lengths.enumerate() {
                host[cu + r + 1] = host[cu + r] + len as i64;
            }
        }
        HostBatch {
            all: Tensor::from_slice(&host),
            rows,
            width,
            tokens,
            squares,
            slots,
            sequences: rows + fillers,
            unpadded: items.iter().all(|e| e.len() == width),
            packed,
        }
    }

    /// Move the batch to `device` (the one it was built for) without waiting for the
    /// device.
    pub fn upload(self, device: Device) -> Batch {
        let (rows, width, plane) = (self.rows, self.width, self.rows * self.width);
        let all = upload(&self.all, device);
        let grid = |i: i64| {
            all.narrow(0, i * plane as i64, plane as i64)
                .view([rows as i64, width as i64])
        };
        let (t, base) = (self.slots as i64, 3 * plane as i64);
        Batch {
            input_ids: grid(0),
            attention_mask: grid(1),
            token_type_ids: grid(2),
            unpadded: self.unpadded,
            packing: self.packed.then(|| Packing {
                index: all.narrow(0, base, t),
                positions: all.narrow(0, base + t, t),
                cu_seqlens: all
                    .narrow(0, base + 2 * t, self.sequences as i64 + 1)
                    .to_kind(Kind::Int),
                max_len: width as i64,
                tokens: self.tokens as i64,
            }),
        }
    }
}

/// Token slots that one more padded batch is counted as costing (its launches, its smaller
/// matrix products) when [`PaddedBatches::by_length`] decides where to cut.
const BATCH_COST: usize = 256;

/// The padded batches of one training micro-batch, and where each of its rows lands: one
/// batch as given, or rows cut into batches by length so that short rows are not padded to
/// the longest (half of a CPU step's token slots were padding in the demo's batches).
pub struct PaddedBatches {
    batches: Vec<HostBatch>,
    /// Row `i` of the micro-batch is row `from[i]` of the batches' outputs, concatenated;
    /// `None` when they are in order.
    from: Option<Vec<i64>>,
}

impl PaddedBatches {
    /// The batches, run in the order given and concatenated as they are.
    pub fn in_order(batches: Vec<HostBatch>) -> Self {
        PaddedBatches {
            batches,
            from: None,
        }
    }

    /// The batches of a training micro-batch for a model that `packs` or not: one packed
    /// batch (no padding to save), or [`PaddedBatches::by_length`].
    pub fn for_model(items: &[&Encoded], pad_id: i64, device: Device, packs: bool) -> Self {
        match packs {
            true => Self::in_order(vec![HostBatch::new(items, pad_id, device)]),
            false => Self::by_length(items, pad_id, device),
        }
    }

    /// `items` in batches of similar length on the CPU: sorted by length (ties in order)
    /// and cut where the padding saved outweighs [`BATCH_COST`] (exact, over every cut).
    /// On CUDA (where a batch costs more launches than the cost was measured for) and
    /// when one batch is best, one batch in input order.
    pub fn by_length(items: &[&Encoded], pad_id: i64, device: Device) -> Self {
        let lens: Vec<usize> = items.iter().map(|e| e.len()).collect();
        let groups = match device.is_cuda() {
            true => Vec::new(),
            false => length_groups(&lens, BATCH_COST),
        };
        if groups.len() <= 1 {
            return Self::in_order(vec![HostBatch::new(items, pad_id, device)]);
        }
        let order: Vec<usize> = groups.concat();
        let mut from = vec![0i64; order.len()];
        for (at, &row) in order.iter().enumerate() {
            from[row] = at as i64;
        }
        let sorted = order.iter().enumerate().all(|(at, &row)| at == row);
        PaddedBatches {
            batches: groups
                .iter()
                .map(|g| {
                    let rows: Vec<&Encoded> = g.iter().map(|&i| items[i]).collect();
                    HostBatch::new(&rows, pad_id, device)
                })
                .collect(),
            from: (!sorted).then_some(from),
        }
    }

    /// The batches, in the order they run.
    pub fn batches(&self) -> &[HostBatch] {
        &self.batches
    }

    /// The real rows, tokens and squared lengths of the batches, padding and filler
    /// rows left out.
    pub fn work(&self) -> super::work::Work {
        self.batches
            .iter()
            .map(|b| super::work::Work {
                rows: b.rows as u64,
                tokens: b.tokens as u64,
                squares: b.squares,
            })
            .sum()
    }

    /// Run `forward` over each batch on `device`, and the outputs' rows in the
    /// micro-batch's order.
    pub fn run(self, device: Device, mut forward: impl FnMut(&Batch) -> Tensor) -> Tensor {
        let mut outputs: Vec<Tensor> = self
            .batches
            .into_iter()
            .map(|h| forward(&h.upload(device)))
            .collect();
        let all = match outputs.len() {
            1 => outputs.remove(0),
            _ => Tensor::cat(&outputs, 0),
        };
        match self.from {
            Some(from) => all.index_select(0, &upload(&Tensor::from_slice(&from), device)),
            None => all,
        }
    }
}

/// Rows (indices into `lens`) in groups whose padded size plus `batch_cost` a group is
/// least: the rows sorted by length, stably, and cut by dynamic programming over the cuts
/// (only where the length changes: a cut between equal lengths saves no padding).
fn length_groups(lens: &[usize], batch_cost: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let n = order.len();
    if n == 0 {
        return Vec::new();
    }
    let mut cuts: Vec<usize> = (1..n)
        .filter(|&i| lens[order[i - 1]] < lens[order[i]])
        .collect();
    cuts.insert(0, 0);
    cuts.push(n);
    // best[c]: least cost of the rows before cuts[c]; from[c]: the cut its last group
    // starts at.
    let mut best = vec![0usize; cuts.len()];
    let mut from = vec![0usize; cuts.len()];
    for c in 1..cuts.len() {
        let width = lens[order[cuts[c] - 1]].max(1);
        (best[c], from[c]) = (0..c)
            .map(|b| (best[b] + (cuts[c] - cuts[b]) * width + batch_cost, b))
            .min()
            .unwrap_or((0, 0));
    }
    let mut groups = Vec::new();
    let mut c = cuts.len() - 1;
    while c > 0 {
        groups.push(order[cuts[from[c]]..cuts[c]].to_vec());
        c = from[c];
    }
    groups.reverse();
    groups
}

impl Batch {
    /// Pad `items` to the longest one and move them to `device`. On CUDA everything
    /// (ids, mask, segments and the packing of the real tokens) travels as one pinned
    /// buffer with a non-blocking copy, so building the next batch does not wait for the
    /// GPU to finish the current one.
    pub fn new(items: &[&Encoded], pad_id: i64, device: Device) -> Batch {
        HostBatch::new(items, pad_id, device).upload(device)
    }

    pub fn size(&self) -> i64 {
        self.input_ids.size()[0]
    }

    /// Number of real (unpadded) tokens.
    pub fn tokens(&self) -> i64 {
        self.attention_mask.sum(Kind::Int64).int64_value(&[])
    }
}

/// Rows of outputs kept on the device before one copy to the host: the host reads back
/// rarely, so it keeps queueing batches while the GPU works.
const READBACK_ROWS: usize = 1 << 16;

/// Run `forward` under no-grad on length-sorted, padded batches of `encoded` (at most
/// `batch_size` each) and gather its per-row outputs (`[rows, ...]`, any float kind) into
/// one fp32 CPU tensor `[encoded.len(), ...]` in input order. Outputs are read back every
/// [`READBACK_ROWS`] rows, not after every batch. `progress` is called with the number
/// of inputs queued after each batch.
pub fn map_sorted_batches(
    encoded: &[Encoded],
    batch_size: usize,
    pad_id: i64,
    device: Device,
    progress: &mut dyn FnMut(usize),
    forward: impl FnMut(&Batch) -> Tensor,
) -> crate::error::Result<Tensor> {
    let lengths: Vec<usize> = encoded.iter().map(Encoded::len).collect();
    let batches = length_sorted_batches(&lengths, batch_size, None);
    map_batches(encoded, &batches, pad_id, device, progress, forward)
}

/// As [`map_sorted_batches`], over the given `batches` of row indices of `encoded`
/// only: the output holds one row per index the batches cover, in ascending index order
/// (every index covered: input order). A part of the length-sorted batches gives the same
/// values as the whole run gives those rows.
pub fn map_batches(
    encoded: &[Encoded],
    batches: &[Vec<usize>],
    pad_id: i64,
    device: Device,
    progress: &mut dyn FnMut(usize),
    forward: impl FnMut(&Batch) -> Tensor,
) -> crate::error::Result<Tensor> {
    let out = gather_batches(encoded, batches, pad_id, device, progress, forward)?;
    Ok(out.to_device(Device::Cpu))
}

/// [`map_batches`], its output left where it was put in order: on a GPU when it has at
/// most [`READBACK_ROWS`] rows (a caller that keeps it there copies nothing to the
/// host), on the host otherwise.
pub fn gather_batches(
    encoded: &[Encoded],
    batches: &[Vec<usize>],
    pad_id: i64,
    device: Device,
    progress: &mut dyn FnMut(usize),
    mut forward: impl FnMut(&Batch) -> Tensor,
) -> crate::error::Result<Tensor> {
    let _guard = tch::no_grad_guard();
    let mut covered: Vec<usize> = batches.iter().flatten().copied().collect();
    covered.sort_unstable();
    // Each row once: the output is not zeroed, so a row repeated would leave another
    // row's slot unwritten.
    if let Some(w) = covered.windows(2).find(|w| w[0] == w[1]) {
        return Err(crate::error::Error::Setting {
            key: "batches".into(),
            message: format!("row {} is in more than one batch", w[0]),
        });
    }
    let mut slot = vec![0i64; encoded.len()];
    for (k, &row) in covered.iter().enumerate() {
        slot[row] = k as i64;
    }
    let mut out: Option<Tensor> = None;
    let mut pending: Vec<(Vec<usize>, Tensor)> = Vec::new();
    let mut pending_rows = 0;
    // On a GPU, outputs that fit one read-back are put in input order there, then copied
    // to the host at once: the host's scattered row copy (45 ms a chunk of 32,768
    // embeddings with one thread) is off the path between the chunks' batches.
    let order_on = match device.is_cuda() && covered.len() <= READBACK_ROWS {
        true => device,
        false => Device::Cpu,
    };
    let flush = |pending: &mut Vec<(Vec<usize>, Tensor)>, out: &mut Option<Tensor>| {
        if pending.is_empty() {
            return;
        }
        let (rows, parts): (Vec<Vec<usize>>, Vec<Tensor>) = pending.drain(..).unzip();
        let values = Tensor::cat(&parts, 0)
            .to_kind(Kind::Float)
            .to_device(order_on);
        let index: Vec<i64> = rows.iter().flatten().map(|&i| slot[i]).collect();
        // Every covered row is written by one flush or another: no need to zero it first.
        let out = out.get_or_insert_with(|| {
            let mut shape = values.size();
            shape[0] = covered.len() as i64;
            Tensor::empty(shape, (Kind::Float, order_on))
        });
        let index = upload(&Tensor::from_slice(&index), order_on);
        let _ = out.index_copy_(0, &index, &values);
    };
    for rows in batches {
        let items: Vec<&Encoded> = rows.iter().map(|&i| &encoded[i]).collect();
        let batch = Batch::new(&items, pad_id, device);
        let n = rows.len();
        pending.push((rows.clone(), forward(&batch)));
        pending_rows += n;
        if pending_rows >= READBACK_ROWS {
            flush(&mut pending, &mut out);
            pending_rows = 0;
        }
        progress(n);
    }
    flush(&mut pending, &mut out);
    Ok(out.unwrap_or_else(|| Tensor::zeros([0], (Kind::Float, Device::Cpu))))
}

#[cfg(test)]
#[path = "batching_tests.rs"]
mod tests;
