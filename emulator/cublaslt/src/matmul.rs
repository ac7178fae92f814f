//! Running a validated matmul on device pointers (host addresses here): the pointer checks
//! cuBLASLt makes, the device-memory checks a GPU would make by faulting, then [`gemm`].

use std::ffi::c_void;
use std::ptr::NonNull;

use crate::driver::{DeviceMemory, CUDA_ERROR_ILLEGAL_ADDRESS};
use crate::gemm::{self, Addend, Bf16, Element, Output};
use crate::plan::{Algo, Combo, Problem};
use crate::status::{Fail, Res, INTERNAL_ERROR};

/// The matrices' device pointers.
#[derive(Debug, Clone, Copy)]
pub struct Pointers {
    pub a: *const c_void,
    pub b: *const c_void,
    pub c: *const c_void,
    pub d: *mut c_void,
}

const NAMES: [char; 4] = ['A', 'B', 'C', 'D'];
const LDS: [&str; 4] = ["lda", "ldb", "ldc", "ldd"];

/// Runs `problem` with `algo` (`None`: the matmul picks one itself, as cuBLASLt does when
/// given a null algorithm). `mem` is the device-memory oracle (`None`: no checks); `threads`
/// overrides [`gemm::default_threads`].
///
/// # Safety
/// Every pointer that passes the checks must be valid for the bytes its matrix spans (the
/// driver checks it where there is one).
pub unsafe fn run(
    problem: &Problem,
    alpha: f32,
    beta: f32,
    ptrs: Pointers,
    algo: Option<Algo>,
    mem: Option<&dyn DeviceMemory>,
    threads: Option<usize>,
) -> Res<()> {
    let algo = algo.unwrap_or_else(|| Algo::internal(problem));
    if algo.combo != problem.combo {
        return Err(Fail::invalid(format!(
            "the algorithm was chosen for {:?}, the matmul is {:?}",
            algo.combo, problem.combo
        )));
    }
    let used = used(problem, beta, &ptrs);
    check_pointers(problem, &ptrs, &used, &algo)?;
    let s = &problem.shape;
    if let Some(mem) = mem {
        if mem.sticky_error() {
            return Err(Fail::execution_failed(
                "the context has a sticky error from an earlier fault",
            ));
        }
    }
    if s.m == 0 || s.n == 0 {
        return Ok(());
    }
    if let Some(mem) = mem {
        check_ranges(problem, &ptrs, &used, mem)?;
    }
    let threads = threads.unwrap_or_else(|| gemm::default_threads(s.m, s.n, s.k));
    match problem.combo {
        Combo::F32 => compute::<f32, f32>(problem, alpha, beta, ptrs, threads),
        Combo::Bf16 => compute::<Bf16, Bf16>(problem, alpha, beta, ptrs, threads),
        Combo::Bf16ToF32 => compute::<Bf16, f32>(problem, alpha, beta, ptrs, threads),
    }
}

/// Which of A, B, C, D the matmul reads or writes: C only with a nonzero beta, and not
/// separately when it is D itself; nothing of an empty matrix.
fn used(problem: &Problem, beta: f32, ptrs: &Pointers) -> [bool; 4] {
    let c_read = beta != 0.0 && ptrs.c != ptrs.d.cast_const();
    let spans = problem.spans;
    [
        spans[0] > 0,
        spans[1] > 0,
        spans[2] > 0 && c_read,
        spans[3] > 0,
    ]
}

fn addresses(ptrs: &Pointers) -> [usize; 4] {
    [
        ptrs.a as usize,
        ptrs.b as usize,
        ptrs.c as usize,
        ptrs.d as usize,
    ]
}

/// cuBLASLt's own refusals before it launches: null and misaligned pointers, an in-place C
/// whose layout differs from D's. Two overlapping matrices (D with A, B or a separate C)
/// give undefined results on a GPU; the stand-in refuses them instead (INVALID_VALUE).
fn check_pointers(problem: &Problem, ptrs: &Pointers, used: &[bool; 4], algo: &Algo) -> Res<()> {
    let addr = addresses(ptrs);
    let sizes = problem.combo.elem_sizes();
    for i in 0..4 {
        if !used[i] {
            continue;
        }
        let name = NAMES[i];
        if addr[i] == 0 {
            return Err(Fail::invalid(format!("{name} is null")));
        }
        if !addr[i].is_multiple_of(sizes[i]) {
            return Err(Fail::invalid(format!(
                "{name} at {:#x} is not aligned to its {}-byte elements",
                addr[i], sizes[i]
            )));
        }
        // An algorithm chosen for better-aligned pointers cannot run on these: cuBLASLt
        // reports that as an invalid value (the preference's min alignment was broken).
        let need = algo.align[i] as usize;
        if need > 1 && !addr[i].is_multiple_of(need) {
            return Err(Fail::invalid(format!(
                "{name} at {:#x} is less aligned than the {need} bytes its algorithm was chosen for",
                addr[i]
            )));
        }
    }
    if ptrs.c == ptrs.d.cast_const() && !ptrs.d.is_null() && problem.c != problem.d {
        return Err(Fail::invalid(
            "in place (C == D) needs the same layout for C and D",
        ));
    }
    let bytes = problem.span_bytes();
    let range = |i: usize| addr[i]..addr[i] + bytes[i];
    for i in 0..3 {
        if used[i] && used[3] && range(i).start < range(3).end && range(3).start < range(i).end {
            return Err(Fail::invalid(format!(
                "D overlaps {} (the result would be undefined)",
                NAMES[i]
            )));
        }
    }
    Ok(())
}

/// The device-memory check a GPU makes by faulting: each matrix must lie inside one live
/// allocation. A failure is reported to the driver as an illegal address (sticky, as on a
/// GPU) and the matmul fails.
fn check_ranges(
    problem: &Problem,
    ptrs: &Pointers,
    used: &[bool; 4],
    mem: &dyn DeviceMemory,
) -> Res<()> {
    let addr = addresses(ptrs);
    let bytes = problem.span_bytes();
    for i in 0..4 {
        if !used[i] || mem.contains(addr[i] as u64, bytes[i] as u64) {
            continue;
        }
        let message = format!(
            "cublasLtMatmul: {} spans {:#x}+{} bytes outside any device allocation (check {} and the shape)",
            NAMES[i], addr[i], bytes[i], LDS[i]
        );
        mem.report_fault(CUDA_ERROR_ILLEGAL_ADDRESS, &message);
        return Err(Fail::execution_failed(message));
    }
    Ok(())
}

/// # Safety
/// `ptr` must be valid for `len` reads of `T` (or `len == 0`).
unsafe fn slice<'a, T>(ptr: *const c_void, len: usize) -> &'a [T] {
    if len == 0 {
        return &[];
    }
    std::slice::from_raw_parts(ptr.cast::<T>(), len)
}

/// # Safety
/// `ptr` must be valid for `len` writes of `T` (or `len == 0`), and not aliased.
unsafe fn slice_mut<'a, T>(ptr: *mut c_void, len: usize) -> &'a mut [T] {
    if len == 0 {
        return std::slice::from_raw_parts_mut(NonNull::<T>::dangling().as_ptr(), 0);
    }
    std::slice::from_raw_parts_mut(ptr.cast::<T>(), len)
}

/// # Safety
/// As [`run`], after its checks (which rule out D aliasing another operand).
unsafe fn compute<TA: Element, TD: Output>(
    p: &Problem,
    alpha: f32,
    beta: f32,
    ptrs: Pointers,
    threads: usize,
) -> Res<()> {
    let a = slice::<TA>(ptrs.a, p.spans[0]);
    let b = slice::<TA>(ptrs.b, p.spans[1]);
    let d = slice_mut::<TD>(ptrs.d, p.spans[3]);
    let c = if beta == 0.0 {
        Addend::None
    } else if ptrs.c == ptrs.d.cast_const() {
        Addend::InPlace
    } else {
        Addend::Separate(slice::<TD>(ptrs.c, p.spans[2]))
    };
    gemm::gemm(&p.shape, alpha, a, b, beta, c, d, threads)
        .map_err(|e| Fail::new(INTERNAL_ERROR, e.0))
}
