//! The `distill` command line: parse, validate, call the library, map errors to exit codes.
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use distill::commands::bench::{self, BenchSettings};
use distill::commands::encode::{self, EncodeSettings};
use distill::commands::eval_model::{self, EvalSettings};
use distill::commands::export_data::{self, ExportFormat, ExportSettings};
use distill::commands::rerank_run::{self, RerankSettings};
use distill::commands::trend::{self, Against, TrendSettings};
use distill::data::text_input::TextFormat;
use distill::device::{DeviceSpec, Runtime};
use distill::pipeline::config::defaults::{EVAL_RERANK_K, EVAL_TOP_K};
use distill::pipeline::runner::{self, RunOptions};
use distill::pipeline::Pipeline;
use distill::progress::Verbosity;
use distill::stages::ShardSpec;
use std::path::PathBuf;
use std::process::ExitCode;

fn long_version() -> &'static str {
    Box::leak(
        format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            distill::runtime_description()
        )
        .into_boxed_str(),
    )
}

/// Distil a cross-encoder reranker (teacher) into a bi-encoder retriever (student).
#[derive(Parser, Debug)]
#[command(
    name = "distill",
    version,
    long_version = long_version(),
    after_help = "Examples:\n  \
    distill run pipelines/demo.toml                                the demo (what `make demo` runs)\n  \
    distill run pipelines/nightly.toml --name nightly-$(date +%F)  one run directory per night\n  \
    distill status pipelines/nightly.toml                          what is done, stale or pending\n  \
    distill report checkpoints --threshold 0.005                   trend over runs; exit 3 on a regression\n\n\
    `distill <command> --help` shows every option with its default. Errors print no backtrace\n\
    unless -v or RUST_BACKTRACE=1 is given."
)]
struct Cli {
    /// Print only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    quiet: bool,
    /// Print more detail (and error backtraces).
    #[arg(short, long, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    #[command(verbatim_doc_comment)]
    /// Embed texts with a bi-encoder (sentence-transformers directory) into Parquet.
    ///
    /// Example: distill encode --model models/all-MiniLM-L6-v2
    ///            --input corpus.jsonl --output corpus.parquet
    Encode(EncodeArgs),
    #[command(verbatim_doc_comment)]
    /// Evaluate a bi-encoder on the evaluation split of BEIR folders without a pipeline,
    /// as the eval stage does (nDCG@10, MRR@10, P@10, Recall@10/100/1000, MAP@100); with
    /// --rerank, a cross-encoder also rescores the student's top --rerank-k. Writes
    /// metrics.json, per_query.parquet and TREC runs (runs/) into --output.
    ///
    /// Example: distill eval --model models/all-MiniLM-L6-v2 --data ../shared/data/scifact
    ///            --rerank checkpoints/demo/teacher/model --output eval-scifact
    Eval(EvalArgs),
    #[command(verbatim_doc_comment)]
    /// Rescore a TREC run file with a cross-encoder: each query's top --top-k documents
    /// (texts from a BEIR folder), written as a TREC run in the cross-encoder's order.
    ///
    /// Example: distill rerank --model CE_DIR --run eval/runs/scifact.student.trec
    ///            --data ../shared/data/scifact --output scifact.reranked.trec
    Rerank(RerankArgs),
    #[command(verbatim_doc_comment)]
    /// Run a pipeline: every stage whose manifest does not match its configuration and
    /// inputs, in order. Exit code 0 only if every requested stage completed; 1 on an
    /// error; 4 when the teacher gate stopped the run before `score`; 5 with
    /// --strict-health when the run has health warnings.
    ///
    /// Example: distill run pipelines/nightly.toml
    ///          distill run pipelines/nightly.toml --from score
    ///          distill run pipelines/nightly.toml --shard 0/4   (one of 4 scoring workers)
    Run(RunArgs),
    #[command(verbatim_doc_comment)]
    /// Validate a pipeline file (keys, paths, values) without running anything.
    ///
    /// Example: distill check pipelines/nightly.toml
    Check(PipelineArg),
    #[command(verbatim_doc_comment)]
    /// Show each stage of a pipeline as done, stale (and why), partial or pending.
    ///
    /// Example: distill status pipelines/nightly.toml
    Status(PipelineArg),
    #[command(verbatim_doc_comment)]
    /// Trend report over runs: per-metric charts over time, the last runs with
    /// regressions highlighted, and exit code 3 when the newest run's distilled student
    /// dropped more than --threshold below the reference on a checked metric.
    ///
    /// A folder that is not a run directory is read as a folder of runs; folders that are
    /// neither, and runs whose eval stage has not completed, are listed and skipped.
    /// Writes trend.html and trend.md.
    ///
    /// Example: distill report checkpoints/nightly-* --threshold 0.005
    ///          distill report checkpoints --metrics ndcg@10,recall@100 --against best
    Report(ReportArgs),
    #[command(verbatim_doc_comment)]
    /// GPU benchmark: workloads W1 encode, W2 score, W3 train step, W4 exact top-100
    /// search, through distill's own code paths and, in the same invocation, through
    /// PyTorch + transformers (scripts/bench_torch.py); prints a table of throughput,
    /// the ratio distill / PyTorch, peak GPU memory and the share of the bf16 peak.
    ///
    /// Example: distill bench --device cuda --seconds 10 --output bench.json
    ///          distill bench --device cpu --small --seconds 1 --workloads w1,w4
    Bench(BenchArgs),
    #[command(verbatim_doc_comment)]
    /// Training data for other trainers from a run's mined and teacher-scored pairs:
    /// FlagEmbedding's JSONL (flagembedding), or a sentence-transformers Parquet dataset
    /// for MarginMSELoss (st-margin) or DistillKLDivLoss (st-kl). Texts come from the
    /// datasets of the pipeline file the run was made with, which is checked against the
    /// run's mine manifest. Flagged false negatives are left out unless
    /// --keep-false-negatives.
    ///
    /// Example: distill export-data checkpoints/nightly-2025-06-01
    ///            --pipeline pipelines/nightly.toml --format st-margin --output train.parquet
    ExportData(ExportDataArgs),
}

#[derive(Args, Debug)]
struct ExportDataArgs {
    /// Run directory (<output_root>/<name>) whose mine and score stages are done.
    run_dir: PathBuf,
    /// The pipeline file the run was made with (its datasets give the texts).
    #[arg(long)]
    pipeline: PathBuf,
    /// Output format.
    #[arg(long, value_enum)]
    format: ExportFormat,
    /// Output file (JSONL for flagembedding, Parquet for st-margin and st-kl), written
    /// atomically.
    #[arg(long, short)]
    output: PathBuf,
    /// Keep the negatives that the score stage flagged as likely false negatives, marked
    /// (`neg_flagged` in JSONL, a `negative_flagged` list column in Parquet).
    #[arg(long)]
    keep_false_negatives: bool,
    /// Negatives per query: the first N by the student's rank; queries with fewer are
    /// dropped. Default: every negative (flagembedding), the smallest count among the
    /// queries (st-margin, st-kl).
    #[arg(long, value_name = "N")]
    negatives: Option<usize>,
}

#[derive(Args, Debug)]
struct BenchArgs {
    /// Model directory (MiniLM-L6 shapes; the weights do not matter for speed).
    #[arg(long, default_value = "models/all-MiniLM-L6-v2")]
    model: PathBuf,
    /// Workloads to run.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "w1,w2,w3,w4")]
    workloads: Vec<distill::commands::bench::Workload>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// Seconds of timed work per workload and implementation.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Shrunken shapes (a smoke test on the CPU).
    #[arg(long)]
    small: bool,
    /// Python with torch and transformers for the PyTorch side.
    #[arg(long, default_value = "python3")]
    python: PathBuf,
    /// Skip the PyTorch side.
    #[arg(long)]
    no_torch: bool,
    /// The PyTorch side's script.
    #[arg(long, default_value = "scripts/bench_torch.py")]
    script: PathBuf,
    /// The GPU's dense bf16 peak in TFLOP/s (H100 and H200 SXM: 989).
    #[arg(long, default_value_t = 989.0)]
    peak_tflops: f64,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Also write every measurement as JSON lines here.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Write Kineto (Chrome) traces of 3 units of each workload, both implementations,
    /// into this folder; `scripts/profile_summary.py` compares them.
    #[arg(long)]
    profile: Option<PathBuf>,
    /// Run CUDA batches padded through scaled_dot_product_attention, as transformers
    /// does, instead of packed with variable-length flash attention.
    #[arg(long)]
    padded: bool,
    /// Run aten's add then layer_norm kernels instead of the fused add + LayerNorm kernel
    /// (inference on CUDA).
    #[arg(long)]
    no_fused: bool,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// Run directories (<output_root>/<name>) or folders of them; quoted globs work too.
    #[arg(required = true, value_name = "RUN_DIR")]
    runs: Vec<PathBuf>,
    /// Folder for trend.html and trend.md.
    #[arg(long, short, default_value = "trend")]
    output: PathBuf,
    /// Metrics tabulated and checked (ndcg@10, mrr@10, p@10, recall@10, recall@100,
    /// recall@1000, map@100).
    #[arg(long, value_delimiter = ',', default_value = "ndcg@10,recall@100")]
    metrics: Vec<String>,
    /// Largest drop (absolute) of the distilled student that is not a regression.
    #[arg(long, default_value_t = 0.005)]
    threshold: f64,
    /// What the newest run is compared with.
    #[arg(long, value_enum, default_value = "previous")]
    against: Against,
    /// Runs shown in the table (the charts show every run).
    #[arg(long, default_value_t = 14)]
    last: usize,
}

/// Exit code of `distill report` when the newest run regressed.
const EXIT_REGRESSION: u8 = 3;
/// Exit code of `distill run` when the teacher gate stopped the run before `score`.
const EXIT_WEAK_TEACHER: u8 = 4;
/// Exit code of `distill run --strict-health` when the run has health warnings.
const EXIT_UNHEALTHY: u8 = 5;

#[derive(Args, Debug)]
struct PipelineArg {
    /// Pipeline file (TOML).
    pipeline: PathBuf,
    /// Run name instead of the file's run.name (the run directory is
    /// <output_root>/<name>), e.g. --name nightly-$(date +%F).
    #[arg(long)]
    name: Option<String>,
}

impl PipelineArg {
    fn load(&self) -> anyhow::Result<Pipeline> {
        let p = Pipeline::load(&self.pipeline)?;
        Ok(match &self.name {
            Some(n) => p.with_name(n)?,
            None => p,
        })
    }
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    pipeline: PipelineArg,
    /// Rerun this stage and every stage after it.
    #[arg(long, conflicts_with = "only")]
    from: Option<String>,
    /// Run only this stage (the stages it reads must be done).
    #[arg(long)]
    only: Option<String>,
    /// Rerun the selected stages even when their manifests match.
    #[arg(long)]
    force: bool,
    /// Score only shards j with j % N == I (I/N); run once more without --shard to merge.
    #[arg(long, value_name = "I/N")]
    shard: Option<ShardSpec>,
    /// Go on past a teacher that fails the gate (its dev-slice rerank does not beat the
    /// student alone by health.min_teacher_gain); the report marks the run.
    #[arg(long)]
    allow_weak_teacher: bool,
    /// Exit with code 5 when the run has health warnings (for cron).
    #[arg(long)]
    strict_health: bool,
}

#[derive(Args, Debug)]
struct EncodeArgs {
    /// sentence-transformers model directory.
    #[arg(long)]
    model: PathBuf,
    /// BEIR corpus/queries JSONL (`_id`, `text`, optional `title`), `id<TAB>text` lines or
    /// plain text lines; gzip-compressed when the name ends in `.gz`.
    #[arg(long)]
    input: PathBuf,
    /// Output Parquet file (columns `id`, `embedding`).
    #[arg(long)]
    output: PathBuf,
    /// Input format (auto: by extension, else `id<TAB>text` when the first line is).
    #[arg(long, value_enum, default_value = "auto")]
    format: TextFormat,
    /// Override the model's max_seq_length (tokens, special tokens included).
    #[arg(long)]
    max_seq_length: Option<usize>,
    /// Put the model's prompt of this name (config_sentence_transformers.json) in front
    /// of every text, as sentence-transformers' `encode(prompt_name=...)`; unset: the
    /// model's default prompt, if it names one.
    #[arg(long)]
    prompt_name: Option<String>,
    #[command(flatten)]
    runtime: Runtime,
}

#[derive(Args, Debug)]
struct EvalArgs {
    /// sentence-transformers model directory (the student).
    #[arg(long)]
    model: PathBuf,
    /// BEIR folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv); repeat for several.
    #[arg(long, required = true)]
    data: Vec<PathBuf>,
    /// The qrels split evaluated.
    #[arg(long, default_value = "test")]
    split: String,
    /// Folder for metrics.json, per_query.parquet and runs/.
    #[arg(long, default_value = "eval")]
    output: PathBuf,
    /// Documents retrieved per query.
    #[arg(long, default_value_t = EVAL_TOP_K)]
    top_k: usize,
    /// Cross-encoder directory: rescore the student's top --rerank-k of each query.
    #[arg(long, value_name = "CE_DIR")]
    rerank: Option<PathBuf>,
    /// Documents per query the cross-encoder rescores.
    #[arg(long, default_value_t = EVAL_RERANK_K, requires = "rerank")]
    rerank_k: usize,
    /// Override the cross-encoder's max length (tokens of the pair).
    #[arg(long, requires = "rerank")]
    rerank_max_length: Option<usize>,
    /// Override the student's max_seq_length (tokens, special tokens included).
    #[arg(long)]
    max_seq_length: Option<usize>,
    /// Skip and count what strict BEIR reading stops on (duplicate ids, empty texts, ...).
    #[arg(long)]
    lenient: bool,
    #[command(flatten)]
    runtime: Runtime,
}

#[derive(Args, Debug)]
struct RerankArgs {
    /// Cross-encoder directory.
    #[arg(long)]
    model: PathBuf,
    /// Input TREC run (qid Q0 docid rank score tag).
    #[arg(long)]
    run: PathBuf,
    /// BEIR folder holding the run's queries and documents.
    #[arg(long)]
    data: PathBuf,
    /// Output TREC run, written under a temporary name and renamed when complete.
    #[arg(long)]
    output: PathBuf,
    /// Documents per query rescored (the input run's top K, in TREC order).
    #[arg(long, default_value_t = EVAL_RERANK_K)]
    top_k: usize,
    /// The output lines' tag (last column).
    #[arg(long, default_value = "distill-rerank")]
    tag: String,
    /// Override the cross-encoder's max length (tokens of the pair).
    #[arg(long)]
    max_length: Option<usize>,
    /// Skip and count what strict BEIR reading stops on (duplicate ids, empty texts, ...).
    #[arg(long)]
    lenient: bool,
    #[command(flatten)]
    runtime: Runtime,
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let verbosity = if cli.quiet {
        Verbosity::Quiet
    } else if cli.verbose {
        Verbosity::Verbose
    } else {
        Verbosity::Normal
    };
    match cli.command {
        Command::Encode(a) => {
            let settings = EncodeSettings {
                model: a.model,
                input: a.input,
                output: a.output,
                format: a.format,
                runtime: a.runtime,
                max_seq_length: a.max_seq_length,
                prompt_name: a.prompt_name,
                verbosity,
            };
            let summary = noticed(encode::run(&settings), "encode failed")?;
            if verbosity > Verbosity::Quiet {
                eprintln!(
                    "encoded {} texts ({} tokens, dim {}) in {:.2} s: {:.1} texts/s -> {}",
                    summary.texts,
                    summary.tokens,
                    summary.dim,
                    summary.seconds,
                    summary.per_second(),
                    settings.output.display()
                );
            }
        }
        Command::Eval(a) => {
            let settings = EvalSettings {
                model: a.model,
                data: a.data,
                split: a.split,
                output: a.output,
                rerank: a.rerank,
                rerank_k: a.rerank_k,
                rerank_max_length: a.rerank_max_length,
                runtime: a.runtime,
                max_seq_length: a.max_seq_length,
                top_k: a.top_k,
                lenient: a.lenient,
                verbosity,
            };
            let outcome = noticed(eval_model::run(&settings), "eval failed")?;
            for w in &outcome.warnings {
                eprintln!("warning: {w}");
            }
            if verbosity > Verbosity::Quiet {
                print!("{}", eval_model::table(&outcome));
                eprintln!("-> {}", settings.output.display());
            }
        }
        Command::Rerank(a) => {
            let settings = RerankSettings {
                model: a.model,
                run: a.run,
                data: a.data,
                output: a.output,
                top_k: a.top_k,
                tag: a.tag,
                max_length: a.max_length,
                runtime: a.runtime,
                lenient: a.lenient,
                verbosity,
            };
            let summary = noticed(rerank_run::run(&settings), "rerank failed")?;
            if verbosity > Verbosity::Quiet {
                eprintln!("{summary} -> {}", settings.output.display());
            }
        }
        Command::Check(a) => {
            let p = a.load()?;
            for w in distill::pipeline::preflight::check(&p)? {
                eprintln!("warning: {}", w.message);
            }
            if verbosity > Verbosity::Quiet {
                println!(
                    "{}: ok (run `{}` in {}, {} dataset(s))",
                    a.pipeline.display(),
                    p.name,
                    p.run_dir.display(),
                    p.datasets.len()
                );
            }
        }
        Command::Status(a) => {
            let p = a.load()?;
            println!("run `{}` in {}", p.name, p.run_dir.display());
            for s in runner::status(&p)? {
                println!("  {:<8} {}", s.stage, s.state);
            }
        }
        Command::Run(a) => {
            let p = a.pipeline.load()?;
            let opts = RunOptions {
                from: a.from,
                only: a.only,
                force: a.force,
                shard: a.shard,
                verbosity: Some(verbosity),
                allow_weak_teacher: a.allow_weak_teacher,
                strict_health: a.strict_health,
            };
            let report = runner::run(&p, &opts).context("pipeline run failed")?;
            if verbosity > Verbosity::Quiet {
                eprintln!(
                    "run `{}`: ran [{}], skipped [{}]{}",
                    p.name,
                    report.ran.join(", "),
                    report.skipped.join(", "),
                    if report.partial.is_empty() {
                        String::new()
                    } else {
                        format!(", partial [{}]", report.partial.join(", "))
                    }
                );
                if let Some(h) = distill::stages::report::headline(&p.run_dir) {
                    eprint!("{h}");
                }
            }
        }
        Command::Bench(a) => {
            let settings = BenchSettings {
                model: a.model,
                workloads: a.workloads,
                device: a.device.resolve()?,
                seconds: a.seconds,
                small: a.small,
                python: (!a.no_torch).then_some(a.python),
                script: a.script,
                peak_tflops: a.peak_tflops,
                seed: a.seed,
                profile: a.profile,
                packed: !a.padded,
                fused: !a.no_fused,
            };
            if let Some(dir) = &settings.profile {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let mut lines = String::new();
            let all = bench::run(&settings, &mut |m| {
                if verbosity > Verbosity::Quiet {
                    eprintln!(
                        "{} {}: {:.1} items/s, peak {:.2} GiB",
                        m.workload,
                        m.implementation,
                        m.items_per_s,
                        m.peak_mem_bytes as f64 / (1u64 << 30) as f64
                    );
                }
                lines.push_str(&serde_json::to_string(m).unwrap_or_default());
                lines.push('\n');
            })
            .context("bench failed")?;
            if let Some(path) = &a.output {
                std::fs::write(path, &lines)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            println!("{}", distill::runtime_description());
            print!("{}", bench::table(&settings, &all));
            for m in all
                .iter()
                .filter(|m| m.implementation == "distill" && !m.note.is_empty())
            {
                println!("{} distill: {}", m.workload, m.note);
            }
        }
        Command::ExportData(a) => {
            let settings = ExportSettings {
                run_dir: a.run_dir,
                pipeline: a.pipeline,
                format: a.format,
                output: a.output,
                keep_false_negatives: a.keep_false_negatives,
                negatives: a.negatives,
            };
            let summary = export_data::run(&settings).context("export-data failed")?;
            if verbosity > Verbosity::Quiet {
                eprintln!("exported {summary} -> {}", settings.output.display());
            }
        }
        Command::Report(a) => {
            let settings = TrendSettings {
                runs: a.runs,
                output: a.output,
                metrics: a.metrics,
                threshold: a.threshold,
                against: a.against,
                last: a.last,
            };
            let outcome = trend::run(&settings).context("trend report failed")?;
            for (dir, why) in &outcome.skipped {
                eprintln!("warning: skipped {}: {why}", dir.display());
            }
            if verbosity > Verbosity::Quiet {
                eprintln!("{} runs -> {}", outcome.runs.len(), outcome.html.display());
            }
            if !outcome.regressions.is_empty() {
                for g in &outcome.regressions {
                    eprintln!("regression: {g}");
                }
                return Ok(ExitCode::from(EXIT_REGRESSION));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `result` with `context`, once the kernel fallbacks the library collected are printed.
fn noticed<T>(result: distill::Result<T>, context: &'static str) -> anyhow::Result<T> {
    for notice in distill::model::bert::take_notices() {
        eprintln!("warning: {notice}");
    }
    result.context(context)
}

/// The error and its causes on one line, each cause once: a cause whose text an outer
/// message already contains (thiserror messages that embed their source) is not repeated.
fn causes_once(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose;
    if verbose && std::env::var_os("RUST_LIB_BACKTRACE").is_none() {
        // -v asks for the backtrace of an error; anyhow captures one only when this is set.
        std::env::set_var("RUST_LIB_BACKTRACE", "1");
    }
    match run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {}", causes_once(&err));
            if verbose || std::env::var_os("RUST_BACKTRACE").is_some_and(|v| v != "0") {
                eprintln!("{}", err.backtrace());
            }
            match err.downcast_ref::<distill::Error>() {
                Some(distill::Error::WeakTeacher { .. }) => ExitCode::from(EXIT_WEAK_TEACHER),
                Some(distill::Error::Unhealthy { .. }) => ExitCode::from(EXIT_UNHEALTHY),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
