//! What several stages share without importing each other: the student's corpus
//! embeddings (cached across runs) and the teacher's dev slice with its evaluation.
use super::StageEnv;
use crate::data::beir::{self, Dataset};
use crate::data::embeddings::{for_each_embeddings, write_behind, EmbeddingsWriter};
use crate::error::{Error, Result, TorchContext};
use crate::model::{BiEncoder, CrossEncoder};
use crate::pipeline::config::DatasetRef;
use crate::pipeline::events::Event;
use crate::pipeline::fingerprint;
use crate::pipeline::manifest::Manifest;
use crate::pipeline::Pipeline;
use crate::ranking::evaluation;
use crate::ranking::metrics::{Judgements, Measures};
use crate::ranking::rerank::{self, Depth, Reranker};
use serde_json::json;
use std::collections::BTreeMap;
use tch::{Kind, Tensor};

/// "bf16" or "fp32": the precision as hashed into stage configurations.
pub fn kind_name(kind: Kind) -> &'static str {
    if kind == Kind::BFloat16 {
        "bf16"
    } else {
        "fp32"
    }
}

/// Whether a cache entry's file still has the content recorded beside it
/// (`<file>.sha256`, written after the file). An entry without the record, or whose file
/// changed, is not trusted: the caller recomputes it, with a warning.
pub fn cache_entry_ok(env: &mut StageEnv, path: &std::path::Path) -> bool {
    if !path.exists() {
        return false;
    }
    let record = sha256_record(path);
    let want = std::fs::read_to_string(&record).unwrap_or_default();
    let ok = fingerprint::content(path).is_ok_and(|h| h == want.trim());
    if !ok {
        env.warn(format!(
            "cache entry {} does not match its recorded sha256 ({}); it is recomputed",
            path.display(),
            record.display()
        ));
    }
    ok
}

/// Record a cache entry's content (after the entry itself is in place).
pub fn record_cache_entry(path: &std::path::Path) -> Result<()> {
    write_cache_record(path, &fingerprint::content(path)?)
}

/// Record `digest` as the content of the cache entry at `path` (in place already).
fn write_cache_record(path: &std::path::Path, digest: &str) -> Result<()> {
    crate::data::atomic::write_bytes(&sha256_record(path), digest.as_bytes())
}

fn sha256_record(path: &std::path::Path) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".sha256");
    path.with_file_name(name)
}

/// Corpus embeddings (`[n, dim]` fp32 on the stage's device), from the shared cache when
/// the same student (weights, length, precision) already encoded the same corpus (and the
/// entry's content is as recorded). Encoded or read chunk by chunk: besides the matrix on
/// the device, memory holds one chunk at a time.
pub fn corpus_embeddings(
    env: &mut StageEnv,
    student: &BiEncoder,
    student_fp: &str,
    d: &DatasetRef,
    ds: &Dataset,
) -> Result<Tensor> {
    let p = env.pipeline;
    let mut key = json!({
        "student": student_fp,
        "corpus": fingerprint::file(&beir::corpus_path(&d.path))?,
        "strict": d.strict,
        "max_seq_length": student.spec.max_seq_length,
        "precision": kind_name(env.kind),
    });
    // The documents' prompt (none keeps the keys of entries made before prompts).
    if !student.document_prompt.is_empty() {
        key["document_prompt"] = json!(student.document_prompt);
    }
    let key = fingerprint::json(&key);
    let path = p
        .cache_dir
        .join("embeddings")
        .join(format!("{key}.parquet"));
    let dim = student.dim() as usize;
    let ids = &ds.corpus.ids;
    let matrix = Tensor::f_zeros([ids.len() as i64, dim as i64], (Kind::Float, env.device))
        .ctx(|| format!("allocating the embeddings of {}", d.name))?;
    if cache_entry_ok(env, &path) && read_cached(&path, ids, &matrix)? {
        return Ok(matrix);
    }
    let meta = [
        (
            "distill.model",
            student.spec.transformer_dir.display().to_string(),
        ),
        (
            "distill.corpus",
            beir::corpus_path(&d.path).display().to_string(),
        ),
    ];
    let writer = EmbeddingsWriter::create(&path, dim, &meta)?;
    let ((), digest) = write_behind(writer, |queue| {
        // A chunk's embeddings, on the device when it is a GPU, are copied into the matrix
        // there and once to the host for the cache.
        let mut store = |start: usize, emb: Tensor| -> Result<()> {
            let rows = emb.size()[0];
            matrix
                .narrow(0, start as i64, rows)
                .f_copy_(&emb)
                .ctx(|| "copying embeddings".into())?;
            let values =
                Vec::<f32>::try_from(emb.flatten(0, -1)).ctx(|| "reading embeddings".into())?;
            queue(ids[start..start + rows as usize].to_vec(), values)
        };
        // `--shard` workers share the encoding, part by part.
        match env.shard {
            Some(worker) => super::corpus_parts::encode(
                env,
                student,
                worker,
                &key,
                (&d.name, &ds.corpus),
                &mut store,
            ),
            None => encode_corpus(env, student, d, ds, &mut store),
        }
    })?;
    // Hashed as it was written: a cache entry of 1M embeddings is 1.5 GB to read again.
    write_cache_record(&path, &digest)?;
    Ok(matrix)
}

/// Rows `start..` of `matrix` (`[n, dim]`) from row-major `values`.
fn fill(matrix: &Tensor, start: usize, values: &[f32]) -> Result<()> {
    let dim = matrix.size()[1];
    let rows = values.len() as i64 / dim.max(1);
    Tensor::f_from_slice(values)
        .and_then(|t| t.f_view([rows, dim]))
        .and_then(|part| matrix.narrow(0, start as i64, rows).f_copy_(&part))
        .ctx(|| "copying embeddings".into())
}

/// Read the cache entry at `path` into `matrix` batch by batch; false (and whatever was
/// read is to be overwritten) when it does not hold `ids` in order, with the matrix's
/// width.
fn read_cached(path: &std::path::Path, ids: &[String], matrix: &Tensor) -> Result<bool> {
    let dim = matrix.size()[1] as usize;
    let mut at = 0usize;
    let mut same = true;
    for_each_embeddings(path, |batch_ids, values, got_dim| {
        let rows = arrow::array::Array::len(batch_ids);
        same = same
            && got_dim == dim
            && at + rows <= ids.len()
            && batch_ids
                .iter()
                .zip(&ids[at..at + rows])
                .all(|(a, b)| a == Some(b.as_str()));
        if same {
            fill(matrix, at, values)?;
        }
        at += rows;
        Ok(())
    })?;
    Ok(same && at == ids.len())
}

/// The corpus of `ds` encoded by `student` in this process, chunk by chunk, with progress
/// events; `store` gets each chunk's first row and embeddings, in order.
fn encode_corpus(
    env: &mut StageEnv,
    student: &BiEncoder,
    d: &DatasetRef,
    ds: &Dataset,
    store: &mut dyn FnMut(usize, Tensor) -> Result<()>,
) -> Result<()> {
    let stage = env.name.to_string();
    env.emit(Event::WorkStarted {
        stage: stage.clone(),
        label: format!("encode {}", d.name),
        total: ds.corpus.len() as u64,
    });
    let rows = crate::model::batching::chunk_rows();
    {
        let events = &mut *env.events;
        student.encode_stream(
            student.prompt(crate::model::Side::Document),
            ds.corpus.chunks(rows),
            env.pipeline.student.batch_size,
            &mut |n| {
                events.emit(Event::WorkProgress {
                    stage: stage.clone(),
                    n: n as u64,
                })
            },
            &mut |start, emb: Tensor| store(start, emb),
        )?;
    }
    env.emit(Event::WorkFinished { stage });
    Ok(())
}

/// The dev slice of a trained dataset, with its judgements: `p.dev_queries` of the
/// labelled queries of the training split's qrels (`ds` must hold them), drawn with the
/// run seed; empty when the slice is off.
pub fn dev_slice(p: &Pipeline, d: &DatasetRef, ds: &Dataset) -> BTreeMap<String, Judgements> {
    let Some(qrels) = ds.qrels.get(&d.train_split) else {
        return BTreeMap::new();
    };
    let labelled: Vec<&str> = qrels
        .iter()
        .filter(|(_, docs)| docs.values().any(|&g| g > 0))
        .map(|(q, _)| q.as_str())
        .collect();
    crate::data::dev::slice(&d.name, &labelled, p.dev_queries, p.seed)
        .into_iter()
        .filter_map(|q| qrels.get(&q).map(|j| (q, j.clone())))
        .collect()
}

/// nDCG@10 and MRR@10 of a run, as the summaries record them.
pub fn headline_measures(m: &Measures) -> serde_json::Value {
    json!({"ndcg@10": m.ndcg_10, "mrr@10": m.mrr_10})
}

/// The student alone and (with a teacher) the teacher's rerank of the student's top
/// `eval.rerank_k`, on the queries of `judged`: their mean measures.
pub fn evaluate_slice(
    env: &mut StageEnv,
    (model, embeddings): (&BiEncoder, &Tensor),
    teacher: Option<&CrossEncoder>,
    ds: &Dataset,
    judged: &BTreeMap<String, Judgements>,
) -> Result<(Measures, Option<Measures>)> {
    let p = env.pipeline;
    let depth = Depth {
        top_k: p.eval.rerank_k,
        corpus_chunk: p.mine.corpus_chunk,
        batch_size: p.student.batch_size,
    };
    let mut runs = evaluation::retrieve(model, embeddings, ds, judged, depth)?;
    if let Some(t) = teacher {
        runs.rerank(teacher_reranker(p, t), ds, &mut |_| {})?;
    }
    let e = runs.measure(judged);
    Ok((e.student.mean(), e.teacher.map(|t| t.mean())))
}

/// The teacher reranking each query's top `eval.rerank_k` in batches of
/// `teacher.batch_size`, as the teacher's gate and the eval stage rerank.
pub fn teacher_reranker<'a>(p: &Pipeline, teacher: &'a CrossEncoder) -> Reranker<'a> {
    Reranker {
        model: teacher,
        k: p.eval.rerank_k,
        batch_size: p.teacher.batch_size,
    }
}

/// The fingerprint of an upstream stage's output file.
pub fn upstream_output(
    p: &Pipeline,
    upstream: &BTreeMap<String, Manifest>,
    stage: &str,
    file: &str,
) -> Result<String> {
    upstream
        .get(stage)
        .and_then(|m| m.output_fingerprint(file))
        .map(str::to_string)
        .ok_or_else(|| Error::MissingUpstream {
            dir: p.run_dir.join(stage),
            stage: stage.into(),
            file: file.into(),
        })
}

/// A whole stage result kept across runs (the trained teacher): the stage's outputs and
/// summary under `cache/<stage>/<key>/`, keyed by the stage's identity (configuration and
/// input fingerprints), the device, the number of data-parallel ranks that trained it and
/// distill's version, so an unchanged night reuses it.
pub struct StageCache {
    dir: std::path::PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedOutcome {
    /// Output path (relative to the stage folder) -> sha256.
    outputs: BTreeMap<String, String>,
    rows: u64,
    summary: serde_json::Value,
}

const ENTRY: &str = "entry.json";

/// A cache entry's key. A teacher trained on N ranks is another teacher than one process
/// trains (other dropout masks, other reduction orders), so N > 1 enters the key; one
/// process keeps the key it always had.
fn cache_key(identity: &str, device: tch::Device, ranks: usize) -> String {
    let mut key = json!({
        "identity": identity,
        "device": format!("{device:?}"),
        "distill_version": env!("CARGO_PKG_VERSION"),
    });
    if ranks > 1 {
        key["ranks"] = ranks.into();
    }
    fingerprint::json(&key)
}

impl StageCache {
    /// The entry of `env`'s stage as `ranks` data-parallel processes make it (1 for one
    /// process).
    pub fn new(env: &StageEnv, ranks: usize) -> Self {
        let key = cache_key(&env.identity, env.device, ranks);
        StageCache {
            dir: env.pipeline.cache_dir.join(env.name).join(key),
        }
    }

    /// The cached result, copied into the stage folder, when the entry is whole and every
    /// file has its recorded content; `None` (with a warning when an entry was there but
    /// did not verify) otherwise.
    pub fn restore(&self, env: &mut StageEnv) -> Result<Option<super::Outcome>> {
        let entry = self.dir.join(ENTRY);
        if env.forced || !cache_entry_ok(env, &entry) {
            return Ok(None);
        }
        let cached: CachedOutcome = crate::error::read_json(&entry)?;
        let files = |rel: &String| self.dir.join("files").join(rel);
        if let Some((rel, _)) = cached
            .outputs
            .iter()
            .find(|(rel, want)| fingerprint::content(&files(rel)).ok().as_ref() != Some(want))
        {
            env.warn(format!(
                "cache entry {} does not match its recorded sha256; the stage runs",
                files(rel).display()
            ));
            return Ok(None);
        }
        for rel in cached.outputs.keys() {
            let dest = env.dir.join(rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            let tmp = crate::data::atomic::temp_path(&dest);
            std::fs::copy(files(rel), &tmp).map_err(|e| Error::io(&tmp, e))?;
            std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
        }
        let stage = env.name.to_string();
        env.emit(Event::Note {
            stage,
            message: format!(
                "inputs and settings unchanged: reused from {}",
                self.dir.display()
            ),
        });
        let mut summary = cached.summary;
        summary["cached"] = true.into();
        Ok(Some(super::Outcome::Complete {
            outputs: cached.outputs.into_keys().collect(),
            rows: cached.rows,
            summary,
        }))
    }

    /// Keep a completed result (its files copied, then the entry and its sha256 record).
    pub fn store(&self, env: &StageEnv, outcome: &super::Outcome) -> Result<()> {
        let super::Outcome::Complete {
            outputs,
            rows,
            summary,
        } = outcome
        else {
            return Ok(());
        };
        let tmp = crate::data::atomic::temp_path(&self.dir);
        let _ = std::fs::remove_dir_all(&tmp);
        let mut hashes = BTreeMap::new();
        for rel in outputs {
            let dest = tmp.join("files").join(rel);
            if let Some(parent) = dest.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            std::fs::copy(env.dir.join(rel), &dest).map_err(|e| Error::io(&dest, e))?;
            hashes.insert(rel.clone(), fingerprint::content(&dest)?);
        }
        let entry = CachedOutcome {
            outputs: hashes,
            rows: *rows,
            summary: summary.clone(),
        };
        crate::data::atomic::write_json(&tmp.join(ENTRY), &entry)?;
        if self.dir.exists() {
            std::fs::remove_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        }
        std::fs::rename(&tmp, &self.dir).map_err(|e| Error::io(&self.dir, e))?;
        record_cache_entry(&self.dir.join(ENTRY))
    }
}

/// Fingerprints of a dataset's texts (and of the given qrels splits).
pub fn dataset_inputs(
    d: &DatasetRef,
    splits: &[&str],
    out: &mut BTreeMap<String, String>,
) -> Result<()> {
    out.insert(
        format!("{}/corpus", d.name),
        fingerprint::file(&beir::corpus_path(&d.path))?,
    );
    out.insert(
        format!("{}/queries", d.name),
        fingerprint::file(&beir::queries_path(&d.path))?,
    );
    for split in splits {
        out.insert(
            format!("{}/qrels/{split}", d.name),
            fingerprint::file(&beir::qrels_path(&d.path, split))?,
        );
    }
    Ok(())
}

/// Corpus and queries (and `splits` qrels) of every dataset, by name.
pub fn load_datasets(p: &Pipeline, with_train_qrels: bool) -> Result<BTreeMap<String, Dataset>> {
    p.trained()
        .map(|d| {
            let splits: Vec<&str> = if with_train_qrels {
                vec![&d.train_split]
            } else {
                vec![]
            };
            Ok((d.name.clone(), d.load(&splits, p.seed)?))
        })
        .collect()
}

/// nDCG@10 of `student` on the judged queries of `judged` (mean over queries), as the
/// eval stage computes it, with the corpus encoded afresh (chunk by chunk): in-training
/// evaluation.
pub fn student_ndcg10(
    p: &Pipeline,
    student: &BiEncoder,
    ds: &Dataset,
    judged: &BTreeMap<String, Judgements>,
) -> Result<f64> {
    let corpus = student.encode_to_device(
        crate::model::Side::Document,
        &ds.corpus,
        p.student.batch_size,
        &mut |_| {},
    )?;
    let depth = Depth {
        top_k: p.eval.top_k,
        corpus_chunk: p.mine.corpus_chunk,
        batch_size: p.student.batch_size,
    };
    let runs = evaluation::retrieve(student, &corpus, ds, judged, depth)?;
    Ok(rerank::mean(&runs.student, judged).ndcg_10)
}

/// A stage's configuration hash input as JSON, from the explicit struct of the fields
/// that change the stage's output (`Stage::config`).
pub fn hashed(fields: &impl serde::Serialize) -> serde_json::Value {
    serde_json::to_value(fields)
        .unwrap_or_else(|e| unreachable!("hash fields serialise to JSON: {e}"))
}

#[cfg(test)]
mod tests {
    use super::cache_key;
    use crate::pipeline::fingerprint;
    use tch::Device;

    #[test]
    fn a_teacher_of_n_ranks_has_its_own_cache_entry_and_one_process_keeps_its_old_key() {
        let one = cache_key("abc", Device::Cpu, 1);
        // The key one process has always had (entries written before ranks existed).
        let old = fingerprint::json(&serde_json::json!({
            "identity": "abc",
            "device": "Cpu",
            "distill_version": env!("CARGO_PKG_VERSION"),
        }));
        assert_eq!(one, old);
        let two = cache_key("abc", Device::Cpu, 2);
        assert_ne!(one, two);
        assert_ne!(two, cache_key("abc", Device::Cpu, 4));
        assert_ne!(one, cache_key("abd", Device::Cpu, 1));
    }
}
