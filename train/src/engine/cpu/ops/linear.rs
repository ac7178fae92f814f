//! Linear layer without bias, with a PyTorch `nn.Linear` weight layout `w[out, in]`.
//!
//! Forward:  `y[n,out] = x[n,in] · wᵀ`
//! Backward: `dx[n,in] = dy[n,out] · w`      (overwritten)
//!           `dw[out,in] += dyᵀ · x[n,in]`   (accumulated, so several micro-batches can add up)
//!
//! All three products go through gemm, single-threaded, inside a fixed partition of output
//! rows: each output element is produced by exactly one gemm call whose shape depends only on
//! the tensor shapes, so the result is bitwise identical whatever the rayon thread count.

use rayon::prelude::*;

use super::{gemm_raw, Float};

/// Largest output tile per rayon task (rows × columns of the product). gemm repacks its
/// operands for every call, an overhead that scales like 1/rows + 1/cols of the work, so
/// tiles are as large as possible...
const MAX_TILE: (usize, usize) = (256, 512);
/// ...unless that leaves fewer than this many tasks, then they shrink (down to 64 × 64) so a
/// few cores stay busy. The tiling depends only on the shapes, never on the thread count.
const MIN_TILES: usize = 8;

/// Tile shape for an `m × n` product (a pure function of the shape).
fn tile_shape(m: usize, n: usize) -> (usize, usize) {
    let (mut tr, mut tc) = MAX_TILE;
    while m.div_ceil(tr) * n.div_ceil(tc) < MIN_TILES && (tr > 64 || tc > 64) {
        if tc >= tr && tc > 64 {
            tc /= 2;
        } else {
            tr /= 2;
        }
    }
    (tr, tc)
}

/// A pointer shared by tasks that write disjoint parts of one buffer.
struct SharedMut<T>(*mut T);
// SAFETY: only used to hand disjoint tiles of a `&mut [T]` to rayon tasks.
unsafe impl<T: Send> Send for SharedMut<T> {}
unsafe impl<T: Send> Sync for SharedMut<T> {}
impl<T> SharedMut<T> {
    // A method (not field access) so closures capture the Sync wrapper, not the raw pointer.
    fn get(&self) -> *mut T {
        self.0
    }
}

/// `c[m,n] = a·b` (or `c += a·b` when `accumulate`), `c` contiguous, `a` and `b` strided
/// views; parallel over a fixed grid of tiles of `c`, each one single-threaded gemm call.
#[allow(clippy::too_many_arguments)]
fn par_matmul<T: Float>(
    m: usize,
    n: usize,
    k: usize,
    c: &mut [T],
    a: &[T],
    a_rs: usize,
    a_cs: usize,
    b: &[T],
    b_rs: usize,
    b_cs: usize,
    accumulate: bool,
) {
    assert_eq!(c.len(), m * n, "par_matmul: c shape");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c.fill(T::zero());
        }
        return;
    }
    assert!(
        (m - 1) * a_rs + (k - 1) * a_cs < a.len(),
        "par_matmul: a too small"
    );
    assert!(
        (k - 1) * b_rs + (n - 1) * b_cs < b.len(),
        "par_matmul: b too small"
    );
    let (tr, tc) = tile_shape(m, n);
    let cols_of_tiles = n.div_ceil(tc);
    let c = SharedMut(c.as_mut_ptr());
    (0..m.div_ceil(tr) * cols_of_tiles)
        .into_par_iter()
        .for_each(|tile| {
            let (r0, c0) = (tile / cols_of_tiles * tr, tile % cols_of_tiles * tc);
            let (rows, cols) = (tr.min(m - r0), tc.min(n - c0));
            // SAFETY: all indices are in bounds (checked above, r0 < m, c0 < n), tiles are
            // disjoint so no two tasks touch the same element of c, and k > 0.
            unsafe {
                gemm_raw(
                    rows,
                    cols,
                    k,
                    c.get().add(r0 * n + c0),
                    n,
                    a.as_ptr().add(r0 * a_rs),
                    a_rs,
                    a_cs,
                    b.as_ptr().add(c0 * b_cs),
                    b_rs,
                    b_cs,
                    T::one(),
                    accumulate,
                )
            }
        });
}

/// `y[n,out] = x[n,in] · w[out,in]ᵀ`.
pub fn linear_forward<T: Float>(
    y: &mut [T],
    x: &[T],
    w: &[T],
    n: usize,
    in_dim: usize,
    out_dim: usize,
) {
    assert_eq!(y.len(), n * out_dim, "linear_forward: y shape");
    assert_eq!(x.len(), n * in_dim, "linear_forward: x shape");
    assert_eq!(w.len(), out_dim * in_dim, "linear_forward: w shape");
    // b = wᵀ: element (p, j) is w[j, p].
    par_matmul(n, out_dim, in_dim, y, x, in_dim, 1, w, 1, in_dim, false);
}

/// `y[n,out] += x[n,in] · w[out,in]ᵀ` (accumulates: a LoRA path adds onto the base's output).
pub fn linear_forward_add<T: Float>(
    y: &mut [T],
    x: &[T],
    w: &[T],
    n: usize,
    in_dim: usize,
    out_dim: usize,
) {
    assert_eq!(y.len(), n * out_dim, "linear_forward_add: y shape");
    assert_eq!(x.len(), n * in_dim, "linear_forward_add: x shape");
    assert_eq!(w.len(), out_dim * in_dim, "linear_forward_add: w shape");
    par_matmul(n, out_dim, in_dim, y, x, in_dim, 1, w, 1, in_dim, true);
}

/// `dx = dy · w` (overwrites `dx`), `dw += dyᵀ · x` (accumulates into `dw`).
#[allow(clippy::too_many_arguments)]
pub fn linear_backward<T: Float>(
    dx: &mut [T],
    dw: &mut [T],
    dy: &[T],
    x: &[T],
    w: &[T],
    n: usize,
    in_dim: usize,
    out_dim: usize,
) {
    linear_backward_input(dx, dy, w, n, in_dim, out_dim);
    linear_backward_weight(dw, dy, x, n, in_dim, out_dim);
}

/// `dx = dy · w` (overwrites `dx`): the input's gradient alone, for a frozen weight.
pub fn linear_backward_input<T: Float>(
    dx: &mut [T],
    dy: &[T],
    w: &[T],
    n: usize,
    in_dim: usize,
    out_dim: usize,
) {
    assert_eq!(dx.len(), n * in_dim, "linear_backward: dx shape");
    assert_eq!(dy.len(), n * out_dim, "linear_backward: dy shape");
    assert_eq!(w.len(), out_dim * in_dim, "linear_backward: w shape");
    par_matmul(n, in_dim, out_dim, dx, dy, out_dim, 1, w, in_dim, 1, false);
}

/// `dw += dyᵀ · x` (accumulates into `dw`): the weight's gradient alone.
pub fn linear_backward_weight<T: Float>(
    dw: &mut [T],
    dy: &[T],
    x: &[T],
    n: usize,
    in_dim: usize,
    out_dim: usize,
) {
    assert_eq!(dw.len(), out_dim * in_dim, "linear_backward: dw shape");
    assert_eq!(dy.len(), n * out_dim, "linear_backward: dy shape");
    assert_eq!(x.len(), n * in_dim, "linear_backward: x shape");
    // a = dyᵀ: element (o, r) is dy[r, o]. The reduction over the n rows stays inside one
    // gemm call per tile, so its order is fixed.
    par_matmul(out_dim, in_dim, n, dw, dy, 1, out_dim, x, in_dim, 1, true);
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    fn naive_forward(x: &[f64], w: &[f64], n: usize, i: usize, o: usize) -> Vec<f64> {
        let mut y = vec![0.0; n * o];
        for r in 0..n {
            for c in 0..o {
                let mut s = 0.0;
                for p in 0..i {
                    s += x[r * i + p] * w[c * i + p];
                }
                y[r * o + c] = s;
            }
        }
        y
    }

    /// Odd sizes exercise every gemm edge path; tolerance 1e-12 relative (f64 reordering).
    #[test]
    fn linear_forward_matches_naive_f64() {
        for &(n, i, o) in &[
            (37, 19, 23),
            (1, 1, 1),
            (130, 3, 200),
            (5, 64, 1),
            (600, 7, 1100),
        ] {
            let mut rng = Rng::new(10 + n as u64);
            let x = rng.vec(n * i);
            let w = rng.vec(o * i);
            let mut y = vec![f64::NAN; n * o];
            linear_forward(&mut y, &x, &w, n, i, o);
            let want = naive_forward(&x, &w, n, i, o);
            for (a, b) in y.iter().zip(&want) {
                assert!((a - b).abs() <= 1e-12 * (1.0 + b.abs()), "{a} vs {b}");
            }
        }
    }

    /// Backward against naive loops too (covers several dw and dx tasks).
    #[test]
    fn linear_backward_matches_naive_f64() {
        let (n, i, o) = (150, 21, 70);
        let mut rng = Rng::new(11);
        let x = rng.vec(n * i);
        let w = rng.vec(o * i);
        let dy = rng.vec(n * o);
        let dw0 = rng.vec(o * i);
        let mut dx = vec![f64::NAN; n * i];
        let mut dw = dw0.clone();
        linear_backward(&mut dx, &mut dw, &dy, &x, &w, n, i, o);
        for r in 0..n {
            for p in 0..i {
                let want: f64 = (0..o).map(|c| dy[r * o + c] * w[c * i + p]).sum();
                assert!((dx[r * i + p] - want).abs() <= 1e-12 * (1.0 + want.abs()));
            }
        }
        for c in 0..o {
            for p in 0..i {
                let want =
                    dw0[c * i + p] + (0..n).map(|r| dy[r * o + c] * x[r * i + p]).sum::<f64>();
                assert!((dw[c * i + p] - want).abs() <= 1e-12 * (1.0 + want.abs()));
            }
        }
    }

    /// Gradient check of both outputs of the backward, tolerance [`GRAD_TOL`].
    #[test]
    fn linear_grad_check_f64() {
        let (n, i, o) = (6, 5, 7);
        let mut rng = Rng::new(12);
        let x = rng.vec(n * i);
        let w = rng.vec(o * i);
        let r = rng.vec(n * o);
        let loss = |x: &[f64], w: &[f64]| {
            let mut y = vec![0.0; n * o];
            linear_forward(&mut y, x, w, n, i, o);
            dot(&y, &r)
        };
        let mut dx = vec![f64::NAN; n * i];
        let dw0 = rng.vec(o * i);
        let mut dw = dw0.clone();
        linear_backward(&mut dx, &mut dw, &r, &x, &w, n, i, o);
        let dw: Vec<f64> = dw.iter().zip(&dw0).map(|(a, b)| a - b).collect();
        grad_check("dx", &x, &dx, |x| loss(x, &w));
        grad_check("dw", &w, &dw, |w| loss(&x, w));
    }

    /// f32 forward against the f64 forward, tolerance [`F32_TOL`] (max-norm relative).
    #[test]
    fn linear_forward_f32_matches_f64() {
        let (n, i, o) = (70, 288, 40);
        let mut rng = Rng::new(13);
        let x = rng.vec(n * i);
        let w = rng.vec(o * i);
        let mut y = vec![0.0; n * o];
        linear_forward(&mut y, &x, &w, n, i, o);
        let mut y32 = vec![0.0f32; n * o];
        linear_forward(&mut y32, &to_f32(&x), &to_f32(&w), n, i, o);
        let err = max_rel_err(&y32, &y);
        assert!(err < F32_TOL, "rel err {err:e}");
    }

    /// Forward + backward in f32 are bitwise identical with 1 and 3 threads.
    #[test]
    fn linear_deterministic_across_thread_counts() {
        let (n, i, o) = (300, 40, 200);
        let mut rng = Rng::new(14);
        let x = to_f32(&rng.vec(n * i));
        let w = to_f32(&rng.vec(o * i));
        let dy = to_f32(&rng.vec(n * o));
        let run = |threads| {
            in_pool(threads, || {
                let mut y = vec![0.0f32; n * o];
                linear_forward(&mut y, &x, &w, n, i, o);
                let mut dx = vec![0.0f32; n * i];
                let mut dw = vec![0.5f32; o * i];
                linear_backward(&mut dx, &mut dw, &dy, &x, &w, n, i, o);
                (bits(&y), bits(&dx), bits(&dw))
            })
        };
        assert!(run(1) == run(3), "results differ between 1 and 3 threads");
    }

    /// Throughput of the f32 forward at a small Llama's MLP size, with the ambient pool, with
    /// one thread, and for one single-threaded gemm over the whole product (the ceiling of the
    /// one-thread figure); run with
    /// `cargo test -p ingot-train --release linear_forward_f32_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn linear_forward_f32_speed() {
        let (n, i, o) = (2048, 288, 768);
        let mut rng = Rng::new(15);
        let x = to_f32(&rng.vec(n * i));
        let w = to_f32(&rng.vec(o * i));
        let mut y = vec![0.0f32; n * o];
        let flop = 2.0 * (n * i * o) as f64;
        let mut time = |label: &str, f: &mut dyn FnMut(&mut [f32])| {
            f(&mut y);
            let iters = 40;
            let t0 = std::time::Instant::now();
            for _ in 0..iters {
                f(&mut y);
            }
            let s = t0.elapsed().as_secs_f64() / iters as f64;
            println!(
                "linear_forward f32 n={n} in={i} out={o}, {label}: {:.2} ms, {:.1} GFLOP/s",
                s * 1e3,
                flop / s / 1e9
            );
        };
        let threads = rayon::current_num_threads();
        time(&format!("{threads} threads"), &mut |y| {
            linear_forward(y, &x, &w, n, i, o)
        });
        time("1 thread", &mut |y| {
            in_pool(1, || linear_forward(y, &x, &w, n, i, o))
        });
        time("one whole gemm call", &mut |y| {
            super::super::matmul(n, o, i, y, o, &x, i, 1, &w, 1, i, 1.0, false)
        });
        let dy = to_f32(&rng.vec(n * o));
        let (mut dx, mut dw) = (vec![0.0f32; n * i], vec![0.0f32; o * i]);
        let iters = 20;
        let t0 = std::time::Instant::now();
        for _ in 0..iters {
            linear_backward(&mut dx, &mut dw, &dy, &x, &w, n, i, o);
        }
        let s = t0.elapsed().as_secs_f64() / iters as f64;
        println!(
            "linear_backward f32 (dx and dw), {threads} threads: {:.2} ms, {:.1} GFLOP/s",
            s * 1e3,
            2.0 * flop / s / 1e9
        );
    }
}
