//! Weights files: bit-exact round trips, the layout other readers see (the
//! plain `safetensors` crate stands in for Python's `safetensors`), and a
//! typed error naming the file, never a panic, for every kind of damage.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use hessfree_model::weights::{FORMAT, METADATA_KEYS, WeightsError, from_bytes, to_bytes};
use hessfree_model::{Activation, Model, ModelSpec, WEIGHTS_FILE, load_weights, save_weights};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, SafeTensors};

/// A fresh, empty directory under cargo's per-test-target temp dir.
fn temp_dir(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join("weights-tests")
        .join(test);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn models() -> Vec<Model> {
    vec![
        Model::new(ModelSpec::Softmax { bias: true }, 784, 10).unwrap(),
        Model::new(ModelSpec::Softmax { bias: false }, 784, 10).unwrap(),
        Model::new(
            ModelSpec::parse("mlp:16", Activation::Tanh).unwrap(),
            784,
            10,
        )
        .unwrap(),
        Model::new(
            ModelSpec::parse("mlp:7,5", Activation::Relu).unwrap(),
            13,
            3,
        )
        .unwrap(),
    ]
}

/// Seeded values of every magnitude, biases included, with signed zeros
/// and subnormals so that "bit-exact" means something.
fn params(model: &Model, dtype: DType) -> Tensor {
    let n = model.layout().len();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut v: Vec<f64> = (0..n)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let unit = (state >> 11) as f64 / (1u64 << 53) as f64 - 0.5;
            unit * 10f64.powi((i % 9) as i32 - 4)
        })
        .collect();
    v[0] = -0.0;
    v[1] = f64::from(f32::MIN_POSITIVE) / 4.0;
    v[2] = f64::MIN_POSITIVE / 8.0;
    Tensor::from_vec(v, n, &Device::Cpu)
        .unwrap()
        .to_dtype(dtype)
        .unwrap()
}

fn bits(t: &Tensor) -> Vec<u64> {
    match t.dtype() {
        DType::F32 => t
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| u64::from(x.to_bits()))
            .collect(),
        _ => t
            .to_vec1::<f64>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect(),
    }
}

/// The error of loading `bytes`, asserting it names the file.
fn load_error(bytes: &[u8], what: &str) -> WeightsError {
    let path = Path::new("/runs/demo/weights.safetensors");
    match from_bytes(bytes, path, &Device::Cpu, DType::F64) {
        Ok(_) => panic!("{what}: accepted"),
        Err(e) => {
            let msg = e.to_string();
            assert!(
                msg.contains("/runs/demo/weights.safetensors"),
                "{what}: message does not name the file: {msg}"
            );
            e
        }
    }
}

fn metadata_of(model: &Model, dtype: &str) -> HashMap<String, String> {
    let bytes = to_bytes(Path::new("x"), model, &params(model, DType::F64)).unwrap();
    let (_, header) = SafeTensors::read_metadata(&bytes).unwrap();
    let mut meta = header.metadata().clone().unwrap();
    meta.insert("dtype".into(), dtype.into());
    meta
}

/// A tensor as a file holds it: name, dtype, shape, little-endian bytes.
type RawTensor = (&'static str, Dtype, Vec<usize>, Vec<u8>);

/// A safetensors file with arbitrary metadata and tensors, for the cases
/// hessfree never writes itself.
fn custom_file(metadata: Option<HashMap<String, String>>, tensors: &[RawTensor]) -> Vec<u8> {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(name, dtype, shape, data)| {
            (
                name.to_string(),
                TensorView::new(*dtype, shape.clone(), data).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views.iter().map(|(n, v)| (n.as_str(), v)), metadata).unwrap()
}

fn f64_bytes(n: usize, value: f64) -> Vec<u8> {
    (0..n).flat_map(|_| value.to_le_bytes()).collect()
}

/// The small softmax model the damage tests use, and its tensors in F64.
fn small() -> (Model, Vec<RawTensor>) {
    let model = Model::new(ModelSpec::Softmax { bias: true }, 4, 3).unwrap();
    let tensors = vec![
        ("layer0.weight", Dtype::F64, vec![4, 3], f64_bytes(12, 0.5)),
        ("layer0.bias", Dtype::F64, vec![3], f64_bytes(3, -0.25)),
    ];
    (model, tensors)
}

#[test]
fn round_trips_are_bit_exact_in_f32_and_f64() -> Result<()> {
    let dir = temp_dir("round_trip");
    for model in models() {
        for dtype in [DType::F32, DType::F64] {
            let w = params(&model, dtype);
            let path = dir.join(format!("{}-{dtype:?}.safetensors", model.layout().len()));
            save_weights(&path, &model, &w)?;
            let (back, w2) = load_weights(&path, &Device::Cpu, dtype)?;
            assert_eq!(back, model, "model rebuilt from metadata");
            assert_eq!(w2.dtype(), dtype);
            assert_eq!(bits(&w2), bits(&w), "{} {dtype:?}", model.spec());
            // Logits agree exactly too, as they must with identical bits.
            let x = Tensor::ones((2, model.inputs()), dtype, &Device::Cpu)?;
            assert_eq!(
                bits(&model.logits(&w, &x)?.flatten_all()?),
                bits(&back.logits(&w2, &x)?.flatten_all()?)
            );
        }
    }
    // No temporary files are left behind by the atomic writes.
    let leftovers: Vec<_> = fs::read_dir(&dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    Ok(())
}

#[test]
fn loading_in_another_dtype_converts() -> Result<()> {
    let dir = temp_dir("convert");
    let model = &models()[0];
    let w = params(model, DType::F64);
    let path = dir.join(WEIGHTS_FILE);
    save_weights(&path, model, &w)?;
    let (_, w32) = load_weights(&path, &Device::Cpu, DType::F32)?;
    assert_eq!(bits(&w32), bits(&w.to_dtype(DType::F32)?));
    let err = load_weights(&path, &Device::Cpu, DType::U8).unwrap_err();
    assert!(matches!(err, WeightsError::Unsupported { .. }), "{err}");
    Ok(())
}

#[test]
fn plain_safetensors_reader_sees_named_in_out_tensors_and_metadata() -> Result<()> {
    let dir = temp_dir("reader");
    let model = Model::new(
        ModelSpec::parse("mlp:16", Activation::Tanh).unwrap(),
        784,
        10,
    )?;
    let w = params(&model, DType::F32);
    let path = dir.join(WEIGHTS_FILE);
    save_weights(&path, &model, &w)?;

    let bytes = fs::read(&path)?;
    let file = SafeTensors::deserialize(&bytes)?;
    let mut names = file.names();
    names.sort();
    assert_eq!(
        names,
        [
            "layer0.bias",
            "layer0.weight",
            "layer1.bias",
            "layer1.weight"
        ]
    );
    for (name, shape) in [
        ("layer0.weight", vec![784, 16]),
        ("layer0.bias", vec![16]),
        ("layer1.weight", vec![16, 10]),
        ("layer1.bias", vec![10]),
    ] {
        let view = file.tensor(name)?;
        assert_eq!(view.shape(), shape.as_slice(), "{name}");
        assert_eq!(view.dtype(), Dtype::F32, "{name}");
        // Row-major [in, out]: element (i, j) is W[i, j] of `x @ W + b`.
        let expected = model.layout().view(&w, name)?.flatten_all()?;
        let found: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(found, expected.to_vec1::<f32>()?, "{name}");
    }
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    let meta = header.metadata().clone().expect("__metadata__ present");
    let mut keys: Vec<&str> = meta.keys().map(String::as_str).collect();
    keys.sort();
    let mut expected_keys = METADATA_KEYS.to_vec();
    expected_keys.sort();
    assert_eq!(keys, expected_keys);
    assert_eq!(meta["format"], FORMAT);
    assert_eq!(meta["model"], "mlp:16 (tanh)");
    assert_eq!(meta["inputs"], "784");
    assert_eq!(meta["classes"], "10");
    assert_eq!(meta["dtype"], "F32");
    assert!(meta["layout"].contains("[in, out]"), "{}", meta["layout"]);
    assert!(
        meta["layout"].contains("torch.nn.Linear"),
        "{}",
        meta["layout"]
    );
    Ok(())
}

#[test]
fn every_truncation_and_byte_flip_is_an_error_or_a_valid_load() {
    let (model, tensors) = small();
    let bytes = custom_file(Some(metadata_of(&model, "F64")), &tensors);
    from_bytes(&bytes, Path::new("ok"), &Device::Cpu, DType::F64).expect("the intact file loads");
    for len in 0..bytes.len() {
        let err = load_error(&bytes[..len], &format!("truncated to {len} bytes"));
        assert!(
            matches!(err, WeightsError::Corrupt { .. }),
            "truncated to {len}: {err}"
        );
    }
    let mut extended = bytes.clone();
    extended.push(0);
    assert!(matches!(
        load_error(&extended, "one byte appended"),
        WeightsError::Corrupt { .. }
    ));
    // Each byte inverted in turn: header damage is refused, data damage
    // either still decodes to finite numbers or is refused. Never a panic.
    let path = Path::new("/runs/demo/weights.safetensors");
    for i in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[i] ^= 0xff;
        if let Err(e) = from_bytes(&damaged, path, &Device::Cpu, DType::F64) {
            assert!(
                e.to_string().contains("weights.safetensors"),
                "byte {i}: {e}"
            );
        }
    }
    assert!(matches!(
        load_error(b"not a safetensors file at all", "text"),
        WeightsError::Corrupt { .. }
    ));
}

#[test]
fn missing_unexpected_and_misshapen_tensors_are_refused() {
    let (model, tensors) = small();
    let meta = metadata_of(&model, "F64");

    let err = load_error(
        &custom_file(Some(meta.clone()), &tensors[..1]),
        "missing bias",
    );
    assert!(
        matches!(&err, WeightsError::MissingTensor { name, .. } if name == "layer0.bias"),
        "{err}"
    );

    // torch.nn.Linear's [out, in] orientation, saved without transposing.
    let mut transposed = tensors.clone();
    transposed[0].2 = vec![3, 4];
    let err = load_error(&custom_file(Some(meta.clone()), &transposed), "transposed");
    assert!(
        matches!(&err, WeightsError::Shape { name, expected, found, .. }
            if name == "layer0.weight" && expected == &[4, 3] && found == &[3, 4]),
        "{err}"
    );

    let mut extra = tensors.clone();
    extra.push(("layer1.weight", Dtype::F64, vec![3, 3], f64_bytes(9, 0.0)));
    let err = load_error(&custom_file(Some(meta.clone()), &extra), "extra tensor");
    assert!(
        matches!(&err, WeightsError::UnexpectedTensor { name, .. } if name == "layer1.weight"),
        "{err}"
    );

    let mut single = tensors.clone();
    single[1] = (
        "layer0.bias",
        Dtype::F32,
        vec![3],
        (0..3).flat_map(|_| 1f32.to_le_bytes()).collect(),
    );
    let err = load_error(&custom_file(Some(meta), &single), "mixed dtypes");
    assert!(matches!(err, WeightsError::Dtype { .. }), "{err}");
}

#[test]
fn nan_and_infinite_values_are_refused_on_load_and_on_save() {
    let (model, tensors) = small();
    let meta = metadata_of(&model, "F64");
    for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let mut poisoned = tensors.clone();
        let mut data = f64_bytes(12, 0.5);
        data[5 * 8..6 * 8].copy_from_slice(&bad.to_le_bytes());
        poisoned[0].3 = data;
        let err = load_error(&custom_file(Some(meta.clone()), &poisoned), "non-finite");
        assert!(
            matches!(&err, WeightsError::NonFinite { name, index: 5, .. } if name == "layer0.weight"),
            "{err}"
        );
    }

    let dir = temp_dir("nan_save");
    let path = dir.join(WEIGHTS_FILE);
    let mut v = vec![0f32; model.layout().len()];
    v[13] = f32::NAN;
    let w = Tensor::from_vec(v, model.layout().len(), &Device::Cpu).unwrap();
    let err = save_weights(&path, &model, &w).unwrap_err();
    assert!(
        matches!(&err, WeightsError::NonFinite { name, index: 1, .. } if name == "layer0.bias"),
        "{err}"
    );
    assert!(
        fs::read_dir(&dir).unwrap().next().is_none(),
        "a refused save writes nothing"
    );

    let short = Tensor::zeros(5, DType::F32, &Device::Cpu).unwrap();
    let err = save_weights(&path, &model, &short).unwrap_err();
    assert!(err.to_string().contains("expects 15"), "{err}");
    let half = Tensor::zeros(15, DType::F16, &Device::Cpu).unwrap();
    let err = save_weights(&path, &model, &half).unwrap_err();
    assert!(matches!(err, WeightsError::Unsupported { .. }), "{err}");
}

/// The first finding of fuzzing the reader
/// (`fuzz/regressions/weights-f64-value-overflows-f32-*`): an F64 file
/// holding a finite value beyond F32's range, loaded as F32, gave an
/// infinite parameter.
#[test]
fn values_beyond_the_dtype_asked_for_are_refused() {
    let (model, mut tensors) = small();
    let path = Path::new("/runs/demo/weights.safetensors");
    let mut bias = f64_bytes(3, -0.25);
    bias[2 * 8..].copy_from_slice(&(-1e300f64).to_le_bytes());
    tensors[1].3 = bias;
    let bytes = custom_file(Some(metadata_of(&model, "F64")), &tensors);
    let (_, w) = from_bytes(&bytes, path, &Device::Cpu, DType::F64).expect("F64 holds it");
    assert_eq!(w.to_vec1::<f64>().unwrap()[14], -1e300);
    for (dtype, name) in [
        (DType::F32, "F32"),
        (DType::F16, "F16"),
        (DType::BF16, "BF16"),
    ] {
        let err = from_bytes(&bytes, path, &Device::Cpu, dtype).unwrap_err();
        assert!(
            matches!(&err, WeightsError::OutOfRange { name: n, index: 2, value, dtype: d, stored, .. }
                if n == "layer0.bias" && *value == -1e300 && d == name && stored == "F64"),
            "{name}: {err}"
        );
        let msg = err.to_string();
        assert!(msg.starts_with("/runs/demo/weights.safetensors: "), "{msg}");
        assert!(msg.contains("beyond the range of"), "{msg}");
    }

    // F16 tops out at 65504: an F32 file of ordinary weights can exceed it.
    let mut t32 = vec![0.5f32; 15];
    t32[3] = 1e5;
    let w = Tensor::from_vec(t32, 15, &Device::Cpu).unwrap();
    let bytes = to_bytes(path, &model, &w).unwrap();
    assert!(from_bytes(&bytes, path, &Device::Cpu, DType::F32).is_ok());
    let err = from_bytes(&bytes, path, &Device::Cpu, DType::F16).unwrap_err();
    assert!(
        matches!(&err, WeightsError::OutOfRange { name, index: 3, .. } if name == "layer0.weight"),
        "{err}"
    );

    // Underflow is rounding, not overflow: 1e-300 loads as F32 zero.
    let (model, mut tensors) = small();
    tensors[0].3 = f64_bytes(12, 1e-300);
    let bytes = custom_file(Some(metadata_of(&model, "F64")), &tensors);
    let (_, w) = from_bytes(&bytes, path, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(w.to_vec1::<f32>().unwrap()[..12], [0.0f32; 12]);
}

/// A file laid out by hand: the header's JSON as given, then `data_len`
/// zero bytes.
fn raw_file(header: &str, data_len: usize) -> Vec<u8> {
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.resize(out.len() + data_len, 0);
    out
}

/// The second and third findings of fuzzing the reader
/// (`fuzz/regressions/weights-tied-offsets-*`): safetensors validates the
/// tensors in its hash map's order where two share an offset, so the same
/// file was refused for one tensor by one load and for another tensor, or
/// for another reason, by the next.
#[test]
fn broken_tensor_entries_are_reported_the_same_way_every_time() {
    let entry = |name: &str, dtype: &str, shape: &str, s: usize, e: usize| {
        format!(r#""{name}":{{"dtype":"{dtype}","shape":{shape},"data_offsets":[{s},{e}]}}"#)
    };
    let gap = "tensors may neither overlap nor leave gaps";
    for (tensors, data_len, expected) in [
        (
            vec![
                entry("layer0.weight", "F64", "[3]", 8, 32),
                entry("layer0.bias", "F64", "[3]", 8, 32),
            ],
            32,
            format!(
                "tensor `layer0.bias` has data_offsets [8, 32], expected it to start at 0 \
                 (the first tensor's data starts at 0; {gap})"
            ),
        ),
        (
            vec![
                entry("layer0.weight", "F64", "[3]", 0, 24),
                entry("layer0.bias", "F64", "[3]", 16, 40),
            ],
            40,
            format!(
                "tensor `layer0.bias` has data_offsets [16, 40], expected it to start at 24 \
                 (where `layer0.weight` ends; {gap})"
            ),
        ),
        (
            vec![
                entry("layer0.weight", "F64", "[3]", 0, 24),
                entry("layer0.bias", "F64", "[3]", 32, 56),
            ],
            56,
            format!(
                "tensor `layer0.bias` has data_offsets [32, 56], expected it to start at 24 \
                 (where `layer0.weight` ends; {gap})"
            ),
        ),
        // Tied, and one of the two also the wrong size for its shape.
        (
            vec![
                entry("a", "F32", "[3]", 0, 24),
                entry("b", "F64", "[3]", 0, 24),
            ],
            24,
            "tensor `a` has data_offsets [0, 24], 24 bytes, expected 12 for F32 of shape [3]"
                .to_string(),
        ),
        (
            vec![
                entry("a", "F64", "[3]", 0, 24),
                entry("b", "F32", "[3]", 0, 24),
            ],
            24,
            format!(
                "tensor `b` has data_offsets [0, 24], expected it to start at 24 \
                 (where `a` ends; {gap})"
            ),
        ),
        (
            vec![entry("a", "F64", "[18446744073709551615,2]", 0, 8)],
            8,
            "tensor `a` is F64 of shape [18446744073709551615, 2], whose size overflows"
                .to_string(),
        ),
        (
            vec![
                entry("a", "F64", "[1]", 0, 8),
                entry("b", "F64", "[1]", 8, 0),
            ],
            8,
            "tensor `b` has data_offsets [8, 0], which end before they start".to_string(),
        ),
    ] {
        let bytes = raw_file(&format!("{{{}}}", tensors.join(",")), data_len);
        for _ in 0..32 {
            let err = load_error(&bytes, &expected);
            assert!(matches!(err, WeightsError::Corrupt { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "/runs/demo/weights.safetensors: not a valid safetensors file \
                     (truncated or corrupt): {expected}"
                )
            );
        }
    }
}

#[test]
fn missing_unknown_and_invalid_metadata_are_refused() {
    let (model, tensors) = small();
    let meta = metadata_of(&model, "F64");

    let err = load_error(&custom_file(None, &tensors), "no metadata");
    assert!(
        matches!(&err, WeightsError::MissingMetadata { key, .. } if key == "format"),
        "{err}"
    );
    for key in METADATA_KEYS {
        let mut m = meta.clone();
        m.remove(key);
        let err = load_error(&custom_file(Some(m), &tensors), key);
        assert!(
            matches!(&err, WeightsError::MissingMetadata { key: k, .. } if k == key),
            "{key}: {err}"
        );
    }

    let mut m = meta.clone();
    m.insert("learning_rate".into(), "0.5".into());
    let err = load_error(&custom_file(Some(m), &tensors), "unknown key");
    assert!(
        matches!(&err, WeightsError::UnknownMetadata { key, .. } if key == "learning_rate"),
        "{err}"
    );

    for (key, value, reported) in [
        ("format", "hessfree-weights/99", "format"),
        ("model", "cnn", "model"),
        ("model", "mlp:16", "model"),
        ("model", "softmax (tanh)", "model"),
        ("inputs", "-4", "inputs"),
        ("inputs", "four", "inputs"),
        // Parse as numbers, but are not how the writer spells them.
        ("inputs", "+4", "inputs"),
        ("inputs", "04", "inputs"),
        ("classes", " 3", "classes"),
        ("classes", "0", "classes"),
        ("dtype", "BF16", "dtype"),
        ("layout", "[out, in]", "layout"),
        // Headers that claim a model far larger than the file: refused
        // before any layout is built from the numbers.
        ("inputs", "18446744073709551615", "model"),
        ("model", "mlp:1000000000 (tanh)", "model"),
    ] {
        let mut m = meta.clone();
        m.insert(key.into(), value.into());
        let err = load_error(&custom_file(Some(m), &tensors), value);
        assert!(
            matches!(&err, WeightsError::BadMetadata { key: k, .. } if k == reported),
            "{key}={value}: {err}"
        );
    }

    // Metadata that names a different, consistent model: tensors mismatch.
    let mut m = meta.clone();
    m.insert("model".into(), "softmax-nobias".into());
    let err = load_error(&custom_file(Some(m), &tensors), "nobias");
    assert!(
        matches!(err, WeightsError::UnexpectedTensor { .. }),
        "{err}"
    );

    let mut m = meta;
    m.insert("dtype".into(), "F32".into());
    let err = load_error(&custom_file(Some(m), &tensors), "dtype mismatch");
    assert!(matches!(err, WeightsError::Dtype { .. }), "{err}");
}

#[test]
fn missing_file_and_unwritable_target_name_the_path() {
    let dir = temp_dir("paths");
    let missing = dir.join("nope.safetensors");
    let err = load_weights(&missing, &Device::Cpu, DType::F32).unwrap_err();
    assert!(matches!(err, WeightsError::Read { .. }), "{err}");
    assert!(err.to_string().contains("nope.safetensors"), "{err}");

    let (model, _) = small();
    let w = Tensor::zeros(15, DType::F32, &Device::Cpu).unwrap();
    let target = dir.join("no-such-dir").join(WEIGHTS_FILE);
    let err = save_weights(&target, &model, &w).unwrap_err();
    assert!(matches!(err, WeightsError::Write { .. }), "{err}");
    assert!(err.to_string().contains("no-such-dir"), "{err}");

    // Saving over an existing file replaces it.
    let path = dir.join(WEIGHTS_FILE);
    save_weights(&path, &model, &w).unwrap();
    let ones = Tensor::ones(15, DType::F32, &Device::Cpu).unwrap();
    save_weights(&path, &model, &ones).unwrap();
    let (_, back) = load_weights(&path, &Device::Cpu, DType::F32).unwrap();
    assert_eq!(back.to_vec1::<f32>().unwrap(), vec![1f32; 15]);
}

/// The whole file for a 2-input, 2-class softmax model in F32. The expected
/// bytes are spelt out, so the test fails whatever order a hash map would
/// put the metadata in, in this process or any other.
#[test]
fn the_same_weights_always_give_the_same_bytes() -> Result<()> {
    let model = Model::new(ModelSpec::Softmax { bias: true }, 2, 2)?;
    // Layout order: layer0.weight [2, 2], then layer0.bias [2].
    let values = [0.5f32, -0.25, 1.0, 2.0, -0.0, 0.125];
    let w = Tensor::from_vec(values.to_vec(), 6, &Device::Cpu)?;
    let header = concat!(
        r#"{"__metadata__":{"classes":"2","dtype":"F32","format":"hessfree-weights/1","#,
        r#""inputs":"2","layout":"weights are [in, out]: logits = x @ W + b "#,
        r#"(the transpose of torch.nn.Linear.weight, which is [out, in])","model":"softmax"},"#,
        r#""layer0.bias":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"#,
        r#""layer0.weight":{"dtype":"F32","shape":[2,2],"data_offsets":[8,24]}}"#,
    );
    let padded = header.len().next_multiple_of(8);
    let mut expected = (padded as u64).to_le_bytes().to_vec();
    expected.extend_from_slice(header.as_bytes());
    expected.resize(8 + padded, b' ');
    // Tensors in name order: the bias first.
    for x in [-0.0f32, 0.125, 0.5, -0.25, 1.0, 2.0] {
        expected.extend_from_slice(&x.to_le_bytes());
    }

    let dir = temp_dir("same_bytes");
    for i in 0..16 {
        let path = dir.join(format!("{i}.safetensors"));
        save_weights(&path, &model, &w)?;
        let bytes = fs::read(&path)?;
        assert!(
            bytes == expected,
            "save {i} wrote\n{}\nexpected\n{}",
            String::from_utf8_lossy(&bytes),
            String::from_utf8_lossy(&expected)
        );
    }
    let (back, w2) = from_bytes(&expected, Path::new("x"), &Device::Cpu, DType::F32)?;
    assert_eq!(back, model);
    assert_eq!(bits(&w2), bits(&w));
    Ok(())
}

/// The header is written here rather than by `safetensors::serialize`; apart
/// from the order of the metadata keys the file must be what that writes.
#[test]
fn the_file_is_what_safetensors_itself_writes_up_to_metadata_order() -> Result<()> {
    for model in models() {
        for dtype in [DType::F32, DType::F64] {
            let ours = to_bytes(Path::new("x"), &model, &params(&model, dtype))?;
            let (n, header) = SafeTensors::read_metadata(&ours)?;
            let file = SafeTensors::deserialize(&ours)?;
            let theirs = safetensors::serialize(file.tensors(), header.metadata().clone())?;
            let (m, _) = SafeTensors::read_metadata(&theirs)?;
            assert_eq!(n, m, "{} {dtype:?}: header length", model.spec());
            let json =
                |b: &[u8]| -> serde_json::Value { serde_json::from_slice(&b[8..8 + n]).unwrap() };
            assert_eq!(json(&ours), json(&theirs), "{} {dtype:?}", model.spec());
            assert_eq!(
                ours[8 + n..],
                theirs[8 + n..],
                "{} {dtype:?}: data",
                model.spec()
            );
        }
    }
    Ok(())
}
