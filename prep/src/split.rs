//! Which blocks of the packed stream go to `val`.
//!
//! The stream of blocks is taken in consecutive groups of `G = max(2, round(1 / x))` blocks,
//! `x` being `--val-fraction`. In each group exactly one block goes to `val`: the one whose
//! bytes have the smallest hash (the earlier one on a tie); the others go to `train`. A last
//! group of `r < G` blocks gives its lowest block to `val` when `r ≥ G / 2`, or when it is the
//! only group; otherwise all of it goes to `train`. So any stream of at least two blocks gets at
//! least one block in each split, `val` holds between half and twice `x` of the blocks once
//! there are `1 / x` of them, and the choice depends only on the blocks' content and order,
//! never on thread count or timing.
//!
//! [`Selector`] applies the rule while the blocks stream past, holding only the current
//! group's candidate (the lowest block so far): the caller keeps that one block in a buffer and
//! does what each [`Step`] says.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

/// Blocks per group for `--val-fraction x`; `None` when `x` is 0 (no val split).
pub fn group_size(val_fraction: f64) -> Option<u64> {
    if val_fraction <= 0.0 {
        return None;
    }
    // `as` saturates: a vanishing fraction makes one group of the whole stream.
    Some(((1.0 / val_fraction).round() as u64).max(2))
}

/// What becomes of a block offered to the [`Selector`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// The block goes to `train` now; the candidate, if any, stays.
    Train,
    /// The block is the group's new candidate and is held; the previous candidate, when
    /// `displaced` says there was one, goes to `train` now.
    Candidate { displaced: bool },
}

/// The selector's answer to one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    pub offer: Offer,
    /// The block completed its group: the candidate (as it stands after `offer`) goes to `val`
    /// now and no candidate is held.
    pub to_val: bool,
}

/// The group rule as a streaming state machine over block hashes.
#[derive(Debug, Clone)]
pub struct Selector {
    group: Option<u64>,
    /// Blocks offered in the current group.
    seen: u64,
    /// Hash of the held candidate; `None` when none is held.
    best: Option<u64>,
    /// Groups completed so far.
    groups: u64,
}

impl Selector {
    pub fn new(val_fraction: f64) -> Selector {
        Selector {
            group: group_size(val_fraction),
            seen: 0,
            best: None,
            groups: 0,
        }
    }

    /// Whether any block can go to `val` (`--val-fraction` above 0): without, the hash of a
    /// block is never looked at.
    pub fn has_val(&self) -> bool {
        self.group.is_some()
    }

    /// Offers the next block of the stream, by the hash of its bytes.
    pub fn offer(&mut self, hash: u64) -> Step {
        let Some(group) = self.group else {
            return Step {
                offer: Offer::Train,
                to_val: false,
            };
        };
        let offer = match self.best {
            Some(best) if hash >= best => Offer::Train,
            held => {
                self.best = Some(hash);
                Offer::Candidate {
                    displaced: held.is_some(),
                }
            }
        };
        self.seen += 1;
        let to_val = self.seen == group;
        if to_val {
            self.seen = 0;
            self.best = None;
            self.groups += 1;
        }
        Step { offer, to_val }
    }

    /// At the end of the stream: where the held candidate of the last, partial group goes, or
    /// `None` when no candidate is held.
    pub fn finish(&mut self) -> Option<Split> {
        let group = self.group?;
        self.best.take()?;
        let r = self.seen;
        self.seen = 0;
        // `r ≥ G / 2`, written so that it cannot overflow.
        if r >= group - r || self.groups == 0 {
            Some(Split::Val)
        } else {
            Some(Split::Train)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Streams `hashes` through a [`Selector`] the way the packer does (one held candidate) and
    /// returns each block's split, by stream position.
    fn assign(hashes: &[u64], val_fraction: f64) -> Vec<Split> {
        let mut out = vec![None; hashes.len()];
        let mut selector = Selector::new(val_fraction);
        let mut held: Option<usize> = None;
        for (i, &h) in hashes.iter().enumerate() {
            let step = selector.offer(h);
            match step.offer {
                Offer::Train => out[i] = Some(Split::Train),
                Offer::Candidate { displaced } => {
                    assert_eq!(displaced, held.is_some());
                    if let Some(old) = held.replace(i) {
                        out[old] = Some(Split::Train);
                    }
                }
            }
            if step.to_val {
                out[held.take().expect("a group ends with a candidate")] = Some(Split::Val);
            }
        }
        match (selector.finish(), held) {
            (Some(split), Some(i)) => out[i] = Some(split),
            (None, None) => {}
            other => panic!("the selector and the buffer disagree: {other:?}"),
        }
        out.into_iter()
            .map(|s| s.expect("every block placed"))
            .collect()
    }

    /// SplitMix64 of `i`: hashes that look random and repeat for every run.
    fn hash(i: u64) -> u64 {
        let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn group_sizes() {
        assert_eq!(group_size(0.0), None);
        assert_eq!(group_size(0.005), Some(200));
        assert_eq!(group_size(0.3), Some(3));
        assert_eq!(group_size(0.6), Some(2));
        assert_eq!(group_size(0.9), Some(2));
        assert_eq!(group_size(1e-300), Some(u64::MAX));
    }

    #[test]
    fn each_group_sends_its_lowest_block_to_val_and_the_earlier_one_on_a_tie() {
        // Groups of 4: [9 3 7 3] [5 8 1 2] [6 6]; the last group (2 ≥ 4/2) gives a block too.
        let hashes = [9, 3, 7, 3, 5, 8, 1, 2, 6, 6];
        let val: Vec<usize> = assign(&hashes, 0.25)
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == Split::Val)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(val, [1, 6, 8]);
    }

    #[test]
    fn a_short_last_group_gives_a_block_only_from_half_a_group_or_when_alone() {
        let count = |n: u64, x: f64| {
            let hashes: Vec<u64> = (0..n).map(hash).collect();
            let splits = assign(&hashes, x);
            splits.iter().filter(|s| **s == Split::Val).count()
        };
        // Groups of 10.
        assert_eq!(count(14, 0.1), 1);
        assert_eq!(count(15, 0.1), 2);
        assert_eq!(count(20, 0.1), 2);
        // Groups of 3: half a group is 1.5 blocks.
        assert_eq!(count(4, 0.3), 1);
        assert_eq!(count(5, 0.3), 2);
        // The only group, however short.
        assert_eq!(count(2, 0.001), 1);
        assert_eq!(count(1, 0.001), 1);
        assert_eq!(count(0, 0.001), 0);
    }

    #[test]
    fn no_val_fraction_sends_everything_to_train() {
        let hashes: Vec<u64> = (0..100).map(hash).collect();
        assert!(assign(&hashes, 0.0).iter().all(|s| *s == Split::Train));
    }

    #[test]
    fn both_splits_get_a_block_and_val_stays_within_half_and_twice_the_fraction() {
        let hashes: Vec<u64> = (0..2000).map(hash).collect();
        for x in [0.001, 0.005, 0.05, 0.3, 0.6] {
            for n in 2..=2000usize {
                let splits = assign(&hashes[..n], x);
                let val = splits.iter().filter(|s| **s == Split::Val).count();
                let train = n - val;
                assert!(
                    val >= 1 && train >= 1,
                    "n {n}, x {x}: {val} val, {train} train"
                );
                if n as f64 * x >= 1.0 {
                    let share = val as f64 / n as f64;
                    assert!(
                        (x / 2.0..=2.0 * x).contains(&share),
                        "n {n}, x {x}: val share {share}"
                    );
                }
            }
        }
    }

    #[test]
    fn streaming_with_one_held_block_equals_the_rule_applied_group_by_group() {
        // Few distinct hashes, so ties are common.
        let hashes: Vec<u64> = (0..700).map(|i| hash(i) % 13).collect();
        for x in [0.01, 0.05, 0.3, 0.6] {
            let g = group_size(x).unwrap() as usize;
            for n in [0, 1, 2, 3, g - 1, g, g + 1, 3 * g + g / 2, 700] {
                let blocks = &hashes[..n];
                let mut want = vec![Split::Train; n];
                let groups = blocks.chunks(g).collect::<Vec<_>>();
                for (k, group) in groups.iter().enumerate() {
                    let whole = group.len() == g;
                    let last_counts = 2 * group.len() >= g || groups.len() == 1;
                    if whole || last_counts {
                        let lowest = (0..group.len()).min_by_key(|&i| group[i]).unwrap();
                        want[k * g + lowest] = Split::Val;
                    }
                }
                assert_eq!(assign(blocks, x), want, "n {n}, x {x}");
            }
        }
    }
}
