//! The stand-in driver and NVRTC together, on small kernels written to break a rule: each
//! rule the stand-in enforces gives the error code the CUDA driver gives, a fault leaves the
//! context sticky as on a GPU, and the SIMT runtime computes what CUDA defines (barriers,
//! shuffles, the mma.sync fragment layout, NaN-filled fresh memory).
//!
//! A fault poisons the whole process (the sticky error), so each fault runs in a child
//! process: the test binary runs itself with `INGOT_EMU_SCENARIO` set, through the ignored
//! test `child`, and reads the codes it prints.

use std::ffi::{c_int, c_void, CStr, CString};
use std::process::Command;

use ingot_emu_cuda::status::*;
use ingot_emu_cuda::{context, device, error_string, launch, memory_api, module};

// ---- a tiny host API over the stand-in's entry points ----------------------------------------

fn compile(src: &str) -> Result<Vec<u8>, String> {
    let opts = ingot_emu_nvrtc::options::parse(&["--gpu-architecture=sm_90".to_string()])?;
    let out = ingot_emu_nvrtc::compiler::compile("test.cu", src, &opts)?;
    Ok(out.image.expect("sm_90 has a CUBIN"))
}

struct Emu {
    module: usize,
}

impl Emu {
    fn new(src: &str) -> Emu {
        let image = compile(src).unwrap_or_else(|log| panic!("compile failed:\n{log}"));
        unsafe {
            assert_eq!(device::cuInit(0), SUCCESS);
            let mut ctx = 0usize;
            assert_eq!(context::cuDevicePrimaryCtxRetain(&mut ctx, 0), SUCCESS);
            assert_eq!(context::cuCtxSetCurrent(ctx), SUCCESS);
            let mut m = 0usize;
            assert_eq!(
                module::cuModuleLoadData(&mut m, image.as_ptr().cast()),
                SUCCESS
            );
            Emu { module: m }
        }
    }

    fn function(&self, name: &str) -> Result<usize, CuResult> {
        let c = CString::new(name).unwrap();
        let mut f = 0usize;
        match unsafe { module::cuModuleGetFunction(&mut f, self.module, c.as_ptr()) } {
            SUCCESS => Ok(f),
            e => Err(e),
        }
    }

    fn alloc(&self, bytes: usize) -> u64 {
        let mut p = 0u64;
        assert_eq!(unsafe { memory_api::cuMemAlloc_v2(&mut p, bytes) }, SUCCESS);
        p
    }

    fn upload(&self, data: &[f32]) -> u64 {
        let p = self.alloc(data.len() * 4);
        let r = unsafe { memory_api::cuMemcpyHtoD_v2(p, data.as_ptr().cast(), data.len() * 4) };
        assert_eq!(r, SUCCESS);
        p
    }

    fn download(&self, p: u64, n: usize) -> Result<Vec<f32>, CuResult> {
        let mut out = vec![0f32; n];
        match unsafe { memory_api::cuMemcpyDtoH_v2(out.as_mut_ptr().cast(), p, n * 4) } {
            SUCCESS => Ok(out),
            e => Err(e),
        }
    }

    /// Launches `name` with the parameters `args` (pointers to each value).
    fn launch(
        &self,
        name: &str,
        grid: [u32; 3],
        block: [u32; 3],
        shared: u32,
        args: &mut [*mut c_void],
    ) -> CuResult {
        let f = match self.function(name) {
            Ok(f) => f,
            Err(e) => return e,
        };
        unsafe {
            launch::cuLaunchKernel(
                f,
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                shared,
                0,
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        }
    }
}

fn ptr<T>(v: &mut T) -> *mut c_void {
    (v as *mut T).cast()
}

const KERNELS: &str = r#"
typedef unsigned int u32;
extern "C" __global__ void copy_n(float* out, const float* in, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = in[i];
}
// Off by one: i <= n.
extern "C" __global__ void copy_n_plus_one(float* out, const float* in, u32 n) {
    const u32 i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i <= n) out[i] = in[i];
}
extern "C" __global__ void __launch_bounds__(128) bounded(float* out) { out[threadIdx.x] = 1.0f; }
extern "C" __global__ void trap(float*) { __trap(); }
extern "C" __global__ void misaligned(float* out, const unsigned short* in) {
    out[0] = (float)*reinterpret_cast<const u32*>(in + 1);
}
extern "C" __global__ void shared_out_of_range(float* out, u32 i) {
    __shared__ float s[32];
    s[threadIdx.x] = 1.0f;
    __syncthreads();
    out[threadIdx.x] = s[i];
}
// Every thread writes its slot, then reads its neighbour's: with and without the barrier.
extern "C" __global__ void neighbour(float* out, int barrier) {
    __shared__ float s[128];
    s[threadIdx.x] = (float)threadIdx.x;
    if (barrier) __syncthreads();
    out[threadIdx.x] = s[(threadIdx.x + 1) % blockDim.x];
}
extern "C" __global__ void uninitialised_shared(float* out) {
    __shared__ float s[64];
    out[threadIdx.x] = s[threadIdx.x];
}
extern "C" __global__ void warp_sum(float* out, const float* in) {
    float v = in[threadIdx.x];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    out[threadIdx.x] = v;
}
// Half the warp leaves before the shuffle.
extern "C" __global__ void divergent_shuffle(float* out) {
    if (threadIdx.x & 1) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 2);
}
// Odd lanes wait at __syncthreads, even lanes at a shuffle: neither can open.
extern "C" __global__ void deadlock(float* out) {
    float v = 1.0f;
    if (threadIdx.x & 1) __syncthreads();
    v = __shfl_xor_sync(0xffffffffu, v, 1);
    __syncthreads();
    out[threadIdx.x] = v;
}
extern "C" __global__ void recurse(float* out, u32 depth) {
    volatile char pad[4096];
    pad[0] = (char)depth;
    if (depth > 0) recurse(out, depth - 1);
    out[0] = pad[0];
}
// One m16n8k16 product: A [16][16] and B [16][8] as bf16 bits, D [16][8] f32 (row-major).
extern "C" __global__ void mma(float* d, const unsigned short* a, const unsigned short* b) {
    const u32 lane = threadIdx.x, gid = lane >> 2, tig = lane & 3;
    auto pair = [](const unsigned short* p) { return (u32)p[0] | ((u32)p[1] << 16); };
    u32 af[4] = {pair(a + gid * 16 + 2 * tig), pair(a + (gid + 8) * 16 + 2 * tig),
                 pair(a + gid * 16 + 2 * tig + 8), pair(a + (gid + 8) * 16 + 2 * tig + 8)};
    const unsigned short b0[2] = {b[(2 * tig) * 8 + gid], b[(2 * tig + 1) * 8 + gid]};
    const unsigned short b1[2] = {b[(2 * tig + 8) * 8 + gid], b[(2 * tig + 9) * 8 + gid]};
    float c[4] = {0, 0, 0, 0};
    ingot_emu_mma_m16n8k16_bf16_f32(c, af, pair(b0), pair(b1));
    d[gid * 8 + 2 * tig] = c[0];
    d[gid * 8 + 2 * tig + 1] = c[1];
    d[(gid + 8) * 8 + 2 * tig] = c[2];
    d[(gid + 8) * 8 + 2 * tig + 1] = c[3];
}
"#;

// ---- launch-shape rules: refused before anything runs, nothing sticky -----------------------

#[test]
fn launch_limits_give_the_drivers_codes() {
    let e = Emu::new(KERNELS);
    let out = e.alloc(4096 * 4);
    let (mut o, mut i, mut n) = (out, out, 8u32);
    let mut args = [ptr(&mut o), ptr(&mut i), ptr(&mut n)];
    let copy = |grid, block, shared, args: &mut [*mut c_void]| {
        e.launch("copy_n", grid, block, shared, args)
    };
    assert_eq!(
        copy([1, 1, 1], [2048, 1, 1], 0, &mut args),
        INVALID_VALUE,
        "2048 threads"
    );
    assert_eq!(
        copy([1, 1, 1], [32, 32, 2], 0, &mut args),
        INVALID_VALUE,
        "32x32x2 threads"
    );
    assert_eq!(
        copy([1, 1, 1], [1, 1, 65], 0, &mut args),
        INVALID_VALUE,
        "blockDim.z 65"
    );
    assert_eq!(
        copy([1, 65536, 1], [32, 1, 1], 0, &mut args),
        INVALID_VALUE,
        "gridDim.y"
    );
    assert_eq!(
        copy([0, 1, 1], [32, 1, 1], 0, &mut args),
        INVALID_VALUE,
        "empty grid"
    );
    assert_eq!(
        copy([1, 1, 1], [32, 1, 1], 64 << 10, &mut args),
        INVALID_VALUE,
        "64 KiB dynamic"
    );
    let mut bounded_args = [ptr(&mut o)];
    assert_eq!(
        e.launch("bounded", [1, 1, 1], [256, 1, 1], 0, &mut bounded_args),
        LAUNCH_OUT_OF_RESOURCES
    );
    assert_eq!(
        e.launch("bounded", [1, 1, 1], [128, 1, 1], 0, &mut bounded_args),
        SUCCESS
    );
    assert_eq!(
        e.launch("no_such_kernel", [1, 1, 1], [32, 1, 1], 0, &mut args),
        NOT_FOUND
    );
    let mut null_args = [ptr(&mut o), std::ptr::null_mut(), ptr(&mut n)];
    assert_eq!(
        copy([1, 1, 1], [32, 1, 1], 0, &mut null_args),
        INVALID_VALUE,
        "null parameter"
    );
    // Opting in to more dynamic shared memory, up to the device's 227 KiB.
    let f = e.function("copy_n").unwrap();
    unsafe {
        assert_eq!(module::cuFuncSetAttribute(f, 8, 64 << 10), SUCCESS);
        assert_eq!(module::cuFuncSetAttribute(f, 8, 300 << 10), INVALID_VALUE);
    }
    assert_eq!(copy([1, 1, 1], [32, 1, 1], 64 << 10, &mut args), SUCCESS);
    assert_eq!(
        ingot_emu_cuda::errors::sticky(),
        SUCCESS,
        "refusals are not sticky"
    );
}

#[test]
fn parameter_lists_and_attributes_are_reported() {
    let e = Emu::new(KERNELS);
    let f = e.function("copy_n").unwrap();
    let info = |i| {
        let (mut off, mut size) = (0usize, 0usize);
        let r = unsafe { module::cuFuncGetParamInfo(f, i, &mut off, &mut size) };
        (r, off, size)
    };
    assert_eq!(info(0), (SUCCESS, 0, 8));
    assert_eq!(info(1), (SUCCESS, 8, 8));
    assert_eq!(info(2), (SUCCESS, 16, 4));
    assert_eq!(info(3).0, INVALID_VALUE, "one past the last parameter");
    let attr = |f, a| {
        let mut v: c_int = 0;
        assert_eq!(unsafe { module::cuFuncGetAttribute(&mut v, a, f) }, SUCCESS);
        v
    };
    assert_eq!(attr(f, 0), 1024, "max threads without __launch_bounds__");
    assert_eq!(attr(e.function("bounded").unwrap(), 0), 128);
    assert_eq!(
        attr(e.function("neighbour").unwrap(), 1),
        512,
        "static shared bytes"
    );
    assert_eq!(attr(e.function("copy_n").unwrap(), 1), 0);
}

#[test]
fn static_shared_memory_over_48_kib_does_not_compile() {
    let src = r#"extern "C" __global__ void big(float* out) {
        __shared__ float s[12289];
        s[threadIdx.x] = 1.0f;
        out[0] = s[0];
    }"#;
    let log = compile(src).unwrap_err();
    assert!(log.contains("'big' uses too much shared data"), "{log}");
    // Two kernels of 36 KiB each in one unit are fine: the limit is per kernel.
    let two = r#"
        extern "C" __global__ void a(float* o) { __shared__ float s[9216]; s[0] = 1; o[0] = s[0]; }
        extern "C" __global__ void b(float* o) { __shared__ float s[9216]; s[0] = 2; o[0] = s[0]; }"#;
    compile(two).unwrap();
}

#[test]
fn compile_errors_come_back_as_the_log() {
    let log = compile(r#"extern "C" __global__ void k(float* x) { x[0] = nope; }"#).unwrap_err();
    assert!(log.contains("test.cu:1") && log.contains("nope"), "{log}");
}

// ---- what the runtime computes ----------------------------------------------------------------

#[test]
fn fresh_device_and_shared_memory_read_as_nan() {
    let e = Emu::new(KERNELS);
    let p = e.alloc(64 * 4);
    assert!(e.download(p, 64).unwrap().iter().all(|x| x.is_nan()));
    let (mut o,) = (p,);
    let mut args = [ptr(&mut o)];
    assert_eq!(
        e.launch("uninitialised_shared", [1, 1, 1], [64, 1, 1], 0, &mut args),
        SUCCESS
    );
    assert!(e.download(p, 64).unwrap().iter().all(|x| x.is_nan()));
}

#[test]
fn a_missing_barrier_shows_in_the_result() {
    let e = Emu::new(KERNELS);
    let p = e.alloc(128 * 4);
    let run = |barrier: i32| {
        let (mut o, mut b) = (p, barrier);
        let mut args = [ptr(&mut o), ptr(&mut b)];
        assert_eq!(
            e.launch("neighbour", [1, 1, 1], [128, 1, 1], 0, &mut args),
            SUCCESS
        );
        e.download(p, 128).unwrap()
    };
    let want: Vec<f32> = (0..128).map(|i| ((i + 1) % 128) as f32).collect();
    assert_eq!(run(1), want, "with the barrier");
    let racy = run(0);
    let wrong = racy.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert!(
        wrong > 0,
        "without the barrier every thread still read its neighbour's value"
    );
    println!("without __syncthreads: {wrong} of 128 reads saw an unwritten slot");
}

#[test]
fn shuffles_and_mma_compute_what_cuda_defines() {
    let e = Emu::new(KERNELS);
    let input: Vec<f32> = (0..64).map(|i| i as f32).collect();
    let (src, dst) = (e.upload(&input), e.alloc(64 * 4));
    let (mut o, mut i) = (dst, src);
    let mut args = [ptr(&mut o), ptr(&mut i)];
    assert_eq!(
        e.launch("warp_sum", [1, 1, 1], [64, 1, 1], 0, &mut args),
        SUCCESS
    );
    let out = e.download(dst, 64).unwrap();
    let (w0, w1): (f32, f32) = (
        (0..32).map(|x| x as f32).sum(),
        (32..64).map(|x| x as f32).sum(),
    );
    assert!(
        out[..32].iter().all(|&x| x == w0) && out[32..].iter().all(|&x| x == w1),
        "{out:?}"
    );

    // mma: small integers are exact in bf16 and in f32 sums.
    let bf = |x: f32| (x.to_bits() >> 16) as u16;
    let a: Vec<f32> = (0..256).map(|k| ((k * 7) % 11) as f32 - 5.0).collect();
    let b: Vec<f32> = (0..128).map(|k| ((k * 5) % 9) as f32 - 4.0).collect();
    let up16 = |v: &[f32]| {
        let bits: Vec<u16> = v.iter().map(|&x| bf(x)).collect();
        let p = e.alloc(bits.len() * 2);
        let r = unsafe { memory_api::cuMemcpyHtoD_v2(p, bits.as_ptr().cast(), bits.len() * 2) };
        assert_eq!(r, SUCCESS);
        p
    };
    let (pa, pb, pd) = (up16(&a), up16(&b), e.alloc(128 * 4));
    let (mut d, mut aa, mut bb) = (pd, pa, pb);
    let mut args = [ptr(&mut d), ptr(&mut aa), ptr(&mut bb)];
    assert_eq!(
        e.launch("mma", [1, 1, 1], [32, 1, 1], 0, &mut args),
        SUCCESS
    );
    let got = e.download(pd, 128).unwrap();
    for r in 0..16 {
        for c in 0..8 {
            let want: f32 = (0..16).map(|k| a[r * 16 + k] * b[k * 8 + c]).sum();
            assert_eq!(got[r * 8 + c], want, "D[{r}][{c}]");
        }
    }
}

// ---- faults, each in a child process --------------------------------------------------------

/// Runs `scenario` in a child process; returns (the launch's code, the next call's code, the
/// error string of the first).
fn in_child(scenario: &str) -> (CuResult, CuResult, String) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("INGOT_EMU_SCENARIO", scenario)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.split_once("SCENARIO ").map(|(_, rest)| rest))
        .unwrap_or_else(|| {
            panic!(
                "{scenario}: no result\n{stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    let mut parts = line.splitn(3, ' ');
    let first = parts.next().unwrap().parse().unwrap();
    let next = parts.next().unwrap().parse().unwrap();
    (first, next, parts.next().unwrap_or("").to_string())
}

#[test]
#[ignore = "run by the fault tests in a child process (INGOT_EMU_SCENARIO)"]
fn child() {
    let scenario = std::env::var("INGOT_EMU_SCENARIO").expect("INGOT_EMU_SCENARIO");
    let e = Emu::new(KERNELS);
    let n = 1000usize;
    let src = e.upload(&vec![1.0f32; n]);
    let dst = e.alloc(n * 4);
    let (mut o, mut i, mut n32) = (dst, src, n as u32);
    let one = [1u32, 1, 1];
    let code = match scenario.as_str() {
        // 1000 floats end 96 bytes before the guard page: reading 1000 is within the slack,
        // so the read goes unnoticed but the write lands in the canary.
        "write_past_end" => e.launch(
            "copy_n_plus_one",
            [4, 1, 1],
            [256, 1, 1],
            0,
            &mut [ptr(&mut o), ptr(&mut i), ptr(&mut n32)],
        ),
        // Reading 1100 floats from a 1000-float buffer crosses into the guard page.
        "read_past_end" => {
            let mut n_big = 1100u32;
            let big = e.alloc(1100 * 4);
            let mut ob = big;
            e.launch(
                "copy_n",
                [5, 1, 1],
                [256, 1, 1],
                0,
                &mut [ptr(&mut ob), ptr(&mut i), ptr(&mut n_big)],
            )
        }
        "trap" => e.launch("trap", one, [32, 1, 1], 0, &mut [ptr(&mut o)]),
        "misaligned" => e.launch(
            "misaligned",
            one,
            [1, 1, 1],
            0,
            &mut [ptr(&mut o), ptr(&mut i)],
        ),
        "shared_out_of_range" => {
            let mut idx = 40u32;
            e.launch(
                "shared_out_of_range",
                one,
                [32, 1, 1],
                0,
                &mut [ptr(&mut o), ptr(&mut idx)],
            )
        }
        "divergent_shuffle" => {
            e.launch("divergent_shuffle", one, [32, 1, 1], 0, &mut [ptr(&mut o)])
        }
        "deadlock" => e.launch("deadlock", one, [64, 1, 1], 0, &mut [ptr(&mut o)]),
        "stack_overflow" => {
            let mut depth = 100u32;
            e.launch(
                "recurse",
                one,
                [1, 1, 1],
                0,
                &mut [ptr(&mut o), ptr(&mut depth)],
            )
        }
        other => panic!("unknown scenario {other}"),
    };
    let next = e.download(dst, 1).err().unwrap_or(SUCCESS);
    println!("SCENARIO {code} {next} {}", error_string(code));
}

fn fault(scenario: &str, want: CuResult, words: &str) {
    let (code, next, text) = in_child(scenario);
    assert_eq!(code, want, "{scenario}: {text}");
    assert_eq!(next, want, "{scenario}: the error must be sticky");
    assert!(
        text.contains(words),
        "{scenario}: {text:?} should say {words:?}"
    );
}

#[test]
fn a_write_past_the_end_is_caught_by_the_canary() {
    fault(
        "write_past_end",
        ILLEGAL_ADDRESS,
        "wrote at offset 4000 of the 4000-byte allocation",
    );
}

#[test]
fn a_read_past_the_end_faults_on_the_guard_page() {
    fault("read_past_end", ILLEGAL_ADDRESS, "illegal address");
}

#[test]
fn trap_is_an_unspecified_launch_failure() {
    fault("trap", LAUNCH_FAILED, "__trap()");
}

#[test]
fn a_misaligned_load_is_a_misaligned_address() {
    fault("misaligned", MISALIGNED_ADDRESS, "needs 4-byte alignment");
}

#[test]
fn a_shared_array_index_out_of_range_is_caught() {
    fault(
        "shared_out_of_range",
        ILLEGAL_ADDRESS,
        "out of bounds at test.cu",
    );
}

#[test]
fn a_shuffle_with_exited_lanes_is_caught() {
    fault("divergent_shuffle", LAUNCH_FAILED, "lanes exited");
}

#[test]
fn barriers_that_cannot_open_are_a_deadlock() {
    fault("deadlock", LAUNCH_FAILED, "deadlock");
}

#[test]
fn a_fiber_stack_overflow_is_caught() {
    fault("stack_overflow", ILLEGAL_ADDRESS, "illegal address");
}

#[test]
fn the_device_says_it_is_the_stand_in() {
    unsafe {
        assert_eq!(device::cuInit(0), SUCCESS);
        let mut name = [0 as std::ffi::c_char; 128];
        assert_eq!(device::cuDeviceGetName(name.as_mut_ptr(), 128, 0), SUCCESS);
        let name = CStr::from_ptr(name.as_ptr()).to_string_lossy();
        assert!(
            name.starts_with("ingot emulated") && name.contains("not a GPU"),
            "{name}"
        );
        let (mut major, mut sms) = (0, 0);
        assert_eq!(device::cuDeviceGetAttribute(&mut major, 75, 0), SUCCESS);
        assert_eq!(device::cuDeviceGetAttribute(&mut sms, 16, 0), SUCCESS);
        assert_eq!((major, sms), (9, 132));
        let mut bad = 0;
        assert_eq!(device::cuDeviceGet(&mut bad, 1), INVALID_DEVICE);
    }
}
