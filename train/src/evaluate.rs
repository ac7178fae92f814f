//! `train eval`: loss and perplexity of a checkpoint on any dataset made with its tokenizer, on
//! any engine, reading the split batch by batch.

use anyhow::{bail, Result};
use ingot_formats::checksum::sha256_hex;
use ingot_formats::Dataset;
use serde::Serialize;

use crate::checkpoint::hf;
use crate::cli::EvalArgs;
use crate::data::SplitBatches;
use crate::engine::Batch;

#[derive(Debug, Serialize)]
pub struct EvalReport {
    pub split: String,
    /// The engine that computed it (`cpu (2 threads)`, `cuda:0 bf16 …`).
    pub engine: String,
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
    let block = index.block_size as usize;
    let seq = args.seq_len.unwrap_or(block.min(model.config.max_seq_len));
    if seq > block || seq < 2 {
        bail!("--seq-len {seq} must be between 2 and the block size {block}");
    }
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    if !matches!(args.split.as_str(), "val" | "train") {
        bail!("--split {:?}: expected val or train", args.split);
    }
    let batches = SplitBatches::new(&dataset, &args.split, seq, args.batch_size)?;
    if batches.blocks() == 0 {
        bail!(
            "the {} split of {} is empty; evaluate --split train, or re-run prep with --val-fraction above 0",
            args.split,
            args.shards.display()
        );
    }
    let e = &args.engine;
    let (mut engine, notice) = crate::device::create(
        e.device,
        e.dtype(),
        e.attention,
        model.config,
        model.params.into(),
        &crate::collective::DataParallel::default(),
    )?;
    if let Some(n) = notice {
        eprintln!("{n}");
    }
    engine.prepare(args.batch_size, seq)?;
    let limit = if args.max_batches == 0 {
        usize::MAX
    } else {
        args.max_batches
    };
    let (mut sum, mut count, mut sequences) = (0f64, 0usize, 0usize);
    for batch in batches.take(limit) {
        let (rows, tokens) = batch?;
        let bt = Batch {
            tokens: &tokens,
            batch: rows,
            seq,
        };
        sum += f64::from(engine.loss(&bt)?) * bt.predictions() as f64;
        count += bt.predictions();
        sequences += rows;
    }
    let loss = sum / count.max(1) as f64;
    Ok(EvalReport {
        split: args.split.clone(),
        engine: engine.name(),
        sequences,
        predictions: count,
        loss,
        perplexity: loss.exp(),
    })
}
