//! The packed stream: documents in, fixed-size blocks out, each block written to the split the
//! group rule of [`crate::split`] gives it.
//!
//! Tokens arrive in packing order and are cut into blocks of exactly `block_size`. Every block
//! is hashed once (XXH3-64 of its bytes as the shard stores them) and offered to the
//! [`Selector`]; the block it holds back as its group's candidate waits in one buffer, so memory
//! is two blocks whatever the corpus. The tail that does not fill a block is dropped.

use std::path::{Path, PathBuf};

use anyhow::Result;
use ingot_formats::{Dtype, SplitWriter, WrittenSplit};

use crate::split::{Offer, Selector, Split};

/// What [`BlockStream::finish`] reports.
pub struct Packed {
    pub train: WrittenSplit,
    pub val: WrittenSplit,
    /// Documents per split, `[train, val]`, each counted in the split of the block that holds
    /// its first token; a document that begins in the dropped tail counts in train, whose
    /// `tokens_dropped` the tail is.
    pub documents: [u64; 2],
}

pub struct BlockStream {
    block_size: usize,
    dtype: Dtype,
    /// `[train, val]`.
    writers: [SplitWriter; 2],
    selector: Selector,
    /// Tokens of the block being filled (fewer than `block_size` between calls).
    filling: Vec<u32>,
    /// Documents that begin in `filling`.
    filling_documents: u64,
    /// The group's candidate block and its documents, while the selector holds one.
    candidate: Vec<u32>,
    candidate_documents: u64,
    /// A block's bytes, reused for hashing.
    bytes: Vec<u8>,
    documents: [u64; 2],
}

fn slot(split: Split) -> usize {
    match split {
        Split::Train => 0,
        Split::Val => 1,
    }
}

/// XXH3-64 (seed 0) of a block's bytes as a shard stores them: each id little-endian, in the
/// dataset's width. An id too large for a uint16 dataset is refused when the block is written.
pub fn block_hash(block: &[u32], dtype: Dtype, bytes: &mut Vec<u8>) -> u64 {
    // Written element-wise into a sized buffer, a loop simple enough to vectorise.
    let width = dtype.bytes();
    bytes.resize(block.len() * width, 0);
    match dtype {
        Dtype::U16 => {
            for (dst, &t) in bytes.chunks_exact_mut(2).zip(block) {
                dst.copy_from_slice(&(t as u16).to_le_bytes());
            }
        }
        Dtype::U32 => {
            for (dst, &t) in bytes.chunks_exact_mut(4).zip(block) {
                dst.copy_from_slice(&t.to_le_bytes());
            }
        }
    }
    xxhash_rust::xxh3::xxh3_64(bytes)
}

impl BlockStream {
    pub fn new(
        dir: &Path,
        dtype: Dtype,
        block_size: usize,
        shard_bytes: u64,
        val_fraction: f64,
    ) -> BlockStream {
        BlockStream {
            block_size,
            dtype,
            writers: [
                SplitWriter::new(dir, "train", dtype, block_size, shard_bytes),
                SplitWriter::new(dir, "val", dtype, block_size, shard_bytes),
            ],
            selector: Selector::new(val_fraction),
            filling: Vec::with_capacity(block_size),
            filling_documents: 0,
            candidate: Vec::with_capacity(block_size),
            candidate_documents: 0,
            bytes: Vec::with_capacity(block_size * dtype.bytes()),
            documents: [0, 0],
        }
    }

    /// Appends a document's tokens, or a piece of them; `opens` marks the document's start.
    pub fn push(&mut self, mut tokens: &[u32], opens: bool) -> Result<()> {
        if opens {
            // Its first token (if it has any) lands in the block being filled.
            self.filling_documents += 1;
        }
        while !tokens.is_empty() {
            if self.filling.is_empty() && tokens.len() >= self.block_size {
                // A whole block straight from the caller's slice.
                let (block, rest) = tokens.split_at(self.block_size);
                let documents = std::mem::take(&mut self.filling_documents);
                self.place(block, documents)?;
                tokens = rest;
                continue;
            }
            let take = (self.block_size - self.filling.len()).min(tokens.len());
            self.filling.extend_from_slice(&tokens[..take]);
            tokens = &tokens[take..];
            if self.filling.len() == self.block_size {
                let block = std::mem::take(&mut self.filling);
                let documents = std::mem::take(&mut self.filling_documents);
                let placed = self.place(&block, documents);
                self.filling = block;
                self.filling.clear();
                placed?;
            }
        }
        Ok(())
    }

    /// Sends one whole block where the selector says.
    fn place(&mut self, block: &[u32], documents: u64) -> Result<()> {
        // Without a val split every block goes to train: no hash to compute.
        let hash = if self.selector.has_val() {
            block_hash(block, self.dtype, &mut self.bytes)
        } else {
            0
        };
        let step = self.selector.offer(hash);
        match step.offer {
            Offer::Train => self.write(Split::Train, block, documents)?,
            Offer::Candidate { displaced } => {
                if displaced {
                    self.release(Split::Train)?;
                }
                self.candidate.extend_from_slice(block);
                self.candidate_documents = documents;
            }
        }
        if step.to_val {
            self.release(Split::Val)?;
        }
        Ok(())
    }

    fn write(&mut self, split: Split, block: &[u32], documents: u64) -> Result<()> {
        self.writers[slot(split)].push(block)?;
        self.documents[slot(split)] += documents;
        Ok(())
    }

    /// Writes the held candidate to `split` and empties the buffer.
    fn release(&mut self, split: Split) -> Result<()> {
        let block = std::mem::take(&mut self.candidate);
        let documents = std::mem::take(&mut self.candidate_documents);
        let written = self.write(split, &block, documents);
        self.candidate = block;
        self.candidate.clear();
        written
    }

    /// Places the last candidate, drops the tail and closes both splits. The stream stays
    /// usable for [`BlockStream::created_files`], so a caller that fails afterwards can still
    /// remove every shard.
    pub fn finish(&mut self) -> Result<Packed> {
        if let Some(split) = self.selector.finish() {
            self.release(split)?;
        }
        let tail = self.filling.len() as u64;
        self.documents[0] += std::mem::take(&mut self.filling_documents);
        self.filling.clear();
        let [train, val] = &mut self.writers;
        let mut train = train.finish()?;
        let val = val.finish()?;
        // Only whole blocks ever reach the writers; the stream's one tail is counted in train.
        train.tokens_dropped += tail;
        Ok(Packed {
            train,
            val,
            documents: self.documents,
        })
    }

    /// Every shard file created so far, both splits, for cleanup after a failure.
    pub fn created_files(&self) -> Vec<PathBuf> {
        self.writers
            .iter()
            .flat_map(|w| w.created_files().iter().cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingot_formats::checksum::{format_payload_checksum, payload_checksum};

    fn u16_bytes(ids: &[u32]) -> Vec<u8> {
        ids.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect()
    }

    #[test]
    fn the_block_hash_is_over_the_bytes_a_shard_stores() {
        let mut bytes = Vec::new();
        let ids = [1u32, 258, 65535];
        let wide: Vec<u8> = ids.iter().flat_map(|&t| t.to_le_bytes()).collect();
        assert_eq!(
            block_hash(&ids, Dtype::U16, &mut bytes),
            xxhash_rust::xxh3::xxh3_64(&u16_bytes(&ids))
        );
        assert_eq!(
            block_hash(&ids, Dtype::U32, &mut bytes),
            xxhash_rust::xxh3::xxh3_64(&wide)
        );
    }

    #[test]
    fn blocks_go_whole_to_one_split_and_documents_count_where_they_begin() {
        let dir = tempfile::tempdir().unwrap();
        // Blocks of 4, groups of 2. Seven documents of 3, 3, 3, 3, 3, 1 and 2 tokens (the last
        // in two pieces) make 18 tokens: four blocks and a tail of 2.
        let mut stream = BlockStream::new(dir.path(), Dtype::U16, 4, 1 << 20, 0.5);
        let lengths = [3usize, 3, 3, 3, 3, 1, 2];
        let docs: Vec<Vec<u32>> = (0..7u32)
            .map(|d| vec![100 + d; lengths[d as usize]])
            .collect();
        for d in &docs[..6] {
            stream.push(d, true).unwrap();
        }
        stream.push(&docs[6][..1], true).unwrap();
        stream.push(&docs[6][1..], false).unwrap();
        let packed = stream.finish().unwrap();
        assert_eq!((packed.train.blocks, packed.val.blocks), (2, 2));
        assert_eq!(
            (packed.train.tokens_dropped, packed.val.tokens_dropped),
            (2, 0)
        );

        // In each pair of blocks the lower hash goes to val; the shards hold exactly that.
        let all = docs.concat();
        let blocks: Vec<&[u32]> = all.chunks_exact(4).collect();
        let hash = |b: &[u32]| xxhash_rust::xxh3::xxh3_64(&u16_bytes(b));
        let mut val = Vec::new();
        let mut train = Vec::new();
        let mut val_blocks = Vec::new();
        for (k, pair) in blocks.chunks(2).enumerate() {
            let low = usize::from(hash(pair[1]) < hash(pair[0]));
            val_blocks.push(2 * k + low);
            val.extend_from_slice(pair[low]);
            train.extend_from_slice(pair[1 - low]);
        }
        let checksum = |ids: &[u32]| format_payload_checksum(payload_checksum(&u16_bytes(ids)));
        assert_eq!(packed.val.shards.len(), 1);
        assert_eq!(packed.val.shards[0].checksum, checksum(&val));
        assert_eq!(packed.train.shards[0].checksum, checksum(&train));

        // Documents begin at tokens 0, 3, 6, 9, 12, 15 and 16: in blocks 0, 0, 1, 2, 3, 3 and
        // the dropped tail, which counts in train.
        let in_val = [0usize, 0, 1, 2, 3, 3]
            .iter()
            .filter(|b| val_blocks.contains(b))
            .count() as u64;
        assert_eq!(packed.documents, [7 - in_val, in_val]);
    }

    #[test]
    fn with_no_val_fraction_the_stream_is_train_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut stream = BlockStream::new(dir.path(), Dtype::U16, 5, 1 << 20, 0.0);
        let ids: Vec<u32> = (0..23).collect();
        // Whole blocks straight from the slice, a part block, and a run that finishes one.
        stream.push(&ids[..10], true).unwrap();
        stream.push(&ids[10..12], true).unwrap();
        stream.push(&ids[12..], true).unwrap();
        let packed = stream.finish().unwrap();
        assert_eq!((packed.train.blocks, packed.val.blocks), (4, 0));
        assert_eq!(packed.train.tokens_dropped, 3);
        assert_eq!(packed.documents, [3, 0]);
        let want = format_payload_checksum(payload_checksum(&u16_bytes(&ids[..20])));
        assert_eq!(packed.train.shards[0].checksum, want);
    }

    #[test]
    fn a_stream_of_one_block_writes_it_to_val() {
        // Alone in its group, the one block goes to val; the caller then refuses the corpus,
        // and must find that block's shard among the created files to remove it.
        let dir = tempfile::tempdir().unwrap();
        let mut stream = BlockStream::new(dir.path(), Dtype::U16, 8, 1 << 20, 0.95);
        stream.push(&[7; 11], true).unwrap();
        let packed = stream.finish().unwrap();
        assert_eq!((packed.train.blocks, packed.val.blocks), (0, 1));
        assert_eq!(packed.documents, [0, 1]);
        assert_eq!(packed.train.tokens_dropped, 3);
        let created = stream.created_files();
        assert!(created
            .iter()
            .any(|p| p.ends_with("val-00000.bin") && p.exists()));
    }
}
