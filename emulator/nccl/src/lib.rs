//! A stand-in `libnccl.so.2`: the NCCL 2.28 C API that ingot reaches through
//! `cudarc::nccl`, for ranks that are processes (or threads) of one host, run on the CPU.
//!
//! - [`id`]: `ncclUniqueId`, a random token naming the communicator's shared memory.
//! - [`segment`]: the POSIX shared-memory segment (created by rank 0, joined by the others,
//!   unlinked once all joined), the per-rank records and slots, and the waits on the peers,
//!   which fail instead of hanging when a peer exited ([`process`]), aborted or failed, or
//!   after `INGOT_EMU_NCCL_TIMEOUT` seconds (default 300).
//! - [`comm`]: communicators, their barrier, error state and handles.
//! - [`collectives`]: all-reduce, reduce-scatter, all-gather, broadcast and reduce, run
//!   synchronously at call time through the slots, chunk by chunk; [`reduce`]: the
//!   arithmetic, in rank order, f16/bf16 accumulated in f32 and rounded once.
//! - [`status`], [`error`]: result codes, their strings, and `ncclGetLastError`'s message.
//!
//! Groups (`ncclGroupStart`/`ncclGroupEnd`) are counted but do not defer anything: every call
//! between them runs at once. So one thread cannot drive several ranks of one communicator
//! inside a group (as `ncclCommInitAll` or a per-device loop in one thread does); each rank
//! needs its own thread or process. Only the entry points listed here exist; `cudarc`
//! resolves NCCL symbols one at a time, on first use.
#![allow(clippy::missing_safety_doc)] // every export follows NCCL's documented contract

pub mod collectives;
pub mod comm;
pub mod error;
pub mod id;
pub mod process;
pub mod reduce;
pub mod segment;
pub mod status;

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};

use collectives::{Args, Call, Kind};
use comm::Comm;
use error::Failure;
use id::UniqueId;
use segment::state;
use status::*;

/// `ncclComm_t`: an opaque handle (see [`comm`]).
pub type NcclComm = *mut c_void;

/// NCCL 2.28.5 (`NCCL_VERSION(2, 28, 5)`), the API this stand-in follows; it is not NCCL.
pub const VERSION: c_int = 22805;

/// `NCCL_CONFIG_INITIALIZER`'s magic.
const CONFIG_MAGIC: u32 = 0xcafe_beef;

/// Runs an entry point's body, turning a panic (a bug of the stand-in) into
/// `ncclInternalError` with a message, since unwinding out of an `extern "C"` function would
/// abort the process.
fn guarded(name: &str, f: impl FnOnce() -> NcclResult) -> NcclResult {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|_| {
        error::record(&Failure::new(
            INTERNAL_ERROR,
            format!("{name}: the stand-in panicked (a bug of the emulator)"),
        ));
        INTERNAL_ERROR
    })
}

/// Records a failure that has no communicator (yet) and returns its code.
fn refuse(f: Failure) -> NcclResult {
    error::record(&f);
    f.code
}

fn with_comm(name: &str, handle: NcclComm, f: impl FnOnce(&Comm) -> NcclResult) -> NcclResult {
    match comm::lookup(handle as usize) {
        Some(c) => f(&c),
        None => refuse(Failure::invalid_argument(format!(
            "{name}: comm is not a live communicator (null, destroyed or aborted)"
        ))),
    }
}

#[no_mangle]
pub unsafe extern "C" fn ncclGetVersion(version: *mut c_int) -> NcclResult {
    if version.is_null() {
        return refuse(Failure::invalid_argument("ncclGetVersion: version is null"));
    }
    *version = VERSION;
    SUCCESS
}

#[no_mangle]
pub unsafe extern "C" fn ncclGetUniqueId(unique_id: *mut UniqueId) -> NcclResult {
    guarded("ncclGetUniqueId", || {
        if unique_id.is_null() {
            return refuse(Failure::invalid_argument(
                "ncclGetUniqueId: uniqueId is null",
            ));
        }
        unique_id.write(UniqueId::generate());
        SUCCESS
    })
}

unsafe fn init(out: *mut NcclComm, nranks: c_int, id: &UniqueId, rank: c_int) -> NcclResult {
    if out.is_null() {
        return refuse(Failure::invalid_argument("ncclCommInitRank: comm is null"));
    }
    match Comm::init(nranks, id, rank, comm::current_device()) {
        Ok(c) => {
            *out = comm::register(c) as NcclComm;
            SUCCESS
        }
        Err(f) => refuse(f),
    }
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommInitRank(
    comm: *mut NcclComm,
    nranks: c_int,
    comm_id: UniqueId,
    rank: c_int,
) -> NcclResult {
    guarded("ncclCommInitRank", || init(comm, nranks, &comm_id, rank))
}

/// Checks that `config` was set up by `NCCL_CONFIG_INITIALIZER`; only its first fields
/// (size, magic, version, blocking) are read, so any 2.x layout is accepted. `blocking = 0`
/// is allowed: a non-blocking communicator may complete its calls before they return, and
/// here every call does, so nothing ever returns `ncclInProgress`.
#[no_mangle]
pub unsafe extern "C" fn ncclCommInitRankConfig(
    comm: *mut NcclComm,
    nranks: c_int,
    comm_id: UniqueId,
    rank: c_int,
    config: *mut c_void,
) -> NcclResult {
    guarded("ncclCommInitRankConfig", || {
        if !config.is_null() {
            let size = config.cast::<usize>().read_unaligned();
            let magic = config.cast::<u8>().add(8).cast::<u32>().read_unaligned();
            if magic != CONFIG_MAGIC || size < 20 {
                return refuse(Failure::invalid_argument(
                    "ncclCommInitRankConfig: config was not initialised with NCCL_CONFIG_INITIALIZER",
                ));
            }
        }
        init(comm, nranks, &comm_id, rank)
    })
}

/// Nothing is pending (every call completed when it returned), so finalising only checks
/// the handle; `ncclCommDestroy` frees.
#[no_mangle]
pub unsafe extern "C" fn ncclCommFinalize(comm: NcclComm) -> NcclResult {
    guarded("ncclCommFinalize", || {
        with_comm("ncclCommFinalize", comm, |_| SUCCESS)
    })
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommDestroy(comm: NcclComm) -> NcclResult {
    guarded("ncclCommDestroy", || {
        match comm::unregister(comm as usize) {
            Some(c) => {
                // A peer still waiting for this rank fails with "destroyed" instead of
                // waiting; a rank that failed or aborted keeps saying so.
                c.leave();
                SUCCESS
            }
            None => refuse(Failure::invalid_argument(
                "ncclCommDestroy: comm is not a live communicator (null, destroyed or aborted)",
            )),
        }
    })
}

/// Marks this rank aborted in the segment (peers waiting on it fail with "rank R aborted"),
/// stops a collective of this rank waiting in another thread, and frees the handle. Never
/// waits for anyone, so it returns at once even when the peers are gone.
#[no_mangle]
pub unsafe extern "C" fn ncclCommAbort(comm: NcclComm) -> NcclResult {
    guarded("ncclCommAbort", || match comm::unregister(comm as usize) {
        Some(c) => {
            c.aborted.store(true, std::sync::atomic::Ordering::Release);
            c.set_state(state::ABORTED);
            SUCCESS
        }
        None => refuse(Failure::invalid_argument(
            "ncclCommAbort: comm is not a live communicator (null, destroyed or aborted)",
        )),
    })
}

unsafe fn write_int(
    name: &str,
    comm: NcclComm,
    out: *mut c_int,
    value: impl FnOnce(&Comm) -> c_int,
) -> NcclResult {
    with_comm(name, comm, |c| {
        if out.is_null() {
            return refuse(Failure::invalid_argument(format!(
                "{name}: the output pointer is null"
            )));
        }
        *out = value(c);
        SUCCESS
    })
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommCount(comm: NcclComm, count: *mut c_int) -> NcclResult {
    guarded("ncclCommCount", || {
        write_int("ncclCommCount", comm, count, |c| c.nranks as c_int)
    })
}

#[no_mangle]
pub unsafe extern "C" fn ncclCommUserRank(comm: NcclComm, rank: *mut c_int) -> NcclResult {
    guarded("ncclCommUserRank", || {
        write_int("ncclCommUserRank", comm, rank, |c| c.rank as c_int)
    })
}

/// The CUDA device that was current when the communicator was made (0 without a context).
#[no_mangle]
pub unsafe extern "C" fn ncclCommCuDevice(comm: NcclComm, device: *mut c_int) -> NcclResult {
    guarded("ncclCommCuDevice", || {
        write_int("ncclCommCuDevice", comm, device, |c| c.device)
    })
}

/// The error that broke the communicator (a peer exited or aborted: `ncclRemoteError`; a
/// timeout: `ncclSystemError`), or `ncclSuccess`. Never `ncclInProgress`.
#[no_mangle]
pub unsafe extern "C" fn ncclCommGetAsyncError(
    comm: NcclComm,
    async_error: *mut NcclResult,
) -> NcclResult {
    guarded("ncclCommGetAsyncError", || {
        with_comm("ncclCommGetAsyncError", comm, |c| {
            if async_error.is_null() {
                return refuse(Failure::invalid_argument(
                    "ncclCommGetAsyncError: asyncError is null",
                ));
            }
            *async_error = c.async_error();
            SUCCESS
        })
    })
}

#[no_mangle]
pub extern "C" fn ncclGetErrorString(result: NcclResult) -> *const c_char {
    status::description_ptr(result)
}

/// The last failure's one-line message: the communicator's when `comm` is a live one that
/// failed, else this thread's, else "". The string stays valid for the life of the process.
#[no_mangle]
pub extern "C" fn ncclGetLastError(comm: NcclComm) -> *const c_char {
    let own = std::panic::catch_unwind(|| comm::lookup(comm as usize).and_then(|c| c.last_error()));
    match own {
        Ok(Some(message)) => message.as_ptr(),
        _ => error::thread_last(),
    }
}

thread_local! {
    static GROUP_DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Counts the nesting only: calls inside a group run at once (see the crate's doc).
#[no_mangle]
pub extern "C" fn ncclGroupStart() -> NcclResult {
    GROUP_DEPTH.with(|d| d.set(d.get().saturating_add(1)));
    SUCCESS
}

#[no_mangle]
pub extern "C" fn ncclGroupEnd() -> NcclResult {
    GROUP_DEPTH.with(|d| match d.get() {
        0 => refuse(Failure::invalid_usage(
            "ncclGroupEnd: not inside a group (no matching ncclGroupStart)",
        )),
        n => {
            d.set(n - 1);
            SUCCESS
        }
    })
}

/// Checks datatype, op and root, and that each named buffer is given and its size (`count`
/// elements times the factor) fits.
fn check(call: &Call, c: &Comm, buffers: &[(&str, *const u8, usize)]) -> Result<Args, Failure> {
    let dt = collectives::datatype(call)?;
    let op = collectives::op(call)?;
    let root = collectives::root(call, c)?;
    for &(what, ptr, times) in buffers {
        collectives::needed(call, what, ptr)?;
        collectives::bytes(call, dt, times)?;
    }
    Ok(Args { dt, op, root })
}

/// Whether this rank is `root` (a root out of range is refused by `check` before use).
fn is_root(c: &Comm, root: c_int) -> bool {
    usize::try_from(root).is_ok_and(|r| r == c.rank)
}

/// Sum, product, max, min or average of every rank's `count` elements, into every rank's
/// `recvbuff`; in place when `sendbuff == recvbuff`.
#[no_mangle]
pub unsafe extern "C" fn ncclAllReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: u32,
    op: u32,
    comm: NcclComm,
    _stream: *mut c_void,
) -> NcclResult {
    let (send, recv) = (sendbuff.cast::<u8>(), recvbuff.cast::<u8>());
    let call = Call {
        kind: Kind::AllReduce,
        name: "ncclAllReduce",
        count,
        dtype: datatype,
        op: Some(op),
        root: None,
    };
    guarded(call.name, || {
        collectives::run(
            comm as usize,
            call,
            |c, call| check(call, c, &[("sendbuff", send, 1), ("recvbuff", recv, 1)]),
            |c, p, a| collectives::all_reduce(c, p, a, "ncclAllReduce", (send, recv, count), false),
        )
    })
}

/// The reduction of every rank's `count` elements into the root's `recvbuff` (the others'
/// may be null).
#[no_mangle]
pub unsafe extern "C" fn ncclReduce(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: u32,
    op: u32,
    root: c_int,
    comm: NcclComm,
    _stream: *mut c_void,
) -> NcclResult {
    let (send, recv) = (sendbuff.cast::<u8>(), recvbuff.cast::<u8>());
    let call = Call {
        kind: Kind::Reduce,
        name: "ncclReduce",
        count,
        dtype: datatype,
        op: Some(op),
        root: Some(root),
    };
    guarded(call.name, || {
        collectives::run(
            comm as usize,
            call,
            |c, call| {
                let recv_needed = if is_root(c, root) { recv } else { send };
                check(
                    call,
                    c,
                    &[("sendbuff", send, 1), ("recvbuff", recv_needed, 1)],
                )
            },
            |c, p, a| collectives::all_reduce(c, p, a, "ncclReduce", (send, recv, count), true),
        )
    })
}

/// Rank r receives in `recvbuff` the reduction of block r (elements `r * recvcount ..`) of
/// every rank's `sendbuff`; in place when `sendbuff + rank * recvcount == recvbuff`.
#[no_mangle]
pub unsafe extern "C" fn ncclReduceScatter(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    recvcount: usize,
    datatype: u32,
    op: u32,
    comm: NcclComm,
    _stream: *mut c_void,
) -> NcclResult {
    let (send, recv) = (sendbuff.cast::<u8>(), recvbuff.cast::<u8>());
    let call = Call {
        kind: Kind::ReduceScatter,
        name: "ncclReduceScatter",
        count: recvcount,
        dtype: datatype,
        op: Some(op),
        root: None,
    };
    guarded(call.name, || {
        collectives::run(
            comm as usize,
            call,
            |c, call| {
                check(
                    call,
                    c,
                    &[("sendbuff", send, c.nranks), ("recvbuff", recv, 1)],
                )
            },
            |c, p, a| collectives::reduce_scatter(c, p, a, (send, recv, recvcount)),
        )
    })
}

/// Block r (elements `r * sendcount ..`) of every rank's `recvbuff` is rank r's `sendbuff`;
/// in place when `sendbuff == recvbuff + rank * sendcount`.
#[no_mangle]
pub unsafe extern "C" fn ncclAllGather(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    sendcount: usize,
    datatype: u32,
    comm: NcclComm,
    _stream: *mut c_void,
) -> NcclResult {
    let (send, recv) = (sendbuff.cast::<u8>(), recvbuff.cast::<u8>());
    let call = Call {
        kind: Kind::AllGather,
        name: "ncclAllGather",
        count: sendcount,
        dtype: datatype,
        op: None,
        root: None,
    };
    guarded(call.name, || {
        collectives::run(
            comm as usize,
            call,
            |c, call| {
                check(
                    call,
                    c,
                    &[("sendbuff", send, 1), ("recvbuff", recv, c.nranks)],
                )
            },
            |c, p, a| collectives::all_gather(c, p, a, (send, recv, sendcount)),
        )
    })
}

unsafe fn broadcast(
    name: &'static str,
    (send, recv, count): (*const u8, *mut u8, usize),
    datatype: u32,
    root: c_int,
    comm: NcclComm,
) -> NcclResult {
    let call = Call {
        kind: Kind::Broadcast,
        name,
        count,
        dtype: datatype,
        op: None,
        root: Some(root),
    };
    guarded(name, || {
        collectives::run(
            comm as usize,
            call,
            |c, call| {
                let send_needed = if is_root(c, root) { send } else { recv };
                check(
                    call,
                    c,
                    &[("sendbuff", send_needed, 1), ("recvbuff", recv, 1)],
                )
            },
            |c, p, a| collectives::broadcast(c, p, a, name, (send, recv, count)),
        )
    })
}

/// Every rank's `recvbuff` gets the root's `sendbuff` (the others' `sendbuff` is not read
/// and may be null); in place when `sendbuff == recvbuff`.
#[no_mangle]
pub unsafe extern "C" fn ncclBroadcast(
    sendbuff: *const c_void,
    recvbuff: *mut c_void,
    count: usize,
    datatype: u32,
    root: c_int,
    comm: NcclComm,
    _stream: *mut c_void,
) -> NcclResult {
    broadcast(
        "ncclBroadcast",
        (sendbuff.cast(), recvbuff.cast(), count),
        datatype,
        root,
        comm,
    )
}

/// The in-place broadcast of the legacy API: `ncclBroadcast(buff, buff, ...)`.
#[no_mangle]
pub unsafe extern "C" fn ncclBcast(
    buff: *mut c_void,
    count: usize,
    datatype: u32,
    root: c_int,
    comm: NcclComm,
    _stream: *mut c_void,
) -> NcclResult {
    broadcast(
        "ncclBcast",
        (buff.cast_const().cast(), buff.cast(), count),
        datatype,
        root,
        comm,
    )
}
