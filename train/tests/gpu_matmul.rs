//! The cuBLASLt GEMMs of `ingot_kernels::matmul::Blas` against the CPU reference ops
//! `ingot_train::engine::cpu::ops::{linear_forward, linear_backward}` (f32).
//!
//! Rules of every test here:
//! - inputs are fresh random numbers (SplitMix64 below), never zeros;
//! - every output is poisoned with NaN before the call and must come back finite (fully
//!   written; with beta = 0 the poisoned `dw` must not be read); the accumulating `dw`
//!   (beta = 1) starts from random values instead;
//! - the error is `‖gpu − cpu‖₂ / ‖cpu‖₂` (f64) against the CPU op in f32 on the same inputs
//!   (for bf16 inputs: on the inputs rounded to bf16). Tolerances: [`F32_TOL`] = 1e-5 for
//!   f32 inputs (pure FP32 compute, no TF32), [`BF16_TOL`] = 1e-2 for bf16 inputs (whether the
//!   output is bf16 or f32);
//! - determinism: the same GEMM run twice gives bitwise equal results, and the second run
//!   chooses no new algorithm (the per-shape cache).
//!
//! Shapes: an odd one (n=37, in=19, out=23), the 15M model's MLP (2048×288 → 768 and
//! 2048×768 → 288) and an LM head (2048×768 → 50257; 64 rows on the stand-in device).
//!
//! Without a usable GPU (no driver, no device) or without cuBLASLt each test prints
//! `SKIPPED: <reason>` and passes, unless `INGOT_REQUIRE_GPU=1`, which makes it fail.
//!
//! On a GPU machine (libcublasLt.so.13 on `LD_LIBRARY_PATH`):
//! `INGOT_REQUIRE_GPU=1 cargo test --release -p ingot-train --test gpu_matmul -- --nocapture`

use std::sync::{Arc, OnceLock};

use ingot_kernels::launch::{Bf16, DeviceRepr, Storage};
use ingot_kernels::matmul::{self, Blas, CudaSlice, CudaStream};
use ingot_train::engine::cpu::ops;

/// Relative L2 error allowed with f32 inputs (f32 compute and output).
const F32_TOL: f64 = 1e-5;
/// Relative L2 error allowed with bf16 inputs.
const BF16_TOL: f64 = 1e-2;

/// `(n, in, out)`.
const ODD: (usize, usize, usize) = (37, 19, 23);
const MLP_UP: (usize, usize, usize) = (2048, 288, 768);
const MLP_DOWN: (usize, usize, usize) = (2048, 768, 288);
const LM_HEAD: (usize, usize, usize) = (2048, 768, 50257);

/// [`LM_HEAD`], with 64 rows instead of 2048 on the stand-in device (`emulator/`), where the
/// GEMM and its CPU reference both run on the CPU; the odd vocabulary stays.
fn lm_head() -> (usize, usize, usize) {
    let emulated = ingot_kernels::probe::cuda_device(0).is_ok_and(|d| d.is_emulated());
    if emulated {
        (64, LM_HEAD.1, LM_HEAD.2)
    } else {
        LM_HEAD
    }
}

// ---- the device, or a skip ------------------------------------------------------------------

/// Device 0 through `Blas::open` (driver probe, cuBLASLt probe, context; no NVRTC needed).
fn open() -> Result<Blas, String> {
    Blas::open(0).map_err(|e| e.to_string())
}

/// The shared cuBLASLt handle, or `None` after printing `SKIPPED: ...`.
fn blas() -> Option<&'static Blas> {
    static BLAS: OnceLock<Result<Blas, String>> = OnceLock::new();
    match BLAS.get_or_init(open) {
        Ok(b) => Some(b),
        Err(msg) => {
            if std::env::var("INGOT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("INGOT_REQUIRE_GPU=1 but no usable GPU or cuBLASLt: {msg}");
            }
            println!("SKIPPED: {msg}");
            None
        }
    }
}

// ---- random inputs --------------------------------------------------------------------------

/// The model's SplitMix64 with test helpers.
struct Rng(ingot_train::model::init::Rng);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in [-scale, scale).
    fn uniform(&mut self, scale: f32) -> f32 {
        let u = (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32;
        (u * 2.0 - 1.0) * scale
    }

    fn vec(&mut self, len: usize, scale: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(scale)).collect()
    }
}

// ---- host helpers ---------------------------------------------------------------------------

fn store<T: Storage>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

fn rounded<T: Storage>(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| T::from_f32(x).to_f32()).collect()
}

fn stream(b: &Blas) -> &Arc<CudaStream> {
    b.stream()
}

fn up<T: DeviceRepr>(b: &Blas, v: &[T]) -> CudaSlice<T> {
    stream(b).clone_htod(v).expect("upload")
}

fn poisoned<T: Storage>(b: &Blas, len: usize) -> CudaSlice<T> {
    up(b, &vec![T::NAN; len])
}

/// Downloads as f32, after everything queued.
fn down<T: Storage + DeviceRepr>(b: &Blas, s: &CudaSlice<T>) -> Vec<f32> {
    let v = stream(b).clone_dtoh(s).expect("download");
    stream(b).synchronize().expect("synchronize");
    v.iter().map(|&x| x.to_f32()).collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = f64::from(x) - f64::from(y);
        num += d * d;
        den += f64::from(y) * f64::from(y);
    }
    num.sqrt() / den.sqrt().max(1e-300)
}

/// Asserts `gpu` is finite everywhere (the NaN poison is gone) and within `tol` of `cpu`.
fn check(name: &str, gpu: &[f32], cpu: &[f32], tol: f64) {
    assert_eq!(gpu.len(), cpu.len(), "{name}: length");
    if let Some(i) = gpu.iter().position(|x| !x.is_finite()) {
        panic!("{name}: element {i} of {} is {}", gpu.len(), gpu[i]);
    }
    let err = rel_err(gpu, cpu);
    println!("{name:<56} rel err {err:.2e} (tol {tol:.0e})");
    assert!(err < tol, "{name}: rel err {err:e} >= {tol:e}");
}

fn check_bits(name: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{name}: length");
    if let Some(i) = (0..a.len()).find(|&i| a[i].to_bits() != b[i].to_bits()) {
        panic!("{name}: element {i} differs: {:e} vs {:e}", a[i], b[i]);
    }
    println!("{name:<56} bitwise equal ({} elements)", a.len());
}

// ---- the comparison -------------------------------------------------------------------------

/// The CPU results on (already rounded) inputs: `y`, `dx`, `dyᵀ·x`.
struct Cpu {
    y: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
}

fn cpu(x: &[f32], w: &[f32], dy: &[f32], (n, i, o): (usize, usize, usize)) -> Cpu {
    let mut y = vec![0.0f32; n * o];
    ops::linear_forward(&mut y, x, w, n, i, o);
    let mut dx = vec![0.0f32; n * i];
    let mut dw = vec![0.0f32; o * i];
    ops::linear_backward(&mut dx, &mut dw, dy, x, w, n, i, o);
    Cpu { y, dx, dw }
}

/// Forward, dx (into `O`), dw with beta = 0 (NaN-poisoned) and beta = 1 (random start), for
/// inputs stored as `T`.
fn linear<T: Storage, O: Storage>(shape: (usize, usize, usize), seed: u64, tol: f64) {
    let Some(b) = blas() else { return };
    let (n, i, o) = shape;
    let mut rng = Rng(ingot_train::model::init::Rng(seed));
    let x = rng.vec(n * i, 1.0);
    let w = rng.vec(o * i, 0.5);
    let dy = rng.vec(n * o, 1.0);
    let dw0 = rng.vec(o * i, 1.0);
    let want = cpu(
        &rounded::<T>(&x),
        &rounded::<T>(&w),
        &rounded::<T>(&dy),
        shape,
    );
    let tag = format!("{}->{} n={n} in={i} out={o}", T::SUFFIX, O::SUFFIX);
    let (xd, wd, dyd) = (
        up(b, &store::<T>(&x)),
        up(b, &store::<T>(&w)),
        up(b, &store::<T>(&dy)),
    );

    let mut y = poisoned::<O>(b, n * o);
    b.linear_forward(&mut y, &xd, &wd, n, i, o).unwrap();
    let o_tol = if O::SUFFIX == "bf16" { BF16_TOL } else { tol };
    check(
        &format!("linear_forward {tag}"),
        &down(b, &y),
        &rounded::<O>(&want.y),
        o_tol,
    );

    let mut dx = poisoned::<O>(b, n * i);
    b.linear_backward_dx(&mut dx, &dyd, &wd, n, i, o).unwrap();
    check(
        &format!("linear_backward_dx {tag}"),
        &down(b, &dx),
        &rounded::<O>(&want.dx),
        o_tol,
    );

    let mut dw = poisoned::<f32>(b, o * i);
    b.linear_backward_dw(&mut dw, &dyd, &xd, n, i, o, false)
        .unwrap();
    check(
        &format!("linear_backward_dw beta=0 {tag}"),
        &down(b, &dw),
        &want.dw,
        tol,
    );

    let mut dw = up(b, &dw0);
    b.linear_backward_dw(&mut dw, &dyd, &xd, n, i, o, true)
        .unwrap();
    let want_acc: Vec<f32> = dw0.iter().zip(&want.dw).map(|(a, g)| a + g).collect();
    check(
        &format!("linear_backward_dw beta=1 {tag}"),
        &down(b, &dw),
        &want_acc,
        tol,
    );
}

/// Every op twice on the same inputs: bitwise equal, and no new algorithm on the second run.
/// On a handle of its own (same stream): the shared one's plan cache grows while other tests
/// run in parallel.
fn determinism<T: Storage>(shape: (usize, usize, usize), seed: u64) {
    let Some(shared) = blas() else { return };
    let b = &Blas::new(shared.stream().clone()).expect("a second cuBLASLt handle");
    let (n, i, o) = shape;
    let mut rng = Rng(ingot_train::model::init::Rng(seed));
    let (xd, wd, dyd) = (
        up(b, &store::<T>(&rng.vec(n * i, 1.0))),
        up(b, &store::<T>(&rng.vec(o * i, 0.5))),
        up(b, &store::<T>(&rng.vec(n * o, 1.0))),
    );
    let dw0 = rng.vec(o * i, 1.0);
    let run = || {
        let mut y = poisoned::<f32>(b, n * o);
        let mut dx = poisoned::<f32>(b, n * i);
        let mut dw = up(b, &dw0);
        // f32 outputs (for bf16 inputs too: the exact accumulator shows any change).
        b.linear_forward(&mut y, &xd, &wd, n, i, o).unwrap();
        b.linear_backward_dx(&mut dx, &dyd, &wd, n, i, o).unwrap();
        b.linear_backward_dw(&mut dw, &dyd, &xd, n, i, o, true)
            .unwrap();
        (down(b, &y), down(b, &dx), down(b, &dw))
    };
    let first = run();
    let plans = b.cached_plans();
    let second = run();
    assert_eq!(
        b.cached_plans(),
        plans,
        "the second run chose new algorithms"
    );
    let tag = format!("{} n={n} in={i} out={o}", T::SUFFIX);
    check_bits(&format!("determinism forward {tag}"), &first.0, &second.0);
    check_bits(
        &format!("determinism backward_dx {tag}"),
        &first.1,
        &second.1,
    );
    check_bits(
        &format!("determinism backward_dw {tag}"),
        &first.2,
        &second.2,
    );
}

// ---- tests ----------------------------------------------------------------------------------

#[test]
fn f32_odd_shape() {
    linear::<f32, f32>(ODD, 1, F32_TOL);
}

#[test]
fn f32_mlp_shapes() {
    linear::<f32, f32>(MLP_UP, 2, F32_TOL);
    linear::<f32, f32>(MLP_DOWN, 3, F32_TOL);
}

#[test]
fn f32_lm_head() {
    linear::<f32, f32>(lm_head(), 4, F32_TOL);
}

#[test]
fn bf16_odd_shape() {
    linear::<Bf16, Bf16>(ODD, 5, BF16_TOL);
    linear::<Bf16, f32>(ODD, 6, BF16_TOL);
}

#[test]
fn bf16_mlp_shapes() {
    linear::<Bf16, Bf16>(MLP_UP, 7, BF16_TOL);
    linear::<Bf16, f32>(MLP_DOWN, 8, BF16_TOL);
}

#[test]
fn bf16_lm_head() {
    linear::<Bf16, Bf16>(lm_head(), 9, BF16_TOL);
}

#[test]
fn deterministic() {
    determinism::<f32>(ODD, 10);
    determinism::<f32>(lm_head(), 11);
    determinism::<Bf16>(MLP_UP, 12);
}

/// Wrong buffer lengths, empty shapes and f32 → bf16 are errors, never panics.
#[test]
fn invalid_calls_are_errors() {
    let Some(b) = blas() else { return };
    let (n, i, o) = ODD;
    let x = up(b, &vec![1.0f32; n * i]);
    let w = up(b, &vec![1.0f32; o * i]);
    let mut y_short = poisoned::<f32>(b, n * o - 1);
    let e = b.linear_forward(&mut y_short, &x, &w, n, i, o).unwrap_err();
    assert!(matches!(e, matmul::Error::Invalid(_)), "{e}");
    let mut y = poisoned::<f32>(b, n * o);
    assert!(b.linear_forward(&mut y, &x, &w, 0, i, o).is_err());
    let mut yb = poisoned::<Bf16>(b, n * o);
    let e = b.linear_forward(&mut yb, &x, &w, n, i, o).unwrap_err();
    assert!(!e.to_string().contains('\n'));
    println!("invalid calls rejected: {e}");
}
