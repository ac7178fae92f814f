//! The memory a LoRA or QLoRA run of the CPU engine needs, by what holds it, for any Hugging
//! Face Llama (only its `config.json` is read, so an 8B model need not be downloaded):
//!
//!     cargo run --release -p ingot-train --example lora_memory -- DIR [RANK] [BATCH] [SEQ]
//!
//! Prints, for each engine and way of storing the base (the CUDA engine in bf16, with the base
//! in bf16, in NF4, in NF4 with double-quantised absmax; the CPU engine in f32, with the base
//! in f32 or NF4), the estimate `train` prints before such a run, for an adapter of RANK
//! (default 16) on all seven linear layers, micro-batches of BATCH × SEQ tokens (default
//! 1 × 2048), no dropout.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ingot_train::checkpoint::hf;
use ingot_train::engine::cpu::lora_memory_estimate;
use ingot_train::lora::{LoraConfig, Target};
use ingot_train::quant::{BaseQuant, Quantize};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = PathBuf::from(
        args.first()
            .context("give a model directory with config.json")?,
    );
    let number = |i: usize, default: usize| -> Result<usize> {
        args.get(i).map_or(Ok(default), |s| {
            s.parse()
                .with_context(|| format!("argument {i}: {s:?} is not a number"))
        })
    };
    let (rank, batch, seq) = (number(1, 16)?, number(2, 1)?, number(3, 2048)?);
    let (c, _, _) = hf::read_config(&dir)?;
    let lora = LoraConfig {
        rank,
        alpha: 2.0 * rank as f64,
        dropout: 0.0,
        rslora: false,
        targets: Target::ALL.to_vec(),
        save: Vec::new(),
    };
    println!(
        "{}: {:.3} B parameters; LoRA r={rank} on all 7 linear layers; micro-batch {batch} × {seq}",
        dir.display(),
        c.checked_num_params() as f64 / 1e9
    );
    let nf4 = |double| {
        Some(BaseQuant {
            format: Quantize::Nf4,
            double,
        })
    };
    for (name, quantize) in [
        ("bf16 base", None),
        ("nf4 base", nf4(false)),
        ("nf4 base, double-quantised", nf4(true)),
    ] {
        let e = ingot_train::engine::cuda::lora_memory_estimate(&c, &lora, quantize, batch, seq, 2);
        println!("CUDA engine (bf16), {name}: {e}");
    }
    for (name, quantize) in [
        ("f32 base", None),
        ("nf4 base", nf4(false)),
        ("nf4 base, double-quantised", nf4(true)),
    ] {
        let e = lora_memory_estimate(&c, &lora, quantize, batch, seq);
        println!("CPU engine, {name}: {e}");
    }
    Ok(())
}
