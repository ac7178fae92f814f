//! `train eval`: loss and perplexity of a checkpoint on any dataset made with its tokenizer.

use anyhow::{bail, Result};
use ingot_formats::checksum::sha256_hex;
use ingot_formats::Dataset;
use serde::Serialize;

use crate::checkpoint::hf;
use crate::cli::EvalArgs;
use crate::engine::cpu::CpuEngine;
use crate::engine::{Batch, Engine};

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub split: String,
    pub sequences: usize,
    pub predictions: usize,
    pub loss: f64,
    pub perplexity: f64,
}

pub fn run(args: &EvalArgs) -> Result<EvalReport> {
    let dataset = Dataset::open(&args.shards)?;
    let index = dataset.index();
    let model = hf::read_model_dir(&args.checkpoint)?;
    let ck_tok = args.checkpoint.join("tokenizer.json");
    match std::fs::read(&ck_tok) {
        Ok(bytes) if sha256_hex(&bytes) != index.tokenizer.sha256 => {
            bail!("{} and the dataset {} use different tokenizers; evaluate on a dataset made with the checkpoint's tokenizer.json", args.checkpoint.display(), args.shards.display())
        }
        Ok(_) => {}
        Err(_) if model.config.vocab_size as u64 == index.vocab_size => {}
        Err(_) => bail!(
            "{}: no tokenizer.json, and the vocabulary sizes differ ({} vs the dataset's {})",
            args.checkpoint.display(),
            model.config.vocab_size,
            index.vocab_size
        ),
    }
    let split = match args.split.as_str() {
        "val" => &index.splits.val,
        "train" => &index.splits.train,
        other => bail!("--split {other:?}: expected val or train"),
    };
    if split.blocks == 0 {
        bail!(
            "the {} split of {} is empty",
            args.split,
            args.shards.display()
        );
    }
    let block = index.block_size as usize;
    let seq = args.seq_len.unwrap_or(block.min(model.config.max_seq_len));
    if seq > block || seq < 2 {
        bail!("--seq-len {seq} must be between 2 and the block size {block}");
    }
    let mut engine = CpuEngine::new(model.config, model.params)?;
    let (mut sum, mut count, mut sequences) = (0f64, 0usize, 0usize);
    let batch = args.batch_size.max(1) as u64;
    let mut b = 0u64;
    let mut done = 0usize;
    while b < split.blocks && (args.max_batches == 0 || done < args.max_batches) {
        let rows = batch.min(split.blocks - b) as usize;
        let mut tokens = Vec::with_capacity(rows * seq);
        for r in 0..rows {
            let blk = dataset
                .block(&args.split, b + r as u64)
                .ok_or_else(|| anyhow::anyhow!("missing block"))?;
            tokens.extend((0..seq).filter_map(|i| blk.get(i)));
        }
        let bt = Batch {
            tokens: &tokens,
            batch: rows,
            seq,
        };
        sum += f64::from(engine.loss(&bt)?) * bt.predictions() as f64;
        count += bt.predictions();
        sequences += rows;
        b += rows as u64;
        done += 1;
    }
    let loss = sum / count.max(1) as f64;
    Ok(EvalReport {
        split: args.split.clone(),
        sequences,
        predictions: count,
        loss,
        perplexity: loss.exp(),
    })
}
