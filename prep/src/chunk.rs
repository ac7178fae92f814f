//! What the reader thread hands to the workers: a [`Chunk`] of raw records from one input file,
//! and the [`Reason`]s a record (or the rest of a file) is skipped for. The readers make chunks,
//! [`crate::records`] turns them into documents and [`Skip`]s on the workers, and the pipeline
//! carries both back in input order; this module depends on none of them.

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

/// Why a record (or the rest of a file) was skipped. The key is what `index.json` counts under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    MalformedJson,
    MissingTextField,
    NonStringTextField,
    EmptyText,
    InvalidUtf8,
    UnreadableFile,
    TruncatedCompressed,
    CorruptParquet,
    UnsupportedExtension,
    TokenizerError,
    /// A line, paragraph or JSON line longer than the readers hold in memory.
    RecordTooLarge,
}

impl Reason {
    pub fn key(self) -> &'static str {
        match self {
            Reason::MalformedJson => "malformed_json",
            Reason::MissingTextField => "missing_text_field",
            Reason::NonStringTextField => "non_string_text_field",
            Reason::EmptyText => "empty_text",
            Reason::InvalidUtf8 => "invalid_utf8",
            Reason::UnreadableFile => "unreadable_file",
            Reason::TruncatedCompressed => "truncated_compressed",
            Reason::CorruptParquet => "corrupt_parquet",
            Reason::UnsupportedExtension => "unsupported_extension",
            Reason::TokenizerError => "tokenizer_error",
            Reason::RecordTooLarge => "record_too_large",
        }
    }
}

/// One skipped record, or a skipped rest of a file.
#[derive(Debug, Clone, PartialEq)]
pub struct Skip {
    /// 1-based line or row; 0 when the whole file is concerned.
    pub line: u64,
    pub reason: Reason,
    pub detail: String,
    /// Records this skip stands for (1, or the rows of a parquet file without the column).
    pub count: u64,
}
