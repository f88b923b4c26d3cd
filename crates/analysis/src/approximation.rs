//! How well one symmetric curvature matrix stands in for another, on models
//! small enough to assemble: the K-FAC matrix for the Gauss-Newton matrix,
//! say. Two questions matter to a user. Is the approximation close
//! (relative Frobenius error, eigenvalues side by side)? And, used as a
//! preconditioner, does it help CG (the condition number of the
//! preconditioned damped system, which bounds CG's convergence rate)?
//!
//! The matrices come from [`hessfree_model::linop::assemble_dense`] applied
//! to the operators themselves, so what is compared is what the solvers
//! multiply by.

use faer::{Mat, MatRef, Side};

use crate::error::{AnalysisError, Result};
use crate::rank::symmetric_eigenvalues;

/// `‖approx − exact‖_F / ‖exact‖_F`.
pub fn relative_frobenius(approx: MatRef<'_, f64>, exact: MatRef<'_, f64>) -> Result<f64> {
    if approx.nrows() != exact.nrows() || approx.ncols() != exact.ncols() {
        return Err(AnalysisError::Invalid(format!(
            "comparing a {}x{} matrix with a {}x{} one",
            approx.nrows(),
            approx.ncols(),
            exact.nrows(),
            exact.ncols()
        )));
    }
    let den = exact.norm_l2();
    if den == 0.0 {
        return Err(AnalysisError::Invalid(
            "relative error against a zero matrix".into(),
        ));
    }
    Ok((approx - exact).norm_l2() / den)
}

/// The diagonal blocks of `m` of the given `sizes` (in order, summing to
/// its order), zero elsewhere: the part of a matrix that a block-diagonal
/// approximation such as K-FAC can represent at all.
pub fn block_diagonal(m: MatRef<'_, f64>, sizes: &[usize]) -> Result<Mat<f64>> {
    let n = m.nrows();
    if sizes.iter().sum::<usize>() != n || m.ncols() != n {
        return Err(AnalysisError::Invalid(format!(
            "blocks of sizes {sizes:?} do not tile a {}x{} matrix",
            m.nrows(),
            m.ncols()
        )));
    }
    let mut block_of = Vec::with_capacity(n);
    for (b, &s) in sizes.iter().enumerate() {
        block_of.extend(std::iter::repeat_n(b, s));
    }
    Ok(Mat::from_fn(n, n, |i, j| {
        if block_of[i] == block_of[j] {
            m[(i, j)]
        } else {
            0.0
        }
    }))
}

/// Eigenvalues of a symmetric matrix, largest first.
pub fn descending_eigenvalues(m: MatRef<'_, f64>) -> Result<Vec<f64>> {
    let mut s = symmetric_eigenvalues(m)?;
    s.reverse();
    Ok(s)
}

/// A preconditioner `s + γI` for the damped system `c + γI` (`s` the
/// matrix whose damped inverse CG applies, K-FAC's say), kept as the
/// eigendecomposition of `s`, so that any damping costs one product and
/// no further decomposition.
pub struct SpdPreconditioner {
    q: Mat<f64>,
    values: Vec<f64>,
}

impl SpdPreconditioner {
    /// Decomposes the symmetric `s`.
    pub fn new(s: MatRef<'_, f64>) -> Result<Self> {
        let e = s
            .self_adjoint_eigen(Side::Lower)
            .map_err(|e| AnalysisError::Eigen {
                dim: s.nrows(),
                message: format!("{e:?}"),
            })?;
        Ok(Self {
            q: e.U().to_owned(),
            values: (0..s.nrows()).map(|i| e.S()[i]).collect(),
        })
    }

    /// The condition number of `S^{-1/2} (c + γI) S^{-1/2}` with `S = s +
    /// γI`: its eigenvalues are those of the preconditioned system
    /// `S⁻¹(c + γI)`. Refused if `S` is not positive definite.
    pub fn condition_of(&self, c: MatRef<'_, f64>, gamma: f64) -> Result<f64> {
        let min = self.values.iter().copied().fold(f64::INFINITY, f64::min) + gamma;
        if min.is_nan() || min <= 0.0 {
            return Err(AnalysisError::Invalid(format!(
                "the preconditioner is not positive definite: smallest eigenvalue {min:e} \
                 with the damping {gamma:e}"
            )));
        }
        let q = self.q.as_ref();
        let r = Mat::from_fn(q.nrows(), q.ncols(), |i, j| {
            q[(i, j)] * (self.values[j] + gamma).powf(-0.5)
        }) * q.transpose();
        let mut damped = c.to_owned();
        for i in 0..damped.nrows() {
            damped[(i, i)] += gamma;
        }
        let m = &r * &damped * &r;
        condition_number(&symmetric_eigenvalues(m.as_ref())?)
    }
}

/// The condition number of `D^{-1/2} (c + γI) D^{-1/2}` with `D =
/// diag(c) + γI`: the Jacobi preconditioner, the exact diagonal that
/// hessfree's diagonal preconditioner estimates.
pub fn jacobi_condition(c: MatRef<'_, f64>, gamma: f64) -> Result<f64> {
    let n = c.nrows();
    let d: Vec<f64> = (0..n).map(|i| (c[(i, i)] + gamma).powf(-0.5)).collect();
    let m = Mat::from_fn(n, n, |i, j| {
        d[i] * (c[(i, j)] + if i == j { gamma } else { 0.0 }) * d[j]
    });
    condition_number(&symmetric_eigenvalues(m.as_ref())?)
}

/// The condition number of `c + γI`, unpreconditioned.
pub fn damped_condition_dense(eigenvalues: &[f64], gamma: f64) -> Result<f64> {
    let shifted: Vec<f64> = eigenvalues.iter().map(|v| v + gamma).collect();
    condition_number(&shifted)
}

fn condition_number(values: &[f64]) -> Result<f64> {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    if min.is_nan() || min <= 0.0 {
        return Err(AnalysisError::Invalid(format!(
            "a damped system with eigenvalue {min:e} ≤ 0 has no condition number"
        )));
    }
    Ok(max / min)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spd(n: usize, seed: u64) -> Mat<f64> {
        let mut state = seed;
        let mut next = || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 11) as f64 / (1u64 << 53) as f64) - 0.5
        };
        let b = Mat::from_fn(n, n, |_, _| next());
        &b * b.transpose()
    }

    #[test]
    fn relative_frobenius_and_blocks() -> Result<()> {
        let a = spd(5, 1);
        assert_eq!(relative_frobenius(a.as_ref(), a.as_ref())?, 0.0);
        let twice = &a * faer::Scale(2.0);
        assert!((relative_frobenius(twice.as_ref(), a.as_ref())? - 1.0).abs() < 1e-14);
        let b = block_diagonal(a.as_ref(), &[2, 3])?;
        assert_eq!(b[(0, 1)], a[(0, 1)]);
        assert_eq!(b[(3, 4)], a[(3, 4)]);
        assert_eq!(b[(1, 2)], 0.0);
        assert_eq!(b[(4, 0)], 0.0);
        assert!(block_diagonal(a.as_ref(), &[2, 2]).is_err());
        assert!(relative_frobenius(a.as_ref(), Mat::<f64>::zeros(5, 5).as_ref()).is_err());
        Ok(())
    }

    /// Preconditioning by the matrix itself gives condition 1; by the
    /// identity, the plain condition number; Jacobi on a diagonal matrix, 1.
    #[test]
    fn preconditioned_conditions_at_the_extremes() -> Result<()> {
        let c = spd(6, 2);
        let gamma = 1e-2;
        let values = descending_eigenvalues(c.as_ref())?;
        assert!(values.windows(2).all(|p| p[0] >= p[1]));
        let plain = damped_condition_dense(&values, gamma)?;
        let itself = SpdPreconditioner::new(c.as_ref())?.condition_of(c.as_ref(), gamma)?;
        assert!((itself - 1.0).abs() < 1e-10, "{itself}");
        let identity = Mat::<f64>::identity(6, 6);
        let none = SpdPreconditioner::new(identity.as_ref())?.condition_of(c.as_ref(), gamma)?;
        assert!((none - plain).abs() < 1e-8 * plain, "{none} vs {plain}");
        let diag = Mat::from_fn(6, 6, |i, j| if i == j { (i + 1) as f64 } else { 0.0 });
        assert!((jacobi_condition(diag.as_ref(), gamma)? - 1.0).abs() < 1e-12);
        assert!(jacobi_condition(c.as_ref(), gamma)? > 1.0);
        let neg = &identity * faer::Scale(-1.0);
        assert!(
            SpdPreconditioner::new(neg.as_ref())?
                .condition_of(c.as_ref(), 0.5)
                .is_err()
        );
        Ok(())
    }
}
