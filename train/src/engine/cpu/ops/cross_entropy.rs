//! Softmax cross-entropy over `logits[n, vocab]`, fused with its backward. Per row:
//!
//! ```text
//! m      = max_j z_j                      (for stability)
//! lse    = m + ln Σ_j e^(z_j − m)
//! loss   = lse − z_target
//! dz_j   = (softmax(z)_j − [j = target]) · grad_scale
//! ```
//!
//! The logits are overwritten by their gradient (they are not needed afterwards and the
//! buffer is the largest activation). A target of `u32::MAX` marks a row to ignore (padding):
//! it adds nothing to the loss and gets an all-zero gradient. The returned loss is the SUM
//! over rows, accumulated in row order; the caller divides by the number of counted rows.

use rayon::prelude::*;

use super::Float;

/// Target value of a row that is ignored.
pub const IGNORE_TARGET: u32 = u32::MAX;

/// Rows per rayon task (one row is a whole vocab, so small tasks are already large).
const ROWS_PER_TASK: usize = 4;

/// Returns `Σ_rows loss_i` and overwrites `logits` with `dloss/dlogits · grad_scale`.
pub fn cross_entropy<T: Float>(
    logits: &mut [T],
    targets: &[u32],
    n: usize,
    vocab: usize,
    grad_scale: T,
) -> T {
    assert_eq!(logits.len(), n * vocab, "cross_entropy: logits shape");
    assert_eq!(targets.len(), n, "cross_entropy: targets shape");
    if n == 0 {
        return T::zero();
    }
    assert!(vocab > 0, "cross_entropy: empty vocab");
    // Per-row losses first, then a sequential sum: the total never depends on the threads.
    let mut losses = vec![T::zero(); n];
    logits
        .par_chunks_mut(ROWS_PER_TASK * vocab)
        .zip(losses.par_chunks_mut(ROWS_PER_TASK))
        .zip(targets.par_chunks(ROWS_PER_TASK))
        .for_each(|((z, losses), targets)| {
            for ((z, loss), &target) in z.chunks_mut(vocab).zip(losses).zip(targets) {
                if target == IGNORE_TARGET {
                    z.fill(T::zero());
                    continue;
                }
                let target = target as usize;
                assert!(
                    target < vocab,
                    "cross_entropy: target {target} out of vocab {vocab}"
                );
                let m = z.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
                let z_target = z[target];
                // z becomes e^(z − m); the sum runs left to right.
                let mut sum = T::zero();
                for v in z.iter_mut() {
                    *v = (*v - m).exp();
                    sum = sum + *v;
                }
                *loss = m + sum.ln() - z_target;
                for v in z.iter_mut() {
                    *v = *v / sum * grad_scale;
                }
                z[target] = z[target] - grad_scale;
            }
        });
    losses.iter().fold(T::zero(), |acc, &l| acc + l)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    /// Loss against a direct f64 formula, and the gradient (grad_scale = 1) against central
    /// differences of the summed loss, tolerance [`GRAD_TOL`]; one row is ignored.
    #[test]
    fn cross_entropy_grad_check_f64() {
        let (n, vocab) = (9, 13);
        let mut rng = Rng::new(60);
        let z: Vec<f64> = rng.vec(n * vocab).iter().map(|v| 5.0 * v).collect();
        let mut targets: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
        targets[4] = IGNORE_TARGET;
        let loss = |z: &[f64]| {
            let mut z = z.to_vec();
            cross_entropy(&mut z, &targets, n, vocab, 1.0)
        };
        let mut want = 0.0;
        for r in 0..n {
            if targets[r] == IGNORE_TARGET {
                continue;
            }
            let row = &z[r * vocab..(r + 1) * vocab];
            let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
            want += lse - row[targets[r] as usize];
        }
        let got = loss(&z);
        assert!((got - want).abs() < 1e-12 * want.abs(), "{got} vs {want}");
        let mut grad = z.clone();
        cross_entropy(&mut grad, &targets, n, vocab, 1.0);
        assert!(grad[4 * vocab..5 * vocab].iter().all(|&g| g == 0.0));
        grad_check("dlogits", &z, &grad, loss);
    }

    /// grad_scale multiplies the gradient and leaves the loss alone; stable for huge logits.
    #[test]
    fn cross_entropy_grad_scale_and_stability() {
        let (n, vocab) = (3, 6);
        let mut rng = Rng::new(61);
        let z: Vec<f64> = rng
            .vec(n * vocab)
            .iter()
            .map(|v| 1000.0 + 3.0 * v)
            .collect();
        let targets = [1u32, 5, 0];
        let mut g1 = z.clone();
        let l1 = cross_entropy(&mut g1, &targets, n, vocab, 1.0);
        let mut g2 = z.clone();
        let l2 = cross_entropy(&mut g2, &targets, n, vocab, 0.25);
        assert!(l1.is_finite() && l1 > 0.0);
        assert_eq!(l1, l2);
        for (a, b) in g1.iter().zip(&g2) {
            assert!((a * 0.25 - b).abs() < 1e-15);
        }
        // Gradient rows of a softmax minus a one-hot sum to zero.
        for r in 0..n {
            assert!(g1[r * vocab..(r + 1) * vocab].iter().sum::<f64>().abs() < 1e-12);
        }
    }

    /// f32 against f64 (loss and gradient), tolerance [`F32_TOL`]; several row tasks.
    #[test]
    fn cross_entropy_f32_matches_f64() {
        let (n, vocab) = (21, 500);
        let mut rng = Rng::new(62);
        let z: Vec<f64> = rng.vec(n * vocab).iter().map(|v| 4.0 * v).collect();
        let mut targets: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
        targets[7] = IGNORE_TARGET;
        let mut g = z.clone();
        let l = cross_entropy(&mut g, &targets, n, vocab, 0.5);
        let mut g32 = to_f32(&z);
        let l32 = cross_entropy(&mut g32, &targets, n, vocab, 0.5f32);
        assert!(((l32 as f64 - l) / l).abs() < F32_TOL);
        assert!(max_rel_err(&g32, &g) < F32_TOL);
    }
}
