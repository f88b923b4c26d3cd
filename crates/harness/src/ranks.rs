//! The processes a compare job runs on: one, or the ranks of an MPI job
//! (the `mpi` feature), seen through [`hessfree_model::Collective`].
//!
//! The sum every rank needs is gathered to rank 0, added there in rank
//! order and broadcast back ([`mpi::Mpi::sum`]): the same bits on every
//! rank whatever reduction algorithm MPI would have picked. Its cost is a
//! gather of `(N − 1)·m` numbers into rank 0 and a broadcast of `m`, which
//! the scaling report's model includes.

use std::sync::Arc;

use anyhow::{Result, bail};
use hessfree_model::Collective;

/// The collective for this process, given `launched`, the ranks of the job
/// its launcher started (`None` when no launcher started it; the CLI reads
/// it from the launcher's environment): MPI when launched in a build with
/// the feature; `None` for a plain process. Refuses a launch of several
/// ranks in a build without MPI, which would run that many independent
/// copies writing the same files.
pub fn join(launched: Option<usize>) -> Result<Option<Arc<dyn Collective>>> {
    match launched {
        None => Ok(None),
        #[cfg(feature = "mpi")]
        Some(_) => Ok(Some(Arc::new(mpi::Mpi::world()?))),
        #[cfg(not(feature = "mpi"))]
        Some(1) => Ok(None),
        #[cfg(not(feature = "mpi"))]
        Some(n) => bail!(
            "launched by mpirun with {n} ranks, but this build has no MPI support; build \
             with `cargo build -p xtask --features mpi` and launch target/debug/xtask"
        ),
    }
}

/// Refuses a command that runs in one process only when this job has
/// several ranks (`launched`, as for [`join`]).
pub fn single_process_only(command: &str, launched: Option<usize>) -> Result<()> {
    if let Some(n) = launched.filter(|&n| n > 1) {
        bail!(
            "`{command}` runs in one process; it was launched with {n} MPI ranks. Only \
             `compare` (and `mpi-bench`) are data-parallel: launch this one without mpirun"
        );
    }
    Ok(())
}

/// Ends this process's part of a job: MPI_Finalize after success, and
/// after a failure an abort of every rank, saying which rank failed and
/// why (mpirun then exits non-zero). Nothing in one process.
pub fn end(ranks: Option<&Arc<dyn Collective>>, failure: Option<&str>) {
    #[cfg(feature = "mpi")]
    if let Some(r) = ranks {
        match failure {
            Some(why) => mpi::abort(r.rank(), r.size(), why),
            None => mpi::finalize(),
        }
    }
    #[cfg(not(feature = "mpi"))]
    let _ = (ranks, failure);
}

#[cfg(feature = "mpi")]
pub mod mpi {
    //! [`Collective`] over rsmpi's world communicator.

    use std::sync::{Mutex, OnceLock};
    use std::time::Instant;

    use anyhow::{Result, bail};
    use hessfree_model::{Collective, CommCounts, CommStats};
    use mpi::environment::Universe;
    use mpi::point_to_point::{Destination, Source};
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::{Communicator, CommunicatorCollectives, Root};

    /// MPI's universe while it runs: started by [`Mpi::world`], ended
    /// (MPI_Finalize, when dropped) by [`finalize`].
    static UNIVERSE: Mutex<Option<Universe>> = Mutex::new(None);
    static STARTED: OnceLock<()> = OnceLock::new();

    /// Starts MPI once per process. Threads `Serialized`: the solver
    /// thread calls MPI, candle's worker threads never do.
    fn init() -> Result<()> {
        let mut started = Ok(());
        STARTED.get_or_init(
            || match mpi::initialize_with_threading(mpi::Threading::Serialized) {
                Some((u, _)) => {
                    *UNIVERSE.lock().unwrap_or_else(|e| e.into_inner()) = Some(u);
                }
                None => started = Err(()),
            },
        );
        if started.is_err() {
            bail!("MPI could not be initialised: it was already running or has ended");
        }
        Ok(())
    }

    /// Ends the whole job from any rank, after saying which rank and why.
    /// mpirun then stops the others and exits non-zero.
    pub fn abort(rank: usize, size: usize, why: &str) -> ! {
        eprintln!("error: rank {rank} of {size} failed: {why}");
        eprintln!("error: aborting every rank of the MPI job");
        SimpleCommunicator::world().abort(1)
    }

    /// Ends MPI at the end of a job whose ranks all succeeded (a no-op if
    /// it never started). After it no rank may communicate.
    pub fn finalize() {
        let u = UNIVERSE.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(u);
    }

    /// The world communicator of this job.
    pub struct Mpi {
        rank: usize,
        size: usize,
        stats: CommStats,
    }

    impl Mpi {
        /// Joins the job's world (starting MPI if needed).
        pub fn world() -> Result<Self> {
            init()?;
            let world = SimpleCommunicator::world();
            Ok(Self {
                rank: world.rank() as usize,
                size: world.size() as usize,
                stats: CommStats::default(),
            })
        }
    }

    impl Collective for Mpi {
        fn rank(&self) -> usize {
            self.rank
        }

        fn size(&self) -> usize {
            self.size
        }

        /// Gather to rank 0, add in rank order there, broadcast. Bytes
        /// counted: the gathered `(N − 1)·m` and the broadcast `(N − 1)·m`
        /// payload, the least any tree can move.
        fn sum(&self, local: &[f64]) -> hessfree_model::Result<Vec<f64>> {
            let start = Instant::now();
            let world = SimpleCommunicator::world();
            let root = world.process_at_rank(0);
            let m = local.len();
            let mut total = vec![0.0; m];
            if self.rank == 0 {
                let mut all = vec![0.0; m * self.size];
                root.gather_into_root(local, &mut all[..]);
                total.copy_from_slice(&all[..m]);
                for part in all[m..].chunks_exact(m.max(1)) {
                    for (t, p) in total.iter_mut().zip(part) {
                        *t += p;
                    }
                }
            } else {
                root.gather_into(local);
            }
            root.broadcast_into(&mut total[..]);
            let bytes = 2 * 8 * m as u64 * (self.size as u64 - 1);
            self.stats.record(bytes, start);
            Ok(total)
        }

        fn gather_u64(&self, value: u64) -> hessfree_model::Result<Vec<u64>> {
            let world = SimpleCommunicator::world();
            let mut all = vec![0u64; self.size];
            world.all_gather_into(&value, &mut all[..]);
            Ok(all)
        }

        fn stats(&self) -> CommCounts {
            self.stats.read()
        }
    }

    /// Median one-way time of a `bytes`-byte message between ranks 0 and
    /// 1 (half a round trip, `repeats` round trips after 3 unrecorded),
    /// on rank 0; `None` on other ranks or with one rank. Every rank must
    /// call it: the others wait at the barriers.
    pub fn ping_pong(bytes: usize, repeats: usize) -> Option<f64> {
        let world = SimpleCommunicator::world();
        world.barrier();
        let mut buf = vec![0u8; bytes];
        let mut times = Vec::new();
        if world.size() >= 2 {
            let rank = world.rank();
            for k in 0..repeats + 3 {
                let start = Instant::now();
                if rank == 0 {
                    world.process_at_rank(1).send(&buf[..]);
                    world.process_at_rank(1).receive_into(&mut buf[..]);
                } else if rank == 1 {
                    world.process_at_rank(0).receive_into(&mut buf[..]);
                    world.process_at_rank(0).send(&buf[..]);
                }
                if k >= 3 {
                    times.push(start.elapsed().as_secs_f64() / 2.0);
                }
            }
        }
        world.barrier();
        if world.rank() != 0 || times.is_empty() {
            return None;
        }
        times.sort_by(f64::total_cmp);
        Some(times[times.len() / 2])
    }
}
