//! The NCCL backend: the CUDA engine's ranks, one GPU each, reduce through NCCL.
//!
//! - **Library**: `libnccl.so.2` is opened at run time ([`library`]); without it a
//!   data-parallel `--device cuda` run fails in one line, and a one-process run never needs it.
//! - **Rendezvous**: rank 0 makes the `ncclUniqueId` and hands it to the others through
//!   [`crate::launch::rendezvous`] (TCP at the master address, or `--rendezvous file:PATH`);
//!   the [`Session`] it leaves is kept for the whole run, so that a rank that vanishes is
//!   named by the others, and closed (with a bye) only after a clean end ([`Nccl::close`]).
//! - **Streams**: collectives run on a stream of their own, forked from the engine's: each
//!   call makes it wait for the compute stream (an event), enqueues the collective, and makes
//!   the compute stream wait for it in turn, so kernels before and after are ordered against
//!   it without a device-wide synchronisation. cudarc's automatic per-buffer events are
//!   turned off for the context: this ordering is explicit, and the engine allocates and
//!   frees on its compute stream only.
//! - **Waiting**: every call waits for its collective to complete before returning, by
//!   polling its event, and meanwhile watches NCCL's asynchronous error, the rendezvous
//!   session (a rank that vanished) and `--dist-timeout`. On any of them it aborts the
//!   communicator (`ncclCommAbort` never waits for the peers) and fails with one line, so a
//!   lost rank ends the others instead of leaving them blocked inside a kernel. After a
//!   failure every later call repeats the failure.
//! - **Host values** (the loss, the stop flag, validation sums, ZeRO-1 shards at checkpoints)
//!   go through a small device buffer per call ([`Collective`]); the gradients and weights
//!   never leave the device ([`Nccl::all_reduce_sum_in_place`], [`Nccl::reduce_scatter_sum`],
//!   [`Nccl::all_gather_in_place`]).

pub mod library;

use std::ffi::c_void;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use cudarc::driver::{DevicePtr, DevicePtrMut, DeviceRepr, ValidAsZeroBits};
use cudarc::nccl::sys::ncclUniqueId;
use ingot_kernels::launch::CudaSlice;
use ingot_kernels::matmul::CudaStream;

use super::{check_blocks, Collective, DataParallel};
use crate::launch::rendezvous::{exchange, Rendezvous, Session};
use crate::launch::Launch;
pub use library::Element;
use library::{Comm, Library, Stream, SUCCESS, SUM};

/// One rank of an NCCL communicator with its stream and its rendezvous session.
pub struct Nccl {
    lib: &'static Library,
    /// Null once destroyed or aborted.
    comm: Comm,
    rank: usize,
    world: usize,
    compute: Arc<CudaStream>,
    stream: Arc<CudaStream>,
    session: Option<Session>,
    rendezvous: String,
    timeout: Duration,
    /// Whether the collective under way is bounded by `timeout` (a barrier is not: see
    /// [`Collective::barrier`] below).
    timed: bool,
    /// The first failure, repeated by every later call.
    broken: Option<String>,
}

impl Nccl {
    /// Joins the communicator of `launch`'s world on the device of `compute` (current on
    /// this thread): opens NCCL, exchanges the unique id, and creates the communicator.
    pub fn connect(compute: &Arc<CudaStream>, launch: &Launch, dp: &DataParallel) -> Result<Nccl> {
        let lib = library::get().map_err(|e| anyhow!("{e}"))?;
        let rdv = Rendezvous::resolve(dp.rendezvous.as_deref(), launch)?;
        let id = match launch.rank {
            0 => Some(unique_id(lib)?),
            _ => None,
        };
        let payload = id.as_ref().map(id_bytes);
        let (bytes, mut session) = exchange(&rdv, launch, payload.as_deref(), dp.timeout)?;
        let id = id_from_bytes(&bytes)?;
        let ctx = compute.context();
        ctx.bind_to_thread()
            .map_err(|e| anyhow!("cannot make the GPU current for NCCL: {e}"))?;
        // SAFETY: every use of a buffer on the communicator's stream is ordered by the
        // events of `run`, and the engine allocates and frees on its compute stream only.
        unsafe { ctx.disable_event_tracking() };
        let stream = compute
            .fork()
            .map_err(|e| anyhow!("cannot create the stream for NCCL: {e}"))?;
        let mut comm: Comm = std::ptr::null_mut();
        let (rank, world) = (launch.rank, launch.world);
        // SAFETY: `comm` is a valid out-pointer; the id came from rank 0's ncclGetUniqueId.
        let code = unsafe { (lib.comm_init_rank)(&mut comm, world as i32, id, rank as i32) };
        if code != SUCCESS {
            bail!(
                "NCCL could not create the communicator of {world} ranks ({}; {}): {}",
                lib.version(),
                lib.path,
                lib.describe(code, std::ptr::null_mut())
            );
        }
        session.initialised();
        Ok(Nccl {
            lib,
            comm,
            rank,
            world,
            compute: compute.clone(),
            stream,
            session: Some(session),
            rendezvous: rdv.to_string(),
            timeout: dp.timeout,
            timed: true,
            broken: None,
        })
    }

    /// Sums `buf` over the ranks, in place, on the device.
    pub fn all_reduce_sum_in_place<T: Element + DeviceRepr>(
        &mut self,
        buf: &mut CudaSlice<T>,
    ) -> Result<()> {
        let n = buf.len();
        let stream = self.stream.clone();
        let (p, _sync) = buf.device_ptr_mut(&stream);
        let p = p as *mut c_void;
        self.run("all-reduce", |lib, comm, s| unsafe {
            (lib.all_reduce)(p, p, n, T::DTYPE, SUM, comm, s)
        })
    }

    /// `send` holds `world` equal blocks; block `rank` of their sum over ranks lands in
    /// `recv`, on the device.
    pub fn reduce_scatter_sum(
        &mut self,
        send: &CudaSlice<f32>,
        recv: &mut CudaSlice<f32>,
    ) -> Result<()> {
        check_blocks("reduce-scatter", send.len(), recv.len(), self.world)?;
        let n = recv.len();
        let stream = self.stream.clone();
        let (s_ptr, _s) = send.device_ptr(&stream);
        let (r_ptr, _r) = recv.device_ptr_mut(&stream);
        let (s_ptr, r_ptr) = (s_ptr as *const c_void, r_ptr as *mut c_void);
        self.run("reduce-scatter", |lib, comm, s| unsafe {
            (lib.reduce_scatter)(s_ptr, r_ptr, n, f32::DTYPE, SUM, comm, s)
        })
    }

    /// `buf` holds `world` equal blocks; every rank's block `rank` into every rank's `buf`
    /// (NCCL's in-place all-gather), on the device.
    pub fn all_gather_in_place<T: Element + DeviceRepr>(
        &mut self,
        buf: &mut CudaSlice<T>,
    ) -> Result<()> {
        let block = buf.len() / self.world;
        check_blocks("all-gather", buf.len(), block, self.world)?;
        let stream = self.stream.clone();
        let (p, _sync) = buf.device_ptr_mut(&stream);
        let recv = p as *mut c_void;
        let offset = self.rank * block * std::mem::size_of::<T>();
        // SAFETY: `offset` is inside the buffer (rank < world blocks).
        let send = unsafe { (recv as *const u8).add(offset) } as *const c_void;
        self.run("all-gather", |lib, comm, s| unsafe {
            (lib.all_gather)(send, recv, block, T::DTYPE, comm, s)
        })
    }

    /// After a run that ended well on every rank: waits for the others, shuts the
    /// communicator down and tells the rendezvous this rank leaves normally.
    pub fn close(&mut self) -> Result<()> {
        self.barrier()?;
        let comm = std::mem::replace(&mut self.comm, std::ptr::null_mut());
        // SAFETY: `comm` is live; nothing is pending after the barrier.
        let finalized = unsafe { (self.lib.comm_finalize)(comm) };
        // Described before the handle is destroyed.
        let why = (finalized != SUCCESS).then(|| self.lib.describe(finalized, comm));
        let destroyed = unsafe { (self.lib.comm_destroy)(comm) };
        let why = why.or_else(|| {
            (destroyed != SUCCESS).then(|| self.lib.describe(destroyed, std::ptr::null_mut()))
        });
        // A bye only after a clean shutdown; otherwise dropping the session tells the others
        // this rank vanished.
        let session = self.session.take();
        match why {
            None => {
                if let Some(session) = session {
                    session.close();
                }
                Ok(())
            }
            Some(why) => bail!("NCCL could not shut the communicator down: {why}"),
        }
    }

    /// Orders `call` (enqueued on the communicator's stream) after the compute stream's work
    /// and before its later work, and waits for it ([`Nccl::wait`]).
    fn run(&mut self, what: &str, call: impl FnOnce(&Library, Comm, Stream) -> u32) -> Result<()> {
        if let Some(why) = &self.broken {
            bail!("{why}");
        }
        let cuda = |e: cudarc::driver::DriverError| {
            anyhow!("ordering the NCCL {what} against the GPU's work failed: {e}")
        };
        self.stream.join(&self.compute).map_err(cuda)?;
        let code = call(self.lib, self.comm, self.stream.cu_stream() as Stream);
        if code != SUCCESS && code != library::IN_PROGRESS {
            let why = format!("NCCL {what} failed: {}", self.lib.describe(code, self.comm));
            return Err(self.fail(why));
        }
        self.wait(what)?;
        self.compute.join(&self.stream).map_err(cuda)?;
        Ok(())
    }

    /// Polls the communicator's stream until its work is done; fails (aborting the
    /// communicator) on NCCL's asynchronous error, a vanished rank, or `--dist-timeout`.
    fn wait(&mut self, what: &str) -> Result<()> {
        let done = self
            .stream
            .record_event(None)
            .map_err(|e| anyhow!("NCCL {what}: cannot record its event: {e}"))?;
        let start = Instant::now();
        let mut polls = 0u32;
        loop {
            match done.try_is_complete() {
                Ok(true) => return Ok(()),
                Ok(false) => {}
                Err(e) => return Err(self.fail(format!("NCCL {what}: the GPU failed: {e}"))),
            }
            let mut async_error = SUCCESS;
            // SAFETY: `comm` is live (not broken) and the out-pointer valid.
            let asked = unsafe { (self.lib.comm_get_async_error)(self.comm, &mut async_error) };
            if asked != SUCCESS {
                let why = format!(
                    "NCCL {what}: cannot query the communicator's state: {}",
                    self.lib.describe(asked, self.comm)
                );
                return Err(self.fail(why));
            }
            if async_error != SUCCESS && async_error != library::IN_PROGRESS {
                let why = format!(
                    "NCCL {what} failed: {}",
                    self.lib.describe(async_error, self.comm)
                );
                return Err(self.fail(why));
            }
            if let Some(lost) = self.session.as_ref().and_then(Session::lost_rank) {
                let why = format!("rank {lost} of {} vanished (its process ended or its node is unreachable) during the NCCL {what}", self.world);
                return Err(self.fail(why));
            }
            if self.timed && start.elapsed() > self.timeout {
                let why = format!(
                    "the NCCL {what} made no progress in {} s (--dist-timeout): another rank is stuck or gone",
                    self.timeout.as_secs()
                );
                return Err(self.fail(why));
            }
            // Spin briefly (a collective usually ends within microseconds of the last rank
            // arriving), then poll every 100 µs.
            polls += 1;
            if polls < 1000 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    }

    /// Aborts the communicator after a failure and records `why` for later calls.
    fn fail(&mut self, why: String) -> anyhow::Error {
        self.abort();
        self.broken = Some(why.clone());
        anyhow!(why)
    }

    fn abort(&mut self) {
        let comm = std::mem::replace(&mut self.comm, std::ptr::null_mut());
        if !comm.is_null() {
            // SAFETY: `comm` is live; ncclCommAbort never waits for the peers.
            unsafe { (self.lib.comm_abort)(comm) };
        }
    }

    /// A host buffer through the device: uploads `data`, runs `op` on it, downloads it.
    fn through_device<T: Element + DeviceRepr + ValidAsZeroBits>(
        &mut self,
        data: &mut [T],
        op: impl FnOnce(&mut Self, &mut CudaSlice<T>) -> Result<()>,
    ) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        let copy = |e| anyhow!("copying a collective's values to or from the GPU failed: {e}");
        let mut dev = self.compute.clone_htod(data).map_err(copy)?;
        op(self, &mut dev)?;
        let back = self.compute.clone_dtoh(&dev).map_err(copy)?;
        self.compute.synchronize().map_err(copy)?;
        data.copy_from_slice(&back);
        Ok(())
    }
}

impl Drop for Nccl {
    /// Leaving without [`Nccl::close`] (an error on this rank): abort, so that nothing waits
    /// here, and drop the session without a bye, so that the others learn this rank is gone.
    fn drop(&mut self) {
        self.abort();
    }
}

fn unique_id(lib: &Library) -> Result<ncclUniqueId> {
    let mut id = ncclUniqueId { internal: [0; 128] };
    // SAFETY: `id` is a valid out-pointer.
    let code = unsafe { (lib.get_unique_id)(&mut id) };
    if code != SUCCESS {
        bail!(
            "NCCL could not make a unique id: {}",
            lib.describe(code, std::ptr::null_mut())
        );
    }
    Ok(id)
}

fn id_bytes(id: &ncclUniqueId) -> Vec<u8> {
    id.internal.iter().map(|&c| c as u8).collect()
}

fn id_from_bytes(bytes: &[u8]) -> Result<ncclUniqueId> {
    let internal: [u8; 128] = bytes.try_into().ok().with_context(|| {
        format!(
            "the rendezvous carried {} bytes, not an NCCL unique id of 128",
            bytes.len()
        )
    })?;
    Ok(ncclUniqueId {
        internal: internal.map(|b| b as std::ffi::c_char),
    })
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }
    fn world(&self) -> usize {
        self.world
    }
    fn name(&self) -> String {
        format!("{}, rendezvous {}", self.lib.version(), self.rendezvous)
    }
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        self.through_device(buf, |n, d| n.all_reduce_sum_in_place(d))
    }
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        self.through_device(buf, |n, d| n.all_reduce_sum_in_place(d))
    }
    fn reduce_scatter_sum(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("reduce-scatter", send.len(), recv.len(), self.world)?;
        if recv.is_empty() {
            return Ok(());
        }
        let copy = |e| anyhow!("copying a collective's values to or from the GPU failed: {e}");
        let whole = self.compute.clone_htod(send).map_err(copy)?;
        let mut out = self.compute.alloc_zeros::<f32>(recv.len()).map_err(copy)?;
        self.reduce_scatter_sum(&whole, &mut out)?;
        let back = self.compute.clone_dtoh(&out).map_err(copy)?;
        self.compute.synchronize().map_err(copy)?;
        recv.copy_from_slice(&back);
        Ok(())
    }
    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("all-gather", recv.len(), send.len(), self.world)?;
        let at = self.rank * send.len();
        recv[at..at + send.len()].copy_from_slice(send);
        self.through_device(recv, |n, d| n.all_gather_in_place(d))
    }
    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<()> {
        if root >= self.world {
            bail!("broadcast from rank {root} in a world of {}", self.world);
        }
        self.through_device(buf, |n, d| {
            let len = d.len();
            let stream = n.stream.clone();
            let (p, _sync) = d.device_ptr_mut(&stream);
            let p = p as *mut c_void;
            n.run("broadcast", |lib, comm, s| unsafe {
                (lib.broadcast)(p, p, len, u8::DTYPE, root as i32, comm, s)
            })
        })
    }
    /// Not bounded by `--dist-timeout`: the ranks wait here while rank 0 writes a checkpoint,
    /// which can take longer than any collective. A rank that vanishes (the rendezvous
    /// session) or NCCL's own error still ends the wait.
    fn barrier(&mut self) -> Result<()> {
        self.timed = false;
        let waited = self.all_reduce_sum(&mut [0.0]);
        self.timed = true;
        waited
    }
    fn close(&mut self) -> Result<()> {
        Nccl::close(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_ids_cross_the_rendezvous_as_their_128_bytes() {
        let bytes: Vec<u8> = (0..128u8).map(|b| b.wrapping_mul(37)).collect();
        let id = id_from_bytes(&bytes).unwrap();
        assert_eq!(id_bytes(&id), bytes);
        let m = format!("{:#}", id_from_bytes(&bytes[..100]).unwrap_err());
        assert_eq!(
            m,
            "the rendezvous carried 100 bytes, not an NCCL unique id of 128"
        );
    }
}
