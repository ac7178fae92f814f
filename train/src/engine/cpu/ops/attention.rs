//! Causal self-attention with grouped-query heads (GQA).
//!
//! `q` is `[b*t, nh*hd]`, `k` and `v` are `[b*t, nkv*hd]`; query head `h` reads kv head
//! `h / (nh/nkv)`. Per (sequence, query head), with `s = 1/sqrt(hd)`:
//!
//! ```text
//! S = s · Q·Kᵀ,   P = softmax_row(S masked to j ≤ i),   O = P·V
//! ```
//!
//! Backward (P saved by the forward, zeros above the diagonal):
//!
//! ```text
//! dP  = dO·Vᵀ
//! dS  = P ⊙ (dP − rowsum(P ⊙ dP)) · s        (softmax backward, scale folded in)
//! dQ  = dS·K,   dK = Σ_group dSᵀ·Q,   dV = Σ_group Pᵀ·dO
//! ```
//!
//! The products run through gemm on row blocks of `BLOCK` queries: block `[i0, i1)` only
//! needs keys `[0, i1)`, which skips most of the masked upper triangle. The forward is
//! parallel over (sequence, query head); the backward over (sequence, kv head), looping over
//! the query heads of the group in order so dK and dV accumulate in a fixed order. Each task
//! writes into its own buffers, scattered into the strided outputs afterwards.

use rayon::prelude::*;

use super::{cast, matmul, Float};

/// Query rows per gemm block (also the key block of the backward's dK/dV products).
const BLOCK: usize = 64;

#[allow(clippy::too_many_arguments)]
fn check_shapes<T>(
    q: &[T],
    k: &[T],
    v: &[T],
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    assert!(
        nkv > 0 && nh / nkv * nkv == nh,
        "attention: nh ({nh}) must be a multiple of nkv ({nkv})"
    );
    assert!(hd > 0, "attention: head dim must be positive");
    assert_eq!(q.len(), b * t * nh * hd, "attention: q shape");
    assert_eq!(k.len(), b * t * nkv * hd, "attention: k shape");
    assert_eq!(v.len(), b * t * nkv * hd, "attention: v shape");
}

/// Writes `out[b*t, nh*hd]` and the softmax probabilities `probs[b, nh, t, t]`.
#[allow(clippy::too_many_arguments)]
pub fn attention_forward<T: Float>(
    out: &mut [T],
    probs: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    forward_blocked(out, probs, q, k, v, b, t, nh, nkv, hd, BLOCK);
}

#[allow(clippy::too_many_arguments)]
fn forward_blocked<T: Float>(
    out: &mut [T],
    probs: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    block: usize,
) {
    check_shapes(q, k, v, b, t, nh, nkv, hd);
    assert_eq!(out.len(), q.len(), "attention_forward: out shape");
    assert_eq!(
        probs.len(),
        b * nh * t * t,
        "attention_forward: probs shape"
    );
    if t == 0 || b == 0 {
        return;
    }
    let group = nh / nkv;
    let (qw, kw) = (nh * hd, nkv * hd);
    let scale: T = cast(1.0 / (hd as f64).sqrt());
    // Per (sequence, head) output [t, hd], contiguous; scattered into `out` below.
    let mut o_all = vec![T::zero(); b * nh * t * hd];
    probs
        .par_chunks_mut(t * t)
        .zip(o_all.par_chunks_mut(t * hd))
        .enumerate()
        .for_each(|(bh, (p, o))| {
            let (bi, h) = (bh / nh, bh % nh);
            let qs = &q[bi * t * qw + h * hd..];
            let kv_base = bi * t * kw + (h / group) * hd;
            let (ks, vs) = (&k[kv_base..], &v[kv_base..]);
            for i0 in (0..t).step_by(block) {
                let i1 = (i0 + block).min(t);
                let rows = i1 - i0;
                // S[i0..i1, 0..i1] = s · Q[i0..i1] · K[0..i1]ᵀ, straight into probs.
                matmul(
                    rows,
                    i1,
                    hd,
                    &mut p[i0 * t..],
                    t,
                    &qs[i0 * qw..],
                    qw,
                    1,
                    ks,
                    1,
                    kw,
                    scale,
                    false,
                );
                for i in i0..i1 {
                    let row = &mut p[i * t..(i + 1) * t];
                    let (live, masked) = row.split_at_mut(i + 1);
                    softmax_in_place(live);
                    masked.fill(T::zero());
                }
                // O[i0..i1] = P[i0..i1, 0..i1] · V[0..i1] (P is zero above the diagonal).
                matmul(
                    rows,
                    hd,
                    i1,
                    &mut o[i0 * hd..],
                    hd,
                    &p[i0 * t..],
                    t,
                    1,
                    vs,
                    kw,
                    1,
                    T::one(),
                    false,
                );
            }
        });
    out.par_chunks_mut(qw).enumerate().for_each(|(row, out)| {
        let (bi, i) = (row / t, row % t);
        for (h, out) in out.chunks_mut(hd).enumerate() {
            let src = ((bi * nh + h) * t + i) * hd;
            out.copy_from_slice(&o_all[src..src + hd]);
        }
    });
}

/// Attention of `n` new query rows of one sequence, at positions `past..past+n`, over a
/// key/value cache whose first `past + n` rows hold positions `0..past+n` (`k`, `v`:
/// `[rows ≥ past+n, nkv*hd]`). Writes `out[n, nh*hd]`; row `i` attends to `0..=past+i`, as in
/// the causal forward. Parallel over (row, head); each output is one task's, in a fixed order.
#[allow(clippy::too_many_arguments)]
pub fn attention_cached<T: Float>(
    out: &mut [T],
    q: &[T],
    k: &[T],
    v: &[T],
    n: usize,
    past: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    assert!(
        nkv > 0 && hd > 0 && nh / nkv * nkv == nh,
        "attention_cached: nh ({nh}) must be a multiple of nkv ({nkv})"
    );
    let (qw, kw) = (nh * hd, nkv * hd);
    assert_eq!(q.len(), n * qw, "attention_cached: q shape");
    assert_eq!(out.len(), n * qw, "attention_cached: out shape");
    assert!(
        k.len() >= (past + n) * kw && v.len() >= (past + n) * kw,
        "attention_cached: the cache holds fewer than past + n rows"
    );
    let group = nh / nkv;
    let scale: T = cast(1.0 / (hd as f64).sqrt());
    out.par_chunks_mut(hd).enumerate().for_each(|(row, o)| {
        let (i, h) = (row / nh, row % nh);
        let qi = &q[i * qw + h * hd..i * qw + (h + 1) * hd];
        let kv_col = (h / group) * hd;
        let keys = past + i + 1;
        let mut p: Vec<T> = (0..keys)
            .map(|j| {
                let kj = &k[j * kw + kv_col..j * kw + kv_col + hd];
                qi.iter()
                    .zip(kj)
                    .fold(T::zero(), |acc, (&a, &b)| acc + a * b)
                    * scale
            })
            .collect();
        softmax_in_place(&mut p);
        o.fill(T::zero());
        for (j, &pj) in p.iter().enumerate() {
            let vj = &v[j * kw + kv_col..j * kw + kv_col + hd];
            o.iter_mut().zip(vj).for_each(|(o, &x)| *o = *o + pj * x);
        }
    });
}

/// Numerically stable softmax of one row, in place, summing left to right.
fn softmax_in_place<T: Float>(row: &mut [T]) {
    let m = row.iter().fold(T::neg_infinity(), |m, &x| m.max(x));
    let mut sum = T::zero();
    for x in row.iter_mut() {
        *x = (*x - m).exp();
        sum = sum + *x;
    }
    for x in row.iter_mut() {
        *x = *x / sum;
    }
}

/// Overwrites `dq`, `dk`, `dv` with the gradients given `dout` and the saved `probs`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dout: &[T],
    probs: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    backward_blocked(dq, dk, dv, dout, probs, q, k, v, b, t, nh, nkv, hd, BLOCK);
}

/// Gradients of one (sequence, kv head) task: dq of its query heads `[group, t, hd]`, then
/// dk and dv `[t, hd]`.
type TaskGrads<T> = (Vec<T>, Vec<T>, Vec<T>);

#[allow(clippy::too_many_arguments)]
fn backward_blocked<T: Float>(
    dq: &mut [T],
    dk: &mut [T],
    dv: &mut [T],
    dout: &[T],
    probs: &[T],
    q: &[T],
    k: &[T],
    v: &[T],
    b: usize,
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
    block: usize,
) {
    check_shapes(q, k, v, b, t, nh, nkv, hd);
    assert_eq!(dq.len(), q.len(), "attention_backward: dq shape");
    assert_eq!(dk.len(), k.len(), "attention_backward: dk shape");
    assert_eq!(dv.len(), v.len(), "attention_backward: dv shape");
    assert_eq!(dout.len(), q.len(), "attention_backward: dout shape");
    assert_eq!(
        probs.len(),
        b * nh * t * t,
        "attention_backward: probs shape"
    );
    if t == 0 || b == 0 {
        return;
    }
    let group = nh / nkv;
    let (qw, kw) = (nh * hd, nkv * hd);
    let scale: T = cast(1.0 / (hd as f64).sqrt());
    let grads: Vec<TaskGrads<T>> = (0..b * nkv)
        .into_par_iter()
        .map(|task| {
            let (bi, g) = (task / nkv, task % nkv);
            let kv_base = bi * t * kw + g * hd;
            let (ks, vs) = (&k[kv_base..], &v[kv_base..]);
            let mut dq_loc = vec![T::zero(); group * t * hd];
            let mut dk_loc = vec![T::zero(); t * hd];
            let mut dv_loc = vec![T::zero(); t * hd];
            // dS of the current head; only the blocks' live region [i, 0..i1) is ever read.
            let mut ds = vec![T::zero(); t * t];
            for (hh, dq_h) in dq_loc.chunks_mut(t * hd).enumerate() {
                let h = g * group + hh;
                let p = &probs[(bi * nh + h) * t * t..][..t * t];
                let q_base = bi * t * qw + h * hd;
                let (qs, dos) = (&q[q_base..], &dout[q_base..]);
                for i0 in (0..t).step_by(block) {
                    let i1 = (i0 + block).min(t);
                    let rows = i1 - i0;
                    // dP[i0..i1, 0..i1] = dO[i0..i1] · V[0..i1]ᵀ
                    matmul(
                        rows,
                        i1,
                        hd,
                        &mut ds[i0 * t..],
                        t,
                        &dos[i0 * qw..],
                        qw,
                        1,
                        vs,
                        1,
                        kw,
                        T::one(),
                        false,
                    );
                    for i in i0..i1 {
                        let pr = &p[i * t..i * t + i + 1];
                        let (live, masked) = ds[i * t..i * t + i1].split_at_mut(i + 1);
                        let d = pr
                            .iter()
                            .zip(live.iter())
                            .fold(T::zero(), |acc, (&p, &dp)| acc + p * dp);
                        for (x, &p) in live.iter_mut().zip(pr) {
                            *x = p * (*x - d) * scale;
                        }
                        // Keeps the diagonal block's upper triangle zero for dK below.
                        masked.fill(T::zero());
                    }
                    // dQ[i0..i1] = dS[i0..i1, 0..i1] · K[0..i1]
                    matmul(
                        rows,
                        hd,
                        i1,
                        &mut dq_h[i0 * hd..],
                        hd,
                        &ds[i0 * t..],
                        t,
                        1,
                        ks,
                        kw,
                        1,
                        T::one(),
                        false,
                    );
                }
                // Key block [j0, j1) receives from queries [j0, t) only (causality).
                let first = hh == 0;
                for j0 in (0..t).step_by(block) {
                    let cols = (j0 + block).min(t) - j0;
                    let from = j0 * t + j0;
                    // dK[j0..j1] (+)= dS[j0..t, j0..j1]ᵀ · Q[j0..t]
                    matmul(
                        cols,
                        hd,
                        t - j0,
                        &mut dk_loc[j0 * hd..],
                        hd,
                        &ds[from..],
                        1,
                        t,
                        &qs[j0 * qw..],
                        qw,
                        1,
                        T::one(),
                        !first,
                    );
                    // dV[j0..j1] (+)= P[j0..t, j0..j1]ᵀ · dO[j0..t]
                    matmul(
                        cols,
                        hd,
                        t - j0,
                        &mut dv_loc[j0 * hd..],
                        hd,
                        &p[from..],
                        1,
                        t,
                        &dos[j0 * qw..],
                        qw,
                        1,
                        T::one(),
                        !first,
                    );
                }
            }
            (dq_loc, dk_loc, dv_loc)
        })
        .collect();
    dq.par_chunks_mut(qw).enumerate().for_each(|(row, dq)| {
        let (bi, i) = (row / t, row % t);
        for (h, dq) in dq.chunks_mut(hd).enumerate() {
            let src = ((h % group) * t + i) * hd;
            dq.copy_from_slice(&grads[bi * nkv + h / group].0[src..src + hd]);
        }
    });
    dk.par_chunks_mut(kw)
        .zip(dv.par_chunks_mut(kw))
        .enumerate()
        .for_each(|(row, (dk, dv))| {
            let (bi, i) = (row / t, row % t);
            for (g, (dk, dv)) in dk.chunks_mut(hd).zip(dv.chunks_mut(hd)).enumerate() {
                let task = &grads[bi * nkv + g];
                dk.copy_from_slice(&task.1[i * hd..(i + 1) * hd]);
                dv.copy_from_slice(&task.2[i * hd..(i + 1) * hd]);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    struct Shape {
        b: usize,
        t: usize,
        nh: usize,
        nkv: usize,
        hd: usize,
    }

    /// The shape the brief asks the gradient check to cover.
    const SMALL: Shape = Shape {
        b: 2,
        t: 5,
        nh: 4,
        nkv: 2,
        hd: 4,
    };

    fn inputs(s: &Shape, seed: u64) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let mut rng = Rng::new(seed);
        let q = rng.vec(s.b * s.t * s.nh * s.hd);
        let k = rng.vec(s.b * s.t * s.nkv * s.hd);
        let v = rng.vec(s.b * s.t * s.nkv * s.hd);
        (q, k, v)
    }

    fn forward<T: Float>(q: &[T], k: &[T], v: &[T], s: &Shape, block: usize) -> (Vec<T>, Vec<T>) {
        let mut out = vec![T::nan(); q.len()];
        let mut probs = vec![T::nan(); s.b * s.nh * s.t * s.t];
        forward_blocked(
            &mut out, &mut probs, q, k, v, s.b, s.t, s.nh, s.nkv, s.hd, block,
        );
        (out, probs)
    }

    /// Direct loops, one query at a time.
    fn naive_forward(q: &[f64], k: &[f64], v: &[f64], s: &Shape) -> (Vec<f64>, Vec<f64>) {
        let (t, hd) = (s.t, s.hd);
        let (qw, kw) = (s.nh * hd, s.nkv * hd);
        let mut out = vec![0.0; q.len()];
        let mut probs = vec![0.0; s.b * s.nh * t * t];
        for bi in 0..s.b {
            for h in 0..s.nh {
                let g = h / (s.nh / s.nkv);
                for i in 0..t {
                    let qi = &q[(bi * t + i) * qw + h * hd..][..hd];
                    let sc: Vec<f64> = (0..=i)
                        .map(|j| {
                            let kj = &k[(bi * t + j) * kw + g * hd..][..hd];
                            qi.iter().zip(kj).map(|(a, b)| a * b).sum::<f64>() / (hd as f64).sqrt()
                        })
                        .collect();
                    let m = sc.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let z: f64 = sc.iter().map(|x| (x - m).exp()).sum();
                    for j in 0..=i {
                        let p = (sc[j] - m).exp() / z;
                        probs[((bi * s.nh + h) * t + i) * t + j] = p;
                        for d in 0..hd {
                            out[(bi * t + i) * qw + h * hd + d] +=
                                p * v[(bi * t + j) * kw + g * hd + d];
                        }
                    }
                }
            }
        }
        (out, probs)
    }

    fn assert_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= tol * (1.0 + y.abs()),
                "{what}[{i}]: {x} vs {y}"
            );
        }
    }

    /// Forward (out and probs, zeros above the diagonal) against the naive loops, tolerance
    /// 1e-12, with the production block and with tiny blocks (many partial blocks).
    #[test]
    fn attention_forward_matches_naive_f64() {
        for s in [
            SMALL,
            Shape {
                b: 1,
                t: 70,
                nh: 3,
                nkv: 1,
                hd: 5,
            },
        ] {
            let (q, k, v) = inputs(&s, 70);
            let (out_ref, probs_ref) = naive_forward(&q, &k, &v, &s);
            for block in [BLOCK, 2, 3] {
                let (out, probs) = forward(&q, &k, &v, &s, block);
                assert_close(&out, &out_ref, 1e-12, "out");
                assert_close(&probs, &probs_ref, 1e-12, "probs");
            }
        }
    }

    /// The cached attention of rows `past..t` equals those rows of the naive causal forward
    /// (tolerance 1e-12), for a prefill (past 0), a middle chunk and single rows, with GQA.
    #[test]
    fn attention_cached_equals_the_causal_forward_f64() {
        let s = Shape {
            b: 1,
            t: 13,
            nh: 4,
            nkv: 2,
            hd: 6,
        };
        let (q, k, v) = inputs(&s, 72);
        let (out_ref, _) = naive_forward(&q, &k, &v, &s);
        let qw = s.nh * s.hd;
        for (past, n) in [(0, 13), (0, 5), (5, 4), (9, 1), (12, 1)] {
            let mut out = vec![f64::NAN; n * qw];
            let rows = &q[past * qw..(past + n) * qw];
            attention_cached(&mut out, rows, &k, &v, n, past, s.nh, s.nkv, s.hd);
            assert_close(&out, &out_ref[past * qw..(past + n) * qw], 1e-12, "out");
        }
    }

    /// Gradient check of dq, dk, dv for b=2, nh=4, nkv=2, t=5, hd=4, tolerance [`GRAD_TOL`];
    /// with the production block (one block) and block 2 (multi-block dK/dV paths).
    #[test]
    fn attention_grad_check_f64() {
        let s = SMALL;
        let (q, k, v) = inputs(&s, 71);
        let r = Rng::new(72).vec(q.len());
        for block in [BLOCK, 2] {
            let loss = |q: &[f64], k: &[f64], v: &[f64]| dot(&forward(q, k, v, &s, block).0, &r);
            let (_, probs) = forward(&q, &k, &v, &s, block);
            let mut dq = vec![f64::NAN; q.len()];
            let mut dk = vec![f64::NAN; k.len()];
            let mut dv = vec![f64::NAN; v.len()];
            backward_blocked(
                &mut dq, &mut dk, &mut dv, &r, &probs, &q, &k, &v, s.b, s.t, s.nh, s.nkv, s.hd,
                block,
            );
            grad_check("dq", &q, &dq, |q| loss(q, &k, &v));
            grad_check("dk", &k, &dk, |k| loss(&q, k, &v));
            grad_check("dv", &v, &dv, |v| loss(&q, &k, v));
        }
    }

    /// The public backward (several 64-row blocks at t=150) agrees with block 7, tolerance 1e-12.
    #[test]
    fn attention_backward_block_independent_f64() {
        let s = Shape {
            b: 1,
            t: 150,
            nh: 2,
            nkv: 1,
            hd: 3,
        };
        let (q, k, v) = inputs(&s, 73);
        let r = Rng::new(74).vec(q.len());
        let (_, probs) = forward(&q, &k, &v, &s, BLOCK);
        let run = |block| {
            let mut g = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
            backward_blocked(
                &mut g.0, &mut g.1, &mut g.2, &r, &probs, &q, &k, &v, s.b, s.t, s.nh, s.nkv, s.hd,
                block,
            );
            g
        };
        let (a, b) = (run(BLOCK), run(7));
        assert_close(&a.0, &b.0, 1e-12, "dq");
        assert_close(&a.1, &b.1, 1e-12, "dk");
        assert_close(&a.2, &b.2, 1e-12, "dv");
    }

    /// f32 forward against f64, tolerance [`F32_TOL`].
    #[test]
    fn attention_forward_f32_matches_f64() {
        let s = Shape {
            b: 2,
            t: 100,
            nh: 4,
            nkv: 2,
            hd: 16,
        };
        let (q, k, v) = inputs(&s, 75);
        let (out, probs) = forward(&q, &k, &v, &s, BLOCK);
        let (out32, probs32) = forward(&to_f32(&q), &to_f32(&k), &to_f32(&v), &s, BLOCK);
        let e = max_rel_err(&out32, &out);
        assert!(e < F32_TOL, "out rel err {e:e}");
        let e = max_rel_err(&probs32, &probs);
        assert!(e < F32_TOL, "probs rel err {e:e}");
    }

    /// Forward + backward in f32 are bitwise identical with 1 and 3 threads.
    #[test]
    fn attention_deterministic_across_thread_counts() {
        let s = Shape {
            b: 2,
            t: 150,
            nh: 4,
            nkv: 2,
            hd: 8,
        };
        let (q, k, v) = inputs(&s, 76);
        let (q, k, v) = (to_f32(&q), to_f32(&k), to_f32(&v));
        let dout = to_f32(&Rng::new(77).vec(q.len()));
        let run = |threads| {
            in_pool(threads, || {
                let mut out = vec![0.0f32; q.len()];
                let mut probs = vec![0.0f32; s.b * s.nh * s.t * s.t];
                attention_forward(
                    &mut out, &mut probs, &q, &k, &v, s.b, s.t, s.nh, s.nkv, s.hd,
                );
                let mut dq = vec![0.0f32; q.len()];
                let mut dk = vec![0.0f32; k.len()];
                let mut dv = vec![0.0f32; v.len()];
                attention_backward(
                    &mut dq, &mut dk, &mut dv, &dout, &probs, &q, &k, &v, s.b, s.t, s.nh, s.nkv,
                    s.hd,
                );
                [bits(&out), bits(&probs), bits(&dq), bits(&dk), bits(&dv)]
            })
        };
        assert!(run(1) == run(3), "results differ between 1 and 3 threads");
    }

    /// Throughput at T = 1024; run with
    /// `cargo test -p ingot-train --release attention_f32_speed -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn attention_f32_speed() {
        let s = Shape {
            b: 2,
            t: 1024,
            nh: 8,
            nkv: 4,
            hd: 64,
        };
        let (q, k, v) = inputs(&s, 78);
        let (q, k, v) = (to_f32(&q), to_f32(&k), to_f32(&v));
        let dout = to_f32(&Rng::new(79).vec(q.len()));
        let mut out = vec![0.0f32; q.len()];
        let mut probs = vec![0.0f32; s.b * s.nh * s.t * s.t];
        let (mut dq, mut dk, mut dv) = (
            vec![0.0f32; q.len()],
            vec![0.0f32; k.len()],
            vec![0.0f32; v.len()],
        );
        // Useful (causal) FLOPs: two t×t×hd products forward, four backward, halved.
        let fwd_flop = (s.b * s.nh) as f64 * 2.0 * (s.t * s.t * s.hd) as f64;
        let iters = 3;
        let t0 = std::time::Instant::now();
        for _ in 0..iters {
            attention_forward(
                &mut out, &mut probs, &q, &k, &v, s.b, s.t, s.nh, s.nkv, s.hd,
            );
        }
        let f = t0.elapsed().as_secs_f64() / iters as f64;
        let t0 = std::time::Instant::now();
        for _ in 0..iters {
            attention_backward(
                &mut dq, &mut dk, &mut dv, &dout, &probs, &q, &k, &v, s.b, s.t, s.nh, s.nkv, s.hd,
            );
        }
        let bwd = t0.elapsed().as_secs_f64() / iters as f64;
        println!(
            "attention f32 b={} t={} nh={} nkv={} hd={}: forward {:.1} ms ({:.1} GFLOP/s), backward {:.1} ms ({:.1} GFLOP/s)",
            s.b, s.t, s.nh, s.nkv, s.hd,
            f * 1e3, fwd_flop / f / 1e9, bwd * 1e3, 2.0 * fwd_flop / bwd / 1e9
        );
    }
}
