//! `prep --input ... --out ...`: the whole dataset build, from arguments to `index.json`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use ingot_formats::checksum::sha256_hex;
use ingot_formats::index::{SourceStats, Splits, Stats};
use ingot_formats::{
    Dtype, Index, SplitIndex, TokenizerRef, WrittenSplit, FORMAT_NAME, FORMAT_VERSION, HEADER_BYTES,
};
use ingot_tokenizer::{SpecialChoice, Tokenizer};
use serde::Serialize;
use serde_json::json;

use crate::blocks::{BlockStream, Packed};
use crate::chunk::Reason;
use crate::cli::BuildArgs;
use crate::discover::{discover, Compression, Format, InputFile};
use crate::output::OutputDir;
use crate::pipeline::{self, Encoded, Encoder};
use crate::progress::Progress;
use crate::readers::ReadOptions;
use crate::shuffle::Shuffler;

/// How many skipped records are printed as warnings; the rest are only counted.
const SHOWN_SKIPS: u64 = 5;

/// What a finished build reports (printed by `--json`).
#[derive(Debug, Serialize)]
pub struct Summary {
    pub out: String,
    pub dtype: &'static str,
    pub vocab_size: u64,
    pub block_size: u64,
    pub documents: u64,
    pub tokens: u64,
    pub train_blocks: u64,
    pub val_blocks: u64,
    pub tokens_dropped: u64,
    pub skipped: BTreeMap<String, u64>,
    pub input_bytes: u64,
    pub seconds: f64,
    pub tokens_per_second: f64,
}

pub fn run(args: &BuildArgs) -> Result<Summary> {
    let out = args.out.clone().context("--out is required")?;
    let block_size = args.block_size.context("--block-size is required")?;
    if block_size == 0 {
        bail!("--block-size must be at least 1 (it is the number of tokens per training sequence, e.g. 1024)");
    }
    if block_size > MAX_BLOCK_SIZE {
        bail!("--block-size {block_size} is too large: at most {MAX_BLOCK_SIZE} tokens per block (a block is one training sequence, e.g. 1024)");
    }
    if !(0.0..1.0).contains(&args.val_fraction) {
        bail!(
            "--val-fraction must be in [0, 1), got {}",
            args.val_fraction
        );
    }
    let tokenizer = Tokenizer::load(&args.tokenizer)?;
    let specials = tokenizer.resolve_specials(&SpecialChoice {
        bos: args.bos.clone(),
        eos: args.eos.clone(),
        no_bos: args.no_bos,
        no_eos: args.no_eos,
    })?;
    let found = discover(&args.input.inputs)?;
    if found.files.is_empty() {
        bail!(
            "no input files: {} file(s) under --input, none ending in .txt, .jsonl, .json or .parquet (optionally .gz or .zst)",
            found.unsupported.len()
        );
    }
    let dtype = Dtype::for_vocab(tokenizer.vocab_size());
    let threads = args.input.threads()?.unwrap_or_else(default_threads);

    let mut output = OutputDir::prepare(&out, args.force)?;
    output.write_file("tokenizer.json", tokenizer.json())?;

    let mut skipped: BTreeMap<String, u64> = BTreeMap::new();
    if !found.unsupported.is_empty() {
        skipped.insert(
            Reason::UnsupportedExtension.key().into(),
            found.unsupported.len() as u64,
        );
    }
    let total_bytes: u64 = found.files.iter().map(|f| f.size).sum();
    let progress = Progress::new(total_bytes, args.quiet);
    for name in found.unsupported.iter().take(SHOWN_SKIPS as usize) {
        progress.warn(&format!("warning: {name}: skipped: unsupported extension"));
    }
    if !found.unreadable.is_empty() {
        if args.strict {
            let (name, e) = &found.unreadable[0];
            bail!("{name}: {e} (unreadable_file; rerun without --strict to skip and count such files)");
        }
        skipped.insert(
            Reason::UnreadableFile.key().into(),
            found.unreadable.len() as u64,
        );
        for (name, e) in found.unreadable.iter().take(SHOWN_SKIPS as usize) {
            progress.warn(&format!("warning: {name}: skipped: {e}"));
        }
    }

    let mut packer = Packer {
        blocks: BlockStream::new(&out, dtype, block_size, args.shard_size, args.val_fraction),
        shuffler: None,
        open: false,
        documents: 0,
        tokens: 0,
        text_bytes: 0,
        skipped,
        shown: 0,
        strict: args.strict,
        sources: found
            .files
            .iter()
            .map(|f| SourceStats {
                file: f.name.clone(),
                ..Default::default()
            })
            .collect(),
        names: found.files.iter().map(|f| f.name.clone()).collect(),
    };
    if args.shuffle_docs {
        packer.shuffler = Some(Shuffler::new(
            &out,
            args.seed,
            spill_estimate(&found.files),
        )?);
    }

    let encoder = Arc::new(Encoder {
        tokenizer,
        specials,
        read: ReadOptions {
            txt_unit: args.input.txt_unit,
            text_path: args.input.text_field.split('.').map(String::from).collect(),
        },
    });
    let consumed = Arc::new(AtomicU64::new(0));
    let result = pipeline::run(
        &found.files,
        Arc::clone(&encoder),
        threads,
        Arc::clone(&consumed),
        &mut |encoded| {
            packer.accept(encoded, &progress)?;
            progress.update(
                consumed.load(Ordering::Relaxed),
                packer.documents,
                packer.tokens,
            );
            Ok(())
        },
    );
    let result = result
        .and_then(|()| packer.drain_shuffle())
        .and_then(|()| packer.blocks.finish());
    // Only now is every shard file created (finish writes the last one of each split): all of
    // them go on the cleanup list before any check below can fail.
    output.track(&packer.blocks.created_files());
    let Packed {
        train,
        val,
        documents,
    } = result?;
    progress.finish();

    let Packer {
        documents: total_docs,
        tokens,
        text_bytes,
        skipped,
        sources,
        ..
    } = packer;
    if total_docs == 0 {
        let n: u64 = skipped.values().sum();
        bail!("nothing to pack: all {n} record(s) were skipped ({}); check --text-field, --txt-unit and the inputs", describe_skips(&skipped));
    }
    let blocks = train.blocks + val.blocks;
    // No block at all first: its fix is the block size whatever the val fraction.
    if blocks == 0 {
        bail!(
            "the corpus is smaller than one block: the train split has {} tokens, fewer than --block-size {block_size}; use a smaller --block-size or more text",
            train.tokens_dropped
        );
    }
    if args.val_fraction > 0.0 && blocks < 2 {
        bail!(
            "{}",
            too_small_to_split(tokens, blocks, block_size, args.val_fraction)
        );
    }

    let split_index = |w: WrittenSplit, docs: u64| SplitIndex {
        blocks: w.blocks,
        tokens: w.blocks * block_size as u64,
        documents: docs,
        tokens_dropped: w.tokens_dropped,
        shards: w.shards,
    };
    let tokens_dropped = train.tokens_dropped + val.tokens_dropped;
    let index = Index {
        format: FORMAT_NAME.into(),
        version: FORMAT_VERSION,
        dtype,
        block_size: block_size as u64,
        header_bytes: HEADER_BYTES as u64,
        vocab_size: encoder.tokenizer.vocab_size(),
        bos_id: encoder.specials.bos,
        eos_id: encoder.specials.eos,
        tokenizer: TokenizerRef {
            file: "tokenizer.json".into(),
            sha256: sha256_hex(encoder.tokenizer.json()),
        },
        splits: Splits {
            train: split_index(train, documents[0]),
            val: split_index(val, documents[1]),
        },
        stats: Stats {
            documents: total_docs,
            tokens,
            tokens_dropped,
            bytes: text_bytes,
            skipped: skipped.clone(),
            sources,
        },
        prep: recorded_args(args),
    };
    index
        .write_atomic(&out)
        .with_context(|| format!("cannot write the index in {}", out.display()))?;
    output.commit();

    let seconds = progress.elapsed().as_secs_f64();
    Ok(Summary {
        out: out.display().to_string(),
        dtype: dtype.name(),
        vocab_size: index.vocab_size,
        block_size: index.block_size,
        documents: total_docs,
        tokens,
        train_blocks: index.splits.train.blocks,
        val_blocks: index.splits.val.blocks,
        tokens_dropped,
        skipped,
        input_bytes: text_bytes,
        seconds,
        tokens_per_second: tokens as f64 / seconds.max(1e-9),
    })
}

/// The one line for a corpus that cannot give both splits a block.
fn too_small_to_split(tokens: u64, blocks: u64, block_size: usize, val_fraction: f64) -> String {
    let smaller = if tokens >= 2 {
        format!(", a --block-size of at most {}", tokens / 2)
    } else {
        String::new()
    };
    format!(
        "the corpus is too small for a val split: its {tokens} tokens fill {blocks} block(s) of --block-size {block_size}, and --val-fraction {val_fraction} needs at least 2 (one for each split); use --val-fraction 0 for no val split{smaller}, or more text"
    )
}

/// Largest `--block-size`: 16 Mi tokens, far above any training context, and small enough
/// that a block's bytes can never overflow.
pub const MAX_BLOCK_SIZE: usize = 1 << 24;

/// An upper bound of the bytes `--shuffle-docs` spills: 4 bytes per token, and at most one
/// token per byte of text (exactly so for the byte tokenizer; subword tokenizers make fewer).
/// Compressed files, parquet included, are counted as 4× their size on disk. The 21-byte
/// record headers are small beside that. Only the number of buckets depends on it.
fn spill_estimate(files: &[InputFile]) -> u64 {
    files
        .iter()
        .map(|f| {
            let text = if f.compression == Compression::None && f.format != Format::Parquet {
                f.size
            } else {
                f.size.saturating_mul(4)
            };
            text.saturating_mul(4)
        })
        .fold(0, u64::saturating_add)
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn describe_skips(skipped: &BTreeMap<String, u64>) -> String {
    if skipped.is_empty() {
        return "no records found".into();
    }
    skipped
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The arguments that shape the dataset, so it can be re-made. Thread count, progress and
/// output options are left out: they do not change a byte of the output.
fn recorded_args(args: &BuildArgs) -> serde_json::Value {
    json!({
        "tool": "ingot-prep",
        "version": env!("CARGO_PKG_VERSION"),
        "args": {
            "input": args.input.inputs.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "text_field": args.input.text_field,
            "txt_unit": args.input.txt_unit,
            "tokenizer": args.tokenizer,
            "block_size": args.block_size,
            "shard_size": args.shard_size,
            "val_fraction": args.val_fraction,
            "bos": args.bos,
            "eos": args.eos,
            "no_bos": args.no_bos,
            "no_eos": args.no_eos,
            "shuffle_docs": args.shuffle_docs,
            "seed": args.seed,
            "strict": args.strict,
        }
    })
}

/// Receives tokenized chunks in input order, counts them, and packs their documents (in input
/// order, or through the shuffler) into the block stream.
struct Packer {
    blocks: BlockStream,
    shuffler: Option<Shuffler>,
    /// Whether a document's pieces are still arriving.
    open: bool,
    documents: u64,
    tokens: u64,
    text_bytes: u64,
    skipped: BTreeMap<String, u64>,
    shown: u64,
    strict: bool,
    sources: Vec<SourceStats>,
    names: Vec<String>,
}

impl Packer {
    fn accept(&mut self, encoded: &Encoded, progress: &Progress) -> Result<()> {
        let name = &self.names[encoded.source];
        let source = &mut self.sources[encoded.source];
        for skip in &encoded.skips {
            let at = if skip.line == 0 {
                name.clone()
            } else {
                format!("{name}:{}", skip.line)
            };
            if self.strict {
                bail!(
                    "{at}: {} ({}; rerun without --strict to skip and count such records)",
                    skip.detail,
                    skip.reason.key()
                );
            }
            *self
                .skipped
                .entry(skip.reason.key().to_string())
                .or_default() += skip.count;
            source.skipped += skip.count;
            if self.shown < SHOWN_SKIPS {
                progress.warn(&format!("warning: {at}: skipped: {}", skip.detail));
                self.shown += 1;
                if self.shown == SHOWN_SKIPS {
                    progress.warn("warning: further skipped records are counted in index.json without a message");
                }
            }
        }
        self.text_bytes += encoded.text_bytes;
        let mut start = 0;
        for run in &encoded.docs {
            let tokens = &encoded.tokens[start..run.end];
            start = run.end;
            if !run.opens && !self.open {
                bail!("internal error: a document piece arrived with no open document");
            }
            if run.opens {
                self.documents += 1;
                source.documents += 1;
            }
            self.open = !run.closes;
            self.tokens += tokens.len() as u64;
            source.tokens += tokens.len() as u64;
            match &mut self.shuffler {
                Some(s) => s.push(tokens, run.opens, run.closes)?,
                None => self.blocks.push(tokens, run.opens)?,
            }
        }
        Ok(())
    }

    fn drain_shuffle(&mut self) -> Result<()> {
        let Some(shuffler) = self.shuffler.take() else {
            return Ok(());
        };
        let blocks = &mut self.blocks;
        shuffler.drain(&mut |tokens, opens| blocks.push(tokens, opens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(format: Format, compression: Compression, size: u64) -> InputFile {
        InputFile {
            path: "x".into(),
            name: "x".into(),
            format,
            compression,
            size,
        }
    }

    #[test]
    fn the_spill_estimate_bounds_four_bytes_per_text_byte() {
        let plain = file(Format::Txt, Compression::None, 1000);
        let gz = file(Format::Jsonl, Compression::Gz, 1000);
        let parquet = file(Format::Parquet, Compression::None, 1000);
        assert_eq!(spill_estimate(&[plain]), 4000);
        assert_eq!(spill_estimate(&[gz]), 16000);
        assert_eq!(spill_estimate(&[parquet]), 16000);
        let huge = file(Format::Txt, Compression::Zst, u64::MAX / 2);
        assert_eq!(spill_estimate(&[huge.clone(), huge]), u64::MAX);
    }
}
