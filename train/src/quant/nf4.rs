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
//! Layout: two codes per byte, the first weight of a pair in the high nibble (as bitsandbytes
//! packs them; tests/nf4_bitsandbytes.rs compares the bytes). A tensor's element count must be
//! a multiple of 64, and every value finite (refused otherwise, in one line).
//!
//! Double quantisation (QLoRA's, bitsandbytes' `compress_statistics`): the absmax values
//! themselves, less their mean, are stored in 8 bits of bitsandbytes' signed dynamic code
//! ([`dynamic_code`]) with one f32 scale per [`ABSMAX_BLOCK`] of them: 4.125 bits per weight
//! instead of 4.5.

use thiserror::Error;

/// Weights per absmax.
pub const BLOCK: usize = 64;

/// Absmax values per f32 scale under double quantisation.
pub const ABSMAX_BLOCK: usize = 256;

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
    pub absmax: Absmax,
}

/// The scale of each block of 64 weights.
#[derive(Debug, Clone, PartialEq)]
pub enum Absmax {
    F32(Vec<f32>),
    /// Double-quantised: `dynamic_code()[codes[j]] · scales[j / 256] + offset`.
    Double {
        codes: Vec<u8>,
        scales: Vec<f32>,
        offset: f32,
    },
}

impl Absmax {
    /// Block `j`'s absmax, as the dequantisation uses it.
    pub fn get(&self, j: usize) -> f32 {
        match self {
            Absmax::F32(v) => v[j],
            Absmax::Double {
                codes,
                scales,
                offset,
            } => dynamic_code()[codes[j] as usize] * scales[j / ABSMAX_BLOCK] + offset,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            Absmax::F32(v) => v.len(),
            Absmax::Double { codes, .. } => codes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every block's absmax.
    pub fn values(&self) -> Vec<f32> {
        (0..self.len()).map(|j| self.get(j)).collect()
    }

    fn bytes(&self) -> usize {
        match self {
            Absmax::F32(v) => 4 * v.len(),
            Absmax::Double { codes, scales, .. } => codes.len() + 4 * scales.len() + 4,
        }
    }
}

impl Nf4 {
    /// Refuses a tensor of `len` elements (named `name`) that is not whole blocks.
    pub fn check_len(name: &str, len: usize) -> Result<(), Nf4Error> {
        if len.is_multiple_of(BLOCK) {
            Ok(())
        } else {
            Err(Nf4Error::NotBlocks {
                name: name.to_string(),
                len,
            })
        }
    }

    /// Quantises `w` and then its absmax values ([`Absmax::Double`]).
    pub fn quantize_double(name: &str, w: &[f32]) -> Result<Nf4, Nf4Error> {
        let plain = Nf4::quantize(name, w)?;
        let Absmax::F32(absmax) = plain.absmax else {
            unreachable!("quantize keeps f32 absmax values")
        };
        Ok(Nf4 {
            packed: plain.packed,
            absmax: double_quantize(&absmax),
        })
    }

    /// Quantises `w` (named `name` in errors) block by block.
    pub fn quantize(name: &str, w: &[f32]) -> Result<Nf4, Nf4Error> {
        Nf4::check_len(name, w.len())?;
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
        Ok(Nf4 {
            packed,
            absmax: Absmax::F32(absmax),
        })
    }

    /// Bytes held: packed codes and block scales.
    pub fn bytes(&self) -> usize {
        self.packed.len() + self.absmax.bytes()
    }

    /// Elements held.
    pub fn len(&self) -> usize {
        self.packed.len() * 2
    }

    pub fn is_empty(&self) -> bool {
        self.packed.is_empty()
    }

    /// Calls `put(i, CODE[code] · absmax)` for every element `i`, as the dequantising matmul
    /// computes it (in f32), a block's absmax dequantised once.
    pub fn dequantize_with(&self, mut put: impl FnMut(usize, f32)) {
        for (j, bytes) in self.packed.chunks_exact(BLOCK / 2).enumerate() {
            let m = self.absmax.get(j);
            for (k, byte) in bytes.iter().enumerate() {
                let i = j * BLOCK + 2 * k;
                put(i, CODE[(byte >> 4) as usize] * m);
                put(i + 1, CODE[(byte & 15) as usize] * m);
            }
        }
    }

    /// The whole tensor in f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.len()];
        self.dequantize_with(|i, v| out[i] = v);
        out
    }
}

/// Bytes an NF4 tensor of `len` elements (whole blocks) holds: packed codes and absmax values,
/// 8-bit ones with `double` (plus a scale per 256 and their mean).
pub fn stored_bytes(len: u128, double: bool) -> u128 {
    let blocks = len / BLOCK as u128;
    let absmax = if double {
        blocks + 4 * blocks.div_ceil(ABSMAX_BLOCK as u128) + 4
    } else {
        4 * blocks
    };
    len / 2 + absmax
}

/// bitsandbytes' signed 8-bit dynamic code (`create_dynamic_map`, 7 exponent bits): for each
/// decade `10^(e−6)`, e = 0..7, the midpoints of `2^e + 1` evenly spaced points from 0.1 to 1,
/// scaled by the decade, with both signs; then 0 and 1; ascending. Computed in f32 the way
/// torch computes it; tests/nf4_bitsandbytes.rs compares it with bitsandbytes' own.
pub fn dynamic_code() -> &'static [f32; 256] {
    static CODE8: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    CODE8.get_or_init(|| {
        let mut data = Vec::with_capacity(256);
        for e in 0..7 {
            let points = linspace_f32(0.1, 1.0, (1 << e) + 1);
            let decade = 10f64.powi(e - 6) as f32;
            let means: Vec<f32> = points.windows(2).map(|p| (p[0] + p[1]) / 2.0).collect();
            data.extend(means.iter().map(|m| decade * m));
            data.extend(means.iter().map(|m| -decade * m));
        }
        data.extend([0.0, 1.0]);
        data.sort_by(f32::total_cmp);
        data.try_into().expect("254 scaled midpoints, 0 and 1")
    })
}

/// torch's `linspace` on the CPU in f32: from the start for the first half, from the end for
/// the second, so both ends are exact; each point one fused multiply-add, as its vectorised
/// kernel computes them (a separate multiply and add differ in the last bit of some points).
fn linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps)
        .map(|i| {
            if i < half {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((steps - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// The absmax values less their mean, in the dynamic code with one scale per 256 of them (a
/// last, shorter group its own), each value's code the number of midpoints below it.
fn double_quantize(absmax: &[f32]) -> Absmax {
    let offset = (absmax.iter().map(|&m| f64::from(m)).sum::<f64>() / absmax.len() as f64) as f32;
    let code = dynamic_code();
    let bounds: Vec<f32> = code.windows(2).map(|p| (p[0] + p[1]) / 2.0).collect();
    let mut codes = Vec::with_capacity(absmax.len());
    let mut scales = Vec::with_capacity(absmax.len().div_ceil(ABSMAX_BLOCK));
    for group in absmax.chunks(ABSMAX_BLOCK) {
        let centred: Vec<f32> = group.iter().map(|m| m - offset).collect();
        let scale = centred.iter().fold(0f32, |a, x| a.max(x.abs())).max(1e-38);
        // A whole group is scaled by the reciprocal, a short last one divided, as in
        // bitsandbytes.
        let inv = 1.0 / scale;
        for x in centred {
            let scaled = if group.len() == ABSMAX_BLOCK {
                x * inv
            } else {
                x / scale
            };
            let scaled = scaled.clamp(-1.0, 1.0);
            codes.push(bounds.partition_point(|&b| b < scaled) as u8);
        }
        scales.push(scale);
    }
    Absmax::Double {
        codes,
        scales,
        offset,
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
        assert_eq!(q.bytes(), 2 * BLOCK + 4 * 4);
        let back = q.dequantize();
        let widest = CODE.windows(2).map(|p| p[1] - p[0]).fold(0.0, f32::max);
        for (b, (orig, got)) in w.chunks(BLOCK).zip(back.chunks(BLOCK)).enumerate() {
            let m = q.absmax.get(b);
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

    #[test]
    fn double_quantised_absmax_values_come_back_within_half_a_code_step() {
        let code = dynamic_code();
        // 1 is a code, −1 is not: the most negative is the top decade's last midpoint.
        assert_eq!(code[255], 1.0);
        assert!(code[0] > -1.0 && code[0] < -0.99, "{}", code[0]);
        assert!(
            code.windows(2).all(|p| p[0] < p[1]),
            "ascending, no repeats"
        );
        assert!(code.contains(&0.0));
        // Weights whose blocks have absmax values spread over two decades: 300 blocks, so a
        // whole group of 256 and a short one of 44.
        let w: Vec<f32> = (0..300 * BLOCK)
            .map(|i| {
                let b = (i / BLOCK) as f32;
                let x = ((i * 7919) % 1000) as f32 / 1000.0 - 0.5;
                x * (0.01 + 0.002 * b) * if i % BLOCK == 5 { 2.0 } else { 1.0 }
            })
            .collect();
        let plain = Nf4::quantize("w", &w).unwrap();
        let double = Nf4::quantize_double("w", &w).unwrap();
        assert_eq!(plain.packed, double.packed, "the 4-bit codes do not change");
        let Absmax::Double { scales, codes, .. } = &double.absmax else {
            panic!("not double-quantised")
        };
        assert_eq!((codes.len(), scales.len()), (300, 2));
        let widest = code.windows(2).map(|p| p[1] - p[0]).fold(0.0, f32::max);
        for j in 0..300 {
            let (want, got) = (plain.absmax.get(j), double.absmax.get(j));
            let tol = 0.5 * widest * scales[j / ABSMAX_BLOCK] * (1.0 + 1e-5) + 1e-7;
            assert!((want - got).abs() <= tol, "block {j}: {want} → {got}");
        }
        // 4 bits per weight plus one byte per 64 and the scales: under 4.2 bits per weight.
        assert!(double.bytes() * 8 < w.len() * 42 / 10);
        assert!(double.bytes() < plain.bytes());
        assert_eq!(stored_bytes(w.len() as u128, true), double.bytes() as u128);
        assert_eq!(stored_bytes(w.len() as u128, false), plain.bytes() as u128);
    }
}
