//! What the dense Hessian would cost against what the matrix-free operator
//! actually uses.
//!
//! The operator's working memory is measured from the process's resident set
//! (`VmRSS`) and its peak (`VmHWM`) in `/proc/self/status`; on Linux the peak
//! is reset first by writing `5` to `/proc/self/clear_refs`, so the peak seen
//! afterwards belongs to the operator's build and products alone.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use candle_core::Tensor;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use hessfree_model::{CurvatureKind, Objective};

/// Bytes of a dense `dim x dim` matrix with `elem_bytes`-byte entries.
pub fn dense_hessian_bytes(dim: usize, elem_bytes: usize) -> u64 {
    dim as u64 * dim as u64 * elem_bytes as u64
}

/// The largest `VmHWM` seen before any reset, so that resetting the peak
/// for one measurement does not lose the process's lifetime peak.
static PEAK_BEFORE_RESETS: AtomicU64 = AtomicU64::new(0);

/// The memory the machine can still give a process (`MemAvailable` in
/// `/proc/meminfo`, which counts reclaimable caches); `None` where it
/// cannot be read. Used to refuse a model too big for the machine before
/// allocating it.
pub fn available_bytes() -> Option<u64> {
    kib_field(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable:",
    )
}

/// A `NAME:   1234 kB` line of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: u64 = line
        .trim_start_matches(name)
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Resident and peak-resident memory of this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcMemory {
    /// Current resident set (`VmRSS`) in bytes.
    pub rss_bytes: u64,
    /// Peak resident set (`VmHWM`) in bytes, since start or the last reset.
    pub hwm_bytes: u64,
}

impl ProcMemory {
    /// Reads `/proc/self/status`; `None` where it does not exist.
    pub fn read() -> Option<Self> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |name: &str| kib_field(&status, name);
        Some(Self {
            rss_bytes: field("VmRSS:")?,
            hwm_bytes: field("VmHWM:")?,
        })
    }

    /// Resets the peak (`VmHWM`) to the current resident set. Returns
    /// whether the kernel accepted it.
    pub fn reset_peak() -> bool {
        if let Some(m) = Self::read() {
            PEAK_BEFORE_RESETS.fetch_max(m.hwm_bytes, Ordering::Relaxed);
        }
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    /// The process's peak resident set over its whole life, across resets
    /// made through [`ProcMemory::reset_peak`].
    pub fn lifetime_peak_bytes() -> Option<u64> {
        let now = Self::read()?.hwm_bytes;
        Some(now.max(PEAK_BEFORE_RESETS.load(Ordering::Relaxed)))
    }
}

/// The memory of one curvature operator, dense against matrix-free.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OperatorMemory {
    /// Dimension of the operator (the parameter count).
    pub dim: usize,
    /// Training samples in the objective's batch.
    pub samples: usize,
    /// The objective's dtype, e.g. `"f32"`.
    pub dtype: String,
    /// Bytes of the dense `dim x dim` matrix in f32.
    pub dense_f32_bytes: u64,
    /// Bytes of the dense `dim x dim` matrix in f64.
    pub dense_f64_bytes: u64,
    /// Resident set before the operator was built (the data already loaded).
    pub rss_before: Option<u64>,
    /// Resident set after the build: what the operator keeps between
    /// products is `rss_after_build − rss_before`.
    pub retained_bytes: Option<u64>,
    /// Peak resident set during build and products minus `rss_before`: the
    /// working memory of the matrix-free route (valid only if `peak_reset`).
    pub working_bytes: Option<u64>,
    /// Whether the kernel reset the peak before the build (Linux only).
    pub peak_reset: bool,
    /// Wall-clock seconds to build the operator.
    pub build_seconds: f64,
    /// Median time of one product.
    pub apply_seconds: f64,
    /// Products timed: the requested count, at least 1.
    pub products: usize,
}

/// Builds the curvature operator of `obj` at `w` and applies it `products`
/// times, measuring resident memory around it.
pub fn measure_operator_memory(
    obj: &dyn Objective,
    w: &Tensor,
    kind: CurvatureKind,
    products: usize,
) -> Result<OperatorMemory> {
    let peak_reset = ProcMemory::reset_peak();
    let before = ProcMemory::read();
    let start = Instant::now();
    let op = obj.curvature(w, kind)?;
    let build_seconds = start.elapsed().as_secs_f64();
    let after_build = ProcMemory::read();
    let v = w.ones_like()?;
    let mut times = Vec::with_capacity(products);
    for _ in 0..products.max(1) {
        let t = Instant::now();
        let hv = op.apply(&v)?;
        // Force the result (and its computation) to exist before timing stops.
        let _ = hv
            .sum_all()?
            .to_dtype(candle_core::DType::F64)?
            .to_scalar::<f64>()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let peak = ProcMemory::read();
    drop(op);
    times.sort_by(f64::total_cmp);
    let dim = obj.dim();
    Ok(OperatorMemory {
        dim,
        samples: obj.num_samples(),
        dtype: format!("{:?}", obj.dtype()).to_lowercase(),
        dense_f32_bytes: dense_hessian_bytes(dim, 4),
        dense_f64_bytes: dense_hessian_bytes(dim, 8),
        rss_before: before.map(|m| m.rss_bytes),
        retained_bytes: before
            .zip(after_build)
            .map(|(b, a)| a.rss_bytes.saturating_sub(b.rss_bytes)),
        working_bytes: before
            .zip(peak)
            .map(|(b, p)| p.hwm_bytes.saturating_sub(b.rss_bytes)),
        peak_reset,
        build_seconds,
        apply_seconds: times[times.len() / 2],
        products: times.len(),
    })
}
