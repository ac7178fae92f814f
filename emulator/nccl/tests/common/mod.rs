//! Helpers shared by the tests: ranks as threads, ids passed between processes.
#![allow(dead_code)] // each test file uses a part

use std::ffi::{c_int, c_void, CStr};

pub use ingot_emu_nccl::id::UniqueId;
pub use ingot_emu_nccl::status::*;
pub use ingot_emu_nccl::*;

pub const INT8: u32 = 0;
pub const UINT8: u32 = 1;
pub const INT32: u32 = 2;
pub const UINT32: u32 = 3;
pub const INT64: u32 = 4;
pub const UINT64: u32 = 5;
pub const FLOAT16: u32 = 6;
pub const FLOAT32: u32 = 7;
pub const FLOAT64: u32 = 8;
pub const BFLOAT16: u32 = 9;

pub const SUM: u32 = 0;
pub const PROD: u32 = 1;
pub const MAX: u32 = 2;
pub const MIN: u32 = 3;
pub const AVG: u32 = 4;

pub const STREAM: *mut c_void = std::ptr::null_mut();

pub fn new_id() -> UniqueId {
    let mut id = UniqueId { internal: [0; 128] };
    assert_eq!(unsafe { ncclGetUniqueId(&mut id) }, SUCCESS);
    id
}

pub fn id_to_hex(id: &UniqueId) -> String {
    id.bytes().iter().map(|b| format!("{b:02x}")).collect()
}

pub fn id_from_hex(hex: &str) -> UniqueId {
    let mut id = UniqueId { internal: [0; 128] };
    for (i, slot) in id.internal.iter_mut().enumerate() {
        *slot = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap() as _;
    }
    id
}

pub fn init(nranks: usize, id: UniqueId, rank: usize) -> Result<NcclComm, NcclResult> {
    let mut comm: NcclComm = std::ptr::null_mut();
    match unsafe { ncclCommInitRank(&mut comm, nranks as c_int, id, rank as c_int) } {
        SUCCESS => Ok(comm),
        e => Err(e),
    }
}

pub fn last_error(comm: NcclComm) -> String {
    unsafe { CStr::from_ptr(ncclGetLastError(comm)) }
        .to_string_lossy()
        .into_owned()
}

/// Runs `f(rank, comm)` on `nranks` threads, each a rank of one new communicator, and
/// destroys the communicators; returns the results in rank order.
pub fn with_ranks<R: Send>(nranks: usize, f: impl Fn(usize, NcclComm) -> R + Sync) -> Vec<R> {
    let id = new_id();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..nranks)
            .map(|r| {
                let f = &f;
                s.spawn(move || {
                    let comm = init(nranks, id, r).expect("ncclCommInitRank");
                    let out = f(r, comm);
                    assert_eq!(unsafe { ncclCommDestroy(comm) }, SUCCESS);
                    out
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("rank thread"))
            .collect()
    })
}

pub fn all_reduce<T: Copy>(
    comm: NcclComm,
    send: &[T],
    dtype: u32,
    op: u32,
) -> Result<Vec<T>, NcclResult> {
    let mut recv = send.to_vec();
    match unsafe {
        ncclAllReduce(
            send.as_ptr().cast(),
            recv.as_mut_ptr().cast(),
            send.len(),
            dtype,
            op,
            comm,
            STREAM,
        )
    } {
        SUCCESS => Ok(recv),
        e => Err(e),
    }
}
