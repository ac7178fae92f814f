//! Command-line interface: `prep --input ... --out ...` builds a dataset; subcommands verify,
//! inspect and handle tokenizers.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::readers::TxtUnit;

#[derive(Parser, Debug)]
#[command(
    name = "prep",
    version,
    about = "Tokenize corpora into packed, checksummed, memory-mappable ingot shards",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub build: BuildArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check every shard header, size and checksum against index.json.
    Verify {
        /// Dataset directory.
        dir: PathBuf,
    },
    /// Print a dataset's index summary and decode its first blocks.
    Inspect {
        /// Dataset directory.
        dir: PathBuf,
        /// Blocks of the train split to show.
        #[arg(long, default_value_t = 1)]
        blocks: u64,
        /// Decode the blocks to text with the dataset's tokenizer (else print ids).
        #[arg(long)]
        decode: bool,
    },
    /// Train or benchmark tokenizers.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
}

#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train a byte-level BPE tokenizer (with <s>, </s>, <pad>) on the same inputs prep reads.
    Train(TrainArgs),
    /// Measure the tokenizer's raw encode throughput on one thread and on all threads.
    Bench(BenchArgs),
}

/// How input files are read; shared by every command that reads a corpus.
#[derive(Args, Debug, Clone)]
pub struct InputArgs {
    /// Input files or directories (recursive, sorted by path). May repeat.
    #[arg(long = "input", short = 'i', required = true, num_args = 1..)]
    pub inputs: Vec<PathBuf>,
    /// JSON field (or parquet column) holding the text; dots reach into nested objects.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    /// What one document is in a .txt file.
    #[arg(long, value_enum, default_value_t = TxtUnit::File)]
    pub txt_unit: TxtUnit,
    /// Worker threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

/// Most `--threads` accepted; far beyond any machine's cores, and small enough that the
/// pipeline's window of in-flight chunks stays a small number.
pub const MAX_THREADS: usize = 1024;

impl InputArgs {
    /// `--threads`, checked: `None` when not given (use every core).
    pub fn threads(&self) -> anyhow::Result<Option<usize>> {
        match self.threads {
            Some(0) => anyhow::bail!("--threads must be at least 1"),
            Some(n) if n > MAX_THREADS => anyhow::bail!(
                "--threads {n} is too many: at most {MAX_THREADS} (the default uses every core)"
            ),
            n => Ok(n),
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct BuildArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Output dataset directory.
    #[arg(long, short = 'o', required = true)]
    pub out: Option<PathBuf>,
    /// Tokens per block.
    #[arg(long, required = true)]
    pub block_size: Option<usize>,
    /// A Hugging Face tokenizer.json, or `byte` for the built-in byte tokenizer.
    #[arg(long, default_value = "byte")]
    pub tokenizer: String,
    /// Largest shard payload, e.g. 256MiB, 1GiB, 500MB or a byte count.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub shard_size: u64,
    /// Share of blocks for the val split: one block in every round(1/X), the lowest by content
    /// hash in its group; 0 for no val split.
    #[arg(long, default_value_t = 0.005)]
    pub val_fraction: f64,
    /// BOS token to put before every document (default: detected from the tokenizer).
    #[arg(long, conflicts_with = "no_bos")]
    pub bos: Option<String>,
    /// EOS token to put after every document (default: detected from the tokenizer).
    #[arg(long, conflicts_with = "no_eos")]
    pub eos: Option<String>,
    /// Put no BOS before documents.
    #[arg(long)]
    pub no_bos: bool,
    /// Put no EOS after documents.
    #[arg(long)]
    pub no_eos: bool,
    /// Shuffle documents (seeded) before packing, instead of keeping input order.
    #[arg(long)]
    pub shuffle_docs: bool,
    /// Seed for --shuffle-docs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop at the first bad record instead of skipping and counting it.
    #[arg(long)]
    pub strict: bool,
    /// Replace the dataset in a non-empty --out directory.
    #[arg(long)]
    pub force: bool,
    /// No progress bar and no human summary.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct TrainArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// Vocabulary size, special tokens included.
    #[arg(long)]
    pub vocab_size: usize,
    /// Minimum pair frequency for a merge.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// Where to write the tokenizer.json.
    #[arg(long, short = 'o')]
    pub out: PathBuf,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    #[command(flatten)]
    pub input: InputArgs,
    /// A tokenizer.json, or `byte`.
    #[arg(long)]
    pub tokenizer: String,
    /// Read at most this much text into memory for the benchmark.
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub max_bytes: u64,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Parses `256MiB`, `1GiB`, `500MB`, `64KiB`, `4096`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size like 256MiB"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {text:?}; use B, KiB, MiB, GiB, KB, MB or GB"
            ))
        }
    };
    let bytes = value * scale as f64;
    if bytes.is_nan() || bytes < 1.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is not a positive size"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("0").is_err());
        assert!(parse_size("12 parsecs").is_err());
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
