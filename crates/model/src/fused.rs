//! A fused CPU kernel for the softmax-regression loss, gradient and
//! Hessian-vector product.
//!
//! The unfused products ([`crate::SoftmaxObjective`]'s candle path) read `X`
//! twice per product (`Z = XV`, then `XᵀR`, two thin matmuls with 10
//! columns) and write the intermediates to memory. Here one pass over `X`
//! does everything, in blocks of [`BLOCK_ROWS`] rows that stay in the L2
//! cache between the two halves:
//!
//! 1. `Z_blk = X_blk V + v_b` (dot products along the pixels, two rows and
//!    five classes at a time, in vector registers);
//! 2. the per-row softmax quantities: for the HVP the curvature weights
//!    `R = P ⊙ Z − P ⊙ rowsum(P ⊙ Z)`, for the gradient the log-sum-exp, the
//!    loss and `R = P − Y`;
//! 3. `Acc += X_blkᵀ R_blk` (a tile of 5 classes x 32 pixels held in
//!    registers across the block's rows, then added into an `f64`
//!    accumulator), while the next block of `X` is prefetched into L2.
//!
//! # Storage
//!
//! `X` may be stored as `u8` with a scale ([`FusedSoftmax::from_batches`]):
//! MNIST pixels are exactly `k/255`, so this is lossless and moves 4x fewer
//! bytes than `f32`. The scale is folded into `Z` and `R` (`X V = s·(X_u8 V)`,
//! `Xᵀ R = X_u8ᵀ (s·R)`), so `u8` and float storage agree up to rounding, not
//! bit for bit. `f32` and `f64` storage work too, as do CPU candle tensors,
//! which are read in place.
//!
//! # Precision
//!
//! The compute type `T` ([`Real`]: `f32` or `f64`) is that of the parameters.
//! Dot products and the block tiles run in `T` with fused multiply-adds
//! where the CPU has them; every block's `XᵀR` tile, the bias sums and the
//! loss are accumulated in `f64`, and the scaling by `1/n` happens in `f64`
//! before the result is rounded to `T`. On the test problems the gradient,
//! probabilities and HVP agree with the unfused candle products to 1e-7..4e-7
//! relative in `f32` and to 1e-16..1e-15 in `f64`.
//! `exp` is a branch-free polynomial (Cephes-style for `f32`, a degree-13
//! Taylor polynomial after range reduction for `f64`), accurate to a few ulp.
//!
//! # Threads and determinism
//!
//! Rows are split by a fixed binary tree whose shape depends only on the
//! number of rows (leaves of 256..4096 rows), evaluated with `rayon::join`;
//! partial sums are merged left + right at every node. The result therefore
//! does not depend on work stealing *or* on the number of threads: two calls
//! with the same inputs are bit-identical, on any pool size, on one machine.
//! (Across machines the instruction set may differ: see [`simd_level`].)
//!
//! # Instruction sets
//!
//! The inner loops are written once, generically over pulp's `Simd` trait
//! (the SIMD layer faer uses), and run with the instruction set pulp detects
//! at run time ([`SimdLevel::best`]): AVX-512 (x86-64-v4, 16 `f32` lanes),
//! AVX2+FMA (x86-64-v3, 8 lanes), NEON on aarch64 (4 lanes), or scalar code.
//! Where pulp's generic trait has no operation (the `u8 → f32/f64` and
//! `f32 ↔ f64` loads, widening into the `f64` accumulator) the kernel
//! converts lane by lane in a loop that LLVM vectorises for the instruction
//! set at hand; the prefetch hint is x86's, a no-op elsewhere.
//! [`FusedSoftmax::with_simd_level`] runs another level the CPU has (tests,
//! benchmarks); the library reads no environment variable.
//!
//! # Devices
//!
//! This is the CPU kernel. The candle ops ([`SoftmaxHvpOp`], [`SoftmaxGradOp`],
//! [`SoftmaxProbsOp`]) run it in `cpu_fwd`; with the `cuda` feature their
//! `cuda_fwd` runs the same scheme as CUDA kernels (`fused_cuda.rs`), and
//! [`crate::fused_ops::FusedOps`] holds a batch on the device for them.

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CustomOp2, CustomOp3, DType, Device, Layout, Shape, Storage, Tensor,
};

use crate::csr::{CsrU8, byte_density, csr_max_density};
use crate::error::{ModelError, Result};
use crate::objective::Batches;

pub use kernel::Real;

/// Rows per cache block: `BLOCK_ROWS x 784` pixels (196 KiB in `f32`) stay in
/// L2 between the forward and the backward half of the block.
pub const BLOCK_ROWS: usize = 64;

/// Classes handled per register tile; other class counts are padded up to a
/// multiple of it with zero columns.
const KG: usize = 10;

/// The instruction set the kernels run with: one of pulp's, named by what
/// actually runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SimdLevel {
    /// Portable scalar code (one lane, no FMA): pulp's `Scalar`.
    Scalar,
    /// x86-64-v3, AVX2 with FMA: 8 `f32` / 4 `f64` lanes (pulp's `V3`).
    Avx2,
    /// x86-64-v4, AVX-512 (F, BW, CD, DQ, VL): 16 `f32` / 8 `f64` lanes
    /// (pulp's `V4`).
    Avx512,
    /// aarch64 NEON: 4 `f32` / 2 `f64` lanes (pulp's `Neon`).
    Neon,
}

impl SimdLevel {
    /// Every level, in the order of [`SimdLevel::available`].
    pub const ALL: [SimdLevel; 4] = [Self::Scalar, Self::Avx2, Self::Avx512, Self::Neon];

    /// The best level this CPU has, as pulp detects it.
    pub fn best() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            match pulp::x86::Arch::new() {
                pulp::x86::Arch::V4(_) => Self::Avx512,
                pulp::x86::Arch::V3(_) => Self::Avx2,
                _ => Self::Scalar,
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            match pulp::aarch64::Arch::new() {
                pulp::aarch64::Arch::Neon(_) => Self::Neon,
                _ => Self::Scalar,
            }
        }
        #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
        {
            Self::Scalar
        }
    }

    /// Whether this CPU can run the level.
    pub fn is_available(self) -> bool {
        match self {
            Self::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Self::Avx2 => pulp::x86::V3::try_new().is_some(),
            #[cfg(target_arch = "x86_64")]
            Self::Avx512 => pulp::x86::V4::try_new().is_some(),
            #[cfg(target_arch = "aarch64")]
            Self::Neon => pulp::aarch64::Neon::try_new().is_some(),
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The levels this CPU can run, scalar first.
    pub fn available() -> Vec<Self> {
        Self::ALL.into_iter().filter(|l| l.is_available()).collect()
    }

    /// `"scalar"`, `"avx2"`, `"avx512"` or `"neon"`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Scalar => "scalar",
            Self::Avx2 => "avx2",
            Self::Avx512 => "avx512",
            Self::Neon => "neon",
        }
    }
}

impl std::fmt::Display for SimdLevel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SimdLevel {
    type Err = ModelError;

    /// The [`SimdLevel::name`]s, and `x86-64-v3` / `x86-64-v4` (or `v3`,
    /// `v4`) for the x86 levels; any case.
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "scalar" => Self::Scalar,
            "avx2" | "x86-64-v3" | "v3" => Self::Avx2,
            "avx512" | "x86-64-v4" | "v4" => Self::Avx512,
            "neon" => Self::Neon,
            _ => {
                return Err(ModelError::Spec(format!(
                    "unknown SIMD level {s:?}: expected scalar, avx2, avx512 or neon"
                )));
            }
        })
    }
}

/// The instruction set the kernels use by default: the best this CPU has
/// ([`SimdLevel::best`]). To run another, pass it to
/// [`FusedSoftmax::with_simd_level`].
pub fn simd_level() -> SimdLevel {
    static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
    *LEVEL.get_or_init(SimdLevel::best)
}

/// The inputs `X`, `[rows, inputs]` row-major.
#[derive(Clone, Debug)]
pub enum XData {
    /// Bytes, each meaning `byte * scale` (MNIST: `scale = 1/255`).
    U8 {
        /// The bytes, `[rows, inputs]` row-major.
        data: Vec<u8>,
        /// The value byte `1` stands for (MNIST: 1/255).
        scale: f64,
    },
    /// `f32` inputs, `[rows, inputs]` row-major.
    F32(Vec<f32>),
    /// `f64` inputs, `[rows, inputs]` row-major.
    F64(Vec<f64>),
    /// A contiguous CPU tensor of dtype `u8` (meaning `byte * scale`), `f32`
    /// or `f64`, read in place.
    Tensor {
        /// The tensor, `[rows, inputs]`.
        tensor: Tensor,
        /// The value byte `1` stands for in a `u8` tensor; ignored for floats.
        scale: f64,
    },
    /// Compressed rows of bytes, each meaning `byte * scale`.
    Csr(CsrU8),
}

impl XData {
    /// The number of inputs, zeros included.
    fn len(&self) -> Result<usize> {
        Ok(match self {
            XData::U8 { data, .. } => data.len(),
            XData::Csr(x) => x.rows() * x.cols(),
            XData::F32(v) => v.len(),
            XData::F64(v) => v.len(),
            XData::Tensor { tensor, .. } => tensor.elem_count(),
        })
    }

    /// Bytes of `X` one pass reads.
    pub fn bytes(&self) -> usize {
        match self {
            XData::U8 { data, .. } => data.len(),
            XData::F32(v) => 4 * v.len(),
            XData::F64(v) => 8 * v.len(),
            XData::Tensor { tensor, .. } => tensor.elem_count() * tensor.dtype().size_in_bytes(),
            XData::Csr(x) => x.bytes(),
        }
    }

    /// `"u8"`, `"csr-u8"`, `"f32"` or `"f64"`.
    pub fn storage_name(&self) -> &'static str {
        match self {
            XData::U8 { .. } => "u8",
            XData::Csr(_) => "csr-u8",
            XData::F32(_) => "f32",
            XData::F64(_) => "f64",
            XData::Tensor { tensor, .. } => match tensor.dtype() {
                DType::U8 => "u8",
                DType::F32 => "f32",
                _ => "f64",
            },
        }
    }
}

/// How [`FusedSoftmax::from_batches`] stores the inputs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XStorage {
    /// When every input is exactly `k/255` in the batch's dtype (MNIST is):
    /// compressed rows if at most [`csr_max_density`] of them are non-zero
    /// (for the SIMD level the kernels run at),
    /// else dense `u8`. Otherwise the batch's chunk tensors, read in place.
    #[default]
    Auto,
    /// Dense `u8`; an error if some input is not exactly `k/255`.
    U8,
    /// Compressed rows of `u8` ([`CsrU8`]); an error if some input is not
    /// exactly `k/255`. The CPU kernels only.
    Csr,
    /// The batch's chunk tensors, read in place (no copy).
    Float,
}

impl XStorage {
    /// The names [`FromStr`](std::str::FromStr) accepts, for help and error messages.
    pub const CHOICES: &'static str = "auto, u8, csr, float";
}

impl std::str::FromStr for XStorage {
    type Err = ModelError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "auto" => Ok(Self::Auto),
            "u8" => Ok(Self::U8),
            "csr" => Ok(Self::Csr),
            "float" => Ok(Self::Float),
            other => Err(ModelError::Spec(format!(
                "unknown input storage `{other}`; expected one of: {}",
                Self::CHOICES
            ))),
        }
    }
}

/// Training targets.
#[derive(Clone, Debug)]
pub enum Targets {
    /// One class index per row (one-hot targets).
    Labels(Vec<u32>),
    /// `[rows, classes]` target distributions, row-major.
    Dense(Vec<f64>),
}

/// A batch prepared for the fused kernels: `X` (in one or more row segments),
/// the targets and the divisor `n_total` of the mean.
#[derive(Clone, Debug)]
pub struct FusedSoftmax {
    segments: Vec<(usize, XData)>,
    targets: Targets,
    rows: usize,
    inputs: usize,
    classes: usize,
    n_total: usize,
    level: SimdLevel,
}

impl FusedSoftmax {
    /// `x`: `[rows, inputs]`; `targets`: labels below `classes` or dense
    /// `[rows, classes]`; results are sums over rows divided by `n_total`
    /// (normally `rows`; larger for one shard of a bigger batch).
    pub fn new(
        x: XData,
        targets: Targets,
        inputs: usize,
        classes: usize,
        n_total: usize,
    ) -> Result<Self> {
        if inputs == 0 || classes == 0 {
            return Err(ModelError::Spec(format!(
                "fused softmax needs inputs and classes, got {inputs} and {classes}"
            )));
        }
        let len = x.len()?;
        if len % inputs != 0 {
            return Err(ModelError::Batch(format!(
                "{len} inputs do not split into rows of {inputs}"
            )));
        }
        let rows = len / inputs;
        Self::from_segments(vec![(rows, x)], targets, inputs, classes, n_total)
    }

    /// Several row segments (e.g. a batch's chunks), in order.
    pub fn from_segments(
        segments: Vec<(usize, XData)>,
        targets: Targets,
        inputs: usize,
        classes: usize,
        n_total: usize,
    ) -> Result<Self> {
        let mut rows = 0;
        for (r, x) in &segments {
            if x.len()? != r * inputs {
                return Err(ModelError::Batch(format!(
                    "a segment of {r} rows x {inputs} inputs holds {} values",
                    x.len()?
                )));
            }
            if let XData::Tensor { tensor, .. } = x {
                check_tensor_x(tensor)?;
            }
            rows += r;
        }
        if rows == 0 {
            return Err(ModelError::Batch("the batch is empty".into()));
        }
        match &targets {
            Targets::Labels(l) => {
                if l.len() != rows {
                    return Err(ModelError::Batch(format!(
                        "{rows} rows but {} labels",
                        l.len()
                    )));
                }
                if let Some(bad) = l.iter().find(|&&c| c as usize >= classes) {
                    return Err(ModelError::Batch(format!(
                        "label {bad} is out of range for {classes} classes"
                    )));
                }
            }
            Targets::Dense(y) => {
                if y.len() != rows * classes {
                    return Err(ModelError::Batch(format!(
                        "{rows} rows x {classes} classes but {} target values",
                        y.len()
                    )));
                }
            }
        }
        if n_total == 0 {
            return Err(ModelError::Batch("n_total must be positive".into()));
        }
        Ok(Self {
            segments,
            targets,
            rows,
            inputs,
            classes,
            n_total,
            level: simd_level(),
        })
    }

    /// Runs the kernels with `level` instead of the best the CPU has (for
    /// tests and benchmarks, or for results that match another machine's);
    /// an error if this CPU cannot run it.
    pub fn with_simd_level(mut self, level: SimdLevel) -> Result<Self> {
        if !level.is_available() {
            return Err(ModelError::Unsupported(format!(
                "SIMD level {level} is not available on this CPU (it has: {})",
                SimdLevel::available()
                    .iter()
                    .map(|l| l.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        self.level = level;
        Ok(self)
    }

    /// The instruction set the kernels run with.
    pub fn simd_level(&self) -> SimdLevel {
        self.level
    }

    /// The batch behind an objective. One-hot targets become labels; `X`
    /// becomes `u8` or stays in the chunk tensors, as `storage` says.
    pub fn from_batches(batches: &Batches, storage: XStorage) -> Result<Self> {
        Self::from_batches_at(batches, storage, simd_level())
    }

    /// [`Self::from_batches`] running at `level` (which `auto` storage
    /// takes into account); an error if this CPU cannot run it.
    pub fn from_batches_at(batches: &Batches, storage: XStorage, level: SimdLevel) -> Result<Self> {
        if !matches!(batches.device(), Device::Cpu) {
            return Err(ModelError::Unsupported(
                "the fused softmax kernels run on the CPU only".into(),
            ));
        }
        let (inputs, classes) = (batches.inputs(), batches.classes());
        let scale = 1.0 / 255.0;
        let segments = match batch_bytes(batches, storage)? {
            Some(bytes) => {
                let sparse = match storage {
                    XStorage::Csr => true,
                    XStorage::Auto => byte_density(&bytes) <= csr_max_density(level),
                    XStorage::U8 | XStorage::Float => false,
                };
                let x = if sparse {
                    XData::Csr(CsrU8::from_dense(&bytes, inputs, scale)?)
                } else {
                    XData::U8 { data: bytes, scale }
                };
                vec![(batches.rows(), x)]
            }
            None => batches
                .chunks()
                .iter()
                .map(|(x, _)| {
                    Ok((
                        x.dim(0)?,
                        XData::Tensor {
                            tensor: x.contiguous()?,
                            scale: 1.0,
                        },
                    ))
                })
                .collect::<Result<_>>()?,
        };
        Self::from_segments(
            segments,
            batch_targets(batches)?,
            inputs,
            classes,
            batches.rows(),
        )?
        .with_simd_level(level)
    }

    /// Rows of `X` over all segments.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Input width `d`.
    pub fn inputs(&self) -> usize {
        self.inputs
    }

    /// Class count `k`.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// The divisor of every mean: `rows`, or the whole batch's rows when
    /// this holds one shard of it.
    pub fn n_total(&self) -> usize {
        self.n_total
    }

    /// The storage of `X`: `"u8"`, `"f32"` or `"f64"` (of the first segment).
    pub fn storage_name(&self) -> &'static str {
        self.segments[0].1.storage_name()
    }

    /// Bytes of `X` one gradient or HVP reads.
    pub fn x_bytes(&self) -> usize {
        self.segments.iter().map(|(_, x)| x.bytes()).sum()
    }

    /// The parameter count: `inputs * classes` weights, plus `classes` biases.
    pub fn dim(&self, bias: bool) -> usize {
        self.inputs * self.classes + if bias { self.classes } else { 0 }
    }

    fn check_params<T>(&self, what: &str, w: &[T], b: Option<&[T]>) -> Result<()> {
        if w.len() != self.inputs * self.classes {
            return Err(ModelError::ParamLength {
                layout: format!("{what} weights [{}x{}]", self.inputs, self.classes),
                expected: self.inputs * self.classes,
                found: w.len(),
            });
        }
        if let Some(b) = b
            && b.len() != self.classes
        {
            return Err(ModelError::ParamLength {
                layout: format!("{what} bias [{}]", self.classes),
                expected: self.classes,
                found: b.len(),
            });
        }
        Ok(())
    }

    /// Runs `mode` over every segment, merging partial sums in order.
    fn run<T: Real>(
        &self,
        w: &[T],
        b: Option<&[T]>,
        mode: ModeKind,
        p_in: Option<&[T]>,
        mut p_out: Option<&mut [T]>,
    ) -> Result<kernel::Partial> {
        let (d, k) = (self.inputs, self.classes);
        let kp = k.div_ceil(KG) * KG;
        // Transpose to class-major, padded to kp classes.
        let mut vt = vec![T::ZERO; kp * d];
        for j in 0..d {
            for c in 0..k {
                vt[c * d + j] = w[j * k + c];
            }
        }
        let mut vb = vec![T::ZERO; kp];
        if let Some(b) = b {
            vb[..k].copy_from_slice(b);
        }
        let level = self.level;
        let leaf = leaf_rows(self.rows);
        let mut total: Option<kernel::Partial> = None;
        let mut start = 0;
        for (rows, x) in &self.segments {
            let rows = *rows;
            let range = start..start + rows;
            let targets = match &self.targets {
                Targets::Labels(l) => kernel::TargetsRef::Labels(&l[range.clone()]),
                Targets::Dense(y) => kernel::TargetsRef::Dense(&y[range.start * k..range.end * k]),
            };
            let mode = match mode {
                ModeKind::Loss => kernel::Mode::Loss(targets),
                ModeKind::Grad => kernel::Mode::Grad(targets),
                ModeKind::Probs => kernel::Mode::Probs,
                ModeKind::Hvp => kernel::Mode::Hvp(
                    &p_in.expect("hvp needs probabilities")[range.start * k..range.end * k],
                ),
            };
            let out = p_out
                .as_deref_mut()
                .map(|p| &mut p[range.start * k..range.end * k]);
            let part = with_x(x, |xs| {
                xs.run(
                    &kernel::Shape { rows, d, k, kp },
                    &vt,
                    &vb,
                    mode,
                    out,
                    level,
                    leaf,
                )
            })??;
            total = Some(match total {
                None => part,
                Some(mut t) => {
                    t.merge(&part);
                    t
                }
            });
            start += rows;
        }
        Ok(total.expect("at least one segment"))
    }

    /// The mean cross-entropy `Σ_i CE(softmax(x_i W + b), y_i) / n_total`.
    pub fn loss<T: Real>(&self, w: &[T], b: Option<&[T]>) -> Result<f64> {
        self.check_params("loss", w, b)?;
        let part = self.run(w, b, ModeKind::Loss, None, None)?;
        Ok(part.loss / self.n_total as f64)
    }

    /// The mean cross-entropy and its gradient, flat: `d x k` row-major
    /// weights, then `k` biases when `b` is given.
    pub fn loss_and_grad<T: Real>(&self, w: &[T], b: Option<&[T]>) -> Result<(f64, Vec<T>)> {
        self.check_params("gradient", w, b)?;
        let part = self.run(w, b, ModeKind::Grad, None, None)?;
        Ok(self.finish(&part, b.is_some()))
    }

    /// [`Self::loss_and_grad`] plus the probabilities `[rows, classes]` at
    /// the same point, which [`Self::hvp`] needs: one pass for both.
    pub fn loss_grad_probs<T: Real>(
        &self,
        w: &[T],
        b: Option<&[T]>,
    ) -> Result<(f64, Vec<T>, Vec<T>)> {
        self.check_params("gradient", w, b)?;
        let mut p = vec![T::ZERO; self.rows * self.classes];
        let part = self.run(w, b, ModeKind::Grad, None, Some(&mut p))?;
        let (loss, g) = self.finish(&part, b.is_some());
        Ok((loss, g, p))
    }

    /// The softmax probabilities `[rows, classes]`, row-major.
    pub fn probabilities<T: Real>(&self, w: &[T], b: Option<&[T]>) -> Result<Vec<T>> {
        self.check_params("probabilities", w, b)?;
        let mut p = vec![T::ZERO; self.rows * self.classes];
        self.run(w, b, ModeKind::Probs, None, Some(&mut p))?;
        Ok(p)
    }

    /// The Hessian (= Gauss-Newton) product of the mean cross-entropy at the
    /// point whose probabilities are `p`, along `(v_w, v_b)`, flat like the
    /// gradient. Pass `v_b = None` for a model without bias.
    pub fn hvp<T: Real>(&self, p: &[T], v_w: &[T], v_b: Option<&[T]>) -> Result<Vec<T>> {
        self.check_params("direction", v_w, v_b)?;
        if p.len() != self.rows * self.classes {
            return Err(ModelError::Batch(format!(
                "probabilities hold {} values, expected {} rows x {} classes",
                p.len(),
                self.rows,
                self.classes
            )));
        }
        let part = self.run(v_w, v_b, ModeKind::Hvp, Some(p), None)?;
        Ok(self.finish(&part, v_b.is_some()).1)
    }

    fn finish<T: Real>(&self, part: &kernel::Partial, bias: bool) -> (f64, Vec<T>) {
        let (d, k) = (self.inputs, self.classes);
        let inv = 1.0 / self.n_total as f64;
        let mut out = Vec::with_capacity(self.dim(bias));
        for j in 0..d {
            for c in 0..k {
                out.push(T::from_f64(part.acc[c * d + j] * inv));
            }
        }
        if bias {
            out.extend(part.bsum[..k].iter().map(|&s| T::from_f64(s * inv)));
        }
        (part.loss * inv, out)
    }

    // ---- flat candle tensors, in the layout of `Model` (weights, then bias)

    /// [`Self::loss_and_grad`] on a flat parameter tensor (`f32` or `f64`, CPU).
    pub fn loss_and_grad_flat(&self, theta: &Tensor, bias: bool) -> Result<(f64, Tensor)> {
        let dim = self.dim(bias);
        match theta.dtype() {
            DType::F32 => {
                let t = flat_vec::<f32>(theta, dim)?;
                let (w, b) = split(&t, self.inputs * self.classes, bias);
                let (l, g) = self.loss_and_grad(w, b)?;
                Ok((l, Tensor::from_vec(g, dim, theta.device())?))
            }
            DType::F64 => {
                let t = flat_vec::<f64>(theta, dim)?;
                let (w, b) = split(&t, self.inputs * self.classes, bias);
                let (l, g) = self.loss_and_grad(w, b)?;
                Ok((l, Tensor::from_vec(g, dim, theta.device())?))
            }
            other => Err(unsupported_dtype(other)),
        }
    }

    /// [`Self::loss_grad_probs`] on a flat parameter tensor; the
    /// probabilities come back as a `[rows, classes]` tensor.
    pub fn loss_grad_probs_flat(
        &self,
        theta: &Tensor,
        bias: bool,
    ) -> Result<(f64, Tensor, Tensor)> {
        let dim = self.dim(bias);
        let shape = (self.rows, self.classes);
        match theta.dtype() {
            DType::F32 => {
                let t = flat_vec::<f32>(theta, dim)?;
                let (w, b) = split(&t, self.inputs * self.classes, bias);
                let (l, g, p) = self.loss_grad_probs(w, b)?;
                Ok((
                    l,
                    Tensor::from_vec(g, dim, theta.device())?,
                    Tensor::from_vec(p, shape, theta.device())?,
                ))
            }
            DType::F64 => {
                let t = flat_vec::<f64>(theta, dim)?;
                let (w, b) = split(&t, self.inputs * self.classes, bias);
                let (l, g, p) = self.loss_grad_probs(w, b)?;
                Ok((
                    l,
                    Tensor::from_vec(g, dim, theta.device())?,
                    Tensor::from_vec(p, shape, theta.device())?,
                ))
            }
            other => Err(unsupported_dtype(other)),
        }
    }

    /// [`Self::loss`] on a flat parameter tensor.
    pub fn loss_flat(&self, theta: &Tensor, bias: bool) -> Result<f64> {
        let dim = self.dim(bias);
        match theta.dtype() {
            DType::F32 => {
                let t = flat_vec::<f32>(theta, dim)?;
                let (w, b) = split(&t, self.inputs * self.classes, bias);
                self.loss(w, b)
            }
            DType::F64 => {
                let t = flat_vec::<f64>(theta, dim)?;
                let (w, b) = split(&t, self.inputs * self.classes, bias);
                self.loss(w, b)
            }
            other => Err(unsupported_dtype(other)),
        }
    }

    /// [`Self::probabilities`] as a `[rows, classes]` tensor.
    pub fn probabilities_flat(&self, theta: &Tensor, bias: bool) -> Result<Tensor> {
        let dim = self.dim(bias);
        let shape = (self.rows, self.classes);
        match theta.dtype() {
            DType::F32 => {
                let t = flat_vec::<f32>(theta, dim)?;
                let (w, b) = split(&t, self.inputs * self.classes, bias);
                Ok(Tensor::from_vec(
                    self.probabilities(w, b)?,
                    shape,
                    theta.device(),
                )?)
            }
            DType::F64 => {
                let t = flat_vec::<f64>(theta, dim)?;
                let (w, b) = split(&t, self.inputs * self.classes, bias);
                Ok(Tensor::from_vec(
                    self.probabilities(w, b)?,
                    shape,
                    theta.device(),
                )?)
            }
            other => Err(unsupported_dtype(other)),
        }
    }

    /// [`Self::hvp`] with a flat direction tensor and the `[rows, classes]`
    /// probabilities tensor (same dtype, CPU, read in place).
    pub fn hvp_flat(&self, p: &Tensor, v: &Tensor, bias: bool) -> Result<Tensor> {
        let dim = self.dim(bias);
        if p.dtype() != v.dtype() {
            return Err(ModelError::Batch(format!(
                "probabilities are {:?} but the direction is {:?}",
                p.dtype(),
                v.dtype()
            )));
        }
        let (storage, layout) = p.storage_and_layout();
        let out = match (&*storage, v.dtype()) {
            (Storage::Cpu(CpuStorage::F32(ps)), DType::F32) => {
                let ps = contiguous(ps, layout, "probabilities")?;
                let t = flat_vec::<f32>(v, dim)?;
                let (w, b) = split(&t, self.inputs * self.classes, bias);
                Tensor::from_vec(self.hvp(ps, w, b)?, dim, v.device())?
            }
            (Storage::Cpu(CpuStorage::F64(ps)), DType::F64) => {
                let ps = contiguous(ps, layout, "probabilities")?;
                let t = flat_vec::<f64>(v, dim)?;
                let (w, b) = split(&t, self.inputs * self.classes, bias);
                Tensor::from_vec(self.hvp(ps, w, b)?, dim, v.device())?
            }
            (Storage::Cpu(_), other) => return Err(unsupported_dtype(other)),
            _ => {
                return Err(ModelError::Unsupported(
                    "the fused softmax kernels run on the CPU only".into(),
                ));
            }
        };
        Ok(out)
    }
}

#[derive(Clone, Copy)]
enum ModeKind {
    Loss,
    Grad,
    Probs,
    Hvp,
}

/// Leaves of the fixed reduction tree: about 16 per call, 256..4096 rows.
fn leaf_rows(n: usize) -> usize {
    (n / 16).clamp(4 * BLOCK_ROWS, 64 * BLOCK_ROWS)
}

/// The fused products an objective needs, on flat parameter tensors in the
/// layout of [`crate::Model`] (weights `[d, k]` row-major, then the bias).
/// Implemented by [`FusedSoftmax`] (host memory, CPU) and by
/// [`crate::fused_ops::FusedOps`] (candle ops on the batch's device).
pub trait FusedProducts: Send + Sync {
    /// The mean cross-entropy.
    fn loss_flat(&self, theta: &Tensor, bias: bool) -> Result<f64>;
    /// The mean cross-entropy and its gradient, flat like `theta`.
    fn loss_and_grad_flat(&self, theta: &Tensor, bias: bool) -> Result<(f64, Tensor)>;
    /// The probabilities, `[rows, classes]`.
    fn probabilities_flat(&self, theta: &Tensor, bias: bool) -> Result<Tensor>;
    /// The Hessian product at the point whose probabilities are `p`.
    fn hvp_flat(&self, p: &Tensor, v: &Tensor, bias: bool) -> Result<Tensor>;
    /// What runs, for the record: e.g. `fused cpu, X as u8, avx512`.
    fn describe(&self) -> String;
}

impl FusedProducts for FusedSoftmax {
    fn loss_flat(&self, theta: &Tensor, bias: bool) -> Result<f64> {
        FusedSoftmax::loss_flat(self, theta, bias)
    }
    fn loss_and_grad_flat(&self, theta: &Tensor, bias: bool) -> Result<(f64, Tensor)> {
        FusedSoftmax::loss_and_grad_flat(self, theta, bias)
    }
    fn probabilities_flat(&self, theta: &Tensor, bias: bool) -> Result<Tensor> {
        FusedSoftmax::probabilities_flat(self, theta, bias)
    }
    fn hvp_flat(&self, p: &Tensor, v: &Tensor, bias: bool) -> Result<Tensor> {
        FusedSoftmax::hvp_flat(self, p, v, bias)
    }
    fn describe(&self) -> String {
        format!("fused cpu, X as {}, {}", self.storage_name(), self.level)
    }
}

fn unsupported_dtype(dtype: DType) -> ModelError {
    ModelError::Unsupported(format!(
        "the fused softmax kernels compute in f32 or f64, not {dtype:?}"
    ))
}

fn split<T>(t: &[T], nw: usize, bias: bool) -> (&[T], Option<&[T]>) {
    let (w, b) = t.split_at(nw);
    (w, bias.then_some(b))
}

fn flat_vec<T: candle_core::WithDType>(t: &Tensor, dim: usize) -> Result<Vec<T>> {
    if t.rank() != 1 || t.elem_count() != dim {
        return Err(ModelError::ParamLength {
            layout: "fused softmax parameters".into(),
            expected: dim,
            found: t.elem_count(),
        });
    }
    if !matches!(t.device(), Device::Cpu) {
        return Err(ModelError::Unsupported(
            "the fused softmax kernels run on the CPU only".into(),
        ));
    }
    Ok(t.to_vec1::<T>()?)
}

fn contiguous<'a, T>(data: &'a [T], layout: &Layout, what: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((a, b)) => Ok(&data[a..b]),
        None => Err(ModelError::Batch(format!(
            "the fused softmax kernels need contiguous {what}"
        ))),
    }
}

fn check_tensor_x(t: &Tensor) -> Result<()> {
    if !matches!(t.device(), Device::Cpu) {
        return Err(ModelError::Unsupported(
            "the fused softmax kernels run on the CPU only".into(),
        ));
    }
    if !matches!(t.dtype(), DType::U8 | DType::F32 | DType::F64) {
        return Err(ModelError::Unsupported(format!(
            "inputs of dtype {:?}; the fused kernels read u8, f32 or f64",
            t.dtype()
        )));
    }
    if !t.is_contiguous() {
        return Err(ModelError::Batch(
            "the fused softmax kernels need contiguous inputs".into(),
        ));
    }
    Ok(())
}

/// The batch's `X` as bytes (`k` for `k/255`) when `storage` allows it and
/// every input is exactly `k/255`; `None` when `X` stays in floats. The
/// check runs on a CPU copy of each chunk, once, when a kernel is set up.
pub(crate) fn batch_bytes(batches: &Batches, storage: XStorage) -> Result<Option<Vec<u8>>> {
    let mut bytes = Vec::new();
    let mut compress = storage != XStorage::Float;
    if compress {
        bytes.reserve(batches.rows() * batches.inputs());
        for (x, _) in batches.chunks() {
            if !as_u8_exact(&x.to_device(&Device::Cpu)?, &mut bytes)? {
                compress = false;
                break;
            }
        }
    }
    if matches!(storage, XStorage::U8 | XStorage::Csr) && !compress {
        return Err(ModelError::Batch(
            "the inputs are not all exactly k/255, so they cannot be stored as bytes (u8 or csr)"
                .into(),
        ));
    }
    Ok(compress.then_some(bytes))
}

/// The batch's targets: class labels when every row is one-hot, else the
/// dense rows in `f64`.
pub(crate) fn batch_targets(batches: &Batches) -> Result<Targets> {
    let classes = batches.classes();
    let mut dense = Vec::with_capacity(batches.rows() * classes);
    for (_, y) in batches.chunks() {
        dense.extend(y.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()?);
    }
    let one_hot = dense.chunks_exact(classes).all(|row| {
        row.iter().filter(|&&v| v == 1.0).count() == 1 && row.iter().all(|&v| v == 0.0 || v == 1.0)
    });
    Ok(if one_hot {
        Targets::Labels(
            dense
                .chunks_exact(classes)
                .map(|row| row.iter().position(|&v| v == 1.0).unwrap_or(0) as u32)
                .collect(),
        )
    } else {
        Targets::Dense(dense)
    })
}

/// Appends `x * 255` as bytes if every value is exactly `k/255` as the
/// data crate computes it (`k as T * (1/255 as T)`); false otherwise.
fn as_u8_exact(x: &Tensor, out: &mut Vec<u8>) -> Result<bool> {
    fn go<T: Copy + PartialEq>(
        v: &[T],
        out: &mut Vec<u8>,
        table: &[T; 256],
        to255: impl Fn(T) -> f64,
    ) -> bool {
        for &a in v {
            let k = to255(a).round();
            if !(0.0..=255.0).contains(&k) || table[k as usize] != a {
                return false;
            }
            out.push(k as u8);
        }
        true
    }
    let x = x.contiguous()?;
    let (storage, layout) = x.storage_and_layout();
    Ok(match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => {
            let v = contiguous(v, layout, "inputs")?;
            let s = (1.0f64 / 255.0) as f32;
            let table = std::array::from_fn(|k| k as f32 * s);
            go(v, out, &table, |a| f64::from(a) * 255.0)
        }
        Storage::Cpu(CpuStorage::F64(v)) => {
            let v = contiguous(v, layout, "inputs")?;
            let s = 1.0f64 / 255.0;
            let table = std::array::from_fn(|k| k as f64 * s);
            go(v, out, &table, |a| a * 255.0)
        }
        _ => false,
    })
}

/// Calls `f` with `X` as a typed slice, whatever holds it.
fn with_x<R>(x: &XData, f: impl FnOnce(kernel::XSlice<'_>) -> R) -> Result<R> {
    Ok(match x {
        XData::U8 { data, scale } => f(kernel::XSlice::U8(data, *scale)),
        XData::F32(v) => f(kernel::XSlice::F32(v)),
        XData::F64(v) => f(kernel::XSlice::F64(v)),
        XData::Csr(x) => f(kernel::XSlice::Csr(x)),
        XData::Tensor { tensor, scale } => {
            let (storage, layout) = tensor.storage_and_layout();
            match &*storage {
                Storage::Cpu(CpuStorage::U8(v)) => {
                    f(kernel::XSlice::U8(contiguous(v, layout, "inputs")?, *scale))
                }
                Storage::Cpu(CpuStorage::F32(v)) => {
                    f(kernel::XSlice::F32(contiguous(v, layout, "inputs")?))
                }
                Storage::Cpu(CpuStorage::F64(v)) => {
                    f(kernel::XSlice::F64(contiguous(v, layout, "inputs")?))
                }
                _ => {
                    return Err(ModelError::Unsupported(
                        "the fused kernels read u8, f32 or f64 inputs on the CPU".into(),
                    ));
                }
            }
        }
    })
}

// ---------------------------------------------------------------------------
// candle custom ops

/// `X`'s slice from a custom op's storage.
fn op_x<'a>(
    s: &'a CpuStorage,
    l: &Layout,
    x_scale: f64,
) -> candle_core::Result<(kernel::XSlice<'a>, usize, usize)> {
    let (n, d) = l.shape().dims2()?;
    let slice = |what| candle_core::Error::Msg(format!("fused softmax: {what} must be contiguous"));
    let off = l.contiguous_offsets().ok_or_else(|| slice("X"))?;
    let xs = match s {
        CpuStorage::U8(v) => kernel::XSlice::U8(&v[off.0..off.1], x_scale),
        CpuStorage::F32(v) => kernel::XSlice::F32(&v[off.0..off.1]),
        CpuStorage::F64(v) => kernel::XSlice::F64(&v[off.0..off.1]),
        other => candle_core::bail!(
            "fused softmax: X must be u8, f32 or f64, got {:?}",
            other.dtype()
        ),
    };
    Ok((xs, n, d))
}

fn op_slice<'a, T: candle_core::WithDType>(
    s: &'a CpuStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<&'a [T]> {
    let v = s.as_slice::<T>()?;
    let (a, b) = l.contiguous_offsets().ok_or_else(|| {
        candle_core::Error::Msg(format!("fused softmax: {what} must be contiguous"))
    })?;
    Ok(&v[a..b])
}

/// `len` must be `d x k` weights, plus `k` biases with `bias`; `what` names
/// the vector in the error (the CPU and CUDA ops share this check).
pub(crate) fn check_theta_len(
    len: usize,
    d: usize,
    k: usize,
    bias: bool,
    what: &str,
) -> candle_core::Result<()> {
    if len != d * k + if bias { k } else { 0 } {
        candle_core::bail!(
            "fused softmax: {what} hold {len} values, expected {d}x{k}{}",
            if bias { " + bias" } else { "" }
        );
    }
    Ok(())
}

fn op_err(e: ModelError) -> candle_core::Error {
    match e {
        ModelError::Candle(e) => e,
        other => candle_core::Error::Msg(other.to_string()),
    }
}

/// Shared body of the three ops: the parameters `(w, b)` split from a flat
/// `[d*k (+k)]` storage.
#[allow(clippy::too_many_arguments)]
fn op_run<T: Real>(
    x: kernel::XSlice<'_>,
    n: usize,
    d: usize,
    classes: usize,
    bias: bool,
    theta: &[T],
    mode: kernel::Mode<'_, T>,
    p_out: Option<&mut [T]>,
) -> candle_core::Result<kernel::Partial> {
    let k = classes;
    check_theta_len(theta.len(), d, k, bias, "parameters")?;
    let kp = k.div_ceil(KG) * KG;
    let mut vt = vec![T::ZERO; kp * d];
    for j in 0..d {
        for c in 0..k {
            vt[c * d + j] = theta[j * k + c];
        }
    }
    let mut vb = vec![T::ZERO; kp];
    if bias {
        vb[..k].copy_from_slice(&theta[d * k..]);
    }
    x.run(
        &kernel::Shape { rows: n, d, k, kp },
        &vt,
        &vb,
        mode,
        p_out,
        simd_level(),
        leaf_rows(n),
    )
    .map_err(op_err)
}

fn pack_partial<T: Real>(
    part: &kernel::Partial,
    d: usize,
    k: usize,
    bias: bool,
    scale: f64,
    loss: bool,
) -> Vec<T> {
    let mut out = Vec::with_capacity(d * k + k + 1);
    for j in 0..d {
        for c in 0..k {
            out.push(T::from_f64(part.acc[c * d + j] * scale));
        }
    }
    if bias {
        out.extend(part.bsum[..k].iter().map(|&s| T::from_f64(s * scale)));
    }
    if loss {
        out.push(T::from_f64(part.loss * scale));
    }
    out
}

/// The softmax-regression Hessian product as a candle op:
/// `x.apply_op3_no_bwd(&p, &v, &SoftmaxHvpOp { .. })` with `x` `[n, d]`
/// (`u8`, `f32` or `f64`), `p` `[n, k]` the probabilities and `v` the flat
/// direction `[d*k (+k)]`, both `f32` or `f64`. Returns `scale · (XᵀR, Σ_rows R)`
/// flat like `v`, `R = P ⊙ Z − P ⊙ rowsum(P ⊙ Z)`, `Z = x_scale·X V + v_b`.
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxHvpOp {
    /// `k`; `p` is `[n, k]`.
    pub classes: usize,
    /// Whether `v` (and the result) end with `k` bias entries.
    pub bias: bool,
    /// Multiplies `u8` inputs (MNIST: 1/255); ignored for float inputs.
    pub x_scale: f64,
    /// Multiplies the result (normally `1/n_total`).
    pub scale: f64,
    /// CUDA blocks per launch; `None`: twice the multiprocessors. Ignored
    /// on the CPU.
    pub cuda_blocks: Option<usize>,
}

impl CustomOp3 for SoftmaxHvpOp {
    fn name(&self) -> &'static str {
        "fused-softmax-hvp"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::fused_cuda::hvp(self, s1, l1, s2, l2, s3, l3)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, n, d) = op_x(s1, l1, self.x_scale)?;
        let k = self.classes;
        if l2.shape().dims2()? != (n, k) {
            candle_core::bail!(
                "fused softmax hvp: probabilities must be [{n}, {k}], got {:?}",
                l2.shape()
            );
        }
        let dim = l3.shape().elem_count();
        let storage = match (s2, s3) {
            (CpuStorage::F32(_), CpuStorage::F32(_)) => {
                let p = op_slice::<f32>(s2, l2, "probabilities")?;
                let v = op_slice::<f32>(s3, l3, "the direction")?;
                let part = op_run(x, n, d, k, self.bias, v, kernel::Mode::Hvp(p), None)?;
                CpuStorage::F32(pack_partial(&part, d, k, self.bias, self.scale, false))
            }
            (CpuStorage::F64(_), CpuStorage::F64(_)) => {
                let p = op_slice::<f64>(s2, l2, "probabilities")?;
                let v = op_slice::<f64>(s3, l3, "the direction")?;
                let part = op_run(x, n, d, k, self.bias, v, kernel::Mode::Hvp(p), None)?;
                CpuStorage::F64(pack_partial(&part, d, k, self.bias, self.scale, false))
            }
            _ => candle_core::bail!(
                "fused softmax hvp: probabilities and direction must both be f32 or both f64, got {:?} and {:?}",
                s2.dtype(),
                s3.dtype()
            ),
        };
        Ok((storage, Shape::from(dim)))
    }
}

/// The softmax-regression gradient and summed loss as a candle op:
/// `x.apply_op3_no_bwd(&y, &w, &SoftmaxGradOp { .. })` with `x` `[n, d]`,
/// `y` `[n, k]` targets (any float dtype) or `[n]` `u32` labels, and `w` the
/// flat parameters `[d*k (+k)]` (`f32` or `f64`). Returns `[dim + 1]`:
/// `scale · (Xᵀ(P − Y), Σ_rows (P − Y))` flat like `w`, then `scale · Σ CE`.
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxGradOp {
    /// `k`, the number of logits per row.
    pub classes: usize,
    /// Whether `w` ends with `k` biases (and the result with their gradient).
    pub bias: bool,
    /// As for [`SoftmaxHvpOp::x_scale`].
    pub x_scale: f64,
    /// Multiplies gradient and loss (normally `1/n_total`).
    pub scale: f64,
    /// As for [`SoftmaxHvpOp::cuda_blocks`].
    pub cuda_blocks: Option<usize>,
}

impl CustomOp3 for SoftmaxGradOp {
    fn name(&self) -> &'static str {
        "fused-softmax-grad"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::fused_cuda::grad(self, s1, l1, s2, l2, s3, l3)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, n, d) = op_x(s1, l1, self.x_scale)?;
        let k = self.classes;
        let dense;
        let targets = match s2 {
            CpuStorage::U32(_) => {
                if l2.shape().dims() != [n] {
                    candle_core::bail!(
                        "fused softmax grad: labels must be [{n}], got {:?}",
                        l2.shape()
                    );
                }
                let labels = op_slice::<u32>(s2, l2, "labels")?;
                if let Some(bad) = labels.iter().find(|&&c| c as usize >= k) {
                    candle_core::bail!(
                        "fused softmax grad: label {bad} is out of range for {k} classes"
                    );
                }
                kernel::TargetsRef::Labels(labels)
            }
            _ => {
                if l2.shape().dims2()? != (n, k) {
                    candle_core::bail!(
                        "fused softmax grad: targets must be [{n}, {k}], got {:?}",
                        l2.shape()
                    );
                }
                dense = match s2 {
                    CpuStorage::F64(_) => {
                        std::borrow::Cow::Borrowed(op_slice::<f64>(s2, l2, "targets")?)
                    }
                    CpuStorage::F32(_) => std::borrow::Cow::Owned(
                        op_slice::<f32>(s2, l2, "targets")?
                            .iter()
                            .map(|&v| f64::from(v))
                            .collect(),
                    ),
                    other => candle_core::bail!(
                        "fused softmax grad: targets of dtype {:?}",
                        other.dtype()
                    ),
                };
                kernel::TargetsRef::Dense(&dense)
            }
        };
        let dim = l3.shape().elem_count();
        let storage = match s3 {
            CpuStorage::F32(_) => {
                let w = op_slice::<f32>(s3, l3, "parameters")?;
                let part = op_run(x, n, d, k, self.bias, w, kernel::Mode::Grad(targets), None)?;
                CpuStorage::F32(pack_partial(&part, d, k, self.bias, self.scale, true))
            }
            CpuStorage::F64(_) => {
                let w = op_slice::<f64>(s3, l3, "parameters")?;
                let part = op_run(x, n, d, k, self.bias, w, kernel::Mode::Grad(targets), None)?;
                CpuStorage::F64(pack_partial(&part, d, k, self.bias, self.scale, true))
            }
            other => candle_core::bail!(
                "fused softmax grad: parameters of dtype {:?}",
                other.dtype()
            ),
        };
        Ok((storage, Shape::from(dim + 1)))
    }
}

/// The softmax probabilities as a candle op: `x.apply_op2_no_bwd(&w,
/// &SoftmaxProbsOp { .. })` → `[n, k]` in `w`'s dtype.
#[derive(Clone, Copy, Debug)]
pub struct SoftmaxProbsOp {
    /// `k`, the number of logits per row.
    pub classes: usize,
    /// Whether `w` ends with `k` biases.
    pub bias: bool,
    /// As for [`SoftmaxHvpOp::x_scale`].
    pub x_scale: f64,
    /// As for [`SoftmaxHvpOp::cuda_blocks`].
    pub cuda_blocks: Option<usize>,
}

impl CustomOp2 for SoftmaxProbsOp {
    fn name(&self) -> &'static str {
        "fused-softmax-probs"
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        crate::fused_cuda::probs(self, s1, l1, s2, l2)
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, n, d) = op_x(s1, l1, self.x_scale)?;
        let k = self.classes;
        let storage = match s2 {
            CpuStorage::F32(_) => {
                let w = op_slice::<f32>(s2, l2, "parameters")?;
                let mut p = vec![0f32; n * k];
                op_run(x, n, d, k, self.bias, w, kernel::Mode::Probs, Some(&mut p))?;
                CpuStorage::F32(p)
            }
            CpuStorage::F64(_) => {
                let w = op_slice::<f64>(s2, l2, "parameters")?;
                let mut p = vec![0f64; n * k];
                op_run(x, n, d, k, self.bias, w, kernel::Mode::Probs, Some(&mut p))?;
                CpuStorage::F64(p)
            }
            other => candle_core::bail!(
                "fused softmax probabilities: parameters of dtype {:?}",
                other.dtype()
            ),
        };
        Ok((storage, Shape::from((n, k))))
    }
}

// ---------------------------------------------------------------------------
// The kernels.

// The register tiles index fixed-size arrays in loops that LLVM unrolls;
// iterators would obscure which value lives in which register.
#[allow(clippy::needless_range_loop)]
mod kernel {
    use std::ops::Range;
    use std::ops::{Add, AddAssign, Div, Mul, Sub};

    use pulp::bytemuck::{self, Pod};
    use pulp::{Simd, WithSimd};

    use super::{BLOCK_ROWS, KG, SimdLevel};
    use crate::csr::CsrU8;
    use crate::error::{ModelError, Result};

    mod sparse;

    /// The compute type of the fused kernels: `f32` or `f64`, with its
    /// vectors for each of pulp's instruction sets `M` (`M::f32s` or
    /// `M::f64s`).
    pub trait Real:
        Copy
        + Send
        + Sync
        + Default
        + PartialOrd
        + std::fmt::Debug
        + 'static
        + Add<Output = Self>
        + Sub<Output = Self>
        + Mul<Output = Self>
        + Div<Output = Self>
        + AddAssign
    {
        /// `0`.
        const ZERO: Self;
        /// `1`.
        const ONE: Self;
        /// Rounds to the nearest `Self`.
        fn from_f64(x: f64) -> Self;
        /// Exact.
        fn to_f64(self) -> f64;
        /// Exact.
        fn from_u8(x: u8) -> Self;
        /// Exact.
        fn from_f32(x: f32) -> Self;
        /// `exp`, branch-free (vectorisable), for arguments `<= 0` down to
        /// about -87 (`f32`) / -708 (`f64`), below which it is clamped.
        fn exp_poly(self) -> Self;
        /// The natural logarithm (the standard library's, not vectorised).
        fn ln(self) -> Self;
        /// The larger of the two; `self` when they do not compare (NaN).
        fn max(self, other: Self) -> Self;

        /// A vector register of `lanes::<M>()` values.
        type V<M: Simd>: Copy;
        /// Values per vector register at instruction set `M`.
        fn lanes<M: Simd>() -> usize;
        /// A vector with every lane `x`.
        fn splat<M: Simd>(m: M, x: Self) -> Self::V<M>;
        /// `a * b + c`: fused on the SIMD levels; pulp's `Scalar` multiplies
        /// and adds (`mul_add_e`), as a CPU without FMA would have to.
        fn fma<M: Simd>(m: M, a: Self::V<M>, b: Self::V<M>, c: Self::V<M>) -> Self::V<M>;
        /// The sum of the lanes, in the fixed order of pulp's `reduce_sum`
        /// (halves added pairwise, the same tree on every call).
        fn hsum<M: Simd>(m: M, v: Self::V<M>) -> Self;
        /// # Safety
        /// `p` must point at `lanes::<M>()` readable values (any alignment).
        unsafe fn load<M: Simd>(m: M, p: *const Self) -> Self::V<M>;
        /// # Safety
        /// As for [`Real::load`].
        unsafe fn load_u8<M: Simd>(m: M, p: *const u8) -> Self::V<M>;
        /// # Safety
        /// As for [`Real::load`].
        unsafe fn load_f32<M: Simd>(m: M, p: *const f32) -> Self::V<M>;
        /// # Safety
        /// As for [`Real::load`].
        unsafe fn load_f64<M: Simd>(m: M, p: *const f64) -> Self::V<M>;
        /// `p[0..L] += v` in `f64`.
        ///
        /// # Safety
        /// `p` must point at `lanes::<M>()` writable values.
        unsafe fn acc_f64<M: Simd>(m: M, p: *mut f64, v: Self::V<M>);
    }

    /// `L` values at `p`, converted one by one into the lanes of a vector:
    /// the portable form of the widening and narrowing loads that pulp's
    /// generic `Simd` has no operation for (`u8 → f32/f64`, `f32 ↔ f64`).
    /// The loop has a constant trip count once `V` is known, and inside the
    /// instruction set's `vectorize` LLVM compiles it to that set's vector
    /// conversions (on x86 `vpmovzxbd` + `vcvtdq2ps`, `vcvtps2pd`, ...).
    ///
    /// # Safety
    /// `p` must point at as many readable `X` as `V` has lanes of `E`.
    #[inline(always)]
    unsafe fn convert<V: Pod, E: Pod, X: Copy>(p: *const X, f: impl Fn(X) -> E) -> V {
        let mut v = V::zeroed();
        let lanes: &mut [E] = bytemuck::cast_slice_mut(std::slice::from_mut(&mut v));
        for (i, l) in lanes.iter_mut().enumerate() {
            *l = f(unsafe { *p.add(i) });
        }
        v
    }

    /// `p[0..L] += v` lane by lane in `f64` (portable; vectorised as
    /// [`convert`] is).
    ///
    /// # Safety
    /// `p` must point at as many writable `f64` as `V` has lanes of `E`.
    #[inline(always)]
    unsafe fn acc_lanes<V: Pod, E: Pod + Into<f64>>(p: *mut f64, v: V) {
        let lanes: &[E] = bytemuck::cast_slice(std::slice::from_ref(&v));
        for (i, &l) in lanes.iter().enumerate() {
            unsafe { *p.add(i) += l.into() };
        }
    }

    /// Element types `X` may be stored in: `u8`, `f32`, `f64`.
    pub trait Pixel: Copy + Send + Sync + 'static {
        /// # Safety
        /// `p` must point at `T::lanes::<M>()` readable values.
        unsafe fn load<M: Simd, T: Real>(m: M, p: *const Self) -> T::V<M>;
        fn get<T: Real>(self) -> T;
    }

    impl Pixel for u8 {
        #[inline(always)]
        unsafe fn load<M: Simd, T: Real>(m: M, p: *const Self) -> T::V<M> {
            unsafe { T::load_u8(m, p) }
        }
        #[inline(always)]
        fn get<T: Real>(self) -> T {
            T::from_u8(self)
        }
    }

    impl Pixel for f32 {
        #[inline(always)]
        unsafe fn load<M: Simd, T: Real>(m: M, p: *const Self) -> T::V<M> {
            unsafe { T::load_f32(m, p) }
        }
        #[inline(always)]
        fn get<T: Real>(self) -> T {
            T::from_f32(self)
        }
    }

    impl Pixel for f64 {
        #[inline(always)]
        unsafe fn load<M: Simd, T: Real>(m: M, p: *const Self) -> T::V<M> {
            unsafe { T::load_f64(m, p) }
        }
        #[inline(always)]
        fn get<T: Real>(self) -> T {
            T::from_f64(self)
        }
    }
    /// Problem dimensions: `kp` is `k` padded to a multiple of [`KG`].
    pub struct Shape {
        pub rows: usize,
        pub d: usize,
        pub k: usize,
        pub kp: usize,
    }

    #[derive(Clone, Copy)]
    pub enum TargetsRef<'a> {
        Labels(&'a [u32]),
        Dense(&'a [f64]),
    }

    /// What one pass computes.
    #[derive(Clone, Copy)]
    pub enum Mode<'a, T> {
        /// Summed cross-entropy only.
        Loss(TargetsRef<'a>),
        /// Summed cross-entropy, `Xᵀ(P − Y)` and `Σ(P − Y)`.
        Grad(TargetsRef<'a>),
        /// Probabilities only.
        Probs,
        /// `XᵀR`, `ΣR` with `R = P⊙Z − P⊙rowsum(P⊙Z)`, given `P` `[rows, k]`.
        Hvp(&'a [T]),
    }

    impl<T> Mode<'_, T> {
        fn backward(&self) -> bool {
            matches!(self, Mode::Grad(_) | Mode::Hvp(_))
        }
    }

    /// Unscaled sums over a range of rows: `acc` is class-major `[kp, d]`.
    pub struct Partial {
        pub acc: Vec<f64>,
        pub bsum: Vec<f64>,
        pub loss: f64,
    }

    impl Partial {
        fn new(acc: usize, kp: usize) -> Self {
            Self {
                acc: vec![0.0; acc],
                bsum: vec![0.0; kp],
                loss: 0.0,
            }
        }

        pub fn merge(&mut self, other: &Partial) {
            for (a, b) in self.acc.iter_mut().zip(&other.acc) {
                *a += b;
            }
            for (a, b) in self.bsum.iter_mut().zip(&other.bsum) {
                *a += b;
            }
            self.loss += other.loss;
        }
    }

    /// `X` as a typed slice; `u8` carries its scale.
    #[derive(Clone, Copy)]
    pub enum XSlice<'a> {
        U8(&'a [u8], f64),
        F32(&'a [f32]),
        F64(&'a [f64]),
        Csr(&'a CsrU8),
    }

    /// Everything a leaf needs, shared by all threads.
    pub struct Job<'a, S, T> {
        x: &'a [S],
        d: usize,
        k: usize,
        kp: usize,
        /// `Z = xscale · (X V) + v_b`; the backward uses `xscale · R`.
        xscale: T,
        scaled: bool,
        /// Class-major `V`: class `c`, input `j` at `vt[c * dv + j]`, laid out
        /// so that the vector loads at `j = pre + m·L` are 64-byte aligned.
        vt: &'a [T],
        dv: usize,
        /// Leading inputs of every row done in scalar code, so that the
        /// vector loads of `X` are aligned too (when the row stride allows).
        pre: usize,
        vb: &'a [T],
        mode: Mode<'a, T>,
        /// Compressed rows, when `X` is stored so (then `x` is empty), with
        /// the input-major weights `wr[j * kw + c]` the sparse kernels
        /// gather rows of (`kw`: `kp` padded to whole vectors).
        csr: Option<&'a CsrU8>,
        wr: &'a [T],
        kw: usize,
    }

    /// The lengths of the mode's inputs and of `p_out` against the shape.
    fn check_mode<T>(shape: &Shape, mode: &Mode<'_, T>, p_out: Option<&[T]>) -> Result<()> {
        let Shape { rows, k, .. } = *shape;
        match mode {
            Mode::Hvp(p) if p.len() != rows * k => {
                return Err(ModelError::Batch(format!(
                    "probabilities hold {} values, expected {rows} x {k}",
                    p.len()
                )));
            }
            Mode::Grad(TargetsRef::Labels(l)) | Mode::Loss(TargetsRef::Labels(l))
                if l.len() != rows =>
            {
                return Err(ModelError::Batch(format!(
                    "{} labels for {rows} rows",
                    l.len()
                )));
            }
            Mode::Grad(TargetsRef::Dense(y)) | Mode::Loss(TargetsRef::Dense(y))
                if y.len() != rows * k =>
            {
                return Err(ModelError::Batch(format!(
                    "targets hold {} values, expected {rows} x {k}",
                    y.len()
                )));
            }
            _ => {}
        }
        if let Some(p) = p_out
            && p.len() != rows * k
        {
            return Err(ModelError::Batch(format!(
                "probability output holds {} values, expected {rows} x {k}",
                p.len()
            )));
        }
        Ok(())
    }

    impl XSlice<'_> {
        #[allow(clippy::too_many_arguments)]
        pub fn run<T: Real>(
            self,
            shape: &Shape,
            vt: &[T],
            vb: &[T],
            mode: Mode<'_, T>,
            p_out: Option<&mut [T]>,
            level: SimdLevel,
            leaf: usize,
        ) -> Result<Partial> {
            fn go<S: Pixel, T: Real>(
                x: &[S],
                scale: Option<f64>,
                shape: &Shape,
                vt: &[T],
                vb: &[T],
                mode: Mode<'_, T>,
                p_out: Option<&mut [T]>,
                level: SimdLevel,
                leaf: usize,
            ) -> Result<Partial> {
                let Shape { rows, d, k, kp } = *shape;
                if x.len() != rows * d {
                    return Err(ModelError::Batch(format!(
                        "X holds {} values, expected {rows} x {d}",
                        x.len()
                    )));
                }
                check_mode(shape, &mode, p_out.as_deref())?;
                // Split loads across cache lines halve the forward's speed:
                // peel `pre` inputs so that X's vector loads are aligned (if
                // every row starts at the same offset mod 64 and X has the
                // compute dtype), and lay out V to match.
                let (ss, st) = (std::mem::size_of::<S>(), std::mem::size_of::<T>());
                let xb = x.as_ptr() as usize;
                let mut pre = 0;
                if ss == st && (d * ss) % 64 == 0 {
                    pre = ((64 - xb % 64) % 64) / ss;
                    if pre >= d {
                        pre = 0;
                    }
                }
                let lt = 64 / st;
                let dv = d.div_ceil(lt) * lt;
                let mut buf = vec![T::ZERO; kp * dv + lt];
                let bp = buf.as_ptr() as usize;
                let first = ((64 - bp % 64) % 64) / st;
                let o = (first + lt - pre % lt) % lt;
                for c in 0..kp {
                    buf[o + c * dv..][..d].copy_from_slice(&vt[c * d..][..d]);
                }
                let job = Job {
                    x,
                    d,
                    k,
                    kp,
                    xscale: T::from_f64(scale.unwrap_or(1.0)),
                    scaled: scale.is_some(),
                    vt: &buf[o..o + kp * dv],
                    dv,
                    pre,
                    vb,
                    mode,
                    csr: None,
                    wr: &[],
                    kw: 0,
                };
                Ok(tree(&job, 0..rows, p_out, level, leaf.max(1)))
            }
            match self {
                XSlice::U8(x, s) => go(x, Some(s), shape, vt, vb, mode, p_out, level, leaf),
                XSlice::F32(x) => go(x, None, shape, vt, vb, mode, p_out, level, leaf),
                XSlice::F64(x) => go(x, None, shape, vt, vb, mode, p_out, level, leaf),
                XSlice::Csr(x) => {
                    if x.rows() != shape.rows || x.cols() != shape.d {
                        return Err(ModelError::Batch(format!(
                            "CSR inputs are {} x {}, expected {} x {}",
                            x.rows(),
                            x.cols(),
                            shape.rows,
                            shape.d
                        )));
                    }
                    check_mode(shape, &mode, p_out.as_deref())?;
                    let Shape { rows, d, k, kp } = *shape;
                    let lanes = sparse::lanes::<T>(level);
                    let kw = kp.div_ceil(lanes) * lanes;
                    let mut wr = vec![T::ZERO; d * kw];
                    for c in 0..kp {
                        for j in 0..d {
                            wr[j * kw + c] = vt[c * d + j];
                        }
                    }
                    let no_dense: &[u8] = &[];
                    let job = Job {
                        x: no_dense,
                        d,
                        k,
                        kp,
                        xscale: T::from_f64(x.scale()),
                        scaled: true,
                        vt: &[],
                        dv: 0,
                        pre: 0,
                        vb,
                        mode,
                        csr: Some(x),
                        wr: &wr,
                        kw,
                    };
                    Ok(tree(&job, 0..rows, p_out, level, leaf.max(1)))
                }
            }
        }
    }

    /// The fixed reduction tree: split at the midpoint until `leaf` rows.
    fn tree<S: Pixel, T: Real>(
        job: &Job<'_, S, T>,
        rows: Range<usize>,
        p_out: Option<&mut [T]>,
        level: SimdLevel,
        leaf: usize,
    ) -> Partial {
        if rows.len() <= leaf {
            return run_leaf(job, rows, p_out, level);
        }
        let mid = rows.start + rows.len() / 2;
        let (lo, hi) = match p_out {
            Some(p) => {
                let (a, b) = p.split_at_mut((mid - rows.start) * job.k);
                (Some(a), Some(b))
            }
            None => (None, None),
        };
        let (mut a, b) = rayon::join(
            || tree(job, rows.start..mid, lo, level, leaf),
            || tree(job, mid..rows.end, hi, level, leaf),
        );
        a.merge(&b);
        a
    }

    /// One leaf at `level`: pulp's token for that instruction set, then
    /// [`leaf_impl`] generic over it. A level the CPU lacks is refused when a
    /// [`super::FusedSoftmax`] is set up; should one get here anyway, it runs
    /// the scalar code rather than instructions the CPU does not have.
    fn run_leaf<S: Pixel, T: Real>(
        job: &Job<'_, S, T>,
        rows: Range<usize>,
        p_out: Option<&mut [T]>,
        level: SimdLevel,
    ) -> Partial {
        match level {
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx512 => {
                if let Some(m) = pulp::x86::V4::try_new() {
                    return leaf_impl(m, job, rows, p_out);
                }
            }
            #[cfg(target_arch = "x86_64")]
            SimdLevel::Avx2 => {
                if let Some(m) = pulp::x86::V3::try_new() {
                    return leaf_impl(m, job, rows, p_out);
                }
            }
            #[cfg(target_arch = "aarch64")]
            SimdLevel::Neon => {
                if let Some(m) = pulp::aarch64::Neon::try_new() {
                    return leaf_impl(m, job, rows, p_out);
                }
            }
            _ => {}
        }
        leaf_impl(pulp::Scalar::new(), job, rows, p_out)
    }

    // Register tiles, measured on Zen 5 (AVX-512): 2 rows x 5 classes in the
    // forward (10 accumulators, 7 loads per 10 FMAs) and 5 classes x 2
    // vectors in the backward (10 accumulators, 7 loads per 10 FMAs). Tiles
    // of 20 accumulators should be better still on paper, but LLVM then
    // allocated only 19 of the 32 vector registers and spilled in the loop.
    // The scalar level uses 1 row (1 vector) x all 10 classes.
    const FWD_ROWS: usize = 2;
    const FWD_CLASSES: usize = 5;
    const BWD_CHUNKS: usize = 2;
    const BWD_CLASSES: usize = 5;
    /// Prefetch the next block in the forward half too (not only while the
    /// backward half runs from L2). One block ahead measured best (vs 1, 4,
    /// 16 rows or two blocks ahead).
    const PREFETCH_IN_FORWARD: bool = true;

    /// One leaf: its rows in blocks of [`BLOCK_ROWS`].
    ///
    /// This loop itself is compiled without the instruction set's features;
    /// each block's three steps enter them through pulp's `vectorize`, which
    /// is a `#[target_feature]` function that LLVM cannot inline into a
    /// caller lacking those features. So the forward and the backward loop
    /// nests are compiled as separate functions, and the register allocator
    /// sees one at a time (inlined together, the tiles' accumulators were
    /// spilled). The `#[inline(never)]` wrappers do the same for the scalar
    /// level, whose `vectorize` is a plain call.
    fn leaf_impl<M: Simd, S: Pixel, T: Real>(
        m: M,
        job: &Job<'_, S, T>,
        rows: Range<usize>,
        mut p_out: Option<&mut [T]>,
    ) -> Partial {
        if let Some(csr) = job.csr {
            return sparse::leaf(m, job, csr, rows, p_out);
        }
        let kp = job.kp;
        let back = job.mode.backward();
        let mut part = Partial::new(if back { kp * job.d } else { 0 }, kp);
        let mut z = vec![T::ZERO; BLOCK_ROWS * kp];
        let mut r = vec![T::ZERO; BLOCK_ROWS * kp];
        let mut b0 = rows.start;
        while b0 < rows.end {
            let nb = BLOCK_ROWS.min(rows.end - b0);
            forward_block(m, job, b0, nb, &mut z);
            let out = p_out.as_deref_mut().map(|p| {
                let o = (b0 - rows.start) * job.k;
                &mut p[o..o + nb * job.k]
            });
            rowwise_block(m, job, b0, nb, &mut z, &mut r, out, &mut part);
            if back {
                backward_block(m, job, b0, nb, &r, &mut part.acc);
            }
            b0 += nb;
        }
        part
    }

    #[inline(never)]
    fn forward_block<M: Simd, S: Pixel, T: Real>(
        m: M,
        job: &Job<'_, S, T>,
        b0: usize,
        nb: usize,
        z: &mut [T],
    ) {
        struct Op<'a, 'j, S, T> {
            job: &'a Job<'j, S, T>,
            b0: usize,
            nb: usize,
            z: &'a mut [T],
        }
        impl<S: Pixel, T: Real> WithSimd for Op<'_, '_, S, T> {
            type Output = ();
            #[inline(always)]
            fn with_simd<M: Simd>(self, m: M) {
                let Op { job, b0, nb, z } = self;
                // SAFETY: `XSlice::run` checked the lengths of X and V
                // against the shape; `z` holds a block of `kp`-wide rows.
                unsafe {
                    if T::lanes::<M>() == 1 {
                        forward::<M, S, T, 1, KG>(m, job, b0, nb, z)
                    } else {
                        forward::<M, S, T, FWD_ROWS, FWD_CLASSES>(m, job, b0, nb, z)
                    }
                }
            }
        }
        m.vectorize(Op { job, b0, nb, z })
    }

    /// The per-row softmax work, under the instruction set's features so
    /// that LLVM vectorises the block's `exp` with them (plain IEEE
    /// arithmetic without contraction, so every level rounds alike).
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn rowwise_block<M: Simd, S: Pixel, T: Real>(
        m: M,
        job: &Job<'_, S, T>,
        b0: usize,
        nb: usize,
        z: &mut [T],
        r: &mut [T],
        p_out: Option<&mut [T]>,
        part: &mut Partial,
    ) {
        struct Op<'a, 'j, S, T> {
            job: &'a Job<'j, S, T>,
            b0: usize,
            nb: usize,
            z: &'a mut [T],
            r: &'a mut [T],
            p_out: Option<&'a mut [T]>,
            part: &'a mut Partial,
        }
        impl<S: Pixel, T: Real> WithSimd for Op<'_, '_, S, T> {
            type Output = ();
            #[inline(always)]
            fn with_simd<M: Simd>(self, _: M) {
                let Op {
                    job,
                    b0,
                    nb,
                    z,
                    r,
                    p_out,
                    part,
                } = self;
                rowwise(job, b0, nb, z, r, p_out, part)
            }
        }
        m.vectorize(Op {
            job,
            b0,
            nb,
            z,
            r,
            p_out,
            part,
        })
    }

    #[inline(never)]
    fn backward_block<M: Simd, S: Pixel, T: Real>(
        m: M,
        job: &Job<'_, S, T>,
        b0: usize,
        nb: usize,
        r: &[T],
        acc: &mut [f64],
    ) {
        struct Op<'a, 'j, S, T> {
            job: &'a Job<'j, S, T>,
            b0: usize,
            nb: usize,
            r: &'a [T],
            acc: &'a mut [f64],
        }
        impl<S: Pixel, T: Real> WithSimd for Op<'_, '_, S, T> {
            type Output = ();
            #[inline(always)]
            fn with_simd<M: Simd>(self, m: M) {
                let Op {
                    job,
                    b0,
                    nb,
                    r,
                    acc,
                } = self;
                // SAFETY: as in `forward_block`; `acc` is `[kp, d]`.
                unsafe {
                    if T::lanes::<M>() == 1 {
                        backward::<M, S, T, 1, KG>(m, job, b0, nb, r, acc)
                    } else {
                        backward::<M, S, T, BWD_CHUNKS, BWD_CLASSES>(m, job, b0, nb, r, acc)
                    }
                }
            }
        }
        m.vectorize(Op {
            job,
            b0,
            nb,
            r,
            acc,
        })
    }
    /// `z[i, c] = xscale · Σ_j X[b0+i, j] vt[c, j] + vb[c]` for the block.
    #[inline(always)]
    unsafe fn forward<M: Simd, S: Pixel, T: Real, const FR: usize, const FC: usize>(
        m: M,
        job: &Job<'_, S, T>,
        b0: usize,
        nb: usize,
        z: &mut [T],
    ) {
        let (d, kp) = (job.d, job.kp);
        let x = job.x.as_ptr();
        for g in (0..kp).step_by(FC) {
            let vt = job.vt[g * job.dv..].as_ptr();
            let mut i = 0;
            while i + FR <= nb {
                let xp: [*const S; FR] =
                    std::array::from_fn(|r| unsafe { x.add((b0 + i + r) * d) });
                let out = unsafe { fwd_tile::<M, S, T, FR, FC>(m, xp, vt, job) };
                for (r, o) in out.iter().enumerate() {
                    store_z(job, &mut z[(i + r) * kp + g..][..FC], o, g);
                }
                i += FR;
            }
            while i < nb {
                let out = unsafe { fwd_tile::<M, S, T, 1, FC>(m, [x.add((b0 + i) * d)], vt, job) };
                store_z(job, &mut z[i * kp + g..][..FC], &out[0], g);
                i += 1;
            }
        }
    }

    #[inline(always)]
    fn store_z<S, T: Real>(job: &Job<'_, S, T>, z: &mut [T], dots: &[T], g: usize) {
        for (c, (z, &dot)) in z.iter_mut().zip(dots).enumerate() {
            let s = if job.scaled { dot * job.xscale } else { dot };
            *z = s + job.vb[g + c];
        }
    }

    /// Dot products of `R` rows of `X` with `C` class columns.
    #[inline(always)]
    unsafe fn fwd_tile<M: Simd, S: Pixel, T: Real, const R: usize, const C: usize>(
        m: M,
        xp: [*const S; R],
        vt: *const T,
        job: &Job<'_, S, T>,
    ) -> [[T; C]; R] {
        unsafe {
            let (d, dv, pre) = (job.d, job.dv, job.pre);
            let nch = (d - pre) / T::lanes::<M>();
            // Without a backward half to hide it behind, prefetch the row one
            // block ahead, line by line, as this one is read.
            let ahead = BLOCK_ROWS * d;
            let prefetch = PREFETCH_IN_FORWARD || !job.mode.backward();
            let end = job.x.as_ptr_range().end as usize;
            let mut acc = [[T::splat(m, T::ZERO); C]; R];
            for ch in 0..nch {
                let off = pre + ch * T::lanes::<M>();
                if prefetch {
                    for p in xp {
                        let q = p.wrapping_add(off + ahead);
                        if (q as usize) < end {
                            prefetch_l2(q.cast());
                        }
                    }
                }
                let xv: [T::V<M>; R] = std::array::from_fn(|r| S::load::<M, T>(m, xp[r].add(off)));
                for c in 0..C {
                    let v = T::load(m, vt.add(c * dv + off));
                    for r in 0..R {
                        acc[r][c] = T::fma(m, xv[r], v, acc[r][c]);
                    }
                }
            }
            let mut out = [[T::ZERO; C]; R];
            for r in 0..R {
                for c in 0..C {
                    out[r][c] = T::hsum(m, acc[r][c]);
                }
            }
            for j in (0..pre).chain(pre + nch * T::lanes::<M>()..d) {
                for r in 0..R {
                    let xj: T = (*xp[r].add(j)).get();
                    for c in 0..C {
                        out[r][c] += xj * *vt.add(c * dv + j);
                    }
                }
            }
            out
        }
    }

    /// The per-row softmax work of one block: writes `R` (scaled for the
    /// backward by `xscale`) into `r`, adds the unscaled `ΣR` and the loss
    /// into `part`, and writes probabilities to `p_out` if given.
    #[inline(always)]
    fn rowwise<S, T: Real>(
        job: &Job<'_, S, T>,
        b0: usize,
        nb: usize,
        z: &mut [T],
        r: &mut [T],
        mut p_out: Option<&mut [T]>,
        part: &mut Partial,
    ) {
        let (k, kp) = (job.k, job.kp);
        match job.mode {
            Mode::Hvp(p) => {
                for i in 0..nb {
                    let pi = &p[(b0 + i) * k..][..k];
                    let zi = &z[i * kp..][..k];
                    let mut s = T::ZERO;
                    for c in 0..k {
                        s += pi[c] * zi[c];
                    }
                    let ri = &mut r[i * kp..][..kp];
                    for c in 0..k {
                        let rc = pi[c] * zi[c] - pi[c] * s;
                        part.bsum[c] += rc.to_f64();
                        ri[c] = if job.scaled { rc * job.xscale } else { rc };
                    }
                }
            }
            Mode::Loss(_) | Mode::Grad(_) | Mode::Probs => {
                let targets = match job.mode {
                    Mode::Loss(t) | Mode::Grad(t) => Some(t),
                    _ => None,
                };
                // Shift by the row max, then one vectorisable exp over the block.
                let mut lse = [T::ZERO; BLOCK_ROWS];
                for i in 0..nb {
                    let zi = &z[i * kp..][..kp];
                    let mut m = zi[0];
                    for &v in &zi[1..k] {
                        m = m.max(v);
                    }
                    lse[i] = m;
                    let ei = &mut r[i * kp..][..kp];
                    for c in 0..kp {
                        ei[c] = if c < k { zi[c] - m } else { T::ZERO };
                    }
                }
                for e in &mut r[..nb * kp] {
                    *e = e.exp_poly();
                }
                for i in 0..nb {
                    let ri = &mut r[i * kp..][..kp];
                    let mut s = T::ZERO;
                    for &e in &ri[..k] {
                        s += e;
                    }
                    let inv = T::ONE / s;
                    let l = lse[i] + s.ln();
                    for e in &mut ri[..k] {
                        *e = *e * inv;
                    }
                    ri[k..].fill(T::ZERO);
                    if let Some(out) = p_out.as_deref_mut() {
                        out[i * k..][..k].copy_from_slice(&ri[..k]);
                    }
                    let zi = &z[i * kp..][..k];
                    match targets {
                        None => {}
                        Some(TargetsRef::Labels(labels)) => {
                            let y = labels[b0 + i] as usize;
                            part.loss += (l - zi[y]).to_f64();
                            ri[y] = ri[y] - T::ONE;
                        }
                        Some(TargetsRef::Dense(dense)) => {
                            let yi = &dense[(b0 + i) * k..][..k];
                            let mut loss = 0.0;
                            for c in 0..k {
                                if yi[c] != 0.0 {
                                    loss += yi[c] * (l - zi[c]).to_f64();
                                }
                                ri[c] = ri[c] - T::from_f64(yi[c]);
                            }
                            part.loss += loss;
                        }
                    }
                    if matches!(job.mode, Mode::Grad(_)) {
                        for c in 0..k {
                            part.bsum[c] += ri[c].to_f64();
                            if job.scaled {
                                ri[c] = ri[c] * job.xscale;
                            }
                        }
                    }
                }
            }
        }
    }

    /// `acc[c, j] += Σ_i X[b0+i, j] r[i, c]` for the block.
    #[inline(always)]
    unsafe fn backward<M: Simd, S: Pixel, T: Real, const BJ: usize, const BC: usize>(
        m: M,
        job: &Job<'_, S, T>,
        b0: usize,
        nb: usize,
        r: &[T],
        acc: &mut [f64],
    ) {
        let (d, kp, pre) = (job.d, job.kp, job.pre);
        let nch = (d - pre) / T::lanes::<M>();
        // While this block's tiles run from L2, pull the next block of X
        // into L2, spread evenly over the tiles' row iterations.
        let mut pf = Prefetch::next_block(job, b0 + nb);
        unsafe {
            let x = job.x.as_ptr().add(b0 * d);
            for g in (0..kp).step_by(KG) {
                let rg = r.as_ptr().add(g);
                let ag = acc.as_mut_ptr().add(g * d);
                let mut ch = 0;
                while ch + BJ <= nch {
                    let c0 = pre + ch * T::lanes::<M>();
                    bwd_tile::<M, S, T, BJ, BC>(m, x.add(c0), d, nb, rg, kp, ag.add(c0), &mut pf);
                    ch += BJ;
                }
                while ch < nch {
                    let c0 = pre + ch * T::lanes::<M>();
                    bwd_tile::<M, S, T, 1, KG>(m, x.add(c0), d, nb, rg, kp, ag.add(c0), &mut pf);
                    ch += 1;
                }
                for j in (0..pre).chain(pre + nch * T::lanes::<M>()..d) {
                    let mut s = [T::ZERO; KG];
                    for i in 0..nb {
                        let xij: T = (*x.add(i * d + j)).get();
                        for c in 0..KG {
                            s[c] += xij * *rg.add(i * kp + c);
                        }
                    }
                    for c in 0..KG {
                        *ag.add(c * d + j) += s[c].to_f64();
                    }
                }
            }
        }
    }

    /// A hint to bring the cache line at `p` into L2; never faults.
    #[inline(always)]
    fn prefetch_l2(p: *const u8) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: prefetching is only a hint and cannot fault.
        unsafe {
            use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
            _mm_prefetch::<_MM_HINT_T1>(p.cast());
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = p;
    }

    /// Software prefetch of the next block into L2, two lines per step
    /// (a block of `f32` rows has about two lines per backward row
    /// iteration), branch-free so that it does not split the tile loop.
    pub struct Prefetch {
        next: usize,
        last: usize,
    }

    impl Prefetch {
        /// The block of X starting at row `start`.
        fn next_block<S, T>(job: &Job<'_, S, T>, start: usize) -> Self {
            let len = job.x.len();
            let next = (start * job.d).min(len);
            let next_len = (BLOCK_ROWS * job.d).min(len - next);
            let base = job.x.as_ptr() as usize;
            let size = std::mem::size_of::<S>();
            Self {
                next: base + next * size,
                // Past the end, keep touching the last line of X.
                last: base + (next + next_len).max(1) * size - 1,
            }
        }

        #[inline(always)]
        fn step(&mut self) {
            prefetch_l2(self.next.min(self.last) as *const u8);
            prefetch_l2((self.next + 64).min(self.last) as *const u8);
            self.next += 128;
        }
    }

    /// A `KG x (J·L)` tile of `XᵀR` held in registers across the block.
    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    unsafe fn bwd_tile<M: Simd, S: Pixel, T: Real, const J: usize, const C: usize>(
        m: M,
        x: *const S,
        d: usize,
        nb: usize,
        r: *const T,
        kp: usize,
        acc: *mut f64,
        pf: &mut Prefetch,
    ) {
        unsafe {
            for h in (0..KG).step_by(C) {
                let mut a = [[T::splat(m, T::ZERO); J]; C];
                for i in 0..nb {
                    pf.step();
                    let row = x.add(i * d);
                    let xv: [T::V<M>; J] =
                        std::array::from_fn(|jj| S::load::<M, T>(m, row.add(jj * T::lanes::<M>())));
                    let ri = r.add(i * kp + h);
                    for c in 0..C {
                        let s = T::splat(m, *ri.add(c));
                        for jj in 0..J {
                            a[c][jj] = T::fma(m, xv[jj], s, a[c][jj]);
                        }
                    }
                }
                for c in 0..C {
                    for jj in 0..J {
                        T::acc_f64(m, acc.add((h + c) * d + jj * T::lanes::<M>()), a[c][jj]);
                    }
                }
            }
        }
    }

    impl Real for f32 {
        const ZERO: Self = 0.0;
        const ONE: Self = 1.0;
        #[inline(always)]
        fn from_f64(x: f64) -> Self {
            x as f32
        }
        #[inline(always)]
        fn to_f64(self) -> f64 {
            f64::from(self)
        }
        #[inline(always)]
        fn from_u8(x: u8) -> Self {
            f32::from(x)
        }
        #[inline(always)]
        fn from_f32(x: f32) -> Self {
            x
        }
        /// Cephes `expf`: `2^n · p(r)`, `r = x − n ln 2`, about 1 ulp.
        #[inline(always)]
        fn exp_poly(self) -> Self {
            const MAGIC: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
            let x = self.clamp(-87.0, 88.0);
            let t = x * std::f32::consts::LOG2_E + MAGIC;
            let n = t - MAGIC;
            let ni = t.to_bits() as i32 - MAGIC.to_bits() as i32;
            let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
            let p = 1.987_569_1e-4_f32;
            let p = p * r + 1.398_199_9e-3;
            let p = p * r + 8.333_452e-3;
            let p = p * r + 4.166_579_6e-2;
            let p = p * r + 1.666_666_5e-1;
            let p = p * r + 0.5;
            let y = p * (r * r) + r + 1.0;
            y * f32::from_bits(((ni + 127) as u32) << 23)
        }
        #[inline(always)]
        fn ln(self) -> Self {
            f32::ln(self)
        }
        #[inline(always)]
        fn max(self, other: Self) -> Self {
            if other > self { other } else { self }
        }
        type V<M: Simd> = M::f32s;
        #[inline(always)]
        fn lanes<M: Simd>() -> usize {
            M::F32_LANES
        }
        #[inline(always)]
        fn splat<M: Simd>(m: M, x: f32) -> M::f32s {
            m.splat_f32s(x)
        }
        #[inline(always)]
        fn fma<M: Simd>(m: M, a: M::f32s, b: M::f32s, c: M::f32s) -> M::f32s {
            m.mul_add_e_f32s(a, b, c)
        }
        #[inline(always)]
        fn hsum<M: Simd>(m: M, v: M::f32s) -> f32 {
            m.reduce_sum_f32s(v)
        }
        #[inline(always)]
        unsafe fn load<M: Simd>(_: M, p: *const f32) -> M::f32s {
            unsafe { p.cast::<M::f32s>().read_unaligned() }
        }
        #[inline(always)]
        unsafe fn load_u8<M: Simd>(_: M, p: *const u8) -> M::f32s {
            unsafe { convert(p, f32::from) }
        }
        #[inline(always)]
        unsafe fn load_f32<M: Simd>(m: M, p: *const f32) -> M::f32s {
            unsafe { <Self as Real>::load(m, p) }
        }
        #[inline(always)]
        unsafe fn load_f64<M: Simd>(_: M, p: *const f64) -> M::f32s {
            unsafe { convert(p, |x: f64| x as f32) }
        }
        #[inline(always)]
        unsafe fn acc_f64<M: Simd>(_: M, p: *mut f64, v: M::f32s) {
            unsafe { acc_lanes::<_, f32>(p, v) }
        }
    }

    impl Real for f64 {
        const ZERO: Self = 0.0;
        const ONE: Self = 1.0;
        #[inline(always)]
        fn from_f64(x: f64) -> Self {
            x
        }
        #[inline(always)]
        fn to_f64(self) -> f64 {
            self
        }
        #[inline(always)]
        fn from_u8(x: u8) -> Self {
            f64::from(x)
        }
        #[inline(always)]
        fn from_f32(x: f32) -> Self {
            f64::from(x)
        }
        /// `2^n · p(r)`, `r = x − n ln 2` (`|r| ≤ 0.35`), `p` the degree-13
        /// Taylor polynomial: truncation below 1e-17, a few ulp in all.
        #[inline(always)]
        fn exp_poly(self) -> Self {
            const MAGIC: f64 = 6_755_399_441_055_744.0; // 1.5 · 2^52
            // fdlibm's split of ln 2: LN2_HI has trailing zero bits, so
            // n · LN2_HI is exact.
            const LN2_HI: f64 = f64::from_bits(0x3fe6_2e42_fee0_0000);
            const LN2_LO: f64 = f64::from_bits(0x3dea_39ef_3579_3c76);
            let x = self.clamp(-708.0, 709.0);
            let t = x * std::f64::consts::LOG2_E + MAGIC;
            let n = t - MAGIC;
            let ni = t.to_bits() as i64 - MAGIC.to_bits() as i64;
            let r = (x - n * LN2_HI) - n * LN2_LO;
            let mut p = 1.0 / 6_227_020_800.0; // 1/13!
            for f in [
                479_001_600.0,
                39_916_800.0,
                3_628_800.0,
                362_880.0,
                40_320.0,
                5_040.0,
                720.0,
                120.0,
                24.0,
                6.0,
                2.0,
                1.0,
                1.0,
            ] {
                p = p * r + 1.0 / f;
            }
            p * f64::from_bits(((ni + 1023) as u64) << 52)
        }
        #[inline(always)]
        fn ln(self) -> Self {
            f64::ln(self)
        }
        #[inline(always)]
        fn max(self, other: Self) -> Self {
            if other > self { other } else { self }
        }
        type V<M: Simd> = M::f64s;
        #[inline(always)]
        fn lanes<M: Simd>() -> usize {
            M::F64_LANES
        }
        #[inline(always)]
        fn splat<M: Simd>(m: M, x: f64) -> M::f64s {
            m.splat_f64s(x)
        }
        #[inline(always)]
        fn fma<M: Simd>(m: M, a: M::f64s, b: M::f64s, c: M::f64s) -> M::f64s {
            m.mul_add_e_f64s(a, b, c)
        }
        #[inline(always)]
        fn hsum<M: Simd>(m: M, v: M::f64s) -> f64 {
            m.reduce_sum_f64s(v)
        }
        #[inline(always)]
        unsafe fn load<M: Simd>(_: M, p: *const f64) -> M::f64s {
            unsafe { p.cast::<M::f64s>().read_unaligned() }
        }
        #[inline(always)]
        unsafe fn load_u8<M: Simd>(_: M, p: *const u8) -> M::f64s {
            unsafe { convert(p, f64::from) }
        }
        #[inline(always)]
        unsafe fn load_f32<M: Simd>(_: M, p: *const f32) -> M::f64s {
            unsafe { convert(p, f64::from) }
        }
        #[inline(always)]
        unsafe fn load_f64<M: Simd>(m: M, p: *const f64) -> M::f64s {
            unsafe { <Self as Real>::load(m, p) }
        }
        #[inline(always)]
        unsafe fn acc_f64<M: Simd>(m: M, p: *mut f64, v: M::f64s) {
            unsafe {
                let q = p.cast::<M::f64s>();
                q.write_unaligned(m.add_f64s(q.read_unaligned(), v));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::kernel::Real;

    #[test]
    fn exp_poly_is_accurate() {
        for i in 0..=2000 {
            let x = -80.0 * f64::from(i) / 2000.0;
            let e32 = (x as f32).exp_poly();
            let want32 = (x as f32).exp();
            assert!(
                ((e32 - want32) / want32).abs() < 4.0 * f32::EPSILON,
                "f32 exp({x}) = {e32}, want {want32}"
            );
            let e64 = x.exp_poly();
            let want64 = x.exp();
            assert!(
                ((e64 - want64) / want64).abs() < 8.0 * f64::EPSILON,
                "f64 exp({x}) = {e64}, want {want64}"
            );
        }
        assert_eq!(0f32.exp_poly(), 1.0);
        assert_eq!(0f64.exp_poly(), 1.0);
    }
}
