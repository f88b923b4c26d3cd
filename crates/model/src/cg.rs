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
    /// Martens' progress rule (conjgrad_1.m): stop at iteration i once
    /// `i > k`, `φ_{i−k} < 0` and `(φ_i − φ_{i−k}) / φ_i < k·ε`, with the
    /// window `k = max(10, ⌈i/10⌉)`. `None` disables it.
    pub progress_eps: Option<f64>,
    /// Keep iterates for backtracking (the final one is always kept).
    pub keep_iterates: bool,
    /// Where the kept iterates start. `None` keeps this crate's original
    /// points 1, 2, 3, 4, 6, 8, 11, 15, 20, … (each ⌈1.3 × the previous⌉),
    /// so runs made before this option repeat exactly. `Some(s)` keeps
    /// Martens' ⌈s·1.3^j⌉, the unrounded point multiplied by 1.3 each time
    /// as conjgrad_1.m does; his s = 5 gives 5, 7, 9, 11, 15, 19, 25, …
    /// Starting at 5 spends no loss evaluations on the first iterates, which
    /// are rarely the best.
    pub first_save: Option<usize>,
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
            first_save: None,
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
            first_save: None,
        }
    }
}

/// The window of Martens' progress rule at iteration `i`: `max(10, ⌈i/10⌉)`.
/// The ceiling matters from i = 101 on (k = 11 there, not 10).
pub fn progress_window(i: usize) -> usize {
    10.max(i.div_ceil(10))
}

/// Whether Martens' relative-progress rule stops CG after the last entry of
/// `phis` (`phis[j]` = φ after iteration j, `phis[0]` at the start): over
/// the last k iterations φ fell by less than k·ε of its value.
pub fn progress_stalled(phis: &[f64], eps: f64) -> bool {
    let Some(i) = phis.len().checked_sub(1) else {
        return false;
    };
    let k = progress_window(i);
    if i <= k {
        return false;
    }
    let (phi, prev) = (phis[i], phis[i - k]);
    prev < 0.0 && (phi - prev) / phi < k as f64 * eps
}

/// The iterations whose iterates CG keeps (see [`CgOptions::first_save`]).
#[derive(Clone, Copy, Debug)]
struct SavePoints {
    first: Option<usize>,
    /// The next point, unrounded for Martens' schedule.
    next: f64,
}

impl SavePoints {
    fn new(first: Option<usize>) -> Self {
        Self {
            first,
            next: first.unwrap_or(1).max(1) as f64,
        }
    }

    /// Whether iteration `i` (counting from 1, called for each in turn) is
    /// kept; advances past it if so.
    fn keep(&mut self, i: usize) -> bool {
        let i = i as f64;
        match self.first {
            None => {
                if i < self.next {
                    return false;
                }
                while self.next <= i {
                    self.next = (self.next * 1.3).ceil();
                }
            }
            Some(_) => {
                if i != self.next.ceil() {
                    return false;
                }
                // For s ≥ 5 one step always clears i; smaller starts would
                // repeat a point (⌈1.3⌉ = ⌈1.69⌉ = 2), so repeats are skipped.
                while self.next.ceil() <= i {
                    self.next *= 1.3;
                }
            }
        }
        true
    }
}

/// The iterations CG keeps with `first_save`, up to `max_iters` (the final
/// iterate, always kept, aside).
pub fn save_points(first_save: Option<usize>, max_iters: usize) -> Vec<usize> {
    let mut points = SavePoints::new(first_save);
    (1..=max_iters).filter(|&i| points.keep(i)).collect()
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
/// worse than zero, φ(x0) ≥ 0); `minv` applies the preconditioner's
/// inverse `M⁻¹`, symmetric positive definite: a [`crate::linop::Diagonal`]
/// (Martens' `(diag + λ)^−¾`) or K-FAC's damped inverse.
pub fn conjugate_gradient(
    a: &dyn LinOp,
    b: &Tensor,
    x0: Option<&Tensor>,
    minv: Option<&dyn LinOp>,
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
            Some(m) => m.apply(r)?,
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
    let mut saves = SavePoints::new(opts.first_save);
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
            if opts.keep_iterates && saves.keep(i) {
                iterates.push(Iterate {
                    iter: i,
                    x: x.clone(),
                    phi,
                });
            }
            if residuals[i] <= opts.rel_tol * b_norm {
                stop = CgStop::Residual;
                break;
            }
            if let Some(eps) = opts.progress_eps
                && progress_stalled(&phis, eps)
            {
                stop = CgStop::Progress;
                break;
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
        let out = conjugate_gradient(
            &a,
            &b,
            None,
            Some(&crate::linop::Diagonal::new(minv)),
            &opts,
        )?;
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
            first_save: None,
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

    #[test]
    fn progress_window_is_martens_ceiling() {
        let k: Vec<usize> = [1, 10, 99, 100, 101, 110, 111, 250]
            .into_iter()
            .map(progress_window)
            .collect();
        assert_eq!(k, [10, 10, 10, 10, 11, 11, 12, 25]);
    }

    /// φ_j = −j up to j = 91, then flat at −91; ε = 5e-4. Up to i = 100 the
    /// window is 10 and the relative progress, 10/i or (101 − i)/91, is at
    /// least 1/91, above 10ε. At i = 101 the window is ⌈10.1⌉ = 11, and
    /// φ_90 = −90 gives 1/91 ≈ 0.011, above 11ε = 0.0055: CG goes on, where
    /// a window of ⌊i/10⌋ = 10 would see φ_91 = −91, no progress, and stop.
    /// At i = 102 the window reaches φ_91 = −91: stop.
    #[test]
    fn progress_rule_stops_where_the_hand_computed_sequence_says() {
        let phi = |j: usize| -(j.min(91) as f64);
        let stops: Vec<usize> = (0..=120)
            .filter(|&i| {
                let phis: Vec<f64> = (0..=i).map(phi).collect();
                progress_stalled(&phis, 5e-4)
            })
            .collect();
        assert_eq!(stops.first(), Some(&102));
        // A rise in φ over the window counts as no progress; a window that
        // starts at φ ≥ 0 (CG from zero) never stops.
        assert!(progress_stalled(&[-1.0; 12], 5e-4));
        let mut rising = vec![-2.0; 12];
        rising[11] = -1.0;
        assert!(progress_stalled(&rising, 5e-4));
        assert!(!progress_stalled(&[0.0; 30], 0.5));
        assert!(!progress_stalled(&[], 5e-4));
        // Steady progress of 10% of φ per step never stalls.
        let steady: Vec<f64> = (0..60).map(|j| -(1.1f64.powi(j))).collect();
        assert!(!progress_stalled(&steady, 5e-4));
    }

    /// The stop iteration of a real solve predicted from its φ sequence
    /// (read from runs capped at 1, 2, … iterations, which repeat the same
    /// arithmetic) with the rule written out here.
    #[test]
    fn cg_stops_at_the_predicted_progress_iteration() -> Result<()> {
        let d: Vec<f64> = (1..=300).map(|i| i as f64).collect();
        let a = diag(&d);
        let b = Tensor::ones(300, candle_core::DType::F64, &Device::Cpu)?;
        let capped = |max_iters| CgOptions {
            max_iters,
            rel_tol: 0.0,
            progress_eps: None,
            keep_iterates: false,
            first_save: None,
        };
        let eps = 5e-4;
        let mut phis = vec![0.0];
        let predicted = (1..=250)
            .find(|&i| {
                let out = conjugate_gradient(&a, &b, None, None, &capped(i)).unwrap();
                assert_eq!(out.iters, i);
                phis.push(out.phi);
                let k = 10.max(i.div_ceil(10));
                i > k && phis[i - k] < 0.0 && (phis[i] - phis[i - k]) / phis[i] < k as f64 * eps
            })
            .expect("the rule fires within 250 iterations");
        assert!(predicted > 11, "a real window: stopped at {predicted}");
        let out = conjugate_gradient(
            &a,
            &b,
            None,
            None,
            &CgOptions {
                progress_eps: Some(eps),
                ..capped(250)
            },
        )?;
        assert_eq!((out.stop, out.iters), (CgStop::Progress, predicted));
        Ok(())
    }

    #[test]
    fn save_points_default_and_martens() {
        assert_eq!(
            save_points(None, 60),
            [1, 2, 3, 4, 6, 8, 11, 15, 20, 26, 34, 45, 59]
        );
        // conjgrad_1.m: inext = 5, then inext·1.3 unrounded, kept at ⌈inext⌉.
        assert_eq!(
            save_points(Some(5), 250),
            [5, 7, 9, 11, 15, 19, 25, 32, 41, 54, 69, 90, 117, 152, 197]
        );
        // Small starts skip the repeated points instead of stalling.
        assert_eq!(save_points(Some(1), 12), [1, 2, 3, 4, 5, 7, 9, 11]);
    }
}
