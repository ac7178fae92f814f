//! Rotary position embedding, HF Llama "rotate half" convention, in place.
//!
//! `x` is `[b*t, heads*hd]`: row `r` is position `p = r mod t` of sequence `r / t`. In every
//! head, element `i < hd/2` is paired with `i + hd/2` and the pair is rotated by
//! `angle = p · theta^(−2i/hd)`:
//!
//! ```text
//! out_i        = x_i·cos − x_{i+hd/2}·sin
//! out_{i+hd/2} = x_{i+hd/2}·cos + x_i·sin
//! ```
//!
//! The backward applies the transpose (the rotation by −angle) to the gradient.
//! Angles, sines and cosines are computed in f64 then rounded to `T`, so f32 and f64 runs
//! rotate by the same angles up to one rounding.

use rayon::prelude::*;

use super::{cast, Float};

/// Rows per rayon task (fixed: the partition never depends on threads).
const ROWS_PER_TASK: usize = 32;

/// `(cos, sin)` tables `[t, hd/2]` of positions `start..start+t`, computed in f64 and rounded
/// to `T`.
fn tables<T: Float>(start: usize, t: usize, hd: usize, theta: f64) -> (Vec<T>, Vec<T>) {
    let half = hd / 2;
    let mut cos = Vec::with_capacity(t * half);
    let mut sin = Vec::with_capacity(t * half);
    for p in start..start + t {
        for i in 0..half {
            let inv_freq = theta.powf(-((2 * i) as f64) / hd as f64);
            let angle = p as f64 * inv_freq;
            cos.push(cast(angle.cos()));
            sin.push(cast(angle.sin()));
        }
    }
    (cos, sin)
}

/// Rotates every head of every row by its position's angles (row `r` is at position
/// `start + r mod t`); `inverse` gives the transpose.
#[allow(clippy::too_many_arguments)]
fn rotate<T: Float>(
    x: &mut [T],
    b: usize,
    t: usize,
    heads: usize,
    hd: usize,
    theta: f64,
    start: usize,
    inverse: bool,
) {
    assert!(hd & 1 == 0, "rope: head dim must be even");
    assert_eq!(x.len(), b * t * heads * hd, "rope: x shape");
    let width = heads * hd;
    if x.is_empty() {
        return;
    }
    let half = hd / 2;
    let (cos, sin) = tables::<T>(start, t, hd, theta);
    x.par_chunks_mut(ROWS_PER_TASK * width)
        .enumerate()
        .for_each(|(task, rows)| {
            for (k, row) in rows.chunks_mut(width).enumerate() {
                let p = (task * ROWS_PER_TASK + k) % t;
                let cos = &cos[p * half..(p + 1) * half];
                let sin = &sin[p * half..(p + 1) * half];
                for head in row.chunks_mut(hd) {
                    let (lo, hi) = head.split_at_mut(half);
                    for i in 0..half {
                        let (a, b, c, s) = (lo[i], hi[i], cos[i], sin[i]);
                        if inverse {
                            lo[i] = a * c + b * s;
                            hi[i] = b * c - a * s;
                        } else {
                            lo[i] = a * c - b * s;
                            hi[i] = b * c + a * s;
                        }
                    }
                }
            }
        });
}

/// Applies RoPE to `x[b*t, heads*hd]` in place.
pub fn rope_forward<T: Float>(
    x: &mut [T],
    b: usize,
    t: usize,
    heads: usize,
    hd: usize,
    theta: f64,
) {
    rotate(x, b, t, heads, hd, theta, 0, false);
}

/// Backward of [`rope_forward`], in place on the gradient: the transposed rotation.
pub fn rope_backward<T: Float>(
    dx: &mut [T],
    b: usize,
    t: usize,
    heads: usize,
    hd: usize,
    theta: f64,
) {
    rotate(dx, b, t, heads, hd, theta, 0, true);
}

/// RoPE for `t` rows of one sequence at positions `start..start+t` (the new tokens of a
/// sequence decoded with a key/value cache). The angles are computed exactly as
/// [`rope_forward`]'s, so a row gets the same rotation whichever way it is reached.
pub fn rope_forward_at<T: Float>(
    x: &mut [T],
    t: usize,
    heads: usize,
    hd: usize,
    theta: f64,
    start: usize,
) {
    rotate(x, 1, t, heads, hd, theta, start, false);
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    const THETA: f64 = 10000.0;

    /// Forward against the formula evaluated directly in f64 (no tables), tolerance 1e-14.
    /// 40 rows of t = 7 span two row tasks and check that positions restart per sequence.
    #[test]
    fn rope_forward_matches_formula_f64() {
        let (b, t, heads, hd) = (6, 7, 3, 8);
        let mut rng = Rng::new(30);
        let x0 = rng.vec(b * t * heads * hd);
        let mut x = x0.clone();
        rope_forward(&mut x, b, t, heads, hd, THETA);
        let w = heads * hd;
        for r in 0..b * t {
            let p = (r % t) as f64;
            for h in 0..heads {
                for i in 0..hd / 2 {
                    let ang = p / THETA.powf(2.0 * i as f64 / hd as f64);
                    let (lo, hi) = (r * w + h * hd + i, r * w + h * hd + i + hd / 2);
                    let want_lo = x0[lo] * ang.cos() - x0[hi] * ang.sin();
                    let want_hi = x0[hi] * ang.cos() + x0[lo] * ang.sin();
                    assert!((x[lo] - want_lo).abs() < 1e-14, "{} vs {want_lo}", x[lo]);
                    assert!((x[hi] - want_hi).abs() < 1e-14, "{} vs {want_hi}", x[hi]);
                }
            }
        }
    }

    /// Gradient check of the backward, tolerance [`GRAD_TOL`].
    #[test]
    fn rope_grad_check_f64() {
        let (b, t, heads, hd) = (2, 5, 2, 6);
        let mut rng = Rng::new(31);
        let x = rng.vec(b * t * heads * hd);
        let r = rng.vec(x.len());
        let mut dx = r.clone();
        rope_backward(&mut dx, b, t, heads, hd, THETA);
        grad_check("dx", &x, &dx, |x| {
            let mut y = x.to_vec();
            rope_forward(&mut y, b, t, heads, hd, THETA);
            dot(&y, &r)
        });
    }

    /// f32 forward against f64, tolerance [`F32_TOL`].
    #[test]
    fn rope_forward_f32_matches_f64() {
        let (b, t, heads, hd) = (2, 300, 2, 16);
        let mut rng = Rng::new(32);
        let x = rng.vec(b * t * heads * hd);
        let mut y = x.clone();
        rope_forward(&mut y, b, t, heads, hd, THETA);
        let mut y32 = to_f32(&x);
        rope_forward(&mut y32, b, t, heads, hd, THETA);
        let err = max_rel_err(&y32, &y);
        assert!(err < F32_TOL, "rel err {err:e}");
    }

    /// Rows reached at an offset (decoding with a cache) get bitwise the rotation they get
    /// inside the whole sequence.
    #[test]
    fn rope_at_an_offset_equals_the_whole_sequence_bitwise() {
        let (t, heads, hd, start, n) = (40, 3, 8, 29, 11);
        let mut rng = Rng::new(33);
        let x = to_f32(&rng.vec(t * heads * hd));
        let mut whole = x.clone();
        rope_forward(&mut whole, 1, t, heads, hd, THETA);
        let w = heads * hd;
        let mut part = x[start * w..(start + n) * w].to_vec();
        rope_forward_at(&mut part, n, heads, hd, THETA, start);
        assert_eq!(bits(&part), bits(&whole[start * w..(start + n) * w]));
    }
}
