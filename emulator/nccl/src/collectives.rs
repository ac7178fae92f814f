//! The collectives, run synchronously at call time.
//!
//! The stand-in CUDA stream runs every operation when it is enqueued, so running the
//! collective inside the call keeps the order of a stream; any stream handle is accepted.
//! Buffers are host addresses (the stand-in's device memory is host memory).
//!
//! Every collective starts with an exchange of descriptions: each rank writes what it was
//! called with (kind, count, datatype, op, root, or that its arguments were invalid) into its
//! record and passes a barrier; then every rank compares all of them with rank 0's. So ranks
//! that disagree, or one that was given a bad argument, make all of them fail with an error
//! at the same point (real NCCL would hang or corrupt), and the communicator stays usable.
//!
//! Then the data goes through the slots, chunk by chunk, each chunk in two phases between
//! barriers: every rank copies its part into its own slot; every rank reads what it needs from
//! all slots into its output, combining in rank order (see `reduce`); a barrier before the
//! next chunk keeps a slot from being overwritten while a peer still reads it. Only slots are
//! read in the second phase, so any aliasing of the send and receive buffers (in place) works.

use std::ffi::c_int;
use std::sync::atomic::Ordering;

use crate::comm::{self, Comm, Progress};
use crate::error::{self, Failure};
use crate::reduce::{self, DataType, Op};
use crate::segment::DESC_WORDS;
use crate::status::*;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    AllReduce = 1,
    ReduceScatter = 2,
    AllGather = 3,
    Broadcast = 4,
    Reduce = 5,
}

/// What a rank was called with, as it is compared between ranks.
pub struct Call {
    pub kind: Kind,
    pub name: &'static str,
    pub count: usize,
    pub dtype: u32,
    pub op: Option<u32>,
    pub root: Option<c_int>,
}

const INVALID: u64 = 1 << 32;
const NONE: u64 = u64::MAX;

impl Call {
    fn words(&self, seq: u64, valid: bool) -> [u64; DESC_WORDS] {
        [
            self.kind as u64 | if valid { 0 } else { INVALID },
            self.count as u64,
            self.dtype as u64,
            self.op.map_or(NONE, u64::from),
            self.root.map_or(NONE, |r| r as u32 as u64),
            seq,
        ]
    }
}

fn describe(w: &[u64; DESC_WORDS]) -> String {
    let name = match w[0] & 0xff {
        1 => "ncclAllReduce",
        2 => "ncclReduceScatter",
        3 => "ncclAllGather",
        4 => "ncclBroadcast",
        5 => "ncclReduce",
        _ => "?",
    };
    let mut s = format!("{name}(count {}, datatype {}", w[1], w[2]);
    if w[3] != NONE {
        s += &format!(", op {}", w[3]);
    }
    if w[4] != NONE {
        s += &format!(", root {}", w[4]);
    }
    s + &format!(") as collective #{}", w[5])
}

/// The checked arguments of a collective.
pub struct Args {
    pub dt: DataType,
    pub op: Op,
    pub root: usize,
}

pub fn datatype(call: &Call) -> Result<DataType, Failure> {
    DataType::from_raw(call.dtype).ok_or_else(|| {
        Failure::invalid_argument(format!(
            "{}: datatype {} is not supported by the stand-in (int8 to float64 and bfloat16 are; fp8 is not)",
            call.name, call.dtype
        ))
    })
}

pub fn op(call: &Call) -> Result<Op, Failure> {
    let raw = call.op.unwrap_or(0);
    Op::from_raw(raw).ok_or_else(|| {
        Failure::invalid_argument(format!(
            "{}: reduction op {raw} is not supported by the stand-in (sum, prod, max, min, avg are)",
            call.name
        ))
    })
}

pub fn root(call: &Call, comm: &Comm) -> Result<usize, Failure> {
    match call.root {
        None => Ok(0),
        Some(r) if r >= 0 && (r as usize) < comm.nranks => Ok(r as usize),
        Some(r) => Err(Failure::invalid_argument(format!(
            "{}: root {r} is not a rank of this communicator (0..{})",
            call.name, comm.nranks
        ))),
    }
}

/// A buffer that must be given when there is data to move.
pub fn needed(call: &Call, what: &str, ptr: *const u8) -> Result<(), Failure> {
    if ptr.is_null() && call.count > 0 {
        Err(Failure::invalid_argument(format!(
            "{}: {what} is null",
            call.name
        )))
    } else {
        Ok(())
    }
}

/// `count` elements of `dt` times `times`, in bytes, if that fits the address space.
pub fn bytes(call: &Call, dt: DataType, times: usize) -> Result<usize, Failure> {
    call.count
        .checked_mul(dt.size())
        .and_then(|b| b.checked_mul(times))
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| {
            Failure::invalid_argument(format!("{}: count {} is too large", call.name, call.count))
        })
}

/// Runs one collective on the communicator `handle`: looks it up, checks the arguments
/// (`check`), exchanges the descriptions and runs `body`, recording any failure.
pub fn run(
    handle: usize,
    call: Call,
    check: impl FnOnce(&Comm, &Call) -> Result<Args, Failure>,
    body: impl FnOnce(&Comm, &mut Progress, &Args) -> Result<(), Failure>,
) -> NcclResult {
    let Some(comm) = comm::lookup(handle) else {
        let f = Failure::invalid_argument(format!(
            "{}: comm is not a live communicator (null, destroyed or aborted)",
            call.name
        ));
        error::record(&f);
        return f.code;
    };
    let previous = comm.async_error();
    if previous != SUCCESS {
        let before = comm
            .last_error()
            .map(|m| m.to_string_lossy().into_owned())
            .unwrap_or_default();
        error::record(&Failure::new(
            previous,
            format!("{}: the communicator failed earlier: {before}", call.name),
        ));
        return previous;
    }
    let checked = check(&comm, &call);
    let mut p = comm.progress();
    let seq = p.seq;
    p.seq += 1;
    let mine = call.words(seq, checked.is_ok());
    for (slot, w) in comm.seg.record(comm.rank).desc[(seq & 1) as usize]
        .iter()
        .zip(mine)
    {
        slot.store(w, Ordering::Relaxed);
    }
    // The barrier's Release/Acquire on the epochs publishes the descriptions.
    if let Err(f) = comm.barrier(&mut p, call.name) {
        comm.fail(&f);
        return f.code;
    }
    let outcome = agree(&comm, &call, seq, &mine)
        .and(checked)
        .and_then(|args| body(&comm, &mut p, &args));
    match outcome {
        Ok(()) => SUCCESS,
        // Disagreement and bad arguments are found by every rank at the same point, before
        // any data moved: the communicator stays usable.
        Err(f) if f.code == INVALID_ARGUMENT || f.code == INVALID_USAGE => {
            comm.note(&f);
            f.code
        }
        Err(f) => {
            comm.fail(&f);
            f.code
        }
    }
}

/// Every rank's description equals rank 0's and none was invalid (this rank's own bad
/// argument is reported by `check`, so it is not reported here).
fn agree(comm: &Comm, call: &Call, seq: u64, mine: &[u64; DESC_WORDS]) -> Result<(), Failure> {
    let read = |s: usize| -> [u64; DESC_WORDS] {
        let d = &comm.seg.record(s).desc[(seq & 1) as usize];
        std::array::from_fn(|i| d[i].load(Ordering::Relaxed))
    };
    let all: Vec<[u64; DESC_WORDS]> = (0..comm.nranks).map(read).collect();
    if mine[0] & INVALID != 0 {
        return Ok(());
    }
    if let Some(s) = (0..comm.nranks).find(|&s| all[s][0] & INVALID != 0) {
        return Err(Failure::invalid_usage(format!(
            "{}: rank {s} passed an invalid argument to {} (see its ncclGetLastError)",
            call.name,
            describe(&all[s])
        )));
    }
    if let Some(s) = (1..comm.nranks).find(|&s| all[s] != all[0]) {
        return Err(Failure::invalid_usage(format!(
            "{}: the ranks disagree: rank 0 called {}, rank {s} called {}",
            call.name,
            describe(&all[0]),
            describe(&all[s])
        )));
    }
    Ok(())
}

/// The chunks of `count` elements, at most `per` each: (first element, length).
fn chunks(count: usize, per: usize) -> impl Iterator<Item = (usize, usize)> {
    let per = per.max(1);
    (0..count.div_ceil(per)).map(move |i| (i * per, per.min(count - i * per)))
}

/// All-reduce, or reduce when `only_root` (only the root writes its receive buffer).
///
/// # Safety
/// `send` holds `count` elements; `recv` (on every rank, or on the root for a reduce) has
/// room for them.
pub unsafe fn all_reduce(
    comm: &Comm,
    p: &mut Progress,
    a: &Args,
    name: &str,
    (send, recv, count): (*const u8, *mut u8, usize),
    only_root: bool,
) -> Result<(), Failure> {
    let esz = a.dt.size();
    let writes = !only_root || comm.rank == a.root;
    for (first, len) in chunks(count, comm.seg.slot_bytes() / esz) {
        std::ptr::copy(send.add(first * esz), comm.seg.slot(comm.rank), len * esz);
        comm.barrier(p, name)?;
        if writes {
            let sources: Vec<*const u8> = (0..comm.nranks)
                .map(|s| comm.seg.slot(s) as *const u8)
                .collect();
            reduce::reduce(a.dt, a.op, &sources, len, recv.add(first * esz));
        }
        comm.barrier(p, name)?;
    }
    Ok(())
}

/// Reduce-scatter: rank r receives the reduction of block r (of `recvcount` elements) of
/// every rank's send buffer.
///
/// # Safety
/// `send` holds `nranks * recvcount` elements, `recv` has room for `recvcount`.
pub unsafe fn reduce_scatter(
    comm: &Comm,
    p: &mut Progress,
    a: &Args,
    (send, recv, recvcount): (*const u8, *mut u8, usize),
) -> Result<(), Failure> {
    let esz = a.dt.size();
    let n = comm.nranks;
    // A slot holds this chunk of every destination's block, one after the other.
    for (first, len) in chunks(recvcount, comm.seg.slot_bytes() / (esz * n)) {
        let mine = comm.seg.slot(comm.rank);
        for d in 0..n {
            std::ptr::copy(
                send.add((d * recvcount + first) * esz),
                mine.add(d * len * esz),
                len * esz,
            );
        }
        comm.barrier(p, "ncclReduceScatter")?;
        let sources: Vec<*const u8> = (0..n)
            .map(|s| comm.seg.slot(s).add(comm.rank * len * esz) as *const u8)
            .collect();
        reduce::reduce(a.dt, a.op, &sources, len, recv.add(first * esz));
        comm.barrier(p, "ncclReduceScatter")?;
    }
    Ok(())
}

/// All-gather: block r (of `sendcount` elements) of every receive buffer is rank r's send
/// buffer.
///
/// # Safety
/// `send` holds `sendcount` elements, `recv` has room for `nranks * sendcount`.
pub unsafe fn all_gather(
    comm: &Comm,
    p: &mut Progress,
    a: &Args,
    (send, recv, sendcount): (*const u8, *mut u8, usize),
) -> Result<(), Failure> {
    let esz = a.dt.size();
    for (first, len) in chunks(sendcount, comm.seg.slot_bytes() / esz) {
        std::ptr::copy(send.add(first * esz), comm.seg.slot(comm.rank), len * esz);
        comm.barrier(p, "ncclAllGather")?;
        for s in 0..comm.nranks {
            std::ptr::copy(
                comm.seg.slot(s),
                recv.add((s * sendcount + first) * esz),
                len * esz,
            );
        }
        comm.barrier(p, "ncclAllGather")?;
    }
    Ok(())
}

/// Broadcast: every receive buffer gets the root's send buffer.
///
/// # Safety
/// On the root `send` holds `count` elements; every `recv` has room for them.
pub unsafe fn broadcast(
    comm: &Comm,
    p: &mut Progress,
    a: &Args,
    name: &str,
    (send, recv, count): (*const u8, *mut u8, usize),
) -> Result<(), Failure> {
    let esz = a.dt.size();
    let root = a.root;
    for (first, len) in chunks(count, comm.seg.slot_bytes() / esz) {
        if comm.rank == root {
            std::ptr::copy(send.add(first * esz), comm.seg.slot(root), len * esz);
        }
        comm.barrier(p, name)?;
        if comm.rank != root || !std::ptr::eq(send, recv) {
            std::ptr::copy(comm.seg.slot(root), recv.add(first * esz), len * esz);
        }
        comm.barrier(p, name)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::chunks;

    #[test]
    fn chunks_cover_the_count() {
        assert_eq!(chunks(0, 4).count(), 0);
        assert_eq!(
            chunks(10, 4).collect::<Vec<_>>(),
            vec![(0, 4), (4, 4), (8, 2)]
        );
        assert_eq!(chunks(8, 4).collect::<Vec<_>>(), vec![(0, 4), (4, 4)]);
        assert_eq!(chunks(3, 0).count(), 3);
    }
}
