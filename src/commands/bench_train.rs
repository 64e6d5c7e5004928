//! W3 of `distill bench`: a training step of the student on synthetic groups, through
//! the training loop's own objective and optimizer step.
use super::{flops_of, timed, uniform, BenchSettings, Measurement, Shapes, Workload};
use crate::error::{Error, Result};
use crate::model::BiEncoder;
use crate::pipeline::config::defaults as D;
use crate::pipeline::config::LossConfig;
use crate::rng::SplitMix64;
use crate::training::groups::{Doc, Example, QueryGroup, TrainingSet};
use crate::training::objectives::StudentObjective;
use crate::training::optimizer::{AdamW, AdamWConfig};
use tch::Kind;

/// W3: the `train` stage's student step on synthetic groups of whole-word texts.
pub(super) fn run_train(
    s: &BenchSettings,
    shapes: &Shapes,
    rng: &mut SplitMix64,
) -> Result<Measurement> {
    let mut model = BiEncoder::load(&s.model, s.device, Kind::Float, Some(512))?;
    model.set_kernels(s.kernels());
    if s.device.is_cuda() {
        model.bert.set_compute_kind(Kind::BFloat16);
    }
    let words = model.tokenizer.whole_words();
    if words.len() < 100 {
        return Err(Error::model(
            &s.model,
            "tokenizer has too few whole-word tokens",
        ));
    }
    // [CLS] + words + [SEP]: a text of n words is n + 2 tokens.
    let text = |rng: &mut SplitMix64, len: (usize, usize)| {
        let n = uniform(rng, len) - 2;
        (0..n)
            .map(|_| words[(rng.next_u64() % words.len() as u64) as usize].as_str())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let steps = 4;
    let mut groups = Vec::new();
    let mut texts = Vec::new();
    for g in 0..shapes.queries * steps {
        let mut doc = |i: usize| Doc {
            id: format!("d{g}-{i}"),
            text: 0,
            teacher: 0.0,
        };
        let mut positives = vec![doc(0)];
        let mut negatives: Vec<Doc> = (1..shapes.docs_per_query).map(&mut doc).collect();
        for d in positives.iter_mut().chain(negatives.iter_mut()) {
            texts.push(text(rng, shapes.doc_len));
            d.text = texts.len() - 1;
            d.teacher = (rng.next_u64() % 1000) as f32 / 100.0 - 5.0;
        }
        texts.push(text(rng, shapes.query_len));
        groups.push(QueryGroup {
            dataset: "bench".into(),
            query_id: format!("q{g}"),
            text: texts.len() - 1,
            positive_ids: [positives[0].id.clone()].into(),
            positives,
            negatives,
        });
    }
    let set = TrainingSet {
        texts,
        groups,
        stats: Default::default(),
    };
    // The pipeline's default loss (margin-MSE + InfoNCE); the synthetic groups have no
    // flagged negatives to exclude.
    let loss = LossConfig {
        margin_mse: D::TRAIN_MARGIN_MSE,
        kl: D::TRAIN_KL,
        infonce: D::TRAIN_INFONCE,
        student_scale: D::TRAIN_STUDENT_SCALE,
        kl_student_temperature: D::TRAIN_KL_STUDENT_TEMPERATURE,
        kl_teacher_temperature: D::TRAIN_KL_TEACHER_TEMPERATURE,
        infonce_scale: D::TRAIN_INFONCE_SCALE,
        infonce_symmetric: D::TRAIN_INFONCE_SYMMETRIC,
        exclude_false_negatives: false,
    };
    let task = StudentObjective::new(&model, &set, &loss)?;
    let mut opt = AdamW::new(
        model.vs.variables().into_iter().collect(),
        AdamWConfig {
            weight_decay: D::TRAIN_WEIGHT_DECAY,
            ..AdamWConfig::default()
        },
    );
    let flops: Vec<(u64, f64)> = set
        .groups
        .chunks(shapes.queries)
        .map(|chunk| {
            let texts: Vec<&str> = chunk
                .iter()
                .flat_map(QueryGroup::texts)
                .map(|t| set.texts[t].as_str())
                .collect();
            model
                .tokenizer
                .encode_texts(&texts)
                .map(|e| flops_of(&e, 3.0))
        })
        .collect::<Result<_>>()?;
    let mut step = 0usize;
    timed(s, Workload::W3, steps, || {
        let i = step % steps;
        let examples: Vec<Example> = (i * shapes.queries..(i + 1) * shapes.queries)
            .map(|q| Example {
                query: q,
                positive: 0,
                negatives: (0..shapes.docs_per_query - 1).collect(),
            })
            .collect();
        // The training loop's own step (one micro-batch, the default clipping and peak
        // learning rate).
        let (clip, lr) = (D::TRAIN_MAX_GRAD_NORM, D::TRAIN_LR);
        crate::training::trainer::optimizer_step(
            &task,
            &mut opt,
            &[examples],
            None,
            clip,
            lr,
            None,
        )?;
        step += 1;
        Ok((shapes.queries as u64, flops[i].0, flops[i].1))
    })
}
