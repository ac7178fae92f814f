//! Reading a finished dataset: memory-mapped shards, blocks as borrowed `&[u16]`/`&[u32]`.
//!
//! Opening checks what is cheap (index, headers against the index, file sizes); the payload
//! checksums are read in full only by [`crate::verify_dataset`].

use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::checksum::format_payload_checksum;
use crate::header::ShardHeader;
use crate::index::{Index, ShardEntry};
use crate::{Dtype, FormatError};

/// Tokens borrowed from a mapped shard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Tokens<'a> {
    U16(&'a [u16]),
    U32(&'a [u32]),
}

impl<'a> Tokens<'a> {
    pub fn len(&self) -> usize {
        match self {
            Tokens::U16(t) => t.len(),
            Tokens::U32(t) => t.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn get(&self, i: usize) -> Option<u32> {
        match self {
            Tokens::U16(t) => t.get(i).map(|&x| u32::from(x)),
            Tokens::U32(t) => t.get(i).copied(),
        }
    }
    /// Widened copy, for consumers that want one type.
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Tokens::U16(t) => t.iter().map(|&x| u32::from(x)).collect(),
            Tokens::U32(t) => t.to_vec(),
        }
    }
}

/// One memory-mapped shard file.
pub struct Shard {
    path: PathBuf,
    header: ShardHeader,
    map: Mmap,
}

impl Shard {
    /// Maps a shard and checks its header and size. `expected` (from the index) must agree.
    pub fn open(
        path: &Path,
        expected: Option<(&Index, &ShardEntry)>,
    ) -> Result<Shard, FormatError> {
        if cfg!(target_endian = "big") {
            return Err(FormatError::Mismatch {
                path: path.to_path_buf(),
                reason: "shards are little-endian; zero-copy reading needs a little-endian host"
                    .into(),
            });
        }
        let file = File::open(path).map_err(|e| FormatError::io(path, e))?;
        // SAFETY: the dataset is immutable once index.json exists; prep never rewrites a shard in
        // place. A concurrent truncation by another process would be outside that contract.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| FormatError::io(path, e))?;
        let header = ShardHeader::decode(&map).map_err(|reason| FormatError::BadHeader {
            path: path.to_path_buf(),
            reason,
        })?;
        check_header_against_index(path, &header, expected)?;
        let want = header.checked_file_bytes();
        if want != Some(map.len() as u64) {
            return Err(FormatError::Mismatch {
                path: path.to_path_buf(),
                reason: format!(
                    "file is {} bytes, header promises {}: truncated or overwritten",
                    map.len(),
                    want.map_or("more than 2^64".to_string(), |w| w.to_string())
                ),
            });
        }
        Ok(Shard {
            path: path.to_path_buf(),
            header,
            map,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn header(&self) -> &ShardHeader {
        &self.header
    }
    pub fn blocks(&self) -> u64 {
        self.header.blocks
    }

    /// Every token of the shard.
    pub fn tokens(&self) -> Tokens<'_> {
        let payload = &self.map[self.header.header_bytes as usize..];
        // The payload starts at a multiple of 8 bytes in a page-aligned map, so the casts below
        // cannot fail on alignment; the length is a multiple of the token width by construction.
        match self.header.dtype {
            Dtype::U16 => Tokens::U16(bytemuck::cast_slice(payload)),
            Dtype::U32 => Tokens::U32(bytemuck::cast_slice(payload)),
        }
    }

    /// Block `i` (`0..blocks()`), or `None` past the end.
    pub fn block(&self, i: u64) -> Option<Tokens<'_>> {
        if i >= self.header.blocks {
            return None;
        }
        let bs = self.header.block_size as usize;
        let start = i as usize * bs;
        Some(match self.tokens() {
            Tokens::U16(t) => Tokens::U16(&t[start..start + bs]),
            Tokens::U32(t) => Tokens::U32(&t[start..start + bs]),
        })
    }
}

pub(crate) fn check_header_against_index(
    path: &Path,
    header: &ShardHeader,
    expected: Option<(&Index, &ShardEntry)>,
) -> Result<(), FormatError> {
    let Some((index, entry)) = expected else {
        return Ok(());
    };
    let mismatch = |what: &str, header_value: String, index_value: String| FormatError::Mismatch {
        path: path.to_path_buf(),
        reason: format!("header says {what} {header_value}, index.json says {index_value}"),
    };
    if header.dtype != index.dtype {
        return Err(mismatch(
            "dtype",
            header.dtype.name().into(),
            index.dtype.name().into(),
        ));
    }
    if header.block_size != index.block_size {
        return Err(mismatch(
            "block_size",
            header.block_size.to_string(),
            index.block_size.to_string(),
        ));
    }
    if header.header_bytes != index.header_bytes {
        return Err(mismatch(
            "header_bytes",
            header.header_bytes.to_string(),
            index.header_bytes.to_string(),
        ));
    }
    if header.blocks != entry.blocks {
        return Err(mismatch(
            "blocks",
            header.blocks.to_string(),
            entry.blocks.to_string(),
        ));
    }
    let checksum = format_payload_checksum(header.payload_checksum);
    if checksum != entry.checksum {
        return Err(mismatch("checksum", checksum, entry.checksum.clone()));
    }
    Ok(())
}

/// A finished dataset: its index and every shard, mapped.
pub struct Dataset {
    dir: PathBuf,
    index: Index,
    train: Vec<Shard>,
    val: Vec<Shard>,
}

impl Dataset {
    /// Opens `dir`. Refuses a directory without `index.json` and any shard that disagrees with it.
    pub fn open(dir: &Path) -> Result<Dataset, FormatError> {
        let index = Index::read(dir)?;
        let open_split = |entries: &[ShardEntry]| -> Result<Vec<Shard>, FormatError> {
            entries
                .iter()
                .map(|e| Shard::open(&dir.join(&e.file), Some((&index, e))))
                .collect()
        };
        let train = open_split(&index.splits.train.shards)?;
        let val = open_split(&index.splits.val.shards)?;
        Ok(Dataset {
            dir: dir.to_path_buf(),
            index,
            train,
            val,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The shards of `"train"` or `"val"`; `None` for any other name.
    pub fn split(&self, name: &str) -> Option<&[Shard]> {
        match name {
            "train" => Some(&self.train),
            "val" => Some(&self.val),
            _ => None,
        }
    }

    /// Block `i` of a split, counting across its shards in order.
    pub fn block(&self, split: &str, mut i: u64) -> Option<Tokens<'_>> {
        for shard in self.split(split)? {
            if i < shard.blocks() {
                return shard.block(i);
            }
            i -= shard.blocks();
        }
        None
    }
}
