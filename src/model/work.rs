//! The arithmetic of running a BERT encoder over real tokens: what a training loop's
//! throughput is measured against (model FLOPs, as in the PaLM paper's MFU: the matrix
//! products of the forward and backward passes, over the tokens that are not padding).
use super::hf_config::BertConfig;

/// The real work in batches of sequences: their rows, their tokens and the sum of their
/// squared lengths (attention's share). Padding and filler rows are left out.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Work {
    pub rows: u64,
    pub tokens: u64,
    pub squares: u64,
}

impl std::ops::Add for Work {
    type Output = Work;
    fn add(self, o: Work) -> Work {
        Work {
            rows: self.rows + o.rows,
            tokens: self.tokens + o.tokens,
            squares: self.squares + o.squares,
        }
    }
}

impl std::iter::Sum for Work {
    fn sum<I: Iterator<Item = Work>>(iter: I) -> Work {
        iter.fold(Work::default(), |a, b| a + b)
    }
}

/// What a training loop's steps in one process computed: from step `from_step` (after a
/// resume, the checkpoint's) to the end, the real work of its batches (with `ranks`
/// data-parallel ranks, this rank's slices: about 1/`ranks` of it), that work's model
/// arithmetic, and the loop's seconds from its first step to its last checkpoint written
/// (in-training evaluations included).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throughput {
    pub from_step: u64,
    pub steps: u64,
    pub ranks: u64,
    pub work: Work,
    pub flops: f64,
    pub seconds: f64,
}

/// A training loop's tally of its steps' work, from its start.
pub struct Tally {
    work: Work,
    /// False once a step's batches were not prepared ahead (their work unknown).
    counted: bool,
    started: std::time::Instant,
}

impl Tally {
    pub fn start() -> Self {
        Tally {
            work: Work::default(),
            counted: true,
            started: std::time::Instant::now(),
        }
    }

    /// Add a step's work; None (a step whose work is unknown) leaves the loop uncounted.
    pub fn add(&mut self, step: Option<Work>) {
        match step {
            Some(w) => self.work = self.work + w,
            None => self.counted = false,
        }
    }

    /// Seconds since the start.
    pub fn seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The loop's throughput from `(from_step, steps, ranks, seconds)` and the model's
    /// count of the work's arithmetic; None when a step went uncounted, no step ran or the
    /// model does not count.
    pub fn throughput(
        &self,
        flops: impl FnOnce(&Work) -> Option<f64>,
        (from_step, steps, ranks, seconds): (u64, u64, u64, f64),
    ) -> Option<Throughput> {
        let flops = flops(&self.work).filter(|_| self.counted && steps > 0)?;
        Some(Throughput {
            from_step,
            steps,
            ranks,
            work: self.work,
            flops,
            seconds,
        })
    }
}

/// Floating-point operations (a multiply-add is two) of the encoder's layers' forward pass
/// over `work`: per token and layer the four attention projections (4 hidden²) and the
/// feed-forward pair (2 hidden x intermediate), per row and layer the scores and the
/// weighted sum (2 length² x hidden). Embeddings, pooling, heads and losses are left out
/// (under 0.1% of MiniLM's).
pub fn forward_flops(config: &BertConfig, work: &Work) -> f64 {
    let (h, i) = (config.hidden_size as f64, config.intermediate_size as f64);
    let per_token = 2.0 * (4.0 * h * h + 2.0 * h * i);
    let per_square = 4.0 * h;
    config.num_hidden_layers as f64
        * (per_token * work.tokens as f64 + per_square * work.squares as f64)
}

/// [`forward_flops`] of a training step: the backward pass takes each product twice more
/// (into the weights and into the inputs).
pub fn training_flops(config: &BertConfig, work: &Work) -> f64 {
    3.0 * forward_flops(config, work)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Reference {
        shape: serde_json::Value,
        lengths: Vec<u64>,
        forward_flops: f64,
        training_flops: f64,
    }

    /// torch's FlopCounterMode over a random BERT's training step, one row at a time
    /// (`scripts/make_flops_reference.py`).
    #[test]
    fn model_flops_are_torch_flop_counters() {
        let path = "tests/fixtures/generated/flops_reference.json";
        let r: Reference = crate::error::read_json(std::path::Path::new(path))
            .unwrap_or_else(|e| panic!("{e}: run `make fixtures`"));
        let config: BertConfig = serde_json::from_value(r.shape).unwrap();
        let work: Work = r
            .lengths
            .iter()
            .map(|&n| Work {
                rows: 1,
                tokens: n,
                squares: n * n,
            })
            .sum();
        assert_eq!(forward_flops(&config, &work), r.forward_flops);
        assert_eq!(training_flops(&config, &work), r.training_flops);
    }
}
