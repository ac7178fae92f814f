//! The collective seam: what the ranks of a data-parallel run do together.
//!
//! Every rank runs the same training loop on its own slice of each global batch; they meet
//! only here. An engine owns one [`Collective`] (a world of one, [`Solo`], unless a launcher
//! started several processes) and uses it for its gradients and, under ZeRO-1, its optimizer
//! shards; the loop uses the same one, through [`crate::engine::Engine::collective`], for the
//! few scalars every rank must agree on (the loss, the stop request, the validation sums) and
//! to wait for rank 0's checkpoint.
//!
//! Backends: [`Solo`] (one process); `mpi` (the CPU engine across processes, behind the cargo
//! feature `mpi`); [`nccl`] (the CUDA engine's ranks, one GPU each): it also reduces the
//! engine's device buffers in place, and answers these host-side calls through a small
//! device buffer.
//!
//! Reductions are sums; averaging is the caller's (it knows the world size). Every call is
//! collective: all ranks make the same calls in the same order with the same lengths.

#[cfg(feature = "mpi")]
pub mod mpi;
pub mod nccl;

use std::ops::Range;
use std::time::Duration;

use anyhow::{bail, Result};

use crate::launch::{Launch, Launcher};

/// How this process takes part in a data-parallel run: resolved once from the launcher's
/// environment and the options, then handed to the engine factory.
#[derive(Debug, Clone, Default)]
pub struct DataParallel {
    /// `None`: one process, as without a launcher.
    pub launch: Option<Launch>,
    /// ZeRO-1 (`--zero 1`).
    pub zero: bool,
    /// `--rendezvous` as given (the CUDA engine's NCCL id exchange).
    pub rendezvous: Option<String>,
    /// How long a rank waits for the others (`--dist-timeout`).
    pub timeout: Duration,
}

/// Default of `--dist-timeout`: long enough for every rank of a big job to load its data and
/// build its engine, short enough that a lost rank ends the run in minutes, not never.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

impl DataParallel {
    pub fn world(&self) -> usize {
        self.launch.as_ref().map_or(1, |l| l.world)
    }
    pub fn rank(&self) -> usize {
        self.launch.as_ref().map_or(0, |l| l.rank)
    }
}

/// The collective of the CPU engine: [`Solo`] for one process, MPI for ranks that an MPI
/// launcher (mpirun, mpiexec, or srun with an MPI plugin) started.
pub fn host_backend(dp: &DataParallel) -> Result<Box<dyn Collective>> {
    let Some(launch) = &dp.launch else {
        return Ok(Box::new(Solo));
    };
    if launch.launcher == Launcher::Torchrun {
        bail!(
            "torchrun started this rank ({} of {}), but the CPU engine's ranks talk through MPI: start them with mpirun -np {} train … (torchrun's ranks run with --device cuda)",
            launch.rank,
            launch.world,
            launch.world
        );
    }
    mpi_backend(launch)
}

#[cfg(feature = "mpi")]
fn mpi_backend(launch: &Launch) -> Result<Box<dyn Collective>> {
    Ok(Box::new(mpi::init(launch.rank, launch.world)?))
}

#[cfg(not(feature = "mpi"))]
fn mpi_backend(launch: &Launch) -> Result<Box<dyn Collective>> {
    bail!(
        "{} started this rank ({} of {}), but this train was built without MPI; rebuild it with `cargo build --release -p ingot-train --features mpi` (needs libopenmpi-dev or MPICH, and libclang-dev)",
        launch.launcher,
        launch.rank,
        launch.world
    )
}

/// After a run that ended well on every rank: lets the collective libraries shut down.
pub fn finish() {
    #[cfg(feature = "mpi")]
    mpi::finish();
}

/// After an error on this rank (already printed): ends the other ranks of an MPI job at once
/// rather than leaving them blocked in a collective. Does nothing without MPI.
pub fn abort(code: i32) {
    #[cfg(feature = "mpi")]
    mpi::abort(code);
    let _ = code;
}

pub trait Collective {
    /// This process's rank, `0..world()`.
    fn rank(&self) -> usize;
    fn world(&self) -> usize;
    /// A short description for messages, e.g. `mpi (Open MPI v4.1.4)`.
    fn name(&self) -> String;
    /// Element-wise sum over ranks, in place.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;
    /// Element-wise sum over ranks of a few f64 scalars (losses, counts, flags), in place.
    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()>;
    /// `send` holds `world()` equal blocks; block `r` of the sum over ranks lands in rank
    /// `r`'s `recv` (`send.len() == world() * recv.len()`).
    fn reduce_scatter_sum(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// Every rank's `send`, in rank order, into every rank's `recv`
    /// (`recv.len() == world() * send.len()`).
    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()>;
    /// `root`'s bytes into every rank's `buf`.
    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<()>;
    fn barrier(&mut self) -> Result<()>;
    /// After a run that ended well on every rank (every rank calls it, last): lets the
    /// backend shut down in order. Without it, dropping the backend counts as this rank
    /// failing.
    fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

/// A world of one process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Solo;

impl Collective for Solo {
    fn rank(&self) -> usize {
        0
    }
    fn world(&self) -> usize {
        1
    }
    fn name(&self) -> String {
        "one process".into()
    }
    fn all_reduce_sum(&mut self, _buf: &mut [f32]) -> Result<()> {
        Ok(())
    }
    fn all_reduce_sum_f64(&mut self, _buf: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn reduce_scatter_sum(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("reduce-scatter", send.len(), recv.len(), 1)?;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("all-gather", recv.len(), send.len(), 1)?;
        recv.copy_from_slice(send);
        Ok(())
    }
    fn broadcast(&mut self, _buf: &mut [u8], root: usize) -> Result<()> {
        if root != 0 {
            bail!("broadcast from rank {root} in a world of one");
        }
        Ok(())
    }
    fn barrier(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Refuses a collective whose `whole` buffer is not `world` blocks of `block` values.
pub fn check_blocks(what: &str, whole: usize, block: usize, world: usize) -> Result<()> {
    if whole != block * world {
        bail!("{what}: {whole} values are not {world} blocks of {block}");
    }
    Ok(())
}

/// How ZeRO-1 splits `n` parameters over `world` ranks: equal shards of `ceil(n / world)`
/// (the last padded), rank `r` owning `r * shard .. (r + 1) * shard` clipped to `n`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shards {
    pub n: usize,
    pub world: usize,
    pub shard: usize,
}

impl Shards {
    pub fn new(n: usize, world: usize) -> Shards {
        let world = world.max(1);
        Shards {
            n,
            world,
            shard: n.div_ceil(world),
        }
    }

    /// Padded length: `world` shards.
    pub fn padded(&self) -> usize {
        self.shard * self.world
    }

    /// The parameters rank `r` owns (possibly empty for the last ranks of a tiny model).
    pub fn range(&self, r: usize) -> Range<usize> {
        let lo = (r * self.shard).min(self.n);
        let hi = ((r + 1) * self.shard).min(self.n);
        lo..hi
    }
}

/// Gathers every rank's shard `local` (its owned values, at most `shards.shard`) into the full
/// `n` values on every rank.
pub fn gather_shards(comm: &mut dyn Collective, shards: Shards, local: &[f32]) -> Result<Vec<f32>> {
    let mut send = vec![0.0f32; shards.shard];
    send[..local.len()].copy_from_slice(local);
    let mut full = vec![0.0f32; shards.padded()];
    comm.all_gather(&send, &mut full)?;
    full.truncate(shards.n);
    Ok(full)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_parameter_once() {
        for (n, world) in [(10, 3), (9, 3), (2, 4), (0, 2), (7, 1)] {
            let s = Shards::new(n, world);
            let mut seen = 0;
            for r in 0..world {
                let range = s.range(r);
                assert_eq!(range.start, seen.min(n), "{n} over {world}");
                assert!(range.len() <= s.shard);
                seen = range.end;
            }
            assert_eq!(seen, n);
            assert!(s.padded() >= n && s.padded() - n < world.max(1));
        }
    }

    fn launch(launcher: Launcher) -> DataParallel {
        DataParallel {
            launch: Some(Launch {
                launcher,
                rank: 1,
                world: 2,
                local_rank: 1,
                master_addr: None,
                master_port: None,
                job_id: None,
            }),
            ..DataParallel::default()
        }
    }

    #[test]
    fn the_cpu_engine_refuses_launchers_it_cannot_reduce_with() {
        assert_eq!(host_backend(&DataParallel::default()).unwrap().world(), 1);
        let e = host_backend(&launch(Launcher::Torchrun)).err().unwrap();
        assert!(
            e.to_string()
                .contains("torchrun started this rank (1 of 2)")
                && e.to_string().contains("mpirun -np 2"),
            "{e}"
        );
        // Without the feature, an MPI launcher is told how to rebuild; with it, MPI would be
        // initialised here, which the multi-process tests do instead.
        if !cfg!(feature = "mpi") {
            let e = host_backend(&launch(Launcher::OpenMpi)).err().unwrap();
            assert!(e.to_string().contains("--features mpi"), "{e}");
        }
    }

    #[test]
    fn solo_is_the_identity_and_checks_lengths() {
        let mut c = Solo;
        let mut v = [1.0f32, 2.0];
        c.all_reduce_sum(&mut v).unwrap();
        assert_eq!(v, [1.0, 2.0]);
        let mut out = [0.0f32; 2];
        c.reduce_scatter_sum(&v, &mut out).unwrap();
        assert_eq!(out, v);
        assert!(c.all_gather(&v, &mut [0.0; 3]).is_err());
        assert!(c.broadcast(&mut [0u8; 2], 1).is_err());
        let g = gather_shards(&mut c, Shards::new(2, 1), &v).unwrap();
        assert_eq!(g, v);
    }
}
