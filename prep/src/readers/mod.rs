//! Readers turn input files into [`Chunk`]s: about a mebibyte of raw records each, cut only at
//! record boundaries, so that the expensive work (JSON parsing, UTF-8 checks, tokenization) runs
//! on the worker threads, not here. File-level problems become [`Body::Skip`] chunks that travel
//! through the same ordered path as data, so skips are counted and reported in input order.

pub mod compressed;
pub mod jsonl;
pub mod parquet;
pub mod text;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::discover::{Format, InputFile};
use crate::records::Reason;

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

/// A unit of work from one input file.
#[derive(Debug)]
pub struct Chunk {
    /// Index of the file in discovery order.
    pub source: usize,
    /// 1-based line (or row) number of the first record in `body`.
    pub first_line: u64,
    pub body: Body,
}

#[derive(Debug)]
pub enum Body {
    /// Whole lines of a `.jsonl` file, newline-terminated except possibly the file's last.
    JsonLines(Vec<u8>),
    /// Whole lines of a `.txt` file read with `--txt-unit line`.
    TextLines(Vec<u8>),
    /// Whole paragraphs of a `.txt` file read with `--txt-unit paragraph`, ending at a blank line
    /// or at the end of the file.
    Paragraphs(Vec<u8>),
    /// A piece of one document too large to hand out whole (`--txt-unit file`). Pieces of a
    /// document arrive in order; `first` opens it and `last` closes it.
    Piece {
        text: String,
        first: bool,
        last: bool,
    },
    /// Rows of a parquet text column: row number and value (`None` when null).
    Rows(Vec<(u64, Option<Vec<u8>>)>),
    /// A problem that ends the file here: `count` records are lost (at least the one at `line`).
    Skip {
        line: u64,
        reason: Reason,
        detail: String,
        count: u64,
    },
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
