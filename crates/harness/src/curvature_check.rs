//! gradcheck and gradgradcheck for hessfree (`cargo xtask check-curvature`).
//!
//! At a random point of each model and along random directions, every
//! product a solver relies on is compared with an independent route:
//!
//! - the gradient with central differences of the loss;
//! - the exact Hessian product with central differences of the gradient, and
//!   with a dense matrix (the closed-form Hessian for softmax regression; for
//!   the MLP, whose Hessian is too big to form, 64 of its columns against
//!   finite-difference columns);
//! - symmetry, `|u·Hv − v·Hu| / (|u|·|Hv|)`, for both curvature operators;
//! - the Gauss-Newton product with a dense `Jᵀ H_L J` (for the MLP on a
//!   64 x 64 block, `J` restricted to those columns by finite differences of
//!   the logits);
//! - the closed forms and the R-operator with candle's double backward;
//! - K-FAC: exact on one case, Monte-Carlo factors converging like `1/√S`,
//!   and its damped inverse.
//!
//! Finite differences run in f64 only. The f32 rows compare the f32 products
//! with the f64 ones at the same point instead: a finite difference in f32
//! would measure rounding, not the code.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Result, bail, ensure};
use candle_core::{DType, Device, Tensor};
use hessfree_data::{MNIST_CLASSES, load_dir, resolve_data_dir, subsample_indices};
use hessfree_model::dense::{assemble_softmax_hessian, tensor_to_mat};
use hessfree_model::linop::vec as fv;
use hessfree_model::{
    Activation, AutodiffObjective, Batches, CurvatureKind, FisherTargets, Init, LinOp, Loss,
    MlpObjective, Model, ModelSpec, Objective, ParamKind, Penalty, SigmoidCrossEntropy,
    SoftmaxCrossEntropy, SoftmaxObjective, SquaredError, objective_for,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Central-difference steps along unit directions, for the loss (which is
/// smooth enough that rounding, not truncation, limits a smaller step) and
/// for the gradient.
const FD_STEP_LOSS: f64 = 1e-4;
const FD_STEP: f64 = 1e-5;
/// Central-difference step for the logits (the MLP's Jacobian columns).
const FD_STEP_LOGITS: f64 = 1e-5;
/// Random directions for the gradient check.
const GRAD_DIRECTIONS: u64 = 8;
/// Coordinates in the MLP's dense sub-blocks.
const BLOCK_COLUMNS: usize = 64;
/// Rows per chunk of the batch (MNIST, and --quick), so every check also
/// covers the sum over chunks.
const CHUNK_ROWS: usize = 100;
const QUICK_CHUNK_ROWS: usize = 10;

/// Relative tolerance of comparisons between two routes (finite differences,
/// dense matrices, double backward, or f32 against f64).
const TOL_ROUTE_F64: f64 = 1e-6;
const TOL_ROUTE_F32: f64 = 1e-3;
/// Symmetry holds up to rounding only, so it gets a tighter bound.
const TOL_SYM_F64: f64 = 1e-10;
const TOL_SYM_F32: f64 = 1e-5;

/// What to check.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    /// Directory of the IDX files (`None`: the default search).
    pub data_dir: Option<PathBuf>,
    /// Precisions to check: f64 against finite differences and dense
    /// matrices, f32 against the f64 products at the same point.
    pub dtypes: Vec<DType>,
    /// Training samples in the batch [default: 256, or 32 with `quick`].
    pub batch: Option<usize>,
    /// Seed of the batch, the point and the directions.
    pub seed: u64,
    /// A small synthetic batch of 14x14 images instead of MNIST: no data
    /// files needed, done in seconds.
    pub quick: bool,
}

/// Runs every check, prints the table, and fails if any check exceeded
/// its tolerance.
pub fn run(args: &CheckOptions) -> Result<()> {
    let problem = if args.quick {
        Problem::synthetic(args.batch.unwrap_or(32), 14, 14, args.seed)?
    } else {
        Problem::mnist(args)?
    };
    let cases = cases(&problem)?;

    print_header(&problem, args);
    let mut rows = Vec::new();
    for case in &cases {
        let w = point(case, args.seed)?;
        for dtype in args.dtypes.iter().copied() {
            let start = Instant::now();
            let new = match dtype {
                DType::F64 => check_f64(case, &problem, &w, args.seed)?,
                _ => check_f32(case, &problem, &w, args.seed)?,
            };
            tracing::info!(
                "{} ({}): {} checks in {:.1} s",
                case.name,
                dtype_name(dtype),
                new.len(),
                start.elapsed().as_secs_f64()
            );
            rows.extend(new);
        }
    }
    print!("{}", render_table(&rows));
    println!();
    print_notes();

    let failed = rows.iter().filter(|r| !r.ok()).count();
    println!();
    println!(
        "{} of {} checks within tolerance",
        rows.len() - failed,
        rows.len()
    );
    if failed > 0 {
        bail!("{failed} checks exceeded tolerance");
    }
    Ok(())
}

/// The batch, in both precisions, and where it came from.
struct Problem {
    x64: Tensor,
    y64: Tensor,
    x32: Tensor,
    y32: Tensor,
    image_rows: usize,
    image_cols: usize,
    chunk_rows: usize,
    source: String,
}

impl Problem {
    fn mnist(args: &CheckOptions) -> Result<Self> {
        let n = args.batch.unwrap_or(256);
        ensure!(n >= 1, "--batch must be at least 1, got {n}");
        let dir = resolve_data_dir(args.data_dir.as_deref())?;
        let splits = load_dir(&dir.path, MNIST_CLASSES)?;
        let train = &splits.train;
        ensure!(
            n <= train.len(),
            "--batch {n} is larger than the training set ({} samples in {})",
            train.len(),
            dir.path.display()
        );
        let indices = subsample_indices(train.len(), n, args.seed)?;
        let batch = train.select(&indices);
        let t64 = batch.to_tensors(&Device::Cpu, DType::F64)?;
        let t32 = batch.to_tensors(&Device::Cpu, DType::F32)?;
        Ok(Self {
            x64: t64.images,
            y64: t64.one_hot,
            x32: t32.images,
            y32: t32.one_hot,
            image_rows: batch.rows,
            image_cols: batch.cols,
            chunk_rows: CHUNK_ROWS,
            source: format!(
                "MNIST train, {n} random samples (seed {}) of {}, from {} ({})",
                args.seed,
                train.len(),
                dir.path.display(),
                dir.source
            ),
        })
    }

    /// Pixel-like rows: a dead border that is zero in every image (as MNIST
    /// has), elsewhere 60% zeros and the rest uniform in (0, 1].
    fn synthetic(n: usize, rows: usize, cols: usize, seed: u64) -> Result<Self> {
        ensure!(n >= 1, "--batch must be at least 1, got {n}");
        let classes = usize::from(MNIST_CLASSES);
        let d = rows * cols;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5EED_DA7A);
        let mut x = vec![0f64; n * d];
        for i in 0..n {
            for r in 2..rows - 2 {
                for c in 2..cols - 2 {
                    if rng.random::<f64>() < 0.4 {
                        x[i * d + r * cols + c] = 1.0 - rng.random::<f64>();
                    }
                }
            }
        }
        let mut y = vec![0f64; n * classes];
        for i in 0..n {
            y[i * classes + rng.random_range(0..classes)] = 1.0;
        }
        let x64 = Tensor::from_vec(x, (n, d), &Device::Cpu)?;
        let y64 = Tensor::from_vec(y, (n, classes), &Device::Cpu)?;
        Ok(Self {
            x32: x64.to_dtype(DType::F32)?,
            y32: y64.to_dtype(DType::F32)?,
            x64,
            y64,
            image_rows: rows,
            image_cols: cols,
            chunk_rows: QUICK_CHUNK_ROWS,
            source: format!(
                "synthetic (--quick), {n} images of {rows}x{cols} with a dead 2-pixel border, seed {seed}"
            ),
        })
    }

    fn inputs(&self) -> usize {
        self.image_rows * self.image_cols
    }

    /// The batch in `dtype`, with labels or (for an autoencoder's loss)
    /// the inputs as targets.
    fn batches(&self, dtype: DType, loss: CaseLoss) -> Result<Batches> {
        let (x, y) = match dtype {
            DType::F64 => (&self.x64, &self.y64),
            _ => (&self.x32, &self.y32),
        };
        Ok(if loss.reconstructs() {
            Batches::reconstruction(x, self.chunk_rows)?
        } else {
            Batches::new(x, y, self.chunk_rows)?
        })
    }
}

/// One model with its penalties and the distribution of its random point.
struct Case {
    name: String,
    model: Model,
    loss: CaseLoss,
    penalties: Vec<Penalty>,
    init: Init,
}

/// The losses checked, each with its output Hessian `H_ℓ` written out here
/// in plain f64 (not taken from the model crate), so that the Gauss-Newton
/// block check is an independent route.
#[derive(Clone, Copy, Debug, PartialEq)]
enum CaseLoss {
    SoftmaxCrossEntropy,
    /// Targets in [0, 1]: one-hot labels, or the inputs of an autoencoder.
    SigmoidCrossEntropy {
        reconstruct: bool,
    },
    SquaredError,
}

impl CaseLoss {
    fn loss(self) -> Arc<dyn Loss> {
        match self {
            Self::SoftmaxCrossEntropy => Arc::new(SoftmaxCrossEntropy),
            Self::SigmoidCrossEntropy { .. } => Arc::new(SigmoidCrossEntropy),
            Self::SquaredError => Arc::new(SquaredError),
        }
    }

    /// Whether the targets are the inputs.
    fn reconstructs(self) -> bool {
        matches!(self, Self::SigmoidCrossEntropy { reconstruct: true })
    }

    /// `H_ℓ(z) u` for one row of outputs `z`.
    fn output_hessian(self, z: &[f64], u: &[f64]) -> Vec<f64> {
        match self {
            Self::SoftmaxCrossEntropy => {
                // (diag(p) − p pᵀ) u = p ⊙ (u − p·u)
                let max = z.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = z.iter().map(|x| (x - max).exp()).collect();
                let total: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / total).collect();
                let pu: f64 = p.iter().zip(u).map(|(a, b)| a * b).sum();
                p.iter().zip(u).map(|(pc, uc)| pc * (uc - pu)).collect()
            }
            Self::SigmoidCrossEntropy { .. } => z
                .iter()
                .zip(u)
                .map(|(zc, uc)| {
                    let s = 1.0 / (1.0 + (-zc).exp());
                    s * (1.0 - s) * uc
                })
                .collect(),
            Self::SquaredError => u.to_vec(),
        }
    }
}

fn cases(problem: &Problem) -> Result<Vec<Case>> {
    let d = problem.inputs();
    let k = usize::from(MNIST_CLASSES);
    let normal = Init::TruncatedNormal { std: 0.1 };
    let softmax = |bias| Model::new(ModelSpec::Softmax { bias }, d, k);
    let laplacian = Penalty::Laplacian {
        eps: 1e-3,
        rows: problem.image_rows,
        cols: problem.image_cols,
    };
    let hidden = 32;
    let mlp = |act| Model::new(ModelSpec::mlp(&[hidden], act), d, k);
    let code = 8;
    let autoencoder = Model::new(
        ModelSpec::Autoencoder {
            encoder: vec![2 * code, code],
        },
        d,
        d,
    )?;
    Ok(vec![
        Case {
            name: "softmax".into(),
            model: softmax(false)?,
            loss: CaseLoss::SoftmaxCrossEntropy,
            penalties: vec![],
            init: normal,
        },
        Case {
            name: "softmax + L2(1e-2)".into(),
            model: softmax(false)?,
            loss: CaseLoss::SoftmaxCrossEntropy,
            penalties: vec![Penalty::L2 { lam: 1e-2 }],
            init: normal,
        },
        Case {
            name: format!(
                "softmax + Laplacian(1e-3, {}x{})",
                problem.image_rows, problem.image_cols
            ),
            model: softmax(false)?,
            loss: CaseLoss::SoftmaxCrossEntropy,
            penalties: vec![laplacian],
            init: normal,
        },
        Case {
            name: "softmax + bias".into(),
            model: softmax(true)?,
            loss: CaseLoss::SoftmaxCrossEntropy,
            penalties: vec![],
            init: normal,
        },
        Case {
            name: format!("MLP {d}-{hidden}-{k} tanh"),
            model: mlp(Activation::Tanh)?,
            loss: CaseLoss::SoftmaxCrossEntropy,
            penalties: vec![],
            init: Init::Glorot,
        },
        Case {
            name: format!("MLP {d}-{hidden}-{k} logistic, sigmoid CE"),
            model: mlp(Activation::Logistic)?,
            loss: CaseLoss::SigmoidCrossEntropy { reconstruct: false },
            penalties: vec![],
            init: Init::Glorot,
        },
        Case {
            name: format!("MLP {d}-{hidden}-{k} softplus, squared error"),
            model: mlp(Activation::Softplus)?,
            loss: CaseLoss::SquaredError,
            penalties: vec![],
            init: Init::Glorot,
        },
        Case {
            name: format!(
                "autoencoder {d}-{}-{code}-{}-{d}, sigmoid CE on the inputs",
                2 * code,
                2 * code
            ),
            model: autoencoder,
            loss: CaseLoss::SigmoidCrossEntropy { reconstruct: true },
            penalties: vec![],
            init: Init::Sparse,
        },
    ])
}

/// The random point, in f64: weights from the case's initialisation, biases
/// (which every initialisation sets to zero) uniform in [-0.1, 0.1].
fn point(case: &Case, seed: u64) -> Result<Tensor> {
    let mut w = case
        .model
        .init(case.init, seed, &Device::Cpu, DType::F64)?
        .to_vec1::<f64>()?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xB1A5);
    for spec in case.model.layout().params() {
        if spec.kind == ParamKind::Bias {
            for x in &mut w[spec.range()] {
                *x = 0.1 * rng.random_range(-1.0..1.0);
            }
        }
    }
    let n = w.len();
    Ok(Tensor::from_vec(w, n, &Device::Cpu)?)
}

/// The objective under test: the closed forms for softmax regression, the
/// R-operator for MLPs, each with the case's loss.
fn objective(case: &Case, data: Batches) -> Result<Arc<dyn Objective>> {
    if is_softmax(case) {
        return Ok(objective_for(&case.model, data, case.penalties.clone())?);
    }
    Ok(Arc::new(
        MlpObjective::new(case.model.clone(), data, case.penalties.clone())?
            .with_loss(case.loss.loss()),
    ))
}

/// The same model's logits as a plain candle closure, for double backward.
fn autodiff(case: &Case, data: Batches) -> Result<AutodiffObjective> {
    let model = case.model.clone();
    Ok(AutodiffObjective::new(
        case.model.layout().clone(),
        Arc::new(move |w: &Tensor, x: &Tensor| {
            model
                .logits(w, x)
                .map_err(|e| candle_core::Error::Msg(e.to_string()))
        }),
        data,
        case.penalties.clone(),
    )?
    .with_loss(case.loss.loss()))
}

struct Row {
    model: String,
    check: &'static str,
    dtype: DType,
    error: f64,
    tolerance: f64,
}

impl Row {
    fn ok(&self) -> bool {
        // NaN fails.
        self.error <= self.tolerance
    }
}

/// Collects the rows of one model in one precision.
struct Rows<'a> {
    case: &'a Case,
    dtype: DType,
    rows: Vec<Row>,
}

impl Rows<'_> {
    fn route(&mut self, check: &'static str, error: f64) {
        let tolerance = match self.dtype {
            DType::F64 => TOL_ROUTE_F64,
            _ => TOL_ROUTE_F32,
        };
        self.push(check, error, tolerance);
    }

    fn symmetry(&mut self, check: &'static str, error: f64) {
        let tolerance = match self.dtype {
            DType::F64 => TOL_SYM_F64,
            _ => TOL_SYM_F32,
        };
        self.push(check, error, tolerance);
    }

    fn push(&mut self, check: &'static str, error: f64, tolerance: f64) {
        self.rows.push(Row {
            model: self.case.name.clone(),
            check,
            dtype: self.dtype,
            error,
            tolerance,
        });
    }
}

fn is_softmax(case: &Case) -> bool {
    matches!(case.model.spec(), ModelSpec::Softmax { .. })
}

fn check_f64(case: &Case, problem: &Problem, w: &Tensor, seed: u64) -> Result<Vec<Row>> {
    let data = problem.batches(DType::F64, case.loss)?;
    let obj = objective(case, data.clone())?;
    let auto = autodiff(case, data.clone())?;
    let dim = obj.dim();
    let mut out = Rows {
        case,
        dtype: DType::F64,
        rows: Vec::new(),
    };

    // The gradient against central differences of the loss, along several
    // directions at once: one direction alone is nearly orthogonal to the
    // gradient in thousands of dimensions, which makes its relative error
    // hostage to a tiny g·v.
    let (_, g) = obj.loss_and_grad(w)?;
    let (mut analytic, mut fd) = (Vec::new(), Vec::new());
    for s in 0..GRAD_DIRECTIONS {
        let v = unit_vector(dim, seed.wrapping_add(100 + s))?;
        let plus = obj.loss(&fv::axpy(w, FD_STEP_LOSS, &v)?)?;
        let minus = obj.loss(&fv::axpy(w, -FD_STEP_LOSS, &v)?)?;
        fd.push((plus - minus) / (2.0 * FD_STEP_LOSS));
        analytic.push(fv::dot(&g, &v)?);
    }
    let diff: f64 = analytic.iter().zip(&fd).map(|(a, b)| (a - b).powi(2)).sum();
    let norm: f64 = fd.iter().map(|b| b * b).sum();
    out.route("gradient vs FD of loss", (diff / norm).sqrt());

    let hess = obj.curvature(w, CurvatureKind::Hessian)?;
    let ggn = obj.curvature(w, CurvatureKind::GaussNewton)?;
    let v = unit_vector(dim, seed.wrapping_add(200))?;
    let u = unit_vector(dim, seed.wrapping_add(201))?;
    let hv = hess.apply(&v)?;
    let gv = ggn.apply(&v)?;
    out.route(
        "Hv vs FD of gradient",
        rel(&hv, &fd_hvp(obj.as_ref(), w, &v)?)?,
    );

    if is_softmax(case) {
        // The closed-form dense Hessian Σ_i A_i ⊗ x_i x_iᵀ / n (+ the penalty's
        // Q) is exactly Jᵀ H_L J + Q, since the logits are linear in w.
        let sobj = SoftmaxObjective::new(case.model.clone(), data, case.penalties.clone())?;
        let dense = assemble_softmax_hessian(&sobj, w)?;
        let hv_dense = &dense * &tensor_to_mat(&v.reshape((dim, 1))?)?;
        drop(dense);
        let hv_dense: Vec<f64> = (0..dim).map(|i| hv_dense[(i, 0)]).collect();
        let hv_dense = Tensor::from_vec(hv_dense, dim, &Device::Cpu)?;
        out.route("Hv vs dense H v", rel(&hv, &hv_dense)?);
        out.route("GGNv vs dense JᵀH_LJ v", rel(&gv, &hv_dense)?);
    } else {
        let cols = block_columns(&case.model, seed)?;
        out.route(
            "H[:,S] vs FD columns",
            hessian_columns_error(obj.as_ref(), hess.as_ref(), w, &cols)?,
        );
        out.route(
            "GGN[S,S] vs FD-J JᵀH_LJ",
            ggn_block_error(case, &problem.x64, ggn.as_ref(), w, &cols, &|_, _| true)?,
        );
        kfac_checks(case, problem, w, &cols, seed, &mut out)?;
    }

    out.symmetry("symmetry of H", symmetry(hess.as_ref(), &u, &v)?);
    out.symmetry("symmetry of GGN", symmetry(ggn.as_ref(), &u, &v)?);

    let hv_auto = auto.curvature(w, CurvatureKind::Hessian)?.apply(&v)?;
    out.route("Hv vs double backward", rel(&hv, &hv_auto)?);
    let gv_auto = auto.curvature(w, CurvatureKind::GaussNewton)?.apply(&v)?;
    out.route("GGNv vs double backward", rel(&gv, &gv_auto)?);
    Ok(out.rows)
}

fn check_f32(case: &Case, problem: &Problem, w64: &Tensor, seed: u64) -> Result<Vec<Row>> {
    let o64 = objective(case, problem.batches(DType::F64, case.loss)?)?;
    let data = problem.batches(DType::F32, case.loss)?;
    let o32 = objective(case, data.clone())?;
    let auto = autodiff(case, data)?;
    let dim = o64.dim();
    let w32 = w64.to_dtype(DType::F32)?;
    let v64 = unit_vector(dim, seed.wrapping_add(200))?;
    let u64_ = unit_vector(dim, seed.wrapping_add(201))?;
    let v32 = v64.to_dtype(DType::F32)?;
    let u32_ = u64_.to_dtype(DType::F32)?;
    let mut out = Rows {
        case,
        dtype: DType::F32,
        rows: Vec::new(),
    };

    let (l64, g64) = o64.loss_and_grad(w64)?;
    let (l32, g32) = o32.loss_and_grad(&w32)?;
    out.route("loss vs f64", (l32 - l64).abs() / l64.abs());
    out.route("gradient vs f64", rel(&g32, &g64)?);

    let h32 = o32.curvature(&w32, CurvatureKind::Hessian)?;
    let n32 = o32.curvature(&w32, CurvatureKind::GaussNewton)?;
    let hv32 = h32.apply(&v32)?;
    let gv32 = n32.apply(&v32)?;
    out.route("Hv vs f64 Hv", rel(&hv32, &o64.hvp(w64, &v64)?)?);
    out.route("GGNv vs f64 GGNv", rel(&gv32, &o64.ggn_vp(w64, &v64)?)?);

    out.symmetry("symmetry of H", symmetry(h32.as_ref(), &u32_, &v32)?);
    out.symmetry("symmetry of GGN", symmetry(n32.as_ref(), &u32_, &v32)?);

    let hv_auto = auto.curvature(&w32, CurvatureKind::Hessian)?.apply(&v32)?;
    out.route("Hv vs double backward", rel(&hv32, &hv_auto)?);
    let gv_auto = auto
        .curvature(&w32, CurvatureKind::GaussNewton)?
        .apply(&v32)?;
    out.route("GGNv vs double backward", rel(&gv32, &gv_auto)?);
    Ok(out.rows)
}

/// Samples per case, and seeds at each, of the Monte-Carlo convergence check.
const MC_SAMPLES: [usize; 3] = [4, 16, 64];
const MC_SEEDS: u64 = 4;

/// K-FAC's three checks (f64, MLPs and autoencoders):
/// - on the batch's first case alone, the factors from the exact
///   expectation are the Gauss-Newton matrix's diagonal blocks, compared on
///   the within-layer pairs of `cols` against the same finite-difference
///   route `J_Sᵀ H_L J_S` as the Gauss-Newton product (not against `A ⊗ G`);
/// - Monte-Carlo `G` factors approach the exact ones like `1/√S`: the
///   least-squares slope of log error against log S, over [`MC_SAMPLES`],
///   is within 0.2 of −½;
/// - the damped inverse undoes the damped operator,
///   `‖K⁻¹ K v − v‖ / ‖v‖ ≤ 10 κ ε` with `κ` bounded by the factors'
///   eigenvalues.
fn kfac_checks(
    case: &Case,
    problem: &Problem,
    w: &Tensor,
    cols: &[usize],
    seed: u64,
    out: &mut Rows,
) -> Result<()> {
    let mlp = |data: Batches| -> Result<MlpObjective> {
        Ok(MlpObjective::new(case.model.clone(), data, vec![])?.with_loss(case.loss.loss()))
    };
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x4FAC);
    let data = problem.batches(DType::F64, case.loss)?;
    let one = mlp(data.select(&[0])?)?;
    let single = one.kronecker_factors(w, FisherTargets::Exact, &mut rng)?;
    // The layer of each coordinate, from the blocks' sizes.
    let mut ends = Vec::new();
    let mut end = 0;
    for l in &single.layers {
        end += l.a.nrows() * l.g.nrows();
        ends.push(end);
    }
    let layer = |i: usize| ends.iter().position(|&e| i < e);
    let x0 = problem.x64.narrow(0, 0, 1)?;
    out.route(
        "K-FAC (1 case) vs FD-J JᵀH_LJ",
        ggn_block_error(
            case,
            &x0,
            &single.operator(&Device::Cpu, DType::F64)?,
            w,
            cols,
            &|i, j| layer(i) == layer(j),
        )?,
    );

    let obj = mlp(data)?;
    let exact = obj.kronecker_factors(w, FisherTargets::Exact, &mut rng)?;
    let mut points = Vec::new();
    for samples in MC_SAMPLES {
        let mut sq = 0.0;
        for s in 0..MC_SEEDS {
            let mut r = ChaCha8Rng::seed_from_u64(seed.wrapping_add(300 + s));
            let mc = obj.kronecker_factors(w, FisherTargets::MonteCarlo { samples }, &mut r)?;
            let (mut num, mut den) = (0.0, 0.0);
            for (m, e) in mc.layers.iter().zip(&exact.layers) {
                num += (&m.g - &e.g).squared_norm_l2();
                den += e.g.squared_norm_l2();
            }
            sq += num / den;
        }
        points.push(((samples as f64).ln(), (sq / MC_SEEDS as f64).sqrt().ln()));
    }
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / points.len() as f64;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / points.len() as f64;
    let slope = points
        .iter()
        .map(|p| (p.0 - mean_x) * (p.1 - mean_y))
        .sum::<f64>()
        / points.iter().map(|p| (p.0 - mean_x).powi(2)).sum::<f64>();
    out.push("K-FAC MC error slope vs −½", (slope + 0.5).abs(), 0.2);

    let gamma = 1e-3;
    let eig = exact.decompose()?;
    let damped = eig.damped(gamma, &Device::Cpu, DType::F64)?;
    let inverse = eig.inverse(gamma, &Device::Cpu, DType::F64)?;
    let v = unit_vector(obj.dim(), seed.wrapping_add(400))?;
    let err = rel(&inverse.apply(&damped.apply(&v)?)?, &v)?;
    out.push(
        "K-FAC inverse·damped v vs v",
        err,
        10.0 * eig.condition_number(gamma) * f64::EPSILON,
    );
    Ok(())
}

/// `‖a − b‖ / ‖b‖`, in f64.
fn rel(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F64)?;
    let b = b.to_dtype(DType::F64)?;
    Ok(fv::norm(&(&a - &b)?)? / fv::norm(&b)?)
}

/// `|u·Av − v·Au| / (|u|·|Av|)`.
fn symmetry(op: &dyn hessfree_model::LinOp, u: &Tensor, v: &Tensor) -> Result<f64> {
    let av = op.apply(v)?;
    let au = op.apply(u)?;
    Ok((fv::dot(u, &av)? - fv::dot(v, &au)?).abs() / (fv::norm(u)? * fv::norm(&av)?))
}

/// Central differences of the gradient along `v`: `(g(w+hv) − g(w−hv)) / 2h`.
fn fd_hvp(obj: &dyn Objective, w: &Tensor, v: &Tensor) -> Result<Tensor> {
    let (_, gp) = obj.loss_and_grad(&fv::axpy(w, FD_STEP, v)?)?;
    let (_, gm) = obj.loss_and_grad(&fv::axpy(w, -FD_STEP, v)?)?;
    Ok(((gp - gm)? / (2.0 * FD_STEP))?)
}

/// `BLOCK_COLUMNS` distinct coordinates of the flat vector: up to 16 from
/// every parameter block (so that small blocks such as the biases are
/// covered), the rest from the first layer's weights; sorted.
fn block_columns(model: &Model, seed: u64) -> Result<Vec<usize>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC01_0055);
    let mut chosen = Vec::new();
    let params = model.layout().params();
    let per_block = 16;
    for spec in params {
        chosen.extend(sample_range(
            &mut rng,
            spec.range(),
            per_block.min(spec.len()),
        ));
    }
    let first = model.layout().spec("layer0.weight")?.range();
    let extra: Vec<usize> = sample_range(&mut rng, first.clone(), first.len())
        .into_iter()
        .filter(|j| !chosen.contains(j))
        .take(BLOCK_COLUMNS.saturating_sub(chosen.len()))
        .collect();
    chosen.extend(extra);
    chosen.sort_unstable();
    Ok(chosen)
}

/// `count` distinct indices of `range`, in random order.
fn sample_range(rng: &mut ChaCha8Rng, range: std::ops::Range<usize>, count: usize) -> Vec<usize> {
    let count = count.min(range.len());
    rand::seq::index::sample(rng, range.len(), count)
        .into_iter()
        .map(|i| range.start + i)
        .collect()
}

fn unit(dim: usize, j: usize) -> Result<Tensor> {
    let mut e = vec![0f64; dim];
    e[j] = 1.0;
    Ok(Tensor::from_vec(e, dim, &Device::Cpu)?)
}

/// `‖H[:,S] − FD[:,S]‖_F / ‖FD[:,S]‖_F`, each column `H e_j` from the
/// operator and from central differences of the gradient.
fn hessian_columns_error(
    obj: &dyn Objective,
    op: &dyn hessfree_model::LinOp,
    w: &Tensor,
    cols: &[usize],
) -> Result<f64> {
    let (mut diff, mut norm) = (0.0, 0.0);
    for &j in cols {
        let e = unit(obj.dim(), j)?;
        let fd = fd_hvp(obj, w, &e)?;
        diff += fv::norm(&(op.apply(&e)? - &fd)?)?.powi(2);
        norm += fv::norm(&fd)?.powi(2);
    }
    Ok((diff / norm).sqrt())
}

/// The `S x S` block of the Gauss-Newton matrix from the operator against
/// `J_Sᵀ H_L J_S`, with `J_S` (the logits' Jacobian restricted to the columns
/// `S`) by central differences and `H_L` the block-diagonal output Hessian
/// of the case's loss, `H_ℓ(z_i) / n`.
/// Only the pairs `(i, j)` that `pair` keeps are compared (K-FAC's
/// operator is block-diagonal over the layers).
fn ggn_block_error(
    case: &Case,
    x: &Tensor,
    op: &dyn hessfree_model::LinOp,
    w: &Tensor,
    cols: &[usize],
    pair: &dyn Fn(usize, usize) -> bool,
) -> Result<f64> {
    let (n, _) = x.dims2()?;
    let k = case.model.classes();
    let dim = case.model.layout().len();
    let logits = case.model.logits(w, x)?.flatten_all()?.to_vec1::<f64>()?;
    // jac[a] = d logits / d w_{S[a]}, flattened [n * k].
    let mut jac = Vec::with_capacity(cols.len());
    for &j in cols {
        let e = unit(dim, j)?;
        let zp = case
            .model
            .logits(&fv::axpy(w, FD_STEP_LOGITS, &e)?, x)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let zm = case
            .model
            .logits(&fv::axpy(w, -FD_STEP_LOGITS, &e)?, x)?
            .flatten_all()?
            .to_vec1::<f64>()?;
        let col: Vec<f64> = zp
            .iter()
            .zip(&zm)
            .map(|(a, b)| (a - b) / (2.0 * FD_STEP_LOGITS))
            .collect();
        jac.push(col);
    }
    // H_L J_S, sample by sample.
    let hl_jac: Vec<Vec<f64>> = jac
        .iter()
        .map(|col| {
            let mut out = Vec::with_capacity(n * k);
            for i in 0..n {
                let row = i * k..(i + 1) * k;
                let h = case.loss.output_hessian(&logits[row.clone()], &col[row]);
                out.extend(h.into_iter().map(|x| x / n as f64));
            }
            out
        })
        .collect();
    let (mut diff, mut norm) = (0.0, 0.0);
    for (b, &j) in cols.iter().enumerate() {
        let col = op.apply(&unit(dim, j)?)?.to_vec1::<f64>()?;
        for (a, &i) in cols.iter().enumerate() {
            if !pair(i, j) {
                continue;
            }
            let dense: f64 = jac[a].iter().zip(&hl_jac[b]).map(|(x, y)| x * y).sum();
            diff += (col[i] - dense).powi(2);
            norm += dense.powi(2);
        }
    }
    Ok((diff / norm).sqrt())
}

/// A random direction of unit length (uniform entries, normalised), in f64.
fn unit_vector(dim: usize, seed: u64) -> Result<Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f64> = (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect();
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let v: Vec<f64> = v.into_iter().map(|x| x / norm).collect();
    Ok(Tensor::from_vec(v, dim, &Device::Cpu)?)
}

fn dtype_name(dtype: DType) -> &'static str {
    match dtype {
        DType::F64 => "f64",
        DType::F32 => "f32",
        _ => "?",
    }
}

fn print_header(problem: &Problem, args: &CheckOptions) {
    println!("check-curvature: gradients and curvature products against independent routes");
    println!("data:       {}", problem.source);
    let rows = problem.x64.dim(0).unwrap_or(0);
    println!(
        "            summed in {} chunks of up to {} rows",
        rows.div_ceil(problem.chunk_rows),
        problem.chunk_rows
    );
    println!(
        "point:      softmax weights truncated normal(std 0.1), MLP weights Glorot uniform, \
         autoencoder weights Martens' sparse (15 per unit), biases uniform in [-0.1, 0.1]; seed {}",
        args.seed
    );
    println!(
        "directions: random unit vectors (uniform entries, normalised); \
         {GRAD_DIRECTIONS} for the gradient"
    );
    println!(
        "FD:         central differences in f64, steps along unit directions: \
         {FD_STEP_LOSS:e} (loss), {FD_STEP:e} (gradient), {FD_STEP_LOGITS:e} (logits)"
    );
    println!("tolerances (relative):         f64     f32");
    println!("  two routes compared        {TOL_ROUTE_F64:>7.0e} {TOL_ROUTE_F32:>7.0e}");
    println!("  symmetry                   {TOL_SYM_F64:>7.0e} {TOL_SYM_F32:>7.0e}");
    println!("  f32 rows compare f32 products with the f64 products at the same point");
    println!();
}

fn render_table(rows: &[Row]) -> String {
    let header = ["model", "check", "dtype", "rel. error", "tolerance", "ok"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.model.clone(),
                r.check.to_string(),
                dtype_name(r.dtype).to_string(),
                format!("{:.2e}", r.error),
                format!("{:.0e}", r.tolerance),
                if r.ok() { "ok" } else { "FAIL" }.to_string(),
            ]
        })
        .collect();
    let mut width = header.map(|h| h.chars().count());
    for row in &cells {
        for (w, c) in width.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    // Text left-aligned, numbers right-aligned.
    let right = [false, false, false, true, true, false];
    let line = |cols: &[String]| {
        let mut s = String::new();
        for (i, c) in cols.iter().enumerate() {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = width[i] - c.chars().count();
            if right[i] {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            } else {
                s.push_str(c);
                if i + 1 < cols.len() {
                    s.push_str(&" ".repeat(pad));
                }
            }
        }
        s
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(&header.map(String::from)));
    let rule: Vec<String> = width.iter().map(|&w| "-".repeat(w)).collect();
    let _ = writeln!(out, "{}", line(&rule));
    let mut last_model = None;
    for (row, r) in cells.iter().zip(rows) {
        if last_model.is_some_and(|m: &str| m != r.model) {
            let _ = writeln!(out);
        }
        last_model = Some(r.model.as_str());
        let _ = writeln!(out, "{}", line(row));
    }
    out
}

fn print_notes() {
    println!("what each check compares (f64 rows unless noted):");
    for (check, what) in [
        (
            "gradient vs FD of loss",
            "g·v_k against (f(w+hv_k) − f(w−hv_k)) / 2h for 8 directions v_k, as one 8-vector",
        ),
        (
            "Hv vs FD of gradient",
            "exact Hessian product against (g(w+hv) − g(w−hv)) / 2h",
        ),
        (
            "Hv vs dense H v",
            "softmax: against the closed-form dense Hessian Σ_i A_i ⊗ x_i x_iᵀ / n (+ penalty Q) times v",
        ),
        (
            "GGNv vs dense JᵀH_LJ v",
            "softmax: the Gauss-Newton product against the same dense matrix, which is JᵀH_LJ + Q",
        ),
        (
            "H[:,S] vs FD columns",
            "MLP: H e_j for 64 coordinates j in S (16 from each of W1, b1, W2 and all of b2, the rest \
             from W1) against FD columns of the gradient; Frobenius",
        ),
        (
            "GGN[S,S] vs FD-J JᵀH_LJ",
            "MLP: the 64 x 64 block (G e_j)_i, i, j in S, against J_Sᵀ H_L J_S with J_S by FD of the \
             logits and H_L the loss's output Hessian / n, written out in this check (softmax: diag p_i − p_i p_iᵀ; sigmoid: diag σ(1−σ); squared error: I); Frobenius",
        ),
        (
            "K-FAC (1 case) vs FD-J JᵀH_LJ",
            "MLP: A ⊗ G from the exact expectation on the batch's first case alone against J_Sᵀ H_L J_S \
             of that case (as above), on the pairs of S within one layer: K-FAC is exact there",
        ),
        (
            "K-FAC MC error slope vs −½",
            "MLP: |slope + ½| of log ‖G_MC − G‖_F/‖G‖_F against log S, S = 4, 16, 64 draws per \
             case, RMS over 4 seeds; tolerance 0.2 (absolute)",
        ),
        (
            "K-FAC inverse·damped v vs v",
            "MLP: factored Tikhonov damping γ = 1e-3 with π; tolerance 10 κ ε, κ from the factors' \
             eigenvalues",
        ),
        (
            "symmetry of H / GGN",
            "|u·Av − v·Au| / (|u|·|Av|) for random unit u, v",
        ),
        (
            "Hv / GGNv vs double backward",
            "closed form (softmax) or R-operator (MLP) against candle double backward through the \
             model's logits (AutodiffObjective), both in the row's dtype",
        ),
        (
            "... vs f64 (f32 rows)",
            "the f32 loss, gradient and products against the f64 ones at the same point and direction",
        ),
    ] {
        println!("  {check:<30} {what}");
    }
}
