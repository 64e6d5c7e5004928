//! The arguments of `distill`'s subcommands (clap), apart from the command line's shape
//! and dispatch in `main.rs`.
use clap::Args;
use distill::commands::export_data::ExportFormat;
use distill::commands::trend::Against;
use distill::data::text_input::TextFormat;
use distill::device::{DeviceSpec, Runtime};
use distill::pipeline::config::defaults::{EVAL_RERANK_K, EVAL_TOP_K};
use distill::pipeline::workers::Workers;
use distill::pipeline::Pipeline;
use distill::stages::ShardSpec;
use std::ffi::OsString;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub(crate) struct ExportDataArgs {
    /// Run directory (<output_root>/<name>) whose mine and score stages are done.
    pub(crate) run_dir: PathBuf,
    /// The pipeline file the run was made with (its datasets give the texts).
    #[arg(long)]
    pub(crate) pipeline: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    pub(crate) format: ExportFormat,
    /// Output file (JSONL for flagembedding, Parquet for st-margin and st-kl), written
    /// atomically.
    #[arg(long, short)]
    pub(crate) output: PathBuf,
    /// Keep the negatives that the score stage flagged as likely false negatives, marked
    /// (`neg_flagged` in JSONL, a `negative_flagged` list column in Parquet).
    #[arg(long)]
    pub(crate) keep_false_negatives: bool,
    /// Negatives per query: the first N by the student's rank; queries with fewer are
    /// dropped. Default: every negative (flagembedding), the smallest count among the
    /// queries (st-margin, st-kl).
    #[arg(long, value_name = "N")]
    pub(crate) negatives: Option<usize>,
}

#[derive(Args, Debug)]
pub(crate) struct BenchArgs {
    /// Model directory (MiniLM-L6 shapes; the weights do not matter for speed).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    pub(crate) model: PathBuf,
    /// Workloads to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "w1,w2,w3,w4")]
    pub(crate) workloads: Vec<distill::commands::bench::Workload>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    pub(crate) device: DeviceSpec,
    /// Seconds of timed work per workload and implementation.
    #[arg(long, default_value_t = 10.0)]
    pub(crate) seconds: f64,
    /// Shrunken shapes (a smoke test on the CPU).
    #[arg(long)]
    pub(crate) small: bool,
    /// Python with torch and transformers for the PyTorch side.
    #[arg(long, default_value = "python3")]
    pub(crate) python: PathBuf,
    /// Skip the PyTorch side.
    #[arg(long)]
    pub(crate) no_torch: bool,
    /// The PyTorch side's script.
    #[arg(long, default_value = "scripts/bench_torch.py")]
    pub(crate) script: PathBuf,
    /// The GPU's dense bf16 peak in TFLOP/s (H100 and H200 SXM: 989).
    #[arg(long, default_value_t = 989.0)]
    pub(crate) peak_tflops: f64,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub(crate) seed: u64,
    /// Also write every measurement as JSON lines here.
    #[arg(long)]
    pub(crate) output: Option<PathBuf>,
    /// Write Kineto (Chrome) traces of 3 units of each workload, both implementations,
    /// into this folder; `scripts/profile_summary.py` compares them.
    #[arg(long)]
    pub(crate) profile: Option<PathBuf>,
    /// Run CUDA batches padded through scaled_dot_product_attention, as transformers
    /// does, instead of packed with variable-length flash attention.
    #[arg(long)]
    pub(crate) padded: bool,
    /// Run aten's add then layer_norm kernels instead of the fused add + LayerNorm kernel
    /// (inference on CUDA).
    #[arg(long)]
    pub(crate) no_fused: bool,
}

#[derive(Args, Debug)]
pub(crate) struct ReportArgs {
    /// Run directories (<output_root>/<name>) or folders of them; quoted globs work too.
    #[arg(required = true, value_name = "RUN_DIR")]
    pub(crate) runs: Vec<PathBuf>,
    /// Folder for trend.html and trend.md.
    #[arg(long, short, default_value = "trend")]
    pub(crate) output: PathBuf,
    /// Metrics tabulated and checked (ndcg@10, mrr@10, p@10, recall@10, recall@100,
    /// recall@1000, map@100).
    #[arg(long, value_delimiter = ',', default_value = "ndcg@10,recall@100")]
    pub(crate) metrics: Vec<String>,
    /// Largest drop (absolute) of the distilled student that is not a regression.
    #[arg(long, default_value_t = 0.005)]
    pub(crate) threshold: f64,
    /// What the newest run is compared with.
    #[arg(long, value_enum, default_value = "previous")]
    pub(crate) against: Against,
    /// Runs shown in the table (the charts show every run).
    #[arg(long, default_value_t = 14)]
    pub(crate) last: usize,
}

#[derive(Args, Debug)]
pub(crate) struct PipelineArg {
    /// Pipeline file (TOML).
    pub(crate) pipeline: PathBuf,
    /// Run name instead of the file's run.name (the run directory is
    /// <output_root>/<name>), e.g. --name nightly-$(date +%F).
    #[arg(long)]
    pub(crate) name: Option<String>,
}

impl PipelineArg {
    pub(crate) fn load(&self) -> anyhow::Result<Pipeline> {
        let p = Pipeline::load(&self.pipeline)?;
        Ok(match &self.name {
            Some(n) => p.with_name(n)?,
            None => p,
        })
    }
}

#[derive(Args, Debug)]
pub(crate) struct RunArgs {
    #[command(flatten)]
    pub(crate) pipeline: PipelineArg,
    /// Rerun this stage and every stage after it.
    #[arg(long, conflicts_with = "only")]
    pub(crate) from: Option<String>,
    /// Run only this stage (the stages it reads must be done).
    #[arg(long)]
    pub(crate) only: Option<String>,
    /// Rerun the selected stages even when their manifests match.
    #[arg(long)]
    pub(crate) force: bool,
    /// Do only shards j with j % N == I (I/N) of the mine, score or eval stage (score
    /// when --only is not given); run once more without --shard to merge.
    #[arg(long, value_name = "I/N")]
    pub(crate) shard: Option<ShardSpec>,
    /// Run the stages in N worker processes on this host, one per GPU: mine, score and
    /// eval split into shards, teacher and train as data-parallel ranks; their output in
    /// <run>/workers/.
    #[arg(long, value_name = "N")]
    pub(crate) gpus: Option<usize>,
    /// Go on past a teacher that fails the gate (its dev-slice rerank does not beat the
    /// student alone by health.min_teacher_gain); the report marks the run.
    #[arg(long)]
    pub(crate) allow_weak_teacher: bool,
    /// Exit with code 5 when the run has health warnings (for cron).
    #[arg(long)]
    pub(crate) strict_health: bool,
}

#[derive(Args, Debug)]
pub(crate) struct EncodeArgs {
    /// sentence-transformers model directory.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// BEIR corpus/queries JSONL (`_id`, `text`, optional `title`), `id<TAB>text` lines or
    /// plain text lines; gzip-compressed when the name ends in `.gz`.
    #[arg(long)]
    pub(crate) input: PathBuf,
    /// Output Parquet file (columns `id`, `embedding`).
    #[arg(long)]
    pub(crate) output: PathBuf,
    /// Input format (auto: by extension, else `id<TAB>text` when the first line is).
    #[arg(long, value_enum, default_value = "auto")]
    pub(crate) format: TextFormat,
    /// Override the model's max_seq_length (tokens, special tokens included).
    #[arg(long)]
    pub(crate) max_seq_length: Option<usize>,
    /// Put the model's prompt of this name (config_sentence_transformers.json) in front
    /// of every text, as sentence-transformers' `encode(prompt_name=...)`; unset: the
    /// model's default prompt, if it names one.
    #[arg(long)]
    pub(crate) prompt_name: Option<String>,
    /// Write a Kineto (Chrome) trace of the encoding to this file (`scripts/profile_summary.py`
    /// reads it); for a small input, as the trace records every kernel.
    #[arg(long)]
    pub(crate) profile: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) runtime: Runtime,
}

#[derive(Args, Debug)]
pub(crate) struct EvalArgs {
    /// sentence-transformers model directory (the student).
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); repeat for several.
    #[arg(long, required = true)]
    pub(crate) data: Vec<PathBuf>,
    /// The qrels split evaluated.
    #[arg(long, default_value = "test")]
    pub(crate) split: String,
    /// Folder for metrics.json, per_query.parquet and runs/.
    #[arg(long, default_value = "eval")]
    pub(crate) output: PathBuf,
    /// Documents retrieved per query.
    #[arg(long, default_value_t = EVAL_TOP_K)]
    pub(crate) top_k: usize,
    /// Cross-encoder directory: rescore the student's top --rerank-k of each query.
    #[arg(long, value_name = "CE_DIR")]
    pub(crate) rerank: Option<PathBuf>,
    /// Documents per query the cross-encoder rescores.
    #[arg(long, default_value_t = EVAL_RERANK_K, requires = "rerank")]
    pub(crate) rerank_k: usize,
    /// Override the cross-encoder's max length (tokens of the pair).
    #[arg(long, requires = "rerank")]
    pub(crate) rerank_max_length: Option<usize>,
    /// Override the student's max_seq_length (tokens, special tokens included).
    #[arg(long)]
    pub(crate) max_seq_length: Option<usize>,
    /// Skip and count what strict BEIR reading stops on (duplicate ids, empty texts, ...).
    #[arg(long)]
    pub(crate) lenient: bool,
    #[command(flatten)]
    pub(crate) runtime: Runtime,
}

#[derive(Args, Debug)]
pub(crate) struct RerankArgs {
    /// Cross-encoder directory.
    #[arg(long)]
    pub(crate) model: PathBuf,
    /// Input TREC run (qid Q0 docid rank score tag).
    #[arg(long)]
    pub(crate) run: PathBuf,
    /// BEIR folder holding the run's queries and documents.
    #[arg(long)]
    pub(crate) data: PathBuf,
    /// Output TREC run, written under a temporary name and renamed when complete.
    #[arg(long)]
    pub(crate) output: PathBuf,
    /// Documents per query rescored (the input run's top K, in TREC order).
    #[arg(long, default_value_t = EVAL_RERANK_K)]
    pub(crate) top_k: usize,
    /// The output lines' tag (last column).
    #[arg(long, default_value = "distill-rerank")]
    pub(crate) tag: String,
    /// Override the cross-encoder's max length (tokens of the pair).
    #[arg(long)]
    pub(crate) max_length: Option<usize>,
    /// Skip and count what strict BEIR reading stops on (duplicate ids, empty texts, ...).
    #[arg(long)]
    pub(crate) lenient: bool,
    #[command(flatten)]
    pub(crate) runtime: Runtime,
}

impl RunArgs {
    /// `--gpus N` (or `run.gpus`; N > 1): this executable as the workers, on the same
    /// pipeline and name.
    pub(crate) fn workers(&self, p: &Pipeline, verbose: bool) -> anyhow::Result<Option<Workers>> {
        let count = match self.gpus.or((p.gpus > 1).then_some(p.gpus)) {
            Some(0) => anyhow::bail!("--gpus needs at least 1"),
            Some(n) if n > 1 => n,
            _ => return Ok(None),
        };
        // A child is one worker whatever `run.gpus` says.
        let mut args: Vec<OsString> = vec![
            "run".into(),
            self.pipeline.pipeline.clone().into(),
            "--gpus".into(),
            "1".into(),
        ];
        if let Some(name) = &self.pipeline.name {
            args.extend(["--name".into(), name.into()]);
        }
        if self.allow_weak_teacher {
            args.push("--allow-weak-teacher".into());
        }
        if verbose {
            args.push("--verbose".into());
        }
        Ok(Some(Workers {
            count,
            program: std::env::current_exe()?,
            args,
        }))
    }
}
