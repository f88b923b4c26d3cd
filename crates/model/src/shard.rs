//! Data parallelism: one objective whose rows are split across processes.
//!
//! Every term a solver uses is a mean over training rows: the loss, the
//! gradient, each curvature product and the diagonal preconditioner. So a
//! process (a *rank*) can hold one contiguous shard of the rows, compute its
//! shard's share, and one sum across ranks gives the whole. For softmax
//! regression a curvature product moves 7,850 numbers, never the matrix.
//!
//! [`ShardedObjective`] is that sum, over any [`Collective`] (MPI in the
//! harness's `mpi` feature). The sum is added in rank order by the
//! collective itself, not by MPI's reduction algorithm, so every rank gets
//! the same bits, runs the same deterministic solver and keeps the same
//! parameters; and a result does not change when MPI changes its algorithm.
//!
//! Weights: rank `r` holds `n_r` of the `n` rows and its local objective is
//! `f_r = mean over its rows + penalties`. Then `f = Σ_r (n_r / n) f_r`: the
//! data terms are the global mean and, because the weights sum to one, the
//! penalties are counted once.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::linop::LinOp;
use crate::objective::{CurvatureKind, Objective};
use crate::params::ParamLayout;

/// The rows `[start, end)` of `n` that rank `rank` of `size` holds:
/// contiguous, `n / size` each, the first `n mod size` ranks one more.
pub fn shard_range(n: usize, size: usize, rank: usize) -> std::ops::Range<usize> {
    let size = size.max(1);
    let (base, extra) = (n / size, n % size);
    let start = rank * base + rank.min(extra);
    start..start + base + usize::from(rank < extra)
}

/// What the ranks' collectives cost, for the report's accounting.
#[derive(Default)]
pub struct CommStats {
    calls: AtomicU64,
    bytes: AtomicU64,
    nanos: AtomicU64,
}

/// A copy of [`CommStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CommCounts {
    /// Collective operations (one sum is one, whatever MPI does inside it).
    pub calls: u64,
    /// Bytes this rank sent and received in them.
    pub bytes: u64,
    /// Wall time inside them, waiting for slower ranks included.
    pub seconds: f64,
}

impl CommStats {
    /// Adds one collective of `bytes` that began at `start`.
    pub fn record(&self, bytes: u64, start: Instant) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.nanos
            .fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn read(&self) -> CommCounts {
        CommCounts {
            calls: self.calls.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            seconds: self.nanos.load(Ordering::Relaxed) as f64 * 1e-9,
        }
    }
}

impl std::ops::Sub for CommCounts {
    type Output = CommCounts;
    fn sub(self, earlier: CommCounts) -> CommCounts {
        CommCounts {
            calls: self.calls - earlier.calls,
            bytes: self.bytes - earlier.bytes,
            seconds: self.seconds - earlier.seconds,
        }
    }
}

/// The processes one job runs on, and the one reduction data parallelism
/// needs. Implementations: MPI (the harness's `mpi` feature).
pub trait Collective: Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;
    /// Processes in the job.
    fn size(&self) -> usize;
    /// `Σ_r local_r`, elementwise, added in rank order (rank 0 first), the
    /// same bits on every rank. Every rank must call it with the same length.
    fn sum(&self, local: &[f64]) -> Result<Vec<f64>>;
    /// Every rank's `value`, in rank order, on every rank.
    fn gather_u64(&self, value: u64) -> Result<Vec<u64>>;
    /// What the collectives have cost so far.
    fn stats(&self) -> CommCounts;
}

/// FNV-1a over the parameters' bits: equal parameters, equal hashes.
fn param_hash(w: &Tensor) -> Result<u64> {
    let bits: Vec<u64> = w
        .to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?
        .iter()
        .map(|x| x.to_bits())
        .collect();
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bits {
        for byte in b.to_le_bytes() {
            h ^= u64::from(byte);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok(h)
}

/// The objective over all ranks' rows, seen from one rank.
pub struct ShardedObjective {
    /// This rank's rows; `None` when a sub-sample has none of them (the
    /// rank still takes part in every sum, with zeros).
    local: Option<Arc<dyn Objective>>,
    /// The full shard, for the layout, device and dtype.
    shape: Arc<dyn Objective>,
    comm: Arc<dyn Collective>,
    /// Where this rank's rows start among all ranks' rows.
    offset: usize,
    /// Rows over all ranks.
    rows: usize,
    /// Compare a hash of the parameters across ranks at every gradient.
    check_params: bool,
    gradients: AtomicU64,
}

impl fmt::Debug for ShardedObjective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedObjective")
            .field("rank", &self.comm.rank())
            .field("size", &self.comm.size())
            .field("offset", &self.offset)
            .field("rows", &self.rows)
            .finish()
    }
}

impl ShardedObjective {
    /// `local` holds this rank's rows, which start at global row `offset`;
    /// `rows` is the total over all ranks. With `check_params`, every
    /// gradient first checks that all ranks hold the same parameters.
    pub fn new(
        local: Arc<dyn Objective>,
        comm: Arc<dyn Collective>,
        offset: usize,
        rows: usize,
        check_params: bool,
    ) -> Result<Self> {
        if offset + local.num_samples() > rows {
            return Err(ModelError::Batch(format!(
                "rank {} holds rows {offset}..{} of only {rows}",
                comm.rank(),
                offset + local.num_samples()
            )));
        }
        Ok(Self {
            shape: local.clone(),
            local: Some(local),
            comm,
            offset,
            rows,
            check_params,
            gradients: AtomicU64::new(0),
        })
    }

    /// This rank's share `n_r / n` of the mean.
    fn weight(&self) -> f64 {
        self.local
            .as_ref()
            .map_or(0.0, |l| l.num_samples() as f64 / self.rows as f64)
    }

    /// `Σ_r weight_r · local_r` as a tensor like `like`.
    fn sum_tensor(&self, local: Option<Tensor>) -> Result<Tensor> {
        let dim = self.shape.dim();
        let part = match local {
            Some(t) => scaled(&t, self.weight())?,
            None => vec![0.0; dim],
        };
        let total = self.comm.sum(&part)?;
        self.as_param_tensor(total)
    }

    fn as_param_tensor(&self, v: Vec<f64>) -> Result<Tensor> {
        let n = v.len();
        Ok(Tensor::from_vec(v, n, self.shape.device())?.to_dtype(self.shape.dtype())?)
    }

    fn check_same_params(&self, w: &Tensor) -> Result<()> {
        let k = self.gradients.fetch_add(1, Ordering::Relaxed);
        if !self.check_params {
            return Ok(());
        }
        let hashes = self.comm.gather_u64(param_hash(w)?)?;
        if let Some(r) = hashes.iter().position(|&h| h != hashes[0]) {
            return Err(ModelError::Collective(format!(
                "ranks diverged at gradient evaluation {k}: rank {r} holds parameters with hash \
                 {:016x}, rank 0 {:016x}; every rank should run the same deterministic solver \
                 on the same sums",
                hashes[r], hashes[0]
            )));
        }
        Ok(())
    }
}

/// `weight · t` as f64 numbers.
fn scaled(t: &Tensor, weight: f64) -> Result<Vec<f64>> {
    Ok(t.to_dtype(DType::F64)?
        .flatten_all()?
        .to_vec1::<f64>()?
        .into_iter()
        .map(|x| weight * x)
        .collect())
}

impl Objective for ShardedObjective {
    fn layout(&self) -> &ParamLayout {
        self.shape.layout()
    }

    fn device(&self) -> &Device {
        self.shape.device()
    }

    fn dtype(&self) -> DType {
        self.shape.dtype()
    }

    fn num_samples(&self) -> usize {
        self.rows
    }

    fn loss(&self, w: &Tensor) -> Result<f64> {
        let part = match &self.local {
            Some(l) => self.weight() * l.loss(w)?,
            None => 0.0,
        };
        Ok(self.comm.sum(&[part])?[0])
    }

    /// One sum carries the loss and the gradient together.
    fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        self.check_same_params(w)?;
        let mut part = vec![0.0; 1 + self.shape.dim()];
        if let Some(l) = &self.local {
            let (f, g) = l.loss_and_grad(w)?;
            part[0] = self.weight() * f;
            part[1..].copy_from_slice(&scaled(&g, self.weight())?);
        }
        let mut total = self.comm.sum(&part)?;
        let f = total.remove(0);
        Ok((f, self.as_param_tensor(total)?))
    }

    fn curvature(&self, w: &Tensor, kind: CurvatureKind) -> Result<Arc<dyn LinOp>> {
        let local = match &self.local {
            Some(l) => Some(l.curvature(w, kind)?),
            None => None,
        };
        Ok(Arc::new(ShardedOp {
            local,
            objective: self.clone_view(),
        }))
    }

    fn diag_curvature(&self, w: &Tensor) -> Result<Tensor> {
        let local = match &self.local {
            Some(l) => Some(l.diag_curvature(w)?),
            None => None,
        };
        self.sum_tensor(local)
    }

    /// `indices` are global rows; this rank takes those it holds.
    fn subsample(&self, indices: &[usize]) -> Result<Arc<dyn Objective>> {
        if let Some(&bad) = indices.iter().find(|&&i| i >= self.rows) {
            return Err(ModelError::Batch(format!(
                "sub-sample index {bad} is out of range for {} rows",
                self.rows
            )));
        }
        let held = self.shape.num_samples();
        let mine: Vec<usize> = indices
            .iter()
            .filter(|&&i| i >= self.offset && i < self.offset + held)
            .map(|&i| i - self.offset)
            .collect();
        let local = if mine.is_empty() {
            None
        } else {
            Some(self.shape.subsample(&mine)?)
        };
        Ok(Arc::new(Self {
            local,
            shape: self.shape.clone(),
            comm: self.comm.clone(),
            offset: 0,
            rows: indices.len(),
            check_params: self.check_params,
            gradients: AtomicU64::new(0),
        }))
    }

    fn kernel_name(&self) -> String {
        format!(
            "{} on {} MPI ranks",
            self.shape.kernel_name(),
            self.comm.size()
        )
    }

    fn kronecker_factors(
        &self,
        _w: &Tensor,
        _targets: crate::kfac::FisherTargets,
        _rng: &mut rand_chacha::ChaCha8Rng,
    ) -> Result<crate::kfac::KroneckerFactors> {
        Err(ModelError::Unsupported(format!(
            "K-FAC runs in one process; this job has {} MPI ranks. Data parallelism covers \
             the loss, gradient and curvature products (sgd, adam, newton-cg, hf, \
             trust-region, lbfgs)",
            self.comm.size()
        )))
    }
}

impl ShardedObjective {
    /// A second handle on the same rows, for the operators it hands out.
    fn clone_view(&self) -> Self {
        Self {
            local: self.local.clone(),
            shape: self.shape.clone(),
            comm: self.comm.clone(),
            offset: self.offset,
            rows: self.rows,
            check_params: self.check_params,
            gradients: AtomicU64::new(0),
        }
    }
}

/// A curvature operator over all ranks' rows: one sum per product.
struct ShardedOp {
    local: Option<Arc<dyn LinOp>>,
    objective: ShardedObjective,
}

impl LinOp for ShardedOp {
    fn dim(&self) -> usize {
        self.objective.shape.dim()
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        let local = match &self.local {
            Some(op) => Some(op.apply(v)?),
            None => None,
        };
        self.objective.sum_tensor(local)
    }

    fn samples_per_apply(&self) -> usize {
        self.objective.rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_rows_once_larger_first() {
        for n in [0, 1, 7, 10, 300] {
            for size in 1..=5 {
                let ranges: Vec<_> = (0..size).map(|r| shard_range(n, size, r)).collect();
                assert_eq!(ranges[0].start, 0);
                assert_eq!(ranges[size - 1].end, n);
                for w in ranges.windows(2) {
                    assert_eq!(w[0].end, w[1].start);
                    assert!(w[0].len() >= w[1].len() && w[0].len() <= w[1].len() + 1);
                }
            }
        }
        assert_eq!(shard_range(10, 3, 0), 0..4);
        assert_eq!(shard_range(10, 3, 1), 4..7);
        assert_eq!(shard_range(10, 3, 2), 7..10);
    }
}
