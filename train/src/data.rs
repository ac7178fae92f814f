//! Batches from a memory-mapped dataset.
//!
//! Training visits every block of the train split once per epoch in an order drawn from the
//! seed and the epoch number, cropping each block to `seq_len`. The position is two integers
//! (epoch, cursor), which is all a checkpoint needs to continue the same stream. Validation
//! reads the val split in order.

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
        out.clear();
        for _ in 0..batch {
            if self.position.cursor == self.blocks {
                self.position = DataPosition {
                    epoch: self.position.epoch + 1,
                    cursor: 0,
                };
                self.order = epoch_order(self.blocks, self.seed, self.position.epoch);
            }
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
            self.position.cursor += 1;
        }
        Ok(())
    }
}

/// The val split in order, `batch` blocks at a time (the last batch may be smaller), at most
/// `max_batches` batches.
pub fn val_batches(
    dataset: &Dataset,
    seq_len: usize,
    batch: usize,
    max_batches: usize,
) -> Vec<(usize, Vec<u32>)> {
    let blocks = dataset.index().splits.val.blocks;
    let mut out = Vec::new();
    let mut b = 0u64;
    while b < blocks && out.len() < max_batches {
        let rows = (batch as u64).min(blocks - b) as usize;
        let mut tokens = Vec::with_capacity(rows * seq_len);
        for r in 0..rows {
            if let Some(block) = dataset.block("val", b + r as u64) {
                tokens.extend((0..seq_len).filter_map(|i| block.get(i)));
            }
        }
        out.push((rows, tokens));
        b += rows as u64;
    }
    out
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
