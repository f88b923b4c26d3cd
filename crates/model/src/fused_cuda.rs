//! The CUDA side of the fused softmax ops: `cuda_fwd` for
//! [`SoftmaxHvpOp`](crate::fused::SoftmaxHvpOp),
//! [`SoftmaxGradOp`](crate::fused::SoftmaxGradOp) and
//! [`SoftmaxProbsOp`](crate::fused::SoftmaxProbsOp).
//!
//! The kernels (`fused_cuda.cu`) are compiled at run time by NVRTC, once per
//! process and problem shape, with the inputs `D`, the classes `K`, the bias
//! and the element types as compile-time constants: every loop over a row's
//! pixels-per-thread and classes then has a constant trip count and the
//! register tiles stay in registers. It also means this crate needs no build
//! script: candle's `cuda` feature already links NVRTC.
//!
//! Each product is three launches: a transpose of the weights to class-major
//! order, one pass over `X` in which every block writes its unscaled partial
//! sums, then a reduction that adds them in block order in `f64` and scales
//! by `1/n` (the probabilities need only the first two). No atomics, so results are
//! bit-identical between runs on one GPU. The number of blocks is twice the
//! number of multiprocessors, or the ops' `cuda_blocks` when set (for
//! benchmarks: [`crate::fused_ops::FusedOps::with_cuda_blocks`]).
//!
//! The kernels' logic is tested on the CPU by `tests/fused_cuda_emulated.rs`,
//! which runs the same source under a small emulation of CUDA's thread model.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::sys::CUdevice_attribute;
use candle_core::cuda_backend::cudarc::driver::{
    CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs, LaunchConfig,
    PushKernelArg,
};
use candle_core::cuda_backend::cudarc::nvrtc;
use candle_core::{CudaDevice, CudaStorage, DType, Layout, Shape};

use crate::fused::{SoftmaxGradOp, SoftmaxHvpOp, SoftmaxProbsOp, check_theta_len};

const SOURCE: &str = include_str!("fused_cuda.cu");
/// Threads per block of the pass kernels (`THREADS` in the source).
const THREADS: u32 = 256;
const WARPS: usize = THREADS as usize / 32;

/// A compute type of the kernels: `f32` or `f64`.
trait Real: DeviceRepr + candle_core::cuda_backend::CudaDType + Copy {
    const C_NAME: &'static str;
    /// Rows per warp in the forward half (`RW`): `f64` tiles are twice as
    /// wide in registers, so they take half as many rows.
    const ROWS_PER_WARP: usize;
    fn from_f64(v: f64) -> Self;
}

impl Real for f32 {
    const C_NAME: &'static str = "float";
    const ROWS_PER_WARP: usize = 4;
    fn from_f64(v: f64) -> Self {
        v as f32
    }
}

impl Real for f64 {
    const C_NAME: &'static str = "double";
    const ROWS_PER_WARP: usize = 2;
    fn from_f64(v: f64) -> Self {
        v
    }
}

fn err(msg: String) -> candle_core::Error {
    candle_core::Error::Cuda(msg.into())
}

/// `X` as a typed device view.
enum XView<'a> {
    U8(CudaView<'a, u8>),
    F32(CudaView<'a, f32>),
    F64(CudaView<'a, f64>),
}

impl XView<'_> {
    fn c_name(&self) -> &'static str {
        match self {
            XView::U8(_) => "unsigned char",
            XView::F32(_) => "float",
            XView::F64(_) => "double",
        }
    }
}

fn view<'a, T: candle_core::cuda_backend::CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
    what: &str,
) -> candle_core::Result<CudaView<'a, T>> {
    let (a, b) = l
        .contiguous_offsets()
        .ok_or_else(|| err(format!("fused softmax: {what} must be contiguous")))?;
    Ok(s.as_cuda_slice::<T>()?.slice(a..b))
}

fn x_view<'a>(s: &'a CudaStorage, l: &Layout) -> candle_core::Result<(XView<'a>, usize, usize)> {
    let (n, d) = l.shape().dims2()?;
    if n > i32::MAX as usize {
        return Err(err(format!(
            "fused softmax: {n} rows exceed the CUDA kernel's limit of {}",
            i32::MAX
        )));
    }
    let x = match s.dtype() {
        DType::U8 => XView::U8(view(s, l, "X")?),
        DType::F32 => XView::F32(view(s, l, "X")?),
        DType::F64 => XView::F64(view(s, l, "X")?),
        other => {
            return Err(err(format!(
                "fused softmax: X must be u8, f32 or f64, got {other:?}"
            )));
        }
    };
    Ok((x, n, d))
}

/// The compiled PTX of every shape seen so far, by module name.
fn ptx_cache() -> &'static Mutex<HashMap<String, String>> {
    static CACHE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// One specialisation of the kernels: its `#define`s and module name.
struct Module {
    name: String,
    defines: String,
}

impl Module {
    fn new<T: Real>(x: &XView<'_>, d: usize, k: usize, bias: bool) -> Self {
        let (xt, t, rw) = (x.c_name(), T::C_NAME, T::ROWS_PER_WARP);
        let b = u8::from(bias);
        Self {
            name: format!(
                "hessfree_fused_{}_{t}_d{d}_k{k}_b{b}_rw{rw}",
                xt.replace(' ', "_")
            ),
            defines: format!(
                "#define XT {xt}\n#define T {t}\n#define D {d}\n#define K {k}\n\
                 #define BIAS {b}\n#define RW {rw}\n"
            ),
        }
    }

    /// The kernel `name` of this module on `dev`; NVRTC compiles the module
    /// the first time this process needs it.
    fn function(&self, dev: &CudaDevice, name: &str) -> candle_core::Result<CudaFunction> {
        let mut cache = ptx_cache()
            .lock()
            .map_err(|_| err("PTX cache poisoned".into()))?;
        if !cache.contains_key(&self.name) {
            let opts = nvrtc::CompileOptions {
                name: Some(format!("{}.cu", self.name)),
                ..Default::default()
            };
            let source = format!("{}{SOURCE}", self.defines);
            let ptx = nvrtc::compile_ptx_with_opts(source, opts).map_err(|e| {
                err(format!(
                    "NVRTC could not compile the fused softmax kernels ({}): {e:?}",
                    self.name
                ))
            })?;
            cache.insert(self.name.clone(), ptx.to_src());
        }
        let ptx = &cache[&self.name];
        Ok((*dev.get_or_load_custom_func(name, &self.name, ptx)?).clone())
    }
}

/// A launch of `blocks` blocks of 256 threads over `len` elements, one each.
fn elementwise(len: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: (len.div_ceil(256) as u32, 1, 1),
        block_dim: (256, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// The block count: `2 x SMs` (or `blocks`, the op's `cuda_blocks`), at
/// most one per tile of rows. The kernels spread the tiles evenly over the
/// blocks.
fn partition<T: Real>(
    dev: &CudaDevice,
    n: usize,
    blocks: Option<usize>,
) -> candle_core::Result<usize> {
    let target = match blocks {
        Some(0) => {
            return Err(err(
                "fused softmax: cuda_blocks must be positive, got 0".into()
            ));
        }
        Some(b) => b,
        None => {
            let sms = dev
                .cuda_stream()
                .context()
                .attribute(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
                .w()?;
            2 * sms.max(1) as usize
        }
    };
    let tiles = n.div_ceil(WARPS * T::ROWS_PER_WARP);
    Ok(target.min(tiles).max(1))
}

/// Adds the blocks' partials: `out[i] = scale · Σ_b partial[b, i]`, `i < len`.
fn reduce<T: Real>(
    dev: &CudaDevice,
    module: &Module,
    partial: &CudaSlice<T>,
    blocks: usize,
    len: usize,
    scale: f64,
) -> candle_core::Result<CudaSlice<T>> {
    // SAFETY: fused_reduce writes all `len` values.
    let mut out = unsafe { dev.alloc::<T>(len)? };
    let func = module.function(dev, "fused_reduce")?;
    let (blocks_i, len_i) = (blocks as i32, len as i32);
    let stream = dev.cuda_stream();
    let mut b = stream.launch_builder(&func);
    b.arg(partial);
    b.arg(&blocks_i);
    b.arg(&len_i);
    b.arg(&scale);
    b.arg(&mut out);
    // SAFETY: the arguments match fused_reduce's signature; `partial` holds
    // `blocks` rows of NOUT >= len values and `out` holds `len`.
    unsafe { b.launch(elementwise(len)) }.w()?;
    Ok(out)
}

/// One launch of a pass kernel: its specialisation, the row partition and
/// the arguments every pass kernel starts with.
struct Pass<T> {
    module: Module,
    func: CudaFunction,
    /// The weights of `theta`, class-major (`fused_transpose`).
    vt: CudaSlice<T>,
    blocks: usize,
    n: i32,
    xscale: T,
}

impl<T: Real> Pass<T> {
    /// `op`: the op's classes, bias and `u8` scale; `theta`: the parameters
    /// (or direction, for `fused_hvp`), checked against `d x k (+ k)`;
    /// `kernel`: `fused_grad`, `fused_hvp` or `fused_probs`. Launches the
    /// transpose of `theta`'s weights.
    fn new(
        dev: &CudaDevice,
        (x, n, d): (&XView<'_>, usize, usize),
        (k, bias, x_scale): (usize, bool, f64),
        cuda_blocks: Option<usize>,
        theta: &CudaView<'_, T>,
        kernel: &str,
    ) -> candle_core::Result<Self> {
        let what = if kernel == "fused_hvp" {
            "the direction"
        } else {
            "the parameters"
        };
        if k >= THREADS as usize {
            return Err(err(format!(
                "fused softmax: the CUDA kernels handle fewer than {THREADS} classes, got {k}"
            )));
        }
        check_theta_len(theta.len(), d, k, bias, what)?;
        let module = Module::new::<T>(x, d, k, bias);
        let blocks = partition::<T>(dev, n, cuda_blocks)?;
        let func = module.function(dev, kernel)?;
        // SAFETY: fused_transpose writes all d*k values.
        let mut vt = unsafe { dev.alloc::<T>(d * k)? };
        let transpose = module.function(dev, "fused_transpose")?;
        let stream = dev.cuda_stream();
        let mut b = stream.launch_builder(&transpose);
        b.arg(theta);
        b.arg(&mut vt);
        // SAFETY: the arguments match fused_transpose's signature; `theta`
        // holds at least d*k values (checked above) and `vt` d*k.
        unsafe { b.launch(elementwise(d * k)) }.w()?;
        // u8 pixels mean `byte * x_scale`; float inputs are used as they are.
        let xscale = T::from_f64(if matches!(x, XView::U8(_)) {
            x_scale
        } else {
            1.0
        });
        Ok(Self {
            module,
            func,
            vt,
            blocks,
            n: n as i32,
            xscale,
        })
    }

    /// The launch with `x, n, theta, vt, xscale` pushed; the
    /// caller pushes the kernel's remaining arguments.
    fn args<'a>(
        &'a self,
        stream: &'a CudaStream,
        x: &'a XView<'_>,
        theta: &'a CudaView<'_, T>,
    ) -> LaunchArgs<'a> {
        let mut b = stream.launch_builder(&self.func);
        match x {
            XView::U8(v) => b.arg(v),
            XView::F32(v) => b.arg(v),
            XView::F64(v) => b.arg(v),
        };
        b.arg(&self.n);
        b.arg(theta);
        b.arg(&self.vt);
        b.arg(&self.xscale);
        b
    }

    fn config(&self) -> LaunchConfig {
        LaunchConfig {
            grid_dim: (self.blocks as u32, 1, 1),
            block_dim: (THREADS, 1, 1),
            shared_mem_bytes: 0,
        }
    }
}

fn hvp_typed<T: Real>(
    op: &SoftmaxHvpOp,
    dev: &CudaDevice,
    (x, n, d): (&XView<'_>, usize, usize),
    p: &CudaView<'_, T>,
    v: &CudaView<'_, T>,
) -> candle_core::Result<CudaSlice<T>> {
    let shape = (op.classes, op.bias, op.x_scale);
    let pass = Pass::<T>::new(dev, (x, n, d), shape, op.cuda_blocks, v, "fused_hvp")?;
    // SAFETY: every block writes its whole slot.
    let mut partial = unsafe { dev.alloc::<T>(pass.blocks * (v.len() + 1))? };
    let stream = dev.cuda_stream();
    let mut b = pass.args(&stream, x, v);
    b.arg(p);
    b.arg(&mut partial);
    // SAFETY: the arguments match fused_hvp's signature; the shapes were
    // checked against the module's D and K.
    unsafe { b.launch(pass.config()) }.w()?;
    reduce(dev, &pass.module, &partial, pass.blocks, v.len(), op.scale)
}

pub(crate) fn hvp(
    op: &SoftmaxHvpOp,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (x, n, d) = x_view(s1, l1)?;
    let k = op.classes;
    if l2.shape().dims2()? != (n, k) {
        return Err(err(format!(
            "fused softmax hvp: probabilities must be [{n}, {k}], got {:?}",
            l2.shape()
        )));
    }
    let dim = l3.shape().elem_count();
    let slice = match (s2.dtype(), s3.dtype()) {
        (DType::F32, DType::F32) => {
            let out = hvp_typed::<f32>(
                op,
                &dev,
                (&x, n, d),
                &view(s2, l2, "probabilities")?,
                &view(s3, l3, "the direction")?,
            )?;
            CudaStorage::wrap_cuda_slice(out, dev)
        }
        (DType::F64, DType::F64) => {
            let out = hvp_typed::<f64>(
                op,
                &dev,
                (&x, n, d),
                &view(s2, l2, "probabilities")?,
                &view(s3, l3, "the direction")?,
            )?;
            CudaStorage::wrap_cuda_slice(out, dev)
        }
        (a, b) => {
            return Err(err(format!(
                "fused softmax hvp: probabilities and direction must both be f32 or both f64, got {a:?} and {b:?}"
            )));
        }
    };
    Ok((slice, Shape::from(dim)))
}

/// Training targets on the device.
enum TargetView<'a, T> {
    Labels(CudaView<'a, u32>),
    Dense(CudaView<'a, T>),
}

fn grad_typed<T: Real>(
    op: &SoftmaxGradOp,
    dev: &CudaDevice,
    (x, n, d): (&XView<'_>, usize, usize),
    targets: &TargetView<'_, T>,
    w: &CudaView<'_, T>,
) -> candle_core::Result<CudaSlice<T>> {
    let shape = (op.classes, op.bias, op.x_scale);
    let pass = Pass::<T>::new(dev, (x, n, d), shape, op.cuda_blocks, w, "fused_grad")?;
    let nout = w.len() + 1;
    // SAFETY: every block writes its whole slot.
    let mut partial = unsafe { dev.alloc::<T>(pass.blocks * nout)? };
    // The kernel takes both target pointers and reads only the one
    // `has_labels` selects; the other is null.
    let null: u64 = 0;
    let has_labels = i32::from(matches!(targets, TargetView::Labels(_)));
    let stream = dev.cuda_stream();
    let mut b = pass.args(&stream, x, w);
    match targets {
        TargetView::Labels(l) => {
            b.arg(l);
            b.arg(&null);
        }
        TargetView::Dense(y) => {
            b.arg(&null);
            b.arg(y);
        }
    }
    b.arg(&has_labels);
    b.arg(&mut partial);
    // SAFETY: the arguments match fused_grad's signature; the shapes were
    // checked against the module's D and K.
    unsafe { b.launch(pass.config()) }.w()?;
    reduce(dev, &pass.module, &partial, pass.blocks, nout, op.scale)
}

/// Labels are not range-checked on the GPU (that would cost a copy back);
/// a label `>= K` adds nothing to the loss and `-1` to no class. The
/// objectives build labels from one-hot targets, which cannot be out of range.
pub(crate) fn grad(
    op: &SoftmaxGradOp,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
    s3: &CudaStorage,
    l3: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (x, n, d) = x_view(s1, l1)?;
    let k = op.classes;
    let labels = s2.dtype() == DType::U32;
    if labels && l2.shape().dims() != [n] {
        return Err(err(format!(
            "fused softmax grad: labels must be [{n}], got {:?}",
            l2.shape()
        )));
    }
    if !labels && l2.shape().dims2()? != (n, k) {
        return Err(err(format!(
            "fused softmax grad: targets must be [{n}, {k}], got {:?}",
            l2.shape()
        )));
    }
    if !labels && s2.dtype() != s3.dtype() {
        return Err(err(format!(
            "fused softmax grad on CUDA: dense targets must have the parameters' dtype {:?}, got {:?}",
            s3.dtype(),
            s2.dtype()
        )));
    }
    let dim = l3.shape().elem_count();
    let slice = match s3.dtype() {
        DType::F32 => {
            let t = if labels {
                TargetView::Labels(view(s2, l2, "labels")?)
            } else {
                TargetView::Dense(view(s2, l2, "targets")?)
            };
            let out = grad_typed::<f32>(op, &dev, (&x, n, d), &t, &view(s3, l3, "parameters")?)?;
            CudaStorage::wrap_cuda_slice(out, dev)
        }
        DType::F64 => {
            let t = if labels {
                TargetView::Labels(view(s2, l2, "labels")?)
            } else {
                TargetView::Dense(view(s2, l2, "targets")?)
            };
            let out = grad_typed::<f64>(op, &dev, (&x, n, d), &t, &view(s3, l3, "parameters")?)?;
            CudaStorage::wrap_cuda_slice(out, dev)
        }
        other => {
            return Err(err(format!(
                "fused softmax grad: parameters of dtype {other:?}"
            )));
        }
    };
    Ok((slice, Shape::from(dim + 1)))
}

fn probs_typed<T: Real>(
    op: &SoftmaxProbsOp,
    dev: &CudaDevice,
    (x, n, d): (&XView<'_>, usize, usize),
    w: &CudaView<'_, T>,
) -> candle_core::Result<CudaSlice<T>> {
    let shape = (op.classes, op.bias, op.x_scale);
    let pass = Pass::<T>::new(dev, (x, n, d), shape, op.cuda_blocks, w, "fused_probs")?;
    // SAFETY: fused_probs writes all n*K probabilities.
    let mut out = unsafe { dev.alloc::<T>(n * op.classes)? };
    let stream = dev.cuda_stream();
    let mut b = pass.args(&stream, x, w);
    b.arg(&mut out);
    // SAFETY: the arguments match fused_probs's signature; `out` holds n*K.
    unsafe { b.launch(pass.config()) }.w()?;
    Ok(out)
}

pub(crate) fn probs(
    op: &SoftmaxProbsOp,
    s1: &CudaStorage,
    l1: &Layout,
    s2: &CudaStorage,
    l2: &Layout,
) -> candle_core::Result<(CudaStorage, Shape)> {
    let dev = s1.device().clone();
    let (x, n, d) = x_view(s1, l1)?;
    let k = op.classes;
    let slice = match s2.dtype() {
        DType::F32 => {
            let out = probs_typed::<f32>(op, &dev, (&x, n, d), &view(s2, l2, "parameters")?)?;
            CudaStorage::wrap_cuda_slice(out, dev)
        }
        DType::F64 => {
            let out = probs_typed::<f64>(op, &dev, (&x, n, d), &view(s2, l2, "parameters")?)?;
            CudaStorage::wrap_cuda_slice(out, dev)
        }
        other => {
            return Err(err(format!(
                "fused softmax probabilities: parameters of dtype {other:?}"
            )));
        }
    };
    Ok((slice, Shape::from((n, k))))
}
