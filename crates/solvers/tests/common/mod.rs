//! Small test objectives with known minimisers.
#![allow(dead_code)]

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use hessfree_model::{Counter, CurvatureKind, LinOp, Objective, ParamKind, ParamLayout, Result};

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

struct DiagOp(Tensor, Counter);

impl LinOp for DiagOp {
    fn dim(&self) -> usize {
        self.0.elem_count()
    }
    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        self.1.tick();
        Ok((v * &self.0)?)
    }
    fn samples_per_apply(&self) -> usize {
        1
    }
    fn applications(&self) -> usize {
        self.1.get()
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
        Ok(Arc::new(DiagOp(self.a.clone(), Counter::default())))
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

struct RosenbrockHessian([f64; 3], Counter);

impl LinOp for RosenbrockHessian {
    fn dim(&self) -> usize {
        2
    }
    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        self.1.tick();
        let (a, b) = xy(v)?;
        let [hxx, hxy, hyy] = self.0;
        Ok(t(&[hxx * a + hxy * b, hxy * a + hyy * b]))
    }
    fn samples_per_apply(&self) -> usize {
        1
    }
    fn applications(&self) -> usize {
        self.1.get()
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
        Ok(Arc::new(RosenbrockHessian(h, Counter::default())))
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
