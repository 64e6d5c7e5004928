//! The `distill` command line: parse, validate, call the library, map errors to exit codes.
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use distill::commands::encode::{self, EncodeSettings};
use distill::data::text_input::TextFormat;
use distill::device::{DeviceSpec, Precision};
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
#[command(name = "distill", version, long_version = long_version())]
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
    /// Embed texts with a bi-encoder (sentence-transformers directory) into Parquet.
    ///
    /// Example: distill encode --model models/all-MiniLM-L6-v2
    ///            --input corpus.jsonl --output corpus.parquet
    Encode(EncodeArgs),
    /// Run a pipeline: every stage whose manifest does not match its configuration and
    /// inputs, in order. Exit code 0 only if every requested stage completed.
    ///
    /// Example: distill run pipelines/nightly.toml
    ///          distill run pipelines/nightly.toml --from score
    ///          distill run pipelines/nightly.toml --shard 0/4   (one of 4 scoring workers)
    Run(RunArgs),
    /// Validate a pipeline file (keys, paths, values) without running anything.
    ///
    /// Example: distill check pipelines/nightly.toml
    Check(PipelineArg),
    /// Show each stage of a pipeline as done, stale (and why), partial or pending.
    ///
    /// Example: distill status pipelines/nightly.toml
    Status(PipelineArg),
}

#[derive(Args, Debug)]
struct PipelineArg {
    /// Pipeline file (TOML).
    pipeline: PathBuf,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// Pipeline file (TOML).
    pipeline: PathBuf,
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
}

#[derive(Args, Debug)]
struct EncodeArgs {
    /// sentence-transformers model directory.
    #[arg(long)]
    model: PathBuf,
    /// BEIR corpus/queries JSONL (`_id`, `text`, optional `title`) or plain text lines.
    #[arg(long)]
    input: PathBuf,
    /// Output Parquet file (columns `id`, `embedding`).
    #[arg(long)]
    output: PathBuf,
    /// Input format.
    #[arg(long, value_enum, default_value = "auto")]
    format: TextFormat,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceSpec,
    /// auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16.
    #[arg(long, default_value = "auto")]
    precision: Precision,
    /// Texts per batch (batches are sorted by length).
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
    /// Override the model's max_seq_length (tokens, special tokens included).
    #[arg(long)]
    max_seq_length: Option<usize>,
}

fn run(cli: Cli) -> anyhow::Result<()> {
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
                device: a.device,
                precision: a.precision,
                batch_size: a.batch_size,
                max_seq_length: a.max_seq_length,
                verbosity,
            };
            let summary = encode::run(&settings).context("encode failed")?;
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
        Command::Check(a) => {
            let p = Pipeline::load(&a.pipeline)?;
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
            let p = Pipeline::load(&a.pipeline)?;
            println!("run `{}` in {}", p.name, p.run_dir.display());
            for s in runner::status(&p)? {
                println!("  {:<8} {}", s.stage, s.state);
            }
        }
        Command::Run(a) => {
            let p = Pipeline::load(&a.pipeline)?;
            let opts = RunOptions {
                from: a.from,
                only: a.only,
                force: a.force,
                shard: a.shard,
                verbosity: Some(verbosity),
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
            }
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbose = cli.verbose;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            if verbose {
                eprintln!("{}", err.backtrace());
            }
            ExitCode::FAILURE
        }
    }
}
