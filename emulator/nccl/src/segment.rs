//! The shared-memory segment of a communicator, and waiting on the other ranks through it.
//!
//! ```text
//!   | header (64 B) | rank records (128 B each) | pad to a page | slot 0 | slot 1 | ...
//! ```
//!
//! Rank 0 creates the segment (`shm_open` with `O_EXCL`, so a second rank 0 is refused),
//! sizes it, reserves its memory with `posix_fallocate` (on tmpfs a write into an unreserved
//! page past the quota would kill the process with SIGBUS; reserving turns that into an error
//! at init, and the slots shrink until the reservation fits), fills the header and publishes
//! it by writing the magic last. The other ranks poll for the name, then for the magic.
//!
//! Each rank has a record (state, pid and start time, barrier epoch, the descriptions of its
//! last two collectives) and a slot, the staging area through which its data reaches the
//! others. Every field that another rank reads is an atomic: stores publish with Release,
//! loads see them with Acquire, which also orders the slot contents written before them.

use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::error::Failure;
use crate::process;

const MAGIC: u64 = u64::from_le_bytes(*b"ingotNCL");
const LAYOUT_VERSION: u32 = 1;
const PAGE: usize = 4096;
const RECORDS_OFFSET: usize = 64;
const RECORD_BYTES: usize = 128;
/// The staging area per rank: a collective larger than this goes through it chunk by chunk.
pub const DEFAULT_SLOT_BYTES: usize = 8 << 20;
/// The smallest slot the reservation may shrink to (it still holds a few elements per rank
/// for a reduce-scatter of 1024 ranks).
const MIN_SLOT_BYTES: usize = 64 << 10;
/// Ranks of one host; far more than the devices of any one machine.
pub const MAX_RANKS: usize = 1024;
/// Words of a collective's description (kind, count, datatype, op, root, sequence number).
pub const DESC_WORDS: usize = 6;
/// How often a wait checks that the processes it waits for still live.
const LIVENESS_PERIOD: Duration = Duration::from_millis(5);

/// The life of a rank's record, as the others see it.
pub mod state {
    pub const EMPTY: u32 = 0;
    /// Claimed, pid not yet written.
    pub const JOINING: u32 = 1;
    pub const JOINED: u32 = 2;
    /// `ncclCommAbort`.
    pub const ABORTED: u32 = 3;
    /// A collective or the init of this rank failed; it will not take part again.
    pub const FAILED: u32 = 4;
    /// `ncclCommDestroy` (or `ncclCommFinalize` followed by it).
    pub const LEFT: u32 = 5;
}

#[repr(C)]
struct Header {
    magic: AtomicU64,
    version: AtomicU32,
    nranks: AtomicU32,
    slot_bytes: AtomicU64,
    total_bytes: AtomicU64,
    joined: AtomicU32,
}

#[repr(C)]
pub struct Record {
    pub state: AtomicU32,
    pub pid: AtomicI32,
    pub start_time: AtomicU64,
    pub epoch: AtomicU64,
    /// Indexed by the collective's sequence number modulo 2: a rank may write the next
    /// description while a slower one still reads the current one, never the one after.
    pub desc: [[AtomicU64; DESC_WORDS]; 2],
}

const _: () = assert!(std::mem::size_of::<Header>() <= RECORDS_OFFSET);
const _: () = assert!(std::mem::size_of::<Record>() <= RECORD_BYTES);

fn slots_offset(nranks: usize) -> usize {
    (RECORDS_OFFSET + nranks * RECORD_BYTES).div_ceil(PAGE) * PAGE
}

fn os_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// One rank's mapping of the segment.
pub struct Segment {
    base: *mut u8,
    len: usize,
    nranks: usize,
    slot_bytes: usize,
    name: CString,
}

// SAFETY: the mapping is shared memory; everything other ranks touch is reached through
// atomics, and the slots are written and read in phases separated by barriers.
unsafe impl Send for Segment {}
unsafe impl Sync for Segment {}

impl Drop for Segment {
    fn drop(&mut self) {
        // SAFETY: base/len are the mapping this segment made and nothing else unmaps it.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// Maps `len` bytes of `fd`, shared.
fn map(fd: i32, len: usize) -> Result<*mut u8, std::io::Error> {
    // SAFETY: a fresh shared mapping of an open descriptor; the kernel checks the arguments.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        Err(os_error())
    } else {
        Ok(p.cast())
    }
}

/// Closes the descriptor when it goes out of scope (the mapping outlives it).
struct Fd(i32);
impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor was opened here and is closed once.
        unsafe { libc::close(self.0) };
    }
}

/// Polls politely: a few spins for the common case of a peer a moment behind, then yields,
/// then sleeps of growing length up to 1 ms, so that a rank waiting for a slow peer does not
/// take a core from it (two ranks may share two cores with other work).
pub struct Backoff(u32);

impl Backoff {
    pub fn new() -> Self {
        Backoff(0)
    }
    pub fn pause(&mut self) {
        match self.0 {
            0..64 => std::hint::spin_loop(),
            64..128 => std::thread::yield_now(),
            n => std::thread::sleep(Duration::from_micros(
                (20u64 << ((n - 128) / 16).min(6)).min(1000),
            )),
        }
        self.0 = self.0.saturating_add(1);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// What a wait reports its failures in terms of.
pub struct WaitContext<'a> {
    /// The entry point, for the messages ("during ncclAllReduce").
    pub what: &'a str,
    pub timeout: Duration,
    /// Set by `ncclCommAbort` of this rank, possibly from another thread.
    pub aborted: &'a AtomicBool,
    pub me: usize,
}

impl Segment {
    /// Rank 0: creates the segment for `nranks` ranks.
    pub fn create(name: &CStr, nranks: usize) -> Result<Segment, Failure> {
        // SAFETY: name is a valid C string; the flags create a new object or fail.
        let fd = unsafe {
            libc::shm_open(
                name.as_ptr(),
                libc::O_CREAT | libc::O_EXCL | libc::O_RDWR | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            let e = os_error();
            return Err(if e.raw_os_error() == Some(libc::EEXIST) {
                Failure::invalid_usage(format!(
                    "ncclCommInitRank: rank 0 joined twice (the segment {} of this unique id exists already)",
                    name.to_string_lossy()
                ))
            } else {
                Failure::system(format!(
                    "ncclCommInitRank: shm_open {}: {e}",
                    name.to_string_lossy()
                ))
            });
        }
        let fd = Fd(fd);
        let made = Self::size_and_map(&fd, name, nranks);
        if made.is_err() {
            // SAFETY: removes the name created above; the descriptor is still open.
            unsafe { libc::shm_unlink(name.as_ptr()) };
        }
        made
    }

    fn size_and_map(fd: &Fd, name: &CStr, nranks: usize) -> Result<Segment, Failure> {
        let mut slot_bytes = DEFAULT_SLOT_BYTES;
        let total = loop {
            let too_big = || {
                Failure::invalid_argument(format!(
                    "ncclCommInitRank: {nranks} ranks need too much shared memory"
                ))
            };
            let total = nranks
                .checked_mul(slot_bytes)
                .and_then(|s| s.checked_add(slots_offset(nranks)))
                .ok_or_else(too_big)?;
            let len = libc::off_t::try_from(total).map_err(|_| too_big())?;
            // SAFETY: plain system calls on the descriptor opened by create.
            if unsafe { libc::ftruncate(fd.0, len) } != 0 {
                return Err(Failure::system(format!(
                    "ncclCommInitRank: ftruncate {total} bytes: {}",
                    os_error()
                )));
            }
            // SAFETY: as above; posix_fallocate returns the error instead of setting errno.
            let rc = unsafe { libc::posix_fallocate(fd.0, 0, len) };
            match rc {
                0 | libc::EOPNOTSUPP | libc::EINVAL => break total,
                libc::ENOSPC if slot_bytes > MIN_SLOT_BYTES => slot_bytes /= 2,
                _ => {
                    return Err(Failure::system(format!(
                    "ncclCommInitRank: cannot reserve {total} bytes of shared memory for {}: {}",
                    name.to_string_lossy(),
                    std::io::Error::from_raw_os_error(rc)
                )))
                }
            }
        };
        let base = map(fd.0, total)
            .map_err(|e| Failure::system(format!("ncclCommInitRank: mmap {total} bytes: {e}")))?;
        let seg = Segment {
            base,
            len: total,
            nranks,
            slot_bytes,
            name: name.to_owned(),
        };
        let h = seg.header();
        h.version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.nranks.store(nranks as u32, Ordering::Relaxed);
        h.slot_bytes.store(slot_bytes as u64, Ordering::Relaxed);
        h.total_bytes.store(total as u64, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(seg)
    }

    /// Ranks other than 0: waits (up to `timeout`) for rank 0 to create and publish the
    /// segment, then maps it.
    pub fn open(
        name: &CStr,
        nranks: usize,
        rank: usize,
        timeout: Duration,
    ) -> Result<Segment, Failure> {
        let start = Instant::now();
        let mut backoff = Backoff::new();
        loop {
            if let Some(seg) = Self::try_open(name, nranks, rank)? {
                return Ok(seg);
            }
            if start.elapsed() > timeout {
                return Err(Failure::system(format!(
                    "ncclCommInitRank: timed out after {} s (INGOT_EMU_NCCL_TIMEOUT) waiting for rank 0 to create the communicator (rank {rank} of {nranks})",
                    timeout.as_secs_f64()
                )));
            }
            backoff.pause();
        }
    }

    fn try_open(name: &CStr, nranks: usize, rank: usize) -> Result<Option<Segment>, Failure> {
        // SAFETY: name is a valid C string; opening an existing object only.
        let fd = unsafe { libc::shm_open(name.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC, 0) };
        if fd < 0 {
            let e = os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(Failure::system(format!(
                    "ncclCommInitRank: shm_open {}: {e}",
                    name.to_string_lossy()
                ))),
            };
        }
        let fd = Fd(fd);
        // SAFETY: fstat fills the zeroed struct for an open descriptor.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd.0, &mut st) } != 0 || (st.st_size as u64) < PAGE as u64 {
            return Ok(None); // not sized yet
        }
        let first =
            map(fd.0, PAGE).map_err(|e| Failure::system(format!("ncclCommInitRank: mmap: {e}")))?;
        // SAFETY: the first page is mapped and the header lies at its start.
        let header = unsafe { &*(first as *const Header) };
        let published = header.magic.load(Ordering::Acquire) == MAGIC;
        let (version, their_ranks, slot_bytes, total) = (
            header.version.load(Ordering::Relaxed),
            header.nranks.load(Ordering::Relaxed) as usize,
            header.slot_bytes.load(Ordering::Relaxed) as usize,
            header.total_bytes.load(Ordering::Relaxed) as usize,
        );
        // SAFETY: unmaps the page mapped above.
        unsafe { libc::munmap(first.cast(), PAGE) };
        if !published {
            return Ok(None);
        }
        if version != LAYOUT_VERSION {
            return Err(Failure::invalid_usage(format!(
                "ncclCommInitRank: the communicator was made by another version of the stand-in (layout {version}, this one {LAYOUT_VERSION})"
            )));
        }
        if their_ranks != nranks {
            return Err(Failure::invalid_usage(format!(
                "ncclCommInitRank: rank 0 created the communicator for {their_ranks} ranks, rank {rank} was given nranks = {nranks}"
            )));
        }
        let base = map(fd.0, total)
            .map_err(|e| Failure::system(format!("ncclCommInitRank: mmap {total} bytes: {e}")))?;
        Ok(Some(Segment {
            base,
            len: total,
            nranks,
            slot_bytes,
            name: name.to_owned(),
        }))
    }

    /// Removes the name; the mappings stay valid. Called by every rank once all joined (and
    /// after a failed init), so that no file is left in /dev/shm; a second call is harmless.
    pub fn unlink(&self) {
        // SAFETY: name is a valid C string; ENOENT is expected and ignored.
        unsafe { libc::shm_unlink(self.name.as_ptr()) };
    }

    fn header(&self) -> &Header {
        // SAFETY: the mapping is at least a page and the header lies at its start.
        unsafe { &*(self.base as *const Header) }
    }

    pub fn joined(&self) -> &AtomicU32 {
        &self.header().joined
    }

    pub fn record(&self, rank: usize) -> &Record {
        debug_assert!(rank < self.nranks);
        // SAFETY: the records of nranks ranks lie before the slots, inside the mapping.
        unsafe { &*(self.base.add(RECORDS_OFFSET + rank * RECORD_BYTES) as *const Record) }
    }

    pub fn slot_bytes(&self) -> usize {
        self.slot_bytes
    }

    /// The start of `rank`'s slot (page aligned, `slot_bytes` long).
    pub fn slot(&self, rank: usize) -> *mut u8 {
        debug_assert!(rank < self.nranks);
        // SAFETY: the slots of nranks ranks end at the end of the mapping.
        unsafe {
            self.base
                .add(slots_offset(self.nranks) + rank * self.slot_bytes)
        }
    }

    /// Waits until `done()`, failing when this rank is aborted, when a rank that `watched`
    /// selects has aborted, failed, left or exited, or after the timeout (naming the ranks
    /// `missing` selects).
    pub fn wait(
        &self,
        ctx: &WaitContext,
        done: impl Fn() -> bool,
        watched: impl Fn(usize) -> bool,
        missing: impl Fn(usize) -> bool,
    ) -> Result<(), Failure> {
        let start = Instant::now();
        let mut last_check = start;
        let mut backoff = Backoff::new();
        let what = ctx.what;
        loop {
            if done() {
                return Ok(());
            }
            if ctx.aborted.load(Ordering::Acquire) {
                return Err(Failure::invalid_usage(format!(
                    "{what}: rank {} aborted its communicator (ncclCommAbort) while waiting",
                    ctx.me
                )));
            }
            let now = Instant::now();
            let check_liveness = now.duration_since(last_check) >= LIVENESS_PERIOD;
            if check_liveness {
                last_check = now;
            }
            for s in (0..self.nranks).filter(|&s| s != ctx.me && watched(s)) {
                let r = self.record(s);
                let pid = r.pid.load(Ordering::Acquire);
                let failure = match r.state.load(Ordering::Acquire) {
                    state::ABORTED => {
                        format!("rank {s} (pid {pid}) aborted its communicator during {what}")
                    }
                    state::FAILED => {
                        format!("rank {s} (pid {pid}) stopped after an error during {what}")
                    }
                    state::LEFT => {
                        format!("rank {s} (pid {pid}) destroyed its communicator during {what}")
                    }
                    state::JOINED
                        if check_liveness
                            && !process::alive(pid, r.start_time.load(Ordering::Acquire)) =>
                    {
                        format!("rank {s} (pid {pid}) exited during {what}")
                    }
                    _ => continue,
                };
                return Err(Failure::remote(failure));
            }
            if now.duration_since(start) > ctx.timeout {
                let names: Vec<String> = (0..self.nranks)
                    .filter(|&s| s != ctx.me && missing(s))
                    .map(|s| match self.record(s).pid.load(Ordering::Acquire) {
                        0 => format!("rank {s}"),
                        pid => format!("rank {s} (pid {pid})"),
                    })
                    .collect();
                return Err(Failure::system(format!(
                    "{what}: rank {} timed out after {} s (INGOT_EMU_NCCL_TIMEOUT) waiting for {}",
                    ctx.me,
                    ctx.timeout.as_secs_f64(),
                    if names.is_empty() {
                        "the other ranks".to_string()
                    } else {
                        names.join(", ")
                    }
                )));
            }
            backoff.pause();
        }
    }
}
