//! `prep`: corpus files in, packed and checksummed ingot shards out.
//!
//! - [`discover`] finds input files; [`readers`] cut them into [`chunk`]s of raw records.
//! - [`records`] turns a chunk into documents and counted skips; `ingot_tokenizer` encodes them.
//! - [`pipeline`] runs reading and tokenization in parallel and hands results back in order.
//! - [`build`] drives a run and writes the dataset; [`shuffle`] optionally permutes whole
//!   documents first; [`blocks`] packs the document stream into blocks and writes each one to
//!   the split that [`split`]'s group rule gives it, through `ingot_formats`.
//! - [`commands`] holds `verify` and `inspect`; [`tokenizer`] trains and benchmarks tokenizers.

pub mod blocks;
pub mod build;
pub mod chunk;
pub mod cli;
pub mod commands;
pub mod discover;
pub mod output;
pub mod pipeline;
pub mod progress;
pub mod readers;
pub mod records;
pub mod shuffle;
pub mod split;
pub mod tokenizer;
