//! The arithmetic: a column-major GEMM `D = alpha · op(A) · op(B) + beta · C` on host slices,
//! pure Rust and independent of the C entry points.
//!
//! Numerics, chosen so that a result never depends on how the work is split:
//! - every product is widened to f32 (bf16 → f32 is exact) and each `D[i, j]` is the f32 sum
//!   over `p = 0, 1, …, k-1` in that order, starting from 0, one rounding per multiply and
//!   per add (Rust never fuses them into an FMA on its own);
//! - then `alpha · acc + beta · C[i, j]` in f32, with C not read at all when `beta == 0`
//!   (so NaN or garbage in C cannot reach D, as cuBLAS documents);
//! - a bf16 output is rounded to nearest, ties to even.
//!
//! Speed: the columns of D are split over threads; within a thread, [`TILE_ROWS`] rows of
//! op(A) at a time are packed (widened to f32, in strips of [`STRIP`] rows) and a micro-kernel
//! computes [`STRIP`] × [`TILE_COLS`] blocks of D with the accumulators in registers, SSE on
//! x86-64. Tiling and threads change which elements are computed together, never the order
//! of the additions within one element.

use std::ops::Range;

/// Rows of D per tile: the packed rows of op(A) (`TILE_ROWS × k` f32) stay in L2 while every
/// column of the thread's share uses them.
pub const TILE_ROWS: usize = 64;
/// Rows per micro-kernel call (a multiple of 4, the SSE width; `TILE_ROWS` is a multiple).
pub const STRIP: usize = 8;
/// Columns of D per micro-kernel call.
pub const TILE_COLS: usize = 4;
/// Above this many multiply-adds (`m·n·k`) the columns are split over several threads.
pub const PARALLEL_WORK: usize = 1 << 18;
/// The most threads one GEMM uses.
pub const MAX_THREADS: usize = 8;

/// A bf16 value as its raw bits (the upper half of an f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(transparent)]
pub struct Bf16(pub u16);

impl Bf16 {
    /// Exact widening.
    pub fn to_f32(self) -> f32 {
        f32::from_bits(u32::from(self.0) << 16)
    }

    /// Rounds to nearest, ties to even; a NaN stays a (quiet) NaN with its sign and top
    /// payload bits.
    pub fn from_f32(v: f32) -> Bf16 {
        let bits = v.to_bits();
        if v.is_nan() {
            return Bf16(((bits >> 16) as u16) | 0x40);
        }
        // Adding 0x7fff plus the lowest kept bit rounds half to even; a carry out of the
        // mantissa bumps the exponent, up to infinity, as rounding should. No overflow: the
        // largest non-NaN pattern is 0xff80_0000.
        let lsb = (bits >> 16) & 1;
        Bf16(((bits + 0x7fff + lsb) >> 16) as u16)
    }
}

/// An element type of A, B, C or D.
pub trait Element: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
}

/// An element type of C and D.
pub trait Output: Element {
    fn from_f32(v: f32) -> Self;
}

impl Element for f32 {
    fn to_f32(self) -> f32 {
        self
    }
}

impl Output for f32 {
    fn from_f32(v: f32) -> f32 {
        v
    }
}

impl Element for Bf16 {
    fn to_f32(self) -> f32 {
        Bf16::to_f32(self)
    }
}

impl Output for Bf16 {
    fn from_f32(v: f32) -> Bf16 {
        Bf16::from_f32(v)
    }
}

/// The problem, column-major: D is `m × n`, op(A) is `m × k`, op(B) is `k × n`. A is stored
/// `m × k` (or `k × m` when `trans_a`), B `k × n` (or `n × k` when `trans_b`); `ld*` are the
/// column strides in elements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub trans_a: bool,
    pub trans_b: bool,
    pub lda: usize,
    pub ldb: usize,
    pub ldc: usize,
    pub ldd: usize,
}

impl Shape {
    /// (rows, cols) of A as stored.
    pub fn a_dims(&self) -> (usize, usize) {
        if self.trans_a {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }

    /// (rows, cols) of B as stored.
    pub fn b_dims(&self) -> (usize, usize) {
        if self.trans_b {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }
}

/// Elements a column-major `rows × cols` matrix with leading dimension `ld` spans, from its
/// first element to one past its last (`None` on overflow).
pub fn span(rows: usize, cols: usize, ld: usize) -> Option<usize> {
    if rows == 0 || cols == 0 {
        return Some(0);
    }
    (cols - 1).checked_mul(ld)?.checked_add(rows)
}

/// Where `beta · C` comes from.
#[derive(Debug, Clone, Copy)]
pub enum Addend<'a, T> {
    /// No C (only valid with `beta == 0`).
    None,
    /// C is D itself (same address and layout): each element is read just before it is
    /// overwritten.
    InPlace,
    /// A separate C with leading dimension `Shape::ldc`.
    Separate(&'a [T]),
}

/// Why [`gemm`] refused (the slices do not cover the shape).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeError(pub String);

/// Threads for an `m × n × k` problem on this machine: one for small problems, else up to
/// [`MAX_THREADS`] (never more than there are columns).
pub fn default_threads(m: usize, n: usize, k: usize) -> usize {
    let work = m.saturating_mul(n).saturating_mul(k);
    if work <= PARALLEL_WORK {
        return 1;
    }
    // Looked up once: on Linux it reads the cgroup quota files each time.
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |c| c.get()));
    cores.clamp(1, MAX_THREADS).min(n.max(1))
}

fn check_ld(what: &str, ld: usize, rows: usize) -> Result<(), ShapeError> {
    if ld < rows.max(1) {
        return Err(ShapeError(format!("{what}: ld {ld} < max(1, rows {rows})")));
    }
    Ok(())
}

fn check_len(
    what: &str,
    len: usize,
    rows: usize,
    cols: usize,
    ld: usize,
) -> Result<(), ShapeError> {
    match span(rows, cols, ld) {
        Some(need) if len >= need => Ok(()),
        Some(need) => Err(ShapeError(format!(
            "{what}: {len} elements, a {rows}x{cols} matrix with ld {ld} spans {need}"
        ))),
        None => Err(ShapeError(format!(
            "{what}: {rows}x{cols} with ld {ld} overflows"
        ))),
    }
}

/// `D = alpha · op(A) · op(B) + beta · C` with `threads` threads (at least one; at most one
/// per column). The result is bitwise the same for every thread count.
#[allow(clippy::too_many_arguments)]
pub fn gemm<TA: Element, TD: Output>(
    shape: &Shape,
    alpha: f32,
    a: &[TA],
    b: &[TA],
    beta: f32,
    c: Addend<'_, TD>,
    d: &mut [TD],
    threads: usize,
) -> Result<(), ShapeError> {
    let s = *shape;
    let (ar, ac) = s.a_dims();
    let (br, bc) = s.b_dims();
    check_ld("A", s.lda, ar)?;
    check_ld("B", s.ldb, br)?;
    check_ld("D", s.ldd, s.m)?;
    check_len("A", a.len(), ar, ac, s.lda)?;
    check_len("B", b.len(), br, bc, s.ldb)?;
    check_len("D", d.len(), s.m, s.n, s.ldd)?;
    // C is not read when beta is 0, whatever was passed.
    let c = if beta == 0.0 { Addend::None } else { c };
    match c {
        Addend::None if beta != 0.0 => return Err(ShapeError("beta != 0 needs a C".into())),
        Addend::Separate(cs) => {
            check_ld("C", s.ldc, s.m)?;
            check_len("C", cs.len(), s.m, s.n, s.ldc)?;
        }
        _ => {}
    }
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    let job = Job {
        s,
        alpha,
        beta,
        a,
        b,
        c,
    };
    let threads = threads.clamp(1, s.n);
    if threads == 1 {
        job.columns(0..s.n, d);
        return Ok(());
    }
    std::thread::scope(|scope| {
        let mut rest = &mut d[..];
        for t in 0..threads {
            let (start, end) = (s.n * t / threads, s.n * (t + 1) / threads);
            // Columns [start, end) of D: whole columns of ld elements, the last chunk up to
            // the end of the span.
            let len = if t + 1 == threads {
                rest.len()
            } else {
                (end - start) * s.ldd
            };
            let (chunk, tail) = std::mem::take(&mut rest).split_at_mut(len);
            rest = tail;
            let job = &job;
            scope.spawn(move || job.columns(start..end, chunk));
        }
    });
    Ok(())
}

/// One GEMM's operands, shared read-only by its threads.
struct Job<'a, TA, TD> {
    s: Shape,
    alpha: f32,
    beta: f32,
    a: &'a [TA],
    b: &'a [TA],
    c: Addend<'a, TD>,
}

/// Four f32 lanes, 16-byte aligned (an SSE register's worth).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[repr(C, align(16))]
struct Quad([f32; 4]);

/// Quads per packed row of op(A) within a strip.
const STRIP_QUADS: usize = STRIP / 4;

impl<TA: Element, TD: Output> Job<'_, TA, TD> {
    /// Computes columns `cols` of D into `d`, which starts at column `cols.start`.
    ///
    /// Plain index loops throughout: they stay fast when the crate is built at a low
    /// optimisation level (as the workspace's dev and test profiles do), where iterator
    /// adapters are not inlined.
    fn columns(&self, cols: Range<usize>, d: &mut [TD]) {
        let s = &self.s;
        let k = s.k;
        let strip_len = STRIP_QUADS * k;
        let mut panel = vec![Quad::default(); TILE_ROWS / 4 * k];
        let mut bpack = vec![Quad::default(); k];
        let mut i0 = 0;
        while i0 < s.m {
            let rows = TILE_ROWS.min(s.m - i0);
            let strips = rows.div_ceil(STRIP);
            for t in 0..strips {
                let r0 = i0 + t * STRIP;
                self.pack_a(
                    r0,
                    STRIP.min(s.m - r0),
                    &mut panel[t * strip_len..][..strip_len],
                );
            }
            let mut j0 = cols.start;
            while j0 < cols.end {
                let ncols = TILE_COLS.min(cols.end - j0);
                self.pack_b(j0, ncols, &mut bpack);
                for t in 0..strips {
                    let acc = micro_kernel(&panel[t * strip_len..][..strip_len], &bpack);
                    let r0 = i0 + t * STRIP;
                    let nrows = STRIP.min(s.m - r0);
                    for (jj, acc) in acc.iter().enumerate().take(ncols) {
                        let j = j0 + jj;
                        let out = &mut d[(j - cols.start) * s.ldd + r0..][..nrows];
                        self.store(&acc[..nrows], j, r0, out);
                    }
                }
                j0 += TILE_COLS;
            }
            i0 += TILE_ROWS;
        }
    }

    /// Rows `r0 .. r0 + nrows` (at most [`STRIP`]) of op(A), widened: row `r`, column `p`
    /// at `strip[p·STRIP_QUADS + r/4].0[r % 4]`; rows past `nrows` are zero.
    fn pack_a(&self, r0: usize, nrows: usize, strip: &mut [Quad]) {
        let (s, k) = (&self.s, self.s.k);
        let a = self.a;
        for p in 0..k {
            for r in 0..STRIP {
                let v = if r >= nrows {
                    0.0
                } else if s.trans_a {
                    // op(A)[i, p] = A[p, i].
                    a[p + (r0 + r) * s.lda].to_f32()
                } else {
                    a[r0 + r + p * s.lda].to_f32()
                };
                strip[p * STRIP_QUADS + r / 4].0[r % 4] = v;
            }
        }
    }

    /// Columns `j0 .. j0 + ncols` of op(B), widened: `(p, j0 + jj)` at `bpack[p].0[jj]`;
    /// columns past `ncols` are zero.
    fn pack_b(&self, j0: usize, ncols: usize, bpack: &mut [Quad]) {
        let (s, k) = (&self.s, self.s.k);
        let b = self.b;
        for jj in 0..TILE_COLS {
            let j = j0 + jj;
            for p in 0..k {
                bpack[p].0[jj] = if jj >= ncols {
                    0.0
                } else if s.trans_b {
                    // op(B)[p, j] = B[j, p].
                    b[j + p * s.ldb].to_f32()
                } else {
                    b[p + j * s.ldb].to_f32()
                };
            }
        }
    }

    /// `out[ii] = alpha · acc[ii] + beta · C[i0 + ii, j]`.
    fn store(&self, acc: &[f32], j: usize, i0: usize, out: &mut [TD]) {
        let (alpha, beta) = (self.alpha, self.beta);
        let n = out.len().min(acc.len());
        match self.c {
            Addend::None => {
                for ii in 0..n {
                    out[ii] = TD::from_f32(alpha * acc[ii]);
                }
            }
            Addend::InPlace => {
                for ii in 0..n {
                    out[ii] = TD::from_f32(alpha * acc[ii] + beta * out[ii].to_f32());
                }
            }
            Addend::Separate(c) => {
                let c = &c[j * self.s.ldc + i0..][..n];
                for ii in 0..n {
                    out[ii] = TD::from_f32(alpha * acc[ii] + beta * c[ii].to_f32());
                }
            }
        }
    }
}

/// One strip of the result: `acc[jj][r] = Σ op(A)[r, p] · op(B)[p, jj]` over `p = 0 .. k` in
/// order, from 0, one rounding per multiply and per add, with `a` packed by
/// [`Job::pack_a`] and `b` by [`Job::pack_b`]. The 8 × 4 accumulators stay in registers.
fn micro_kernel(a: &[Quad], b: &[Quad]) -> [[f32; STRIP]; TILE_COLS] {
    #[cfg(target_arch = "x86_64")]
    {
        micro_kernel_sse(a, b)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        micro_kernel_scalar(a, b)
    }
}

/// [`micro_kernel`] in plain Rust: the reference the SIMD version must match bit for bit.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
fn micro_kernel_scalar(a: &[Quad], b: &[Quad]) -> [[f32; STRIP]; TILE_COLS] {
    let mut acc = [[0.0f32; STRIP]; TILE_COLS];
    for p in 0..b.len() {
        let bp = b[p].0;
        for (jj, col) in acc.iter_mut().enumerate() {
            for (r, x) in col.iter_mut().enumerate() {
                *x += a[p * STRIP_QUADS + r / 4].0[r % 4] * bp[jj];
            }
        }
    }
    acc
}

/// [`micro_kernel`] with SSE (part of every x86-64 CPU): separate multiplies and adds, so
/// the same roundings as the scalar version; explicit vectors so it is fast even in a build
/// whose optimiser would not vectorise the scalar loop.
#[cfg(target_arch = "x86_64")]
fn micro_kernel_sse(a: &[Quad], b: &[Quad]) -> [[f32; STRIP]; TILE_COLS] {
    use std::arch::x86_64::{__m128, _mm_add_ps, _mm_mul_ps, _mm_setzero_ps, _mm_shuffle_ps};
    use std::mem::transmute;
    // Two quads of A rows and one quad of B columns per `p`.
    const _: () = assert!(STRIP == 8 && TILE_COLS == 4);
    let mut out = [[0.0f32; STRIP]; TILE_COLS];
    // SAFETY: SSE is in the x86-64 baseline, so its intrinsics are always available; a
    // `Quad` (16 bytes of f32 lanes, 16-byte aligned) and an `__m128` have the same size and
    // accept every bit pattern, so transmuting between them is sound.
    unsafe {
        let mut c: [__m128; 2 * TILE_COLS] = [_mm_setzero_ps(); 2 * TILE_COLS];
        for p in 0..b.len() {
            let a0 = transmute::<Quad, __m128>(a[p * STRIP_QUADS]);
            let a1 = transmute::<Quad, __m128>(a[p * STRIP_QUADS + 1]);
            let bv = transmute::<Quad, __m128>(b[p]);
            let bs = [
                _mm_shuffle_ps::<0x00>(bv, bv),
                _mm_shuffle_ps::<0x55>(bv, bv),
                _mm_shuffle_ps::<0xaa>(bv, bv),
                _mm_shuffle_ps::<0xff>(bv, bv),
            ];
            for jj in 0..TILE_COLS {
                c[2 * jj] = _mm_add_ps(c[2 * jj], _mm_mul_ps(a0, bs[jj]));
                c[2 * jj + 1] = _mm_add_ps(c[2 * jj + 1], _mm_mul_ps(a1, bs[jj]));
            }
        }
        for (jj, row) in out.iter_mut().enumerate() {
            row[..4].copy_from_slice(&transmute::<__m128, [f32; 4]>(c[2 * jj]));
            row[4..].copy_from_slice(&transmute::<__m128, [f32; 4]>(c[2 * jj + 1]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn shape(m: usize, n: usize, k: usize, ta: bool, tb: bool) -> Shape {
        let (ar, _) = if ta { (k, m) } else { (m, k) };
        let (br, _) = if tb { (n, k) } else { (k, n) };
        // Leading dimensions larger than the rows, to catch a stride mix-up.
        Shape {
            m,
            n,
            k,
            trans_a: ta,
            trans_b: tb,
            lda: ar + 3,
            ldb: br + 2,
            ldc: m + 5,
            ldd: m + 1,
        }
    }

    /// alpha · op(A) · op(B) + beta · C in f64 (C optional).
    fn reference(
        s: &Shape,
        alpha: f64,
        a: &[f64],
        b: &[f64],
        beta: f64,
        c: Option<&[f64]>,
    ) -> Vec<f64> {
        let mut out = vec![0.0; s.m * s.n];
        for j in 0..s.n {
            for i in 0..s.m {
                let mut acc = 0.0;
                for p in 0..s.k {
                    let av = if s.trans_a {
                        a[p + i * s.lda]
                    } else {
                        a[i + p * s.lda]
                    };
                    let bv = if s.trans_b {
                        b[j + p * s.ldb]
                    } else {
                        b[p + j * s.ldb]
                    };
                    acc += av * bv;
                }
                let cv = c.map_or(0.0, |c| beta * c[i + j * s.ldc]);
                out[i + j * s.m] = alpha * acc + cv;
            }
        }
        out
    }

    /// Sum of |terms|, for a relative error bound that holds under cancellation.
    fn magnitude(
        s: &Shape,
        alpha: f64,
        a: &[f64],
        b: &[f64],
        beta: f64,
        c: Option<&[f64]>,
    ) -> Vec<f64> {
        let abs = |v: &[f64]| v.iter().map(|x| x.abs()).collect::<Vec<_>>();
        let c_abs = c.map(abs);
        reference(
            s,
            alpha.abs(),
            &abs(a),
            &abs(b),
            beta.abs(),
            c_abs.as_deref(),
        )
    }

    /// bf16 bits on a line where neighbours differ by one (sign-magnitude → two's complement).
    fn ordered(v: Bf16) -> i32 {
        let mag = i32::from(v.0 & 0x7fff);
        if v.0 & 0x8000 != 0 {
            -mag
        } else {
            mag
        }
    }

    fn all_shapes() -> Vec<Shape> {
        let mut out = Vec::new();
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            // Sizes straddling the tile edges (64 rows, 4 columns).
            out.push(shape(70, 9, 33, ta, tb));
            out.push(shape(3, 5, 1, ta, tb));
        }
        out
    }

    #[test]
    fn f32_matches_f64_reference_for_all_transposes() {
        for s in all_shapes() {
            let (ar, ac) = s.a_dims();
            let (br, bc) = s.b_dims();
            let a = values(span(ar, ac, s.lda).unwrap(), 1);
            let b = values(span(br, bc, s.ldb).unwrap(), 2);
            let c = values(span(s.m, s.n, s.ldc).unwrap(), 3);
            let mut d = vec![f32::NAN; span(s.m, s.n, s.ldd).unwrap()];
            let (alpha, beta) = (0.75f32, -0.5f32);
            gemm(&s, alpha, &a, &b, beta, Addend::Separate(&c), &mut d, 1).unwrap();
            let wide = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
            let (a64, b64, c64) = (wide(&a), wide(&b), wide(&c));
            let want = reference(&s, 0.75, &a64, &b64, -0.5, Some(&c64));
            let mag = magnitude(&s, 0.75, &a64, &b64, -0.5, Some(&c64));
            for j in 0..s.n {
                for i in 0..s.m {
                    let got = f64::from(d[i + j * s.ldd]);
                    let (w, m) = (want[i + j * s.m], mag[i + j * s.m]);
                    let tol = 1e-5 * m;
                    assert!((got - w).abs() <= tol, "{s:?} ({i},{j}): {got} vs {w}");
                }
            }
        }
    }

    #[test]
    fn bf16_output_is_the_rounded_f32_result_within_one_ulp() {
        for s in all_shapes() {
            let (ar, ac) = s.a_dims();
            let (br, bc) = s.b_dims();
            let to_bf = |v: Vec<f32>| v.into_iter().map(Bf16::from_f32).collect::<Vec<_>>();
            let a = to_bf(values(span(ar, ac, s.lda).unwrap(), 4));
            let b = to_bf(values(span(br, bc, s.ldb).unwrap(), 5));
            let c = to_bf(values(span(s.m, s.n, s.ldc).unwrap(), 6));
            let mut d = vec![Bf16(0x7fc0); span(s.m, s.n, s.ldd).unwrap()];
            gemm(&s, 1.0, &a, &b, 1.0, Addend::Separate(&c), &mut d, 1).unwrap();
            let wide = |v: &[Bf16]| v.iter().map(|x| f64::from(x.to_f32())).collect::<Vec<_>>();
            let want = reference(&s, 1.0, &wide(&a), &wide(&b), 1.0, Some(&wide(&c)));
            for j in 0..s.n {
                for i in 0..s.m {
                    let got = d[i + j * s.ldd];
                    let exact = Bf16::from_f32(want[i + j * s.m] as f32);
                    let ulps = (ordered(got) - ordered(exact)).abs();
                    assert!(ulps <= 1, "{s:?} ({i},{j}): {:#x} vs {:#x}", got.0, exact.0);
                }
            }
        }
    }

    #[test]
    fn bf16_inputs_with_f32_output_match_reference() {
        let s = shape(20, 7, 50, true, false);
        let (ar, ac) = s.a_dims();
        let (br, bc) = s.b_dims();
        let to_bf = |v: Vec<f32>| v.into_iter().map(Bf16::from_f32).collect::<Vec<_>>();
        let a = to_bf(values(span(ar, ac, s.lda).unwrap(), 7));
        let b = to_bf(values(span(br, bc, s.ldb).unwrap(), 8));
        let mut d = vec![0.0f32; span(s.m, s.n, s.ldd).unwrap()];
        gemm(&s, 2.0, &a, &b, 0.0, Addend::<f32>::None, &mut d, 1).unwrap();
        let wide = |v: &[Bf16]| v.iter().map(|x| f64::from(x.to_f32())).collect::<Vec<_>>();
        let want = reference(&s, 2.0, &wide(&a), &wide(&b), 0.0, None);
        let mag = magnitude(&s, 2.0, &wide(&a), &wide(&b), 0.0, None);
        for j in 0..s.n {
            for i in 0..s.m {
                let got = f64::from(d[i + j * s.ldd]);
                let tol = 1e-5 * mag[i + j * s.m] * 8.0;
                assert!((got - want[i + j * s.m]).abs() <= tol);
            }
        }
    }

    #[test]
    fn beta_zero_does_not_read_c() {
        let s = shape(9, 6, 4, false, false);
        let a = values(span(s.m, s.k, s.lda).unwrap(), 9);
        let b = values(span(s.k, s.n, s.ldb).unwrap(), 10);
        let c = vec![f32::NAN; span(s.m, s.n, s.ldc).unwrap()];
        let mut d = vec![f32::NAN; span(s.m, s.n, s.ldd).unwrap()];
        gemm(&s, 1.0, &a, &b, 0.0, Addend::Separate(&c), &mut d, 1).unwrap();
        for j in 0..s.n {
            for i in 0..s.m {
                assert!(d[i + j * s.ldd].is_finite());
            }
        }
        // In place too: D full of NaN is overwritten, not accumulated.
        let mut d2 = vec![f32::NAN; d.len()];
        gemm(&s, 1.0, &a, &b, 0.0, Addend::InPlace, &mut d2, 1).unwrap();
        for j in 0..s.n {
            for i in 0..s.m {
                assert_eq!(d2[i + j * s.ldd].to_bits(), d[i + j * s.ldd].to_bits());
            }
        }
    }

    #[test]
    fn beta_one_in_place_accumulates() {
        let mut s = shape(10, 5, 7, false, true);
        s.ldc = s.ldd;
        let (br, bc) = s.b_dims();
        let a = values(span(s.m, s.k, s.lda).unwrap(), 11);
        let b = values(span(br, bc, s.ldb).unwrap(), 12);
        let mut once = vec![0.0f32; span(s.m, s.n, s.ldd).unwrap()];
        gemm(&s, 1.0, &a, &b, 0.0, Addend::None, &mut once, 1).unwrap();
        let mut twice = once.clone();
        gemm(&s, 1.0, &a, &b, 1.0, Addend::InPlace, &mut twice, 1).unwrap();
        for j in 0..s.n {
            for i in 0..s.m {
                let x = once[i + j * s.ldd];
                assert_eq!(twice[i + j * s.ldd], x + x);
            }
        }
    }

    #[test]
    fn separate_c_is_left_alone() {
        let s = shape(5, 4, 3, true, true);
        let (ar, ac) = s.a_dims();
        let (br, bc) = s.b_dims();
        let a = values(span(ar, ac, s.lda).unwrap(), 13);
        let b = values(span(br, bc, s.ldb).unwrap(), 14);
        let c = values(span(s.m, s.n, s.ldc).unwrap(), 15);
        let c_before = c.clone();
        let mut d = vec![0.0f32; span(s.m, s.n, s.ldd).unwrap()];
        gemm(&s, 1.0, &a, &b, 1.0, Addend::Separate(&c), &mut d, 1).unwrap();
        assert_eq!(c, c_before);
        let mut d0 = vec![0.0f32; d.len()];
        gemm(&s, 1.0, &a, &b, 0.0, Addend::None, &mut d0, 1).unwrap();
        for j in 0..s.n {
            for i in 0..s.m {
                let want = d0[i + j * s.ldd] + c[i + j * s.ldc];
                assert_eq!(d[i + j * s.ldd], want);
            }
        }
    }

    #[test]
    fn thread_count_does_not_change_a_bit() {
        for (ta, tb) in [(false, false), (true, true)] {
            let s = shape(130, 37, 91, ta, tb);
            let (ar, ac) = s.a_dims();
            let (br, bc) = s.b_dims();
            let to_bf = |v: Vec<f32>| v.into_iter().map(Bf16::from_f32).collect::<Vec<_>>();
            let a = to_bf(values(span(ar, ac, s.lda).unwrap(), 16));
            let b = to_bf(values(span(br, bc, s.ldb).unwrap(), 17));
            let c = values(span(s.m, s.n, s.ldc).unwrap(), 18);
            let len = span(s.m, s.n, s.ldd).unwrap();
            let mut one = vec![0.0f32; len];
            gemm(&s, 1.5, &a, &b, 0.25, Addend::Separate(&c), &mut one, 1).unwrap();
            for threads in [2, 3, 8, 64] {
                let mut many = vec![0.0f32; len];
                gemm(
                    &s,
                    1.5,
                    &a,
                    &b,
                    0.25,
                    Addend::Separate(&c),
                    &mut many,
                    threads,
                )
                .unwrap();
                let same = one
                    .iter()
                    .zip(&many)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "threads={threads} ta={ta} tb={tb}");
            }
        }
    }

    #[test]
    fn bf16_rounding_is_nearest_even_and_keeps_nan_quiet() {
        assert_eq!(Bf16::from_f32(1.0).0, 0x3f80);
        // Exactly halfway between 0x3f80 and 0x3f81: ties to the even 0x3f80.
        assert_eq!(Bf16::from_f32(f32::from_bits(0x3f80_8000)).0, 0x3f80);
        // Halfway between 0x3f81 and 0x3f82: ties to the even 0x3f82.
        assert_eq!(Bf16::from_f32(f32::from_bits(0x3f81_8000)).0, 0x3f82);
        assert_eq!(Bf16::from_f32(f32::from_bits(0x3f80_8001)).0, 0x3f81);
        assert_eq!(Bf16::from_f32(f32::MAX).0, 0x7f80); // rounds up to +inf
        assert_eq!(Bf16::from_f32(f32::INFINITY).0, 0x7f80);
        // A signalling NaN whose payload sits in the dropped half stays a NaN.
        let snan = Bf16::from_f32(f32::from_bits(0x7f80_0001));
        assert_eq!(snan.0, 0x7fc0);
        assert!(snan.to_f32().is_nan());
        assert_eq!(Bf16::from_f32(-2.5).to_f32(), -2.5);
    }

    #[test]
    fn short_slices_and_small_ld_are_refused() {
        let s = shape(4, 3, 2, false, false);
        let a = vec![0.0f32; 3];
        let b = vec![0.0f32; 100];
        let mut d = vec![0.0f32; 100];
        assert!(gemm(&s, 1.0, &a, &b, 0.0, Addend::None, &mut d, 1).is_err());
        let mut bad = s;
        bad.lda = 3; // < m = 4
        let a = vec![0.0f32; 100];
        assert!(gemm(&bad, 1.0, &a, &b, 0.0, Addend::None, &mut d, 1).is_err());
        assert!(gemm(&s, 1.0, &a, &b, 1.0, Addend::<f32>::None, &mut d, 1).is_err());
    }

    #[test]
    fn k_zero_gives_beta_c() {
        for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
            let s = Shape {
                m: 2,
                n: 2,
                k: 0,
                trans_a: ta,
                trans_b: tb,
                lda: 2,
                ldb: 2,
                ldc: 2,
                ldd: 2,
            };
            let c = vec![1.0f32, 2.0, 3.0, 4.0];
            let mut d = vec![f32::NAN; 4];
            gemm::<f32, f32>(&s, 1.0, &[], &[], 2.0, Addend::Separate(&c), &mut d, 1).unwrap();
            assert_eq!(d, vec![2.0, 4.0, 6.0, 8.0]);
            let mut d = vec![Bf16(0x7fc0); 4];
            let cb = c.iter().map(|&x| Bf16::from_f32(x)).collect::<Vec<_>>();
            gemm::<Bf16, Bf16>(&s, 1.0, &[], &[], 1.0, Addend::Separate(&cb), &mut d, 2).unwrap();
            assert_eq!(d, cb);
        }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn sse_micro_kernel_matches_scalar_bit_for_bit() {
        let k = 37;
        let specials = [
            f32::NAN,
            f32::INFINITY,
            -0.0,
            1e-40,
            -3e38,
            f32::MIN_POSITIVE,
        ];
        let mut vals = values(STRIP * k + TILE_COLS * k, 99);
        for (i, v) in specials.iter().enumerate() {
            vals[i * 13] = *v;
        }
        let quads = |v: &[f32]| {
            v.chunks_exact(4)
                .map(|c| Quad([c[0], c[1], c[2], c[3]]))
                .collect::<Vec<_>>()
        };
        let a = quads(&vals[..STRIP * k]);
        let b = quads(&vals[STRIP * k..]);
        let sse = micro_kernel_sse(&a, &b);
        let scalar = micro_kernel_scalar(&a, &b);
        for (x, y) in sse.iter().flatten().zip(scalar.iter().flatten()) {
            assert_eq!(x.to_bits(), y.to_bits());
        }
    }

    /// Throughput on this machine (run with `--ignored --nocapture`, optimised).
    #[test]
    #[ignore]
    fn bench() {
        for (m, n, k, ta) in [
            (768, 512, 768, true),
            (768, 512, 768, false),
            (3072, 256, 768, true),
        ] {
            let s = Shape {
                m,
                n,
                k,
                trans_a: ta,
                trans_b: false,
                lda: if ta { k } else { m },
                ldb: k,
                ldc: m,
                ldd: m,
            };
            let a = values(m * k, 1);
            let b = values(k * n, 2);
            let ab: Vec<Bf16> = a.iter().map(|&x| Bf16::from_f32(x)).collect();
            let bb: Vec<Bf16> = b.iter().map(|&x| Bf16::from_f32(x)).collect();
            let mut d = vec![0.0f32; m * n];
            let flops = 2.0 * (m * n * k) as f64;
            for threads in [1, 2] {
                let best = |f: &mut dyn FnMut()| {
                    (0..3)
                        .map(|_| {
                            let t = std::time::Instant::now();
                            f();
                            t.elapsed().as_secs_f64()
                        })
                        .fold(f64::MAX, f64::min)
                };
                let f32_gf = flops
                    / best(&mut || {
                        gemm(&s, 1.0, &a, &b, 0.0, Addend::None, &mut d, threads).unwrap()
                    })
                    / 1e9;
                let bf_gf = flops
                    / best(&mut || {
                        gemm(&s, 1.0, &ab, &bb, 0.0, Addend::None, &mut d, threads).unwrap()
                    })
                    / 1e9;
                println!("{m}x{n}x{k} ta={ta} threads={threads}: f32 {f32_gf:.2} GFLOP/s, bf16 {bf_gf:.2} GFLOP/s");
            }
        }
    }
}
