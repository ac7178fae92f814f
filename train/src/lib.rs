//! `train`: pretrains a Llama on memory-mapped ingot shards.
//!
//! - [`model`]: the shape, presets, the flat parameter layout with HF-named views, init.
//! - [`lora`]: low-rank adapters on a frozen base: options, their flat buffer, merging.
//! - [`engine`]: the seam the loop talks to, AdamW, and the CPU engine with its ops.
//! - [`data`]: epochs of shuffled blocks from the shards; [`schedule`]: learning rates.
//! - [`checkpoint`]: Hugging Face model directories plus training state, saved atomically.
//! - [`run`]: the training loop; [`sample`], [`evaluate`] and [`merge`]: the other subcommands.

pub mod checkpoint;
pub mod cli;
pub mod collective;
pub mod data;
pub mod device;
pub mod engine;
pub mod evaluate;
pub mod launch;
pub mod lora;
pub mod merge;
pub mod metrics;
pub mod model;
pub mod plot;
pub mod quant;
pub mod run;
pub mod sample;
pub mod schedule;
pub mod threads;
