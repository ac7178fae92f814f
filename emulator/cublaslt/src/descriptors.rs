//! The host objects behind the opaque pointers: the handle, matmul descriptors, matrix
//! layouts and matmul preferences, with their attributes.
//!
//! Every object is boxed (`Box::into_raw`); its address is the pointer the caller gets, and
//! a registry of live addresses lets a null, destroyed or wrong-kind pointer be refused with
//! a status instead of being dereferenced. Objects are only touched with the registry locked,
//! so a concurrent destroy cannot free one under a reader; callers copy what they need out.
//!
//! Attributes are stored as they are set (any value of the right size), and judged when a
//! heuristic or matmul uses them, as cuBLASLt does: a layout may, for instance, get a
//! leading dimension that only fits the row order it is about to be given.

use std::collections::HashSet;
use std::ffi::c_void;
use std::sync::{Mutex, MutexGuard, OnceLock};

use crate::status::{Fail, Res, INVALID_VALUE, NOT_INITIALIZED};

// cudaDataType_t values used here.
pub const CUDA_R_32F: u32 = 0;
pub const CUDA_R_16BF: u32 = 14;

// cublasComputeType_t values accepted by the matmul.
pub const CUBLAS_COMPUTE_32F: u32 = 68;
pub const CUBLAS_COMPUTE_32F_PEDANTIC: u32 = 69;

/// Attributes of a matmul descriptor (`cublasLtMatmulDescAttributes_t`, CUDA 13.0).
pub mod desc_attr {
    pub const COMPUTE_TYPE: u32 = 0;
    pub const SCALE_TYPE: u32 = 1;
    pub const POINTER_MODE: u32 = 2;
    pub const TRANSA: u32 = 3;
    pub const TRANSB: u32 = 4;
    pub const TRANSC: u32 = 5;
    pub const FILL_MODE: u32 = 6;
    pub const EPILOGUE: u32 = 7;
    pub const SM_COUNT_TARGET: u32 = 15;
    /// Pointer-valued attributes: bias, epilogue auxiliary buffer, FP8 scales and amax, the
    /// emulation descriptor. Only null is supported (the stand-in applies none of them).
    pub const POINTERS: [u32; 11] = [8, 11, 17, 18, 19, 20, 21, 23, 24, 36, 38];
    /// Scale modes of A, B, C, D, the auxiliary output and D's output scale; only the
    /// default (0, one f32 scalar) is supported.
    pub const SCALE_MODES: [u32; 6] = [31, 32, 33, 34, 35, 37];
}

/// Byte sizes of the matmul descriptor attributes, by id (0: no such attribute).
const DESC_SIZES: [u8; 39] = [
    4, 4, 4, 4, 4, 4, 4, 4, // 0..=7: compute, scale, pointer mode, transa/b/c, fill, epilogue
    8, 0, 8, 8, 8, 8, 8, // 8: bias ptr, 10: bias stride, 11..=13: aux ptr/ld/stride, 14
    4, 0, // 15: SM count target
    8, 8, 8, 8, 8, // 17..=21: A/B/C/D scale pointers, amax D
    4, 8, 8, // 22: aux data type, 23/24: aux scale/amax pointers
    1, 4, // 25: fast accumulation (int8), 26: bias data type
    0, 0, 0, 0, // 27..=30
    4, 4, 4, 4, 4, // 31..=35: scale modes
    8, 4, // 36: D out scale pointer, 37: its mode
    8, // 38: emulation descriptor
];

/// Attributes of a matrix layout (`cublasLtMatrixLayoutAttribute_t`, CUDA 13.0).
pub mod layout_attr {
    pub const TYPE: u32 = 0;
    pub const ORDER: u32 = 1;
    pub const ROWS: u32 = 2;
    pub const COLS: u32 = 3;
    pub const LD: u32 = 4;
    pub const BATCH_COUNT: u32 = 5;
    pub const STRIDED_BATCH_OFFSET: u32 = 6;
    pub const PLANE_OFFSET: u32 = 7;
    pub const BATCH_MODE: u32 = 8;
}

const LAYOUT_SIZES: [u8; 9] = [4, 4, 8, 8, 8, 4, 8, 8, 4];

/// Attributes of a matmul preference (`cublasLtMatmulPreferenceAttributes_t`, CUDA 13.0).
pub mod pref_attr {
    pub const SEARCH_MODE: u32 = 0;
    pub const MAX_WORKSPACE_BYTES: u32 = 1;
    pub const REDUCTION_SCHEME_MASK: u32 = 3;
    pub const MIN_ALIGNMENT_A_BYTES: u32 = 5;
    pub const MIN_ALIGNMENT_B_BYTES: u32 = 6;
    pub const MIN_ALIGNMENT_C_BYTES: u32 = 7;
    pub const MIN_ALIGNMENT_D_BYTES: u32 = 8;
    pub const MAX_WAVES_COUNT: u32 = 9;
    pub const IMPL_MASK: u32 = 12;
}

const PREF_SIZES: [u8; 13] = [4, 8, 0, 4, 0, 4, 4, 4, 4, 4, 0, 0, 8];

/// Sets attribute `attr` from `size` bytes at `buf` (native byte order), checking the size.
///
/// # Safety
/// `buf` must be null or point to `size` readable bytes.
unsafe fn set_raw(
    sizes: &[u8],
    values: &mut [u64],
    attr: u32,
    buf: *const c_void,
    size: usize,
) -> Res<()> {
    let want = attr_size(sizes, attr)?;
    if buf.is_null() {
        return Err(Fail::invalid(format!("attribute {attr}: null buffer")));
    }
    if size != want {
        return Err(Fail::invalid(format!(
            "attribute {attr}: {size} bytes given, the attribute has {want}"
        )));
    }
    let mut bytes = [0u8; 8];
    std::ptr::copy_nonoverlapping(buf.cast::<u8>(), bytes.as_mut_ptr(), want);
    // Little-endian hosts only (x86-64, aarch64): the low bytes hold the value.
    values[attr as usize] = u64::from_le_bytes(bytes);
    Ok(())
}

/// Writes attribute `attr` to `buf` following cuBLASLt's query convention: `size == 0` asks
/// only for the size (through `written`); otherwise `size` must be the attribute's size.
///
/// # Safety
/// `buf` must be null or point to `size` writable bytes; `written` null or writable.
unsafe fn get_raw(
    sizes: &[u8],
    values: &[u64],
    attr: u32,
    buf: *mut c_void,
    size: usize,
    written: *mut usize,
) -> Res<()> {
    let have = attr_size(sizes, attr)?;
    if size == 0 {
        if written.is_null() {
            return Err(Fail::invalid("size query without sizeWritten"));
        }
        *written = have;
        return Ok(());
    }
    if buf.is_null() || size != have {
        return Err(Fail::invalid(format!(
            "attribute {attr}: buffer of {size} bytes, the attribute has {have}"
        )));
    }
    let bytes = values[attr as usize].to_le_bytes();
    std::ptr::copy_nonoverlapping(bytes.as_ptr(), buf.cast::<u8>(), have);
    if !written.is_null() {
        *written = have;
    }
    Ok(())
}

fn attr_size(sizes: &[u8], attr: u32) -> Res<usize> {
    match sizes.get(attr as usize) {
        Some(&s) if s != 0 => Ok(usize::from(s)),
        _ => Err(Fail::invalid(format!("unknown attribute {attr}"))),
    }
}

/// The stored value of a 4-byte signed attribute.
fn as_i32(v: u64) -> i32 {
    v as u32 as i32
}

/// The handle (`cublasLtHandle_t`): cuBLASLt keeps per-device state here; the stand-in
/// needs none.
#[derive(Debug, Clone, Copy)]
pub struct Context;

/// A matmul descriptor (`cublasLtMatmulDesc_t`).
#[derive(Debug, Clone, Copy)]
pub struct MatmulDesc {
    values: [u64; DESC_SIZES.len()],
}

impl MatmulDesc {
    pub fn new(compute_type: u32, scale_type: u32) -> MatmulDesc {
        let mut values = [0u64; DESC_SIZES.len()];
        values[desc_attr::COMPUTE_TYPE as usize] = u64::from(compute_type);
        values[desc_attr::SCALE_TYPE as usize] = u64::from(scale_type);
        values[desc_attr::FILL_MODE as usize] = 2; // CUBLAS_FILL_MODE_FULL
        values[desc_attr::EPILOGUE as usize] = 1; // CUBLASLT_EPILOGUE_DEFAULT
        values[22] = u64::from(u32::MAX); // aux data type -1: follow D
        values[26] = u64::from(u32::MAX); // bias data type -1: follow D
        MatmulDesc { values }
    }

    /// # Safety
    /// As [`set_raw`].
    pub unsafe fn set(&mut self, attr: u32, buf: *const c_void, size: usize) -> Res<()> {
        set_raw(&DESC_SIZES, &mut self.values, attr, buf, size)
    }

    /// # Safety
    /// As [`get_raw`].
    pub unsafe fn get(
        &self,
        attr: u32,
        buf: *mut c_void,
        size: usize,
        written: *mut usize,
    ) -> Res<()> {
        get_raw(&DESC_SIZES, &self.values, attr, buf, size, written)
    }

    /// The raw value of `attr` (0 for an unknown id).
    pub fn raw(&self, attr: u32) -> u64 {
        self.values.get(attr as usize).copied().unwrap_or(0)
    }

    pub fn i32(&self, attr: u32) -> i32 {
        as_i32(self.raw(attr))
    }
}

/// A matrix layout (`cublasLtMatrixLayout_t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    values: [u64; LAYOUT_SIZES.len()],
}

impl Layout {
    pub fn new(data_type: u32, rows: u64, cols: u64, ld: i64) -> Layout {
        let mut values = [0u64; LAYOUT_SIZES.len()];
        values[layout_attr::TYPE as usize] = u64::from(data_type);
        values[layout_attr::ROWS as usize] = rows;
        values[layout_attr::COLS as usize] = cols;
        values[layout_attr::LD as usize] = ld as u64;
        values[layout_attr::BATCH_COUNT as usize] = 1;
        Layout { values }
    }

    /// # Safety
    /// As [`set_raw`].
    pub unsafe fn set(&mut self, attr: u32, buf: *const c_void, size: usize) -> Res<()> {
        set_raw(&LAYOUT_SIZES, &mut self.values, attr, buf, size)
    }

    /// # Safety
    /// As [`get_raw`].
    pub unsafe fn get(
        &self,
        attr: u32,
        buf: *mut c_void,
        size: usize,
        written: *mut usize,
    ) -> Res<()> {
        get_raw(&LAYOUT_SIZES, &self.values, attr, buf, size, written)
    }

    pub fn data_type(&self) -> u32 {
        self.values[layout_attr::TYPE as usize] as u32
    }
    pub fn order(&self) -> i32 {
        as_i32(self.values[layout_attr::ORDER as usize])
    }
    pub fn rows(&self) -> u64 {
        self.values[layout_attr::ROWS as usize]
    }
    pub fn cols(&self) -> u64 {
        self.values[layout_attr::COLS as usize]
    }
    pub fn ld(&self) -> i64 {
        self.values[layout_attr::LD as usize] as i64
    }
    pub fn batch_count(&self) -> i32 {
        as_i32(self.values[layout_attr::BATCH_COUNT as usize])
    }
    pub fn batch_mode(&self) -> i32 {
        as_i32(self.values[layout_attr::BATCH_MODE as usize])
    }
}

/// A matmul preference (`cublasLtMatmulPreference_t`): what the heuristic may choose.
#[derive(Debug, Clone, Copy)]
pub struct Preference {
    values: [u64; PREF_SIZES.len()],
}

impl Default for Preference {
    fn default() -> Preference {
        let mut values = [0u64; PREF_SIZES.len()];
        values[pref_attr::REDUCTION_SCHEME_MASK as usize] = 7; // every reduction scheme
        for a in [
            pref_attr::MIN_ALIGNMENT_A_BYTES,
            pref_attr::MIN_ALIGNMENT_B_BYTES,
            pref_attr::MIN_ALIGNMENT_C_BYTES,
            pref_attr::MIN_ALIGNMENT_D_BYTES,
        ] {
            values[a as usize] = 256; // cuBLASLt assumes 256-byte aligned buffers by default
        }
        values[pref_attr::IMPL_MASK as usize] = u64::MAX; // every implementation
        Preference { values }
    }
}

impl Preference {
    /// # Safety
    /// As [`set_raw`].
    pub unsafe fn set(&mut self, attr: u32, buf: *const c_void, size: usize) -> Res<()> {
        set_raw(&PREF_SIZES, &mut self.values, attr, buf, size)
    }

    /// # Safety
    /// As [`get_raw`].
    pub unsafe fn get(
        &self,
        attr: u32,
        buf: *mut c_void,
        size: usize,
        written: *mut usize,
    ) -> Res<()> {
        get_raw(&PREF_SIZES, &self.values, attr, buf, size, written)
    }

    /// The promised alignments of A, B, C and D, in bytes.
    pub fn min_alignments(&self) -> [u32; 4] {
        [
            pref_attr::MIN_ALIGNMENT_A_BYTES,
            pref_attr::MIN_ALIGNMENT_B_BYTES,
            pref_attr::MIN_ALIGNMENT_C_BYTES,
            pref_attr::MIN_ALIGNMENT_D_BYTES,
        ]
        .map(|a| self.values[a as usize] as u32)
    }

    pub fn max_workspace_bytes(&self) -> u64 {
        self.values[pref_attr::MAX_WORKSPACE_BYTES as usize]
    }
}

/// Any of the objects, as boxed behind an opaque pointer.
// Each object has its own box, so the variants' size difference costs a few hundred bytes
// per handle, nothing per call.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Object {
    Context(Context),
    Desc(MatmulDesc),
    Layout(Layout),
    Pref(Preference),
}

/// An object kind that an opaque pointer is expected to point to.
pub trait Kind: Sized {
    /// What the caller passed, for the log.
    const WHAT: &'static str;
    /// The status for a pointer that is not a live object of this kind.
    const BAD: i32;
    fn wrap(self) -> Object;
    fn project(o: &mut Object) -> Option<&mut Self>;
}

macro_rules! kind {
    ($ty:ident, $variant:ident, $what:literal, $bad:expr) => {
        impl Kind for $ty {
            const WHAT: &'static str = $what;
            const BAD: i32 = $bad;
            fn wrap(self) -> Object {
                Object::$variant(self)
            }
            fn project(o: &mut Object) -> Option<&mut Self> {
                match o {
                    Object::$variant(x) => Some(x),
                    _ => None,
                }
            }
        }
    };
}

kind!(Context, Context, "cuBLASLt handle", NOT_INITIALIZED);
kind!(MatmulDesc, Desc, "matmul descriptor", INVALID_VALUE);
kind!(Layout, Layout, "matrix layout", INVALID_VALUE);
kind!(Preference, Pref, "matmul preference", INVALID_VALUE);

fn live() -> MutexGuard<'static, HashSet<usize>> {
    static LIVE: OnceLock<Mutex<HashSet<usize>>> = OnceLock::new();
    // The set is only ever inserted into or removed from, so a panic elsewhere while it was
    // locked cannot have left it half-updated.
    LIVE.get_or_init(|| Mutex::new(HashSet::new()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Boxes `obj` and registers it; returns the opaque pointer.
pub fn create<T: Kind>(obj: T) -> *mut c_void {
    let ptr = Box::into_raw(Box::new(obj.wrap()));
    live().insert(ptr as usize);
    ptr.cast()
}

/// Runs `f` on the live object of kind `T` at `ptr`, with the registry locked.
// Safe for any pointer: only an address found in the registry is dereferenced.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn with<T: Kind, R>(ptr: *mut c_void, f: impl FnOnce(&mut T) -> R) -> Res<R> {
    let mut live = live();
    // SAFETY: the registry stays locked until `f` returns.
    let obj = unsafe { lookup::<T>(&mut live, ptr)? };
    Ok(f(obj))
}

/// A copy of the live object of kind `T` at `ptr`.
pub fn copy<T: Kind + Copy>(ptr: *mut c_void) -> Res<T> {
    with(ptr, |x: &mut T| *x)
}

/// Unregisters and frees the object of kind `T` at `ptr`.
// Safe for any pointer: only an address found in the registry is freed.
#[allow(clippy::not_unsafe_ptr_arg_deref)]
pub fn destroy<T: Kind>(ptr: *mut c_void) -> Res<()> {
    let mut live = live();
    // Checks the kind first: destroying a layout through cublasLtMatmulDescDestroy fails.
    // SAFETY: the registry is locked; the reference is dropped at once.
    unsafe { lookup::<T>(&mut live, ptr)? };
    live.remove(&(ptr as usize));
    drop(live);
    // SAFETY: created by `create` from a Box and just unregistered, so freed exactly once.
    drop(unsafe { Box::from_raw(ptr.cast::<Object>()) });
    Ok(())
}

/// The live object of kind `T` at `ptr`.
///
/// # Safety
/// `live` must be the locked registry (the borrow ties the reference to that lock).
unsafe fn lookup<T: Kind>(live: &mut HashSet<usize>, ptr: *mut c_void) -> Res<&mut T> {
    if ptr.is_null() || !live.contains(&(ptr as usize)) {
        return Err(Fail::new(
            T::BAD,
            format!("{} {ptr:p} is null or not live", T::WHAT),
        ));
    }
    // The address is registered, so it is a boxed `Object` that has not been freed; freeing
    // needs the registry lock, which the caller holds.
    let obj = &mut *ptr.cast::<Object>();
    T::project(obj).ok_or_else(|| Fail::new(T::BAD, format!("{ptr:p} is not a {}", T::WHAT)))
}
