//! CPU reference operations of the Llama trainer, one file per layer family (llm.c style).
//!
//! Conventions shared by every file:
//! - tensors are row-major slices; shapes are passed explicitly;
//! - everything is generic over [`Float`] so the same code runs in f64 for gradient checks;
//! - results are bitwise identical whatever the rayon thread count: work is split into
//!   partitions whose size depends only on the shapes (never on the number of threads),
//!   every reduction runs in a fixed order, and gemm is always called single-threaded
//!   (`Parallelism::None`) inside such a partition.

pub mod attention;
pub mod cross_entropy;
pub mod embedding;
pub mod linear;
pub mod rmsnorm;
pub mod rope;
pub mod swiglu;

pub use attention::*;
pub use cross_entropy::*;
pub use embedding::*;
pub use linear::*;
pub use rmsnorm::*;
pub use rope::*;
pub use swiglu::*;

use rayon::prelude::*;

/// The element types the ops run in: f32 for training, f64 for gradient checks.
pub trait Float:
    num_traits::Float + Send + Sync + Default + std::fmt::Debug + std::iter::Sum + 'static
{
}

impl Float for f32 {}
impl Float for f64 {}

/// Elements per rayon task for elementwise ops: large enough to amortise scheduling,
/// fixed so the partition never depends on the thread count.
pub(crate) const ELEMS_PER_TASK: usize = 1 << 14;

/// `a += b`, elementwise.
pub fn add_inplace<T: Float>(a: &mut [T], b: &[T]) {
    assert_eq!(a.len(), b.len(), "add_inplace: length mismatch");
    a.par_chunks_mut(ELEMS_PER_TASK)
        .zip(b.par_chunks(ELEMS_PER_TASK))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, &b)| *a = *a + b));
}

/// Converts an f64 constant to `T` (exact for f64, rounded for f32).
#[inline]
pub(crate) fn cast<T: Float>(x: f64) -> T {
    T::from(x).expect("f64 constant representable in T")
}

/// Single-threaded `c[m,n] = scale·(a[m,k]·b[k,n])`, or `c += scale·(a·b)` when `accumulate`.
///
/// `a` and `b` are strided views (row stride, column stride) so transposes cost nothing; `c`
/// has unit column stride and row stride `c_rs`. Bounds are checked here so callers stay safe.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    c_rs: usize,
    a: &[T],
    a_rs: usize,
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    b_cs: usize,
    scale: T,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!((m - 1) * c_rs + n <= c.len(), "matmul: c too small");
    if k == 0 {
        // gemm would handle this too, but being explicit keeps the empty product exactly 0.
        if !accumulate {
            for r in 0..m {
                c[r * c_rs..r * c_rs + n].fill(T::zero());
            }
        }
        return;
    }
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "matmul: a too small"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "matmul: b too small"
    );
    // SAFETY: every index gemm touches lies inside the slices (checked above); `c` is a
    // unique borrow so it cannot alias `a` or `b`.
    unsafe {
        gemm_raw(
            m,
            n,
            k,
            c.as_mut_ptr(),
            c_rs,
            a.as_ptr(),
            a_rs,
            a_cs,
            b.as_ptr(),
            b_rs,
            b_cs,
            scale,
            accumulate,
        )
    }
}

/// [`matmul`] on raw pointers (for callers writing disjoint tiles of one buffer from
/// several threads), always single-threaded inside gemm.
///
/// # Safety
/// Every element `c[r·c_rs + j]`, `a[r·a_rs + p·a_cs]`, `b[p·b_rs + j·b_cs]` for `r < m`,
/// `j < n`, `p < k` must be valid, `c`'s elements must not be read or written by anyone
/// else during the call, and `k` must be positive.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: *mut T,
    c_rs: usize,
    a: *const T,
    a_rs: usize,
    a_cs: usize,
    b: *const T,
    b_rs: usize,
    b_cs: usize,
    scale: T,
    accumulate: bool,
) {
    // gemm computes dst = alpha·dst + beta·(lhs·rhs); alpha is ignored when !read_dst.
    // T is f32 or f64 (the only `Float` impls), the types gemm dispatches on.
    gemm::gemm(
        m,
        n,
        k,
        c,
        1,
        c_rs as isize,
        accumulate,
        a,
        a_cs as isize,
        a_rs as isize,
        b,
        b_cs as isize,
        b_rs as isize,
        T::one(),
        scale,
        false,
        false,
        false,
        gemm::Parallelism::None,
    );
}

/// Helpers shared by the tests of every op file.
#[cfg(test)]
pub(crate) mod test_util {
    use super::Float;

    /// The model's SplitMix64 with the helpers these tests use.
    pub struct Rng(crate::model::init::Rng);

    impl Rng {
        pub fn new(seed: u64) -> Self {
            Rng(crate::model::init::Rng(seed))
        }

        pub fn next_u64(&mut self) -> u64 {
            self.0.next_u64()
        }

        /// Uniform in [-1, 1).
        pub fn uniform(&mut self) -> f64 {
            (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }

        pub fn vec(&mut self, len: usize) -> Vec<f64> {
            (0..len).map(|_| self.uniform()).collect()
        }

        pub fn below(&mut self, n: u32) -> u32 {
            (self.next_u64() % n as u64) as u32
        }
    }

    pub fn to_f32(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&x| x as f32).collect()
    }

    /// `sum(a ⊙ b)` in f64: the scalar loss the gradient checks differentiate.
    pub fn dot<T: Float>(a: &[T], b: &[T]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(&a, &b)| a.to_f64().unwrap() * b.to_f64().unwrap())
            .sum()
    }

    /// Central finite difference step for f64 gradient checks: its truncation error
    /// (~eps²·f'''/6, about 1e-11) and its rounding error (~ulp(loss)/eps, about 1e-10 for
    /// losses of a few tens) both stay far below [`GRAD_TOL`]; 1e-6 also passes, with less margin.
    pub const FD_EPS: f64 = 1e-5;
    /// Tolerance of the gradient checks: |analytic − numeric| / max(|analytic|, |numeric|, 1e-2)
    /// must stay below this. The 1e-2 floor makes it an absolute 1e-8 for tiny gradients,
    /// whose finite differences are dominated by rounding. Observed worst: about 7e-8.
    pub const GRAD_TOL: f64 = 1e-6;

    /// Checks `analytic` (the gradient of `loss` at `x`) against central differences,
    /// perturbing every element of `x`. Returns the worst relative error seen.
    pub fn grad_check(
        name: &str,
        x: &[f64],
        analytic: &[f64],
        mut loss: impl FnMut(&[f64]) -> f64,
    ) -> f64 {
        assert_eq!(x.len(), analytic.len(), "{name}: gradient length");
        let mut xp = x.to_vec();
        let mut worst = 0.0f64;
        for i in 0..x.len() {
            xp[i] = x[i] + FD_EPS;
            let lp = loss(&xp);
            xp[i] = x[i] - FD_EPS;
            let lm = loss(&xp);
            xp[i] = x[i];
            let numeric = (lp - lm) / (2.0 * FD_EPS);
            let a = analytic[i];
            let err = (a - numeric).abs() / a.abs().max(numeric.abs()).max(1e-2);
            assert!(
                err < GRAD_TOL,
                "{name}[{i}]: analytic {a:e} vs numeric {numeric:e} (rel err {err:e})"
            );
            worst = worst.max(err);
        }
        eprintln!(
            "grad check {name}: {} elements, worst rel err {worst:.1e}",
            x.len()
        );
        worst
    }

    /// Tolerance of the f32-vs-f64 forward comparisons, relative to the largest |reference|.
    pub const F32_TOL: f64 = 1e-5;

    /// max|a − b| / max|b|: the f32 result against the f64 reference.
    pub fn max_rel_err(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0.0f64, |m, &x| m.max(x.abs())).max(1e-30);
        let diff = a
            .iter()
            .zip(b)
            .fold(0.0f64, |m, (&a, &b)| m.max((a as f64 - b).abs()));
        diff / scale
    }

    /// Runs `f` inside a rayon pool of `threads` threads.
    pub fn in_pool<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("rayon pool")
            .install(f)
    }

    pub fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::test_util::Rng;
    use super::*;

    #[test]
    fn add_inplace_adds() {
        let mut rng = Rng::new(1);
        let a0 = rng.vec(40_000);
        let b = rng.vec(40_000);
        let mut a = a0.clone();
        add_inplace(&mut a, &b);
        for i in 0..a.len() {
            assert_eq!(a[i], a0[i] + b[i]);
        }
    }

    #[test]
    fn matmul_strided_matches_naive() {
        let mut rng = Rng::new(2);
        let (m, n, k) = (7, 5, 9);
        // a stored transposed (k×m), b stored normally (k×n), c with padded rows.
        let at = rng.vec(k * m);
        let b = rng.vec(k * n);
        let c0 = rng.vec(m * (n + 3));
        let mut c = c0.clone();
        matmul(m, n, k, &mut c, n + 3, &at, 1, m, &b, n, 1, 0.5, true);
        for r in 0..m {
            for col in 0..n + 3 {
                let want = if col < n {
                    c0[r * (n + 3) + col]
                        + 0.5 * (0..k).map(|p| at[p * m + r] * b[p * n + col]).sum::<f64>()
                } else {
                    c0[r * (n + 3) + col]
                };
                assert!((c[r * (n + 3) + col] - want).abs() < 1e-12);
            }
        }
    }
}
