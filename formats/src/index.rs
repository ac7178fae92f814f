//! `index.json`: the dataset's table of contents. It is written last, through a temporary file
//! and a rename, so its presence means every shard it names was completely written.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Dtype, FormatError, FORMAT_NAME, FORMAT_VERSION, HEADER_BYTES};

pub const INDEX_FILE: &str = "index.json";

/// The whole `index.json`. Field order here is the order in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Index {
    pub format: String,
    pub version: u32,
    pub dtype: Dtype,
    pub block_size: u64,
    pub header_bytes: u64,
    pub vocab_size: u64,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub tokenizer: TokenizerRef,
    pub splits: Splits,
    pub stats: Stats,
    /// How the dataset was made: tool name, version and the arguments that shape the output.
    /// Free-form for readers; `prep` writes `{"tool", "version", "args"}`.
    pub prep: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenizerRef {
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Splits {
    pub train: SplitIndex,
    pub val: SplitIndex,
}

impl Splits {
    /// `(name, split)` pairs in file order.
    pub fn iter(&self) -> [(&'static str, &SplitIndex); 2] {
        [("train", &self.train), ("val", &self.val)]
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SplitIndex {
    /// Whole blocks in this split.
    pub blocks: u64,
    /// Tokens in those blocks (`blocks × block_size`).
    pub tokens: u64,
    /// Documents whose tokens entered this split's stream.
    pub documents: u64,
    /// Tokens at the end of the stream that did not fill a block and were dropped.
    pub tokens_dropped: u64,
    pub shards: Vec<ShardEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    pub file: String,
    pub blocks: u64,
    /// `xxh3_64:` and 16 hex digits: XXH3-64 of the payload, as in the shard header.
    pub checksum: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Stats {
    /// Documents that were tokenized (both splits).
    pub documents: u64,
    /// Tokens produced, BOS/EOS included, before the tails were dropped.
    pub tokens: u64,
    /// Tokens dropped at the tails of both splits.
    pub tokens_dropped: u64,
    /// UTF-8 bytes of the document text that was tokenized (not the bytes read from disk).
    pub bytes: u64,
    /// Records (or files) skipped, by reason.
    pub skipped: BTreeMap<String, u64>,
    /// One entry per input file, in input order.
    pub sources: Vec<SourceStats>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SourceStats {
    pub file: String,
    pub documents: u64,
    pub tokens: u64,
    pub skipped: u64,
}

impl Index {
    /// Reads and validates `dir/index.json`. A directory without one is refused.
    pub fn read(dir: &Path) -> Result<Index, FormatError> {
        let path = dir.join(INDEX_FILE);
        let text = match fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // A mistyped path is not an interrupted prep: say which it is.
                if !dir.exists() {
                    return Err(FormatError::io(
                        dir,
                        std::io::Error::new(
                            std::io::ErrorKind::NotFound,
                            "no such directory (give the dataset directory prep wrote)",
                        ),
                    ));
                }
                return Err(FormatError::MissingIndex {
                    dir: dir.to_path_buf(),
                });
            }
            Err(e) => return Err(FormatError::io(path, e)),
        };
        let index: Index = serde_json::from_str(&text).map_err(|e| FormatError::BadIndex {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        index
            .validate()
            .map_err(|reason| FormatError::BadIndex { path, reason })?;
        Ok(index)
    }

    /// Internal consistency of the index alone (shards are checked by [`crate::verify_dataset`]).
    pub fn validate(&self) -> Result<(), String> {
        if self.format != FORMAT_NAME {
            return Err(format!(
                "format is {:?}, expected {FORMAT_NAME:?}",
                self.format
            ));
        }
        if self.version != FORMAT_VERSION {
            return Err(format!(
                "version {} (this build reads version {FORMAT_VERSION})",
                self.version
            ));
        }
        if self.block_size == 0 {
            return Err("block_size is 0".into());
        }
        if self.dtype == Dtype::U16 && self.vocab_size > 1 << 16 {
            return Err(format!(
                "dtype uint16 cannot hold a vocabulary of {}",
                self.vocab_size
            ));
        }
        for (what, id) in [("bos_id", self.bos_id), ("eos_id", self.eos_id)] {
            if let Some(id) = id {
                if u64::from(id) >= self.vocab_size {
                    return Err(format!(
                        "{what} {id} is outside vocab_size {}",
                        self.vocab_size
                    ));
                }
            }
        }
        // Every size below comes from the file, so the arithmetic is checked: a forged value
        // is an error, never an overflow.
        if self.header_bytes != HEADER_BYTES as u64 {
            return Err(format!(
                "header_bytes is {}, version {FORMAT_VERSION} has {HEADER_BYTES}",
                self.header_bytes
            ));
        }
        if !is_plain_file_name(&self.tokenizer.file) {
            return Err(format!(
                "tokenizer file name {:?} must be a plain file name",
                self.tokenizer.file
            ));
        }
        let width = self.dtype.bytes() as u64;
        for (name, split) in self.splits.iter() {
            let mut sum = 0u64;
            for shard in &split.shards {
                if !is_plain_file_name(&shard.file) {
                    return Err(format!(
                        "shard file name {:?} must be a plain file name",
                        shard.file
                    ));
                }
                if shard.blocks == 0 {
                    return Err(format!("shard {}: 0 blocks", shard.file));
                }
                let fits = shard
                    .blocks
                    .checked_mul(self.block_size)
                    .and_then(|t| t.checked_mul(width))
                    .and_then(|b| b.checked_add(self.header_bytes));
                if fits.is_none() {
                    return Err(format!(
                        "shard {}: {} blocks of {} tokens do not fit in a file",
                        shard.file, shard.blocks, self.block_size
                    ));
                }
                sum = sum
                    .checked_add(shard.blocks)
                    .ok_or_else(|| format!("split {name}: the shards' block counts overflow"))?;
            }
            if sum != split.blocks {
                return Err(format!(
                    "split {name}: shards hold {sum} blocks but the split says {}",
                    split.blocks
                ));
            }
            if split.blocks.checked_mul(self.block_size) != Some(split.tokens) {
                return Err(format!(
                    "split {name}: {} tokens is not blocks × block_size",
                    split.tokens
                ));
            }
        }
        Ok(())
    }

    /// Writes `dir/index.json` through `index.json.tmp` + fsync + rename, then syncs the directory.
    pub fn write_atomic(&self, dir: &Path) -> Result<PathBuf, FormatError> {
        let path = dir.join(INDEX_FILE);
        let tmp = dir.join(format!("{INDEX_FILE}.tmp"));
        let mut text = serde_json::to_string_pretty(self).map_err(|e| FormatError::BadIndex {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        text.push('\n');
        let result = (|| {
            let mut file = fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
            fs::rename(&tmp, &path)?;
            sync_dir(dir)
        })();
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(FormatError::io(&path, e));
        }
        Ok(path)
    }
}

/// A name in the dataset directory itself: no path separators, not hidden, not empty.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('/') && !name.contains('\\') && !name.starts_with('.')
}

/// Makes a rename durable. Directories cannot be opened for syncing on every platform; where they
/// cannot, the rename is still atomic and only durability across a power cut is weaker.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    match fs::File::open(dir) {
        Ok(d) => {
            let _ = d.sync_all();
            Ok(())
        }
        Err(_) => Ok(()),
    }
}
