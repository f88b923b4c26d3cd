//! The models: softmax regression and MLPs, as functions of the flat vector.

use std::fmt;
use std::str::FromStr;

use candle_core::{D, DType, Device, Tensor};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal, Uniform};

use crate::error::{ModelError, Result};
use crate::params::{ParamKind, ParamLayout};

/// A hidden-layer nonlinearity. Each knows its first and second derivative,
/// which the R-operator needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    Tanh,
    Relu,
    Softplus,
}

impl Activation {
    pub const CHOICES: &'static str = "tanh, relu, softplus";

    pub fn forward(self, z: &Tensor) -> Result<Tensor> {
        Ok(match self {
            Activation::Tanh => z.tanh()?,
            Activation::Relu => z.relu()?,
            // softplus(z) = max(z, 0) + log(1 + exp(-|z|)), which never overflows.
            Activation::Softplus => (z.relu()? + (z.abs()?.neg()?.exp()? + 1.0)?.log()?)?,
        })
    }

    /// σ'(z) and σ''(z), given z and a = σ(z).
    pub fn derivatives(self, z: &Tensor, a: &Tensor) -> Result<(Tensor, Tensor)> {
        Ok(match self {
            Activation::Tanh => {
                let d1 = (1.0 - a.sqr()?)?;
                let d2 = (a * &d1)?.affine(-2.0, 0.0)?;
                (d1, d2)
            }
            Activation::Relu => {
                // The kink at 0 gets derivative 0, as in most frameworks.
                let d1 = z.gt(0.0)?.to_dtype(z.dtype())?;
                let d2 = z.zeros_like()?;
                (d1, d2)
            }
            Activation::Softplus => {
                let s = sigmoid(z)?;
                let d2 = (&s * (1.0 - &s)?)?;
                (s, d2)
            }
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
        })
    }
}

/// Which model to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSpec {
    /// `logits = x W (+ b)`. The notebook dropped `b`.
    Softmax { bias: bool },
    /// Hidden layers of the given widths, then a linear output layer.
    Mlp {
        hidden: Vec<usize>,
        activation: Activation,
    },
}

impl ModelSpec {
    pub const CHOICES: &'static str = "softmax, softmax-nobias, mlp:W1[,W2...]";

    /// Parses `softmax`, `softmax-nobias` or `mlp:256,128`; the activation
    /// is given separately because it is its own flag.
    pub fn parse(s: &str, activation: Activation) -> Result<Self> {
        match s {
            "softmax" => Ok(Self::Softmax { bias: true }),
            "softmax-nobias" => Ok(Self::Softmax { bias: false }),
            _ => {
                let Some(widths) = s.strip_prefix("mlp:") else {
                    return Err(ModelError::Spec(format!(
                        "unknown model `{s}`; expected one of: {}",
                        Self::CHOICES
                    )));
                };
                let hidden = widths
                    .split(',')
                    .map(|w| match w.trim().parse::<usize>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => Err(ModelError::Spec(format!(
                            "bad hidden width `{w}` in `{s}`; expected positive integers like mlp:256,128"
                        ))),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Ok(Self::Mlp { hidden, activation })
            }
        }
    }
}

impl fmt::Display for ModelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Softmax { bias: true } => f.write_str("softmax"),
            Self::Softmax { bias: false } => f.write_str("softmax-nobias"),
            Self::Mlp { hidden, activation } => {
                let w: Vec<String> = hidden.iter().map(|h| h.to_string()).collect();
                write!(f, "mlp:{} ({activation})", w.join(","))
            }
        }
    }
}

/// How to draw the starting point.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    /// Normal(0, std) redrawn beyond two standard deviations, like
    /// `tf.truncated_normal` (the notebook used std = 0.1).
    TruncatedNormal {
        std: f64,
    },
    /// Glorot/Xavier uniform, U(-a, a) with a = sqrt(6 / (fan_in + fan_out)).
    Glorot,
}

impl Init {
    pub const CHOICES: &'static str = "zero, normal:STD (e.g. normal:0.1), glorot";
}

impl FromStr for Init {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "zero" | "zeros" => Ok(Self::Zeros),
            "glorot" => Ok(Self::Glorot),
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
    layout: ParamLayout,
}

impl Model {
    pub fn new(spec: ModelSpec, inputs: usize, classes: usize) -> Result<Self> {
        if inputs == 0 || classes < 2 {
            return Err(ModelError::Spec(format!(
                "need at least one input and two classes, got {inputs} inputs and {classes} classes"
            )));
        }
        let mut widths = vec![inputs];
        let bias_everywhere = match &spec {
            ModelSpec::Softmax { bias } => *bias,
            ModelSpec::Mlp { hidden, .. } => {
                widths.extend(hidden);
                true
            }
        };
        widths.push(classes);
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
            layout: ParamLayout::new(entries),
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn classes(&self) -> usize {
        self.classes
    }

    pub fn layout(&self) -> &ParamLayout {
        &self.layout
    }

    pub fn num_layers(&self) -> usize {
        match &self.spec {
            ModelSpec::Softmax { .. } => 1,
            ModelSpec::Mlp { hidden, .. } => hidden.len() + 1,
        }
    }

    pub fn has_bias(&self) -> bool {
        !matches!(self.spec, ModelSpec::Softmax { bias: false })
    }

    /// The activation between layers (`None` for softmax regression).
    pub fn activation(&self) -> Option<Activation> {
        match &self.spec {
            ModelSpec::Softmax { .. } => None,
            ModelSpec::Mlp { activation, .. } => Some(*activation),
        }
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

    /// Logits `[n, classes]` for inputs `x` `[n, inputs]`.
    pub fn logits(&self, w: &Tensor, x: &Tensor) -> Result<Tensor> {
        let layers = self.layers(w)?;
        let last = layers.len() - 1;
        let mut a = x.clone();
        for (l, (weight, bias)) in layers.iter().enumerate() {
            let mut z = a.matmul(weight)?;
            if let Some(b) = bias {
                z = z.broadcast_add(b)?;
            }
            a = match (l == last, self.activation()) {
                (false, Some(act)) => act.forward(&z)?,
                _ => z,
            };
        }
        Ok(a)
    }

    /// Fraction of rows whose arg-max logit equals the label, in chunks so a
    /// 60000-row evaluation never holds more than `chunk` rows of activations.
    pub fn accuracy(&self, w: &Tensor, x: &Tensor, labels: &Tensor, chunk: usize) -> Result<f64> {
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
