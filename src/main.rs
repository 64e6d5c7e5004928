//! The `distill` command line: parse, validate, call the library, map errors to exit codes.
use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use distill::commands::encode::{self, EncodeSettings};
use distill::data::text_input::TextFormat;
use distill::device::{DeviceSpec, Precision};
use distill::progress::Verbosity;
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
