//! RMSNorm (HF `LlamaRMSNorm`), computed in `T`, per row of `x[n, d]`:
//!
//! ```text
//! rstd = 1 / sqrt(mean_j(x_j²) + eps)
//! y_j  = (x_j · rstd) · w_j
//! ```
//!
//! Backward, with `c = Σ_j dy_j·w_j·x_j` (the row's projection on x):
//!
//! ```text
//! dx_k  = rstd · (dy_k·w_k − x_k · rstd² · c / d)     (overwritten)
//! dw_j += Σ_rows dy_j · x_j · rstd                      (accumulated, rows in order)
//! ```
//!
//! `rstd[n]` is saved by the forward so the backward needs no second pass over x.

use rayon::prelude::*;

use super::Float;

/// Rows per rayon task for the row-wise passes (fixed: the partition never depends on threads).
const ROWS_PER_TASK: usize = 32;
/// Columns of `dw` per task: each task reduces over all rows, in row order.
const DW_COLS_PER_TASK: usize = 64;

/// `y = x · rstd · w` per row; also writes `rstd[n]` for the backward.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_forward<T: Float>(
    y: &mut [T],
    rstd: &mut [T],
    x: &[T],
    w: &[T],
    n: usize,
    d: usize,
    eps: T,
) {
    assert_eq!(y.len(), n * d, "rmsnorm_forward: y shape");
    assert_eq!(rstd.len(), n, "rmsnorm_forward: rstd shape");
    assert_eq!(x.len(), n * d, "rmsnorm_forward: x shape");
    assert_eq!(w.len(), d, "rmsnorm_forward: w shape");
    assert!(d > 0, "rmsnorm_forward: d must be positive");
    let inv_d = T::one() / T::from(d).expect("d representable in T");
    y.par_chunks_mut(ROWS_PER_TASK * d)
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(ROWS_PER_TASK * d))
        .for_each(|((y, rstd), x)| {
            for ((y, r), x) in y.chunks_mut(d).zip(rstd.iter_mut()).zip(x.chunks(d)) {
                let ss = x.iter().fold(T::zero(), |acc, &v| acc + v * v);
                let rs = T::one() / (ss * inv_d + eps).sqrt();
                *r = rs;
                for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
                    *y = x * rs * w;
                }
            }
        });
}

/// Overwrites `dx`, accumulates into `dw`.
#[allow(clippy::too_many_arguments)]
pub fn rmsnorm_backward<T: Float>(
    dx: &mut [T],
    dw: &mut [T],
    dy: &[T],
    x: &[T],
    w: &[T],
    rstd: &[T],
    n: usize,
    d: usize,
) {
    assert_eq!(dx.len(), n * d, "rmsnorm_backward: dx shape");
    assert_eq!(dw.len(), d, "rmsnorm_backward: dw shape");
    assert_eq!(dy.len(), n * d, "rmsnorm_backward: dy shape");
    assert_eq!(x.len(), n * d, "rmsnorm_backward: x shape");
    assert_eq!(w.len(), d, "rmsnorm_backward: w shape");
    assert_eq!(rstd.len(), n, "rmsnorm_backward: rstd shape");
    assert!(d > 0, "rmsnorm_backward: d must be positive");
    let inv_d = T::one() / T::from(d).expect("d representable in T");
    dx.par_chunks_mut(ROWS_PER_TASK * d)
        .zip(dy.par_chunks(ROWS_PER_TASK * d))
        .zip(x.par_chunks(ROWS_PER_TASK * d))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .for_each(|(((dx, dy), x), rstd)| {
            for (((dx, dy), x), &rs) in dx
                .chunks_mut(d)
                .zip(dy.chunks(d))
                .zip(x.chunks(d))
                .zip(rstd)
            {
                let c = dy
                    .iter()
                    .zip(w)
                    .zip(x)
                    .fold(T::zero(), |acc, ((&dy, &w), &x)| acc + dy * w * x);
                let k = rs * rs * c * inv_d;
                for (((dx, &dy), &w), &x) in dx.iter_mut().zip(dy).zip(w).zip(x) {
                    *dx = rs * (dy * w - x * k);
                }
            }
        });
    // dw: each task owns a block of columns and sums over all rows in row order.
    dw.par_chunks_mut(DW_COLS_PER_TASK)
        .enumerate()
        .for_each(|(task, dw)| {
            let j0 = task * DW_COLS_PER_TASK;
            let mut acc = vec![T::zero(); dw.len()];
            for (row, &rs) in rstd.iter().enumerate() {
                let base = row * d + j0;
                let dy = &dy[base..base + dw.len()];
                let x = &x[base..base + dw.len()];
                for ((a, &dy), &x) in acc.iter_mut().zip(dy).zip(x) {
                    *a = *a + dy * (x * rs);
                }
            }
            for (dw, a) in dw.iter_mut().zip(acc) {
                *dw = *dw + a;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    const EPS: f64 = 1e-5;

    fn forward(x: &[f64], w: &[f64], n: usize, d: usize) -> (Vec<f64>, Vec<f64>) {
        let mut y = vec![f64::NAN; n * d];
        let mut rstd = vec![f64::NAN; n];
        rmsnorm_forward(&mut y, &mut rstd, x, w, n, d, EPS);
        (y, rstd)
    }

    /// Forward against the formula written out directly; tolerance 1e-14 relative.
    #[test]
    fn rmsnorm_forward_matches_formula_f64() {
        let (n, d) = (40, 13);
        let mut rng = Rng::new(20);
        let x = rng.vec(n * d);
        let w = rng.vec(d);
        let (y, rstd) = forward(&x, &w, n, d);
        for r in 0..n {
            let row = &x[r * d..(r + 1) * d];
            let ms = row.iter().map(|v| v * v).sum::<f64>() / d as f64;
            let rs = 1.0 / (ms + EPS).sqrt();
            assert!((rstd[r] - rs).abs() < 1e-14 * rs);
            for j in 0..d {
                let want = row[j] * rs * w[j];
                assert!((y[r * d + j] - want).abs() < 1e-14 * (1.0 + want.abs()));
            }
        }
    }

    /// Gradient check of dx and dw (accumulating onto a random dw), tolerance [`GRAD_TOL`].
    /// n spans two row tasks and d two dw column tasks.
    #[test]
    fn rmsnorm_grad_check_f64() {
        let (n, d) = (35, 70);
        let mut rng = Rng::new(21);
        let x = rng.vec(n * d);
        let w = rng.vec(d);
        let r = rng.vec(n * d);
        let loss = |x: &[f64], w: &[f64]| dot(&forward(x, w, n, d).0, &r);
        let (_, rstd) = forward(&x, &w, n, d);
        let mut dx = vec![f64::NAN; n * d];
        let dw0 = rng.vec(d);
        let mut dw = dw0.clone();
        rmsnorm_backward(&mut dx, &mut dw, &r, &x, &w, &rstd, n, d);
        let dw: Vec<f64> = dw.iter().zip(&dw0).map(|(a, b)| a - b).collect();
        grad_check("dx", &x, &dx, |x| loss(x, &w));
        grad_check("dw", &w, &dw, |w| loss(&x, w));
    }

    /// f32 forward against f64, tolerance [`F32_TOL`].
    #[test]
    fn rmsnorm_forward_f32_matches_f64() {
        let (n, d) = (50, 288);
        let mut rng = Rng::new(22);
        let x = rng.vec(n * d);
        let w = rng.vec(d);
        let (y, rstd) = forward(&x, &w, n, d);
        let mut y32 = vec![0.0f32; n * d];
        let mut rstd32 = vec![0.0f32; n];
        rmsnorm_forward(
            &mut y32,
            &mut rstd32,
            &to_f32(&x),
            &to_f32(&w),
            n,
            d,
            EPS as f32,
        );
        assert!(max_rel_err(&y32, &y) < F32_TOL);
        assert!(max_rel_err(&rstd32, &rstd) < F32_TOL);
    }
}
