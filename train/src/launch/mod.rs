//! Which launcher started this process, read from the variables it sets, so that one
//! `train` binary runs alone, under torchrun, srun or mpirun without a flag saying which.
//!
//! [`from_env`] looks for the launchers in this order and takes the first it finds:
//!
//! 1. torchrun: `RANK`, `WORLD_SIZE`, `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`, job id
//!    `TORCHELASTIC_RUN_ID`. First because torchrun is often started by srun or mpirun, one
//!    per node; then both sets exist and only torchrun's count its workers.
//! 2. Open MPI: `OMPI_COMM_WORLD_RANK`, `OMPI_COMM_WORLD_SIZE`, `OMPI_COMM_WORLD_LOCAL_RANK`,
//!    job id `OMPI_MCA_ess_base_jobid` (Open MPI 4) or `PMIX_NAMESPACE` (5).
//! 3. MPICH / Hydra (and Intel MPI): `PMI_RANK`, `PMI_SIZE`, local rank `MPI_LOCALRANKID` or
//!    `PMI_LOCAL_RANK`, job id `PMI_JOBID`. Before Slurm because `mpirun` inside an allocation
//!    starts its proxies with srun, whose step variables then describe the proxies, not us.
//!    srun's own PMI-2 plugin also sets `PMI_RANK`/`PMI_SIZE` but no local rank: PMI variables
//!    without a local rank inside a Slurm step are left to the Slurm rule.
//! 4. Slurm, only inside a job step that srun started: `SLURM_STEP_ID` and
//!    `SLURM_STEP_NUM_TASKS` must both be set (rank `SLURM_PROCID`, local rank
//!    `SLURM_LOCALID`, world `SLURM_STEP_NUM_TASKS`, job id `SLURM_JOB_ID.SLURM_STEP_ID`).
//!    An sbatch batch script (and a salloc shell) is one process that Slurm still gives
//!    `SLURM_PROCID=0`, `SLURM_LOCALID=0` and the job's `SLURM_NTASKS` (say 8) but no step
//!    variables; reading those as a world of 8 would have rank 0 wait for seven ranks that
//!    were never started. So there the run is one process, as without any launcher.
//!
//! The master address of the MPI launchers and Slurm is `MASTER_ADDR` when set; for Slurm
//! otherwise the first host of `SLURM_STEP_NODELIST` (else `SLURM_JOB_NODELIST`,
//! `SLURM_NODELIST`), where srun places task 0 under its block and cyclic distributions.
//! `MASTER_PORT` is read for every launcher. A variable set to an empty string counts as
//! unset, as shell scripts often export `VAR=` for "none".

pub mod rendezvous;

use std::fmt;

use thiserror::Error;

/// The program that started the processes of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    Torchrun,
    Slurm,
    OpenMpi,
    Mpich,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Launcher::Torchrun => "torchrun",
            Launcher::Slurm => "srun",
            Launcher::OpenMpi => "mpirun (Open MPI)",
            Launcher::Mpich => "mpirun (MPICH)",
        })
    }
}

/// This process's place in a multi-process run, as its launcher describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    /// 0 ..< world, unique across the run.
    pub rank: usize,
    /// How many processes the run has (at least 1).
    pub world: usize,
    /// The process's index among those on its node: which GPU it takes.
    pub local_rank: usize,
    /// Where rank 0 runs, when the environment says.
    pub master_addr: Option<String>,
    pub master_port: Option<u16>,
    /// Names this run, so that a rendezvous can tell its own ranks from a stale run's.
    pub job_id: Option<String>,
}

/// A launcher's variables that cannot describe a run. Each message names the variable and
/// its value and says what to change.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LaunchError {
    #[error("{var}={value} is not a number; {launcher} sets it to {meaning}")]
    NotANumber {
        var: &'static str,
        value: String,
        launcher: Launcher,
        meaning: &'static str,
    },
    #[error(
        "{var}=0: a run needs at least one process; {launcher} sets it to the number of processes"
    )]
    EmptyWorld {
        var: &'static str,
        launcher: Launcher,
    },
    #[error("{rank_var}={rank} with {world_var}={world}: a rank must be below the world size")]
    RankOutside {
        rank_var: &'static str,
        rank: usize,
        world_var: &'static str,
        world: usize,
    },
    #[error(
        "{local_var}={local} with {world_var}={world}: a local rank must be below the world size"
    )]
    LocalOutside {
        local_var: &'static str,
        local: usize,
        world_var: &'static str,
        world: usize,
    },
    #[error("{present} is set but {missing} is not: {launcher} sets them together; unset {present} or set {missing}")]
    HalfSet {
        present: &'static str,
        missing: &'static str,
        launcher: Launcher,
    },
    #[error("MASTER_PORT={value} is not a port; set it to a number from 1 to 65535")]
    BadPort { value: String },
    #[error("{var}={value} is not a Slurm host list ({why}); set MASTER_ADDR to rank 0's host")]
    BadNodelist {
        var: &'static str,
        value: String,
        why: &'static str,
    },
}

/// The variables that give one launcher's rank, world size and local rank.
struct Counts {
    launcher: Launcher,
    rank: &'static str,
    world: &'static str,
    /// Tried in order; the first that is set wins.
    local: &'static [&'static str],
    /// `local` as the error message names it.
    local_names: &'static str,
}

const TORCHRUN: Counts = Counts {
    launcher: Launcher::Torchrun,
    rank: "RANK",
    world: "WORLD_SIZE",
    local: &["LOCAL_RANK"],
    local_names: "LOCAL_RANK",
};

const OPEN_MPI: Counts = Counts {
    launcher: Launcher::OpenMpi,
    rank: "OMPI_COMM_WORLD_RANK",
    world: "OMPI_COMM_WORLD_SIZE",
    local: &["OMPI_COMM_WORLD_LOCAL_RANK"],
    local_names: "OMPI_COMM_WORLD_LOCAL_RANK",
};

const MPICH: Counts = Counts {
    launcher: Launcher::Mpich,
    rank: "PMI_RANK",
    world: "PMI_SIZE",
    local: &["MPI_LOCALRANKID", "PMI_LOCAL_RANK"],
    local_names: "MPI_LOCALRANKID (or PMI_LOCAL_RANK)",
};

const SLURM: Counts = Counts {
    launcher: Launcher::Slurm,
    rank: "SLURM_PROCID",
    world: "SLURM_STEP_NUM_TASKS",
    local: &["SLURM_LOCALID"],
    local_names: "SLURM_LOCALID",
};

/// The environment as the detection reads it: trimmed, with empty values as unset.
struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn text(&self, var: &str) -> Option<String> {
        let value = (self.get)(var)?;
        let value = value.trim();
        (!value.is_empty()).then(|| value.to_string())
    }

    fn has(&self, var: &str) -> bool {
        self.text(var).is_some()
    }

    fn number(
        &self,
        var: &'static str,
        launcher: Launcher,
        meaning: &'static str,
    ) -> Result<Option<usize>, LaunchError> {
        let Some(value) = self.text(var) else {
            return Ok(None);
        };
        match value.parse::<usize>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => Err(LaunchError::NotANumber {
                var,
                value,
                launcher,
                meaning,
            }),
        }
    }

    /// `MASTER_PORT`, which every launcher may carry. Port 0 means "any" to a listener and
    /// cannot be connected to, so it is refused too.
    fn master_port(&self) -> Result<Option<u16>, LaunchError> {
        let Some(value) = self.text("MASTER_PORT") else {
            return Ok(None);
        };
        match value.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Some(port)),
            _ => Err(LaunchError::BadPort { value }),
        }
    }
}

/// Rank, world and local rank under `c`'s variables; `None` when neither the rank nor the
/// world variable is set (that launcher did not start us).
fn counts(env: &Env, c: &Counts) -> Result<Option<(usize, usize, usize)>, LaunchError> {
    const RANK: &str = "the process's rank";
    const WORLD: &str = "the number of processes";
    const LOCAL: &str = "the process's index on its node";
    let rank = env.number(c.rank, c.launcher, RANK)?;
    let world = env.number(c.world, c.launcher, WORLD)?;
    let (rank, world) = match (rank, world) {
        (None, None) => return Ok(None),
        (Some(rank), Some(world)) => (rank, world),
        (Some(_), None) => return Err(half(c.rank, c.world, c.launcher)),
        (None, Some(_)) => return Err(half(c.world, c.rank, c.launcher)),
    };
    if world == 0 {
        return Err(LaunchError::EmptyWorld {
            var: c.world,
            launcher: c.launcher,
        });
    }
    if rank >= world {
        return Err(LaunchError::RankOutside {
            rank_var: c.rank,
            rank,
            world_var: c.world,
            world,
        });
    }
    let Some(local_var) = c.local.iter().copied().find(|v| env.has(v)) else {
        return Err(half(c.rank, c.local_names, c.launcher));
    };
    let local = env
        .number(local_var, c.launcher, LOCAL)?
        .unwrap_or_default();
    if local >= world {
        return Err(LaunchError::LocalOutside {
            local_var,
            local,
            world_var: c.world,
            world,
        });
    }
    Ok(Some((rank, world, local)))
}

fn half(present: &'static str, missing: &'static str, launcher: Launcher) -> LaunchError {
    LaunchError::HalfSet {
        present,
        missing,
        launcher,
    }
}

/// Which launcher started this process, reading variables through `get` (a map in tests,
/// the process environment in [`from_process_env`]). `None`: no launcher, one process.
pub fn from_env(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<Launch>, LaunchError> {
    let env = Env { get };
    let slurm_step = env.has("SLURM_STEP_ID") && env.has("SLURM_STEP_NUM_TASKS");
    let mpich_local = MPICH.local.iter().any(|v| env.has(v));
    if let Some(launch) = torchrun(&env)? {
        return Ok(Some(launch));
    }
    if let Some(launch) = mpi(
        &env,
        &OPEN_MPI,
        &["OMPI_MCA_ess_base_jobid", "PMIX_NAMESPACE"],
    )? {
        return Ok(Some(launch));
    }
    // srun --mpi=pmi2 sets PMI_RANK/PMI_SIZE without a local rank: that is Slurm's step.
    if !slurm_step || mpich_local {
        if let Some(launch) = mpi(&env, &MPICH, &["PMI_JOBID"])? {
            return Ok(Some(launch));
        }
    }
    if slurm_step {
        return slurm(&env);
    }
    Ok(None)
}

/// [`from_env`] on this process's environment. A value that is not UTF-8 is read lossily,
/// so that it is reported as a bad value rather than taken as unset.
pub fn from_process_env() -> Result<Option<Launch>, LaunchError> {
    from_env(&|var| std::env::var_os(var).map(|v| v.to_string_lossy().into_owned()))
}

fn torchrun(env: &Env) -> Result<Option<Launch>, LaunchError> {
    let Some((rank, world, local_rank)) = counts(env, &TORCHRUN)? else {
        return Ok(None);
    };
    Ok(Some(Launch {
        launcher: Launcher::Torchrun,
        rank,
        world,
        local_rank,
        master_addr: env.text("MASTER_ADDR"),
        master_port: env.master_port()?,
        // torchrun's default --rdzv-id is "none", which names no run in particular.
        job_id: env.text("TORCHELASTIC_RUN_ID").filter(|id| id != "none"),
    }))
}

/// Open MPI or MPICH: `job_vars` are tried in order for the job id.
fn mpi(env: &Env, c: &Counts, job_vars: &[&str]) -> Result<Option<Launch>, LaunchError> {
    let Some((rank, world, local_rank)) = counts(env, c)? else {
        return Ok(None);
    };
    Ok(Some(Launch {
        launcher: c.launcher,
        rank,
        world,
        local_rank,
        master_addr: env.text("MASTER_ADDR"),
        master_port: env.master_port()?,
        job_id: job_vars.iter().find_map(|v| env.text(v)),
    }))
}

/// Called only inside an srun step (see the module comment).
fn slurm(env: &Env) -> Result<Option<Launch>, LaunchError> {
    let Some((rank, world, local_rank)) = counts(env, &SLURM)? else {
        return Ok(None);
    };
    let master_addr = match env.text("MASTER_ADDR") {
        Some(addr) => Some(addr),
        None => slurm_first_host(env)?,
    };
    let step = env.text("SLURM_STEP_ID").unwrap_or_default();
    Ok(Some(Launch {
        launcher: Launcher::Slurm,
        rank,
        world,
        local_rank,
        master_addr,
        master_port: env.master_port()?,
        job_id: env.text("SLURM_JOB_ID").map(|job| format!("{job}.{step}")),
    }))
}

/// The first host of the step's node list (else the job's), where task 0 runs.
fn slurm_first_host(env: &Env) -> Result<Option<String>, LaunchError> {
    const LISTS: [&str; 3] = [
        "SLURM_STEP_NODELIST",
        "SLURM_JOB_NODELIST",
        "SLURM_NODELIST",
    ];
    let Some((var, value)) = LISTS
        .iter()
        .find_map(|&var| env.text(var).map(|value| (var, value)))
    else {
        return Ok(None);
    };
    match first_host(&value) {
        Ok(host) => Ok(Some(host)),
        Err(why) => Err(LaunchError::BadNodelist { var, value, why }),
    }
}

/// The first host of a Slurm host list such as `node[01-04,07],gpu5` (`node01`). A bracket
/// holds numbers and ranges, kept as written so zero padding survives (`n[008-011]` starts
/// at `n008`); a name may hold several brackets (`rack[1-2]-n[3-4]`). The whole list is
/// checked so that a garbled value is reported rather than half used.
pub fn first_host(list: &str) -> Result<String, &'static str> {
    let entries = split_entries(list)?;
    for entry in &entries {
        check_entry(entry)?;
    }
    entries
        .first()
        .map(|entry| first_of_entry(entry))
        .ok_or("it is empty")
}

/// Splits at the commas outside brackets.
fn split_entries(list: &str) -> Result<Vec<&str>, &'static str> {
    let mut entries = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in list.char_indices() {
        match c {
            '[' if depth == 0 => depth = 1,
            '[' => return Err("a bracket inside a bracket"),
            ']' if depth == 1 => depth = 0,
            ']' => return Err("a ']' without its '['"),
            ',' if depth == 0 => {
                entries.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("a '[' without its ']'");
    }
    entries.push(&list[start..]);
    if entries.iter().any(|e| e.trim().is_empty()) {
        return Err("an empty host name");
    }
    Ok(entries)
}

/// Checks every bracket of one entry (brackets are balanced by now).
fn check_entry(entry: &str) -> Result<(), &'static str> {
    let mut rest = entry;
    while let Some(open) = rest.find('[') {
        let close = rest[open..]
            .find(']')
            .map(|c| open + c)
            .ok_or("unbalanced")?;
        for item in rest[open + 1..close].split(',') {
            check_range(item)?;
        }
        rest = &rest[close + 1..];
    }
    Ok(())
}

/// `7` or `01-04`: digits, and a range that does not run backwards.
fn check_range(item: &str) -> Result<(), &'static str> {
    let (lo, hi) = item.split_once('-').unwrap_or((item, item));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(lo) || !digits(hi) {
        return Err("a bracket holds something other than numbers and ranges");
    }
    let value = |s: &str| {
        s.parse::<u128>()
            .map_err(|_| "a number in a bracket is too long")
    };
    if value(lo)? > value(hi)? {
        return Err("a range runs backwards");
    }
    Ok(())
}

/// Replaces each bracket by its first number as written.
fn first_of_entry(entry: &str) -> String {
    let mut host = String::new();
    let mut rest = entry.trim();
    while let Some(open) = rest.find('[') {
        host.push_str(&rest[..open]);
        let inside = &rest[open + 1..];
        let close = inside.find(']').unwrap_or(inside.len());
        let first = inside[..close].split([',', '-']).next().unwrap_or_default();
        host.push_str(first);
        rest = inside.get(close + 1..).unwrap_or_default();
    }
    host.push_str(rest);
    host
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn detect(pairs: &[(&str, &str)]) -> Result<Option<Launch>, LaunchError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        from_env(&move |var| map.get(var).cloned())
    }

    fn found(pairs: &[(&str, &str)]) -> Launch {
        match detect(pairs) {
            Ok(Some(launch)) => launch,
            other => panic!("expected a launch from {pairs:?}, got {other:?}"),
        }
    }

    fn refused(pairs: &[(&str, &str)]) -> String {
        match detect(pairs) {
            Err(e) => e.to_string(),
            other => panic!("expected an error from {pairs:?}, got {other:?}"),
        }
    }

    const TORCH: [(&str, &str); 6] = [
        ("RANK", "3"),
        ("WORLD_SIZE", "8"),
        ("LOCAL_RANK", "1"),
        ("MASTER_ADDR", "node01"),
        ("MASTER_PORT", "29500"),
        ("TORCHELASTIC_RUN_ID", "job7"),
    ];

    const STEP: [(&str, &str); 7] = [
        ("SLURM_JOB_ID", "4242"),
        ("SLURM_STEP_ID", "0"),
        ("SLURM_STEP_NUM_TASKS", "4"),
        ("SLURM_PROCID", "2"),
        ("SLURM_LOCALID", "0"),
        ("SLURM_NTASKS", "4"),
        ("SLURM_STEP_NODELIST", "gpu[07-08]"),
    ];

    #[test]
    fn no_launcher_variables_mean_one_process() {
        assert_eq!(detect(&[]), Ok(None));
        assert_eq!(detect(&[("MASTER_ADDR", "x"), ("RANK", "")]), Ok(None));
    }

    #[test]
    fn torchrun_variables() {
        let l = found(&TORCH);
        assert_eq!(l.launcher, Launcher::Torchrun);
        assert_eq!((l.rank, l.world, l.local_rank), (3, 8, 1));
        assert_eq!(l.master_addr.as_deref(), Some("node01"));
        assert_eq!(l.master_port, Some(29500));
        assert_eq!(l.job_id.as_deref(), Some("job7"));
        let l = found(&[
            ("RANK", "0"),
            ("WORLD_SIZE", "1"),
            ("LOCAL_RANK", "0"),
            ("TORCHELASTIC_RUN_ID", "none"),
        ]);
        assert_eq!((l.master_addr, l.master_port, l.job_id), (None, None, None));
    }

    #[test]
    fn open_mpi_variables() {
        let l = found(&[
            ("OMPI_COMM_WORLD_RANK", "5"),
            ("OMPI_COMM_WORLD_SIZE", "16"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "5"),
            ("OMPI_MCA_ess_base_jobid", "123456"),
            ("MASTER_ADDR", "head"),
        ]);
        assert_eq!(l.launcher, Launcher::OpenMpi);
        assert_eq!((l.rank, l.world, l.local_rank), (5, 16, 5));
        assert_eq!(l.master_addr.as_deref(), Some("head"));
        assert_eq!(l.job_id.as_deref(), Some("123456"));
        let l = found(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
            ("PMIX_NAMESPACE", "prterun-a-1@1"),
        ]);
        assert_eq!(l.job_id.as_deref(), Some("prterun-a-1@1"));
        assert_eq!(l.master_addr, None);
    }

    #[test]
    fn mpich_variables_with_either_local_rank() {
        let l = found(&[
            ("PMI_RANK", "1"),
            ("PMI_SIZE", "2"),
            ("MPI_LOCALRANKID", "1"),
        ]);
        assert_eq!(l.launcher, Launcher::Mpich);
        assert_eq!((l.rank, l.world, l.local_rank), (1, 2, 1));
        assert_eq!(l.job_id, None);
        let l = found(&[
            ("PMI_RANK", "3"),
            ("PMI_SIZE", "4"),
            ("PMI_LOCAL_RANK", "1"),
            ("PMI_JOBID", "kvs_1"),
            ("MASTER_PORT", "1234"),
        ]);
        assert_eq!((l.rank, l.local_rank, l.master_port), (3, 1, Some(1234)));
        assert_eq!(l.job_id.as_deref(), Some("kvs_1"));
    }

    #[test]
    fn slurm_step_variables() {
        let l = found(&STEP);
        assert_eq!(l.launcher, Launcher::Slurm);
        assert_eq!((l.rank, l.world, l.local_rank), (2, 4, 0));
        assert_eq!(l.master_addr.as_deref(), Some("gpu07"));
        assert_eq!(l.job_id.as_deref(), Some("4242.0"));
        let mut with_addr = STEP.to_vec();
        with_addr.push(("MASTER_ADDR", "10.0.0.1"));
        assert_eq!(found(&with_addr).master_addr.as_deref(), Some("10.0.0.1"));
        let mut job_list = STEP.to_vec();
        job_list.retain(|(k, _)| *k != "SLURM_STEP_NODELIST");
        job_list.push(("SLURM_JOB_NODELIST", "a-b[3],c"));
        assert_eq!(found(&job_list).master_addr.as_deref(), Some("a-b3"));
        job_list.retain(|(k, _)| *k != "SLURM_JOB_NODELIST");
        assert_eq!(found(&job_list).master_addr, None);
    }

    #[test]
    fn an_sbatch_script_is_one_process() {
        // What the batch script's single process sees for an 8-task job: no step variables.
        let batch = [
            ("SLURM_JOB_ID", "4242"),
            ("SLURM_PROCID", "0"),
            ("SLURM_LOCALID", "0"),
            ("SLURM_NTASKS", "8"),
            ("SLURM_NPROCS", "8"),
            ("SLURM_JOB_NODELIST", "node[01-02]"),
        ];
        assert_eq!(detect(&batch), Ok(None));
        // A step id alone (no task count) is not a step srun launched for us either.
        let mut partial = batch.to_vec();
        partial.push(("SLURM_STEP_ID", "0"));
        assert_eq!(detect(&partial), Ok(None));
    }

    #[test]
    fn torchrun_wins_over_the_srun_that_started_it() {
        let mut both = STEP.to_vec();
        both.extend_from_slice(&TORCH);
        assert_eq!(found(&both).launcher, Launcher::Torchrun);
    }

    #[test]
    fn mpi_wins_over_slurm_and_srun_pmi2_stays_slurm() {
        let mut ompi = STEP.to_vec();
        ompi.extend_from_slice(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "2"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
        ]);
        assert_eq!(found(&ompi).launcher, Launcher::OpenMpi);
        let mut hydra = STEP.to_vec();
        hydra.extend_from_slice(&[
            ("PMI_RANK", "0"),
            ("PMI_SIZE", "2"),
            ("MPI_LOCALRANKID", "0"),
        ]);
        assert_eq!(found(&hydra).launcher, Launcher::Mpich);
        let mut pmi2 = STEP.to_vec();
        pmi2.extend_from_slice(&[("PMI_RANK", "2"), ("PMI_SIZE", "4")]);
        assert_eq!(found(&pmi2).launcher, Launcher::Slurm);
        let mut both_mpi = ompi.clone();
        both_mpi.extend_from_slice(&[
            ("PMI_RANK", "1"),
            ("PMI_SIZE", "2"),
            ("MPI_LOCALRANKID", "1"),
        ]);
        assert_eq!(found(&both_mpi).launcher, Launcher::OpenMpi);
    }

    #[test]
    fn bad_numbers_are_named() {
        assert_eq!(
            refused(&[("RANK", "abc"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "0")]),
            "RANK=abc is not a number; torchrun sets it to the process's rank"
        );
        let e = refused(&[("RANK", "0"), ("WORLD_SIZE", "-1"), ("LOCAL_RANK", "0")]);
        assert!(
            e.starts_with("WORLD_SIZE=-1 is not a number; torchrun sets it to the number"),
            "{e}"
        );
        let e = refused(&[
            ("PMI_RANK", "0"),
            ("PMI_SIZE", "2"),
            ("MPI_LOCALRANKID", "x"),
        ]);
        assert!(
            e.starts_with("MPI_LOCALRANKID=x is not a number; mpirun (MPICH)"),
            "{e}"
        );
        let mut step = STEP.to_vec();
        step.retain(|(k, _)| *k != "SLURM_PROCID");
        step.push(("SLURM_PROCID", "2.5"));
        assert!(refused(&step).starts_with("SLURM_PROCID=2.5 is not a number; srun sets it"));
    }

    #[test]
    fn an_empty_world_is_refused() {
        let e = refused(&[
            ("OMPI_COMM_WORLD_RANK", "0"),
            ("OMPI_COMM_WORLD_SIZE", "0"),
            ("OMPI_COMM_WORLD_LOCAL_RANK", "0"),
        ]);
        assert!(
            e.starts_with("OMPI_COMM_WORLD_SIZE=0: a run needs at least one process"),
            "{e}"
        );
    }

    #[test]
    fn ranks_outside_the_world_are_refused() {
        assert_eq!(
            refused(&[("RANK", "4"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "0")]),
            "RANK=4 with WORLD_SIZE=4: a rank must be below the world size"
        );
        assert_eq!(
            refused(&[("RANK", "1"), ("WORLD_SIZE", "4"), ("LOCAL_RANK", "9")]),
            "LOCAL_RANK=9 with WORLD_SIZE=4: a local rank must be below the world size"
        );
    }

    #[test]
    fn half_a_set_is_refused() {
        assert_eq!(
            refused(&[("RANK", "1")]),
            "RANK is set but WORLD_SIZE is not: torchrun sets them together; unset RANK or set WORLD_SIZE"
        );
        let e = refused(&[("WORLD_SIZE", "2")]);
        assert!(e.starts_with("WORLD_SIZE is set but RANK is not"), "{e}");
        let e = refused(&[("RANK", "1"), ("WORLD_SIZE", "2")]);
        assert!(e.starts_with("RANK is set but LOCAL_RANK is not"), "{e}");
        let e = refused(&[("PMI_RANK", "1"), ("PMI_SIZE", "2")]);
        assert!(e.contains("MPI_LOCALRANKID (or PMI_LOCAL_RANK)"), "{e}");
        let mut step = STEP.to_vec();
        step.retain(|(k, _)| *k != "SLURM_LOCALID");
        assert!(refused(&step).starts_with("SLURM_PROCID is set but SLURM_LOCALID is not"));
    }

    #[test]
    fn a_master_port_must_be_a_port() {
        for bad in ["0", "65536", "http"] {
            let mut env = TORCH.to_vec();
            env.retain(|(k, _)| *k != "MASTER_PORT");
            env.push(("MASTER_PORT", bad));
            assert_eq!(
                refused(&env),
                format!("MASTER_PORT={bad} is not a port; set it to a number from 1 to 65535")
            );
        }
    }

    #[test]
    fn a_garbled_nodelist_is_refused() {
        let mut step = STEP.to_vec();
        step.retain(|(k, _)| *k != "SLURM_STEP_NODELIST");
        step.push(("SLURM_STEP_NODELIST", "node[01-"));
        let e = refused(&step);
        assert!(
            e.starts_with("SLURM_STEP_NODELIST=node[01- is not a Slurm host list"),
            "{e}"
        );
        assert!(e.ends_with("set MASTER_ADDR to rank 0's host"), "{e}");
    }

    #[test]
    fn first_hosts_of_slurm_host_lists() {
        assert_eq!(first_host("node[01-04,07],gpu5"), Ok("node01".into()));
        assert_eq!(first_host("a-b[3]"), Ok("a-b3".into()));
        assert_eq!(first_host("host"), Ok("host".into()));
        assert_eq!(first_host("n[008-011]"), Ok("n008".into()));
        assert_eq!(first_host("n[9-11]"), Ok("n9".into()));
        assert_eq!(first_host("gpu5,node[01-04]"), Ok("gpu5".into()));
        assert_eq!(first_host("rack[2-3]-n[10,12]"), Ok("rack2-n10".into()));
        assert_eq!(first_host("n[1-2]x"), Ok("n1x".into()));
        for bad in [
            "", "a,,b", "n[1-", "n]", "n[[1]]", "n[a-b]", "n[3-1]", "n[]", "a,n[1-2",
        ] {
            assert!(first_host(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn launchers_display_as_their_commands() {
        assert_eq!(Launcher::Torchrun.to_string(), "torchrun");
        assert_eq!(Launcher::Slurm.to_string(), "srun");
        assert_eq!(Launcher::OpenMpi.to_string(), "mpirun (Open MPI)");
        assert_eq!(Launcher::Mpich.to_string(), "mpirun (MPICH)");
    }
}
