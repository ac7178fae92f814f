//! The MPI backend (cargo feature `mpi`): the CPU engine's ranks reduce through Open MPI or
//! MPICH, started by `mpirun`/`mpiexec`/`srun --mpi=…`.
//!
//! MPI stays initialised for the life of the process: [`finish`] finalises it after a run
//! that ended cleanly on every rank, and [`abort`] ends every rank of the job after an error
//! on one (finalising there would wait for ranks still blocked in a collective). MPI's default
//! error handler stays in place: a rank that dies makes `mpirun` end the others, naming it.
//! Only the thread that initialised MPI calls it (rayon's workers never do).

use anyhow::{bail, Result};
use mpi::collective::SystemOperation;
use mpi::topology::{Communicator, SimpleCommunicator};
use mpi::traits::*;

use super::{check_blocks, Collective};

pub struct Mpi {
    world: SimpleCommunicator,
    rank: usize,
    size: usize,
}

/// Initialises MPI and checks that it sees the world the launcher described.
pub fn init(rank: usize, world: usize) -> Result<Mpi> {
    let Some(universe) = mpi::initialize() else {
        bail!("MPI was already initialised in this process");
    };
    let comm = universe.world();
    // Finalised by `finish`, not when the universe is dropped (see the module comment).
    std::mem::forget(universe);
    let (r, n) = (comm.rank() as usize, comm.size() as usize);
    if (r, n) != (rank, world) {
        bail!(
            "MPI says this is rank {r} of {n} but the launcher's environment says rank {rank} of {world}; start the ranks with one mpirun"
        );
    }
    Ok(Mpi {
        world: comm,
        rank,
        size: world,
    })
}

/// Finalises MPI after a clean run (every rank calls it).
pub fn finish() {
    if mpi::environment::is_initialized() && !mpi::environment::is_finalized() {
        // SAFETY: MPI is initialised and not finalised; no communication is pending.
        unsafe {
            mpi::ffi::MPI_Finalize();
        }
    }
}

/// Ends every rank of the job with `code` (after this rank printed its error).
pub fn abort(code: i32) {
    if mpi::environment::is_initialized() && !mpi::environment::is_finalized() {
        SimpleCommunicator::world().abort(code);
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.size
    }

    fn name(&self) -> String {
        let version = mpi::environment::library_version().unwrap_or_default();
        let first = version.split([',', '\n']).next().unwrap_or("").trim();
        format!("mpi ({first})")
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn all_reduce_sum_f64(&mut self, buf: &mut [f64]) -> Result<()> {
        let send = buf.to_vec();
        self.world
            .all_reduce_into(&send[..], buf, SystemOperation::sum());
        Ok(())
    }

    fn reduce_scatter_sum(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("reduce-scatter", send.len(), recv.len(), self.size)?;
        self.world
            .reduce_scatter_block_into(send, recv, SystemOperation::sum());
        Ok(())
    }

    fn all_gather(&mut self, send: &[f32], recv: &mut [f32]) -> Result<()> {
        check_blocks("all-gather", recv.len(), send.len(), self.size)?;
        self.world.all_gather_into(send, recv);
        Ok(())
    }

    fn broadcast(&mut self, buf: &mut [u8], root: usize) -> Result<()> {
        if root >= self.size {
            bail!("broadcast from rank {root} in a world of {}", self.size);
        }
        self.world.process_at_rank(root as i32).broadcast_into(buf);
        Ok(())
    }

    fn barrier(&mut self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }
}
