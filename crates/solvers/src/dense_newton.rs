//! Newton's method with the Hessian formed: the baseline the notebook could
//! not afford, run as scikit-learn's `newton-cholesky` runs it. It assembles
//! the curvature on the whole training set (or on `hessian_batch` rows, a
//! cheaper sub-sampled variant, chosen by the caller), solves `(H + λI) d = −g`
//! with faer (Cholesky, falling back to a symmetric eigendecomposition with
//! |eigenvalues| floored when the matrix is not positive definite) and takes
//! an Armijo step.

use std::collections::BTreeMap;
use std::time::Instant;

use argmin::core::{KV, Problem, Solver};
use argmin::kv;
use candle_core::Tensor;
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};
use hessfree_model::linop::vec;
use serde::{Deserialize, Serialize};

use crate::argmin_glue::{HfState, hf_problem, init_state, take_point};
use crate::argmin_params::Params;
use crate::checkpoint::{Snapshot, SolverState};
use crate::error::{Result, SolverError};
use crate::line_search::{Armijo, armijo};
use crate::problem::HfProblem;
use crate::run::{Resumable, RunLabel, unsupported};

/// Dense Newton's settings, recorded with every run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DenseNewtonConfig {
    /// Rows of the sub-sample the Hessian is assembled on (`None`: all).
    pub hessian_batch: Option<usize>,
    /// `λ` added to the Hessian's diagonal before the solve; finite and `>= 0`.
    pub damping: f64,
    /// Armijo's sufficient-decrease constant `c`.
    pub armijo_c: f64,
    /// Factor the step shrinks by after each rejected trial.
    pub line_search_shrink: f64,
    /// Trials after the full step before the line search gives up.
    pub line_search_max_steps: usize,
}

impl Default for DenseNewtonConfig {
    fn default() -> Self {
        Self {
            hessian_batch: None,
            damping: 1e-8,
            armijo_c: 1e-4,
            line_search_shrink: 0.5,
            line_search_max_steps: 30,
        }
    }
}

/// Newton's method with the curvature assembled densely and solved by faer;
/// after a run, its public fields hold what it measured.
#[derive(Default)]
pub struct DenseNewton {
    config: DenseNewtonConfig,
    /// Bytes of the matrix formed (f64).
    pub hessian_bytes: u64,
    /// Seconds spent assembling the curvature, summed over iterations.
    pub assembly_seconds: f64,
    /// Seconds spent in the solves, summed over iterations.
    pub solve_seconds: f64,
    /// How many solves fell back to the eigendecomposition.
    pub eigen_fallbacks: u64,
}

impl DenseNewton {
    /// Dense Newton with `config`; refused for a negative or non-finite damping.
    pub fn new(config: DenseNewtonConfig) -> Result<Self> {
        if !(config.damping.is_finite() && config.damping >= 0.0) {
            return Err(SolverError::Config(format!(
                "dense-Newton damping must be finite and >= 0, got {}",
                config.damping
            )));
        }
        Ok(Self {
            config,
            ..Default::default()
        })
    }

    /// Solves (H + λI) d = −g; returns d and whether Cholesky succeeded.
    fn solve(&mut self, mut h: Mat<f64>, g: &[f64]) -> Result<(Vec<f64>, bool)> {
        let n = g.len();
        for i in 0..n {
            h[(i, i)] += self.config.damping;
        }
        let rhs = Mat::from_fn(n, 1, |i, _| -g[i]);
        if let Ok(llt) = h.llt(Side::Lower) {
            let d = llt.solve(&rhs);
            let d: Vec<f64> = (0..n).map(|i| d[(i, 0)]).collect();
            if d.iter().all(|x| x.is_finite()) {
                return Ok((d, true));
            }
        }
        self.eigen_fallbacks += 1;
        let eig = h.self_adjoint_eigen(Side::Lower).map_err(|e| {
            SolverError::Dense(format!("symmetric eigendecomposition failed: {e:?}"))
        })?;
        let s = eig.S();
        let u = eig.U();
        let max = (0..n).map(|i| s[i].abs()).fold(0.0, f64::max);
        let floor = (max * 1e-10).max(f64::MIN_POSITIVE);
        // d = −U |S|⁻¹ Uᵀ g, dropping the (numerically) null directions.
        let ut_g = u.transpose() * &rhs;
        let scaled = Mat::from_fn(n, 1, |i, _| {
            let l = s[i].abs();
            if l > floor { ut_g[(i, 0)] / l } else { 0.0 }
        });
        let d = u * &scaled;
        Ok(((0..n).map(|i| d[(i, 0)]).collect(), false))
    }

    fn step(
        &mut self,
        prob: &HfProblem,
        w: Tensor,
        g: Tensor,
        f: f64,
    ) -> Result<(Tensor, Tensor, f64, KV)> {
        let curv = prob.curvature_objective();
        let t = Instant::now();
        prob.counters().touch(curv.num_samples());
        let h = curv.dense_curvature(&w, prob.kind())?;
        let assembly = t.elapsed().as_secs_f64();
        self.assembly_seconds += assembly;
        self.hessian_bytes = (h.nrows() * h.ncols() * std::mem::size_of::<f64>()) as u64;
        let t = Instant::now();
        let g_host = g.to_dtype(candle_core::DType::F64)?.to_vec1::<f64>()?;
        let (d, cholesky) = self.solve(h, &g_host)?;
        let solve = t.elapsed().as_secs_f64();
        self.solve_seconds += solve;
        let d = Tensor::from_vec(d, g_host.len(), w.device())?.to_dtype(w.dtype())?;
        let gd = vec::dot(&g, &d)?;
        let ls = Armijo {
            c: self.config.armijo_c,
            shrink: self.config.line_search_shrink,
            max_steps: self.config.line_search_max_steps,
        };
        let kv = kv!(
            "assembly_seconds" => assembly;
            "solve_seconds" => solve;
            "cholesky" => cholesky;
        );
        if gd.is_nan() || gd >= 0.0 {
            return Err(SolverError::Diverged(format!(
                "the dense Newton direction is not a descent direction (gᵀd = {gd:e})"
            )));
        }
        match armijo(prob, &w, &d, f, gd, None, ls)? {
            Some((alpha, _)) => {
                let w_new = vec::axpy(&w, alpha, &d)?;
                let (f_new, g_new) = prob.loss_and_grad(&w_new)?;
                if !f_new.is_finite() || !vec::all_finite(&g_new)? {
                    return Err(SolverError::Diverged(
                        "non-finite objective after a dense Newton step".into(),
                    ));
                }
                Ok((w_new, g_new, f_new, kv.merge(kv!("step_size" => alpha;))))
            }
            None => Err(SolverError::Diverged(
                "the line search found no decrease along the dense Newton direction".into(),
            )),
        }
    }
}

impl Solver<HfProblem, HfState> for DenseNewton {
    fn name(&self) -> &str {
        "dense Newton"
    }

    fn init(
        &mut self,
        problem: &mut Problem<HfProblem>,
        state: HfState,
    ) -> Result<(HfState, Option<KV>), argmin::core::Error> {
        Ok((init_state(problem, state)?, None))
    }

    fn next_iter(
        &mut self,
        problem: &mut Problem<HfProblem>,
        mut state: HfState,
    ) -> Result<(HfState, Option<KV>), argmin::core::Error> {
        let (w, g, f) = take_point(&mut state)?;
        let (w, g, f, kv) = self.step(hf_problem(problem)?, w, g, f)?;
        Ok((state.param(Params(w)).gradient(Params(g)).cost(f), Some(kv)))
    }
}

/// Not checkpointed: a dense run is a handful of iterations, each one
/// assembly and one solve, so nothing has asked for it yet.
impl Resumable<HfState> for DenseNewton {
    fn label(&self) -> RunLabel {
        RunLabel::new("dense-newton", &self.config)
    }

    fn checkpointable(&self) -> bool {
        false
    }

    fn save_state(&self, _: &mut Snapshot) -> Result<SolverState> {
        Err(unsupported("dense Newton"))
    }

    fn resume(&mut self, _: &mut Problem<HfProblem>, _: &Snapshot, _: HfState) -> Result<HfState> {
        Err(unsupported("dense Newton"))
    }

    fn extras(&self) -> BTreeMap<String, f64> {
        BTreeMap::from([
            ("hessian_bytes".to_string(), self.hessian_bytes as f64),
            ("assembly_seconds".to_string(), self.assembly_seconds),
            ("solve_seconds".to_string(), self.solve_seconds),
            ("eigen_fallbacks".to_string(), self.eigen_fallbacks as f64),
        ])
    }
}
