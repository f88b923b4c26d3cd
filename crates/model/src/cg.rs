//! Preconditioned conjugate gradients on a [`LinOp`], with the stopping
//! rules Hessian-free optimisation needs, returning counts and residuals
//! (like faer's CG) and the iterates that CG backtracking revisits.

use candle_core::Tensor;

use crate::error::{ModelError, Result};
use crate::linop::{LinOp, vec};

/// How far [`conjugate_gradient`] runs. The default is Hessian-free's: Martens'
/// (2010) progress rule, and iterates kept for backtracking.
#[derive(Clone, Debug, PartialEq)]
pub struct CgOptions {
    /// Iterations at most, each one product with the operator.
    pub max_iters: usize,
    /// Stop when ‖r‖ ≤ rel_tol · ‖b‖ (the forcing term).
    pub rel_tol: f64,
    /// Martens' progress rule: stop at iteration i once
    /// `(φ_i − φ_{i−k}) / φ_i < k·ε` with `k = max(10, i/10)`. `None` disables it.
    pub progress_eps: Option<f64>,
    /// Keep iterates at i = ⌈1.3^j⌉ for backtracking.
    pub keep_iterates: bool,
}

impl CgOptions {
    /// Plain CG to a relative residual: no progress rule and no kept
    /// iterates, for measuring how many products a system needs.
    pub fn plain(rel_tol: f64, max_iters: usize) -> Self {
        Self {
            max_iters,
            rel_tol,
            progress_eps: None,
            keep_iterates: false,
        }
    }
}

impl Default for CgOptions {
    fn default() -> Self {
        Self {
            max_iters: 250,
            rel_tol: 0.1,
            progress_eps: Some(5e-4),
            keep_iterates: true,
        }
    }
}

/// Why [`conjugate_gradient`] stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CgStop {
    /// ‖r‖ reached `rel_tol · ‖b‖` (or `b` is zero).
    Residual,
    /// Martens' progress rule fired: `φ` was no longer decreasing fast enough.
    Progress,
    /// [`CgOptions::max_iters`] iterations were spent.
    MaxIters,
    /// pᵀAp ≤ 0: the operator is not positive definite along p.
    NegativeCurvature,
}

/// One kept iterate: `x_i` and its quadratic-model value `φ(x_i)`.
#[derive(Clone, Debug)]
pub struct Iterate {
    /// The CG iteration it was taken after (0: the start).
    pub iter: usize,
    /// The iterate.
    pub x: Tensor,
    /// `φ(x) = ½ xᵀAx − bᵀx`.
    pub phi: f64,
}

/// What [`conjugate_gradient`] returns.
#[derive(Clone, Debug)]
pub struct CgOutcome {
    /// The final iterate.
    pub x: Tensor,
    /// `φ(x) = ½ xᵀAx − bᵀx` at the final iterate.
    pub phi: f64,
    /// Iterations taken; the steepest-descent fallback after negative
    /// curvature at the first one counts as one.
    pub iters: usize,
    /// ‖r_i‖ after each iteration (index 0: the starting residual).
    pub residuals: Vec<f64>,
    /// Why CG stopped.
    pub stop: CgStop,
    /// On [`CgStop::NegativeCurvature`], the Rayleigh quotient pᵀAp / pᵀp
    /// of the offending direction (≤ 0).
    pub negative_curvature: Option<f64>,
    /// Iterates kept for backtracking, in increasing iteration order; the
    /// final iterate is always last.
    pub iterates: Vec<Iterate>,
}

impl CgOutcome {
    /// Products spent on search directions: one per completed iteration,
    /// plus the one that found negative curvature, if any.
    pub fn direction_products(&self) -> usize {
        match self.stop {
            CgStop::NegativeCurvature => self.residuals.len(),
            _ => self.iters,
        }
    }
}

/// Solves `A x = b` approximately. `x0` warm-starts (it is dropped if it is
/// worse than zero, φ(x0) ≥ 0); `minv` is the inverse diagonal preconditioner.
pub fn conjugate_gradient(
    a: &dyn LinOp,
    b: &Tensor,
    x0: Option<&Tensor>,
    minv: Option<&Tensor>,
    opts: &CgOptions,
) -> Result<CgOutcome> {
    if b.elem_count() != a.dim() {
        return Err(ModelError::Batch(format!(
            "CG right-hand side has {} entries, the operator has dimension {}",
            b.elem_count(),
            a.dim()
        )));
    }
    let b_norm = vec::norm(b)?;
    // r = A x − b, φ(x) = ½ xᵀ(r − b).
    let (mut x, mut r) = match x0 {
        Some(x0) => {
            let r = (a.apply(x0)? - b)?;
            let phi = 0.5 * vec::dot(x0, &(&r - b)?)?;
            if phi < 0.0 {
                (x0.clone(), r)
            } else {
                (b.zeros_like()?, b.neg()?)
            }
        }
        None => (b.zeros_like()?, b.neg()?),
    };
    let precondition = |r: &Tensor| -> Result<Tensor> {
        Ok(match minv {
            Some(m) => (r * m)?,
            None => r.clone(),
        })
    };
    let mut z = precondition(&r)?;
    let mut p = z.neg()?;
    let mut rz = vec::dot(&r, &z)?;
    let mut phi = 0.5 * vec::dot(&x, &(&r - b)?)?;
    let mut phis = vec![phi];
    let mut residuals = vec![vec::norm(&r)?];
    let mut iterates = Vec::new();
    let mut next_keep = 1.0f64;
    let mut stop = CgStop::MaxIters;
    let mut negative_curvature = None;
    let mut iters = 0;

    if residuals[0] <= opts.rel_tol * b_norm || b_norm == 0.0 {
        stop = CgStop::Residual;
    } else {
        for i in 1..=opts.max_iters {
            let ap = a.apply(&p)?;
            let pap = vec::dot(&p, &ap)?;
            if pap.is_nan() || pap <= 0.0 {
                stop = CgStop::NegativeCurvature;
                negative_curvature = Some(pap / vec::dot(&p, &p)?.max(f64::MIN_POSITIVE));
                if i == 1 && vec::norm(&x)? == 0.0 {
                    // Nothing solved yet: take the (preconditioned) steepest
                    // descent direction with a Cauchy-like length.
                    let scale = rz / pap.abs().max(f64::MIN_POSITIVE);
                    x = p.affine(if scale.is_finite() { scale } else { 1.0 }, 0.0)?;
                    let ax = a.apply(&x)?;
                    phi = 0.5 * vec::dot(&x, &ax)? - vec::dot(b, &x)?;
                    iters = i;
                }
                break;
            }
            iters = i;
            let alpha = rz / pap;
            x = vec::axpy(&x, alpha, &p)?;
            r = vec::axpy(&r, alpha, &ap)?;
            z = precondition(&r)?;
            let rz_new = vec::dot(&r, &z)?;
            p = vec::axpy(&z.neg()?, rz_new / rz, &p)?;
            rz = rz_new;
            phi = 0.5 * vec::dot(&x, &(&r - b)?)?;
            phis.push(phi);
            residuals.push(vec::norm(&r)?);
            if opts.keep_iterates && i as f64 >= next_keep {
                iterates.push(Iterate {
                    iter: i,
                    x: x.clone(),
                    phi,
                });
                while next_keep <= i as f64 {
                    next_keep = (next_keep * 1.3).ceil();
                }
            }
            if residuals[i] <= opts.rel_tol * b_norm {
                stop = CgStop::Residual;
                break;
            }
            if let Some(eps) = opts.progress_eps {
                let k = 10.max(i / 10);
                if i > k && phi < 0.0 && (phi - phis[i - k]) / phi < k as f64 * eps {
                    stop = CgStop::Progress;
                    break;
                }
            }
        }
    }
    if iterates.last().map(|it| it.iter) != Some(iters) {
        iterates.push(Iterate {
            iter: iters,
            x: x.clone(),
            phi,
        });
    }
    Ok(CgOutcome {
        x,
        phi,
        iters,
        residuals,
        stop,
        negative_curvature,
        iterates,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A diagonal operator diag(d) that counts its products.
    struct Diag(Tensor, AtomicUsize);

    impl LinOp for Diag {
        fn dim(&self) -> usize {
            self.0.elem_count()
        }
        fn apply(&self, v: &Tensor) -> Result<Tensor> {
            self.1.fetch_add(1, Ordering::Relaxed);
            Ok((v * &self.0)?)
        }
        fn samples_per_apply(&self) -> usize {
            0
        }
    }

    fn diag(d: &[f64]) -> Diag {
        Diag(Tensor::new(d, &Device::Cpu).unwrap(), AtomicUsize::new(0))
    }

    #[test]
    fn solves_spd_system_in_at_most_n_steps() -> Result<()> {
        let a = diag(&[1.0, 2.0, 3.0, 4.0]);
        let b = Tensor::new(&[1f64, 1., 1., 1.], &Device::Cpu)?;
        let opts = CgOptions {
            rel_tol: 1e-12,
            progress_eps: None,
            ..Default::default()
        };
        let out = conjugate_gradient(&a, &b, None, None, &opts)?;
        assert_eq!(out.stop, CgStop::Residual);
        assert!(out.iters <= 4);
        let x = out.x.to_vec1::<f64>()?;
        for (xi, di) in x.iter().zip([1.0, 2.0, 3.0, 4.0]) {
            assert!((xi - 1.0 / di).abs() < 1e-12);
        }
        // φ at the solution is −½ bᵀA⁻¹b.
        let expect = -0.5 * (1.0 + 0.5 + 1.0 / 3.0 + 0.25);
        assert!((out.phi - expect).abs() < 1e-12);
        assert_eq!(out.residuals.len(), out.iters + 1);
        assert_eq!(out.iterates.last().unwrap().iter, out.iters);
        Ok(())
    }

    #[test]
    fn exact_preconditioner_converges_in_one_step() -> Result<()> {
        let a = diag(&[1.0, 10.0, 100.0, 1000.0]);
        let b = Tensor::new(&[1f64, 2., 3., 4.], &Device::Cpu)?;
        let minv = Tensor::new(&[1f64, 0.1, 0.01, 0.001], &Device::Cpu)?;
        let opts = CgOptions {
            rel_tol: 1e-12,
            ..Default::default()
        };
        let out = conjugate_gradient(&a, &b, None, Some(&minv), &opts)?;
        assert_eq!(out.iters, 1);
        Ok(())
    }

    #[test]
    fn negative_curvature_stops_and_max_iters_caps() -> Result<()> {
        let a = diag(&[1.0, -1.0]);
        let b = Tensor::new(&[1f64, 1.], &Device::Cpu)?;
        let out = conjugate_gradient(&a, &b, None, None, &CgOptions::default())?;
        assert_eq!(out.stop, CgStop::NegativeCurvature);
        // The direction returned still decreases bᵀx (a descent direction for f with g = −b).
        assert!(vec::dot(&b, &out.x)? > 0.0);

        let a = diag(&(1..=50).map(|i| i as f64).collect::<Vec<_>>());
        let b = Tensor::ones(50, candle_core::DType::F64, &Device::Cpu)?;
        let opts = CgOptions {
            max_iters: 5,
            rel_tol: 1e-14,
            progress_eps: None,
            keep_iterates: true,
        };
        let out = conjugate_gradient(&a, &b, None, None, &opts)?;
        assert_eq!((out.stop, out.iters), (CgStop::MaxIters, 5));
        assert_eq!(a.1.load(Ordering::Relaxed), 5, "one product per iteration");
        let kept: Vec<usize> = out.iterates.iter().map(|i| i.iter).collect();
        assert_eq!(kept, vec![1, 2, 3, 4, 5]);
        // φ decreases monotonically along CG iterates.
        assert!(out.iterates.windows(2).all(|w| w[1].phi <= w[0].phi));
        Ok(())
    }

    #[test]
    fn warm_start_is_used_only_when_better_than_zero() -> Result<()> {
        let a = diag(&[2.0, 2.0]);
        let b = Tensor::new(&[2f64, 2.], &Device::Cpu)?;
        let exact = Tensor::new(&[1f64, 1.], &Device::Cpu)?;
        let opts = CgOptions {
            rel_tol: 1e-12,
            ..Default::default()
        };
        let out = conjugate_gradient(&a, &b, Some(&exact), None, &opts)?;
        assert_eq!(out.iters, 0, "the warm start already solves it");
        let bad = Tensor::new(&[-5f64, -5.], &Device::Cpu)?;
        let out = conjugate_gradient(&a, &b, Some(&bad), None, &opts)?;
        assert!((out.x.to_vec1::<f64>()?[0] - 1.0).abs() < 1e-12);
        Ok(())
    }
}
