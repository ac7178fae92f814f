//! Tests through the C entry points, on host buffers (no driver: the range checks are
//! exercised with a stand-in [`DeviceMemory`]).

use std::ffi::{c_void, CStr};
use std::mem::size_of;
use std::ptr::{null, null_mut};
use std::sync::Mutex;

use crate::api::*;
use crate::descriptors::{
    desc_attr, layout_attr, pref_attr, CUBLAS_COMPUTE_32F, CUDA_R_16BF, CUDA_R_32F,
};
use crate::driver::DeviceMemory;
use crate::gemm::{self, Bf16};
use crate::matmul::Pointers;
use crate::plan::HeuristicResult;
use crate::status::*;

/// 256-byte aligned storage, like a fresh device allocation.
#[repr(C, align(256))]
#[derive(Clone, Copy)]
struct Block([u8; 256]);

struct Buf {
    blocks: Vec<Block>,
}

impl Buf {
    fn zeroed(bytes: usize) -> Buf {
        Buf {
            blocks: vec![Block([0; 256]); bytes.div_ceil(256) + 1],
        }
    }
    fn from_f32(v: &[f32]) -> Buf {
        let mut b = Buf::zeroed(v.len() * 4);
        b.f32s_mut(v.len()).copy_from_slice(v);
        b
    }
    fn from_bf16(v: &[Bf16]) -> Buf {
        let mut b = Buf::zeroed(v.len() * 2);
        b.bf16s_mut(v.len()).copy_from_slice(v);
        b
    }
    fn ptr(&self) -> *mut c_void {
        self.blocks.as_ptr() as *mut c_void
    }
    fn f32s(&self, n: usize) -> &[f32] {
        assert!(n * 4 <= self.blocks.len() * 256);
        // SAFETY: in bounds, aligned, any bit pattern is an f32.
        unsafe { std::slice::from_raw_parts(self.ptr().cast(), n) }
    }
    fn f32s_mut(&mut self, n: usize) -> &mut [f32] {
        assert!(n * 4 <= self.blocks.len() * 256);
        // SAFETY: as above, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr().cast(), n) }
    }
    fn bf16s(&self, n: usize) -> &[Bf16] {
        assert!(n * 2 <= self.blocks.len() * 256);
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr().cast(), n) }
    }
    fn bf16s_mut(&mut self, n: usize) -> &mut [Bf16] {
        assert!(n * 2 <= self.blocks.len() * 256);
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts_mut(self.ptr().cast(), n) }
    }
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let x = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed.wrapping_mul(40_503));
            ((x >> 8) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn set_desc<T>(desc: *mut c_void, attr: u32, v: T) -> i32 {
    // SAFETY: `v` lives for the call.
    unsafe { cublasLtMatmulDescSetAttribute(desc, attr, (&v as *const T).cast(), size_of::<T>()) }
}

fn set_layout<T>(layout: *mut c_void, attr: u32, v: T) -> i32 {
    // SAFETY: `v` lives for the call.
    unsafe {
        cublasLtMatrixLayoutSetAttribute(layout, attr, (&v as *const T).cast(), size_of::<T>())
    }
}

fn set_pref<T>(pref: *mut c_void, attr: u32, v: T) -> i32 {
    // SAFETY: `v` lives for the call.
    unsafe {
        cublasLtMatmulPreferenceSetAttribute(pref, attr, (&v as *const T).cast(), size_of::<T>())
    }
}

/// One GEMM's cuBLASLt objects, as `kernels/src/matmul.rs` builds them.
struct Lt {
    handle: *mut c_void,
    desc: *mut c_void,
    layouts: [*mut c_void; 4],
    pref: *mut c_void,
}

/// Element types and transposes of a test GEMM; `ld_pad` is added to every leading
/// dimension.
#[derive(Clone, Copy, Debug)]
struct Spec {
    ab: u32,
    cd: u32,
    m: u64,
    n: u64,
    k: u64,
    ta: bool,
    tb: bool,
    ld_pad: i64,
}

impl Spec {
    fn f32(m: u64, n: u64, k: u64, ta: bool, tb: bool) -> Spec {
        Spec {
            ab: CUDA_R_32F,
            cd: CUDA_R_32F,
            m,
            n,
            k,
            ta,
            tb,
            ld_pad: 3,
        }
    }
    fn a_dims(&self) -> (u64, u64) {
        if self.ta {
            (self.k, self.m)
        } else {
            (self.m, self.k)
        }
    }
    fn b_dims(&self) -> (u64, u64) {
        if self.tb {
            (self.n, self.k)
        } else {
            (self.k, self.n)
        }
    }
    /// (rows, cols, ld) of A, B, C, D.
    fn dims(&self) -> [(u64, u64, i64); 4] {
        let (ar, ac) = self.a_dims();
        let (br, bc) = self.b_dims();
        let p = self.ld_pad;
        [
            (ar, ac, ar as i64 + p),
            (br, bc, br as i64 + p),
            (self.m, self.n, self.m as i64 + p),
            (self.m, self.n, self.m as i64 + p),
        ]
    }
    fn spans(&self) -> [usize; 4] {
        self.dims()
            .map(|(r, c, ld)| gemm::span(r as usize, c as usize, ld as usize).unwrap())
    }
    fn shape(&self) -> gemm::Shape {
        let [a, b, c, d] = self.dims();
        gemm::Shape {
            m: self.m as usize,
            n: self.n as usize,
            k: self.k as usize,
            trans_a: self.ta,
            trans_b: self.tb,
            lda: a.2 as usize,
            ldb: b.2 as usize,
            ldc: c.2 as usize,
            ldd: d.2 as usize,
        }
    }
}

impl Lt {
    fn new(spec: &Spec) -> Lt {
        let mut handle = null_mut();
        let mut desc = null_mut();
        let mut pref = null_mut();
        // SAFETY: every out-pointer is a local.
        unsafe {
            assert_eq!(cublasLtCreate(&mut handle), SUCCESS);
            assert_eq!(
                cublasLtMatmulDescCreate(&mut desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                SUCCESS
            );
            assert_eq!(cublasLtMatmulPreferenceCreate(&mut pref), SUCCESS);
        }
        assert_eq!(
            set_desc(desc, desc_attr::TRANSA, i32::from(spec.ta)),
            SUCCESS
        );
        assert_eq!(
            set_desc(desc, desc_attr::TRANSB, i32::from(spec.tb)),
            SUCCESS
        );
        let types = [spec.ab, spec.ab, spec.cd, spec.cd];
        let mut layouts = [null_mut(); 4];
        for (i, (rows, cols, ld)) in spec.dims().into_iter().enumerate() {
            // SAFETY: local out-pointer.
            let st =
                unsafe { cublasLtMatrixLayoutCreate(&mut layouts[i], types[i], rows, cols, ld) };
            assert_eq!(st, SUCCESS);
        }
        assert_eq!(
            set_pref(pref, pref_attr::MAX_WORKSPACE_BYTES, 4u64 << 20),
            SUCCESS
        );
        assert_eq!(
            set_pref(pref, pref_attr::REDUCTION_SCHEME_MASK, 0u32),
            SUCCESS
        );
        Lt {
            handle,
            desc,
            layouts,
            pref,
        }
    }

    /// Promises the alignments of A, B, C, D to the heuristic.
    fn align(&self, bytes: [u32; 4]) {
        let attrs = [
            pref_attr::MIN_ALIGNMENT_A_BYTES,
            pref_attr::MIN_ALIGNMENT_B_BYTES,
            pref_attr::MIN_ALIGNMENT_C_BYTES,
            pref_attr::MIN_ALIGNMENT_D_BYTES,
        ];
        for (attr, b) in attrs.into_iter().zip(bytes) {
            assert_eq!(set_pref(self.pref, attr, b), SUCCESS);
        }
    }

    /// The heuristic's status, result count and first result.
    fn heuristic(&self) -> (i32, i32, HeuristicResult) {
        let mut result = HeuristicResult {
            algo: [0; 8],
            workspace_size: 99,
            state: -1,
            waves_count: 0.0,
            reserved: [0; 4],
        };
        let mut count = -1;
        let [a, b, c, d] = self.layouts;
        // SAFETY: live objects, local out-pointers.
        let st = unsafe {
            cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                self.desc,
                a,
                b,
                c,
                d,
                self.pref,
                1,
                &mut result,
                &mut count,
            )
        };
        (st, count, result)
    }

    fn call(&self, alpha: &f32, beta: &f32, ptrs: Pointers, algo: Option<&[u64; 8]>) -> MatmulCall {
        MatmulCall {
            handle: self.handle,
            desc: self.desc,
            alpha: (alpha as *const f32).cast(),
            beta: (beta as *const f32).cast(),
            ptrs,
            layouts: self.layouts,
            algo: algo.map_or(null(), |a| a as *const [u64; 8]),
            workspace_size: 0,
        }
    }

    /// `cublasLtMatmul` through the export.
    fn matmul(&self, alpha: f32, beta: f32, ptrs: Pointers, algo: Option<&[u64; 8]>) -> i32 {
        let c = self.call(&alpha, &beta, ptrs, algo);
        let [a_desc, b_desc, c_desc, d_desc] = c.layouts;
        // SAFETY: live objects; the buffers are sized by the tests for their layouts.
        unsafe {
            cublasLtMatmul(
                c.handle,
                c.desc,
                c.alpha,
                ptrs.a,
                a_desc,
                ptrs.b,
                b_desc,
                c.beta,
                ptrs.c,
                c_desc,
                ptrs.d,
                d_desc,
                c.algo,
                null_mut(),
                0,
                null_mut(),
            )
        }
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: created in `new`; a test that destroyed one itself nulled it.
        unsafe {
            for l in self.layouts {
                cublasLtMatrixLayoutDestroy(l);
            }
            cublasLtMatmulPreferenceDestroy(self.pref);
            cublasLtMatmulDescDestroy(self.desc);
            if !self.handle.is_null() {
                cublasLtDestroy(self.handle);
            }
        }
    }
}

/// Buffers for A, B, C, D of `spec`, f32 or bf16 as the spec says, C filled with `c_fill`
/// (or values) and D with NaN.
struct Bufs {
    a: Buf,
    b: Buf,
    c: Buf,
    d: Buf,
}

impl Bufs {
    fn new(spec: &Spec, c_fill: Option<f32>) -> Bufs {
        let [sa, sb, sc, sd] = spec.spans();
        let make = |ty: u32, v: Vec<f32>| match ty {
            CUDA_R_16BF => Buf::from_bf16(&v.into_iter().map(Bf16::from_f32).collect::<Vec<_>>()),
            _ => Buf::from_f32(&v),
        };
        let c_vals = match c_fill {
            Some(x) => vec![x; sc],
            None => values(sc, 3),
        };
        Bufs {
            a: make(spec.ab, values(sa, 1)),
            b: make(spec.ab, values(sb, 2)),
            c: make(spec.cd, c_vals),
            d: make(spec.cd, vec![f32::NAN; sd]),
        }
    }
    fn ptrs(&self) -> Pointers {
        Pointers {
            a: self.a.ptr(),
            b: self.b.ptr(),
            c: self.c.ptr(),
            d: self.d.ptr(),
        }
    }
}

/// D of `spec` in f64 from the buffers' (widened) contents.
fn reference(spec: &Spec, bufs: &Bufs, alpha: f64, beta: f64) -> Vec<f64> {
    let s = spec.shape();
    let [sa, sb, sc, _] = spec.spans();
    let wide = |b: &Buf, ty: u32, n: usize| -> Vec<f64> {
        match ty {
            CUDA_R_16BF => b.bf16s(n).iter().map(|x| f64::from(x.to_f32())).collect(),
            _ => b.f32s(n).iter().map(|&x| f64::from(x)).collect(),
        }
    };
    let (a, b, c) = (
        wide(&bufs.a, spec.ab, sa),
        wide(&bufs.b, spec.ab, sb),
        wide(&bufs.c, spec.cd, sc),
    );
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
            let cv = if beta == 0.0 {
                0.0
            } else {
                beta * c[i + j * s.ldc]
            };
            out[i + j * s.m] = alpha * acc + cv;
        }
    }
    out
}

const TRANSPOSES: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

#[test]
fn ffi_f32_gemm_matches_reference_for_all_transposes() {
    for (ta, tb) in TRANSPOSES {
        let spec = Spec::f32(67, 10, 29, ta, tb);
        let lt = Lt::new(&spec);
        lt.align([256; 4]);
        let (st, count, result) = lt.heuristic();
        assert_eq!(
            (st, count, result.state, result.workspace_size),
            (SUCCESS, 1, SUCCESS, 0)
        );
        assert_eq!(result.waves_count, 1.0);
        let bufs = Bufs::new(&spec, None);
        assert_eq!(
            lt.matmul(0.5, 2.0, bufs.ptrs(), Some(&result.algo)),
            SUCCESS
        );
        let want = reference(&spec, &bufs, 0.5, 2.0);
        let s = spec.shape();
        let d = bufs.d.f32s(spec.spans()[3]);
        for j in 0..s.n {
            for i in 0..s.m {
                let (got, w) = (f64::from(d[i + j * s.ldd]), want[i + j * s.m]);
                assert!(
                    (got - w).abs() <= 1e-5 * w.abs().max(1.0),
                    "{ta} {tb} ({i},{j}) {got} {w}"
                );
            }
        }
    }
}

#[test]
fn ffi_bf16_gemms_match_reference() {
    for (ta, tb) in TRANSPOSES {
        for cd in [CUDA_R_16BF, CUDA_R_32F] {
            let spec = Spec {
                ab: CUDA_R_16BF,
                cd,
                ..Spec::f32(33, 6, 70, ta, tb)
            };
            let lt = Lt::new(&spec);
            lt.align([256; 4]);
            let (st, count, result) = lt.heuristic();
            assert_eq!((st, count), (SUCCESS, 1));
            let bufs = Bufs::new(&spec, None);
            assert_eq!(
                lt.matmul(1.0, 0.0, bufs.ptrs(), Some(&result.algo)),
                SUCCESS
            );
            let want = reference(&spec, &bufs, 1.0, 0.0);
            let s = spec.shape();
            for j in 0..s.n {
                for i in 0..s.m {
                    let w = want[i + j * s.m];
                    let at = i + j * s.ldd;
                    if cd == CUDA_R_16BF {
                        let got = bufs.d.bf16s(spec.spans()[3])[at];
                        let exact = Bf16::from_f32(w as f32);
                        // Same sign, at most one step apart in magnitude.
                        let diff = (i32::from(got.0) - i32::from(exact.0)).abs();
                        assert!(diff <= 1 && (got.0 ^ exact.0) & 0x8000 == 0, "({i},{j})");
                    } else {
                        let got = f64::from(bufs.d.f32s(spec.spans()[3])[at]);
                        assert!((got - w).abs() <= 1e-5 * w.abs().max(1.0));
                    }
                }
            }
        }
    }
}

#[test]
fn ffi_beta_zero_ignores_nan_c_and_beta_one_accumulates_in_place() {
    let spec = Spec::f32(12, 7, 5, false, true);
    let lt = Lt::new(&spec);
    let bufs = Bufs::new(&spec, Some(f32::NAN));
    // Null algorithm: the matmul picks its own.
    assert_eq!(lt.matmul(1.0, 0.0, bufs.ptrs(), None), SUCCESS);
    let s = spec.shape();
    let sd = spec.spans()[3];
    let first: Vec<f32> = bufs.d.f32s(sd).to_vec();
    for j in 0..s.n {
        for i in 0..s.m {
            assert!(
                first[i + j * s.ldd].is_finite(),
                "NaN of C reached D at ({i},{j})"
            );
        }
    }
    // C = D, beta = 1: D += A·B.
    let ptrs = Pointers {
        c: bufs.d.ptr(),
        ..bufs.ptrs()
    };
    assert_eq!(lt.matmul(1.0, 1.0, ptrs, None), SUCCESS);
    let second = bufs.d.f32s(sd);
    for j in 0..s.n {
        for i in 0..s.m {
            let x = first[i + j * s.ldd];
            assert_eq!(second[i + j * s.ldd], x + x);
        }
    }
}

#[test]
fn ffi_separate_c_is_read_not_written() {
    let spec = Spec::f32(9, 4, 6, true, false);
    let lt = Lt::new(&spec);
    let bufs = Bufs::new(&spec, None);
    let c_before = bufs.c.f32s(spec.spans()[2]).to_vec();
    assert_eq!(lt.matmul(1.0, -1.0, bufs.ptrs(), None), SUCCESS);
    assert_eq!(bufs.c.f32s(spec.spans()[2]), &c_before[..]);
    let want = reference(&spec, &bufs, 1.0, -1.0);
    let s = spec.shape();
    let d = bufs.d.f32s(spec.spans()[3]);
    for j in 0..s.n {
        for i in 0..s.m {
            let w = want[i + j * s.m];
            assert!((f64::from(d[i + j * s.ldd]) - w).abs() <= 1e-5 * w.abs().max(1.0));
        }
    }
}

#[test]
fn ffi_result_is_bitwise_the_same_for_any_thread_count() {
    let spec = Spec {
        ab: CUDA_R_16BF,
        ..Spec::f32(150, 41, 77, true, false)
    };
    let lt = Lt::new(&spec);
    let run = |threads: usize| -> Vec<u32> {
        let bufs = Bufs::new(&spec, None);
        let (alpha, beta) = (1.25f32, 0.5f32);
        let call = lt.call(&alpha, &beta, bufs.ptrs(), None);
        // SAFETY: the buffers fit the layouts.
        unsafe { matmul_with(&call, None, Some(threads)) }.unwrap();
        bufs.d
            .f32s(spec.spans()[3])
            .iter()
            .map(|x| x.to_bits())
            .collect()
    };
    let one = run(1);
    for threads in [2, 5, 8] {
        assert_eq!(run(threads), one, "threads = {threads}");
    }
}

#[test]
fn f32_inputs_with_bf16_output_are_not_supported() {
    let spec = Spec {
        cd: CUDA_R_16BF,
        ..Spec::f32(4, 4, 4, false, false)
    };
    let lt = Lt::new(&spec);
    let (st, count, _) = lt.heuristic();
    assert_eq!((st, count), (NOT_SUPPORTED, 0));
    let bufs = Bufs::new(&spec, None);
    assert_eq!(lt.matmul(1.0, 0.0, bufs.ptrs(), None), NOT_SUPPORTED);
}

#[test]
fn other_unsupported_configurations() {
    let spec = Spec::f32(4, 4, 4, false, false);
    let bufs = Bufs::new(&spec, None);
    let check = |setup: &dyn Fn(&Lt), want: i32| {
        let lt = Lt::new(&spec);
        setup(&lt);
        assert_eq!(lt.heuristic().0, want);
        assert_eq!(lt.matmul(1.0, 0.0, bufs.ptrs(), None), want);
    };
    // Row-major D.
    check(
        &|lt| assert_eq!(set_layout(lt.layouts[3], layout_attr::ORDER, 1i32), SUCCESS),
        NOT_SUPPORTED,
    );
    // A batch of two.
    check(
        &|lt| {
            assert_eq!(
                set_layout(lt.layouts[0], layout_attr::BATCH_COUNT, 2i32),
                SUCCESS
            )
        },
        NOT_SUPPORTED,
    );
    // A RELU epilogue.
    check(
        &|lt| assert_eq!(set_desc(lt.desc, desc_attr::EPILOGUE, 2u32), SUCCESS),
        NOT_SUPPORTED,
    );
    // Device pointer mode.
    check(
        &|lt| assert_eq!(set_desc(lt.desc, desc_attr::POINTER_MODE, 1i32), SUCCESS),
        NOT_SUPPORTED,
    );
    // TF32 compute.
    check(
        &|lt| assert_eq!(set_desc(lt.desc, desc_attr::COMPUTE_TYPE, 77i32), SUCCESS),
        NOT_SUPPORTED,
    );
    // A bias pointer.
    check(
        &|lt| assert_eq!(set_desc(lt.desc, 8, 0x1000usize), SUCCESS),
        NOT_SUPPORTED,
    );
    // An operation that is not a cublasOperation_t.
    check(
        &|lt| assert_eq!(set_desc(lt.desc, desc_attr::TRANSA, 9i32), SUCCESS),
        INVALID_VALUE,
    );
    // A strided batch offset with a batch of one is ignored.
    check(
        &|lt| {
            assert_eq!(
                set_layout(lt.layouts[1], layout_attr::STRIDED_BATCH_OFFSET, 64i64),
                SUCCESS
            )
        },
        SUCCESS,
    );
}

#[test]
fn leading_dimension_below_rows_is_invalid_at_use() {
    let spec = Spec::f32(8, 3, 5, false, false);
    let mut lt = Lt::new(&spec);
    // Creating such a layout succeeds; using it does not.
    let mut bad = null_mut();
    // SAFETY: local out-pointer; the replaced layout is destroyed once.
    unsafe {
        assert_eq!(
            cublasLtMatrixLayoutCreate(&mut bad, CUDA_R_32F, 8, 5, 7),
            SUCCESS
        );
        assert_eq!(cublasLtMatrixLayoutDestroy(lt.layouts[0]), SUCCESS);
    }
    lt.layouts[0] = bad;
    assert_eq!(lt.heuristic().0, INVALID_VALUE);
    let bufs = Bufs::new(&spec, None);
    assert_eq!(lt.matmul(1.0, 0.0, bufs.ptrs(), None), INVALID_VALUE);
    // A negative or zero ld too, even for an empty matrix.
    assert_eq!(set_layout(lt.layouts[0], layout_attr::LD, 0i64), SUCCESS);
    assert_eq!(set_layout(lt.layouts[0], layout_attr::ROWS, 0u64), SUCCESS);
    assert_eq!(lt.heuristic().0, INVALID_VALUE);
}

#[test]
fn inconsistent_shapes_are_invalid() {
    let spec = Spec::f32(6, 5, 4, false, false);
    // op(A) is 6×4 but B has 3 rows.
    let lt = Lt::new(&spec);
    assert_eq!(set_layout(lt.layouts[1], layout_attr::ROWS, 3u64), SUCCESS);
    assert_eq!(lt.heuristic().0, INVALID_VALUE);
    let bufs = Bufs::new(&spec, None);
    assert_eq!(lt.matmul(1.0, 0.0, bufs.ptrs(), None), INVALID_VALUE);
    // C and D of different shapes.
    let lt = Lt::new(&spec);
    assert_eq!(set_layout(lt.layouts[2], layout_attr::COLS, 4u64), SUCCESS);
    assert_eq!(lt.heuristic().0, INVALID_VALUE);
    // Transposing A without swapping its layout.
    let lt = Lt::new(&spec);
    assert_eq!(set_desc(lt.desc, desc_attr::TRANSA, 1i32), SUCCESS);
    assert_eq!(lt.heuristic().0, INVALID_VALUE);
}

#[test]
fn misaligned_pointers_are_invalid() {
    let spec = Spec::f32(4, 4, 4, false, false);
    let lt = Lt::new(&spec);
    let bufs = Bufs::new(&spec, None);
    let shifted = |p: *mut c_void, by: usize| p.cast::<u8>().wrapping_add(by).cast::<c_void>();
    // Not even aligned to the element: refused with or without an algorithm.
    let odd = Pointers {
        b: shifted(bufs.b.ptr(), 2),
        ..bufs.ptrs()
    };
    assert_eq!(lt.matmul(1.0, 0.0, odd, None), INVALID_VALUE);
    // Aligned to 4 bytes, but the algorithm was chosen for 16-byte pointers.
    lt.align([16; 4]);
    let (st, _, result) = lt.heuristic();
    assert_eq!(st, SUCCESS);
    let four = Pointers {
        a: shifted(bufs.a.ptr(), 4),
        ..bufs.ptrs()
    };
    assert_eq!(lt.matmul(1.0, 0.0, four, Some(&result.algo)), INVALID_VALUE);
    // An algorithm chosen for 4-byte alignment runs on it.
    lt.align([4, 16, 16, 16]);
    let (st, _, result) = lt.heuristic();
    assert_eq!(st, SUCCESS);
    assert_eq!(lt.matmul(1.0, 0.0, four, Some(&result.algo)), SUCCESS);
    // A preference promising less than an element: no algorithm at all.
    lt.align([2, 16, 16, 16]);
    let (st, count, _) = lt.heuristic();
    assert_eq!((st, count), (NOT_SUPPORTED, 0));
}

#[test]
fn wrong_attribute_sizes_and_ids_are_invalid() {
    let spec = Spec::f32(2, 2, 2, false, false);
    let lt = Lt::new(&spec);
    assert_eq!(set_desc(lt.desc, desc_attr::TRANSA, 1i64), INVALID_VALUE);
    assert_eq!(set_desc(lt.desc, 9, 0i32), INVALID_VALUE); // no attribute 9
    assert_eq!(set_desc(lt.desc, 1000, 0i32), INVALID_VALUE);
    assert_eq!(
        set_layout(lt.layouts[0], layout_attr::ROWS, 2u32),
        INVALID_VALUE
    );
    assert_eq!(
        set_pref(lt.pref, pref_attr::MAX_WORKSPACE_BYTES, 1u32),
        INVALID_VALUE
    );
    assert_eq!(
        set_pref(lt.pref, pref_attr::MIN_ALIGNMENT_A_BYTES, 16u64),
        INVALID_VALUE
    );
    // SAFETY: live descriptor; a null buffer is refused.
    let st = unsafe { cublasLtMatmulDescSetAttribute(lt.desc, desc_attr::TRANSA, null(), 4) };
    assert_eq!(st, INVALID_VALUE);
}

#[test]
fn attributes_read_back() {
    let spec = Spec::f32(3, 2, 5, true, false);
    let lt = Lt::new(&spec);
    let mut written = 0usize;
    let mut v = 0i32;
    // SAFETY: locals for every out-pointer.
    unsafe {
        // Size query.
        let st =
            cublasLtMatmulDescGetAttribute(lt.desc, desc_attr::TRANSA, null_mut(), 0, &mut written);
        assert_eq!((st, written), (SUCCESS, 4));
        let st = cublasLtMatmulDescGetAttribute(
            lt.desc,
            desc_attr::TRANSA,
            (&mut v as *mut i32).cast(),
            4,
            &mut written,
        );
        assert_eq!((st, v), (SUCCESS, 1));
        let st = cublasLtMatmulDescGetAttribute(
            lt.desc,
            desc_attr::TRANSA,
            (&mut v as *mut i32).cast(),
            8,
            null_mut(),
        );
        assert_eq!(st, INVALID_VALUE);
        let mut ld = 0i64;
        let st = cublasLtMatrixLayoutGetAttribute(
            lt.layouts[0],
            layout_attr::LD,
            (&mut ld as *mut i64).cast(),
            8,
            null_mut(),
        );
        assert_eq!((st, ld), (SUCCESS, 5 + 3));
        let mut align = 0u32;
        let st = cublasLtMatmulPreferenceGetAttribute(
            lt.pref,
            pref_attr::MIN_ALIGNMENT_B_BYTES,
            (&mut align as *mut u32).cast(),
            4,
            null_mut(),
        );
        assert_eq!((st, align), (SUCCESS, 256));
    }
}

#[test]
fn destroyed_objects_are_refused() {
    let spec = Spec::f32(2, 2, 2, false, false);
    let mut lt = Lt::new(&spec);
    let bufs = Bufs::new(&spec, None);
    // SAFETY: live handle, destroyed once; later calls must refuse it, not touch it.
    unsafe {
        assert_eq!(cublasLtDestroy(lt.handle), SUCCESS);
        assert_eq!(cublasLtDestroy(lt.handle), NOT_INITIALIZED);
        assert_eq!(cublasLtDestroy(null_mut()), NOT_INITIALIZED);
    }
    assert_eq!(lt.heuristic().0, NOT_INITIALIZED);
    assert_eq!(lt.matmul(1.0, 0.0, bufs.ptrs(), None), NOT_INITIALIZED);
    let mut handle = null_mut();
    // SAFETY: local out-pointer.
    assert_eq!(unsafe { cublasLtCreate(&mut handle) }, SUCCESS);
    lt.handle = handle;
    // A destroyed layout, and a descriptor passed where a handle belongs.
    // SAFETY: live layout, destroyed once.
    unsafe { assert_eq!(cublasLtMatrixLayoutDestroy(lt.layouts[2]), SUCCESS) };
    assert_eq!(lt.heuristic().0, INVALID_VALUE);
    assert_eq!(
        set_layout(lt.layouts[2], layout_attr::ROWS, 2u64),
        INVALID_VALUE
    );
    // SAFETY: destroyed again: refused; then the slot is nulled so Drop skips it.
    unsafe { assert_eq!(cublasLtMatrixLayoutDestroy(lt.layouts[2]), INVALID_VALUE) };
    lt.layouts[2] = null_mut();
    // SAFETY: a descriptor is not a handle, nor a layout.
    unsafe {
        assert_eq!(cublasLtDestroy(lt.desc), NOT_INITIALIZED);
        assert_eq!(cublasLtMatrixLayoutDestroy(lt.desc), INVALID_VALUE);
    }
}

#[test]
fn null_arguments_are_invalid() {
    let spec = Spec::f32(2, 2, 2, false, false);
    let lt = Lt::new(&spec);
    let bufs = Bufs::new(&spec, None);
    // SAFETY: null out-pointers are refused before use.
    unsafe {
        assert_eq!(cublasLtCreate(null_mut()), INVALID_VALUE);
        assert_eq!(
            cublasLtMatrixLayoutCreate(null_mut(), CUDA_R_32F, 1, 1, 1),
            INVALID_VALUE
        );
    }
    let (alpha, beta) = (1.0f32, 0.0f32);
    let mut call = lt.call(&alpha, &beta, bufs.ptrs(), None);
    call.alpha = null();
    // SAFETY: refused before any buffer is touched.
    assert_eq!(
        unsafe { matmul_with(&call, None, None) }
            .unwrap_err()
            .status,
        INVALID_VALUE
    );
    let no_b = Pointers {
        b: null(),
        ..bufs.ptrs()
    };
    assert_eq!(lt.matmul(1.0, 0.0, no_b, None), INVALID_VALUE);
    // beta != 0 needs a C; beta == 0 does not.
    let no_c = Pointers {
        c: null(),
        ..bufs.ptrs()
    };
    assert_eq!(lt.matmul(1.0, 1.0, no_c, None), INVALID_VALUE);
    assert_eq!(lt.matmul(1.0, 0.0, no_c, None), SUCCESS);
    // An algorithm this library did not produce.
    assert_eq!(
        lt.matmul(1.0, 0.0, bufs.ptrs(), Some(&[7; 8])),
        INVALID_VALUE
    );
}

#[test]
fn in_place_needs_equal_layouts_and_overlap_is_refused() {
    let spec = Spec::f32(4, 3, 2, false, false);
    let lt = Lt::new(&spec);
    let bufs = Bufs::new(&spec, None);
    assert_eq!(set_layout(lt.layouts[2], layout_attr::LD, 9i64), SUCCESS);
    let in_place = Pointers {
        c: bufs.d.ptr(),
        ..bufs.ptrs()
    };
    assert_eq!(lt.matmul(1.0, 1.0, in_place, None), INVALID_VALUE);
    // D over A.
    let over = Pointers {
        d: bufs.a.ptr(),
        ..bufs.ptrs()
    };
    assert_eq!(lt.matmul(1.0, 0.0, over, None), INVALID_VALUE);
}

/// A device whose only memory is the listed ranges; records faults.
struct FakeDevice {
    ranges: Vec<(u64, u64)>,
    sticky: bool,
    faults: Mutex<Vec<(i32, String)>>,
}

impl DeviceMemory for FakeDevice {
    fn sticky_error(&self) -> bool {
        self.sticky
    }
    fn contains(&self, ptr: u64, bytes: u64) -> bool {
        self.ranges
            .iter()
            .any(|&(start, len)| ptr >= start && ptr + bytes <= start + len)
    }
    fn report_fault(&self, cuda_result: i32, message: &str) {
        self.faults
            .lock()
            .unwrap()
            .push((cuda_result, message.to_string()));
    }
}

#[test]
fn a_matrix_outside_device_memory_faults() {
    let spec = Spec::f32(5, 4, 3, false, false);
    let lt = Lt::new(&spec);
    let bufs = Bufs::new(&spec, None);
    let bytes = spec.spans().map(|s| (s * 4) as u64);
    let p = bufs.ptrs();
    let addr = [p.a as u64, p.b as u64, p.c as u64, p.d as u64];
    // B's allocation is one element short of what ldb and the shape reach.
    let mut dev = FakeDevice {
        ranges: vec![
            (addr[0], bytes[0]),
            (addr[1], bytes[1] - 4),
            (addr[2], bytes[2]),
            (addr[3], bytes[3]),
        ],
        sticky: false,
        faults: Mutex::new(Vec::new()),
    };
    let (alpha, beta) = (1.0f32, 1.0f32);
    let call = lt.call(&alpha, &beta, p, None);
    let d_before = bufs
        .d
        .f32s(spec.spans()[3])
        .iter()
        .map(|x| x.to_bits())
        .collect::<Vec<_>>();
    // SAFETY: the buffers fit; the fake device refuses B before anything is read.
    let err = unsafe { matmul_with(&call, Some(&dev), None) }.unwrap_err();
    assert_eq!(err.status, EXECUTION_FAILED);
    let faults = dev.faults.lock().unwrap().clone();
    assert_eq!(faults.len(), 1);
    assert_eq!(faults[0].0, 700);
    assert!(
        faults[0].1.contains("B spans") && faults[0].1.contains("ldb"),
        "{}",
        faults[0].1
    );
    let d_after = bufs
        .d
        .f32s(spec.spans()[3])
        .iter()
        .map(|x| x.to_bits())
        .collect::<Vec<_>>();
    assert_eq!(d_before, d_after, "nothing is computed after a fault");
    // With all of B mapped it runs; with a sticky error it does not.
    dev.ranges[1].1 = bytes[1];
    // SAFETY: as above.
    assert!(unsafe { matmul_with(&call, Some(&dev), None) }.is_ok());
    dev.sticky = true;
    // SAFETY: as above.
    let err = unsafe { matmul_with(&call, Some(&dev), None) }.unwrap_err();
    assert_eq!(err.status, EXECUTION_FAILED);
}

#[test]
fn status_strings_name_unimplemented_entry_points() {
    // SAFETY: C strings with static lifetime.
    let text = |s: i32| {
        unsafe { CStr::from_ptr(cublasLtGetStatusString(s)) }
            .to_string_lossy()
            .into_owned()
    };
    // SAFETY: as above.
    let name = |s: i32| {
        unsafe { CStr::from_ptr(cublasLtGetStatusName(s)) }
            .to_string_lossy()
            .into_owned()
    };
    assert_eq!(name(INVALID_VALUE), "CUBLAS_STATUS_INVALID_VALUE");
    assert_eq!(name(12345), "CUBLAS_STATUS_UNKNOWN");
    assert!(text(EXECUTION_FAILED).starts_with("CUBLAS_STATUS_EXECUTION_FAILED"));
    assert_eq!(crate::cublasLtMatrixTransform(), NOT_SUPPORTED);
    assert_eq!(
        text(NOT_SUPPORTED),
        "CUBLAS_STATUS_NOT_SUPPORTED (cublasLtMatrixTransform is not implemented by the ingot stand-in)"
    );
}

#[test]
fn versions_and_properties() {
    assert_eq!(cublasLtGetVersion(), 130_000);
    assert_eq!(cublasLtGetCudartVersion(), 13_000);
    let mut v = -1;
    // SAFETY: local out-pointer.
    unsafe {
        assert_eq!(cublasLtGetProperty(0, &mut v), SUCCESS);
        assert_eq!(v, 13);
        assert_eq!(cublasLtGetProperty(1, &mut v), SUCCESS);
        assert_eq!(v, 0);
        assert_eq!(cublasLtGetProperty(7, &mut v), INVALID_VALUE);
    }
    assert_eq!(cublasLtLoggerSetLevel(9), INVALID_VALUE);
}

#[test]
fn empty_problems_succeed_without_touching_memory() {
    let spec = Spec::f32(0, 3, 4, false, false);
    let lt = Lt::new(&spec);
    let bufs = Bufs::new(&spec, None);
    assert_eq!(lt.heuristic().0, SUCCESS);
    assert_eq!(lt.matmul(1.0, 0.0, bufs.ptrs(), None), SUCCESS);
}
