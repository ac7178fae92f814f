//! The C interface of an emulated module (a host shared object built by the NVRTC stand-in),
//! as defined in `emulator/nvrtc/device/simt.h`. Every layout here must match that file; the
//! module exports [`ABI_VERSION`] so a mismatch is refused instead of misread.

use std::ffi::c_char;

/// `INGOT_EMU_ABI_VERSION` in `simt.h`.
pub const ABI_VERSION: u32 = 2;

/// `ingot_emu_kernel_info`: one kernel's name and parameter list.
#[repr(C)]
#[derive(Debug)]
pub struct KernelInfo {
    pub name: *const c_char,
    pub param_count: u32,
    pub param_sizes: *const u32,
    pub param_aligns: *const u32,
    /// From `__launch_bounds__`; 0 when none was given.
    pub max_threads: u32,
}

/// `ingot_emu_launch_spec`: the launch shape in, the fault out.
#[repr(C)]
#[derive(Debug)]
pub struct LaunchSpec {
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub params: *mut *mut std::ffi::c_void,
    pub seed: u64,
    /// The fiber stacks: one per thread of the block at `stacks + i * stack_stride`, each with
    /// its lowest page unmapped (a stack overflow faults).
    pub stacks: *mut std::ffi::c_char,
    pub stack_stride: u64,
    pub fault_block: [u32; 3],
    pub fault_thread: [u32; 3],
    pub fault_address: u64,
    pub message: [c_char; 512],
}

/// `ingot_emu_fault`: what ended a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    IllegalAddress,
    Misaligned,
    OutOfRange,
    Trap,
    Divergent,
    Deadlock,
    Stack,
    Unknown(i32),
}

impl Fault {
    /// `None` for `INGOT_EMU_OK`.
    pub fn from_code(code: i32) -> Option<Fault> {
        Some(match code {
            0 => return None,
            1 => Fault::IllegalAddress,
            2 => Fault::Misaligned,
            3 => Fault::OutOfRange,
            4 => Fault::Trap,
            5 => Fault::Divergent,
            6 => Fault::Deadlock,
            7 => Fault::Stack,
            other => Fault::Unknown(other),
        })
    }
}

/// `uint32_t ingot_emu_abi_version(void)`.
pub type AbiVersionFn = unsafe extern "C" fn() -> u32;
/// `uint32_t ingot_emu_kernel_count(void)`.
pub type KernelCountFn = unsafe extern "C" fn() -> u32;
/// `const ingot_emu_kernel_info* ingot_emu_kernel(uint32_t)`.
pub type KernelFn = unsafe extern "C" fn(u32) -> *const KernelInfo;
/// `int ingot_emu_launch(uint32_t, ingot_emu_launch_spec*)`.
pub type LaunchFn = unsafe extern "C" fn(u32, *mut LaunchSpec) -> i32;
