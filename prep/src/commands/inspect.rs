//! `prep inspect DIR`: the index summary and the first blocks, as ids or decoded text.

use std::fmt::Write;
use std::path::Path;

use anyhow::{Context, Result};
use ingot_formats::Dataset;
use ingot_tokenizer::Tokenizer;

pub fn run(dir: &Path, blocks: u64, decode: bool) -> Result<String> {
    let ds = Dataset::open(dir)?;
    let ix = ds.index();
    let mut out = String::new();
    let _ = writeln!(out, "dataset    {}", dir.display());
    let _ = writeln!(
        out,
        "format     {} v{}, {}, block_size {}, vocab_size {}",
        ix.format,
        ix.version,
        ix.dtype.name(),
        ix.block_size,
        ix.vocab_size
    );
    let id = |v: Option<u32>| v.map_or("none".to_string(), |id| id.to_string());
    let _ = writeln!(out, "bos/eos    {} / {}", id(ix.bos_id), id(ix.eos_id));
    let _ = writeln!(
        out,
        "tokenizer  {} (sha256 {})",
        ix.tokenizer.file, ix.tokenizer.sha256
    );
    for (name, s) in ix.splits.iter() {
        let _ = writeln!(
            out,
            "{name:<10} {} blocks, {} tokens, {} documents, {} shards, {} tokens dropped",
            s.blocks,
            s.tokens,
            s.documents,
            s.shards.len(),
            s.tokens_dropped
        );
    }
    let _ = writeln!(
        out,
        "documents  {}  tokens {}  input bytes {}",
        ix.stats.documents, ix.stats.tokens, ix.stats.bytes
    );
    if !ix.stats.skipped.is_empty() {
        let skipped: Vec<String> = ix
            .stats
            .skipped
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let _ = writeln!(out, "skipped    {}", skipped.join(", "));
    }
    let tokenizer = if decode {
        Some(
            Tokenizer::from_file(&dir.join(&ix.tokenizer.file))
                .context("cannot load the dataset's tokenizer")?,
        )
    } else {
        None
    };
    for b in 0..blocks.min(ix.splits.train.blocks) {
        let ids = ds.block("train", b).context("block out of range")?.to_vec();
        let _ = writeln!(out, "--- train block {b} ---");
        match &tokenizer {
            Some(t) => {
                let _ = writeln!(out, "{}", t.decode(&ids)?);
            }
            None => {
                let _ = writeln!(out, "{ids:?}");
            }
        }
    }
    Ok(out)
}
