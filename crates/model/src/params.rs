//! The flat parameter vector and its named views.
//!
//! Solvers see one contiguous 1-D tensor (the notebook's `CatVariable`): CG,
//! line searches and argmin only need dot products and axpys on it. Models see
//! named, shaped views into it. [`ParamLayout`] is the single place that knows
//! how the two map onto each other.

use candle_core::{DType, Device, Tensor};

use crate::error::{ModelError, Result};

/// Whether a parameter is a weight (penalised by L2) or a bias (never penalised).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamKind {
    /// Penalised by L2.
    Weight,
    /// Never penalised.
    Bias,
}

/// One named block of the flat vector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpec {
    /// `layer{i}.weight` or `layer{i}.bias`, the names used in safetensors files too.
    pub name: String,
    /// Weights are stored `[fan_in, fan_out]` so that `logits = x · W + b`, as in the notebook.
    pub shape: Vec<usize>,
    /// Index of the block's first scalar in the flat vector.
    pub offset: usize,
    /// Whether L2 penalises the block.
    pub kind: ParamKind,
}

impl ParamSpec {
    /// Number of scalars in the block, the product of `shape`.
    pub fn len(&self) -> usize {
        self.shape.iter().product()
    }

    /// Whether the block holds no scalars (a zero in `shape`).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The block's indices in the flat vector.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len()
    }
}

/// How the flat vector splits into named tensors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamLayout {
    params: Vec<ParamSpec>,
    len: usize,
}

impl ParamLayout {
    /// Builds a layout from `(name, shape, kind)` triples, packed in order.
    pub fn new(entries: impl IntoIterator<Item = (String, Vec<usize>, ParamKind)>) -> Self {
        let mut params = Vec::new();
        let mut offset = 0;
        for (name, shape, kind) in entries {
            let spec = ParamSpec {
                name,
                shape,
                offset,
                kind,
            };
            offset += spec.len();
            params.push(spec);
        }
        Self {
            params,
            len: offset,
        }
    }

    /// The total number of scalars: the dimension every solver works in.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the layout holds no parameters.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The blocks in the order they are packed.
    pub fn params(&self) -> &[ParamSpec] {
        &self.params
    }

    /// The block named `name`; errors with the available names if there is none.
    pub fn spec(&self, name: &str) -> Result<&ParamSpec> {
        self.params
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| ModelError::UnknownParam {
                name: name.to_string(),
                available: self.names().join(", "),
            })
    }

    /// The block names in packing order.
    pub fn names(&self) -> Vec<String> {
        self.params.iter().map(|p| p.name.clone()).collect()
    }

    /// A short human-readable description, e.g. `layer0.weight[784x10] + layer0.bias[10]`.
    pub fn describe(&self) -> String {
        self.params
            .iter()
            .map(|p| {
                let dims: Vec<String> = p.shape.iter().map(|d| d.to_string()).collect();
                format!("{}[{}]", p.name, dims.join("x"))
            })
            .collect::<Vec<_>>()
            .join(" + ")
    }

    /// Checks that `flat` is a 1-D tensor of the right length.
    pub fn check(&self, flat: &Tensor) -> Result<()> {
        let found = flat.elem_count();
        if flat.rank() != 1 || found != self.len {
            return Err(ModelError::ParamLength {
                layout: self.describe(),
                expected: self.len,
                found,
            });
        }
        Ok(())
    }

    /// A shaped view of one block. Cheap: candle narrows without copying.
    pub fn view(&self, flat: &Tensor, name: &str) -> Result<Tensor> {
        self.check(flat)?;
        let spec = self.spec(name)?;
        Ok(flat
            .narrow(0, spec.offset, spec.len())?
            .reshape(spec.shape.clone())?)
    }

    /// Shaped views of every block, in layout order.
    pub fn views(&self, flat: &Tensor) -> Result<Vec<Tensor>> {
        self.check(flat)?;
        self.params
            .iter()
            .map(|spec| {
                Ok(flat
                    .narrow(0, spec.offset, spec.len())?
                    .reshape(spec.shape.clone())?)
            })
            .collect()
    }

    /// Packs shaped tensors (one per block, in layout order) back into one flat vector.
    pub fn flatten(&self, parts: &[Tensor]) -> Result<Tensor> {
        if parts.len() != self.params.len() {
            return Err(ModelError::Spec(format!(
                "flatten got {} tensors for layout {}",
                parts.len(),
                self.describe()
            )));
        }
        let mut flat = Vec::with_capacity(parts.len());
        for (part, spec) in parts.iter().zip(&self.params) {
            if part.elem_count() != spec.len() {
                return Err(ModelError::Spec(format!(
                    "`{}` has {} entries, expected {:?}",
                    spec.name,
                    part.elem_count(),
                    spec.shape
                )));
            }
            flat.push(part.flatten_all()?);
        }
        Ok(Tensor::cat(&flat, 0)?)
    }

    /// Builds a flat vector that is zero except for block `name`.
    pub fn scatter(&self, name: &str, block: &Tensor) -> Result<Tensor> {
        let spec = self.spec(name)?;
        let (device, dtype) = (block.device(), block.dtype());
        let mut parts = Vec::with_capacity(3);
        if spec.offset > 0 {
            parts.push(Tensor::zeros(spec.offset, dtype, device)?);
        }
        parts.push(block.flatten_all()?);
        let tail = self.len - spec.offset - spec.len();
        if tail > 0 {
            parts.push(Tensor::zeros(tail, dtype, device)?);
        }
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// 1 on weight entries, 0 on biases: L2 multiplies by it so biases stay unpenalised.
    pub fn weight_mask(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        let mut mask = vec![0f32; self.len];
        for spec in self.params.iter().filter(|p| p.kind == ParamKind::Weight) {
            mask[spec.range()].fill(1.0);
        }
        Ok(Tensor::from_vec(mask, self.len, device)?.to_dtype(dtype)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> ParamLayout {
        ParamLayout::new([
            ("layer0.weight".to_string(), vec![3, 2], ParamKind::Weight),
            ("layer0.bias".to_string(), vec![2], ParamKind::Bias),
        ])
    }

    #[test]
    fn views_and_flatten_round_trip() -> Result<()> {
        let l = layout();
        assert_eq!(l.len(), 8);
        let flat = Tensor::arange(0f64, 8., &Device::Cpu)?;
        let w = l.view(&flat, "layer0.weight")?;
        assert_eq!(w.dims(), &[3, 2]);
        assert_eq!(
            w.to_vec2::<f64>()?,
            vec![vec![0., 1.], vec![2., 3.], vec![4., 5.]]
        );
        let b = l.view(&flat, "layer0.bias")?;
        assert_eq!(b.to_vec1::<f64>()?, vec![6., 7.]);
        let back = l.flatten(&l.views(&flat)?)?;
        assert_eq!(back.to_vec1::<f64>()?, flat.to_vec1::<f64>()?);
        Ok(())
    }

    #[test]
    fn wrong_length_and_unknown_names_are_errors() {
        let l = layout();
        let short = Tensor::zeros(5, DType::F64, &Device::Cpu).unwrap();
        let err = l.view(&short, "layer0.weight").unwrap_err().to_string();
        assert!(err.contains("expects 8"), "{err}");
        let flat = Tensor::zeros(8, DType::F64, &Device::Cpu).unwrap();
        let err = l.view(&flat, "layer9.weight").unwrap_err().to_string();
        assert!(err.contains("layer0.bias"), "{err}");
    }

    #[test]
    fn mask_and_scatter() -> Result<()> {
        let l = layout();
        let mask = l.weight_mask(&Device::Cpu, DType::F32)?.to_vec1::<f32>()?;
        assert_eq!(mask, vec![1., 1., 1., 1., 1., 1., 0., 0.]);
        let b = Tensor::new(&[5f64, 6.], &Device::Cpu)?;
        let s = l.scatter("layer0.bias", &b)?.to_vec1::<f64>()?;
        assert_eq!(s, vec![0., 0., 0., 0., 0., 0., 5., 6.]);
        Ok(())
    }
}
