//! Stage `mine`: encode the corpus with the student (cached by model and corpus
//! fingerprint), retrieve the top-k documents of every training query by exact inner
//! product, and select candidates as sentence-transformers' `mine_hard_negatives` does:
//! a rank range, labelled positives excluded, `top` or seeded `random` sampling.
//! Output: `candidates.parquet` (positives included, so the teacher scores them too).
//! `--shard I/N` workers split the query chunks and share the corpus encoding
//! ([`super::corpus_parts`]).
use super::paths::mine::OUTPUT;
use super::paths::StageId;
use super::{Outcome, Stage, StageEnv};
use crate::data::beir::{self, Dataset};
use crate::data::pairs::PairTable;
use crate::error::Result;
use crate::pipeline::config::{DatasetRef, PromptNames, Sampling};
use crate::pipeline::fingerprint;
use crate::pipeline::manifest::Manifest;
use crate::pipeline::Pipeline;
use crate::retrieval;
use crate::rng::SplitMix64;
use rayon::prelude::*;
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use tch::{Kind, Tensor};

pub struct Mine;

/// Training queries of a dataset: ids with at least one positive (grade > 0), sorted,
/// with their positives (sorted).
fn training_queries(ds: &Dataset, split: &str) -> Vec<(String, Vec<String>)> {
    ds.qrels
        .get(split)
        .map(|q| {
            q.iter()
                .map(|(qid, docs)| {
                    let pos: Vec<String> = docs
                        .iter()
                        .filter(|(_, &g)| g > 0)
                        .map(|(d, _)| d.clone())
                        .collect();
                    (qid.clone(), pos)
                })
                .filter(|(_, pos)| !pos.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

/// What changes mine's output: the fields of its configuration hash.
#[derive(serde::Serialize)]
struct MineHash<'a> {
    mine: &'a crate::pipeline::config::MineConfig,
    seed: u64,
    precision: &'static str,
    student_max_seq_length: Option<usize>,
    /// The student's prompts by name, when set.
    #[serde(skip_serializing_if = "PromptNames::is_default")]
    student_prompts: &'a PromptNames,
    datasets: Vec<MinedDataset<'a>>,
    /// The dev slice's queries are not mined (left out when the slice is off, as runs
    /// made before it existed had none).
    #[serde(skip_serializing_if = "Option::is_none")]
    dev_queries: Option<crate::data::dev::DevQueries>,
}

/// A mined dataset in mine's hash: the pseudo-query settings only when it has
/// pseudo-queries, each only when not its default (runs made before a key existed keep
/// their hashes).
#[derive(serde::Serialize)]
struct MinedDataset<'a> {
    name: &'a str,
    train_split: &'a str,
    strict: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pseudo_queries: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pseudo_windows: Option<crate::data::pseudo::Windows>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pseudo_scope: Option<crate::data::pseudo::Scope>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pseudo_per_sentence: Option<usize>,
}

impl Stage for Mine {
    fn name(&self) -> &'static str {
        StageId::Mine.name()
    }

    fn upstream(&self, _: &Pipeline) -> Vec<&'static str> {
        vec![]
    }

    fn config(&self, p: &Pipeline, kind: Kind) -> serde_json::Value {
        let datasets = p
            .trained()
            .map(|d| {
                let pseudo = d.pseudo_queries > 0;
                MinedDataset {
                    name: &d.name,
                    train_split: &d.train_split,
                    strict: d.strict,
                    pseudo_queries: pseudo.then_some(d.pseudo_queries),
                    pseudo_windows: (pseudo && !d.pseudo_windows.is_default())
                        .then_some(d.pseudo_windows),
                    pseudo_scope: (pseudo && !d.pseudo_scope.is_default())
                        .then_some(d.pseudo_scope),
                    pseudo_per_sentence: (pseudo && d.pseudo_per_sentence != 1)
                        .then_some(d.pseudo_per_sentence),
                }
            })
            .collect();
        super::shared::hashed(&MineHash {
            mine: &p.mine,
            seed: p.seed,
            precision: super::shared::kind_name(kind),
            student_max_seq_length: p.student.max_length,
            student_prompts: &p.student_prompts,
            datasets,
            dev_queries: (!p.dev_queries.is_off()).then_some(p.dev_queries),
        })
    }

    fn inputs(
        &self,
        p: &Pipeline,
        _: &BTreeMap<String, Manifest>,
    ) -> Result<BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        out.insert("student".into(), fingerprint::directory(&p.student.path)?);
        for d in p.trained() {
            super::shared::dataset_inputs(d, &[&d.train_split], &mut out)?;
        }
        Ok(out)
    }

    fn progress(&self, _: &Pipeline, partial: &Path) -> Option<(usize, usize)> {
        super::read_plan(partial).map(|total| (super::count_shards(partial, "ds"), total))
    }

    fn run(&self, env: &mut StageEnv) -> Result<Outcome> {
        let p = env.pipeline;
        let mut clock = std::time::Instant::now();
        let student =
            p.load_student(&p.student.path, env.device, env.kind, p.student.max_length)?;
        let student_fp = fingerprint::directory(&p.student.path)?;
        env.timed("loading the student", &mut clock);
        let mut loaded = Vec::new();
        for d in p.trained() {
            // What a non-strict load skipped was reported by the preflight check.
            let ds = d.load(&[&d.train_split], p.seed)?;
            let dev = super::shared::dev_slice(p, d, &ds);
            let mut queries = training_queries(&ds, &d.train_split);
            let labelled = queries.len();
            queries.retain(|(q, _)| !dev.contains_key(q));
            if queries.is_empty() {
                let qrels = beir::qrels_path(&d.path, &d.train_split);
                let message = if labelled == 0 {
                    format!(
                        "no query of the training split has a relevant document (grade > 0): \
                         nothing to mine or train on; point `dataset.train_split` of `{}` at \
                         a split with labelled queries",
                        d.name
                    )
                } else {
                    format!(
                        "every one of its {labelled} labelled queries is in the dev slice: \
                         lower `teacher_train.dev_queries`"
                    )
                };
                return Err(crate::error::Error::config(qrels, message));
            }
            loaded.push((d, ds, queries, dev.len()));
        }
        env.timed("loading the datasets", &mut clock);
        let chunk = p.mine.query_chunk;
        let total: usize = loaded
            .iter()
            .map(|(_, _, q, _)| q.len().div_ceil(chunk))
            .sum();
        super::write_plan(&env.partial, total)?;
        let mut summary = serde_json::Map::new();
        let mut done = 0usize;
        // A `--shard` worker does the chunks it owns, numbered across the datasets.
        let mut first = 0usize;
        for (di, (d, ds, queries, dev)) in loaded.iter().enumerate() {
            let prefix = format!("ds{di}");
            let shards = queries.len().div_ceil(chunk);
            let worker = env.shard;
            let missing: Vec<usize> = (0..shards)
                .filter(|&s| worker.is_none_or(|w| w.owns(first + s)))
                .filter(|&s| !env.usable_shard(&env.shard_path(&prefix, s), PairTable::read))
                .collect();
            first += shards;
            if !missing.is_empty() {
                let corpus = super::shared::corpus_embeddings(env, &student, &student_fp, d, ds)?;
                env.timed(&format!("embedding the corpus of {}", d.name), &mut clock);
                let part = |s: usize| &queries[s * chunk..((s + 1) * chunk).min(queries.len())];
                // The device searches chunk s + 1 while threads turn the chunks before
                // into their tables and write them; each shard is reported once it is
                // committed (in any order: each is a file of its own).
                std::thread::scope(|scope| -> Result<()> {
                    let (to_builder, jobs) =
                        std::sync::mpsc::sync_channel::<(usize, std::path::PathBuf, Found)>(
                            TABLE_BUILDERS,
                        );
                    let jobs = std::sync::Arc::new(std::sync::Mutex::new(jobs));
                    let (to_stage, written) = std::sync::mpsc::channel::<Result<usize>>();
                    let builders: Vec<_> = (0..TABLE_BUILDERS)
                        .map(|_| {
                            let (jobs, to_stage) = (jobs.clone(), to_stage.clone());
                            scope.spawn(move || {
                                let (mut building, mut writing) = (0.0, 0.0);
                                loop {
                                    let job = jobs.lock().map(|j| j.recv());
                                    let Ok(Ok((s, path, found))) = job else {
                                        break;
                                    };
                                    let clock = std::time::Instant::now();
                                    let table = chunk_table(p, d, ds, part(s), found);
                                    building += clock.elapsed().as_secs_f64();
                                    let r = table.write(&path);
                                    writing += clock.elapsed().as_secs_f64();
                                    let failed = r.is_err();
                                    let _ = to_stage.send(r.map(|()| s));
                                    if failed {
                                        break;
                                    }
                                }
                                (building, writing - building)
                            })
                        })
                        .collect();
                    // Only the builders hold the jobs' receiver: once they have all stopped
                    // (each stops at its first error), a send fails instead of waiting.
                    drop((to_stage, jobs));
                    let mut report = |env: &mut StageEnv, r: Result<usize>| -> Result<()> {
                        r?;
                        done += 1;
                        env.committed(done - 1, total);
                        Ok(())
                    };
                    // Chunk s + 1's queries are tokenized while chunk s is encoded and
                    // searched; each chunk is encoded in its own batches, so a resumed run
                    // encodes its remaining chunks exactly as a whole run does.
                    let mut times = SearchTimes::default();
                    let chunks = missing.iter().map(|&s| Ok((query_texts(ds, part(s))?, s)));
                    let streamed = student.encode_stream(
                        student.prompt(crate::model::Side::Query),
                        chunks,
                        p.student.batch_size,
                        &mut |_| {},
                        &mut |s, q| {
                            let clock = std::time::Instant::now();
                            let found = search_chunk(p, &corpus, ds, part(s), &q)?;
                            times.searching += clock.elapsed().as_secs_f64();
                            let path = env.shard_path(&prefix, s);
                            let sent = std::time::Instant::now();
                            if to_builder.send((s, path.clone(), found)).is_err() {
                                // Every builder stopped, each on an error it sent first
                                // (or a panic, raised at the join).
                                for r in written.try_iter() {
                                    report(env, r)?;
                                }
                                return Err(crate::error::Error::output(
                                    &path,
                                    "the candidate tables' writer stopped",
                                ));
                            }
                            times.waiting += sent.elapsed().as_secs_f64();
                            for r in written.try_iter() {
                                report(env, r)?;
                            }
                            Ok(())
                        },
                    );
                    drop(to_builder);
                    let mut result = streamed.map(|_| ());
                    let (mut building, mut writing) = (0.0, 0.0);
                    for b in builders {
                        let (b, w) = b.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
                        building += b;
                        writing += w;
                    }
                    times.log(env);
                    env.timing("of which building tables (builder threads)", building);
                    env.timing("of which writing shards (builder threads)", writing);
                    for r in written.try_iter() {
                        if let (Err(e), true) = (report(env, r), result.is_ok()) {
                            result = Err(e);
                        }
                    }
                    result
                })?;
                env.timed(&format!("searching for {}'s queries", d.name), &mut clock);
            }
            let without = ds.qrels[&d.train_split].len() - queries.len() - dev;
            summary.insert(
                d.name.clone(),
                json!({"queries": queries.len(), "queries_without_positives": without, "dev_queries": dev}),
            );
        }
        // Workers never assemble: others may still be writing. A run without --shard does.
        if env.shard.is_some() {
            let done = super::count_shards(&env.partial, "ds");
            return Ok(Outcome::Partial { done, total });
        }
        // Assemble the shards in order: their row groups are copied into one file as they
        // are encoded; each shard is read (in parallel) for the summary's counts only.
        let mut shards = Vec::new();
        let mut rows = 0usize;
        for (di, (d, _, queries, _)) in loaded.iter().enumerate() {
            let paths: Vec<std::path::PathBuf> = (0..queries.len().div_ceil(chunk))
                .map(|s| env.shard_path(&format!("ds{di}"), s))
                .collect();
            let counts = paths
                .par_iter()
                .map(|path| {
                    let (queries, positive) = PairTable::read_queries_and_positives(path)?;
                    let pos = positive.iter().filter(|&&b| b).count();
                    let short = count_short(&queries, &positive, p.mine.num_negatives);
                    Ok((pos, positive.len() - pos, short))
                })
                .collect::<Result<Vec<_>>>()?;
            let (pos, neg, short) = counts
                .iter()
                .fold((0, 0, 0), |a, c| (a.0 + c.0, a.1 + c.1, a.2 + c.2));
            if let Some(entry) = summary.get_mut(&d.name).and_then(|v| v.as_object_mut()) {
                entry.insert("positives".into(), pos.into());
                entry.insert("negatives".into(), neg.into());
                entry.insert("queries_with_fewer_negatives".into(), short.into());
            }
            rows += pos + neg;
            shards.extend(paths);
        }
        crate::data::concat::concat_files(&shards, &env.dir.join(OUTPUT))?;
        env.timed("assembling the candidates", &mut clock);
        Ok(Outcome::Complete {
            outputs: vec![OUTPUT.into()],
            rows: rows as u64,
            summary: serde_json::Value::Object(summary),
        })
    }
}

/// Queries with fewer than `n` negatives, from each row's query and positive flag.
fn count_short(queries: &[String], positive: &[bool], n: usize) -> usize {
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for (q, &is_positive) in queries.iter().zip(positive) {
        let e = per.entry(q).or_insert(0);
        if !is_positive {
            *e += 1;
        }
    }
    per.values().filter(|&&c| c < n).count()
}

/// Threads that build and write the candidate tables of searched query chunks (at 1M
/// passages on an H200 a chunk's table took longer to build and write, 47 ms, than its
/// search).
const TABLE_BUILDERS: usize = 3;

/// What the device found for one chunk of training queries: the student's top-k of each
/// query, and each labelled positive's (query row, corpus row) with its score and rank.
struct Found {
    ranking: retrieval::Ranking,
    pos_pairs: Vec<(i64, i64)>,
    pos_scores: Vec<(f32, i64)>,
}

/// Where the search's time goes, summed over its query chunks (logged as timing events
/// within "searching for ...").
#[derive(Default)]
struct SearchTimes {
    /// On the device (the queries' encoding is queued before it and waited for in it).
    searching: f64,
    /// The device idle while the table builder is still on the chunk before.
    waiting: f64,
}

impl SearchTimes {
    fn log(&self, env: &mut StageEnv) {
        env.timing("of which encoding and searching", self.searching);
        env.timing("of which waiting for the table builder", self.waiting);
    }
}

/// The texts of a chunk of training queries.
fn query_texts<'a>(
    ds: &'a Dataset,
    queries: &[(String, Vec<String>)],
) -> Result<Vec<std::borrow::Cow<'a, str>>> {
    queries
        .iter()
        .map(|(q, _)| Ok(ds.queries.text(q)?.unwrap_or_default()))
        .collect()
}

/// Search the corpus for one chunk of training queries, `q` their embeddings.
fn search_chunk(
    p: &Pipeline,
    corpus: &Tensor,
    ds: &Dataset,
    queries: &[(String, Vec<String>)],
    q: &Tensor,
) -> Result<Found> {
    let cfg = &p.mine;
    let q = q.to_device(corpus.device());
    let mut pos_pairs = Vec::new();
    for (row, (_, pos)) in queries.iter().enumerate() {
        for doc in pos {
            if let Some(i) = ds.corpus.position(doc) {
                pos_pairs.push((row as i64, i as i64));
            }
        }
    }
    let (ranking, pos_scores) =
        retrieval::search(&q, corpus, cfg.top_k, cfg.corpus_chunk, &pos_pairs)?;
    Ok(Found {
        ranking,
        pos_pairs,
        pos_scores,
    })
}

/// The candidates of one chunk of training queries (on the host, from [`search_chunk`]'s
/// results): each query's labelled positives, then its negatives from the rank range.
fn chunk_table(
    p: &Pipeline,
    d: &DatasetRef,
    ds: &Dataset,
    queries: &[(String, Vec<String>)],
    found: Found,
) -> PairTable {
    let cfg = &p.mine;
    let Found {
        ranking,
        pos_pairs,
        pos_scores,
    } = found;
    let mut t = PairTable::default();
    let push = |t: &mut PairTable, qid: &str, doc: &str, rank: i64, score: f32, positive: bool| {
        t.dataset.push(d.name.clone());
        t.query_id.push(qid.to_string());
        t.doc_id.push(doc.to_string());
        t.rank.push(rank as i32);
        t.student_score.push(score);
        t.is_positive.push(positive);
    };
    let mut next_pos = pos_pairs.iter().zip(&pos_scores).peekable();
    for (row, (qid, pos)) in queries.iter().enumerate() {
        while let Some(((r, di), (score, rank))) = next_pos.peek() {
            if *r != row as i64 {
                break;
            }
            push(
                &mut t,
                qid,
                &ds.corpus.ids[*di as usize],
                *rank,
                *score,
                true,
            );
            next_pos.next();
        }
        let positives: BTreeSet<&str> = pos.iter().map(|s| s.as_str()).collect();
        // The rank range of the student's ranking, without the query itself (BEIR).
        let pool: Vec<(usize, i64, f32)> = ranking.indices[row]
            .iter()
            .zip(&ranking.scores[row])
            .enumerate()
            .filter(|(r, _)| *r >= cfg.range_min && *r < cfg.range_max)
            .map(|(r, (&i, &s))| (r, i, s))
            .filter(|(_, i, _)| ds.corpus.ids[*i as usize] != *qid)
            .filter(|(_, i, _)| {
                !(cfg.exclude_positives && positives.contains(ds.corpus.ids[*i as usize].as_str()))
            })
            .collect();
        let mut chosen = match cfg.sampling {
            Sampling::Top => pool.into_iter().take(cfg.num_negatives).collect::<Vec<_>>(),
            Sampling::Random => SplitMix64::for_key(p.seed, &format!("{}\u{0}{qid}", d.name))
                .sample(&pool, cfg.num_negatives),
        };
        chosen.sort_by_key(|c| c.0);
        for (r, i, s) in chosen {
            let doc = &ds.corpus.ids[i as usize];
            if positives.contains(doc.as_str()) {
                continue; // already listed as a positive
            }
            push(&mut t, qid, doc, r as i64 + 1, s, false);
        }
    }
    t
}
