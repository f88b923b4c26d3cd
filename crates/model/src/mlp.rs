//! Multi-layer perceptrons (and autoencoders, which are MLPs with their
//! inputs as targets) with exact Hessian products by Pearlmutter's
//! R-operator and Gauss-Newton products by `Jᵀ H_L J v`.
//!
//! Notation, for layers `l = 0..L`: `a_0 = x`, `z_l = a_l W_l + b_l`,
//! `a_{l+1} = σ_l(z_l)` with layer `l`'s own activation `σ_l`, logits
//! `z_{L-1}`. `δ_l = ∂f/∂z_l`, `e_l = δ_l W_lᵀ`
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
use rand_chacha::ChaCha8Rng;

use crate::csr::{CsrU8, byte_density, csr_max_density};
use crate::error::{ModelError, Result};
use crate::fused::{XStorage, batch_bytes, simd_level};
use crate::kfac::{FisherTargets, KroneckerFactors, LayerFactors};
use crate::linop::LinOp;
use crate::loss::Loss;
use crate::model::{Activation, Model, ModelSpec};
use crate::objective::{Batches, CurvatureKind, Objective};
use crate::params::ParamLayout;
use crate::regularizer::{Penalty, Regularizer};
use crate::softmax::check_shapes;

/// An MLP or deep autoencoder over a batch: the mean loss plus penalties, with
/// exact Hessian products by the R-operator and Gauss-Newton products `Jᵀ H_L J v`.
pub struct MlpObjective {
    model: Model,
    /// Each hidden layer's activation, in order.
    activations: Vec<Activation>,
    data: Batches,
    reg: Arc<Regularizer>,
    storage: XStorage,
    /// Each chunk's `X` as compressed rows, when `storage` chose them: the
    /// first layer's products (`X W₁`, `Xᵀ δ₁`), nearly all of an MLP's
    /// work on MNIST, then run over the non-zero pixels only.
    sparse: Option<Vec<Arc<CsrU8>>>,
    loss: Arc<dyn Loss>,
}

/// How many of the activations' derivatives a forward pass keeps: each
/// costs elementwise passes over every hidden unit of every row, so a pass
/// keeps only what its caller uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Order {
    /// None: a loss.
    Zeroth,
    /// `σ'`: gradients, Gauss-Newton products, K-FAC's factors.
    First,
    /// `σ'` and `σ''`: exact Hessian products.
    Second,
}

/// One chunk's forward pass (see [`ChunkCache`] for the fields).
struct Forward {
    inputs: Vec<Tensor>,
    sparse_x: Option<Arc<CsrU8>>,
    d1: Vec<Tensor>,
    d2: Vec<Tensor>,
    z_out: Tensor,
}

/// Everything the backward and R passes need from one chunk's forward pass.
struct ChunkCache {
    /// `a_0 = x, a_1, ..., a_{L-1}`: the inputs of each layer.
    inputs: Vec<Tensor>,
    /// `x` as compressed rows, if the objective holds them.
    sparse_x: Option<Arc<CsrU8>>,
    /// `σ'(z_l)` for the hidden layers.
    d1: Vec<Tensor>,
    /// `σ''(z_l)` for the hidden layers; empty unless for the Hessian.
    d2: Vec<Tensor>,
    /// The outputs `z_{L-1}`, where the loss's curvature is taken.
    z_out: Tensor,
    /// `δ_l` for every layer (already divided by n); empty for a
    /// Gauss-Newton operator, which needs no backward pass.
    deltas: Vec<Tensor>,
    /// `e_l = δ_l W_lᵀ` for `l ≥ 1`, stored at index `l`; empty unless for
    /// the Hessian.
    e: Vec<Option<Tensor>>,
}

impl MlpObjective {
    /// [`Self::with_storage`] with [`XStorage::Auto`].
    pub fn new(model: Model, data: Batches, penalties: Vec<Penalty>) -> Result<Self> {
        Self::with_storage(model, data, penalties, XStorage::Auto)
    }

    /// `storage` says how the first layer reads `X`: [`XStorage::Csr`]
    /// forces compressed rows (CPU, inputs exactly `k/255`),
    /// [`XStorage::Auto`] takes them on the CPU when the inputs are bytes of
    /// at most [`csr_max_density`] non-zeros (at the best SIMD level), and
    /// anything else keeps the
    /// dense tensors (`u8` storage has no meaning for candle's matmuls).
    pub fn with_storage(
        model: Model,
        data: Batches,
        penalties: Vec<Penalty>,
        storage: XStorage,
    ) -> Result<Self> {
        if matches!(model.spec(), ModelSpec::Softmax { .. }) {
            return Err(ModelError::Spec(format!(
                "MlpObjective needs an MLP or an autoencoder, got {}",
                model.spec()
            )));
        }
        let activations = model.hidden_layers().iter().map(|h| h.activation).collect();
        check_shapes(&model, &data)?;
        let reg = Regularizer::new(penalties, model.layout(), data.device(), data.dtype())?;
        let sparse = sparse_chunks(&data, storage)?;
        Ok(Self {
            loss: model.natural_loss(),
            model,
            activations,
            data,
            reg: Arc::new(reg),
            storage,
            sparse,
        })
    }

    /// The same MLP with `loss` on its outputs instead of the model's
    /// [`Model::natural_loss`] (a linear last layer in every case: the loss applies
    /// its own output non-linearity).
    pub fn with_loss(mut self, loss: Arc<dyn Loss>) -> Self {
        self.loss = loss;
        self
    }

    /// `"csr-u8"` when the first layer reads compressed rows, else `None`.
    pub fn input_storage(&self) -> Option<&'static str> {
        self.sparse.as_ref().map(|_| "csr-u8")
    }

    /// The MLP or autoencoder.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// `(1/n) Σ_i (∇ℓ_i(w))²`, elementwise: the squared gradient of each
    /// case's loss `ℓ_i`, averaged over the `n` cases as the gradient
    /// `(1/n) Σ_i ∇ℓ_i` is, so that it is on the curvature's scale (it is
    /// the diagonal of the empirical Fisher `(1/n) Σ_i ∇ℓ_i ∇ℓ_iᵀ`). The
    /// penalties are not per-case and are left out. Martens' (2010)
    /// preconditioner is built from it.
    ///
    /// No per-case backward pass: case `i`'s gradient of a dense layer is
    /// the outer product `a_i δ_iᵀ`, so `Σ_i (a_i δ_iᵀ)² = (A ⊙ A)ᵀ(Δ ⊙ Δ)`,
    /// one product per layer, and `Σ_i δ_i²` for the bias.
    pub fn per_example_squared_gradients(&self, w: &Tensor) -> Result<Tensor> {
        let layers = self.model.layers(w)?;
        // The cached δ are divided by n, so their squares carry 1/n².
        let n = self.data.rows() as f64;
        let mut acc = None;
        // One chunk's activations at a time: nothing here is kept for later.
        for chunk in 0..self.data.chunks().len() {
            let (_, c) = self.forward_backward(&layers, chunk, Order::First)?;
            let squares = (0..c.deltas.len())
                .map(|l| {
                    let d2 = c.deltas[l].sqr()?;
                    let a2d2 = layer_t_matmul(&c.inputs[l], c.sparse_in(l), &d2, true)?;
                    Ok((a2d2, d2.sum(0)?))
                })
                .collect::<Result<Vec<_>>>()?;
            add_into(&mut acc, squares)?;
        }
        let squares = pack_layers(
            self.layout(),
            acc.ok_or_else(|| ModelError::Batch("empty batch".into()))?,
        )?;
        Ok(squares.affine(n, 0.0)?)
    }

    /// The forward pass over one chunk: each layer's input, the
    /// activations' derivatives up to `order` and the outputs.
    fn forward(
        &self,
        layers: &[(Tensor, Option<Tensor>)],
        chunk: usize,
        order: Order,
    ) -> Result<Forward> {
        let (x, _) = &self.data.chunks()[chunk];
        let sparse_x = self.sparse.as_ref().map(|s| s[chunk].clone());
        let last = layers.len() - 1;
        let mut inputs = vec![x.clone()];
        let (mut d1, mut d2) = (Vec::new(), Vec::new());
        let mut z_out = None;
        for (l, (w, b)) in layers.iter().enumerate() {
            let mut z = layer_matmul(&inputs[l], sparse_x.as_deref().filter(|_| l == 0), w)?;
            if let Some(b) = b {
                z = z.broadcast_add(b)?;
            }
            if l == last {
                z_out = Some(z);
            } else {
                let act = self.activations[l];
                let a = act.forward(&z)?;
                if order >= Order::First {
                    let s1 = act.derivative(&z, &a)?;
                    if order >= Order::Second {
                        d2.push(act.second_derivative(&z, &a, &s1)?);
                    }
                    d1.push(s1);
                }
                inputs.push(a);
            }
        }
        let z_out = z_out.ok_or_else(|| ModelError::Spec("the MLP has no layers".into()))?;
        Ok(Forward {
            inputs,
            sparse_x,
            d1,
            d2,
            z_out,
        })
    }

    /// Forward and backward pass over one chunk: the summed loss and the
    /// caches, with the activations' derivatives up to `order` (at least
    /// [`Order::First`], which the backward pass needs).
    fn forward_backward(
        &self,
        layers: &[(Tensor, Option<Tensor>)],
        chunk: usize,
        order: Order,
    ) -> Result<(f64, ChunkCache)> {
        let (_, y) = &self.data.chunks()[chunk];
        let Forward {
            inputs,
            sparse_x,
            d1,
            d2,
            z_out,
        } = self.forward(layers, chunk, order.max(Order::First))?;
        let keep_e = order >= Order::Second;
        let (loss, grad_out) = self.loss.value_and_output_gradient(&z_out, y)?;
        let n = self.data.rows() as f64;
        let mut deltas = vec![None; layers.len()];
        let mut e = vec![None; layers.len()];
        let mut delta = grad_out.affine(1.0 / n, 0.0)?;
        for l in (0..layers.len()).rev() {
            if l > 0 {
                let el = delta.matmul(&layers[l].0.t()?)?;
                let prev = (&el * &d1[l - 1])?;
                if keep_e {
                    e[l] = Some(el);
                }
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
                sparse_x,
                d1,
                d2,
                z_out,
                deltas,
                e,
            },
        ))
    }

    /// What a curvature operator of `kind` keeps of each chunk: the
    /// Gauss-Newton matrix needs only the forward pass and `σ'`; the
    /// Hessian also the backward pass, `e_l` and `σ''`.
    fn caches(&self, w: &Tensor, kind: CurvatureKind) -> Result<Vec<ChunkCache>> {
        let layers = self.model.layers(w)?;
        (0..self.data.chunks().len())
            .map(|chunk| match kind {
                CurvatureKind::Hessian => {
                    Ok(self.forward_backward(&layers, chunk, Order::Second)?.1)
                }
                CurvatureKind::GaussNewton => {
                    let f = self.forward(&layers, chunk, Order::First)?;
                    Ok(ChunkCache {
                        inputs: f.inputs,
                        sparse_x: f.sparse_x,
                        d1: f.d1,
                        d2: f.d2,
                        z_out: f.z_out,
                        deltas: Vec::new(),
                        e: Vec::new(),
                    })
                }
            })
            .collect()
    }
}

/// Sums per-chunk, per-layer `(dW, db)` pairs into a flat vector.
impl ChunkCache {
    /// Compressed rows for layer 0's input, when there are some.
    fn sparse_in(&self, l: usize) -> Option<&CsrU8> {
        self.sparse_x.as_deref().filter(|_| l == 0)
    }

    /// `a_lᵀ D`.
    fn input_t_matmul(&self, l: usize, d: &Tensor) -> Result<Tensor> {
        layer_t_matmul(&self.inputs[l], self.sparse_in(l), d, false)
    }
}

/// `a W`, over compressed rows when `sparse` holds `a`.
fn layer_matmul(a: &Tensor, sparse: Option<&CsrU8>, w: &Tensor) -> Result<Tensor> {
    let Some(x) = sparse else {
        return Ok(a.matmul(w)?);
    };
    let (_, h) = w.dims2()?;
    Ok(match w.dtype() {
        DType::F32 => Tensor::from_vec(x.matmul(&host::<f32>(w)?, h)?, (x.rows(), h), w.device())?,
        DType::F64 => Tensor::from_vec(x.matmul(&host::<f64>(w)?, h)?, (x.rows(), h), w.device())?,
        other => return Err(unsupported(other)),
    })
}

/// `aᵀ D`, or `(a ⊙ a)ᵀ D` when `squared`, over compressed rows when
/// `sparse` holds `a`.
fn layer_t_matmul(a: &Tensor, sparse: Option<&CsrU8>, d: &Tensor, squared: bool) -> Result<Tensor> {
    let Some(x) = sparse else {
        let a = if squared { a.sqr()? } else { a.clone() };
        return Ok(a.t()?.matmul(d)?);
    };
    let (_, h) = d.dims2()?;
    let shape = (x.cols(), h);
    Ok(match d.dtype() {
        DType::F32 => {
            Tensor::from_vec(x.t_matmul(&host::<f32>(d)?, h, squared)?, shape, d.device())?
        }
        DType::F64 => {
            Tensor::from_vec(x.t_matmul(&host::<f64>(d)?, h, squared)?, shape, d.device())?
        }
        other => return Err(unsupported(other)),
    })
}

fn host<T: candle_core::WithDType>(t: &Tensor) -> Result<Vec<T>> {
    Ok(t.flatten_all()?.to_vec1::<T>()?)
}

fn unsupported(dtype: DType) -> ModelError {
    ModelError::Unsupported(format!(
        "compressed-row inputs take f32 or f64 parameters, not {dtype:?}"
    ))
}

/// The batch's chunks as compressed rows, if `storage` asks for them (or
/// `auto` finds sparse bytes on the CPU).
fn sparse_chunks(data: &Batches, storage: XStorage) -> Result<Option<Vec<Arc<CsrU8>>>> {
    let cpu = matches!(data.device(), Device::Cpu);
    match storage {
        XStorage::Float | XStorage::U8 => return Ok(None),
        XStorage::Auto if !cpu => return Ok(None),
        XStorage::Csr if !cpu => {
            return Err(ModelError::Unsupported(
                "compressed-row inputs (csr) run on the CPU only".into(),
            ));
        }
        XStorage::Auto | XStorage::Csr => {}
    }
    let bytes = match batch_bytes(
        data,
        if storage == XStorage::Csr {
            XStorage::Csr
        } else {
            XStorage::Auto
        },
    )? {
        Some(b) => b,
        None => return Ok(None),
    };
    if storage == XStorage::Auto && byte_density(&bytes) > csr_max_density(simd_level()) {
        return Ok(None);
    }
    let d = data.inputs();
    let mut start = 0;
    let mut out = Vec::with_capacity(data.chunks().len());
    for (x, _) in data.chunks() {
        let rows = x.dim(0)?;
        out.push(Arc::new(CsrU8::from_dense(
            &bytes[start * d..(start + rows) * d],
            d,
            1.0 / 255.0,
        )?));
        start += rows;
    }
    Ok(Some(out))
}

/// The compressed rows of `sub = full.select(indices)`, gathered from
/// `full`'s compressed chunks: the same matrices [`sparse_chunks`] would
/// build from `sub`'s floats (the bytes are the same), without converting
/// them back to bytes at every mini-batch. Rows are taken in
/// [`Batches::select`]'s order: chunk by chunk, within a chunk as listed.
fn select_sparse(
    chunks: &[Arc<CsrU8>],
    full: &Batches,
    sub: &Batches,
    indices: &[usize],
) -> Result<Vec<Arc<CsrU8>>> {
    let chunk_rows = full.chunk_rows();
    let mut order: Vec<(&CsrU8, usize)> = Vec::with_capacity(indices.len());
    for (c, m) in chunks.iter().enumerate() {
        let lo = c * chunk_rows;
        order.extend(
            indices
                .iter()
                .filter(|&&i| i >= lo && i < lo + m.rows())
                .map(|&i| (m.as_ref(), i - lo)),
        );
    }
    let (cols, scale) = (chunks[0].cols(), chunks[0].scale());
    let mut out = Vec::with_capacity(sub.chunks().len());
    let mut start = 0;
    for (x, _) in sub.chunks() {
        let rows = x.dim(0)?;
        let part = order.get(start..start + rows).ok_or_else(|| {
            ModelError::Batch(format!(
                "the sub-sample's chunks hold more rows than the {} selected",
                order.len()
            ))
        })?;
        out.push(Arc::new(CsrU8::gather(part, cols, scale)?));
        start += rows;
    }
    Ok(out)
}

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
        match &self.sparse {
            None => {
                for (x, y) in self.data.chunks() {
                    total +=
                        crate::loss::sum_f64(self.loss.as_ref(), &self.model.logits(w, x)?, y)?;
                }
            }
            Some(_) => {
                let layers = self.model.layers(w)?;
                // The forward pass alone; the loss as the gradient's pass
                // computes it, so both agree to the bit.
                for (chunk, (_, y)) in self.data.chunks().iter().enumerate() {
                    let f = self.forward(&layers, chunk, Order::Zeroth)?;
                    total += self.loss.value_and_output_gradient(&f.z_out, y)?.0;
                }
            }
        }
        Ok(total / self.data.rows() as f64 + self.reg.value_and_grad(w)?.0)
    }

    fn loss_and_grad(&self, w: &Tensor) -> Result<(f64, Tensor)> {
        let layers = self.model.layers(w)?;
        let mut total = 0.0;
        let mut acc = None;
        for chunk in 0..self.data.chunks().len() {
            let (loss, c) = self.forward_backward(&layers, chunk, Order::First)?;
            total += loss;
            let grads = (0..layers.len())
                .map(|l| Ok((c.input_t_matmul(l, &c.deltas[l])?, c.deltas[l].sum(0)?)))
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
        let caches = self.caches(w, kind)?;
        Ok(Arc::new(MlpCurvature {
            layout: self.layout().clone(),
            layers,
            caches,
            kind,
            rows: self.data.rows(),
            reg: self.reg.clone(),
            loss: self.loss.clone(),
        }))
    }

    /// The diagonal of the empirical Fisher (Martens 2010 preconditions
    /// with it) plus the penalty's diagonal.
    fn diag_curvature(&self, w: &Tensor) -> Result<Tensor> {
        Ok((self.per_example_squared_gradients(w)? + self.reg.diagonal()?)?)
    }

    fn kernel_name(&self) -> String {
        match self.input_storage() {
            Some(storage) => format!(
                "candle {}, first layer over {storage}",
                self.dtype().as_str()
            ),
            None => format!("candle {}", self.dtype().as_str()),
        }
    }

    /// `A = (1/n) Σ ā āᵀ` of each layer's input with a ones column, and
    /// `G = (1/n) Σ g gᵀ` of the per-case gradients with respect to its
    /// pre-activations, back-propagated from `targets`. The penalties are
    /// not part of them.
    fn kronecker_factors(
        &self,
        w: &Tensor,
        targets: FisherTargets,
        rng: &mut ChaCha8Rng,
    ) -> Result<KroneckerFactors> {
        let layers = self.model.layers(w)?;
        let mut sums = FactorSums::new(layers.len());
        for (chunk, (_, y)) in self.data.chunks().iter().enumerate() {
            let f = self.forward(&layers, chunk, Order::First)?;
            sums.add(
                self.loss.as_ref(),
                &layers,
                (&f.inputs, &f.d1, &f.z_out, y),
                targets,
                rng,
            )?;
        }
        sums.finish()
    }

    fn subsample(&self, indices: &[usize]) -> Result<Arc<dyn Objective>> {
        let data = self.data.select(indices)?;
        let sparse = match &self.sparse {
            Some(chunks) => Some(select_sparse(chunks, &self.data, &data, indices)?),
            None => None,
        };
        Ok(Arc::new(Self {
            model: self.model.clone(),
            activations: self.activations.clone(),
            sparse,
            data,
            reg: self.reg.clone(),
            storage: self.storage,
            loss: self.loss.clone(),
        }))
    }
}

/// K-FAC's sums `Σ ā āᵀ` and `Σ g gᵀ` per layer over the rows seen so far.
struct FactorSums {
    a: Vec<Option<Tensor>>,
    g: Vec<Option<Tensor>>,
    rows: usize,
}

impl FactorSums {
    fn new(layers: usize) -> Self {
        Self {
            a: vec![None; layers],
            g: vec![None; layers],
            rows: 0,
        }
    }

    /// Adds rows whose forward pass gave each layer's `inputs`, the hidden
    /// layers' `σ'` (`d1`) and the outputs `z`, with targets `y`.
    fn add(
        &mut self,
        loss: &dyn Loss,
        layers: &[(Tensor, Option<Tensor>)],
        (inputs, d1, z, y): (&[Tensor], &[Tensor], &Tensor, &Tensor),
        targets: FisherTargets,
        rng: &mut ChaCha8Rng,
    ) -> Result<()> {
        let add = |acc: &mut Option<Tensor>, t: Tensor| -> Result<()> {
            *acc = Some(match acc.take() {
                None => t,
                Some(old) => (old + t)?,
            });
            Ok(())
        };
        for (l, a) in inputs.iter().enumerate() {
            let ones = Tensor::ones((a.dim(0)?, 1), a.dtype(), a.device())?;
            let abar = Tensor::cat(&[a, &ones], 1)?;
            add(&mut self.a[l], abar.t()?.matmul(&abar)?)?;
        }
        let (outputs, weight) = match targets {
            FisherTargets::MonteCarlo { samples } => (
                (0..samples.max(1))
                    .map(|_| loss.sampled_output_gradient(z, rng))
                    .collect::<Result<Vec<_>>>()?,
                1.0 / samples.max(1) as f64,
            ),
            FisherTargets::Empirical => (vec![loss.value_and_output_gradient(z, y)?.1], 1.0),
            FisherTargets::Exact => (loss.output_curvature_factor(z)?, 1.0),
        };
        for mut g in outputs {
            for l in (0..layers.len()).rev() {
                let gg = g.t()?.matmul(&g)?;
                add(
                    &mut self.g[l],
                    if weight == 1.0 {
                        gg
                    } else {
                        gg.affine(weight, 0.0)?
                    },
                )?;
                if l > 0 {
                    g = (g.matmul(&layers[l].0.t()?)? * &d1[l - 1])?;
                }
            }
        }
        self.rows += z.dim(0)?;
        Ok(())
    }

    /// The means: the factors.
    fn finish(self) -> Result<KroneckerFactors> {
        let n = self.rows as f64;
        let mean = |t: Option<Tensor>| -> Result<faer::Mat<f64>> {
            let t = t.ok_or_else(|| ModelError::Batch("empty batch".into()))?;
            crate::dense::tensor_to_mat_scaled(&t, 1.0 / n)
        };
        Ok(KroneckerFactors {
            layers: self
                .a
                .into_iter()
                .zip(self.g)
                .map(|(a, g)| {
                    Ok(LayerFactors {
                        a: mean(a)?,
                        g: mean(g)?,
                    })
                })
                .collect::<Result<Vec<_>>>()?,
        })
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
    loss: Arc<dyn Loss>,
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
            let mut z = layer_matmul(&c.inputs[l], c.sparse_in(l), vw)?.broadcast_add(vb)?;
            if let Some(ral) = &ra[l] {
                z = (z + ral.matmul(w)?)?;
            }
            if l + 1 < nl {
                ra[l + 1] = Some((&c.d1[l] * &z)?);
            }
            rz.push(z);
        }
        // Output: H_L R z / n.
        let mut rdelta = self
            .loss
            .output_curvature(&c.z_out, &rz[nl - 1])?
            .affine(1.0 / self.rows as f64, 0.0)?;
        // Second-order backward pass.
        let mut out = vec![None; nl];
        for l in (0..nl).rev() {
            let mut hw = c.input_t_matmul(l, &rdelta)?;
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
}
