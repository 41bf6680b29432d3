//! `mpirun -n N ember train ...`: the ranks of a data-parallel run, joined through MPI.
//!
//! Each rank is an ordinary `ember train` process that trains on its share of every batch;
//! [`World`] gives the training crate the collective operations it needs
//! ([`ember_train::Collective`]). Errors found while the run is set up are agreed on by every
//! rank, so a bad config or corpus ends the job with the status and message a single process
//! gives; an error during training, which the other ranks may never see, aborts the job.

use std::path::Path;
use std::rc::Rc;

use anyhow::Result;
use burn::tensor::Device;
use ember_train::{CONFIG_FILE, Collective, Ranks, RunConfig};
use mpi::collective::SystemOperation;
use mpi::datatype::PartitionMut;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::{Communicator, CommunicatorCollectives};

use crate::{Reported, TrainArgs, exit_status, train};

/// This process's MPI world; MPI is finalized when the last reference goes.
pub(crate) struct World {
    world: SimpleCommunicator,
    // Dropped after `world`: finalizes MPI.
    _universe: Universe,
}

impl World {
    /// The world of a process that `mpirun` (or another MPI launcher) started, with the rayon
    /// pool sized for the ranks sharing this machine; `None` for a process started any other
    /// way, which trains alone as it always has.
    pub(crate) fn launched(args: &TrainArgs) -> Result<Option<Rc<World>>> {
        const LAUNCHER_VARIABLES: [&str; 4] = [
            "OMPI_COMM_WORLD_SIZE",
            "PMIX_RANK",
            "PMI_SIZE",
            "MPI_LOCALNRANKS",
        ];
        if !LAUNCHER_VARIABLES
            .iter()
            .any(|name| std::env::var_os(name).is_some())
        {
            return Ok(None);
        }
        let universe = mpi::initialize()
            .ok_or_else(|| anyhow::anyhow!("MPI was initialized twice in one process"))?;
        let world = universe.world();
        let local_ranks = world.split_shared(world.rank()).size() as usize;
        use_rank_threads(configured_threads(args), local_ranks);
        Ok(Some(Rc::new(World {
            world,
            _universe: universe,
        })))
    }

    /// Ends every rank's process at once with `status`.
    fn abort(&self, status: i32) -> ! {
        self.world.abort(status)
    }
}

impl Collective for World {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, values: &mut [f32]) {
        let local = values.to_vec();
        self.world
            .all_reduce_into(&local[..], values, SystemOperation::sum());
    }

    fn all_reduce_sum_f64(&self, values: &mut [f64]) {
        let local = values.to_vec();
        self.world
            .all_reduce_into(&local[..], values, SystemOperation::sum());
    }

    fn all_gather(&self, local: &[u8]) -> Vec<Vec<u8>> {
        // Open MPI refuses a gather of nothing at all (MPI_ERR_ARG): every rank sends a leading
        // byte, dropped below.
        let local: Vec<u8> = std::iter::once(0).chain(local.iter().copied()).collect();
        let size = self.size();
        let count = i32::try_from(local.len()).expect("a gathered buffer under 2 GiB");
        let mut counts = vec![0i32; size];
        self.world.all_gather_into(&count, &mut counts[..]);
        let displacements: Vec<i32> = counts
            .iter()
            .scan(0i32, |offset, &count| {
                let start = *offset;
                *offset += count;
                Some(start)
            })
            .collect();
        let total: usize = counts.iter().map(|&c| c as usize).sum();
        let mut gathered = vec![0u8; total];
        {
            let mut partition =
                PartitionMut::new(&mut gathered[..], &counts[..], &displacements[..]);
            self.world
                .all_gather_varcount_into(&local[..], &mut partition);
        }
        counts
            .iter()
            .zip(&displacements)
            .map(|(&count, &start)| gathered[start as usize + 1..(start + count) as usize].to_vec())
            .collect()
    }
}

/// `ember train` as one rank of the run.
pub(crate) fn train(
    args: TrainArgs,
    device: &Device,
    interactive: bool,
    world: Rc<World>,
) -> Result<()> {
    let ranks = Ranks::new(world.clone());
    let started = train::start(&args, device, &ranks);
    // Every rank says how its setup went; the first failure is the job's.
    let failure = started.as_ref().err().map(|error| {
        let status = exit_status(error);
        format!("{status}\n{}", crate::message(error))
    });
    let reports = ranks.all_gather(failure.unwrap_or_default().as_bytes());
    let first_failure = reports.iter().enumerate().find(|(_, r)| !r.is_empty());
    if let Some((rank, report)) = first_failure {
        let report = String::from_utf8_lossy(report);
        let (status, message) = report.split_once('\n').unwrap_or(("1", &report));
        if ranks.is_primary() {
            let prefix = if rank > 0 {
                format!("rank {rank}: ")
            } else {
                String::new()
            };
            eprintln!("error: {prefix}{message}");
        }
        drop(started);
        drop(ranks);
        return Err(Reported(status.parse().unwrap_or(1)).into());
    }
    let started = started.expect("no rank failed");
    let result = train::run(device, interactive, &ranks, started);
    match result {
        Ok(()) => Ok(()),
        Err(error) => {
            // Another rank may be waiting in a collective operation that this one will never
            // join: the job ends here, with this error's status.
            let status = exit_status(&error);
            let everyone_saw_it =
                error
                    .downcast_ref::<ember_train::TrainError>()
                    .is_some_and(|e| {
                        matches!(
                            e,
                            ember_train::TrainError::Diverged { .. }
                                | ember_train::TrainError::RanksDiverged { .. }
                        )
                    });
            if ranks.is_primary() || !everyone_saw_it {
                eprintln!("error: rank {}: {}", ranks.rank(), crate::message(&error));
            }
            world.abort(status)
        }
    }
}

/// The `train.threads` of the run `args` starts or resumes (0 when it cannot be read: the
/// error is reported when the run is set up).
fn configured_threads(args: &TrainArgs) -> usize {
    let config = match (&args.config, &args.resume) {
        (_, Some(run_dir)) => RunConfig::load(&run_dir.join(CONFIG_FILE), &args.overrides),
        (Some(path), None) => RunConfig::load(path, &args.overrides),
        (None, None) => return 0,
    };
    config.map_or(0, |config| config.train.threads)
}

/// Sizes rayon's pool, which Burn's CPU backends and the recurrence kernels share, before any
/// of them runs: `train.threads` when set, else the cores this rank may use: the cores it is
/// bound to where `mpirun --bind-to` bound it, else this machine's cores shared among its ranks.
fn use_rank_threads(configured: usize, local_ranks: usize) {
    let allowed = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = match configured {
        0 if allowed < online_cpus().unwrap_or(allowed) => allowed,
        0 => (allowed / local_ranks.max(1)).max(1),
        n => n,
    };
    if let Err(error) = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global()
    {
        log::warn!("sizing the thread pool to {threads}: {error}");
    }
    log::info!("{threads} threads per rank, {local_ranks} ranks on this machine");
}

/// The machine's online CPUs, from Linux's sysfs (`0-15,32-47`); `None` elsewhere.
fn online_cpus() -> Option<usize> {
    let text = std::fs::read_to_string(Path::new("/sys/devices/system/cpu/online")).ok()?;
    let mut count = 0;
    for range in text.trim().split(',') {
        count += match range.split_once('-') {
            Some((first, last)) => last.parse::<usize>().ok()? - first.parse::<usize>().ok()? + 1,
            None => {
                range.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(count)
}
