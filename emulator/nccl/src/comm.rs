//! Communicators: joining one (`ncclCommInitRank`), the barrier between its ranks, its error
//! state, and the table of live handles.
//!
//! A handle (`ncclComm_t`) is an opaque number from a counter, never an address and never
//! reused, so a destroyed or made-up handle is recognised and refused instead of being
//! dereferenced.

use std::collections::HashMap;
use std::ffi::{c_int, CStr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use crate::error::{self, Failure};
use crate::id::{self, UniqueId};
use crate::process;
use crate::segment::{state, Segment, WaitContext, MAX_RANKS};
use crate::status::*;

/// Seconds every wait of the stand-in may last (the join and each barrier) before it fails
/// with `ncclSystemError`: `INGOT_EMU_NCCL_TIMEOUT` (a positive number), default 300.
pub const TIMEOUT_ENV: &str = "INGOT_EMU_NCCL_TIMEOUT";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

pub fn timeout_from_env() -> Duration {
    match std::env::var(TIMEOUT_ENV) {
        Err(_) => DEFAULT_TIMEOUT,
        Ok(text) => match text.trim().parse::<f64>() {
            Ok(s) if s.is_finite() && s > 0.0 => Duration::from_secs_f64(s.min(1e9)),
            _ => {
                eprintln!("ingot-emu: nccl: {TIMEOUT_ENV}={text:?} is not a positive number of seconds; using {} s", DEFAULT_TIMEOUT.as_secs());
                DEFAULT_TIMEOUT
            }
        },
    }
}

/// What only this rank's calls change; one collective at a time holds it.
pub struct Progress {
    /// Barriers passed.
    pub epoch: u64,
    /// Collectives called (numbers the descriptions).
    pub seq: u64,
}

pub struct Comm {
    pub seg: Segment,
    pub rank: usize,
    pub nranks: usize,
    pub device: c_int,
    pub timeout: Duration,
    progress: Mutex<Progress>,
    async_error: AtomicU32,
    /// Set by `ncclCommAbort`, which may come from another thread while a collective waits.
    pub aborted: AtomicBool,
    last_error: Mutex<Option<&'static CStr>>,
}

impl Comm {
    /// Joins rank `rank` of `nranks` to the communicator of `id`, waiting for all to join.
    pub fn init(nranks: c_int, id: &UniqueId, rank: c_int, device: c_int) -> Result<Comm, Failure> {
        if nranks < 1 || nranks as usize > MAX_RANKS {
            return Err(Failure::invalid_argument(format!(
                "ncclCommInitRank: nranks = {nranks} (the stand-in takes 1 to {MAX_RANKS})"
            )));
        }
        if rank < 0 || rank >= nranks {
            return Err(Failure::invalid_argument(format!(
                "ncclCommInitRank: rank = {rank} is not in 0..{nranks}"
            )));
        }
        let token = id.token().ok_or_else(|| {
            Failure::invalid_argument(
                "ncclCommInitRank: the unique id was not made by ncclGetUniqueId of this stand-in",
            )
        })?;
        let (nranks, rank) = (nranks as usize, rank as usize);
        let name = id::segment_name(&token);
        let timeout = timeout_from_env();
        let seg = if rank == 0 {
            Segment::create(&name, nranks)?
        } else {
            Segment::open(&name, nranks, rank, timeout)?
        };
        let comm = Comm {
            seg,
            rank,
            nranks,
            device,
            timeout,
            progress: Mutex::new(Progress { epoch: 0, seq: 0 }),
            async_error: AtomicU32::new(SUCCESS),
            aborted: AtomicBool::new(false),
            last_error: Mutex::new(None),
        };
        match comm.join() {
            Ok(()) => {
                comm.seg.unlink();
                Ok(comm)
            }
            // A second caller of a rank that is already taken must not remove the name that
            // the ranks still to come need; any other failure ends the communicator.
            Err(f) if f.code == INVALID_USAGE => Err(f),
            Err(f) => {
                comm.seg.unlink();
                Err(f)
            }
        }
    }

    fn join(&self) -> Result<(), Failure> {
        let me = self.seg.record(self.rank);
        if me
            .state
            .compare_exchange(
                state::EMPTY,
                state::JOINING,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            return Err(Failure::invalid_usage(format!(
                "ncclCommInitRank: rank {} joined twice (another caller holds rank {} of this unique id)",
                self.rank, self.rank
            )));
        }
        let pid = std::process::id() as i32;
        me.pid.store(pid, Ordering::Release);
        me.start_time
            .store(process::start_time(pid).unwrap_or(0), Ordering::Release);
        me.state.store(state::JOINED, Ordering::Release);
        self.seg.joined().fetch_add(1, Ordering::AcqRel);
        let ctx = WaitContext {
            what: "ncclCommInitRank",
            timeout: self.timeout,
            aborted: &self.aborted,
            me: self.rank,
        };
        let n = self.nranks as u32;
        let waited = self.seg.wait(
            &ctx,
            || self.seg.joined().load(Ordering::Acquire) >= n,
            |_| true,
            |s| self.seg.record(s).state.load(Ordering::Acquire) == state::EMPTY,
        );
        if waited.is_err() {
            // The ranks that did join fail at once instead of waiting for the timeout too.
            self.set_state(state::FAILED);
        }
        waited
    }

    pub fn set_state(&self, s: u32) {
        self.seg.record(self.rank).state.store(s, Ordering::Release);
    }

    /// `ncclCommDestroy`: JOINED becomes LEFT; FAILED and ABORTED stay.
    pub fn leave(&self) {
        let _ = self.seg.record(self.rank).state.compare_exchange(
            state::JOINED,
            state::LEFT,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub fn progress(&self) -> MutexGuard<'_, Progress> {
        self.progress.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every rank waits here until all have arrived at the same number of barriers.
    pub fn barrier(&self, p: &mut Progress, what: &str) -> Result<(), Failure> {
        p.epoch += 1;
        let target = p.epoch;
        self.seg
            .record(self.rank)
            .epoch
            .store(target, Ordering::Release);
        if self.nranks == 1 {
            return Ok(());
        }
        let behind = |s: usize| self.seg.record(s).epoch.load(Ordering::Acquire) < target;
        let ctx = WaitContext {
            what,
            timeout: self.timeout,
            aborted: &self.aborted,
            me: self.rank,
        };
        self.seg.wait(
            &ctx,
            || (0..self.nranks).all(|s| !behind(s)),
            behind,
            behind,
        )
    }

    /// A failure that breaks the communicator (a peer gone, a timeout): later collectives
    /// return it at once, `ncclCommGetAsyncError` reports it, and this rank's record says
    /// FAILED so that the peers waiting on it fail at once too.
    pub fn fail(&self, failure: &Failure) {
        let _ = self.async_error.compare_exchange(
            SUCCESS,
            failure.code,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        if !self.aborted.load(Ordering::Acquire) {
            self.set_state(state::FAILED);
        }
        self.note(failure);
    }

    /// Records `failure` as this communicator's and this thread's last error.
    pub fn note(&self, failure: &Failure) {
        let message = error::record(failure);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
    }

    pub fn last_error(&self) -> Option<&'static CStr> {
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn async_error(&self) -> NcclResult {
        self.async_error.load(Ordering::Acquire)
    }
}

static COMMS: Mutex<Option<HashMap<usize, Arc<Comm>>>> = Mutex::new(None);
/// Handles count up from a recognisable base, 16 apart (like aligned addresses).
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(0x6e63_0000_0000);

fn table() -> MutexGuard<'static, Option<HashMap<usize, Arc<Comm>>>> {
    COMMS.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn register(comm: Comm) -> usize {
    let handle = NEXT_HANDLE.fetch_add(16, Ordering::Relaxed);
    table()
        .get_or_insert_with(HashMap::new)
        .insert(handle, Arc::new(comm));
    handle
}

pub fn lookup(handle: usize) -> Option<Arc<Comm>> {
    table().as_ref().and_then(|t| t.get(&handle).cloned())
}

/// Takes the handle out of the table; the communicator itself (and its mapping) goes when
/// the last collective still using it returns.
pub fn unregister(handle: usize) -> Option<Arc<Comm>> {
    table().as_mut().and_then(|t| t.remove(&handle))
}

/// The device of the current CUDA context, when a CUDA driver (the stand-in's or a real
/// one) is already loaded in the process, else 0. Looked up without linking to libcuda, as
/// the stand-in must load in processes that never use CUDA.
pub fn current_device() -> c_int {
    // SAFETY: RTLD_NOLOAD only returns a library already loaded; the symbol is called with
    // the signature of cuCtxGetDevice(CUdevice *).
    unsafe {
        let lib = libc::dlopen(c"libcuda.so.1".as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD);
        if lib.is_null() {
            return 0;
        }
        let sym = libc::dlsym(lib, c"cuCtxGetDevice".as_ptr());
        let mut device: c_int = 0;
        if !sym.is_null() {
            let f: unsafe extern "C" fn(*mut c_int) -> c_int = std::mem::transmute(sym);
            if f(&mut device) != 0 {
                device = 0;
            }
        }
        libc::dlclose(lib);
        device
    }
}
