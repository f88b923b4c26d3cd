//! Trained parameters as a `safetensors` file, and back.
//!
//! [`save_weights`] writes the flat parameter vector as one named tensor per
//! block of the model's [`ParamLayout`](crate::ParamLayout) (`layer0.weight` `[fan_in, fan_out]`,
//! `layer0.bias` `[fan_out]`, `layer1.weight`, ...) plus string metadata
//! that is enough to rebuild the [`Model`]: the model spec as
//! [`ModelSpec`]'s `Display` prints it (`softmax`, `softmax-nobias`,
//! `mlp:256 (tanh)`, `mlp:256:relu,128:tanh`, `autoencoder:1000,500,250,30`),
//! the input and class counts (an autoencoder's classes are its inputs) and
//! the dtype.
//!
//! Weights are stored `[in, out]` so that `logits = x @ W + b`; this is the
//! transpose of `torch.nn.Linear.weight`, which is `[out, in]`.
//!
//! [`load_weights`] trusts nothing in the file: a truncated or corrupt file,
//! missing or unknown metadata, a missing, unexpected or misshapen tensor, a
//! dtype other than the one the metadata names, NaN or infinite values, and
//! values too large for the dtype they are loaded as are each refused with
//! a [`WeightsError`] naming the file. The file is
//! written atomically (a temporary file in the same directory, then a
//! rename), so a crash mid-save leaves the previous file intact. The same
//! model and parameters always give the same bytes, so that a resumed run
//! writes the very file an uninterrupted one does.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::tensor::{TensorInfo, TensorView};
use safetensors::{Dtype, SafeTensorError, SafeTensors};

use crate::error::ModelError;
use crate::model::{Activation, Model, ModelSpec};

/// The conventional file name inside a run's output directory.
pub const WEIGHTS_FILE: &str = "weights.safetensors";

/// The value of the `format` metadata key; bumped if the layout changes.
pub const FORMAT: &str = "hessfree-weights/1";

/// The metadata keys every file carries, and no others.
pub const METADATA_KEYS: [&str; 6] = ["format", "model", "inputs", "classes", "dtype", "layout"];

/// The `layout` metadata value: how the weight matrices are oriented.
pub const LAYOUT_NOTE: &str = "weights are [in, out]: logits = x @ W + b \
     (the transpose of torch.nn.Linear.weight, which is [out, in])";

/// Everything that can go wrong saving or loading weights. Every variant
/// names the file and says what was expected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WeightsError {
    /// The file could not be read.
    #[error("{}: cannot read weights", path.display())]
    Read {
        /// The weights file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// The file could not be written (or renamed into place).
    #[error("{}: cannot write weights: {source}", path.display())]
    Write {
        /// The weights file.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// Not a safetensors file, or cut off, or its header does not fit its data.
    #[error("{}: not a valid safetensors file (truncated or corrupt): {reason}", path.display())]
    Corrupt {
        /// The weights file.
        path: PathBuf,
        /// What safetensors (or the header check) found wrong.
        reason: String,
    },

    /// A metadata key every hessfree file carries is absent.
    #[error(
        "{}: metadata key `{key}` is missing; expected a file written by hessfree ({FORMAT}) with keys {}",
        path.display(),
        METADATA_KEYS.join(", ")
    )]
    MissingMetadata {
        /// The weights file.
        path: PathBuf,
        /// The absent key.
        key: String,
    },

    /// A metadata key hessfree does not write: the file comes from elsewhere
    /// or from another format version.
    #[error(
        "{}: unknown metadata key `{key}`; a {FORMAT} file has exactly {}",
        path.display(),
        METADATA_KEYS.join(", ")
    )]
    UnknownMetadata {
        /// The weights file.
        path: PathBuf,
        /// The first unknown key, in sorted order.
        key: String,
    },

    /// A metadata value that does not parse, or describes a model the file cannot hold.
    #[error("{}: metadata `{key}` = `{value}` is invalid: expected {expected}", path.display())]
    BadMetadata {
        /// The weights file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// Its value in the file.
        value: String,
        /// What a valid value looks like.
        expected: String,
    },

    /// The model the metadata describes has a block the file lacks.
    #[error("{}: tensor `{name}` is missing; expected shape {expected:?} for model `{model}`", path.display())]
    MissingTensor {
        /// The weights file.
        path: PathBuf,
        /// The block's name, e.g. `layer0.bias`.
        name: String,
        /// The block's shape in the model.
        expected: Vec<usize>,
        /// The model, as its spec prints.
        model: String,
    },

    /// The file holds a tensor the model has no block for.
    #[error("{}: unexpected tensor `{name}`; model `{model}` has exactly {expected}", path.display())]
    UnexpectedTensor {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The model's blocks, as
        /// [`ParamLayout::describe`](crate::ParamLayout::describe) writes them.
        expected: String,
        /// The model, as its spec prints.
        model: String,
    },

    /// A tensor whose shape is not its block's.
    #[error("{}: tensor `{name}` has shape {found:?}, expected {expected:?}", path.display())]
    Shape {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The block's shape in the model.
        expected: Vec<usize>,
        /// The tensor's shape in the file.
        found: Vec<usize>,
    },

    /// A tensor stored in another dtype than the `dtype` metadata names.
    #[error("{}: tensor `{name}` has dtype {found}, expected {expected} as the metadata says", path.display())]
    Dtype {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// The dtype the metadata names, e.g. `F32`.
        expected: String,
        /// The tensor's dtype in the file.
        found: String,
    },

    /// A NaN or infinite parameter, refused when saving and when loading.
    #[error("{}: tensor `{name}` holds {value} at flat index {index}, expected finite values", path.display())]
    NonFinite {
        /// The weights file.
        path: PathBuf,
        /// The tensor's (block's) name.
        name: String,
        /// Index of the first such value within the tensor.
        index: usize,
        /// The value.
        value: f64,
    },

    /// A finite value in the file that the dtype asked for cannot hold.
    #[error(
        "{}: tensor `{name}` holds {value:e} at flat index {index}, beyond the range of {dtype}, \
         the dtype it is loaded as; expected values {dtype} can hold, or load it as {stored}, \
         the dtype the file stores",
        path.display()
    )]
    OutOfRange {
        /// The weights file.
        path: PathBuf,
        /// The tensor's name.
        name: String,
        /// Index of the first such value within the tensor.
        index: usize,
        /// The value as the file stores it.
        value: f64,
        /// The dtype it was to be loaded as.
        dtype: String,
        /// The dtype the file stores, which holds it.
        stored: String,
    },

    /// A dtype weights cannot be saved or loaded in.
    #[error("{}: {reason}", path.display())]
    Unsupported {
        /// The weights file.
        path: PathBuf,
        /// The dtype refused, and the ones accepted.
        reason: String,
    },

    /// The model could not be built from the metadata, or the vector does not fit it.
    #[error("{}: {source}", path.display())]
    Model {
        /// The weights file.
        path: PathBuf,
        /// The model crate's error.
        #[source]
        source: ModelError,
    },
}

/// Shorthand for this module's results.
pub type Result<T, E = WeightsError> = std::result::Result<T, E>;

/// The dtypes a weights file may hold.
fn file_dtype(dtype: DType) -> Option<Dtype> {
    match dtype {
        DType::F32 => Some(Dtype::F32),
        DType::F64 => Some(Dtype::F64),
        _ => None,
    }
}

/// Saves `w` (the flat parameter vector of `model`, F32 or F64, on any
/// device) to `path` atomically. Refuses a vector of the wrong length, an
/// unsupported dtype, and NaN or infinite entries: a file on disk is always
/// one that [`load_weights`] accepts.
pub fn save_weights(path: &Path, model: &Model, w: &Tensor) -> Result<()> {
    let bytes = to_bytes(path, model, w)?;
    hessfree_fs::write_atomic(path, &bytes).map_err(|source| WeightsError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The file contents [`save_weights`] would write (`path` only names the
/// target in errors).
pub fn to_bytes(path: &Path, model: &Model, w: &Tensor) -> Result<Vec<u8>> {
    let model_err = |source| WeightsError::Model {
        path: path.to_path_buf(),
        source,
    };
    let layout = model.layout();
    layout.check(w).map_err(model_err)?;
    let st_dtype = file_dtype(w.dtype()).ok_or_else(|| WeightsError::Unsupported {
        path: path.to_path_buf(),
        reason: format!(
            "cannot save {:?} parameters, expected F32 or F64",
            w.dtype()
        ),
    })?;
    let w = w.to_device(&Device::Cpu).map_err(|e| model_err(e.into()))?;
    // Little-endian bytes of the whole vector; each block is a slice of it.
    let (bytes, values): (Vec<u8>, Vec<f64>) = match st_dtype {
        Dtype::F32 => {
            let v = w.to_vec1::<f32>().map_err(|e| model_err(e.into()))?;
            (
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                v.iter().map(|&x| f64::from(x)).collect(),
            )
        }
        _ => {
            let v = w.to_vec1::<f64>().map_err(|e| model_err(e.into()))?;
            (v.iter().flat_map(|x| x.to_le_bytes()).collect(), v)
        }
    };
    let size = st_dtype.bitsize() / 8;
    let mut views = Vec::with_capacity(layout.params().len());
    for spec in layout.params() {
        let block = &values[spec.range()];
        if let Some(index) = block.iter().position(|x| !x.is_finite()) {
            return Err(WeightsError::NonFinite {
                path: path.to_path_buf(),
                name: spec.name.clone(),
                index,
                value: block[index],
            });
        }
        let data = &bytes[spec.offset * size..(spec.offset + spec.len()) * size];
        let view = TensorView::new(st_dtype, spec.shape.clone(), data).map_err(|e| {
            WeightsError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("building tensor `{}`: {e}", spec.name),
            }
        })?;
        views.push((spec.name.clone(), view));
    }
    let metadata = BTreeMap::from([
        ("format", FORMAT.to_string()),
        ("model", model.spec().to_string()),
        ("inputs", model.inputs().to_string()),
        ("classes", model.classes().to_string()),
        ("dtype", format!("{st_dtype:?}")),
        ("layout", LAYOUT_NOTE.to_string()),
    ]);
    serialize(&views, &metadata).map_err(|e| WeightsError::Corrupt {
        path: path.to_path_buf(),
        reason: format!("serialising: {e}"),
    })
}

/// The safetensors encoding of `tensors` with `metadata`, the same bytes for
/// the same input every time.
///
/// `safetensors::serialize` takes the metadata as a `HashMap` and writes it
/// in that map's iteration order, which std seeds at random for every map:
/// the same weights got a different header on every save, so a resumed run
/// never wrote the file an uninterrupted one did. Here the metadata keys are
/// written sorted, and everything else as `safetensors::serialize` lays it
/// out: the header's length as a little-endian `u64`, the JSON header padded
/// with spaces to a multiple of 8 bytes (so that the data is aligned), then
/// the tensors' data back to back in name order.
fn serialize(
    tensors: &[(String, TensorView<'_>)],
    metadata: &BTreeMap<&str, String>,
) -> serde_json::Result<Vec<u8>> {
    let mut sorted: Vec<&(String, TensorView<'_>)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    let mut header = String::from("{\"__metadata__\":");
    header += &serde_json::to_string(metadata)?;
    let mut offset = 0;
    for (name, view) in &sorted {
        let len = view.data().len();
        let info = TensorInfo {
            dtype: view.dtype(),
            shape: view.shape().to_vec(),
            data_offsets: (offset, offset + len),
        };
        offset += len;
        header.push(',');
        header += &serde_json::to_string(name)?;
        header.push(':');
        header += &serde_json::to_string(&info)?;
    }
    header.push('}');
    let padded = header.len().next_multiple_of(8);
    let mut out = Vec::with_capacity(8 + padded + offset);
    out.extend_from_slice(&(padded as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.resize(8 + padded, b' ');
    for (_, view) in &sorted {
        out.extend_from_slice(view.data());
    }
    Ok(out)
}

/// Loads a file written by [`save_weights`]: the model it was saved from,
/// and its flat parameter vector on `device` in `dtype`: bit-exact when
/// `dtype` is the stored one (see [`load_weights_stored`]), rounded
/// otherwise, and refused if a value overflows `dtype`.
pub fn load_weights(path: &Path, device: &Device, dtype: DType) -> Result<(Model, Tensor)> {
    let bytes = fs::read(path).map_err(|source| WeightsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    from_bytes(&bytes, path, device, dtype)
}

/// [`load_weights`] in the dtype the file stores (F32 or F64), bit-exact.
pub fn load_weights_stored(path: &Path, device: &Device) -> Result<(Model, Tensor)> {
    let bytes = fs::read(path).map_err(|source| WeightsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    decode(&bytes, path, device, None)
}

/// [`load_weights`] on bytes already in memory; `path` names them in errors.
pub fn from_bytes(
    bytes: &[u8],
    path: &Path,
    device: &Device,
    dtype: DType,
) -> Result<(Model, Tensor)> {
    decode(bytes, path, device, Some(dtype))
}

/// Validates and decodes a whole file; `dtype` `None` keeps the stored one.
fn decode(
    bytes: &[u8],
    path: &Path,
    device: &Device,
    dtype: Option<DType>,
) -> Result<(Model, Tensor)> {
    let p = || path.to_path_buf();
    if let Some(dtype) = dtype.filter(|d| !d.is_float()) {
        return Err(WeightsError::Unsupported {
            path: p(),
            reason: format!("cannot load weights as {dtype:?}, expected a floating-point dtype"),
        });
    }
    let corrupt = |e: SafeTensorError| WeightsError::Corrupt {
        path: p(),
        reason: match e {
            // safetensors validates the tensors in its hash map's order where
            // two share an offset, and so named a different tensor, or found
            // a different problem, from one load of the same file to the next.
            SafeTensorError::InvalidOffset(_)
            | SafeTensorError::TensorInvalidInfo
            | SafeTensorError::MisalignedSlice
            | SafeTensorError::ValidationOverflow => {
                header_problem(bytes).unwrap_or_else(|| e.to_string())
            }
            e => e.to_string(),
        },
    };
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(corrupt)?;
    let file = SafeTensors::deserialize(bytes).map_err(corrupt)?;
    let empty = HashMap::new();
    let meta = header.metadata().as_ref().unwrap_or(&empty);

    if let Some(key) = meta
        .keys()
        .filter(|k| !METADATA_KEYS.contains(&k.as_str()))
        .min()
    {
        return Err(WeightsError::UnknownMetadata {
            path: p(),
            key: key.clone(),
        });
    }
    let get = |key: &str| {
        meta.get(key)
            .map(String::as_str)
            .ok_or_else(|| WeightsError::MissingMetadata {
                path: p(),
                key: key.to_string(),
            })
    };
    let bad = |key: &str, value: &str, expected: &str| WeightsError::BadMetadata {
        path: p(),
        key: key.to_string(),
        value: value.to_string(),
        expected: expected.to_string(),
    };

    let format = get("format")?;
    if format != FORMAT {
        return Err(bad("format", format, FORMAT));
    }
    let spec_text = get("model")?;
    let spec = parse_spec(spec_text).ok_or_else(|| {
        bad(
            "model",
            spec_text,
            "softmax, softmax-nobias, mlp:W1[,W2...] (ACTIVATION), \
             mlp:W1:ACT1[,W2:ACT2...] with not all ACTs the same, or autoencoder:W1[,W2...],CODE",
        )
    })?;
    let count = |key: &str| {
        let text = get(key)?;
        // Only the writer's spelling, as for the model spec: `+4` and `04`
        // would parse as 4, and a file would not be what saving its weights
        // writes.
        text.parse::<usize>()
            .ok()
            .filter(|&n| n > 0 && n.to_string() == text)
            .ok_or_else(|| {
                bad(
                    key,
                    text,
                    "a positive integer in plain decimal (no sign, no leading zeros)",
                )
            })
    };
    let (inputs, classes) = (count("inputs")?, count("classes")?);
    let dtype_text = get("dtype")?;
    let (st_dtype, stored) = match dtype_text {
        "F32" => (Dtype::F32, DType::F32),
        "F64" => (Dtype::F64, DType::F64),
        other => return Err(bad("dtype", other, "F32 or F64")),
    };
    let layout_text = get("layout")?;
    if !layout_text.starts_with("weights are [in, out]") {
        return Err(bad("layout", layout_text, LAYOUT_NOTE));
    }

    // The metadata must not describe a model larger than the file before
    // one is built: its layout is sized from these numbers.
    let params = param_count(&spec, inputs, classes)
        .filter(|&n| {
            n.checked_mul(st_dtype.bitsize() / 8)
                .is_some_and(|b| b <= bytes.len())
        })
        .ok_or_else(|| {
            bad(
                "model",
                &format!("{spec_text} with {inputs} inputs and {classes} classes"),
                &format!(
                    "a model whose parameters fit in the file's {} bytes",
                    bytes.len()
                ),
            )
        })?;
    let model = Model::new(spec, inputs, classes)
        .map_err(|source| WeightsError::Model { path: p(), source })?;
    if model.classes() != classes {
        // An autoencoder's outputs are its inputs, and a file says so.
        return Err(bad(
            "classes",
            &classes.to_string(),
            &format!(
                "{} (the inputs) for autoencoder `{spec_text}`",
                model.classes()
            ),
        ));
    }
    debug_assert_eq!(model.layout().len(), params);
    let model_name = model.spec().to_string();

    let layout = model.layout();
    if let Some(name) = file
        .names()
        .into_iter()
        .filter(|n| layout.spec(n).is_err())
        .min()
    {
        return Err(WeightsError::UnexpectedTensor {
            path: p(),
            name: name.to_string(),
            expected: layout.describe(),
            model: model_name,
        });
    }
    let mut flat: Vec<f64> = Vec::new();
    let mut flat32: Vec<f32> = Vec::new();
    for spec in layout.params() {
        let view = file
            .tensor(&spec.name)
            .map_err(|_| WeightsError::MissingTensor {
                path: p(),
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                model: model_name.clone(),
            })?;
        if view.shape() != spec.shape.as_slice() {
            return Err(WeightsError::Shape {
                path: p(),
                name: spec.name.clone(),
                expected: spec.shape.clone(),
                found: view.shape().to_vec(),
            });
        }
        if view.dtype() != st_dtype {
            return Err(WeightsError::Dtype {
                path: p(),
                name: spec.name.clone(),
                expected: format!("{st_dtype:?}"),
                found: format!("{:?}", view.dtype()),
            });
        }
        let non_finite = |index: usize, value: f64| WeightsError::NonFinite {
            path: p(),
            name: spec.name.clone(),
            index,
            value,
        };
        match st_dtype {
            Dtype::F32 => {
                for (i, c) in view.data().chunks_exact(4).enumerate() {
                    let x = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
                    if !x.is_finite() {
                        return Err(non_finite(i, f64::from(x)));
                    }
                    flat32.push(x);
                }
            }
            _ => {
                for (i, c) in view.data().chunks_exact(8).enumerate() {
                    let x = f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                    if !x.is_finite() {
                        return Err(non_finite(i, x));
                    }
                    flat.push(x);
                }
            }
        }
    }
    let model_err = |e: candle_core::Error| WeightsError::Model {
        path: p(),
        source: e.into(),
    };
    let target = dtype.unwrap_or(stored);
    let converted = match stored {
        DType::F32 => Tensor::from_slice(&flat32, params, &Device::Cpu),
        _ => Tensor::from_slice(&flat, params, &Device::Cpu),
    }
    .and_then(|t| t.to_dtype(target))
    .map_err(model_err)?;
    if target != stored {
        // A value the file holds finitely can still overflow a narrower
        // dtype (1e300 as F32, 1e5 as F16): refused, or the caller would get
        // infinities from a file that has none.
        let back = converted
            .to_dtype(DType::F64)
            .and_then(|t| t.to_vec1::<f64>())
            .map_err(model_err)?;
        if let Some(i) = back.iter().position(|x| !x.is_finite()) {
            let spec = layout
                .params()
                .iter()
                .find(|s| s.range().contains(&i))
                .expect("the layout covers the flat vector");
            return Err(WeightsError::OutOfRange {
                path: p(),
                name: spec.name.clone(),
                index: i - spec.offset,
                value: match stored {
                    DType::F32 => f64::from(flat32[i]),
                    _ => flat[i],
                },
                dtype: format!("{target:?}"),
                stored: format!("{st_dtype:?}"),
            });
        }
    }
    Ok((model, converted.to_device(device).map_err(model_err)?))
}

/// The first tensor whose entry in the header safetensors' validation
/// refuses, and why: its `data_offsets` must start where the previous
/// tensor's end (the first at 0) and span exactly its dtype and shape.
/// Checked in safetensors' order, by offsets, with ties broken by name;
/// `None` if the header does not parse or every entry is sound.
fn header_problem(bytes: &[u8]) -> Option<String> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(bytes.get(8..n.checked_add(8)?)?).ok()?;
    let mut entries = Vec::new();
    for (name, info) in header.iter().filter(|(k, _)| k.as_str() != "__metadata__") {
        let info: TensorInfo = serde_json::from_value(info.clone()).ok()?;
        entries.push((info.data_offsets, name.as_str(), info));
    }
    entries.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
    let mut previous: Option<(&str, usize)> = None;
    for ((start, end), name, info) in entries {
        let expected = previous.map_or(0, |(_, e)| e);
        let offsets = format!("tensor `{name}` has data_offsets [{start}, {end}]");
        if start != expected {
            let after = match previous {
                Some((prev, _)) => format!("where `{prev}` ends"),
                None => "the first tensor's data starts at 0".to_string(),
            };
            return Some(format!(
                "{offsets}, expected it to start at {expected} \
                 ({after}; tensors may neither overlap nor leave gaps)"
            ));
        }
        if end < start {
            return Some(format!("{offsets}, which end before they start"));
        }
        let what = format!("{:?} of shape {:?}", info.dtype, info.shape);
        let Some(bits) = info
            .shape
            .iter()
            .try_fold(info.dtype.bitsize(), |acc, &d| acc.checked_mul(d))
        else {
            return Some(format!("tensor `{name}` is {what}, whose size overflows"));
        };
        if bits % 8 != 0 {
            return Some(format!(
                "tensor `{name}` is {what}, which is not a whole number of bytes"
            ));
        }
        if end - start != bits / 8 {
            return Some(format!(
                "{offsets}, {} bytes, expected {} for {what}",
                end - start,
                bits / 8
            ));
        }
        previous = Some((name, end));
    }
    None
}

/// Parses what `ModelSpec`'s `Display` prints; `None` unless it prints
/// back identically, so no two strings name the same model.
fn parse_spec(text: &str) -> Option<ModelSpec> {
    let spec = match text.split_once(" (") {
        Some((spec, rest)) => {
            let activation: Activation = rest.strip_suffix(')')?.parse().ok()?;
            ModelSpec::parse(spec, activation).ok()?
        }
        // The activation is irrelevant for softmax and checked below for MLPs.
        None => ModelSpec::parse(text, Activation::Tanh).ok()?,
    };
    (spec.to_string() == text).then_some(spec)
}

/// The parameter count of a model, or `None` if it overflows.
fn param_count(spec: &ModelSpec, inputs: usize, classes: usize) -> Option<usize> {
    let bias = !matches!(spec, ModelSpec::Softmax { bias: false });
    let outputs = match spec {
        ModelSpec::Autoencoder { .. } => inputs,
        _ => classes,
    };
    let mut widths = vec![inputs];
    widths.extend(spec.hidden_layers().iter().map(|h| h.width));
    widths.push(outputs);
    widths.windows(2).try_fold(0usize, |acc, pair| {
        let layer = pair[0]
            .checked_mul(pair[1])?
            .checked_add(if bias { pair[1] } else { 0 })?;
        acc.checked_add(layer)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_strings_round_trip_and_reject_near_misses() {
        for text in [
            "softmax",
            "softmax-nobias",
            "mlp:256 (tanh)",
            "mlp:32,16 (relu)",
            "mlp:32,16 (logistic)",
            "mlp:8:relu,4:tanh,3:linear",
            "autoencoder:8,4,2",
            "autoencoder:30",
        ] {
            let spec = parse_spec(text).unwrap_or_else(|| panic!("{text}"));
            assert_eq!(spec.to_string(), text);
        }
        for text in [
            "",
            "mlp:256",
            "mlp:256 (gelu)",
            "mlp:256 (tanh",
            "softmax (tanh)",
            "mlp: 256 (tanh)",
            "cnn",
            // One model, one string: uniform layers print the old way, and
            // every per-layer activation is spelled out.
            "mlp:8:tanh,4:tanh",
            "mlp:8:relu,4",
            "mlp:8:relu,4 (tanh)",
            "mlp:8:sigmoid,4:tanh",
            "autoencoder:8,4 (tanh)",
            "autoencoder:8:relu",
            "autoencoder:",
        ] {
            assert!(parse_spec(text).is_none(), "accepted `{text}`");
        }
    }

    #[test]
    fn param_count_matches_the_layout_and_catches_overflow() {
        for (spec, inputs, classes) in [
            (ModelSpec::Softmax { bias: true }, 784, 10),
            (ModelSpec::Softmax { bias: false }, 784, 10),
            (
                ModelSpec::parse("mlp:7,5", Activation::Relu).unwrap(),
                13,
                3,
            ),
            (
                ModelSpec::parse("mlp:7:logistic,5:linear", Activation::Relu).unwrap(),
                13,
                3,
            ),
            (
                ModelSpec::parse("autoencoder:7,5,2", Activation::Relu).unwrap(),
                13,
                3,
            ),
        ] {
            let model = Model::new(spec.clone(), inputs, classes).unwrap();
            assert_eq!(
                param_count(&spec, inputs, classes),
                Some(model.layout().len())
            );
        }
        let huge = ModelSpec::parse("mlp:18446744073709551615", Activation::Tanh).unwrap();
        assert_eq!(param_count(&huge, 784, 10), None);
    }
}
