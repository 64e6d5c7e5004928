//! The `distill` command line: parse, validate, call the library, map errors to exit codes.
use anyhow::Context;
use clap::{Parser, Subcommand};
use distill::commands::bench::{self, BenchSettings};
use distill::commands::encode::{self, EncodeSettings};
use distill::commands::eval_model::{self, EvalSettings};
use distill::commands::export_data::{self, ExportSettings};
use distill::commands::rerank_run::{self, RerankSettings};
use distill::commands::trend::{self, TrendSettings};
use distill::pipeline::runner::{self, RunOptions};
use distill::progress::Verbosity;
use std::process::ExitCode;

#[path = "main_args.rs"]
mod args;
use args::*;

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
    ///          distill run pipelines/nightly.toml --gpus 4      (4 GPUs of this host)
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

/// Exit code of `distill report` when the newest run regressed.
const EXIT_REGRESSION: u8 = 3;
/// Exit code of `distill run` when the teacher gate stopped the run before `score`.
const EXIT_WEAK_TEACHER: u8 = 4;
/// Exit code of `distill run --strict-health` when the run has health warnings.
const EXIT_UNHEALTHY: u8 = 5;
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
                profile: a.profile,
                verbosity,
            };
            let summary = noticed(encode::run(&settings), "encode failed")?;
            if verbosity > Verbosity::Quiet {
                let rss = summary
                    .peak_rss_bytes
                    .map(|b| format!(", peak RSS {:.3} GB", b as f64 / 1e9))
                    .unwrap_or_default();
                eprintln!(
                    "encoded {} texts ({} tokens, dim {}) in {:.2} s: {:.1} texts/s{rss} -> {}",
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
            let workers = a.workers(&p, cli.verbose)?;
            let opts = RunOptions {
                from: a.from,
                only: a.only,
                force: a.force,
                shard: a.shard,
                workers,
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
    distill::distributed::share_cores();
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
