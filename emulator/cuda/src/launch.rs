//! `cuLaunchKernel`: checks the launch against the device's and the kernel's limits (each
//! refusal the `CUresult` the driver gives), runs the grid in the module's SIMT runtime, then
//! checks the canaries around every allocation.
//!
//! - `INGOT_EMU_SEED` (an integer, default 0) seeds the order of blocks and of threads
//!   between barriers; each launch draws its own seed from it and the launch count.
//! - `INGOT_EMU_LAUNCH_LOG=PATH` appends one JSON line per launch (kernel, grid, block,
//!   dynamic shared bytes, host milliseconds), e.g. to see whether a grid fills the 132 SMs.

use std::ffi::{c_uint, c_void, CStr};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use ingot_emu_common::abi::{Fault, LaunchSpec};

use crate::module::{Function, FUNCTIONS};
use crate::status::*;
use crate::{device, errors, memory, status, streams};

/// One launch at a time: a module's runtime keeps the running block in plain globals, and the
/// signal handler it installs is process-wide.
static SERIAL: Mutex<()> = Mutex::new(());
static LAUNCHES: AtomicU64 = AtomicU64::new(0);

/// The launch shape, as cuLaunchKernel received it.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub dynamic_shared: u32,
}

/// The device's and the kernel's limits; the error is the driver's code and why.
pub fn check_shape(f: &Function, s: &Shape) -> Result<(), (CuResult, String)> {
    let k = f.kernel();
    let threads = s.block.iter().map(|&b| u64::from(b)).product::<u64>();
    for (i, axis) in ["x", "y", "z"].iter().enumerate() {
        if s.block[i] == 0 || s.block[i] > device::MAX_BLOCK_DIM[i] {
            return Err((
                INVALID_VALUE,
                format!(
                    "blockDim.{axis} = {} (1 to {})",
                    s.block[i],
                    device::MAX_BLOCK_DIM[i]
                ),
            ));
        }
        if s.grid[i] == 0 || s.grid[i] > device::MAX_GRID_DIM[i] {
            return Err((
                INVALID_VALUE,
                format!(
                    "gridDim.{axis} = {} (1 to {})",
                    s.grid[i],
                    device::MAX_GRID_DIM[i]
                ),
            ));
        }
    }
    if threads > u64::from(device::MAX_THREADS_PER_BLOCK) {
        return Err((
            INVALID_VALUE,
            format!("{threads} threads per block (at most 1024)"),
        ));
    }
    if threads > u64::from(k.max_threads) {
        return Err((
            LAUNCH_OUT_OF_RESOURCES,
            format!(
                "{threads} threads per block, but __launch_bounds__ allows {}",
                k.max_threads
            ),
        ));
    }
    let max_dynamic = f.max_dynamic_shared.load(Ordering::Relaxed);
    if s.dynamic_shared > max_dynamic {
        return Err((
            INVALID_VALUE,
            format!(
                "{} bytes of dynamic shared memory, the function allows {max_dynamic} \
                 (cuFuncSetAttribute MAX_DYNAMIC_SHARED_SIZE_BYTES opts in to more)",
                s.dynamic_shared
            ),
        ));
    }
    Ok(())
}

fn refuse(kernel: &str, (code, why): (CuResult, String)) -> CuResult {
    eprintln!(
        "ingot-emu: cuLaunchKernel {kernel}: {} ({why})",
        status::name(code).unwrap_or("refused")
    );
    code
}

/// Bytes of one fiber stack (one thread of a block), and the unmapped page below each.
const STACK_BYTES: usize = 64 << 10;
const GUARD_BYTES: usize = memory::PAGE;

/// The fiber stacks of every launch (launches never overlap): one per possible thread of a
/// block, mapped once, lazily backed by the host.
fn stacks() -> Result<usize, CuResult> {
    static STACKS: std::sync::OnceLock<Option<usize>> = std::sync::OnceLock::new();
    let base = STACKS.get_or_init(|| {
        let stride = STACK_BYTES + GUARD_BYTES;
        let len = stride * device::MAX_THREADS_PER_BLOCK as usize;
        // SAFETY: a fresh anonymous mapping, owned by this static for the life of the process.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        for i in 0..device::MAX_THREADS_PER_BLOCK as usize {
            // SAFETY: the guard page lies inside the mapping.
            unsafe {
                libc::mprotect(
                    p.cast::<u8>().add(i * stride).cast(),
                    GUARD_BYTES,
                    libc::PROT_NONE,
                )
            };
        }
        Some(p as usize)
    });
    base.ok_or(OUT_OF_MEMORY)
}

fn seed(launch: u64) -> u64 {
    let base: u64 = std::env::var("INGOT_EMU_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut z = base ^ launch.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^ (z >> 27)
}

fn log_launch(kernel: &str, s: &Shape, ms: f64) {
    static LOG: Mutex<Option<Option<std::fs::File>>> = Mutex::new(None);
    let mut log = LOG.lock().unwrap_or_else(|e| e.into_inner());
    let file = log.get_or_insert_with(|| {
        let path = std::env::var_os("INGOT_EMU_LAUNCH_LOG").filter(|p| !p.is_empty())?;
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .ok()
    });
    if let Some(f) = file {
        let _ = writeln!(
            f,
            "{{\"kernel\":\"{kernel}\",\"grid\":[{},{},{}],\"block\":[{},{},{}],\"dynamic_shared\":{},\"ms\":{ms:.3}}}",
            s.grid[0], s.grid[1], s.grid[2], s.block[0], s.block[1], s.block[2], s.dynamic_shared
        );
    }
}

/// What a fault in a kernel becomes on a GPU.
fn fault_code(fault: Fault) -> CuResult {
    match fault {
        Fault::IllegalAddress | Fault::OutOfRange => ILLEGAL_ADDRESS,
        Fault::Misaligned => MISALIGNED_ADDRESS,
        Fault::Stack => OUT_OF_MEMORY,
        Fault::Trap | Fault::Divergent | Fault::Deadlock | Fault::Unknown(_) => LAUNCH_FAILED,
    }
}

/// Runs the grid; a fault or a corrupted canary becomes the sticky error.
unsafe fn run(f: &Function, s: &Shape, params: *mut *mut c_void) -> CuResult {
    let k = f.kernel();
    let stacks = match stacks() {
        Ok(p) => p,
        Err(e) => return errors::fault(e, "cannot map the fiber stacks".into()),
    };
    let mut spec = LaunchSpec {
        grid: s.grid,
        block: s.block,
        params,
        seed: seed(LAUNCHES.fetch_add(1, Ordering::Relaxed)),
        stacks: stacks as *mut std::ffi::c_char,
        stack_stride: (STACK_BYTES + GUARD_BYTES) as u64,
        fault_block: [0; 3],
        fault_thread: [0; 3],
        fault_address: 0,
        message: [0; 512],
    };
    let t0 = Instant::now();
    let code = {
        let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        (f.module.launch)(k.index, &mut spec)
    };
    log_launch(&k.name, s, t0.elapsed().as_secs_f64() * 1e3);
    if let Some(fault) = Fault::from_code(code) {
        let msg = CStr::from_ptr(spec.message.as_ptr()).to_string_lossy();
        let [bx, by, bz] = spec.fault_block;
        let [tx, ty, tz] = spec.fault_thread;
        return errors::fault(
            fault_code(fault),
            format!("kernel {} (grid {:?}, block {:?}): block ({bx},{by},{bz}) thread ({tx},{ty},{tz}): {msg}", k.name, s.grid, s.block),
        );
    }
    if let Some((ptr, size, offset)) = memory::find_corruption() {
        let side = if offset < 0 {
            "before its start"
        } else {
            "past its end"
        };
        return errors::fault(
            ILLEGAL_ADDRESS,
            format!(
                "kernel {} (grid {:?}, block {:?}) wrote at offset {offset} of the {size}-byte \
                 allocation at {ptr:#x}, {side}",
                k.name, s.grid, s.block
            ),
        );
    }
    SUCCESS
}

#[no_mangle]
#[allow(clippy::too_many_arguments)] // the driver's signature
pub unsafe extern "C" fn cuLaunchKernel(
    hfunc: usize,
    gx: c_uint,
    gy: c_uint,
    gz: c_uint,
    bx: c_uint,
    by: c_uint,
    bz: c_uint,
    shared: c_uint,
    stream: usize,
    params: *mut *mut c_void,
    extra: *mut *mut c_void,
) -> CuResult {
    crate::guarded("cuLaunchKernel", || {
        if let Err(e) = errors::check() {
            return e;
        }
        let Some(f) = FUNCTIONS.get(hfunc) else {
            return INVALID_HANDLE;
        };
        if let Err(e) = streams::check_stream(stream) {
            return e;
        }
        let k = f.kernel();
        if !extra.is_null() {
            ingot_emu_common::record_missing("cuda", "cuLaunchKernel with `extra` parameters");
            return NOT_SUPPORTED;
        }
        let n = k.param_sizes.len();
        if n > 0 && (params.is_null() || (0..n).any(|i| (*params.add(i)).is_null())) {
            return refuse(
                &k.name,
                (
                    INVALID_VALUE,
                    format!("{n} parameters expected, a null pointer among them"),
                ),
            );
        }
        let shape = Shape {
            grid: [gx, gy, gz],
            block: [bx, by, bz],
            dynamic_shared: shared,
        };
        if let Err(e) = check_shape(&f, &shape) {
            return refuse(&k.name, e);
        }
        run(&f, &shape, params)
    })
}
