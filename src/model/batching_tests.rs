//! Tests of `model::batching`.
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

/// Rows come back in input order from any batching, and a row in two batches (which
/// would leave another slot of the unzeroed output unwritten) is refused.
#[test]
fn map_batches_orders_rows_and_refuses_a_row_twice() {
    let encoded: Vec<Encoded> = (1..=4)
        .map(|n| Encoded {
            ids: vec![n; n as usize],
            type_ids: vec![0; n as usize],
        })
        .collect();
    // Each row's output: its first token id.
    let first = |b: &Batch| b.input_ids.select(1, 0).to_kind(Kind::Float).unsqueeze(1);
    let run =
        |batches: &[Vec<usize>]| map_batches(&encoded, batches, 0, Device::Cpu, &mut |_| {}, first);
    let out = run(&[vec![3, 1], vec![0], vec![2]]).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(out.flatten(0, -1)).unwrap(),
        vec![1.0, 2.0, 3.0, 4.0]
    );
    let err = run(&[vec![3, 1], vec![1, 0], vec![2]]).unwrap_err();
    assert!(
        err.to_string().contains("row 1 is in more than one batch"),
        "{err}"
    );
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
    assert!(length_groups(&[], BATCH_COST).is_empty());
}

/// The least cost over every way of cutting the sorted rows, by brute force.
fn least_cost(sorted: &[usize], cost: usize) -> usize {
    (1..=sorted.len())
        .map(|first| {
            let own = first * sorted[first - 1].max(1) + cost;
            match first == sorted.len() {
                true => own,
                false => own + least_cost(&sorted[first..], cost),
            }
        })
        .min()
        .unwrap_or(0)
}

#[test]
fn length_groups_cut_where_padding_outweighs_a_batch() {
    // Ten short rows and two long: in one batch, 12 x 100 + 256 = 1,456 slots; cut in
    // two, 10 x 5 + 2 x 100 + 2 x 256 = 762.
    let mut lens = vec![100, 5, 5, 5, 5, 5, 100, 5, 5, 5, 5, 5];
    let groups = length_groups(&lens, BATCH_COST);
    assert_eq!(
        groups,
        vec![vec![1, 2, 3, 4, 5, 7, 8, 9, 10, 11], vec![0, 6]]
    );
    // Close lengths stay in one batch (ties keep their order).
    lens = vec![30, 31, 30, 32];
    assert_eq!(length_groups(&lens, BATCH_COST), vec![vec![0, 2, 1, 3]]);
    // The cuts found are the least cost over every cut, on varied lengths.
    let mut seed = 7u64;
    for n in 1..12 {
        let lens: Vec<usize> = (0..n)
            .map(|_| {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                1 + (seed >> 33) as usize % 120
            })
            .collect();
        let groups = length_groups(&lens, 40);
        let cost: usize = groups
            .iter()
            .map(|g| g.len() * g.iter().map(|&i| lens[i]).max().unwrap() + 40)
            .sum();
        let mut sorted = lens.clone();
        sorted.sort();
        assert_eq!(cost, least_cost(&sorted, 40), "{lens:?}");
        let mut all = groups.concat();
        all.sort();
        assert_eq!(all, (0..n).collect::<Vec<_>>());
    }
}

#[test]
fn a_model_gives_the_same_rows_from_batches_cut_by_length_as_from_one_batch() {
    let config = crate::model::hf_config::BertConfig {
        vocab_size: 64,
        hidden_size: 16,
        num_hidden_layers: 2,
        num_attention_heads: 2,
        intermediate_size: 32,
        hidden_dropout_prob: 0.0,
        attention_probs_dropout_prob: 0.0,
        max_position_embeddings: 128,
        ..Default::default()
    };
    tch::manual_seed(11);
    let vs = tch::nn::VarStore::new(Device::Cpu);
    let bert = crate::model::bert::BertModel::new(vs.root() / "bert", &config);
    let items: Vec<Encoded> = [3usize, 90, 4, 85, 5, 2, 6, 3, 4, 88, 2, 5]
        .iter()
        .enumerate()
        .map(|(r, &len)| Encoded {
            ids: (0..len as i64)
                .map(|t| 1 + (7 * r as i64 + t) % 60)
                .collect(),
            type_ids: vec![0; len],
        })
        .collect();
    let refs: Vec<&Encoded> = items.iter().collect();
    let cut = PaddedBatches::by_length(&refs, 0, Device::Cpu);
    assert!(cut.batches().len() > 1);
    let one = PaddedBatches::in_order(vec![HostBatch::new(&refs, 0, Device::Cpu)]);
    let first_token = |b: &Batch| bert.forward_t(b, false).select(1, 0);
    let (a, b) = (
        cut.run(Device::Cpu, first_token),
        one.run(Device::Cpu, first_token),
    );
    let diff = (a - b).abs().max().double_value(&[]);
    assert!(diff < 1e-5, "{diff}");
}

#[test]
fn padded_batches_by_length_give_rows_back_in_order() {
    let items: Vec<Encoded> = [90usize, 2, 2, 90, 2, 2, 2, 2, 2, 2, 2, 2]
        .iter()
        .enumerate()
        .map(|(r, &len)| Encoded {
            ids: (0..len as i64).map(|t| 100 * r as i64 + t).collect(),
            type_ids: vec![0; len],
        })
        .collect();
    let refs: Vec<&Encoded> = items.iter().collect();
    let batches = PaddedBatches::by_length(&refs, 0, Device::Cpu);
    assert!(batches.batches().len() > 1);
    // Each row's first token id names the row: the rows come back in input order.
    let first = batches.run(Device::Cpu, |b| b.input_ids.select(1, 0));
    let want: Vec<i64> = (0..items.len() as i64).map(|r| 100 * r).collect();
    assert_eq!(Vec::<i64>::try_from(first).unwrap(), want);
}

/// Packed rows: never fewer than the tokens, at most 1/32 more, and 32 sizes an octave
/// (so a training step's matrix products repeat their shapes).
#[test]
fn packed_rows_round_up_by_at_most_a_thirty_second() {
    assert_eq!(packed_rows(0), 0);
    assert_eq!(
        (1..64).map(packed_rows).collect::<Vec<_>>(),
        (1..64).collect::<Vec<_>>()
    );
    for t in [64usize, 65, 1000, 1025, 99_999, 100_000, 131_071, 131_073] {
        let p = packed_rows(t);
        assert!(p >= t && (p - t) * 32 <= t, "{t} -> {p}");
    }
    assert_eq!(packed_rows(1000), 1008);
    let sizes: std::collections::BTreeSet<usize> = (65_537..=131_072).map(packed_rows).collect();
    assert_eq!(sizes.len(), 32);
}

/// A packed batch: the real tokens' flat places and columns, then filler rows (index 0,
/// positions counted within each filler sequence of at most the batch's width), and the
/// offsets of the rows' and the filler sequences.
#[test]
fn a_packed_batch_lays_out_its_tokens_then_filler_sequences() {
    // 20 rows of 50 tokens: 1,000 tokens in 1,008 slots, one filler sequence of 8.
    let encoded: Vec<Encoded> = (0..20)
        .map(|r| Encoded {
            ids: vec![r + 1; 50],
            type_ids: vec![0; 50],
        })
        .collect();
    let refs: Vec<&Encoded> = encoded.iter().collect();
    let batch = HostBatch::build(&refs, 0, true).upload(Device::Cpu);
    let p = batch.packing.expect("packed");
    let ints = |t: &Tensor| Vec::<i64>::try_from(t.to_kind(Kind::Int64)).unwrap();
    let (index, positions, cu) = (ints(&p.index), ints(&p.positions), ints(&p.cu_seqlens));
    assert_eq!((p.tokens, index.len(), p.max_len), (1000, 1008, 50));
    assert_eq!(index[..3], [0, 1, 2]);
    assert_eq!(index[999], 999);
    assert_eq!(index[1000..], [0; 8]);
    assert_eq!(positions[998..1002], [48, 49, 0, 1]);
    assert_eq!(positions[1007], 7);
    assert_eq!(cu.len(), 22);
    assert_eq!((cu[1], cu[20], cu[21]), (50, 1000, 1008));
    // A batch whose tokens need no filler has none.
    let small: Vec<&Encoded> = refs[..1].to_vec();
    let p = HostBatch::build(&small, 0, true)
        .upload(Device::Cpu)
        .packing
        .unwrap();
    assert_eq!(
        (p.tokens, p.index.size()[0], ints(&p.cu_seqlens)),
        (50, 50, vec![0, 50])
    );
}

/// A micro-batch's work counts its real rows and tokens however it is batched: the
/// padding of cut batches and a packed batch's filler rows are left out.
#[test]
fn work_counts_real_rows_and_tokens_only() {
    let lens = [3usize, 90, 4, 85, 5, 2];
    let items: Vec<Encoded> = lens
        .iter()
        .map(|&len| Encoded {
            ids: vec![5; len],
            type_ids: vec![0; len],
        })
        .collect();
    let refs: Vec<&Encoded> = items.iter().collect();
    let want = crate::model::work::Work {
        rows: 6,
        tokens: lens.iter().sum::<usize>() as u64,
        squares: lens.iter().map(|&n| (n * n) as u64).sum(),
    };
    let packed = HostBatch::build(&refs, 0, true);
    assert!(
        packed.sequences > packed.rows,
        "the packed batch has filler rows"
    );
    let cut = PaddedBatches::by_length(&refs, 0, Device::Cpu);
    assert!(cut.batches().len() > 1);
    for batches in [PaddedBatches::in_order(vec![packed]), cut] {
        assert_eq!(batches.work(), want);
    }
}
