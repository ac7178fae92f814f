//! SwiGLU gate of the Llama MLP, elementwise on `g` (gate_proj output) and `u` (up_proj):
//!
//! ```text
//! σ(g)   = 1 / (1 + e^(−g))
//! a      = silu(g) · u = g·σ(g) · u
//! dg     = da · u · σ(g) · (1 + g·(1 − σ(g)))     (d silu/dg)
//! du     = da · silu(g)
//! ```
//!
//! Nothing is saved: the backward recomputes σ(g) from `g`.

use rayon::prelude::*;

use super::{Float, ELEMS_PER_TASK};

#[inline]
fn sigmoid<T: Float>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

/// `a = silu(g) · u`.
pub fn swiglu_forward<T: Float>(a: &mut [T], g: &[T], u: &[T]) {
    assert_eq!(a.len(), g.len(), "swiglu_forward: a/g length");
    assert_eq!(a.len(), u.len(), "swiglu_forward: a/u length");
    a.par_chunks_mut(ELEMS_PER_TASK)
        .zip(g.par_chunks(ELEMS_PER_TASK))
        .zip(u.par_chunks(ELEMS_PER_TASK))
        .for_each(|((a, g), u)| {
            for ((a, &g), &u) in a.iter_mut().zip(g).zip(u) {
                *a = g * sigmoid(g) * u;
            }
        });
}

/// Overwrites `dg` and `du` with the gradients of `a = silu(g) · u`.
pub fn swiglu_backward<T: Float>(dg: &mut [T], du: &mut [T], da: &[T], g: &[T], u: &[T]) {
    let n = da.len();
    assert!(
        dg.len() == n && du.len() == n && g.len() == n && u.len() == n,
        "swiglu_backward: length mismatch"
    );
    dg.par_chunks_mut(ELEMS_PER_TASK)
        .zip(du.par_chunks_mut(ELEMS_PER_TASK))
        .zip(da.par_chunks(ELEMS_PER_TASK))
        .zip(
            g.par_chunks(ELEMS_PER_TASK)
                .zip(u.par_chunks(ELEMS_PER_TASK)),
        )
        .for_each(|(((dg, du), da), (g, u))| {
            for i in 0..dg.len() {
                let (g, u, da) = (g[i], u[i], da[i]);
                let s = sigmoid(g);
                let silu = g * s;
                du[i] = da * silu;
                dg[i] = da * u * s * (T::one() + g * (T::one() - s));
            }
        });
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    /// Gradient check of dg and du, tolerance [`GRAD_TOL`]; inputs in [−4, 4) reach the tails.
    #[test]
    fn swiglu_grad_check_f64() {
        let mut rng = Rng::new(40);
        let n = 50;
        let g: Vec<f64> = rng.vec(n).iter().map(|v| 4.0 * v).collect();
        let u = rng.vec(n);
        let r = rng.vec(n);
        let loss = |g: &[f64], u: &[f64]| {
            let mut a = vec![0.0; n];
            swiglu_forward(&mut a, g, u);
            dot(&a, &r)
        };
        let mut dg = vec![f64::NAN; n];
        let mut du = vec![f64::NAN; n];
        swiglu_backward(&mut dg, &mut du, &r, &g, &u);
        grad_check("dg", &g, &dg, |g| loss(g, &u));
        grad_check("du", &u, &du, |u| loss(&g, u));
    }

    /// f32 forward against f64 (several tasks), tolerance [`F32_TOL`].
    #[test]
    fn swiglu_forward_f32_matches_f64() {
        let mut rng = Rng::new(41);
        let n = 40_000;
        let g: Vec<f64> = rng.vec(n).iter().map(|v| 8.0 * v).collect();
        let u = rng.vec(n);
        let mut a = vec![0.0; n];
        swiglu_forward(&mut a, &g, &u);
        for i in 0..n {
            let want = g[i] / (1.0 + (-g[i]).exp()) * u[i];
            assert!((a[i] - want).abs() < 1e-15);
        }
        let mut a32 = vec![0.0f32; n];
        swiglu_forward(&mut a32, &to_f32(&g), &to_f32(&u));
        assert!(max_rel_err(&a32, &a) < F32_TOL);
    }
}
