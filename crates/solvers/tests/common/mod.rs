//! Small test objectives with known minimisers.
#![allow(dead_code)]

pub mod runs;

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use hessfree_model::{CurvatureKind, LinOp, Objective, ParamKind, ParamLayout, Result};

pub fn layout(n: usize) -> ParamLayout {
    ParamLayout::new([("layer0.weight".to_string(), vec![n, 1], ParamKind::Weight)])
}

pub fn t(v: &[f64]) -> Tensor {
    Tensor::new(v, &Device::Cpu).unwrap()
}

/// f(w) = ½ wᵀ diag(a) w − bᵀw, plus NaN where ‖w‖ > `nan_radius`.
pub struct Quadratic {
    pub layout: ParamLayout,
    pub a: Tensor,
    pub b: Tensor,
    pub nan_radius: f64,
}

impl Quadratic {
    pub fn new(a: &[f64], b: &[f64]) -> Self {
        Self {
            layout: layout(a.len()),
            a: t(a),
            b: t(b),
            nan_radius: f64::INFINITY,
        }
    }

    pub fn minimiser(&self) -> Vec<f64> {
        let a = self.a.to_vec1::<f64>().unwrap();
        let b = self.b.to_vec1::<f64>().unwrap();
        a.iter().zip(&b).map(|(a, b)| b / a).collect()
    }

    fn poisoned(&self, w: &Tensor) -> Result<bool> {
        Ok(hessfree_model::linop::vec::norm(w)? > self.nan_radius)
    }
}

struct DiagOp(Tensor);

impl LinOp for DiagOp {
    fn dim(&self) -> usize {
        self.0.elem_count()
    }
    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        Ok((v * &self.0)?)
    }
    fn samples_per_apply(&self) -> usize {
        1
    }
}

impl Objective for Quadratic {
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    fn device(&self) -> &Device {
        self.a.device()
    }
    fn dtype(&self) -> DType {
        DType::F64
    }
    fn num_samples(&self) -> usize {
        1
    }
    fn loss(&self, w: &Tensor) -> Result<f64> {
        if self.poisoned(w)? {
            return Ok(f64::NAN);
        }
        let aw = (w * &self.a)?;
        Ok(0.5 * (w * aw)?.sum_all()?.to_scalar::<f64>()?
            - (w * &self.b)?.sum_all()?.to_scalar::<f64>()?)
    }
    fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        let g = ((w * &self.a)? - &self.b)?;
        if self.poisoned(w)? {
            return Ok((f64::NAN, g.affine(0.0, f64::NAN)?));
        }
        Ok((self.loss(w)?, g))
    }
    fn curvature(&self, _w: &Tensor, _kind: CurvatureKind) -> Result<Arc<dyn LinOp>> {
        Ok(Arc::new(DiagOp(self.a.clone())))
    }
    fn diag_curvature(&self, _w: &Tensor) -> Result<Tensor> {
        Ok(self.a.clone())
    }
    fn subsample(&self, _indices: &[usize]) -> Result<Arc<dyn Objective>> {
        Ok(Arc::new(Quadratic {
            layout: self.layout.clone(),
            a: self.a.clone(),
            b: self.b.clone(),
            nan_radius: self.nan_radius,
        }))
    }
}

/// Rosenbrock's function (1 − x)² + 100 (y − x²)², minimiser (1, 1).
pub struct Rosenbrock {
    pub layout: ParamLayout,
}

impl Rosenbrock {
    pub fn new() -> Self {
        Self { layout: layout(2) }
    }
}

fn xy(w: &Tensor) -> Result<(f64, f64)> {
    let v = w.to_vec1::<f64>()?;
    Ok((v[0], v[1]))
}

struct RosenbrockHessian([f64; 3]);

impl LinOp for RosenbrockHessian {
    fn dim(&self) -> usize {
        2
    }
    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        let (a, b) = xy(v)?;
        let [hxx, hxy, hyy] = self.0;
        Ok(t(&[hxx * a + hxy * b, hxy * a + hyy * b]))
    }
    fn samples_per_apply(&self) -> usize {
        1
    }
}

impl Objective for Rosenbrock {
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    fn device(&self) -> &Device {
        &Device::Cpu
    }
    fn dtype(&self) -> DType {
        DType::F64
    }
    fn num_samples(&self) -> usize {
        1
    }
    fn loss(&self, w: &Tensor) -> Result<f64> {
        let (x, y) = xy(w)?;
        Ok((1.0 - x).powi(2) + 100.0 * (y - x * x).powi(2))
    }
    fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        let (x, y) = xy(w)?;
        let g = t(&[
            -2.0 * (1.0 - x) - 400.0 * x * (y - x * x),
            200.0 * (y - x * x),
        ]);
        Ok((self.loss(w)?, g))
    }
    fn curvature(&self, w: &Tensor, _kind: CurvatureKind) -> Result<Arc<dyn LinOp>> {
        let (x, y) = xy(w)?;
        let h = [2.0 - 400.0 * (y - x * x) + 800.0 * x * x, -400.0 * x, 200.0];
        Ok(Arc::new(RosenbrockHessian(h)))
    }
    fn diag_curvature(&self, w: &Tensor) -> Result<Tensor> {
        let (x, y) = xy(w)?;
        Ok(t(&[
            (2.0 - 400.0 * (y - x * x) + 800.0 * x * x).abs(),
            200.0,
        ]))
    }
    fn subsample(&self, _indices: &[usize]) -> Result<Arc<dyn Objective>> {
        Ok(Arc::new(Rosenbrock::new()))
    }
}

/// Least squares over rows, f(w) = (1/2n) Σᵢ (xᵢ·w − yᵢ)², with a sample per
/// row so that mini-batch solvers draw real batches. Computed in plain f64
/// loops ([`least_squares_grad`]), which the tests' reference iterations call
/// too.
pub struct LeastSquares {
    pub layout: ParamLayout,
    pub x: Vec<Vec<f64>>,
    pub y: Vec<f64>,
}

impl LeastSquares {
    pub fn new(x: Vec<Vec<f64>>, y: Vec<f64>) -> Self {
        Self {
            layout: layout(x[0].len()),
            x,
            y,
        }
    }

    /// `rows` rows of `dim` fixed, varied entries (no randomness needed).
    pub fn fixture(rows: usize, dim: usize) -> Self {
        let x = (0..rows)
            .map(|i| {
                (0..dim)
                    .map(|j| ((i * 7 + j * 3) % 11) as f64 / 5.0 - 1.0)
                    .collect()
            })
            .collect();
        let y = (0..rows).map(|i| (i % 4) as f64 - 1.5).collect();
        Self::new(x, y)
    }

    pub fn rows(&self) -> usize {
        self.y.len()
    }
}

/// The loss and gradient of [`LeastSquares`] on the rows `idx` at `w`.
pub fn least_squares_grad(x: &[Vec<f64>], y: &[f64], idx: &[usize], w: &[f64]) -> (f64, Vec<f64>) {
    let n = idx.len() as f64;
    let mut loss = 0.0;
    let mut g = vec![0.0; w.len()];
    for &i in idx {
        let r: f64 = x[i].iter().zip(w).map(|(a, b)| a * b).sum::<f64>() - y[i];
        loss += 0.5 * r * r / n;
        for (gj, xj) in g.iter_mut().zip(&x[i]) {
            *gj += r * xj / n;
        }
    }
    (loss, g)
}

impl Objective for LeastSquares {
    fn layout(&self) -> &ParamLayout {
        &self.layout
    }
    fn device(&self) -> &Device {
        &Device::Cpu
    }
    fn dtype(&self) -> DType {
        DType::F64
    }
    fn num_samples(&self) -> usize {
        self.rows()
    }
    fn loss(&self, w: &Tensor) -> Result<f64> {
        Ok(self.loss_and_grad(w)?.0)
    }
    fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        let all: Vec<usize> = (0..self.rows()).collect();
        let (f, g) = least_squares_grad(&self.x, &self.y, &all, &w.to_vec1::<f64>()?);
        Ok((f, t(&g)))
    }
    /// (1/n) XᵀX, the Hessian and Gauss-Newton matrix alike.
    fn curvature(&self, _w: &Tensor, _kind: CurvatureKind) -> Result<Arc<dyn LinOp>> {
        Ok(Arc::new(GramOp(self.x.clone())))
    }
    fn diag_curvature(&self, _w: &Tensor) -> Result<Tensor> {
        let n = self.rows() as f64;
        let d = (0..self.x[0].len())
            .map(|j| self.x.iter().map(|r| r[j] * r[j]).sum::<f64>() / n)
            .collect::<Vec<_>>();
        Ok(t(&d))
    }
    fn subsample(&self, indices: &[usize]) -> Result<Arc<dyn Objective>> {
        Ok(Arc::new(LeastSquares::new(
            indices.iter().map(|&i| self.x[i].clone()).collect(),
            indices.iter().map(|&i| self.y[i]).collect(),
        )))
    }
}

struct GramOp(Vec<Vec<f64>>);

impl LinOp for GramOp {
    fn dim(&self) -> usize {
        self.0[0].len()
    }
    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        let v = v.to_vec1::<f64>()?;
        let n = self.0.len() as f64;
        let mut out = vec![0.0; v.len()];
        for row in &self.0 {
            let r: f64 = row.iter().zip(&v).map(|(a, b)| a * b).sum();
            for (o, x) in out.iter_mut().zip(row) {
                *o += r * x / n;
            }
        }
        Ok(t(&out))
    }
    fn samples_per_apply(&self) -> usize {
        self.0.len()
    }
}
