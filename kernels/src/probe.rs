//! Finds the CUDA driver and a device, reporting a missing driver, no device or a bad
//! ordinal as one line instead of a panic.
//!
//! cudarc opens the driver library by name at run time (`libcuda.so`, `libcuda.so.1`, ...) and
//! panics if none loads; [`cuda_device`] checks first with cudarc's non-panicking probe and
//! wraps every later call in `catch_unwind`.

use cudarc::driver::{result, sys};

/// What [`cuda_device`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceInfo {
    pub ordinal: usize,
    pub name: String,
    /// `(major, minor)`, e.g. `(9, 0)` for an H100.
    pub compute_capability: (i32, i32),
    /// Bytes of device memory.
    pub total_memory: usize,
    /// Driver API version, e.g. 13000 for CUDA 13.0.
    pub driver_version: i32,
    /// Number of devices visible.
    pub device_count: usize,
}

/// How the stand-in CUDA device of `emulator/cuda` names itself: a device whose name starts
/// so is the CPU emulation, not a GPU.
pub const EMULATED_NAME_PREFIX: &str = "ingot emulated";

impl DeviceInfo {
    /// Whether this is the stand-in device (`emulator/`): kernels run on the CPU, results are
    /// emulated, never GPU-verified.
    pub fn is_emulated(&self) -> bool {
        self.name.starts_with(EMULATED_NAME_PREFIX)
    }

    /// The NVRTC architecture of this device, e.g. `sm_90`.
    pub fn arch(&self) -> String {
        format!(
            "sm_{}{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }
}

/// Every message is a single line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "no CUDA driver: could not load libcuda.so.1 (the NVIDIA driver library); install the \
         driver or point LD_LIBRARY_PATH at the directory that holds libcuda.so.1"
    )]
    NoDriver,
    #[error("the CUDA driver reports no device (CUDA_VISIBLE_DEVICES may hide them): {0}")]
    NoDevice(String),
    #[error(
        "CUDA device {ordinal} does not exist: {count} device(s) visible (ordinals 0..{count})"
    )]
    BadOrdinal { ordinal: usize, count: usize },
    #[error("CUDA driver call {call} failed: {message}")]
    Driver { call: &'static str, message: String },
}

fn driver(call: &'static str, e: result::DriverError) -> ProbeError {
    ProbeError::Driver {
        call,
        message: format!("{e:?}").replace('\n', " "),
    }
}

/// Describes device `ordinal`, or says in one line why it cannot be used.
pub fn cuda_device(ordinal: usize) -> Result<DeviceInfo, ProbeError> {
    // SAFETY: only tries to dlopen the candidate library names.
    if !unsafe { sys::is_culib_present() } {
        return Err(ProbeError::NoDriver);
    }
    let run = || -> Result<DeviceInfo, ProbeError> {
        if let Err(e) = result::init() {
            return Err(match e.0 {
                sys::CUresult::CUDA_ERROR_NO_DEVICE => ProbeError::NoDevice(format!("{e:?}")),
                _ => driver("cuInit", e),
            });
        }
        let count = result::device::get_count().map_err(|e| driver("cuDeviceGetCount", e))?;
        let count = usize::try_from(count).unwrap_or(0);
        if count == 0 {
            return Err(ProbeError::NoDevice("cuDeviceGetCount returned 0".into()));
        }
        if ordinal >= count {
            return Err(ProbeError::BadOrdinal { ordinal, count });
        }
        let dev = result::device::get(ordinal as i32).map_err(|e| driver("cuDeviceGet", e))?;
        let name = result::device::get_name(dev).map_err(|e| driver("cuDeviceGetName", e))?;
        use sys::CUdevice_attribute::*;
        // SAFETY: `dev` comes from cuDeviceGet.
        let (major, minor, total_memory) = unsafe {
            (
                result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)
                    .map_err(|e| driver("cuDeviceGetAttribute", e))?,
                result::device::get_attribute(dev, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)
                    .map_err(|e| driver("cuDeviceGetAttribute", e))?,
                result::device::total_mem(dev).map_err(|e| driver("cuDeviceTotalMem", e))?,
            )
        };
        let mut driver_version = 0;
        // SAFETY: a valid out-pointer.
        unsafe { sys::cuDriverGetVersion(&mut driver_version) }
            .result()
            .map_err(|e| driver("cuDriverGetVersion", e))?;
        Ok(DeviceInfo {
            ordinal,
            name,
            compute_capability: (major, minor),
            total_memory,
            driver_version,
            device_count: count,
        })
    };
    crate::guard::catch(run).unwrap_or_else(|message| {
        Err(ProbeError::Driver {
            call: "cudarc",
            message,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a machine without a GPU (this crate's CI), probing gives a one-line error, never a
    /// panic; on a GPU machine it describes device 0 and rejects an absurd ordinal.
    #[test]
    fn probe_is_one_line_and_never_panics() {
        match cuda_device(0) {
            Err(e) => {
                let msg = e.to_string();
                assert!(!msg.contains('\n'), "multi-line message: {msg}");
                println!("probe (no GPU expected here): {msg}");
                if e == ProbeError::NoDriver {
                    assert!(msg.contains("libcuda.so.1") && msg.contains("LD_LIBRARY_PATH"));
                }
            }
            Ok(info) => {
                println!("probe: {info:?} ({})", info.arch());
                let bad = cuda_device(1000).unwrap_err();
                assert!(matches!(bad, ProbeError::BadOrdinal { ordinal: 1000, .. }));
                assert!(!bad.to_string().contains('\n'));
            }
        }
    }
}
