//! Linear operators over the flat parameter vector.
//!
//! Every curvature matrix in hessfree is only ever touched through products,
//! like faer's `LinOp`: CG, Lanczos and the argmin adapters take a
//! [`LinOp`] and never see a matrix. Operators do not count their
//! products: the solvers charge each product where they take it (their
//! problem's cost counters), which is the one count a report shows.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::Result;

/// A symmetric linear operator `v -> A v` on flat parameter vectors.
pub trait LinOp: Send + Sync {
    /// The dimension n of the (n x n) operator.
    fn dim(&self) -> usize;
    /// `A v` for a 1-D tensor `v` of length `dim()`.
    fn apply(&self, v: &Tensor) -> Result<Tensor>;
    /// Training samples touched by one application, for data-pass accounting
    /// (0 for data-free operators such as a regulariser's).
    fn samples_per_apply(&self) -> usize;
}

/// `(A + λI) v`: the Tikhonov-damped system that Newton-CG solves.
pub struct Damped {
    inner: Arc<dyn LinOp>,
    lambda: f64,
}

impl Damped {
    /// `inner + lambda·I`; `lambda = 0` passes products through unchanged.
    pub fn new(inner: Arc<dyn LinOp>, lambda: f64) -> Self {
        Self { inner, lambda }
    }

    /// The damping `λ` added to the diagonal.
    pub fn lambda(&self) -> f64 {
        self.lambda
    }
}

impl LinOp for Damped {
    fn dim(&self) -> usize {
        self.inner.dim()
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        let av = self.inner.apply(v)?;
        if self.lambda == 0.0 {
            return Ok(av);
        }
        Ok((av + v.affine(self.lambda, 0.0)?)?)
    }

    fn samples_per_apply(&self) -> usize {
        self.inner.samples_per_apply()
    }
}

/// `v ↦ d ⊙ v`: a diagonal operator, such as a diagonal preconditioner's
/// inverse.
pub struct Diagonal {
    d: Tensor,
}

impl Diagonal {
    /// The diagonal `d`, a 1-D tensor.
    pub fn new(d: Tensor) -> Self {
        Self { d }
    }
}

impl LinOp for Diagonal {
    fn dim(&self) -> usize {
        self.d.elem_count()
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        Ok((v * &self.d)?)
    }

    fn samples_per_apply(&self) -> usize {
        0
    }
}

/// The sum of operators, e.g. a data term plus a regulariser's Hessian.
pub struct Sum {
    terms: Vec<Arc<dyn LinOp>>,
}

impl Sum {
    /// The sum of `terms`, which must share one dimension (not checked);
    /// without terms, the zero operator of dimension 0.
    pub fn new(terms: Vec<Arc<dyn LinOp>>) -> Self {
        Self { terms }
    }
}

impl LinOp for Sum {
    fn dim(&self) -> usize {
        self.terms.first().map_or(0, |t| t.dim())
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        let mut acc: Option<Tensor> = None;
        for term in &self.terms {
            let tv = term.apply(v)?;
            acc = Some(match acc {
                None => tv,
                Some(a) => (a + tv)?,
            });
        }
        match acc {
            Some(a) => Ok(a),
            None => Ok(v.zeros_like()?),
        }
    }

    fn samples_per_apply(&self) -> usize {
        self.terms.iter().map(|t| t.samples_per_apply()).sum()
    }
}

/// Assembles the dense matrix of an operator by applying it to each unit
/// vector. O(n) products: meant for tiny models and tests only.
pub fn assemble_dense(op: &dyn LinOp, device: &Device, dtype: DType) -> Result<faer::Mat<f64>> {
    let n = op.dim();
    let mut m = faer::Mat::<f64>::zeros(n, n);
    let mut e = vec![0f64; n];
    for j in 0..n {
        e[j] = 1.0;
        let v = Tensor::from_slice(&e, n, device)?.to_dtype(dtype)?;
        let col = op.apply(&v)?.to_dtype(DType::F64)?.to_vec1::<f64>()?;
        for (i, x) in col.into_iter().enumerate() {
            m[(i, j)] = x;
        }
        e[j] = 0.0;
    }
    Ok(m)
}

/// Flat-vector helpers shared by CG, the solvers and the tests.
pub mod vec {
    use candle_core::{DType, Tensor};

    use crate::error::Result;

    /// `x · y` accumulated in f64 whatever the tensors' dtype.
    pub fn dot(x: &Tensor, y: &Tensor) -> Result<f64> {
        Ok((x * y)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?)
    }

    /// `‖x‖₂`, accumulated in f64.
    pub fn norm(x: &Tensor) -> Result<f64> {
        Ok(dot(x, x)?.sqrt())
    }

    /// `x + a·y`.
    pub fn axpy(x: &Tensor, a: f64, y: &Tensor) -> Result<Tensor> {
        Ok((x + y.affine(a, 0.0)?)?)
    }

    /// Whether every entry is finite (no NaN, no ±Inf).
    pub fn all_finite(x: &Tensor) -> Result<bool> {
        // NaN * 0 = NaN and Inf * 0 = NaN, so one reduction tells.
        let s = x
            .affine(0.0, 0.0)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?;
        Ok(s.is_finite())
    }
}
