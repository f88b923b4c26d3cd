//! The models: softmax regression, MLPs and deep autoencoders, as functions
//! of the flat vector.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use candle_core::{D, DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::{ModelError, Result};
use crate::loss::{Loss, LossChoice, SigmoidCrossEntropy, SoftmaxCrossEntropy};
use crate::params::{ParamKind, ParamLayout};

/// A hidden-layer nonlinearity. Each knows its first and second derivative,
/// which the R-operator needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// `tanh(z)`, in (−1, 1).
    Tanh,
    /// `max(z, 0)`; its derivative at 0 is taken as 0.
    Relu,
    /// `log(1 + exp(z))`, a smooth ReLU, computed without overflow.
    Softplus,
    /// `1 / (1 + exp(-z))`, Martens' hidden units.
    Logistic,
    /// The identity: the code layer of an autoencoder.
    Linear,
}

impl Activation {
    /// The names [`FromStr`] accepts, for help and error messages.
    pub const CHOICES: &'static str = "tanh, relu, softplus, logistic, linear";

    /// `σ(z)`, elementwise.
    pub fn forward(self, z: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Tanh => z.tanh()?,
            Activation::Relu => z.relu()?,
            // softplus(z) = max(z, 0) + log(1 + exp(-|z|)), which never overflows.
            Activation::Softplus => (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?,
            Activation::Logistic => sigmoid(z)?,
            Activation::Linear => z.clone(),
        })
    }

    /// σ'(z), given z and a = σ(z): all that gradients, Gauss-Newton
    /// products and K-FAC's factors need.
    pub fn derivative(self, z: &Tensor, a: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Tanh => (1.0 - a.sqr()?)?,
            // The kink at 0 gets derivative 0, as in most frameworks.
            Activation::Relu => z.gt(0.0)?.to_dtype(z.dtype())?,
            Activation::Softplus => sigmoid(z)?,
            // σ' = σ(1 − σ), from a = σ(z).
            Activation::Logistic => (a * (1.0 - a)?)?,
            Activation::Linear => z.ones_like()?,
        })
    }

    /// σ''(z), given z, a = σ(z) and d1 = σ'(z): only the exact Hessian
    /// needs it, so passes for anything else skip it.
    pub fn second_derivative(self, z: &Tensor, a: &Tensor, d1: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Tanh => (a * d1)?.affine(-2.0, 0.0)?,
            Activation::Relu | Activation::Linear => z.zeros_like()?,
            // d1 is σ(z) here: σ'' of softplus is σ(1 − σ).
            Activation::Softplus => (d1 * (1.0 - d1)?)?,
            // σ'' = σ'(1 − 2σ).
            Activation::Logistic => (d1 * a.affine(-2.0, 1.0)?)?,
        })
    }
}

/// 1 / (1 + exp(-z)); exp overflow gives 1/inf = 0, the right limit.
pub fn sigmoid(z: &Tensor) -> Result<Tensor> {
    Ok((z.neg()?.exp()? + 1.0)?.recip()?)
}

impl FromStr for Activation {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "tanh" => Ok(Self::Tanh),
            "relu" => Ok(Self::Relu),
            "softplus" => Ok(Self::Softplus),
            "logistic" | "sigmoid" => Ok(Self::Logistic),
            "linear" => Ok(Self::Linear),
            other => Err(ModelError::Spec(format!(
                "unknown activation `{other}`; expected one of: {}",
                Self::CHOICES
            ))),
        }
    }
}

impl fmt::Display for Activation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tanh => "tanh",
            Self::Relu => "relu",
            Self::Softplus => "softplus",
            Self::Logistic => "logistic",
            Self::Linear => "linear",
        })
    }
}

/// One hidden layer of an MLP: its width and the nonlinearity after it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hidden {
    /// Number of units.
    pub width: usize,
    /// The nonlinearity applied to the layer's pre-activations.
    pub activation: Activation,
}

/// Which model to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// `logits = x W (+ b)`. The notebook dropped `b`.
    Softmax {
        /// Whether there is a bias vector `b`.
        bias: bool,
    },
    /// Hidden layers, each with its own activation, then a linear output
    /// layer of one logit per class (softmax cross-entropy).
    Mlp {
        /// The hidden layers, input side first; at least one.
        hidden: Vec<Hidden>,
    },
    /// Martens' deep autoencoder: logistic encoder layers of the `encoder`
    /// widths except the last, a linear code layer of the last width, the
    /// mirrored logistic decoder, and an output layer as wide as the input
    /// whose logits go through logistic units (sigmoid cross-entropy against
    /// the inputs themselves).
    Autoencoder {
        /// Encoder widths, input side first; the last is the code layer.
        encoder: Vec<usize>,
    },
}

impl ModelSpec {
    /// The forms [`ModelSpec::parse`] accepts, for help and error messages.
    pub const CHOICES: &'static str = "softmax, softmax-nobias, mlp:W1[,W2...] (every layer \
         the given activation), mlp:W1:ACT1[,W2:ACT2...] (per layer; a layer without `:ACT` \
         takes the given activation), autoencoder:W1[,W2...],CODE";

    /// An MLP whose hidden layers of `widths` all use `activation`.
    pub fn mlp(widths: &[usize], activation: Activation) -> Self {
        Self::Mlp {
            hidden: widths
                .iter()
                .map(|&width| Hidden { width, activation })
                .collect(),
        }
    }

    /// Parses `softmax`, `softmax-nobias`, `mlp:256,128`, `mlp:256:relu,128:tanh`
    /// or `autoencoder:1000,500,250,30`. `activation` is given separately
    /// because it is its own flag: it is every MLP layer's that names none
    /// (autoencoders fix their own).
    pub fn parse(s: &str, activation: Activation) -> Result<Self> {
        match s {
            "softmax" => return Ok(Self::Softmax { bias: true }),
            "softmax-nobias" => return Ok(Self::Softmax { bias: false }),
            _ => {}
        }
        let width = |w: &str| match w.trim().parse::<usize>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(ModelError::Spec(format!(
                "bad hidden width `{w}` in `{s}`; expected positive integers like \
                 mlp:256,128, mlp:256:relu,128:tanh or autoencoder:1000,500,250,30 \
                 (models: {})",
                Self::CHOICES
            ))),
        };
        if let Some(layers) = s.strip_prefix("mlp:") {
            let hidden = layers
                .split(',')
                .map(|layer| {
                    let (w, act) = match layer.split_once(':') {
                        Some((w, act)) => (
                            w,
                            act.trim().parse::<Activation>().map_err(|e| {
                                ModelError::Spec(format!("layer `{layer}` of `{s}`: {e}"))
                            })?,
                        ),
                        None => (layer, activation),
                    };
                    Ok(Hidden {
                        width: width(w)?,
                        activation: act,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            return Ok(Self::Mlp { hidden });
        }
        if let Some(widths) = s.strip_prefix("autoencoder:") {
            let encoder = widths.split(',').map(width).collect::<Result<Vec<_>>>()?;
            return Ok(Self::Autoencoder { encoder });
        }
        Err(ModelError::Spec(format!(
            "unknown model `{s}`; expected one of: {}",
            Self::CHOICES
        )))
    }

    /// Every hidden layer in order, an autoencoder's decoder included
    /// (empty for softmax regression).
    pub fn hidden_layers(&self) -> Vec<Hidden> {
        match self {
            Self::Softmax { .. } => Vec::new(),
            Self::Mlp { hidden } => hidden.clone(),
            Self::Autoencoder { encoder } => {
                let Some((&code, rest)) = encoder.split_last() else {
                    return Vec::new();
                };
                let logistic = |&width: &usize| Hidden {
                    width,
                    activation: Activation::Logistic,
                };
                let mut layers: Vec<Hidden> = rest.iter().map(logistic).collect();
                layers.push(Hidden {
                    width: code,
                    activation: Activation::Linear,
                });
                layers.extend(rest.iter().rev().map(logistic));
                layers
            }
        }
    }
}

impl fmt::Display for ModelSpec {
    /// The form weights files and reports store: one string per model.
    /// An MLP whose layers share an activation prints as it always has
    /// (`mlp:256,128 (tanh)`), a mixed one per layer (`mlp:256:relu,128:tanh`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let join = |w: Vec<String>| w.join(",");
        match self {
            Self::Softmax { bias: true } => f.write_str("softmax"),
            Self::Softmax { bias: false } => f.write_str("softmax-nobias"),
            Self::Mlp { hidden } => match hidden.first().map(|h| h.activation) {
                Some(act) if hidden.iter().all(|h| h.activation == act) => {
                    let w = hidden.iter().map(|h| h.width.to_string()).collect();
                    write!(f, "mlp:{} ({act})", join(w))
                }
                _ => {
                    let w = hidden
                        .iter()
                        .map(|h| format!("{}:{}", h.width, h.activation))
                        .collect();
                    write!(f, "mlp:{}", join(w))
                }
            },
            Self::Autoencoder { encoder } => {
                let w = encoder.iter().map(|w| w.to_string()).collect();
                write!(f, "autoencoder:{}", join(w))
            }
        }
    }
}

/// How to draw the starting point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Every weight zero: fine for softmax regression, but an MLP's hidden
    /// units then start identical.
    Zeros,
    /// Normal(0, std) redrawn beyond two standard deviations, like
    /// `tf.truncated_normal` (the notebook used std = 0.1).
    TruncatedNormal {
        /// Standard deviation before truncation; positive and finite.
        std: f64,
    },
    /// Glorot/Xavier uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
    Glorot,
    /// Martens' (2010) sparse initialisation: each unit gets
    /// [`Init::SPARSE_NONZEROS`] incoming weights from N(0, 1) (all of them
    /// when its fan-in is smaller) and the rest zero, so that units start
    /// distinct and saturated deep networks do not, whatever the width.
    Sparse,
}

impl Init {
    /// The forms [`FromStr`] accepts, for help and error messages.
    pub const CHOICES: &'static str = "zero, normal:STD (e.g. normal:0.1), glorot, sparse";

    /// Non-zero incoming weights per unit under [`Init::Sparse`], Martens' choice.
    pub const SPARSE_NONZEROS: usize = 15;
}

impl FromStr for Init {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "zero" | "zeros" => Ok(Self::Zeros),
            "glorot" => Ok(Self::Glorot),
            "sparse" => Ok(Self::Sparse),
            _ => match s.strip_prefix("normal:").map(str::parse::<f64>) {
                Some(Ok(std)) if std.is_finite() && std > 0.0 => Ok(Self::TruncatedNormal { std }),
                _ => Err(ModelError::Spec(format!(
                    "unknown init `{s}`; expected one of: {}",
                    Self::CHOICES
                ))),
            },
        }
    }
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Zeros => f.write_str("zero"),
            Self::TruncatedNormal { std } => write!(f, "normal:{std}"),
            Self::Glorot => f.write_str("glorot"),
            Self::Sparse => f.write_str("sparse"),
        }
    }
}

/// A model with its input and class counts fixed: it knows its parameter
/// layout and how to turn parameters and inputs into logits.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    spec: ModelSpec,
    inputs: usize,
    classes: usize,
    /// [`ModelSpec::hidden_layers`], expanded once.
    hidden: Vec<Hidden>,
    layout: ParamLayout,
}

impl Model {
    /// `classes` is the number of outputs of a classifier; an autoencoder
    /// ignores it, because its outputs reconstruct its `inputs`.
    pub fn new(spec: ModelSpec, inputs: usize, classes: usize) -> Result<Self> {
        let autoencoder = matches!(spec, ModelSpec::Autoencoder { .. });
        let classes = if autoencoder { inputs } else { classes };
        if inputs == 0 || (!autoencoder && classes < 2) {
            return Err(ModelError::Spec(format!(
                "need at least one input and two classes, got {inputs} inputs and {classes} classes"
            )));
        }
        let hidden = spec.hidden_layers();
        if hidden.is_empty() && !matches!(spec, ModelSpec::Softmax { .. }) {
            return Err(ModelError::Spec(format!(
                "`{spec}` has no hidden layers; expected at least one width ({})",
                ModelSpec::CHOICES
            )));
        }
        let mut widths = vec![inputs];
        widths.extend(hidden.iter().map(|h| h.width));
        widths.push(classes);
        // A width typed with a few digits too many must be an error, not an
        // overflowed size or a failed allocation.
        let too_big = || {
            ModelError::Spec(format!(
                "`{spec}` has more parameters than a 64-bit size can count; \
                 expected widths whose products fit"
            ))
        };
        widths.windows(2).try_fold(0usize, |total, pair| {
            pair[0]
                .checked_add(1)
                .and_then(|fan_in| fan_in.checked_mul(pair[1]))
                .and_then(|layer| layer.checked_add(total))
                .ok_or_else(too_big)
        })?;
        let bias_everywhere = !matches!(spec, ModelSpec::Softmax { bias: false });
        let mut entries = Vec::new();
        for (l, pair) in widths.windows(2).enumerate() {
            entries.push((
                format!("layer{l}.weight"),
                vec![pair[0], pair[1]],
                ParamKind::Weight,
            ));
            if bias_everywhere {
                entries.push((format!("layer{l}.bias"), vec![pair[1]], ParamKind::Bias));
            }
        }
        Ok(Self {
            spec,
            inputs,
            classes,
            hidden,
            layout: ParamLayout::new(entries),
        })
    }

    /// The specification the model was built from.
    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Input width, e.g. 784 for MNIST.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// The width of the output layer: the classes of a classifier, the
    /// inputs of an autoencoder.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Where each layer's weights and biases sit in the flat vector.
    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    /// Weight layers: the hidden layers plus the output layer.
    pub fn num_layers(&self) -> usize {
        self.hidden.len() + 1
    }

    /// Whether every layer has a bias (all models but `softmax-nobias`).
    pub fn has_bias(&self) -> bool {
        !matches!(self.spec, ModelSpec::Softmax { bias: false })
    }

    /// The hidden layers in order (none for softmax regression); layer `l`'s
    /// activation follows weight block `layer{l}`.
    pub fn hidden_layers(&self) -> &[Hidden] {
        &self.hidden
    }

    /// Whether the model reconstructs its inputs (trained against them, not labels).
    pub fn is_autoencoder(&self) -> bool {
        matches!(self.spec, ModelSpec::Autoencoder { .. })
    }

    /// The loss the model is trained with: sigmoid cross-entropy against
    /// the inputs for an autoencoder (its outputs are logistic units),
    /// softmax cross-entropy against one-hot labels for a classifier.
    pub fn natural_loss(&self) -> Arc<dyn Loss> {
        if self.is_autoencoder() {
            Arc::new(SigmoidCrossEntropy)
        } else {
            Arc::new(SoftmaxCrossEntropy)
        }
    }

    /// The loss `choice` if it fits the output layer, else
    /// [`Self::natural_loss`] when `choice` is `None`. Refused: a softmax
    /// over an autoencoder's pixels (they are 784 separate targets in
    /// `[0, 1]`, not one distribution) and, for an autoencoder, squared
    /// error (its outputs are logistic units, whose matching loss is the
    /// sigmoid cross-entropy); any loss but softmax cross-entropy on
    /// softmax regression, whose closed-form kernels compute that one.
    pub fn loss(&self, choice: Option<LossChoice>) -> Result<Arc<dyn Loss>> {
        let Some(choice) = choice else {
            return Ok(self.natural_loss());
        };
        let fits = match (&self.spec, choice) {
            (ModelSpec::Softmax { .. }, c) => c == LossChoice::SoftmaxCrossEntropy,
            (ModelSpec::Mlp { .. }, _) => true,
            (ModelSpec::Autoencoder { .. }, c) => c == LossChoice::SigmoidCrossEntropy,
        };
        if !fits {
            let expected = match self.spec {
                ModelSpec::Softmax { .. } => {
                    "softmax regression takes softmax-cross-entropy only (use an mlp for another loss)"
                }
                ModelSpec::Autoencoder { .. } => {
                    "an autoencoder's logistic outputs take sigmoid-cross-entropy against its inputs"
                }
                ModelSpec::Mlp { .. } => unreachable!("an mlp's linear outputs take every loss"),
            };
            return Err(ModelError::Spec(format!(
                "the loss `{}` does not fit the output layer of `{}`: {expected}",
                choice.build().name(),
                self.spec
            )));
        }
        Ok(choice.build())
    }

    /// A lower bound on the bytes a run of this model holds at once: the
    /// parameters and the dozen parameter-sized vectors a solver keeps
    /// (gradient, CG's four vectors and saved iterates, Adam's moments),
    /// plus the activations, their derivatives and the R-operator's
    /// tangents for one chunk of `chunk_rows` rows. A harness compares it
    /// with the memory the machine has before it allocates anything.
    pub fn working_bytes(&self, chunk_rows: usize, elem_bytes: usize) -> u64 {
        const PARAM_COPIES: u64 = 12;
        const PER_UNIT_COPIES: u64 = 6;
        let params = self.layout.len() as u64;
        let units: u64 = std::iter::once(self.inputs)
            .chain(self.hidden.iter().map(|h| h.width))
            .chain(std::iter::once(self.classes))
            .map(|w| w as u64)
            .sum();
        let elem = elem_bytes as u64;
        params.saturating_mul(PARAM_COPIES * elem).saturating_add(
            units
                .saturating_mul(chunk_rows as u64)
                .saturating_mul(PER_UNIT_COPIES * elem),
        )
    }

    /// `(W, Option<b>)` views per layer.
    pub fn layers(&self, w: &Tensor) -> Result<Vec<(Tensor, Option<Tensor>)>> {
        (0..self.num_layers())
            .map(|l| {
                let weight = self.layout.view(w, &format!("layer{l}.weight"))?;
                let bias = if self.has_bias() {
                    Some(self.layout.view(w, &format!("layer{l}.bias"))?)
                } else {
                    None
                };
                Ok((weight, bias))
            })
            .collect()
    }

    /// Logits `[n, classes]` for inputs `x` `[n, inputs]`: the output
    /// layer is linear, the loss applies the output non-linearity.
    pub fn logits(&self, w: &Tensor, x: &Tensor) -> Result<Tensor> {
        let layers = self.layers(w)?;
        let mut a = x.clone();
        for (l, (weight, bias)) in layers.iter().enumerate() {
            let mut z = a.matmul(weight)?;
            if let Some(b) = bias {
                z = z.broadcast_add(b)?;
            }
            a = match self.hidden.get(l) {
                Some(h) => h.activation.forward(&z)?,
                None => z,
            };
        }
        Ok(a)
    }

    /// Fraction of rows whose arg-max logit equals the label, in chunks so a
    /// 60000-row evaluation never holds more than `chunk` rows of activations.
    pub fn accuracy(&self, w: &Tensor, x: &Tensor, labels: &Tensor, chunk: usize) -> Result<f64> {
        if self.is_autoencoder() {
            return Err(ModelError::Spec(format!(
                "`{}` is an autoencoder, which has no classes to be accurate about; \
                 expected a classifier (softmax or mlp), or use reconstruction_error",
                self.spec
            )));
        }
        let n = x.dim(0)?;
        if n == 0 {
            return Err(ModelError::Batch("accuracy of an empty set".into()));
        }
        let labels = labels.to_dtype(DType::U32)?;
        let mut correct = 0f64;
        let chunk = chunk.max(1);
        for start in (0..n).step_by(chunk) {
            let len = chunk.min(n - start);
            let pred = self
                .logits(w, &x.narrow(0, start, len)?)?
                .argmax(D::Minus1)?;
            let hits = pred.eq(&labels.narrow(0, start, len)?)?;
            correct += hits.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        }
        Ok(correct / n as f64)
    }

    /// An autoencoder's squared reconstruction error as Martens (2010)
    /// reports it: the mean over the rows of `x` of the sum over outputs of
    /// `(σ(logits) − x)²`, with `x` the inputs in `[0, 1]`; in chunks of
    /// `chunk` rows, as [`Self::accuracy`].
    pub fn reconstruction_error(&self, w: &Tensor, x: &Tensor, chunk: usize) -> Result<f64> {
        if !self.is_autoencoder() {
            return Err(ModelError::Spec(format!(
                "`{}` is a classifier, whose outputs are not a reconstruction of its inputs; \
                 expected an autoencoder (autoencoder:W1,...,CODE), or use accuracy",
                self.spec
            )));
        }
        let n = x.dim(0)?;
        if n == 0 {
            return Err(ModelError::Batch(
                "reconstruction error of an empty set".into(),
            ));
        }
        let mut total = 0f64;
        let chunk = chunk.max(1);
        for start in (0..n).step_by(chunk) {
            let xs = x.narrow(0, start, chunk.min(n - start))?;
            let out = self.reconstruction(w, &xs)?;
            total += (out - &xs)?
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
        Ok(total / n as f64)
    }

    /// An autoencoder's reconstruction of `x`: its logistic outputs
    /// `σ(logits)`, in `[0, 1]` like the inputs.
    pub fn reconstruction(&self, w: &Tensor, x: &Tensor) -> Result<Tensor> {
        sigmoid(&self.logits(w, x)?)
    }

    /// A starting point. Biases always start at zero; weights follow `init`.
    /// The draw is made on the CPU with ChaCha8 so it is identical on every
    /// device and for every dtype.
    pub fn init(&self, init: Init, seed: u64, device: &Device, dtype: DType) -> Result<Tensor> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut flat = vec![0f64; self.layout.len()];
        for spec in self.layout.params() {
            if spec.kind != ParamKind::Weight {
                continue;
            }
            let block = &mut flat[spec.range()];
            match init {
                Init::Zeros => {}
                Init::TruncatedNormal { std } => {
                    let normal = Normal::new(0.0, std)
                        .map_err(|e| ModelError::Spec(format!("normal:{std}: {e}")))?;
                    for x in block.iter_mut() {
                        *x = loop {
                            let v: f64 = normal.sample(&mut rng);
                            if v.abs() <= 2.0 * std {
                                break v;
                            }
                        };
                    }
                }
                Init::Glorot => {
                    let a = (6.0 / (spec.shape[0] + spec.shape[1]) as f64).sqrt();
                    let uniform = Uniform::new_inclusive(-a, a)
                        .map_err(|e| ModelError::Spec(format!("glorot: {e}")))?;
                    for x in block.iter_mut() {
                        *x = uniform.sample(&mut rng);
                    }
                }
                Init::Sparse => {
                    let (fan_in, fan_out) = (spec.shape[0], spec.shape[1]);
                    let k = Init::SPARSE_NONZEROS.min(fan_in);
                    let normal = Normal::new(0.0, 1.0)
                        .map_err(|e| ModelError::Spec(format!("sparse: {e}")))?;
                    // Weights are [fan_in, fan_out]: unit j's incoming
                    // weights are column j.
                    for j in 0..fan_out {
                        for i in rand::seq::index::sample(&mut rng, fan_in, k) {
                            block[i * fan_out + j] = normal.sample(&mut rng);
                        }
                    }
                }
            }
        }
        Ok(Tensor::from_vec(flat, self.layout.len(), device)?.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts() -> Result<()> {
        let m = Model::new(ModelSpec::Softmax { bias: false }, 784, 10)?;
        assert_eq!(m.layout().len(), 7840);
        let m = Model::new(ModelSpec::Softmax { bias: true }, 784, 10)?;
        assert_eq!(m.layout().len(), 7850);
        let m = Model::new(ModelSpec::parse("mlp:256", Activation::Tanh)?, 784, 10)?;
        assert_eq!(m.layout().len(), 784 * 256 + 256 + 256 * 10 + 10);
        assert_eq!(m.layout().names()[2], "layer1.weight");
        Ok(())
    }

    #[test]
    fn parse_errors_list_choices() {
        let e = ModelSpec::parse("cnn", Activation::Tanh)
            .unwrap_err()
            .to_string();
        assert!(e.contains("softmax-nobias"), "{e}");
        let e = ModelSpec::parse("mlp:0", Activation::Tanh)
            .unwrap_err()
            .to_string();
        assert!(e.contains("positive"), "{e}");
        let e = "normal:-1".parse::<Init>().unwrap_err().to_string();
        assert!(e.contains("glorot"), "{e}");
        let e = "gelu".parse::<Activation>().unwrap_err().to_string();
        assert!(e.contains("softplus"), "{e}");
    }

    #[test]
    fn truncated_normal_is_truncated_and_seeded() -> Result<()> {
        let m = Model::new(ModelSpec::Softmax { bias: true }, 784, 10)?;
        let init = Init::TruncatedNormal { std: 0.1 };
        let a = m
            .init(init, 7, &Device::Cpu, DType::F64)?
            .to_vec1::<f64>()?;
        let b = m
            .init(init, 7, &Device::Cpu, DType::F64)?
            .to_vec1::<f64>()?;
        assert_eq!(a, b);
        assert!(a.iter().all(|x| x.abs() <= 0.2));
        assert!(a[7840..].iter().all(|&x| x == 0.0), "biases start at zero");
        let mean = a[..7840].iter().sum::<f64>() / 7840.0;
        let var = a[..7840].iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 7840.0;
        // A normal truncated at 2 std has std 0.88 * std.
        assert!((var.sqrt() - 0.088).abs() < 0.005, "std {}", var.sqrt());
        Ok(())
    }
}
