//! 4-bit NormalFloat (NF4, from the QLoRA paper): each weight is stored as the index (0..16) of
//! the nearest of 16 fixed values in [-1, 1], after dividing its block of [`BLOCK`] = 64
//! weights by the block's largest magnitude (its absmax, kept in f32).
//!
//! The 16 values are quantiles of a standard normal distribution, so that weights which are
//! roughly normal use the codes about equally often: 8 for the positive side (quantiles from
//! 1/2 to [`OFFSET`], the last scaled to 1), 7 for the negative side (from 1/2 to `OFFSET`,
//! without the half), and an exact 0; each side is divided by its largest quantile, so both
//! ends are exactly ±1. [`CODE`] holds them as published with the paper and used by
//! bitsandbytes; a test derives them again from that definition.
//!
//! Layout: two codes per byte, the first weight of a pair in the high nibble (the order
//! bitsandbytes uses, as we read it; not yet compared with its output). A tensor's element
//! count must be a multiple of 64, and every value finite (refused otherwise, in one line).
//! Not here yet: double quantisation of the absmax values, and any use by the engines.

use thiserror::Error;

/// Weights per absmax.
pub const BLOCK: usize = 64;

/// The outermost quantile used: Φ⁻¹(OFFSET) maps to ±1. QLoRA's constant (0.9677083), about
/// halfway between 1 − 1/(2·15) and 1 − 1/(2·16), the two ways of spacing 16 quantiles.
pub const OFFSET: f64 = 0.967_708_3;

/// The 16 NF4 values, ascending; code 7 is exactly 0.
pub const CODE: [f32; 16] = [
    -1.0,
    -0.6961928,
    -0.52507305,
    -0.3949175,
    -0.28444138,
    -0.18477343,
    -0.091050036,
    0.0,
    0.0795803,
    0.1609302,
    0.2461123,
    0.33791524,
    0.44070983,
    0.562617,
    0.72295684,
    1.0,
];

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Nf4Error {
    #[error("{name} has {len} elements, not a multiple of the NF4 block of {BLOCK}: leave it unquantised or use a model whose dimensions are multiples of {BLOCK}")]
    NotBlocks { name: String, len: usize },
    #[error("{name} holds a non-finite value at element {index}: it cannot be quantised")]
    NotFinite { name: String, index: usize },
}

/// A tensor in NF4: `len / 2` packed bytes and `len / 64` absmax values.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4 {
    pub packed: Vec<u8>,
    pub absmax: Vec<f32>,
}

impl Nf4 {
    /// Quantises `w` (named `name` in errors) block by block.
    pub fn quantize(name: &str, w: &[f32]) -> Result<Nf4, Nf4Error> {
        if !w.len().is_multiple_of(BLOCK) {
            return Err(Nf4Error::NotBlocks {
                name: name.to_string(),
                len: w.len(),
            });
        }
        if let Some(index) = w.iter().position(|x| !x.is_finite()) {
            return Err(Nf4Error::NotFinite {
                name: name.to_string(),
                index,
            });
        }
        let mut packed = Vec::with_capacity(w.len() / 2);
        let mut absmax = Vec::with_capacity(w.len() / BLOCK);
        for block in w.chunks_exact(BLOCK) {
            let m = block.iter().fold(0.0f32, |m, x| m.max(x.abs()));
            // Scaled by the reciprocal, in f32, as bitsandbytes does (so that the codes agree
            // bit for bit). An all-zero block: every code is 0 (exact) whatever the scale.
            let inv = if m > 0.0 { 1.0 / m } else { 0.0 };
            for pair in block.chunks_exact(2) {
                packed.push(nearest(pair[0] * inv) << 4 | nearest(pair[1] * inv));
            }
            absmax.push(m);
        }
        Ok(Nf4 { packed, absmax })
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        self.packed.len() * 2
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    /// Element `i`: `CODE[code] · absmax` of its block, as the dequantising matmul computes it.
    pub fn get(&self, i: usize) -> f32 {
        let byte = self.packed[i / 2];
        let code = if i.is_multiple_of(2) {
            byte >> 4
        } else {
            byte & 15
        };
        CODE[code as usize] * self.absmax[i / BLOCK]
    }

    /// The whole tensor in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }
}

/// The code of the value nearest to `x` (in [-1, 1]): the number of midpoints between
/// neighbouring codes (computed in f32) that lie below `x`, so a value exactly on a midpoint
/// takes the smaller code, as in bitsandbytes (checked byte for byte by
/// tests/nf4_bitsandbytes.rs).
fn nearest(x: f32) -> u8 {
    CODE.windows(2)
        .filter(|pair| x > (pair[0] + pair[1]) / 2.0)
        .count() as u8
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Φ⁻¹(p) for the standard normal, by Newton's method on Φ(x) = erfc(−x/√2)/2.
    fn normal_quantile(p: f64) -> f64 {
        let mut x = 0.0f64;
        for _ in 0..100 {
            let cdf = 0.5 * libm::erfc(-x / std::f64::consts::SQRT_2);
            let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let step = (cdf - p) / pdf;
            x -= step;
            if step.abs() < 1e-15 {
                break;
            }
        }
        x
    }

    /// `n` points from `a` to `b`, both included.
    fn linspace(a: f64, b: f64, n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| a + (b - a) * i as f64 / (n - 1) as f64)
            .collect()
    }

    #[test]
    fn the_code_book_is_the_normal_quantiles_the_paper_publishes() {
        // Positive side: 8 quantiles from OFFSET down to (not including) 1/2; negative: 7.
        let pos: Vec<f64> = linspace(OFFSET, 0.5, 9)[..8]
            .iter()
            .map(|&p| normal_quantile(p))
            .collect();
        let neg: Vec<f64> = linspace(OFFSET, 0.5, 8)[..7]
            .iter()
            .map(|&p| -normal_quantile(p))
            .collect();
        let mut values: Vec<f64> = pos.iter().chain(&neg).copied().chain([0.0]).collect();
        values.sort_by(f64::total_cmp);
        let max = values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        // The published values were computed from f32 probabilities and normalised in f32;
        // derived in f64 they agree within 2e-7 (measured: 1.2e-7 at worst, 2 f32 ulps).
        for (i, (&v, &c)) in values.iter().zip(&CODE).enumerate() {
            let derived = v / max;
            assert!(
                (derived - f64::from(c)).abs() < 2e-7,
                "code {i}: derived {derived}, published {c}"
            );
        }
        assert_eq!(CODE[7], 0.0);
        assert_eq!((CODE[0], CODE[15]), (-1.0, 1.0));
    }

    #[test]
    fn every_value_quantises_to_its_nearest_code() {
        for (i, &c) in CODE.iter().enumerate() {
            assert_eq!(nearest(c) as usize, i);
        }
        // Between two codes: the nearer one, either side of the midpoint; outside [-1, 1],
        // the end codes.
        for pair in 0..15 {
            let mid = 0.5 * (CODE[pair] + CODE[pair + 1]);
            let gap = CODE[pair + 1] - CODE[pair];
            assert_eq!(nearest(mid - 0.01 * gap) as usize, pair);
            assert_eq!(nearest(mid + 0.01 * gap) as usize, pair + 1);
        }
        assert_eq!((nearest(-1.5), nearest(1.5)), (0, 15));
        // Exactly on a midpoint: the smaller code.
        for pair in 0..15 {
            assert_eq!(nearest((CODE[pair] + CODE[pair + 1]) / 2.0) as usize, pair);
        }
    }

    #[test]
    fn blocks_round_trip_within_half_a_gap_of_their_absmax() {
        let mut x: u64 = 1;
        let w: Vec<f32> = (0..4 * BLOCK)
            .map(|i| {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = (x >> 11) as f32 / (1u64 << 53) as f32 - 0.5;
                // Blocks of different scales, one of them all zero.
                if i / BLOCK == 2 {
                    0.0
                } else {
                    u * 10f32.powi(i as i32 / BLOCK as i32 - 2)
                }
            })
            .collect();
        let q = Nf4::quantize("w", &w).unwrap();
        assert_eq!(
            (q.len(), q.packed.len(), q.absmax.len()),
            (4 * BLOCK, 2 * BLOCK, 4)
        );
        let back = q.dequantize();
        let widest = CODE.windows(2).map(|p| p[1] - p[0]).fold(0.0, f32::max);
        for (b, (orig, got)) in w.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
            let m = q.absmax[b];
            assert_eq!(m, orig.iter().fold(0.0f32, |a, x| a.max(x.abs())));
            for (o, g) in orig.iter().zip(got) {
                assert!(
                    (o - g).abs() <= 0.5 * widest * m * (1.0 + 1e-6),
                    "block {b}: {o} → {g}"
                );
            }
            // The largest magnitude of each block comes back exactly (it maps to ±1).
            if m > 0.0 {
                assert!(got.iter().any(|g| g.abs() == m), "block {b}");
            }
        }
        assert!(back[2 * BLOCK..3 * BLOCK].iter().all(|&g| g == 0.0));
        // Codes times an absmax come back exactly; the first of a pair is the high nibble.
        let exact: Vec<f32> = (0..BLOCK).map(|i| CODE[i % 16] * 0.25).collect();
        let q = Nf4::quantize("exact", &exact).unwrap();
        assert_eq!(q.dequantize(), exact);
        assert_eq!(q.packed[0], 0x01);
        assert_eq!(q.packed[7], 0xEF);
    }

    #[test]
    fn tensors_that_are_not_whole_blocks_or_not_finite_are_refused_in_one_line() {
        let e = Nf4::quantize("model.layers.0.mlp.up_proj.weight", &[0.0; 100]).unwrap_err();
        let m = e.to_string();
        assert!(!m.contains('\n'));
        assert!(
            m.contains("model.layers.0.mlp.up_proj.weight has 100 elements") && m.contains("64"),
            "{m}"
        );
        let mut w = vec![0.5f32; BLOCK];
        w[9] = f32::NAN;
        let m = Nf4::quantize("w", &w).unwrap_err().to_string();
        assert_eq!(
            m,
            "w holds a non-finite value at element 9: it cannot be quantised"
        );
    }
}
