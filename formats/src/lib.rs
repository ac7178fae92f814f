//! The ingot shard format, version 1: the one contract between `prep`, which writes datasets,
//! and `train` (or any other tool), which reads them. FORMAT.md at the repository root documents
//! every byte; this crate is the executable form of that document.
//!
//! - [`header`]: the fixed, page-padded header at the start of every shard file.
//! - [`index`]: `index.json`, the dataset's table of contents, written last and atomically.
//! - [`writer`]: packs a token stream into fixed-length blocks and rolls shard files.
//! - [`reader`]: memory-maps a finished dataset and hands out blocks without copying.
//! - [`verify`]: checks every header, size and checksum against the index.

pub mod checksum;
pub mod dtype;
pub mod error;
pub mod header;
pub mod index;
pub mod reader;
pub mod verify;
pub mod writer;

pub use dtype::Dtype;
pub use error::FormatError;
pub use header::{ShardHeader, HEADER_BYTES};
pub use index::{Index, ShardEntry, SplitIndex, Stats, TokenizerRef, INDEX_FILE};
pub use reader::{Dataset, Shard, Tokens};
pub use verify::{verify_dataset, VerifyReport};
pub use writer::{SplitWriter, WrittenSplit};

/// The value of `format` in every `index.json`.
pub const FORMAT_NAME: &str = "ingot-shards";
/// The format version this crate reads and writes.
pub const FORMAT_VERSION: u32 = 1;
