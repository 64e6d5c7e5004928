//! The objectives of the two trained models over a micro-batch of [`Example`]s: the
//! student's (margin-MSE, KL and InfoNCE over its dot products against the teacher's
//! scores) and the teacher's (listwise and/or pointwise cross-entropy over its logits).
//! The student's texts are tokenized once, when the objective is built, and looked up by
//! [`TextId`]; the teacher's (query, document) pairs are tokenized per batch, as a pair's
//! truncation depends on both of its texts.
use super::feed::{Prepare, Prepared};
use super::groups::{Example, TextId, TrainingSet};
use super::losses;
use super::trainer::Task;
use crate::error::Result;
use crate::model::batching::{upload, HostBatch};
use crate::model::tokenizer::{Encoded, TokenStore};
use crate::model::{BiEncoder, CrossEncoder, Side};
use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// Loss settings of the student (`[train]`).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LossConfig {
    pub margin_mse: f64,
    pub kl: f64,
    pub infonce: f64,
    /// Student scores (dot products) are multiplied by this for margin-MSE and KL.
    pub student_scale: f64,
    pub kl_student_temperature: f64,
    pub kl_teacher_temperature: f64,
    /// InfoNCE logits are dot products times this (sentence-transformers' `scale`).
    pub infonce_scale: f64,
    /// Left out of the hash when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub infonce_symmetric: bool,
    pub exclude_false_negatives: bool,
}

/// Loss of the teacher (`[teacher_train]`).
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TeacherLoss {
    /// Cross-entropy of the positive against its group's negatives.
    #[default]
    Listwise,
    /// Binary cross-entropy on every pair.
    Bce,
    /// Both, summed: the listwise term ranks, the pointwise one anchors each score.
    #[serde(rename = "listwise+bce")]
    ListwiseBce,
}

/// A loss and its terms' values (detached), as [`Task::loss`] returns them.
type Terms = (Tensor, Vec<(String, Tensor)>);

/// The student's objective: a bi-encoder's dot products against the teacher's scores.
pub struct StudentObjective<'a> {
    model: &'a BiEncoder,
    loss: &'a LossConfig,
    host: StudentBatches<'a>,
}

/// The host half of the student's objective: its texts, tokenized once, into batches.
struct StudentBatches<'a> {
    set: &'a TrainingSet,
    /// `set.texts`, tokenized once (epochs reuse them), stored compactly: the entry of
    /// [`TextId`] `t` is `tokens.get(slot[t])`.
    tokens: TokenStore,
    slot: Vec<usize>,
    pad_id: i64,
    device: tch::Device,
    /// Whether the model runs packed batches, where queries and documents share one.
    packs: bool,
    /// The encoder's width, for [`Prepare::cost`].
    hidden: i64,
}

impl<'a> StudentObjective<'a> {
    pub fn new(model: &'a BiEncoder, set: &'a TrainingSet, loss: &'a LossConfig) -> Result<Self> {
        // Queries and documents each behind their side's prompt.
        let mut is_query = vec![false; set.texts.len()];
        for g in &set.groups {
            is_query[g.text] = true;
        }
        let sides = match model.query_prompt == model.document_prompt {
            true => vec![((0..set.texts.len()).collect::<Vec<_>>(), Side::Query)],
            false => {
                let (queries, docs): (Vec<usize>, Vec<usize>) =
                    (0..set.texts.len()).partition(|&t| is_query[t]);
                vec![(queries, Side::Query), (docs, Side::Document)]
            }
        };
        // Tokenized a chunk at a time, so the full-width tokens of all texts are never
        // held at once.
        let mut tokens = TokenStore::default();
        let mut slot = vec![0; set.texts.len()];
        for (ids, side) in sides {
            for chunk in ids.chunks(crate::model::batching::chunk_rows()) {
                let texts: Vec<&str> = chunk.iter().map(|&t| set.texts[t].as_str()).collect();
                for (&t, e) in chunk.iter().zip(model.tokenize(side, &texts)?) {
                    slot[t] = tokens.len();
                    tokens.push(&e);
                }
            }
        }
        let device = model.device();
        Ok(StudentObjective {
            model,
            loss,
            host: StudentBatches {
                set,
                tokens,
                slot,
                pad_id: model.tokenizer.pad_id(),
                device,
                packs: model.bert.packs_on(device),
                hidden: model.spec.config.hidden_size,
            },
        })
    }
}

impl StudentBatches<'_> {
    /// The texts' tokens.
    fn encoded(&self, texts: &[TextId]) -> Vec<Encoded> {
        texts
            .iter()
            .map(|&t| self.tokens.get(self.slot[t]))
            .collect()
    }

    /// One padded batch of the texts.
    fn padded(&self, texts: &[TextId]) -> HostBatch {
        let owned = self.encoded(texts);
        let items: Vec<&Encoded> = owned.iter().collect();
        HostBatch::new(&items, self.pad_id, self.device)
    }

    /// The texts of a micro-batch: per example its query, then its positive and
    /// negatives (documents in example order), with the documents' ids and teacher scores.
    fn texts(&self, examples: &[Example]) -> (Vec<TextId>, Vec<TextId>, Vec<&str>, Vec<f32>) {
        let mut queries = Vec::new();
        let mut docs = Vec::new();
        let mut doc_ids = Vec::new();
        let mut teacher = Vec::new();
        for e in examples {
            let g = &self.set.groups[e.query];
            queries.push(g.text);
            let group_docs = std::iter::once(&g.positives[e.positive])
                .chain(e.negatives.iter().map(|&n| &g.negatives[n]));
            for d in group_docs {
                docs.push(d.text);
                doc_ids.push(d.id.as_str());
                teacher.push(d.teacher);
            }
        }
        (queries, docs, doc_ids, teacher)
    }
}

impl Prepare for StudentBatches<'_> {
    /// Packed, queries and documents share one batch without padding (one forward: one
    /// cast of the weights, half the launches); padded on the CPU, batches cut by length
    /// (queries are short, documents vary); padded on CUDA (fp32), where the cuts were
    /// not measured, queries and documents run apart.
    fn prepare(&self, examples: &[Example]) -> Result<Prepared> {
        let (queries, docs, _, _) = self.texts(examples);
        if !self.packs && self.device.is_cuda() {
            return Ok(Prepared::in_order(vec![
                self.padded(&queries),
                self.padded(&docs),
            ]));
        }
        let owned = self.encoded(&[&queries[..], &docs[..]].concat());
        let items: Vec<&Encoded> = owned.iter().collect();
        Ok(Prepared::for_model(
            &items,
            self.pad_id,
            self.device,
            self.packs,
        ))
    }

    /// The example's query and documents, by their tokens.
    fn cost(&self, example: &Example) -> f64 {
        let (queries, docs, _, _) = self.texts(std::slice::from_ref(example));
        queries
            .iter()
            .chain(&docs)
            .map(|&t| super::feed::sequence_cost(self.tokens.tokens(self.slot[t]), self.hidden))
            .sum()
    }
}

impl Task for StudentObjective<'_> {
    /// Per example `1 + k` rows: the query's embedding, then its documents'.
    fn represent(&self, examples: &[Example]) -> Result<Tensor> {
        self.represent_prepared(examples, self.host.prepare(examples)?)
    }

    fn compute_copies(&self) -> Vec<&crate::model::bert::ComputeCopies> {
        self.model.bert.compute_copies().into_iter().collect()
    }

    fn preparer(&self) -> Option<&dyn Prepare> {
        Some(&self.host)
    }

    fn flops(&self, work: &crate::model::work::Work) -> Option<f64> {
        Some(crate::model::work::training_flops(
            &self.model.spec.config,
            work,
        ))
    }

    fn represent_prepared(&self, examples: &[Example], prepared: Prepared) -> Result<Tensor> {
        let b = examples.len() as i64;
        let device = self.model.device();
        let all = prepared.run(device, |batch| self.model.forward_t(batch, true));
        let (q, d) = (all.narrow(0, 0, b), all.narrow(0, b, all.size()[0] - b));
        let dim = q.size()[1];
        let k = d.size()[0] / b.max(1);
        Ok(Tensor::cat(&[q.unsqueeze(1), d.view([b, k, dim])], 1).view([b * (1 + k), dim]))
    }

    fn loss_from(&self, examples: &[Example], reps: &Tensor) -> Result<Terms> {
        let b = examples.len() as i64;
        let (_, docs, doc_ids, teacher) = self.host.texts(examples);
        let k = docs.len() as i64 / b.max(1);
        let dim = reps.size()[1];
        let rows = reps.view([b, 1 + k, dim]);
        let q = rows.select(1, 0);
        let d = rows.narrow(1, 1, k).reshape([b * k, dim]);
        // In-batch masking: document j is no negative of query i when it is one of i's
        // labelled positives (other than i's own target).
        let k = k as usize;
        let mut mask = vec![false; examples.len() * docs.len()];
        for (i, e) in examples.iter().enumerate() {
            let positives = &self.host.set.groups[e.query].positive_ids;
            for (j, id) in doc_ids.iter().enumerate() {
                mask[i * docs.len() + j] = j != i * k && positives.contains(*id);
            }
        }
        Ok(student_loss(&q, &d, &teacher, &mask, self.loss))
    }
}

/// The student's loss over `b` queries `q` `[b, dim]` and their `k` documents each `d`
/// `[b * k, dim]` (positive first), with the teacher's scores `teacher` (`b * k`, row
/// major) and `masked` (`b x b * k`, row major) the in-batch documents that are no
/// negative of a query: margin-MSE and KL over the scaled dot products against the
/// teacher's scores, InfoNCE over the query's row of every document in the batch.
pub fn student_loss(
    q: &Tensor,
    d: &Tensor,
    teacher: &[f32],
    masked: &[bool],
    c: &LossConfig,
) -> Terms {
    let b = q.size()[0];
    let k = d.size()[0] / b.max(1);
    let (q, d) = (q.to_kind(Kind::Float), d.to_kind(Kind::Float));
    let dim = q.size()[1];
    let student =
        (q.unsqueeze(1) * d.view([b, k, dim])).sum_dim_intlist([2].as_slice(), false, Kind::Float);
    let teacher = upload(&Tensor::from_slice(teacher).view([b, k]), q.device());
    let mut total = Tensor::zeros([], (Kind::Float, q.device()));
    let mut terms = Vec::new();
    let mut add = |name: &str, weight: f64, loss: Tensor| {
        terms.push((name.to_string(), loss.detach()));
        total = &total + loss * weight;
    };
    let scaled = &student * c.student_scale;
    if c.margin_mse > 0.0 {
        add(
            "margin_mse",
            c.margin_mse,
            losses::margin_mse(&scaled, &teacher),
        );
    }
    if c.kl > 0.0 {
        let kl = losses::kl(
            &scaled,
            &teacher,
            c.kl_student_temperature,
            c.kl_teacher_temperature,
        );
        add("kl", c.kl, kl);
    }
    if c.infonce > 0.0 {
        let targets: Vec<i64> = (0..b).map(|i| i * k).collect();
        let mask = upload(&Tensor::from_slice(masked).view([b, b * k]), q.device());
        let mut loss = losses::infonce(&q, &d, &targets, Some(&mask), c.infonce_scale);
        if c.infonce_symmetric {
            // Query j is masked for query i's positive when that document is one of
            // j's positives: the forward mask's [j][targets[i]], transposed.
            let cols = upload(&Tensor::from_slice(&targets), q.device());
            let back = mask.index_select(1, &cols).tr();
            let reverse =
                losses::infonce_doc_to_query(&q, &d, &targets, Some(&back), c.infonce_scale);
            loss = (loss + reverse) / 2.0;
        }
        add("infonce", c.infonce, loss);
    }
    (total, terms)
}

/// The teacher's objective: a cross-encoder's logits over each query's positive and
/// negatives.
pub struct TeacherObjective<'a> {
    model: &'a CrossEncoder,
    loss: TeacherLoss,
    host: TeacherBatches<'a>,
}

/// The host half of the teacher's objective: its (query, document) pairs, tokenized into
/// a batch.
struct TeacherBatches<'a> {
    tokenizer: &'a crate::model::tokenizer::TextTokenizer,
    set: &'a TrainingSet,
    device: tch::Device,
    /// Whether the model runs packed batches (no padding to save).
    packs: bool,
    /// The encoder's width, for [`Prepare::cost`].
    hidden: i64,
}

impl Prepare for TeacherBatches<'_> {
    /// Per example its positive's pair, then its negatives'.
    fn prepare(&self, examples: &[Example]) -> Result<Prepared> {
        let text = |t: TextId| self.set.texts[t].as_str();
        let mut pairs: Vec<(&str, &str)> = Vec::new();
        for e in examples {
            let g = &self.set.groups[e.query];
            pairs.push((text(g.text), text(g.positives[e.positive].text)));
            pairs.extend(
                e.negatives
                    .iter()
                    .map(|&n| (text(g.text), text(g.negatives[n].text))),
            );
        }
        let encoded = self.tokenizer.encode_pairs(&pairs)?;
        let items: Vec<_> = encoded.iter().collect();
        let pad = self.tokenizer.pad_id();
        Ok(Prepared::for_model(&items, pad, self.device, self.packs))
    }

    /// The example's pairs, by their tokens estimated from their UTF-8 bytes (about four a
    /// token in English WordPiece, three special tokens, cut at the tokenizer's length):
    /// tokenizing here would double the host's work, which bounds the teacher's step.
    fn cost(&self, example: &Example) -> f64 {
        let g = &self.set.groups[example.query];
        let query = self.set.texts[g.text].len();
        let most = self.tokenizer.max_length();
        std::iter::once(&g.positives[example.positive])
            .chain(example.negatives.iter().map(|&n| &g.negatives[n]))
            .map(|d| {
                let tokens = (3 + (query + self.set.texts[d.text].len()) / 4).min(most);
                super::feed::sequence_cost(tokens, self.hidden)
            })
            .sum()
    }
}

impl<'a> TeacherObjective<'a> {
    pub fn new(model: &'a CrossEncoder, set: &'a TrainingSet, loss: TeacherLoss) -> Self {
        TeacherObjective {
            model,
            loss,
            host: TeacherBatches {
                tokenizer: &model.tokenizer,
                set,
                device: model.device(),
                packs: model.bert.packs_on(model.device()),
                hidden: model.config.hidden_size,
            },
        }
    }
}

impl Task for TeacherObjective<'_> {
    /// Per example `1 + k` rows: the logit of its positive, then its negatives'.
    fn represent(&self, examples: &[Example]) -> Result<Tensor> {
        self.represent_prepared(examples, self.host.prepare(examples)?)
    }

    fn compute_copies(&self) -> Vec<&crate::model::bert::ComputeCopies> {
        self.model.bert.compute_copies().into_iter().collect()
    }

    fn preparer(&self) -> Option<&dyn Prepare> {
        Some(&self.host)
    }

    fn flops(&self, work: &crate::model::work::Work) -> Option<f64> {
        Some(crate::model::work::training_flops(&self.model.config, work))
    }

    fn represent_prepared(&self, _examples: &[Example], prepared: Prepared) -> Result<Tensor> {
        let device = self.model.device();
        Ok(prepared.run(device, |batch| {
            self.model.forward_t(batch, true).select(1, 0)
        }))
    }

    fn loss_from(&self, examples: &[Example], reps: &Tensor) -> Result<Terms> {
        let k = 1 + examples.first().map_or(0, |e| e.negatives.len()) as i64;
        Ok(teacher_loss(&reps.view([-1, k]), self.loss))
    }
}

/// The teacher's loss over `logits` `[queries, 1 + negatives]` (positive first).
pub fn teacher_loss(logits: &Tensor, loss: TeacherLoss) -> Terms {
    let terms = match loss {
        TeacherLoss::Listwise => vec![("listwise_ce", losses::listwise_ce(logits))],
        TeacherLoss::Bce => vec![("bce", losses::pointwise_bce(logits))],
        TeacherLoss::ListwiseBce => vec![
            ("listwise_ce", losses::listwise_ce(logits)),
            ("bce", losses::pointwise_bce(logits)),
        ],
    };
    let total = terms
        .iter()
        .map(|(_, l)| l.shallow_clone())
        .reduce(|a, b| a + b)
        .unwrap_or_else(|| Tensor::zeros([], (Kind::Float, logits.device())));
    let values = terms
        .into_iter()
        .map(|(n, l)| (n.to_string(), l.detach()))
        .collect();
    (total, values)
}

#[cfg(test)]
#[path = "objectives_tests.rs"]
mod tests;
