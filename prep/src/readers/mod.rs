//! Readers turn input files into [`Chunk`]s: about a mebibyte of raw records each, cut only at
//! record boundaries, so that the expensive work (JSON parsing, UTF-8 checks, tokenization) runs
//! on the worker threads, not here. File-level problems become [`Body::Skip`] chunks that travel
//! through the same ordered path as data, so skips are counted and reported in input order.
//!
//! [`Body::Skip`]: crate::chunk::Body::Skip

pub mod compressed;
pub mod parquet;
pub mod text;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::chunk::Chunk;
use crate::discover::{Format, InputFile};

/// Raw bytes per chunk handed to a worker.
pub const CHUNK_BYTES: usize = 1 << 20;

/// What one document means in a `.txt` file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TxtUnit {
    /// The whole file is one document.
    File,
    /// Paragraphs separated by blank lines.
    Paragraph,
    /// Every non-blank line.
    Line,
}

#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub txt_unit: TxtUnit,
    /// `--text-field` split on dots.
    pub text_path: Vec<String>,
}

/// Reads one file, calling `emit` for every chunk in order. `emit` returns `false` when the
/// pipeline is shutting down; the reader then stops. `consumed` counts bytes read from disk.
pub fn read_file(
    file: &InputFile,
    source: usize,
    options: &ReadOptions,
    consumed: &Arc<AtomicU64>,
    emit: &mut dyn FnMut(Chunk) -> bool,
) {
    match file.format {
        Format::Txt | Format::Jsonl => text::read(file, source, options, consumed, emit),
        Format::Parquet => parquet::read(file, source, options, consumed, emit),
    }
}
