//! Packing a split's token stream into blocks and shard files.
//!
//! [`SplitWriter`] takes tokens in stream order, cuts them into blocks of exactly `block_size`,
//! and writes whole blocks into `{split}-{NNNNN}.bin` files of at most `blocks_per_shard` blocks.
//! A shard is written as `{name}.partial`, its header is filled in once the payload checksum is
//! known, and only then is it renamed to its final name. What does not fill a last block is
//! dropped and reported by [`SplitWriter::finish`].

use std::fs::{self, File};
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::checksum::{format_payload_checksum, PayloadHasher};
use crate::header::{ShardHeader, HEADER_BYTES};
use crate::index::ShardEntry;
use crate::{Dtype, FormatError};

pub struct SplitWriter {
    dir: PathBuf,
    split: String,
    dtype: Dtype,
    block_size: usize,
    blocks_per_shard: u64,
    /// Tokens of the block being filled (always fewer than `block_size` between calls).
    pending: Vec<u32>,
    /// Little-endian bytes of one block, reused.
    encoded: Vec<u8>,
    current: Option<OpenShard>,
    shards: Vec<ShardEntry>,
    blocks: u64,
    /// Every file this writer created, so a failed run can remove them.
    created: Vec<PathBuf>,
}

struct OpenShard {
    file: BufWriter<File>,
    partial: PathBuf,
    name: String,
    blocks: u64,
    hasher: PayloadHasher,
}

/// What a finished split holds.
#[derive(Debug, Clone, PartialEq)]
pub struct WrittenSplit {
    pub shards: Vec<ShardEntry>,
    pub blocks: u64,
    pub tokens_dropped: u64,
}

impl SplitWriter {
    /// `shard_bytes` is the largest payload per shard; a shard always holds at least one block.
    pub fn new(
        dir: &Path,
        split: &str,
        dtype: Dtype,
        block_size: usize,
        shard_bytes: u64,
    ) -> SplitWriter {
        assert!(block_size > 0, "block_size is validated by the caller");
        let block_bytes = (block_size * dtype.bytes()) as u64;
        SplitWriter {
            dir: dir.to_path_buf(),
            split: split.to_string(),
            dtype,
            block_size,
            blocks_per_shard: (shard_bytes / block_bytes).max(1),
            pending: Vec::with_capacity(block_size),
            encoded: Vec::with_capacity(block_bytes as usize),
            current: None,
            shards: Vec::new(),
            blocks: 0,
            created: Vec::new(),
        }
    }

    /// Appends tokens to the stream. Ids must fit the dtype; a larger id is an error, never
    /// silently truncated.
    pub fn push(&mut self, mut tokens: &[u32]) -> Result<(), FormatError> {
        while !tokens.is_empty() {
            let room = self.block_size - self.pending.len();
            let take = room.min(tokens.len());
            if self.pending.is_empty() && take == self.block_size {
                // Whole block straight from the caller's slice.
                self.write_block_from(&tokens[..take])?;
            } else {
                self.pending.extend_from_slice(&tokens[..take]);
                if self.pending.len() == self.block_size {
                    let block = std::mem::take(&mut self.pending);
                    let result = self.write_block_from(&block);
                    self.pending = block;
                    self.pending.clear();
                    result?;
                }
            }
            tokens = &tokens[take..];
        }
        Ok(())
    }

    fn write_block_from(&mut self, block: &[u32]) -> Result<(), FormatError> {
        debug_assert_eq!(block.len(), self.block_size);
        // Little-endian bytes, written element-wise into a sized buffer (this loop runs once
        // per token of the dataset, so it is kept simple enough to vectorise).
        let width = self.dtype.bytes();
        self.encoded.resize(block.len() * width, 0);
        match self.dtype {
            Dtype::U16 => {
                if let Some(&bad) = block.iter().find(|&&t| t > u32::from(u16::MAX)) {
                    return Err(self.id_too_large(bad));
                }
                for (dst, &t) in self.encoded.chunks_exact_mut(2).zip(block) {
                    dst.copy_from_slice(&(t as u16).to_le_bytes());
                }
            }
            Dtype::U32 => {
                for (dst, &t) in self.encoded.chunks_exact_mut(4).zip(block) {
                    dst.copy_from_slice(&t.to_le_bytes());
                }
            }
        }
        if self.current.is_none() {
            self.open_shard()?;
        }
        let shard = self.current.as_mut().expect("opened above");
        shard.hasher.update(&self.encoded);
        shard
            .file
            .write_all(&self.encoded)
            .map_err(|e| FormatError::io(&shard.partial, e))?;
        shard.blocks += 1;
        self.blocks += 1;
        if shard.blocks == self.blocks_per_shard {
            self.close_shard()?;
        }
        Ok(())
    }

    fn id_too_large(&self, id: u32) -> FormatError {
        FormatError::Mismatch {
            path: self.dir.clone(),
            reason: format!("token id {id} does not fit dtype {}", self.dtype.name()),
        }
    }

    fn open_shard(&mut self) -> Result<(), FormatError> {
        let name = format!("{}-{:05}.bin", self.split, self.shards.len());
        let partial = self.dir.join(format!("{name}.partial"));
        let file = File::create(&partial).map_err(|e| FormatError::io(&partial, e))?;
        self.created.push(partial.clone());
        let mut file = BufWriter::with_capacity(1 << 20, file);
        // Placeholder header; the real one is written once the payload checksum is known.
        file.write_all(&[0u8; HEADER_BYTES])
            .map_err(|e| FormatError::io(&partial, e))?;
        self.current = Some(OpenShard {
            file,
            partial,
            name,
            blocks: 0,
            hasher: PayloadHasher::new(),
        });
        Ok(())
    }

    fn close_shard(&mut self) -> Result<(), FormatError> {
        let Some(shard) = self.current.take() else {
            return Ok(());
        };
        let checksum = shard.hasher.finish();
        let header = ShardHeader::new(self.dtype, self.block_size as u64, shard.blocks, checksum);
        let final_path = self.dir.join(&shard.name);
        // Recorded before the rename: whether the rename happens or not, a cleanup after a
        // failure must find the file under either name.
        self.created.push(final_path.clone());
        let partial = shard.partial.clone();
        let finish = || -> std::io::Result<()> {
            let mut file = shard.file.into_inner().map_err(|e| e.into_error())?;
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header.encode())?;
            file.sync_all()?;
            drop(file);
            fs::rename(&partial, &final_path)
        };
        finish().map_err(|e| FormatError::io(&partial, e))?;
        self.shards.push(ShardEntry {
            file: shard.name,
            blocks: shard.blocks,
            checksum: format_payload_checksum(checksum),
        });
        Ok(())
    }

    /// Closes the last shard and reports the split. The partial last block is dropped.
    /// The writer stays usable for [`SplitWriter::created_files`], so a caller that fails after
    /// this point can still remove every file, the last shard included.
    pub fn finish(&mut self) -> Result<WrittenSplit, FormatError> {
        self.close_shard()?;
        Ok(WrittenSplit {
            shards: self.shards.clone(),
            blocks: self.blocks,
            tokens_dropped: self.pending.len() as u64,
        })
    }

    /// Files created so far (partial and finished shards), for cleanup after a failure.
    pub fn created_files(&self) -> &[PathBuf] {
        &self.created
    }

    /// Removes every file this writer created. Used when a run fails part-way.
    pub fn remove_files(mut self) {
        self.current = None;
        for path in &self.created {
            let _ = fs::remove_file(path);
        }
    }
}
