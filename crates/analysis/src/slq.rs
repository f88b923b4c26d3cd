//! Spectral density by stochastic Lanczos quadrature (SLQ).
//!
//! For a unit start vector `q`, `m` Lanczos steps give the Gauss quadrature
//! rule `qᵀ f(A) q ≈ Σ_i τ_i² f(θ_i)` with nodes the Ritz values `θ_i` and
//! weights the squared first components `τ_i²` of `T_m`'s eigenvectors. With
//! `q = z/‖z‖` for a Rademacher `z`, `E[qᵀ f(A) q] = tr f(A)/n`, so averaging
//! the rules of several probes estimates the spectral density
//! `φ(t) = (1/n) Σ_j δ(t − λ_j)`; smoothing each node with a Gaussian gives a
//! curve to plot.

use candle_core::{DType, Device};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::{AnalysisError, Result};
use crate::lanczos::lanczos_from;
use crate::util::rademacher;
use hessfree_model::LinOp;

/// The quadrature nodes of all probes, each weight divided by the number of
/// probes so that the weights sum to 1.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SpectralNodes {
    /// `(node, weight)` pairs, sorted by node.
    pub nodes: Vec<(f64, f64)>,
    /// Rademacher start vectors used.
    pub probes: usize,
    /// Lanczos steps requested per probe; a probe takes fewer after a
    /// breakdown or when this exceeds the dimension.
    pub steps: usize,
    /// Products with the operator spent.
    pub products: usize,
}

impl SpectralNodes {
    /// `∫ t φ(t) dt · n`: the trace implied by the quadrature (an estimator
    /// of `tr(A)` with the same expectation as Hutchinson's).
    pub fn trace(&self, dim: usize) -> f64 {
        dim as f64 * self.nodes.iter().map(|(t, w)| t * w).sum::<f64>()
    }

    /// Fraction of the spectral mass at `|t| ≤ threshold`.
    pub fn mass_below(&self, threshold: f64) -> f64 {
        self.nodes
            .iter()
            .filter(|(t, _)| t.abs() <= threshold)
            .map(|(_, w)| w)
            .sum()
    }
}

/// SLQ with `probes` Rademacher start vectors and `steps` Lanczos steps each.
pub fn slq_density(
    op: &dyn LinOp,
    probes: usize,
    steps: usize,
    seed: u64,
    device: &Device,
    dtype: DType,
) -> Result<SpectralNodes> {
    if probes == 0 {
        return Err(AnalysisError::Invalid(
            "SLQ needs at least one probe".into(),
        ));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut nodes = Vec::new();
    let mut products = 0;
    for _ in 0..probes {
        let z = rademacher(&mut rng, op.dim());
        let run = lanczos_from(op, &z, steps, device, dtype)?;
        products += run.products;
        for (r, w) in run.ritz.iter().zip(&run.weights) {
            nodes.push((r.value, w / probes as f64));
        }
    }
    nodes.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(SpectralNodes {
        nodes,
        probes,
        steps,
        products,
    })
}

/// The nodes smoothed by Gaussians of standard deviation `sigma`, evaluated
/// on `points` equally spaced points spanning the nodes plus `3σ` on each
/// side. Returns `(t, density)` pairs; the density integrates to about 1.
pub fn gaussian_density(nodes: &[(f64, f64)], sigma: f64, points: usize) -> Vec<(f64, f64)> {
    if nodes.is_empty() || points < 2 || sigma.is_nan() || sigma <= 0.0 {
        return Vec::new();
    }
    let lo = nodes.first().map_or(0.0, |n| n.0) - 3.0 * sigma;
    let hi = nodes.last().map_or(0.0, |n| n.0) + 3.0 * sigma;
    let norm = 1.0 / (sigma * (2.0 * std::f64::consts::PI).sqrt());
    (0..points)
        .map(|i| {
            let t = lo + (hi - lo) * i as f64 / (points - 1) as f64;
            let d = nodes
                .iter()
                .map(|(x, w)| w * (-0.5 * ((t - x) / sigma).powi(2)).exp())
                .sum::<f64>()
                * norm;
            (t, d)
        })
        .collect()
}
