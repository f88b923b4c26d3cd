//! Multi-layer perceptrons with exact Hessian products by Pearlmutter's
//! R-operator and Gauss-Newton products by `Jᵀ H_L J v`.
//!
//! Notation, for layers `l = 0..L`: `a_0 = x`, `z_l = a_l W_l + b_l`,
//! `a_{l+1} = σ(z_l)`, logits `z_{L-1}`. `δ_l = ∂f/∂z_l`, `e_l = δ_l W_lᵀ`
//! (the gradient with respect to `a_l`). The R-operator `R{·}` is the
//! directional derivative along `V`:
//!
//! forward:  `R z_l = R a_l · W_l + a_l · V_l + v_bl`, `R a_{l+1} = σ'(z_l) ⊙ R z_l`
//! output:   `R δ_{L-1} = H_L (R z_{L-1}) / n`
//! backward: `H W_l = R a_lᵀ δ_l + a_lᵀ R δ_l`, `H b_l = Σ_rows R δ_l`,
//!           `R e_l = R δ_l W_lᵀ + δ_l V_lᵀ`,
//!           `R δ_{l-1} = σ''(z_{l-1}) ⊙ R z_{l-1} ⊙ e_l + σ'(z_{l-1}) ⊙ R e_l`.
//!
//! The Gauss-Newton product drops exactly the terms that carry second
//! derivatives of the network (`R a_lᵀ δ_l`, `δ_l V_lᵀ`, and the `σ''` term).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};
use crate::linop::{Counter, LinOp};
use crate::model::{Activation, Model, ModelSpec};
use crate::objective::{
    Batches, CurvatureKind, Objective, softmax_cross_entropy, softmax_curvature_product,
};
use crate::params::ParamLayout;
use crate::regularizer::{Penalty, Regularizer};
use crate::softmax::check_shapes;

pub struct MlpObjective {
    model: Model,
    activation: Activation,
    data: Batches,
    reg: Arc<Regularizer>,
}

/// Everything the backward and R passes need from one chunk's forward pass.
struct ChunkCache {
    /// `a_0 = x, a_1, ..., a_{L-1}`: the inputs of each layer.
    inputs: Vec<Tensor>,
    /// `σ'(z_l)` and `σ''(z_l)` for the hidden layers.
    d1: Vec<Tensor>,
    d2: Vec<Tensor>,
    /// Softmax probabilities of the output.
    p: Tensor,
    /// `δ_l` for every layer (already divided by n).
    deltas: Vec<Tensor>,
    /// `e_l = δ_l W_lᵀ` for `l ≥ 1`, stored at index `l`.
    e: Vec<Option<Tensor>>,
}

impl MlpObjective {
    pub fn new(model: Model, data: Batches, penalties: Vec<Penalty>) -> Result<Self> {
        let ModelSpec::Mlp { activation, .. } = model.spec() else {
            return Err(ModelError::Spec(format!(
                "MlpObjective needs an MLP, got {}",
                model.spec()
            )));
        };
        let activation = *activation;
        check_shapes(&model, &data)?;
        let reg = Regularizer::new(penalties, model.layout(), data.device(), data.dtype())?;
        Ok(Self {
            model,
            activation,
            data,
            reg: Arc::new(reg),
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Forward and backward pass over one chunk: the summed loss and the caches.
    fn forward_backward(
        &self,
        layers: &[(Tensor, Option<Tensor>)],
        x: &Tensor,
        y: &Tensor,
    ) -> Result<(f64, ChunkCache)> {
        let last = layers.len() - 1;
        let mut inputs = vec![x.clone()];
        let (mut d1, mut d2) = (Vec::new(), Vec::new());
        let mut z_out = None;
        for (l, (w, b)) in layers.iter().enumerate() {
            let mut z = inputs[l].matmul(w)?;
            if let Some(b) = b {
                z = z.broadcast_add(b)?;
            }
            if l == last {
                z_out = Some(z);
            } else {
                let a = self.activation.forward(&z)?;
                let (s1, s2) = self.activation.derivatives(&z, &a)?;
                d1.push(s1);
                d2.push(s2);
                inputs.push(a);
            }
        }
        let z_out = z_out.ok_or_else(|| ModelError::Spec("the MLP has no layers".into()))?;
        let (loss, p) = softmax_cross_entropy(&z_out, y)?;
        let n = self.data.rows() as f64;
        let mut deltas = vec![None; layers.len()];
        let mut e = vec![None; layers.len()];
        let mut delta = (&p - y)?.affine(1.0 / n, 0.0)?;
        for l in (0..layers.len()).rev() {
            if l > 0 {
                let el = delta.matmul(&layers[l].0.t()?)?;
                let prev = (&el * &d1[l - 1])?;
                e[l] = Some(el);
                deltas[l] = Some(std::mem::replace(&mut delta, prev));
            } else {
                deltas[l] = Some(delta.clone());
            }
        }
        let deltas = deltas
            .into_iter()
            .map(|d| d.expect("every layer has a delta"))
            .collect();
        Ok((
            loss,
            ChunkCache {
                inputs,
                d1,
                d2,
                p,
                deltas,
                e,
            },
        ))
    }

    fn caches(&self, w: &Tensor) -> Result<(f64, Vec<ChunkCache>)> {
        let layers = self.model.layers(w)?;
        let mut total = 0.0;
        let mut caches = Vec::with_capacity(self.data.chunks().len());
        for (x, y) in self.data.chunks() {
            let (loss, cache) = self.forward_backward(&layers, x, y)?;
            total += loss;
            caches.push(cache);
        }
        Ok((total, caches))
    }
}

/// Sums per-chunk, per-layer `(dW, db)` pairs into a flat vector.
fn pack_layers(layout: &ParamLayout, acc: Vec<(Tensor, Tensor)>) -> Result<Tensor> {
    let parts: Vec<Tensor> = acc.into_iter().flat_map(|(w, b)| [w, b]).collect();
    layout.flatten(&parts)
}

fn add_into(acc: &mut Option<Vec<(Tensor, Tensor)>>, new: Vec<(Tensor, Tensor)>) -> Result<()> {
    *acc = Some(match acc.take() {
        None => new,
        Some(old) => old
            .into_iter()
            .zip(new)
            .map(|((aw, ab), (nw, nb))| Ok(((aw + nw)?, (ab + nb)?)))
            .collect::<Result<Vec<_>>>()?,
    });
    Ok(())
}

impl Objective for MlpObjective {
    fn layout(&self) -> &ParamLayout {
        self.model.layout()
    }

    fn device(&self) -> &Device {
        self.data.device()
    }

    fn dtype(&self) -> DType {
        self.data.dtype()
    }

    fn num_samples(&self) -> usize {
        self.data.rows()
    }

    fn loss(&self, w: &Tensor) -> Result<f64> {
        let mut total = 0.0;
        for (x, y) in self.data.chunks() {
            total += softmax_cross_entropy(&self.model.logits(w, x)?, y)?.0;
        }
        Ok(total / self.data.rows() as f64 + self.reg.value_and_grad(w)?.0)
    }

    fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        let layers = self.model.layers(w)?;
        let mut total = 0.0;
        let mut acc = None;
        for (x, y) in self.data.chunks() {
            let (loss, c) = self.forward_backward(&layers, x, y)?;
            total += loss;
            let grads = (0..layers.len())
                .map(|l| Ok((c.inputs[l].t()?.matmul(&c.deltas[l])?, c.deltas[l].sum(0)?)))
                .collect::<Result<Vec<_>>>()?;
            add_into(&mut acc, grads)?;
        }
        let grad = pack_layers(
            self.layout(),
            acc.ok_or_else(|| ModelError::Batch("empty batch".into()))?,
        )?;
        let (penalty, pgrad) = self.reg.value_and_grad(w)?;
        Ok((total / self.data.rows() as f64 + penalty, (grad + pgrad)?))
    }

    fn curvature(&self, w: &Tensor, kind: CurvatureKind) -> Result<Arc<dyn LinOp>> {
        let layers = self.model.layers(w)?;
        let (_, caches) = self.caches(w)?;
        Ok(Arc::new(MlpCurvature {
            layout: self.layout().clone(),
            layers,
            caches,
            kind,
            rows: self.data.rows(),
            reg: self.reg.clone(),
            counter: Counter::default(),
        }))
    }

    /// The diagonal of the empirical Fisher, `n Σ_i (a_i²)ᵀ(δ_i²)`: one
    /// backward pass with squared factors (Martens 2010 preconditions with it).
    fn diag_curvature(&self, w: &Tensor) -> Result<Tensor> {
        let (_, caches) = self.caches(w)?;
        let n = self.data.rows() as f64;
        let mut acc = None;
        for c in &caches {
            let diag = (0..c.deltas.len())
                .map(|l| {
                    let d2 = c.deltas[l].sqr()?;
                    Ok((c.inputs[l].sqr()?.t()?.matmul(&d2)?, d2.sum(0)?))
                })
                .collect::<Result<Vec<_>>>()?;
            add_into(&mut acc, diag)?;
        }
        let diag = pack_layers(
            self.layout(),
            acc.ok_or_else(|| ModelError::Batch("empty batch".into()))?,
        )?;
        Ok((diag.affine(n, 0.0)? + self.reg.diagonal()?)?)
    }

    fn subsample(&self, indices: &[usize]) -> Result<Arc<dyn Objective>> {
        Ok(Arc::new(Self {
            model: self.model.clone(),
            activation: self.activation,
            data: self.data.select(indices)?,
            reg: self.reg.clone(),
        }))
    }
}

/// The MLP's Hessian or Gauss-Newton matrix at a fixed point.
pub struct MlpCurvature {
    layout: ParamLayout,
    layers: Vec<(Tensor, Option<Tensor>)>,
    caches: Vec<ChunkCache>,
    kind: CurvatureKind,
    rows: usize,
    reg: Arc<Regularizer>,
    counter: Counter,
}

impl MlpCurvature {
    fn apply_chunk(
        &self,
        c: &ChunkCache,
        dirs: &[(Tensor, Tensor)],
    ) -> Result<Vec<(Tensor, Tensor)>> {
        let exact = self.kind == CurvatureKind::Hessian;
        let nl = self.layers.len();
        // Forward tangent pass.
        let mut ra: Vec<Option<Tensor>> = vec![None; nl];
        let mut rz: Vec<Tensor> = Vec::with_capacity(nl);
        for l in 0..nl {
            let (w, _) = &self.layers[l];
            let (vw, vb) = &dirs[l];
            let mut z = c.inputs[l].matmul(vw)?.broadcast_add(vb)?;
            if let Some(ral) = &ra[l] {
                z = (z + ral.matmul(w)?)?;
            }
            if l + 1 < nl {
                ra[l + 1] = Some((&c.d1[l] * &z)?);
            }
            rz.push(z);
        }
        // Output: H_L R z / n.
        let mut rdelta =
            softmax_curvature_product(&c.p, &rz[nl - 1])?.affine(1.0 / self.rows as f64, 0.0)?;
        // Second-order backward pass.
        let mut out = vec![None; nl];
        for l in (0..nl).rev() {
            let mut hw = c.inputs[l].t()?.matmul(&rdelta)?;
            if exact && let Some(ral) = &ra[l] {
                hw = (hw + ral.t()?.matmul(&c.deltas[l])?)?;
            }
            let hb = rdelta.sum(0)?;
            if l > 0 {
                let mut re = rdelta.matmul(&self.layers[l].0.t()?)?;
                if exact {
                    re = (re + c.deltas[l].matmul(&dirs[l].0.t()?)?)?;
                }
                let mut next = (&c.d1[l - 1] * re)?;
                if exact {
                    let el = c.e[l].as_ref().expect("e_l is cached for l >= 1");
                    next = (next + (&c.d2[l - 1] * &rz[l - 1])?.mul(el)?)?;
                }
                rdelta = next;
            }
            out[l] = Some((hw, hb));
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every layer visited"))
            .collect())
    }
}

impl LinOp for MlpCurvature {
    fn dim(&self) -> usize {
        self.layout.len()
    }

    fn apply(&self, v: &Tensor) -> Result<Tensor> {
        self.counter.tick();
        let views = self.layout.views(v)?;
        let dirs: Vec<(Tensor, Tensor)> = views
            .chunks(2)
            .map(|p| (p[0].clone(), p[1].clone()))
            .collect();
        let mut acc = None;
        for c in &self.caches {
            let part = self.apply_chunk(c, &dirs)?;
            add_into(&mut acc, part)?;
        }
        let hv = pack_layers(
            &self.layout,
            acc.ok_or_else(|| ModelError::Batch("empty batch".into()))?,
        )?;
        if self.reg.is_empty() {
            return Ok(hv);
        }
        Ok((hv + self.reg.apply_q(v)?)?)
    }

    fn samples_per_apply(&self) -> usize {
        self.rows
    }

    fn applications(&self) -> usize {
        self.counter.get()
    }
}
