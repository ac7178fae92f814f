//! Batches from a memory-mapped dataset.
//!
//! Training visits every block of the train split once per epoch in an order drawn from the
//! seed and the epoch number, cropping each block to `seq_len`. The position is two integers
//! (epoch, cursor), which is all a checkpoint needs to continue the same stream. Evaluation
//! reads a split in order ([`SplitBatches`]).

use anyhow::{bail, Result};
use ingot_formats::Dataset;
use serde::{Deserialize, Serialize};

use crate::model::init::Rng;

/// Where the training stream stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    /// Blocks of this epoch's order already used.
    pub cursor: u64,
}

pub struct TrainStream<'a> {
    dataset: &'a Dataset,
    blocks: u64,
    seq_len: usize,
    seed: u64,
    order: Vec<u64>,
    pub position: DataPosition,
}

/// The order of `blocks` blocks in `epoch`: a Fisher–Yates shuffle from (seed, epoch).
pub fn epoch_order(blocks: u64, seed: u64, epoch: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..blocks).collect();
    let mut rng = Rng(seed ^ epoch.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0xda7a);
    for i in (1..order.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        order.swap(i, j);
    }
    order
}

impl<'a> TrainStream<'a> {
    pub fn new(
        dataset: &'a Dataset,
        seq_len: usize,
        seed: u64,
        position: DataPosition,
    ) -> Result<Self> {
        let blocks = dataset.index().splits.train.blocks;
        if blocks == 0 {
            bail!("the train split has no blocks");
        }
        if position.cursor > blocks {
            bail!(
                "data position {} is past the {blocks} train blocks",
                position.cursor
            );
        }
        Ok(TrainStream {
            dataset,
            blocks,
            seq_len,
            seed,
            order: epoch_order(blocks, seed, position.epoch),
            position,
        })
    }

    /// Fills `out` with `batch` rows of `seq_len` tokens.
    pub fn next_batch(&mut self, batch: usize, out: &mut Vec<u32>) -> Result<()> {
        self.next_slice(batch, 0..batch, out)
    }

    /// Takes the next `global` blocks of the stream and fills `out` with rows `rows` of them:
    /// a rank's slice of a global micro-batch, so that every rank advances the same position
    /// and the ranks together read exactly what one process reading `global` rows would.
    pub fn next_slice(
        &mut self,
        global: usize,
        rows: std::ops::Range<usize>,
        out: &mut Vec<u32>,
    ) -> Result<()> {
        out.clear();
        for row in 0..global {
            if self.position.cursor == self.blocks {
                self.position = DataPosition {
                    epoch: self.position.epoch + 1,
                    cursor: 0,
                };
                self.order = epoch_order(self.blocks, self.seed, self.position.epoch);
            }
            if rows.contains(&row) {
                let block = self.order[self.position.cursor as usize];
                let tokens = self
                    .dataset
                    .block("train", block)
                    .ok_or_else(|| anyhow::anyhow!("train block {block} is missing"))?;
                for i in 0..self.seq_len {
                    out.push(
                        tokens
                            .get(i)
                            .ok_or_else(|| anyhow::anyhow!("block shorter than seq_len"))?,
                    );
                }
            }
            self.position.cursor += 1;
        }
        Ok(())
    }
}

/// One split in order, `batch` blocks at a time (the last batch may be smaller), each block
/// cropped to `seq_len`: read from the memory map as it is iterated, so no more than one batch
/// is in memory whatever the split's size.
pub struct SplitBatches<'a> {
    dataset: &'a Dataset,
    split: &'static str,
    blocks: u64,
    next: u64,
    seq_len: usize,
    batch: usize,
}

impl<'a> SplitBatches<'a> {
    /// `split` is `train` or `val`; `seq_len` must not exceed the block size.
    pub fn new(dataset: &'a Dataset, split: &str, seq_len: usize, batch: usize) -> Result<Self> {
        let index = dataset.index();
        let (split, blocks) = match split {
            "train" => ("train", index.splits.train.blocks),
            "val" => ("val", index.splits.val.blocks),
            other => bail!("split {other:?}: expected train or val"),
        };
        if seq_len > index.block_size as usize || batch == 0 {
            bail!(
                "batches of {batch} × {seq_len} tokens from blocks of {}",
                index.block_size
            );
        }
        Ok(SplitBatches {
            dataset,
            split,
            blocks,
            next: 0,
            seq_len,
            batch,
        })
    }

    /// Blocks in the split.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }
}

impl Iterator for SplitBatches<'_> {
    /// `(rows, tokens)`: `rows × seq_len` token ids.
    type Item = Result<(usize, Vec<u32>)>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.blocks {
            return None;
        }
        let rows = (self.batch as u64).min(self.blocks - self.next) as usize;
        let mut tokens = Vec::with_capacity(rows * self.seq_len);
        for r in 0..rows {
            let b = self.next + r as u64;
            let Some(block) = self.dataset.block(self.split, b) else {
                return Some(Err(anyhow::anyhow!("{} block {b} is missing", self.split)));
            };
            tokens.extend((0..self.seq_len).filter_map(|i| block.get(i)));
        }
        self.next += rows as u64;
        Some(Ok((rows, tokens)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoch_orders_are_permutations_that_differ_by_epoch_and_seed() {
        let a = epoch_order(100, 1, 0);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(a, epoch_order(100, 1, 1));
        assert_ne!(a, epoch_order(100, 2, 0));
        assert_eq!(a, epoch_order(100, 1, 0));
    }
}
