//! Every CUDA kernel of `ingot-kernels`, launched through `ingot_kernels::launch::Gpu`, against
//! the CPU reference ops (`ingot_train::engine::cpu::ops`, f32) and the CPU AdamW.
//!
//! Rules of every test here:
//! - inputs are fresh random numbers (SplitMix64 below), never zeros;
//! - every output buffer is poisoned with NaN before the launch and must come back finite
//!   (fully written); in-place and accumulating outputs start from random values instead;
//! - the error is `‖gpu − cpu‖₂ / ‖cpu‖₂` (f64), against the CPU op run in f32 on the same
//!   inputs (for bf16 storage: on the inputs rounded to bf16); cross-entropy alone is held to
//!   the same CPU op run in f64 (the f32 op's left-to-right sum over 50k logits is itself off
//!   by a few 1e-6). Tolerances: [`F32_TOL`] = 1e-5 for f32 kernels, [`BF16_TOL`] = 1e-2 for
//!   outputs stored in bf16; a few kernels are checked bit for bit where the kernel claims it
//!   (copies, casts, in-order sums, AdamW).
//!
//! Without a usable GPU (no driver, no device, no NVRTC) each test prints
//! `SKIPPED: <reason>` and passes, unless `INGOT_REQUIRE_GPU=1`, which makes it fail.
//!
//! On a GPU machine (NVRTC on `LD_LIBRARY_PATH` or `INGOT_NVRTC_LIB`):
//! `INGOT_REQUIRE_GPU=1 cargo test --release -p ingot-train --test gpu_kernels -- --nocapture`
//! (or `scripts/gpu-check.sh` with a bundle from `scripts/gpu-bundle.sh`).

use std::sync::OnceLock;

use ingot_kernels::launch::{
    AdamWHyper, Bf16, CudaSlice, DeviceRepr, Gpu, LaunchConfig, Storage, ATTENTION_MMA_MIN_MAJOR,
    IGNORE_TARGET,
};
use ingot_train::engine::cpu::ops;
use ingot_train::engine::optim::{adamw_step, global_norm, AdamW};

/// Relative L2 error allowed for kernels computing and storing f32.
const F32_TOL: f64 = 1e-5;
/// Relative L2 error allowed for outputs stored in bf16 (8 significant bits: ~2e-3 per
/// element from the final rounding alone).
const BF16_TOL: f64 = 1e-2;

/// The tolerance of outputs stored in `T`.
fn tol<T: Storage>() -> f64 {
    if T::SUFFIX == "f32" {
        F32_TOL
    } else {
        BF16_TOL
    }
}

// ---- the device, or a skip ------------------------------------------------------------------

/// The shared device (kernels compiled once), or `None` after printing `SKIPPED: ...`.
fn gpu() -> Option<&'static Gpu> {
    static GPU: OnceLock<Result<Gpu, String>> = OnceLock::new();
    match GPU.get_or_init(|| Gpu::new(0).map_err(|e| e.to_string())) {
        Ok(g) => Some(g),
        Err(msg) => {
            if std::env::var("INGOT_REQUIRE_GPU").is_ok_and(|v| v == "1") {
                panic!("INGOT_REQUIRE_GPU=1 but no usable GPU: {msg}");
            }
            println!("SKIPPED: {msg}");
            None
        }
    }
}

/// The longest sequence of the attention tests: 1024 on a GPU, 192 on the stand-in device
/// (`emulator/`, the grid runs on the CPU): three 64-row tiles still give the tensor-core
/// kernels a first, a middle and a diagonal tile, and every code path runs in seconds.
fn long_t() -> usize {
    match gpu() {
        Some(g) if g.info.is_emulated() => 192,
        _ => 1024,
    }
}

// ---- random inputs --------------------------------------------------------------------------

/// The model's SplitMix64 with test helpers.
struct Rng(ingot_train::model::init::Rng);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(ingot_train::model::init::Rng(seed))
    }

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

    fn below(&mut self, n: u32) -> u32 {
        (self.next_u64() % u64::from(n)) as u32
    }
}

// ---- host helpers ---------------------------------------------------------------------------

/// `v` rounded to `T` (what the device stores).
fn store<T: Storage>(v: &[f32]) -> Vec<T> {
    v.iter().map(|&x| T::from_f32(x)).collect()
}

/// `v` rounded to `T` and widened back: the values the CPU reference sees.
fn rounded<T: Storage>(v: &[f32]) -> Vec<f32> {
    v.iter().map(|&x| T::from_f32(x).to_f32()).collect()
}

fn widen<T: Storage>(v: &[T]) -> Vec<f32> {
    v.iter().map(|&x| x.to_f32()).collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn up<T: DeviceRepr>(g: &Gpu, v: &[T]) -> CudaSlice<T> {
    g.upload(v).expect("upload")
}

/// A device buffer of `len` NaNs.
fn poisoned<T: Storage>(g: &Gpu, len: usize) -> CudaSlice<T> {
    g.filled(len, T::NAN).expect("alloc")
}

/// Downloads a storage buffer as f32.
fn down<T: Storage>(g: &Gpu, s: &CudaSlice<T>) -> Vec<f32> {
    widen(&g.download(s).expect("download"))
}

/// `‖a − b‖ / ‖b‖` in f64; `‖a‖` where `b` is exactly zero. A reference can vanish exactly
/// (dq at T = 1: one key, so the softmax is flat and dS = P (dP − delta) is 0), while the
/// tensor-core kernels, summing dP and delta in different orders, leave ~1e-7 of rounding:
/// against all-zero data the error is absolute, on the O(1) scale every input here has.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        let d = f64::from(x) - f64::from(y);
        num += d * d;
        den += f64::from(y) * f64::from(y);
    }
    if den == 0.0 {
        num.sqrt()
    } else {
        num.sqrt() / den.sqrt()
    }
}

/// Asserts `gpu` is fully written (finite everywhere: the NaN poison is gone) and within
/// `tol` of `cpu`; prints the error.
fn check(name: &str, gpu: &[f32], cpu: &[f32], tol: f64) -> f64 {
    assert_eq!(gpu.len(), cpu.len(), "{name}: length");
    if let Some(i) = gpu.iter().position(|x| !x.is_finite()) {
        panic!(
            "{name}: element {i} of {} is {} (not written, or overflowed)",
            gpu.len(),
            gpu[i]
        );
    }
    let err = rel_err(gpu, cpu);
    println!("{name:<48} rel err {err:.2e} (tol {tol:.0e})");
    assert!(err < tol, "{name}: rel err {err:e} >= {tol:e}");
    err
}

/// Asserts bitwise equality.
fn check_bits(name: &str, gpu: &[f32], cpu: &[f32]) {
    assert_eq!(gpu.len(), cpu.len(), "{name}: length");
    if let Some(i) = (0..gpu.len()).find(|&i| gpu[i].to_bits() != cpu[i].to_bits()) {
        panic!(
            "{name}: element {i} differs: gpu {:e} ({:#010x}) vs cpu {:e} ({:#010x})",
            gpu[i],
            gpu[i].to_bits(),
            cpu[i],
            cpu[i].to_bits()
        );
    }
    println!("{name:<48} bitwise equal ({} elements)", gpu.len());
}

// ---- embedding --------------------------------------------------------------------------------

fn embedding<T: Storage>(seed: u64) {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(seed);
    let (vocab, d, n) = (1000usize, 192usize, 777usize);
    // Repeated ids on purpose (the backward must add them in token order).
    let ids: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32 / 8)).collect();
    let table = rng.vec(vocab * d, 1.0);
    let s = T::SUFFIX;

    // Forward, tolerance: bitwise (a copy).
    let mut x = poisoned::<T>(g, n * d);
    let ids_d = up(g, &ids);
    g.embedding_forward(&mut x, &up(g, &store::<T>(&table)), &ids_d, d)
        .unwrap();
    let mut want = vec![0.0f32; n * d];
    ops::embedding_forward(&mut want, &rounded::<T>(&table), &ids, d);
    check_bits(&format!("embedding_forward_{s}"), &down(g, &x), &want);

    // Backward into a random f32 gradient, tolerance: bitwise (same order, same adds).
    let dx = rng.vec(n * d, 1.0);
    let dtable0 = rng.vec(vocab * d, 1.0);
    let mut dtable = up(g, &dtable0);
    g.embedding_backward(&mut dtable, &up(g, &store::<T>(&dx)), &ids_d, d)
        .unwrap();
    let mut want = dtable0.clone();
    ops::embedding_backward(&mut want, &rounded::<T>(&dx), &ids, d);
    check_bits(
        &format!("embedding_backward_{s}"),
        &g.download(&dtable).unwrap(),
        &want,
    );
}

/// embedding_forward_f32 / embedding_backward_f32: bitwise.
#[test]
fn embedding_f32() {
    embedding::<f32>(1);
}

/// embedding_forward_bf16 / embedding_backward_bf16: bitwise (copies; f32 sums of bf16 values).
#[test]
fn embedding_bf16() {
    embedding::<Bf16>(2);
}

// ---- rmsnorm ----------------------------------------------------------------------------------

fn rmsnorm<T: Storage>(seed: u64) {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(seed);
    let s = T::SUFFIX;
    for (n, d) in [(300usize, 1000usize), (64, 4096), (5, 7)] {
        let eps = 1e-5f32;
        let x = rng.vec(n * d, 2.0);
        let w: Vec<f32> = (0..d).map(|_| 1.0 + rng.uniform(0.5)).collect();
        let (xr, wr) = (rounded::<T>(&x), rounded::<T>(&w));
        let (x_d, w_d) = (up(g, &store::<T>(&x)), up(g, &store::<T>(&w)));

        let mut y = poisoned::<T>(g, n * d);
        let mut rstd = poisoned::<f32>(g, n);
        g.rmsnorm_forward(&mut y, &mut rstd, &x_d, &w_d, n, d, eps)
            .unwrap();
        let (mut y_cpu, mut rstd_cpu) = (vec![0.0; n * d], vec![0.0; n]);
        ops::rmsnorm_forward(&mut y_cpu, &mut rstd_cpu, &xr, &wr, n, d, eps);
        check(
            &format!("rmsnorm_forward_{s} y n={n} d={d}"),
            &down(g, &y),
            &y_cpu,
            tol::<T>(),
        );
        // rstd is f32 computed from the same (rounded) inputs: the f32 tolerance.
        check(
            &format!("rmsnorm_forward_{s} rstd n={n} d={d}"),
            &g.download(&rstd).unwrap(),
            &rstd_cpu,
            F32_TOL,
        );

        let dy = rng.vec(n * d, 1.0);
        let dyr = rounded::<T>(&dy);
        let dw0 = rng.vec(d, 1.0);
        let mut dx = poisoned::<T>(g, n * d);
        let mut dw = up(g, &dw0);
        g.rmsnorm_backward(
            &mut dx,
            &mut dw,
            &up(g, &store::<T>(&dy)),
            &x_d,
            &w_d,
            &rstd,
            n,
            d,
        )
        .unwrap();
        let (mut dx_cpu, mut dw_cpu) = (vec![0.0; n * d], dw0.clone());
        ops::rmsnorm_backward(&mut dx_cpu, &mut dw_cpu, &dyr, &xr, &wr, &rstd_cpu, n, d);
        check(
            &format!("rmsnorm_backward_dx_{s} n={n} d={d}"),
            &down(g, &dx),
            &dx_cpu,
            tol::<T>(),
        );
        // dw is an f32 sum of the same (rounded) inputs: the f32 tolerance.
        check(
            &format!("rmsnorm_backward_dw_{s} n={n} d={d}"),
            &g.download(&dw).unwrap(),
            &dw_cpu,
            F32_TOL,
        );
    }
}

/// rmsnorm_forward_f32 / rmsnorm_backward_dx_f32 / rmsnorm_backward_dw_f32: 1e-5.
#[test]
fn rmsnorm_f32() {
    rmsnorm::<f32>(3);
}

/// rmsnorm_*_bf16: y and dx 1e-2 (bf16), rstd and dw 1e-5 (f32 from the same bf16 inputs).
#[test]
fn rmsnorm_bf16() {
    rmsnorm::<Bf16>(4);
}

// ---- rope ---------------------------------------------------------------------------------------

/// The CPU's tables (`rope.rs` `tables`): angles in f64, rounded to f32.
fn rope_tables_host(t: usize, hd: usize, theta: f64) -> (Vec<f32>, Vec<f32>) {
    let half = hd / 2;
    let (mut cos, mut sin) = (Vec::new(), Vec::new());
    for p in 0..t {
        for i in 0..half {
            let angle = p as f64 * theta.powf(-((2 * i) as f64) / hd as f64);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    (cos, sin)
}

fn rope<T: Storage>(seed: u64) {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(seed);
    let s = T::SUFFIX;
    for (b, t, heads, hd, theta) in [
        (2usize, 300usize, 8usize, 64usize, 10_000.0f64),
        (1, 1024, 2, 128, 500_000.0),
    ] {
        // rope_tables: f32 from f64 on both sides, tolerance 1e-5.
        let (cos, sin) = g.rope_tables(t, hd, theta).unwrap();
        let (cos_h, sin_h) = rope_tables_host(t, hd, theta);
        check(
            &format!("rope_tables cos t={t} hd={hd}"),
            &g.download(&cos).unwrap(),
            &cos_h,
            F32_TOL,
        );
        check(
            &format!("rope_tables sin t={t} hd={hd}"),
            &g.download(&sin).unwrap(),
            &sin_h,
            F32_TOL,
        );
        for inverse in [false, true] {
            let x = rng.vec(b * t * heads * hd, 1.0);
            let mut x_d = up(g, &store::<T>(&x));
            g.rope(&mut x_d, &cos, &sin, b, t, heads, hd, inverse)
                .unwrap();
            let mut want = rounded::<T>(&x);
            if inverse {
                ops::rope_backward(&mut want, b, t, heads, hd, theta);
            } else {
                ops::rope_forward(&mut want, b, t, heads, hd, theta);
            }
            let dir = if inverse { "backward" } else { "forward" };
            check(
                &format!("rope_{dir}_{s} b={b} t={t} hd={hd}"),
                &down(g, &x_d),
                &want,
                tol::<T>(),
            );
        }
    }
}

/// rope_tables, rope_forward_f32, rope_backward_f32: 1e-5.
#[test]
fn rope_f32() {
    rope::<f32>(5);
}

/// rope_forward_bf16, rope_backward_bf16: 1e-2.
#[test]
fn rope_bf16() {
    rope::<Bf16>(6);
}

// ---- attention ----------------------------------------------------------------------------------

/// Log-sum-exp of query row `(bi, h, i)` in f64 from the f32 inputs (for the saved lse).
#[allow(clippy::too_many_arguments)]
fn lse_host(
    q: &[f32],
    k: &[f32],
    (bi, h, i): (usize, usize, usize),
    t: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) -> f64 {
    let (qw, kw) = (nh * hd, nkv * hd);
    let kvh = h / (nh / nkv);
    let scale = f64::from(Gpu::attention_scale(hd));
    let qi = &q[(bi * t + i) * qw + h * hd..][..hd];
    let scores: Vec<f64> = (0..=i)
        .map(|j| {
            let kj = &k[(bi * t + j) * kw + kvh * hd..][..hd];
            scale
                * qi.iter()
                    .zip(kj)
                    .map(|(&a, &b)| f64::from(a) * f64::from(b))
                    .sum::<f64>()
        })
        .collect();
    let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln()
}

/// The CPU reference backward: `[dq, dk, dv]` from `dout` and the forward's probabilities.
fn cpu_attention_backward(
    dout: &[f32],
    probs: &[f32],
    [q, k, v]: [&[f32]; 3],
    [b, t, nh, nkv, hd]: [usize; 5],
) -> [Vec<f32>; 3] {
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    ops::attention_backward(
        &mut dq, &mut dk, &mut dv, dout, probs, q, k, v, b, t, nh, nkv, hd,
    );
    [dq, dk, dv]
}

#[allow(clippy::too_many_arguments)]
fn attention<T: Storage>(seed: u64, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(seed);
    let s = T::SUFFIX;
    let tag = format!("b={b} t={t} nh={nh} nkv={nkv} hd={hd}");
    let (nq, nk) = (b * t * nh * hd, b * t * nkv * hd);
    // q scaled up so the softmax rows are far from uniform.
    let q = rounded::<T>(&rng.vec(nq, 3.0));
    let k = rounded::<T>(&rng.vec(nk, 1.0));
    let v = rounded::<T>(&rng.vec(nk, 1.0));
    let dout = rounded::<T>(&rng.vec(nq, 1.0));
    let (q_d, k_d, v_d) = (
        up(g, &store::<T>(&q)),
        up(g, &store::<T>(&k)),
        up(g, &store::<T>(&v)),
    );

    let mut out = poisoned::<T>(g, nq);
    let mut lse = poisoned::<f32>(g, b * nh * t);
    g.attention_forward(&mut out, &mut lse, &q_d, &k_d, &v_d, b, t, nh, nkv, hd)
        .unwrap();

    let mut out_cpu = vec![0.0f32; nq];
    let mut probs = vec![0.0f32; b * nh * t * t];
    ops::attention_forward(&mut out_cpu, &mut probs, &q, &k, &v, b, t, nh, nkv, hd);
    let out_gpu = down(g, &out);
    let e_out = check(
        &format!("attention_forward_{s} out {tag}"),
        &out_gpu,
        &out_cpu,
        tol::<T>(),
    );

    // lse: all rows written; a sample of rows against an f64 log-sum-exp, tolerance 1e-5.
    let lse_gpu = g.download(&lse).unwrap();
    let (mut sampled_gpu, mut sampled_ref) = (Vec::new(), Vec::new());
    for row in (0..b * nh * t).step_by(37).chain([b * nh * t - 1]) {
        let (bh, i) = (row / t, row % t);
        sampled_gpu.push(lse_gpu[row]);
        sampled_ref.push(lse_host(&q, &k, (bh / nh, bh % nh, i), t, nh, nkv, hd) as f32);
    }
    assert!(
        lse_gpu.iter().all(|x| x.is_finite()),
        "attention lse not fully written"
    );
    check(
        &format!("attention_forward_{s} lse (sampled) {tag}"),
        &sampled_gpu,
        &sampled_ref,
        F32_TOL,
    );

    let mut dq = poisoned::<T>(g, nq);
    let mut dk = poisoned::<T>(g, nk);
    let mut dv = poisoned::<T>(g, nk);
    let mut delta = poisoned::<f32>(g, b * nh * t);
    g.attention_backward(
        &mut dq,
        &mut dk,
        &mut dv,
        &mut delta,
        &up(g, &store::<T>(&dout)),
        &out,
        &lse,
        &q_d,
        &k_d,
        &v_d,
        b,
        t,
        nh,
        nkv,
        hd,
    )
    .unwrap();
    let [dq_cpu, dk_cpu, dv_cpu] =
        cpu_attention_backward(&dout, &probs, [&q, &k, &v], [b, t, nh, nkv, hd]);
    let grads_gpu = [down(g, &dq), down(g, &dk), down(g, &dv)];
    let grads_cpu = [&dq_cpu, &dk_cpu, &dv_cpu];
    // delta = rowsum(dout ⊙ out) of the GPU's own out: fully written and f32-exact-ish.
    let delta_gpu = g.download(&delta).unwrap();
    let delta_ref: Vec<f32> = (0..b * nh * t)
        .map(|row| {
            let (bh, i) = (row / t, row % t);
            let at = ((bh / nh) * t + i) * nh * hd + (bh % nh) * hd;
            (0..hd)
                .map(|d| f64::from(dout[at + d]) * f64::from(out_gpu[at + d]))
                .sum::<f64>() as f32
        })
        .collect();
    check(
        &format!("attention_backward_delta_{s} {tag}"),
        &delta_gpu,
        &delta_ref,
        F32_TOL,
    );
    let mut errs = vec![e_out];
    for (name, (gpu, cpu)) in ["dq", "dk", "dv"]
        .iter()
        .zip(grads_gpu.iter().zip(grads_cpu))
    {
        errs.push(check(
            &format!("attention_backward_{s} {name} {tag}"),
            gpu,
            cpu,
            tol::<T>(),
        ));
    }

    // For f32, also how far each side is from an f64 run of the same CPU ops (diagnostic).
    if T::SUFFIX == "f32" {
        let f = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<f64>>();
        let (q64, k64, v64, do64) = (f(&q), f(&k), f(&v), f(&dout));
        let mut o64 = vec![0.0f64; nq];
        let mut p64 = vec![0.0f64; b * nh * t * t];
        ops::attention_forward(&mut o64, &mut p64, &q64, &k64, &v64, b, t, nh, nkv, hd);
        let (mut dq64, mut dk64, mut dv64) = (vec![0.0f64; nq], vec![0.0f64; nk], vec![0.0; nk]);
        ops::attention_backward(
            &mut dq64, &mut dk64, &mut dv64, &do64, &p64, &q64, &k64, &v64, b, t, nh, nkv, hd,
        );
        let n = |v: &[f64]| v.iter().map(|&x| x as f32).collect::<Vec<f32>>();
        for (name, gpu, cpu, r) in [
            ("out", &out_gpu, &out_cpu, n(&o64)),
            ("dq", &grads_gpu[0], &dq_cpu, n(&dq64)),
            ("dk", &grads_gpu[1], &dk_cpu, n(&dk64)),
            ("dv", &grads_gpu[2], &dv_cpu, n(&dv64)),
        ] {
            println!(
                "  {name}: gpu vs f64 {:.2e}, cpu f32 vs f64 {:.2e}",
                rel_err(gpu, &r),
                rel_err(cpu, &r)
            );
        }
    }
}

/// attention_forward_f32 + attention_backward_{delta,dq,dkv}_f32, GQA nh=8 nkv=2, hd=64,
/// T = 1, 100, [`long_t`]: 1e-5 (out, dq, dk, dv, delta, sampled lse).
#[test]
fn attention_f32_gqa_hd64() {
    attention::<f32>(7, 1, 1, 8, 2, 64);
    attention::<f32>(8, 2, 100, 8, 2, 64);
    attention::<f32>(9, 1, long_t(), 8, 2, 64);
}

/// As above at hd=128: 1e-5.
#[test]
fn attention_f32_gqa_hd128() {
    attention::<f32>(10, 2, 77, 8, 2, 128);
    attention::<f32>(11, 1, long_t(), 8, 2, 128);
}

/// Plain multi-head (nkv = nh) and head dims that are not multiples of 32 (lane masking),
/// plus the largest supported head dim (256): 1e-5.
#[test]
fn attention_f32_mha_odd_head_dims() {
    attention::<f32>(12, 2, 50, 4, 4, 48);
    attention::<f32>(13, 1, 33, 6, 3, 8);
    attention::<f32>(14, 1, 128, 2, 1, 256);
}

/// attention_*_bf16, GQA nh=8 nkv=2 at hd 64 and 128, T up to [`long_t`]: 1e-2 (out, dq, dk, dv);
/// delta and lse (f32) 1e-5.
#[test]
fn attention_bf16_gqa() {
    attention::<Bf16>(15, 2, 100, 8, 2, 64);
    attention::<Bf16>(16, 1, long_t(), 8, 2, 64);
    attention::<Bf16>(17, 1, long_t(), 8, 2, 128);
}

/// Host-side checks of the launcher: hd > 256 and nh not a multiple of nkv are refused.
#[test]
fn attention_rejects_unsupported_shapes() {
    let Some(g) = gpu() else { return };
    let z = |n: usize| g.zeros::<f32>(n).unwrap();
    let (mut out, mut lse) = (z(512), z(1));
    let err = g
        .attention_forward(
            &mut out,
            &mut lse,
            &z(512),
            &z(512),
            &z(512),
            1,
            1,
            1,
            1,
            512,
        )
        .unwrap_err();
    println!("expected: {err}");
    let (mut out, mut lse) = (z(3 * 64), z(3));
    assert!(g
        .attention_forward(
            &mut out,
            &mut lse,
            &z(3 * 64),
            &z(2 * 64),
            &z(2 * 64),
            1,
            1,
            3,
            2,
            64
        )
        .is_err());
}

/// The tensor-core kernels (`attention_{forward,backward_dq,backward_dkv}_mma_hd{64,128}_bf16`)
/// on bf16 inputs against the CPU ops (out, dq, dk, dv: 1e-2) and an f64 log-sum-exp of every
/// row (lse: 1e-5), and against the warp-per-row bf16 kernels on the same inputs (1e-2, lse
/// 1e-5), every output poisoned first. The CPU backward uses its own forward's
/// probabilities; the GPU ones the tensor-core forward's out and lse.
fn attention_mma(seed: u64, b: usize, t: usize, nh: usize, nkv: usize, hd: usize) {
    let Some(g) = gpu() else { return };
    if g.info.compute_capability.0 < ATTENTION_MMA_MIN_MAJOR {
        println!(
            "SKIPPED: attention_mma: {} is sm_{}{}, the tensor-core kernels need sm_80",
            g.info.name, g.info.compute_capability.0, g.info.compute_capability.1
        );
        return;
    }
    let mut rng = Rng::new(seed);
    let tag = format!("b={b} t={t} nh={nh} nkv={nkv} hd={hd}");
    let (nq, nk) = (b * t * nh * hd, b * t * nkv * hd);
    let q = rounded::<Bf16>(&rng.vec(nq, 3.0));
    let k = rounded::<Bf16>(&rng.vec(nk, 1.0));
    let v = rounded::<Bf16>(&rng.vec(nk, 1.0));
    let (q_d, k_d, v_d) = (
        up(g, &store::<Bf16>(&q)),
        up(g, &store::<Bf16>(&k)),
        up(g, &store::<Bf16>(&v)),
    );
    let mut out = poisoned::<Bf16>(g, nq);
    let mut lse = poisoned::<f32>(g, b * nh * t);
    g.attention_forward_mma(&mut out, &mut lse, &q_d, &k_d, &v_d, b, t, nh, nkv, hd)
        .unwrap();
    let (out_gpu, lse_gpu) = (down(g, &out), g.download(&lse).unwrap());

    let mut out_cpu = vec![0.0f32; nq];
    let mut probs = vec![0.0f32; b * nh * t * t];
    ops::attention_forward(&mut out_cpu, &mut probs, &q, &k, &v, b, t, nh, nkv, hd);
    check(
        &format!("attention_forward_mma out {tag}"),
        &out_gpu,
        &out_cpu,
        BF16_TOL,
    );
    let lse_ref: Vec<f32> = (0..b * nh * t)
        .map(|row| {
            let (bh, i) = (row / t, row % t);
            lse_host(&q, &k, (bh / nh, bh % nh, i), t, nh, nkv, hd) as f32
        })
        .collect();
    check(
        &format!("attention_forward_mma lse {tag}"),
        &lse_gpu,
        &lse_ref,
        F32_TOL,
    );

    let mut out_simt = poisoned::<Bf16>(g, nq);
    let mut lse_simt = poisoned::<f32>(g, b * nh * t);
    g.attention_forward(
        &mut out_simt,
        &mut lse_simt,
        &q_d,
        &k_d,
        &v_d,
        b,
        t,
        nh,
        nkv,
        hd,
    )
    .unwrap();
    check(
        &format!("attention_forward_mma out vs warp-per-row {tag}"),
        &out_gpu,
        &down(g, &out_simt),
        BF16_TOL,
    );
    check(
        &format!("attention_forward_mma lse vs warp-per-row {tag}"),
        &lse_gpu,
        &g.download(&lse_simt).unwrap(),
        F32_TOL,
    );

    // Backward from the tensor-core forward's out and lse, both ways.
    let dout = rounded::<Bf16>(&rng.vec(nq, 1.0));
    let dout_d = up(g, &store::<Bf16>(&dout));
    let mut grads = Vec::new();
    for mma in [true, false] {
        let (mut dq, mut dk, mut dv) = (
            poisoned::<Bf16>(g, nq),
            poisoned::<Bf16>(g, nk),
            poisoned::<Bf16>(g, nk),
        );
        let mut delta = poisoned::<f32>(g, b * nh * t);
        let backward = if mma {
            Gpu::attention_backward_mma::<Bf16>
        } else {
            Gpu::attention_backward::<Bf16>
        };
        backward(
            g, &mut dq, &mut dk, &mut dv, &mut delta, &dout_d, &out, &lse, &q_d, &k_d, &v_d, b, t,
            nh, nkv, hd,
        )
        .unwrap();
        grads.push([down(g, &dq), down(g, &dk), down(g, &dv)]);
    }
    let [dq_cpu, dk_cpu, dv_cpu] =
        cpu_attention_backward(&dout, &probs, [&q, &k, &v], [b, t, nh, nkv, hd]);
    for (i, name) in ["dq", "dk", "dv"].iter().enumerate() {
        let cpu = [&dq_cpu, &dk_cpu, &dv_cpu][i];
        check(
            &format!("attention_backward_mma {name} {tag}"),
            &grads[0][i],
            cpu,
            BF16_TOL,
        );
        check(
            &format!("attention_backward_mma {name} vs warp-per-row {tag}"),
            &grads[0][i],
            &grads[1][i],
            BF16_TOL,
        );
    }
}

/// The tensor-core attention at hd 64 and 128: GQA (groups of 4) and plain heads, one token,
/// lengths that are and are not multiples of the tiles, up to T = [`long_t`]. Needs compute
/// capability 8.0 (bf16 mma.sync); an older GPU is a skip, not a failure.
#[test]
fn attention_mma_bf16() {
    attention_mma(30, 3, 1, 2, 1, 64);
    attention_mma(31, 2, 100, 8, 2, 64);
    attention_mma(32, 1, 33, 4, 4, 128);
    attention_mma(33, 1, long_t(), 8, 2, 64);
    attention_mma(34, 1, long_t(), 8, 2, 128);
    // Exactly one tile of 64 rows at hd 128 (32-wide backward tiles), and fewer rows than one
    // warp's 16.
    attention_mma(35, 2, 64, 4, 1, 128);
    attention_mma(36, 1, 16, 2, 2, 64);
}

/// The tensor-core attention refuses f32 storage and other head dims instead of running.
#[test]
fn attention_mma_rejects_unsupported_shapes() {
    assert!(Gpu::attention_mma_supported::<Bf16>(64));
    assert!(Gpu::attention_mma_supported::<Bf16>(128));
    assert!(!Gpu::attention_mma_supported::<Bf16>(48));
    assert!(!Gpu::attention_mma_supported::<f32>(64));
    let Some(g) = gpu() else { return };
    let z = |n: usize| g.zeros::<Bf16>(n).unwrap();
    let mut lse = g.zeros::<f32>(2).unwrap();
    let err = g
        .attention_forward_mma(&mut z(96), &mut lse, &z(96), &z(96), &z(96), 1, 2, 1, 1, 48)
        .unwrap_err();
    println!("expected: {err}");
    let (mut dq, mut dk, mut dv, mut delta) = (z(96), z(96), z(96), g.zeros::<f32>(2).unwrap());
    assert!(g
        .attention_backward_mma(
            &mut dq,
            &mut dk,
            &mut dv,
            &mut delta,
            &z(96),
            &z(96),
            &lse,
            &z(96),
            &z(96),
            &z(96),
            1,
            2,
            1,
            1,
            48
        )
        .is_err());
    let zf = |n: usize| g.zeros::<f32>(n).unwrap();
    let mut lse = zf(1);
    assert!(g
        .attention_forward_mma(
            &mut zf(64),
            &mut lse,
            &zf(64),
            &zf(64),
            &zf(64),
            1,
            1,
            1,
            1,
            64
        )
        .is_err());
}

/// `attention_decode_{f32,bf16}`: the `n` new query rows at positions `past..past+n` of a
/// sequence of `t = past + n`, over caches of `capacity` rows whose first `t` hold the
/// sequence's keys and values and whose rest is NaN (a read past row `past+i` would turn the
/// output NaN, and `check` wants it finite). Against the CPU forward of the whole sequence,
/// its last `n` rows: [`tol`] (1e-5 f32, 1e-2 bf16); and bit for bit against the last `n` rows
/// of `attention_forward_*` on the GPU, whose arithmetic per row it shares (same online
/// softmax over the same keys in the same order).
#[allow(clippy::too_many_arguments)]
fn attention_decode<T: Storage>(
    seed: u64,
    past: usize,
    n: usize,
    capacity: usize,
    nh: usize,
    nkv: usize,
    hd: usize,
) {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(seed);
    let s = T::SUFFIX;
    let t = past + n;
    let tag = format!("past={past} n={n} capacity={capacity} nh={nh} nkv={nkv} hd={hd}");
    let (qw, kw) = (nh * hd, nkv * hd);
    let q = rounded::<T>(&rng.vec(t * qw, 3.0));
    let k = rounded::<T>(&rng.vec(t * kw, 1.0));
    let v = rounded::<T>(&rng.vec(t * kw, 1.0));

    let mut out_cpu = vec![0.0f32; t * qw];
    let mut probs = vec![0.0f32; nh * t * t];
    ops::attention_forward(&mut out_cpu, &mut probs, &q, &k, &v, 1, t, nh, nkv, hd);

    let cache = |x: &[f32]| {
        let mut c = store::<T>(x);
        c.resize(capacity * kw, T::NAN);
        up(g, &c)
    };
    let (k_cache, v_cache) = (cache(&k), cache(&v));
    let q_new = up(g, &store::<T>(&q[past * qw..]));
    let mut out = poisoned::<T>(g, n * qw);
    g.attention_decode(
        &mut out, &q_new, &k_cache, &v_cache, n, past, capacity, nh, nkv, hd,
    )
    .unwrap();
    let out_gpu = down(g, &out);
    check(
        &format!("attention_decode_{s} {tag}"),
        &out_gpu,
        &out_cpu[past * qw..],
        tol::<T>(),
    );

    let mut out_fwd = poisoned::<T>(g, t * qw);
    let mut lse = poisoned::<f32>(g, nh * t);
    g.attention_forward(
        &mut out_fwd,
        &mut lse,
        &up(g, &store::<T>(&q)),
        &up(g, &store::<T>(&k)),
        &up(g, &store::<T>(&v)),
        1,
        t,
        nh,
        nkv,
        hd,
    )
    .unwrap();
    check_bits(
        &format!("attention_decode_{s} vs attention_forward_{s} {tag}"),
        &out_gpu,
        &down(g, &out_fwd)[past * qw..],
    );
}

/// attention_decode_f32 with GQA (nh 4 over nkv 2): several rows after a prefix (past 30,
/// n 7), one row, a prefill (past 0), the first position alone, a full cache, odd head dims
/// (lane masking) and the largest (256): 1e-5 and bitwise against the forward.
#[test]
fn attention_decode_f32_gqa() {
    attention_decode::<f32>(40, 30, 7, 45, 4, 2, 64);
    attention_decode::<f32>(41, 40, 1, 41, 4, 2, 64);
    attention_decode::<f32>(42, 0, 9, 16, 4, 2, 64);
    attention_decode::<f32>(43, 0, 1, 1, 4, 2, 16);
    attention_decode::<f32>(44, 17, 5, 22, 4, 2, 48);
    attention_decode::<f32>(45, 6, 3, 12, 2, 1, 256);
}

/// attention_decode_bf16 with GQA (nh 4 over nkv 2) at hd 64 and 128, and plain heads at
/// hd 16: 1e-2, bitwise against the bf16 forward.
#[test]
fn attention_decode_bf16_gqa() {
    attention_decode::<Bf16>(46, 30, 7, 40, 4, 2, 64);
    attention_decode::<Bf16>(47, 50, 1, 64, 4, 2, 128);
    attention_decode::<Bf16>(48, 11, 4, 15, 4, 4, 16);
}

/// The decode launcher refuses, before launching: rows past the capacity, caches or query
/// buffers of the wrong length, nh not a multiple of nkv and head dims over 256.
#[test]
fn attention_decode_rejects_bad_shapes() {
    let Some(g) = gpu() else { return };
    let z = |n: usize| g.zeros::<f32>(n).unwrap();
    // 4 heads over 2 kv heads of 8: q rows of 32, cache rows of 16.
    let (q, kc, vc) = (z(2 * 32), z(10 * 16), z(10 * 16));
    let mut out = z(2 * 32);
    g.attention_decode(&mut out, &q, &kc, &vc, 2, 8, 10, 4, 2, 8)
        .unwrap();
    for (case, err) in [
        (
            "past + n > capacity",
            g.attention_decode(&mut out, &q, &kc, &vc, 2, 9, 10, 4, 2, 8),
        ),
        (
            "short k cache",
            g.attention_decode(&mut out, &q, &z(9 * 16), &vc, 2, 0, 10, 4, 2, 8),
        ),
        (
            "short v cache",
            g.attention_decode(&mut out, &q, &kc, &z(9 * 16), 2, 0, 10, 4, 2, 8),
        ),
        (
            "q of 3 rows for n 2",
            g.attention_decode(&mut out, &z(3 * 32), &kc, &vc, 2, 0, 10, 4, 2, 8),
        ),
        (
            "nh 3 over nkv 2",
            g.attention_decode(&mut z(2 * 24), &z(2 * 24), &kc, &vc, 2, 0, 10, 3, 2, 8),
        ),
        (
            "hd 512",
            g.attention_decode(&mut z(512), &z(512), &z(512), &z(512), 1, 0, 1, 1, 1, 512),
        ),
    ] {
        let e = err.expect_err(case);
        println!("expected ({case}): {e}");
    }
}

// ---- swiglu -------------------------------------------------------------------------------------

fn swiglu<T: Storage>(seed: u64) {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(seed);
    let s = T::SUFFIX;
    let n = 100_003;
    let gate = rounded::<T>(&rng.vec(n, 4.0));
    let u = rounded::<T>(&rng.vec(n, 2.0));
    let da = rounded::<T>(&rng.vec(n, 1.0));
    let (g_d, u_d) = (up(g, &store::<T>(&gate)), up(g, &store::<T>(&u)));

    let mut a = poisoned::<T>(g, n);
    g.swiglu_forward(&mut a, &g_d, &u_d).unwrap();
    let mut a_cpu = vec![0.0f32; n];
    ops::swiglu_forward(&mut a_cpu, &gate, &u);
    check(
        &format!("swiglu_forward_{s}"),
        &down(g, &a),
        &a_cpu,
        tol::<T>(),
    );

    let (mut dg, mut du) = (poisoned::<T>(g, n), poisoned::<T>(g, n));
    g.swiglu_backward(&mut dg, &mut du, &up(g, &store::<T>(&da)), &g_d, &u_d)
        .unwrap();
    let (mut dg_cpu, mut du_cpu) = (vec![0.0f32; n], vec![0.0f32; n]);
    ops::swiglu_backward(&mut dg_cpu, &mut du_cpu, &da, &gate, &u);
    check(
        &format!("swiglu_backward_{s} dg"),
        &down(g, &dg),
        &dg_cpu,
        tol::<T>(),
    );
    check(
        &format!("swiglu_backward_{s} du"),
        &down(g, &du),
        &du_cpu,
        tol::<T>(),
    );
}

/// swiglu_forward_f32 / swiglu_backward_f32: 1e-5.
#[test]
fn swiglu_f32() {
    swiglu::<f32>(18);
}

/// swiglu_forward_bf16 / swiglu_backward_bf16: 1e-2.
#[test]
fn swiglu_bf16() {
    swiglu::<Bf16>(19);
}

// ---- cross-entropy ------------------------------------------------------------------------------

fn cross_entropy<T: Storage>(seed: u64) {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(seed);
    let s = T::SUFFIX;
    for (n, vocab) in [(64usize, 50_257usize), (37, 1000), (3, 5)] {
        let logits = rounded::<T>(&rng.vec(n * vocab, 4.0));
        // About a quarter of the rows ignored, and the first row always.
        let targets: Vec<u32> = (0..n)
            .map(|i| {
                if i == 0 || rng.below(4) == 0 {
                    IGNORE_TARGET
                } else {
                    rng.below(vocab as u32)
                }
            })
            .collect();
        let counted = targets.iter().filter(|&&t| t != IGNORE_TARGET).count();
        assert!(counted > 0);
        let grad_scale = 1.0 / counted as f32;

        // CPU, one row at a time (the per-row losses), in f32 and, as the reference, in f64:
        // over a 50k vocabulary the f32 CPU op's left-to-right sum of e^(z - m) is itself off
        // by a few 1e-6, so the GPU (tree sums) is held to the f64 run of the same op; the f32
        // run's distance to it is printed too.
        let mut dlogits_f32 = logits.clone();
        let losses_f32: Vec<f32> = dlogits_f32
            .chunks_mut(vocab)
            .zip(&targets)
            .map(|(row, &t)| ops::cross_entropy(row, &[t], 1, vocab, grad_scale))
            .collect();
        let mut dlogits_f64: Vec<f64> = logits.iter().map(|&x| f64::from(x)).collect();
        let losses_f64: Vec<f64> = dlogits_f64
            .chunks_mut(vocab)
            .zip(&targets)
            .map(|(row, &t)| ops::cross_entropy(row, &[t], 1, vocab, f64::from(grad_scale)))
            .collect();
        let losses_cpu: Vec<f32> = losses_f64.iter().map(|&x| x as f32).collect();
        let dlogits_cpu: Vec<f32> = dlogits_f64.iter().map(|&x| x as f32).collect();
        println!(
            "  cpu f32 vs f64 n={n} V={vocab}: losses {:.2e}, dlogits {:.2e}",
            rel_err(&losses_f32, &losses_cpu),
            rel_err(&dlogits_f32, &dlogits_cpu)
        );
        let sum_cpu = losses_f64.iter().sum::<f64>() as f32;

        // Loss only: logits untouched (bitwise), losses as below.
        let mut z = up(g, &store::<T>(&logits));
        let mut losses = poisoned::<f32>(g, n);
        let t_d = up(g, &targets);
        g.cross_entropy(&mut z, &mut losses, &t_d, n, vocab, grad_scale, false)
            .unwrap();
        check_bits(
            &format!("cross_entropy_{s} no dlogits: logits kept n={n} V={vocab}"),
            &down(g, &z),
            &logits,
        );

        // Fused loss + gradient.
        let mut losses = poisoned::<f32>(g, n);
        g.cross_entropy(&mut z, &mut losses, &t_d, n, vocab, grad_scale, true)
            .unwrap();
        let losses_gpu = g.download(&losses).unwrap();
        // Losses are f32 from the same (rounded) logits: tolerance 1e-5.
        check(
            &format!("cross_entropy_{s} losses n={n} V={vocab}"),
            &losses_gpu,
            &losses_cpu,
            F32_TOL,
        );
        let dz = down(g, &z);
        check(
            &format!("cross_entropy_{s} dlogits n={n} V={vocab}"),
            &dz,
            &dlogits_cpu,
            tol::<T>(),
        );
        for (i, &t) in targets.iter().enumerate() {
            if t == IGNORE_TARGET {
                assert_eq!(losses_gpu[i].to_bits(), 0, "ignored row {i}: loss");
                assert!(
                    dz[i * vocab..(i + 1) * vocab]
                        .iter()
                        .all(|x| x.to_bits() == 0),
                    "ignored row {i}: gradient not all +0"
                );
            }
        }

        // cross_entropy_sum (f64 sum, one block): 1e-5.
        let mut total = poisoned::<f32>(g, 1);
        g.cross_entropy_sum(&mut total, &losses).unwrap();
        check(
            &format!("cross_entropy_sum n={n}"),
            &g.download(&total).unwrap(),
            &[sum_cpu],
            F32_TOL,
        );
    }
}

/// cross_entropy_f32 (ignored targets included) and cross_entropy_sum: 1e-5 against the CPU
/// op run in f64 on the same inputs; ignored rows exactly 0; `write_dlogits = 0` leaves the
/// logits bitwise unchanged.
#[test]
fn cross_entropy_f32() {
    cross_entropy::<f32>(20);
}

/// cross_entropy_bf16: dlogits 1e-2, losses and their sum 1e-5 (f32 from the same bf16
/// inputs), against the CPU op in f64.
#[test]
fn cross_entropy_bf16() {
    cross_entropy::<Bf16>(21);
}

// ---- AdamW, gradient norm, clipping ---------------------------------------------------------------

fn hyper(opt: &AdamW) -> AdamWHyper {
    AdamWHyper {
        beta1: opt.beta1,
        beta2: opt.beta2,
        eps: opt.eps,
        weight_decay: opt.weight_decay,
    }
}

fn adamw<T: Storage>(seed: u64) {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(seed);
    let s = T::SUFFIX;
    let n = 100_003;
    let opt = AdamW::default();
    let lr = 3e-4f32;
    let mut p = rng.vec(n, 1.0);
    let mut m = rng.vec(n, 0.01);
    let mut v: Vec<f32> = rng.vec(n, 0.1).iter().map(|x| x * x).collect();
    let decay: Vec<bool> = (0..n).map(|_| rng.below(3) != 0).collect();
    let decay_u8: Vec<u8> = decay.iter().map(|&d| u8::from(d)).collect();
    let (mut p_d, mut m_d, mut v_d) = (up(g, &p), up(g, &m), up(g, &v));
    let decay_d = up(g, &decay_u8);
    let mut work = poisoned::<T>(g, n);
    let mut out = poisoned::<f32>(g, 2);
    let mut partials = g.filled(Gpu::grad_norm_parts(n), f64::NAN).unwrap();
    for step in 1..=4u64 {
        let grads = rng.vec(n, 0.1);
        let grads_d = up(g, &grads);
        // Steps 1-2 unscaled; steps 3-4 with the clip scale computed on the device.
        let scale = if step <= 2 {
            1.0f32
        } else {
            let norm = global_norm(&grads);
            g.grad_norm(&mut out, &mut partials, &grads_d, norm * 0.5)
                .unwrap();
            let o = g.download(&out).unwrap();
            assert!(o[1] < 1.0 && o[1] > 0.0, "clip scale {}", o[1]);
            o[1]
        };
        // The clip scale is read on the device, from grad_norm's out[1].
        let scale_view = (step > 2).then(|| out.slice(1..2));
        g.adamw_step(
            &mut p_d,
            Some(&mut work),
            &grads_d,
            &mut m_d,
            &mut v_d,
            &decay_d,
            scale_view.as_ref(),
            &hyper(&opt),
            lr,
            step,
        )
        .unwrap();
        adamw_step(
            &mut p, &grads, &mut m, &mut v, &decay, &opt, lr, scale, step,
        );
        let tag = format!("adamw_step_{s} step {step} (grad scale {scale})");
        let p_gpu = g.download(&p_d).unwrap();
        check_bits(&format!("{tag} params"), &p_gpu, &p);
        check_bits(&format!("{tag} exp_avg"), &g.download(&m_d).unwrap(), &m);
        check_bits(&format!("{tag} exp_avg_sq"), &g.download(&v_d).unwrap(), &v);
        // The working copy is the updated master weight rounded to T.
        check_bits(
            &format!("{tag} work"),
            &down(g, &work),
            &rounded::<T>(&p_gpu),
        );
    }
    // No working copy (null `work`) is accepted too.
    let grads_d = up(g, &rng.vec(n, 0.1));
    g.adamw_step::<T>(
        &mut p_d,
        None,
        &grads_d,
        &mut m_d,
        &mut v_d,
        &decay_d,
        None,
        &hyper(&opt),
        lr,
        5,
    )
    .unwrap();
    g.synchronize().unwrap();
}

/// adamw_step_f32: params, exp_avg, exp_avg_sq BITWISE equal to train's `adamw_step` over
/// 4 steps (2 with a device-side clip scale), with a decay mask.
#[test]
fn adamw_f32_bit_exact() {
    adamw::<f32>(22);
}

/// adamw_step_bf16: f32 master state bitwise as above, bf16 working copy = round(params).
#[test]
fn adamw_bf16_bit_exact_master_state() {
    adamw::<Bf16>(23);
}

/// grad_norm_partials + grad_norm_finish against train's `global_norm` (1e-5; both sum in
/// f64), the clip scale bitwise `min(clip / (norm + 1e-6), 1)`, no clipping when clip = 0 or clip > norm, and
/// scale_f32 bitwise.
#[test]
fn grad_norm_clip_and_scale() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(24);
    for n in [1usize, 1000, 1_000_003] {
        let grads = rng.vec(n, 1.0);
        let grads_d = up(g, &grads);
        let norm_cpu = global_norm(&grads);
        let mut partials = g.filled(Gpu::grad_norm_parts(n), f64::NAN).unwrap();
        for clip in [0.0f32, norm_cpu * 0.25, norm_cpu * 4.0] {
            let mut out = poisoned::<f32>(g, 2);
            g.grad_norm(&mut out, &mut partials, &grads_d, clip)
                .unwrap();
            let o = g.download(&out).unwrap();
            check(
                &format!("grad_norm n={n} clip={clip}"),
                &o[..1],
                &[norm_cpu],
                F32_TOL,
            );
            // torch's rule, as CpuEngine::step: min(clip / (norm + 1e-6), 1).
            let want = if clip > 0.0 {
                (clip / (o[0] + 1e-6)).min(1.0)
            } else {
                1.0
            };
            check_bits(
                &format!("grad_norm clip scale n={n} clip={clip}"),
                &o[1..],
                &[want],
            );
            if o[0].to_bits() != norm_cpu.to_bits() {
                println!("  (norm not bitwise equal: gpu {} cpu {norm_cpu})", o[0]);
            }
            if clip > 0.0 && clip < norm_cpu {
                let mut x = up(g, &grads);
                g.scale_f32(&mut x, &out.slice(1..2)).unwrap();
                let want: Vec<f32> = grads.iter().map(|&x| x * o[1]).collect();
                check_bits(&format!("scale_f32 n={n}"), &g.download(&x).unwrap(), &want);
            }
        }
    }
}

// ---- casts and elementwise helpers ----------------------------------------------------------------

/// cast_f32_to_bf16 (round to nearest even, NaN/inf/overflow/subnormals included) and
/// cast_bf16_to_f32: bitwise against the host rounding; add_inplace_{f32,bf16} and
/// accumulate_f32_from_{f32,bf16}: bitwise (one f32 add per element).
#[test]
fn casts_and_elementwise() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(25);
    let n = 70_001;
    let mut x = rng.vec(n, 3.0);
    let specials = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        f32::MAX,
        f32::MIN_POSITIVE / 3.0,
        1.0 + 1.0 / 256.0,
        1.0 + 3.0 / 256.0,
        -(1.0 + 1.0 / 256.0),
        3.389_531_4e38,
    ];
    x[..specials.len()].copy_from_slice(&specials);
    let mut h = poisoned::<Bf16>(g, n);
    g.cast_f32_to_bf16(&mut h, &up(g, &x)).unwrap();
    let h_gpu = g.download(&h).unwrap();
    let h_want: Vec<Bf16> = store::<Bf16>(&x);
    let as_u = |v: &[Bf16]| v.iter().map(|b| b.0).collect::<Vec<u16>>();
    assert_eq!(as_u(&h_gpu), as_u(&h_want), "cast_f32_to_bf16 bits");
    println!("cast_f32_to_bf16 bitwise equal ({n} elements, specials included)");

    let mut back = poisoned::<f32>(g, n);
    g.cast_bf16_to_f32(&mut back, &h).unwrap();
    let back_gpu = g.download(&back).unwrap();
    assert_eq!(
        bits(&back_gpu),
        bits(&widen(&h_want)),
        "cast_bf16_to_f32 bits"
    );
    println!("cast_bf16_to_f32 bitwise equal");

    let (y0, d) = (rng.vec(n, 1.0), rng.vec(n, 1.0));
    let mut y = up(g, &y0);
    g.add_inplace(&mut y, &up(g, &d)).unwrap();
    let mut want = y0.clone();
    ops::add_inplace(&mut want, &d);
    check_bits("add_inplace_f32", &g.download(&y).unwrap(), &want);

    let (yb, db) = (store::<Bf16>(&y0), store::<Bf16>(&d));
    let mut y = up(g, &yb);
    g.add_inplace(&mut y, &up(g, &db)).unwrap();
    let want: Vec<f32> = yb
        .iter()
        .zip(&db)
        .map(|(a, b)| Bf16::from_f32(a.to_f32() + b.to_f32()).to_f32())
        .collect();
    check_bits("add_inplace_bf16", &down(g, &y), &want);

    let acc0 = rng.vec(n, 1.0);
    let mut acc = up(g, &acc0);
    g.accumulate_f32(&mut acc, &up(g, &d)).unwrap();
    let want: Vec<f32> = acc0.iter().zip(&d).map(|(a, b)| a + b).collect();
    check_bits("accumulate_f32_from_f32", &g.download(&acc).unwrap(), &want);

    let mut acc = up(g, &acc0);
    g.accumulate_f32(&mut acc, &up(g, &db)).unwrap();
    let want: Vec<f32> = acc0.iter().zip(&db).map(|(a, b)| a + b.to_f32()).collect();
    check_bits(
        "accumulate_f32_from_bf16",
        &g.download(&acc).unwrap(),
        &want,
    );
}

// ---- NF4 dequantisation ----------------------------------------------------------------------

/// The NF4 kernels against `ingot_train::quant::nf4` on the same tensor: 300 blocks of 64
/// weights (double quantisation: a whole group of 256 absmax values and a short one), values
/// of several scales and a block of zeros. Bit for bit: f32 output equals the CPU's
/// dequantised values, bf16 output their rounding to nearest even.
fn nf4<T: Storage>(seed: u64, double: bool) {
    use ingot_train::quant::nf4::{dynamic_code, Absmax, Nf4, CODE};
    let Some(g) = gpu() else { return };
    let mut rng = Rng::new(seed);
    let blocks = 300;
    let mut w: Vec<f32> = (0..blocks * 64)
        .map(|i| rng.uniform(if (i / 64) % 5 == 2 { 1.5 } else { 0.02 }))
        .collect();
    w[7 * 64..8 * 64].fill(0.0);
    let q = if double {
        Nf4::quantize_double("w", &w)
    } else {
        Nf4::quantize("w", &w)
    }
    .unwrap();
    let absmax = match &q.absmax {
        Absmax::F32(v) => up(g, v),
        Absmax::Double {
            codes,
            scales,
            offset,
        } => {
            let mut out = poisoned::<f32>(g, blocks);
            g.nf4_absmax(
                &mut out.slice_mut(..),
                &up(g, codes),
                &up(g, scales),
                &up(g, dynamic_code()),
                *offset,
            )
            .unwrap();
            check_bits(
                "nf4_absmax (double quantisation)",
                &down(g, &out),
                &q.absmax.values(),
            );
            out
        }
    };
    let mut out = poisoned::<T>(g, w.len());
    g.nf4_dequantize(
        &mut out.slice_mut(..),
        &up(g, &q.packed),
        &absmax.slice(..),
        &up(g, &CODE),
    )
    .unwrap();
    let name = format!("nf4_dequantize_{} (double {double})", T::SUFFIX);
    check_bits(&name, &down(g, &out), &rounded::<T>(&q.dequantize()));
    // A view shorter than the tensor is refused, not written past.
    let mut short = poisoned::<T>(g, w.len() - 2);
    assert!(g
        .nf4_dequantize(
            &mut short.slice_mut(..),
            &up(g, &q.packed),
            &absmax.slice(..),
            &up(g, &CODE)
        )
        .is_err());
}

#[test]
fn nf4_dequantize_f32() {
    nf4::<f32>(61, false);
    nf4::<f32>(62, true);
}

#[test]
fn nf4_dequantize_bf16() {
    nf4::<Bf16>(63, false);
    nf4::<Bf16>(64, true);
}

// ---- determinism --------------------------------------------------------------------------------

/// Every f32 output of one pass over the reductions (attention forward and backward,
/// cross-entropy and its sum, RMSNorm forward and backward, embedding backward, grad norm).
fn one_pass(g: &Gpu, seed: u64) -> Vec<Vec<u32>> {
    let mut rng = Rng::new(seed);
    let mut outs = Vec::new();
    let (b, t, nh, nkv, hd) = (2usize, long_t() / 2, 8usize, 2usize, 64usize);
    let (nq, nk) = (b * t * nh * hd, b * t * nkv * hd);
    let (q, k, v, dout) = (
        up(g, &rng.vec(nq, 3.0)),
        up(g, &rng.vec(nk, 1.0)),
        up(g, &rng.vec(nk, 1.0)),
        up(g, &rng.vec(nq, 1.0)),
    );
    let (mut out, mut lse) = (poisoned::<f32>(g, nq), poisoned::<f32>(g, b * nh * t));
    g.attention_forward(&mut out, &mut lse, &q, &k, &v, b, t, nh, nkv, hd)
        .unwrap();
    let (mut dq, mut dk, mut dv) = (
        poisoned::<f32>(g, nq),
        poisoned::<f32>(g, nk),
        poisoned::<f32>(g, nk),
    );
    let mut delta = poisoned::<f32>(g, b * nh * t);
    g.attention_backward(
        &mut dq, &mut dk, &mut dv, &mut delta, &dout, &out, &lse, &q, &k, &v, b, t, nh, nkv, hd,
    )
    .unwrap();
    for s in [&out, &lse, &dq, &dk, &dv, &delta] {
        outs.push(bits(&g.download(s).unwrap()));
    }

    let (n, vocab) = (32usize, 32_000usize);
    let mut z = up(g, &rng.vec(n * vocab, 4.0));
    let targets: Vec<u32> = (0..n).map(|_| rng.below(vocab as u32)).collect();
    let mut losses = poisoned::<f32>(g, n);
    g.cross_entropy(
        &mut z,
        &mut losses,
        &up(g, &targets),
        n,
        vocab,
        1.0 / n as f32,
        true,
    )
    .unwrap();
    let mut total = poisoned::<f32>(g, 1);
    g.cross_entropy_sum(&mut total, &losses).unwrap();
    for s in [&z, &losses, &total] {
        outs.push(bits(&g.download(s).unwrap()));
    }

    let (rows, d) = (256usize, 2048usize);
    let (x, w, dy) = (
        up(g, &rng.vec(rows * d, 1.0)),
        up(g, &rng.vec(d, 1.0)),
        up(g, &rng.vec(rows * d, 1.0)),
    );
    let (mut y, mut rstd) = (poisoned::<f32>(g, rows * d), poisoned::<f32>(g, rows));
    g.rmsnorm_forward(&mut y, &mut rstd, &x, &w, rows, d, 1e-5)
        .unwrap();
    let (mut dx, mut dw) = (poisoned::<f32>(g, rows * d), up(g, &rng.vec(d, 1.0)));
    g.rmsnorm_backward(&mut dx, &mut dw, &dy, &x, &w, &rstd, rows, d)
        .unwrap();
    for s in [&y, &rstd, &dx, &dw] {
        outs.push(bits(&g.download(s).unwrap()));
    }

    let ids: Vec<u32> = (0..rows).map(|_| rng.below(50)).collect();
    let mut dtable = up(g, &rng.vec(50 * d, 1.0));
    g.embedding_backward(&mut dtable, &dy, &up(g, &ids), d)
        .unwrap();
    outs.push(bits(&g.download(&dtable).unwrap()));

    let grads = up(g, &rng.vec(3_000_000, 1.0));
    let mut norm = poisoned::<f32>(g, 2);
    let mut partials = g.filled(Gpu::grad_norm_parts(3_000_000), f64::NAN).unwrap();
    g.grad_norm(&mut norm, &mut partials, &grads, 1.0).unwrap();
    outs.push(bits(&g.download(&norm).unwrap()));
    outs
}

/// Two runs on the same inputs are bitwise equal (no atomics anywhere).
#[test]
fn deterministic_runs() {
    let Some(g) = gpu() else { return };
    let first = one_pass(g, 26);
    let second = one_pass(g, 26);
    assert_eq!(first.len(), second.len());
    for (i, (a, b)) in first.iter().zip(&second).enumerate() {
        assert!(a == b, "output {i} differs between two identical runs");
    }
    println!(
        "deterministic: {} outputs bitwise equal across two runs",
        first.len()
    );
}

/// A launch whose arguments do not match the kernel's parameter list (one too few, or a u32
/// where the kernel takes a u64) is refused before it reaches the driver, which would read
/// the parameters the kernel declares whatever was passed.
#[test]
fn launches_with_the_wrong_arguments_are_refused() {
    let Some(g) = gpu() else { return };
    let mut x = up(g, &[1.0f32; 8]);
    let s = up(g, &[2.0f32]);
    let cfg = LaunchConfig {
        grid_dim: (1, 1, 1),
        block_dim: (32, 1, 1),
        shared_mem_bytes: 0,
    };
    // scale_f32(float* x, const float* s, u64 n)
    let e = g
        .launch("scale_f32", cfg, |a| {
            a.arg(&mut x).arg(&s);
        })
        .unwrap_err();
    assert!(e.to_string().contains("the kernel takes 3"), "{e}");
    let n32 = 8u32;
    let e = g
        .launch("scale_f32", cfg, |a| {
            a.arg(&mut x).arg(&s).arg(&n32);
        })
        .unwrap_err();
    assert!(e.to_string().contains("[8, 8, 4]"), "{e}");
    let n = 8u64;
    g.launch("scale_f32", cfg, |a| {
        a.arg(&mut x).arg(&s).arg(&n);
    })
    .unwrap();
    assert_eq!(down(g, &x), vec![2.0f32; 8]);
}

/// Describes the device (or says why it is skipped).
#[test]
fn device_is_usable() {
    let Some(g) = gpu() else { return };
    println!(
        "GPU: {} ({}), {:.1} GiB, driver API {}, {} kernels loaded",
        g.info.name,
        g.info.arch(),
        g.info.total_memory as f64 / (1u64 << 30) as f64,
        g.info.driver_version,
        g.kernel_count()
    );
    let listed: usize = ingot_kernels::UNITS.iter().map(|u| u.kernels.len()).sum();
    assert_eq!(g.kernel_count(), listed);
}
