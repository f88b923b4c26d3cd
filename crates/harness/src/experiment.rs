//! One optimisation problem on a data set, ready to run any [`Method`] on:
//! the model, the full-batch training objective, its curvature sample and
//! the test set it is scored on (accuracy for a classifier, reconstruction
//! error for an autoencoder). The harness builds one per run and never
//! touches the model or the data itself.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use hessfree_data::{Dataset, subsample_indices};
use hessfree_model::fused::{SimdLevel, XStorage};
use hessfree_model::{
    Batches, CastObjective, CurvatureKind, Init, KernelChoice, KernelOptions, LossChoice, Model,
    ModelSpec, Objective, Penalty, ShardedObjective, objective_with_loss,
};
use serde::{Deserialize, Serialize};

use hessfree_solvers::{Evaluator, HfProblem, Result, RunOptions, RunOutput, Scores, SolverError};

use crate::method::{Method, run};

/// Everything that defines the problem (not the solver).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProblemSpec {
    pub model: String,
    pub activation: String,
    pub l2: f64,
    pub laplace: f64,
    pub init: String,
    pub curvature: String,
    /// Fraction of the training set the curvature is computed on (1 = all).
    pub hessian_fraction: f64,
    pub seed: u64,
    pub dtype: String,
    /// The dtype of the curvature products inside CG; `None`: `dtype`.
    /// `f32` in an `f64` problem is mixed precision ([`CastObjective`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub curvature_dtype: Option<String>,
    /// Softmax kernel: auto, fused or candle. (What actually ran is each
    /// run's `kernel` in the report; the defaults are left out of the JSON
    /// so that reports written before these options still regenerate.)
    #[serde(default = "auto", skip_serializing_if = "is_auto")]
    pub kernel: String,
    /// How the fused kernel stores `X`: auto, u8 or float.
    #[serde(default = "auto", skip_serializing_if = "is_auto")]
    pub x_storage: String,
    /// The fused CPU kernel's instruction set: auto (the best the CPU has)
    /// or a lower level.
    #[serde(default = "auto", skip_serializing_if = "is_auto")]
    pub simd: String,
    /// Thread blocks of the CUDA kernels; `None`: twice the multiprocessors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_blocks: Option<usize>,
    /// The loss (`--loss`); `None`: the model's natural one (softmax
    /// cross-entropy for classifiers, sigmoid cross-entropy for autoencoders).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss: Option<String>,
}

fn auto() -> String {
    "auto".into()
}

fn is_auto(s: &str) -> bool {
    s == "auto"
}

impl Default for ProblemSpec {
    fn default() -> Self {
        Self {
            model: "softmax".into(),
            activation: "tanh".into(),
            l2: 1e-4,
            laplace: 0.0,
            init: "zero".into(),
            curvature: "hessian".into(),
            hessian_fraction: 1.0,
            seed: 0,
            dtype: "f64".into(),
            curvature_dtype: None,
            kernel: auto(),
            x_storage: auto(),
            simd: auto(),
            cuda_blocks: None,
            loss: None,
        }
    }
}

fn parse_dtype(name: &str, what: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "f64" => Ok(DType::F64),
        other => Err(SolverError::Config(format!(
            "unsupported {what} `{other}`; expected one of: f32, f64"
        ))),
    }
}

/// The parsed form of a [`ProblemSpec`].
#[derive(Clone, Debug)]
pub struct Parsed {
    pub model: ModelSpec,
    pub penalties: Vec<Penalty>,
    pub init: Init,
    pub curvature: CurvatureKind,
    pub dtype: DType,
    pub curvature_dtype: DType,
    pub kernels: KernelOptions,
    pub loss: Option<LossChoice>,
}

impl ProblemSpec {
    /// Checks every field and says what was expected where one is wrong.
    pub fn parse(&self, image_rows: usize, image_cols: usize) -> Result<Parsed> {
        let activation = self.activation.parse()?;
        let model = ModelSpec::parse(&self.model, activation)?;
        let init = self.init.parse()?;
        let curvature = self.curvature.parse()?;
        let loss = self
            .loss
            .as_deref()
            .map(str::parse::<LossChoice>)
            .transpose()?;
        let dtype = parse_dtype(&self.dtype, "dtype")?;
        let curvature_dtype = match &self.curvature_dtype {
            Some(d) => parse_dtype(d, "curvature dtype")?,
            None => dtype,
        };
        let kernels = KernelOptions {
            kernel: self.kernel.parse::<KernelChoice>()?,
            storage: self.x_storage.parse::<XStorage>()?,
            simd: match self.simd.as_str() {
                "auto" => None,
                level => Some(level.parse::<SimdLevel>()?),
            },
            cuda_blocks: self.cuda_blocks,
        };
        if !(self.hessian_fraction > 0.0 && self.hessian_fraction <= 1.0) {
            return Err(SolverError::Config(format!(
                "hessian fraction must be in (0, 1], got {}",
                self.hessian_fraction
            )));
        }
        for (name, v) in [("l2", self.l2), ("laplace", self.laplace)] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(SolverError::Config(format!(
                    "--{name} must be finite and >= 0, got {v}"
                )));
            }
        }
        let mut penalties = Vec::new();
        if self.l2 > 0.0 {
            penalties.push(Penalty::L2 { lam: self.l2 });
        }
        if self.laplace > 0.0 {
            penalties.push(Penalty::Laplacian {
                eps: self.laplace,
                rows: image_rows,
                cols: image_cols,
            });
        }
        Ok(Parsed {
            model,
            penalties,
            init,
            curvature,
            dtype,
            curvature_dtype,
            kernels,
            loss,
        })
    }
}

/// A prepared problem: tensors on the device, objective built.
pub struct Experiment {
    pub spec: ProblemSpec,
    pub parsed: Parsed,
    pub model: Model,
    pub objective: Arc<dyn Objective>,
    /// The objective curvature products come from: `objective` itself, or
    /// the same problem in `curvature_dtype` seen through [`CastObjective`].
    pub curvature_objective: Arc<dyn Objective>,
    pub train_x: Tensor,
    pub train_labels: Tensor,
    pub test_x: Tensor,
    pub test_labels: Tensor,
    pub device: Device,
    /// Where the training rows live when they are split across ranks;
    /// `train_x` then holds only this rank's.
    pub shard: Option<Shard>,
}

/// This rank's place in a data-parallel job: its training rows are
/// `offset..offset + n_r` of `rows` in all.
#[derive(Clone)]
pub struct Shard {
    pub ranks: Arc<dyn hessfree_model::Collective>,
    pub offset: usize,
    pub rows: usize,
    /// Check at every gradient that all ranks hold the same parameters.
    pub check_params: bool,
}

impl Shard {
    /// `Σ_r (n_r / n) · value_r`: a mean over this rank's rows made the
    /// mean over all rows.
    fn mean(&self, local_rows: usize, value: f64) -> Result<f64> {
        let part = local_rows as f64 / self.rows as f64 * value;
        Ok(self.ranks.sum(&[part])?[0])
    }
}

/// Rows per chunk of every data-set-level product.
const CHUNK_ROWS: usize = 10_000;
/// Rows per chunk when computing accuracies.
const EVAL_CHUNK: usize = 10_000;

/// Refuses a model whose working set cannot fit in the memory this machine
/// has left, before allocating any of it (`--model mlp:99999999999` once
/// died on a failed allocation of 318 TB).
fn check_memory(model: &Model, dtype: DType) -> Result<()> {
    let need = model.working_bytes(CHUNK_ROWS, dtype.size_in_bytes());
    if let Some(have) = hessfree_analysis::memory::available_bytes()
        && need > have
    {
        return Err(SolverError::Config(format!(
            "`{}` ({} parameters) needs at least {need} bytes for its parameters, the \
             solvers' vectors and one chunk of {CHUNK_ROWS} rows of activations, but this \
             machine has {have} bytes available; expected a smaller model",
            model.spec(),
            model.layout().len()
        )));
    }
    Ok(())
}

impl Experiment {
    /// Everything [`Self::prepare`] refuses, checked without allocating:
    /// the spec's fields, the model, its loss and its memory.
    pub fn check(spec: &ProblemSpec, train: &Dataset) -> Result<()> {
        let parsed = spec.parse(train.rows, train.cols)?;
        let model = Model::new(
            parsed.model,
            train.pixels_per_image(),
            train.classes as usize,
        )?;
        model.loss(parsed.loss)?;
        check_memory(&model, parsed.dtype)
    }

    /// Builds the problem `spec` on the data: the model (refused before
    /// any allocation when it cannot fit the memory), its objective and
    /// the tensors on `device`.
    pub fn prepare(
        spec: ProblemSpec,
        train: &Dataset,
        test: &Dataset,
        device: &Device,
    ) -> Result<Self> {
        Self::prepare_shard(spec, train, test, device, None)
    }

    /// [`Self::prepare`] for one rank of a data-parallel job: `train` is
    /// this rank's shard, and the objectives sum over every rank's.
    pub fn prepare_shard(
        spec: ProblemSpec,
        train: &Dataset,
        test: &Dataset,
        device: &Device,
        shard: Option<Shard>,
    ) -> Result<Self> {
        let parsed = spec.parse(train.rows, train.cols)?;
        let model = Model::new(
            parsed.model.clone(),
            train.pixels_per_image(),
            train.classes as usize,
        )?;
        model.loss(parsed.loss)?;
        check_memory(&model, parsed.dtype)?;
        let tr = train.to_tensors(device, parsed.dtype)?;
        let te = test.to_tensors(device, parsed.dtype)?;
        // An autoencoder's targets are its inputs, not the labels.
        let objective_on = |images: &Tensor, one_hot: &Tensor| -> Result<Arc<dyn Objective>> {
            let batches = if model.is_autoencoder() {
                Batches::reconstruction(images, CHUNK_ROWS)?
            } else {
                Batches::new(images, one_hot, CHUNK_ROWS)?
            };
            Ok(objective_with_loss(
                &model,
                batches,
                parsed.penalties.clone(),
                &parsed.kernels,
                parsed.loss,
            )?)
        };
        let across = |local: Arc<dyn Objective>| -> Result<Arc<dyn Objective>> {
            Ok(match &shard {
                Some(s) => Arc::new(ShardedObjective::new(
                    local,
                    s.ranks.clone(),
                    s.offset,
                    s.rows,
                    s.check_params,
                )?),
                None => local,
            })
        };
        let objective = across(objective_on(&tr.images, &tr.one_hot)?)?;
        let curvature_objective = if parsed.curvature_dtype == parsed.dtype {
            objective.clone()
        } else {
            let low = train.to_tensors(device, parsed.curvature_dtype)?;
            across(CastObjective::wrap(
                objective_on(&low.images, &low.one_hot)?,
                parsed.dtype,
            ))?
        };
        Ok(Self {
            spec,
            parsed,
            model,
            objective,
            curvature_objective,
            train_x: tr.images,
            train_labels: tr.labels,
            test_x: te.images,
            test_labels: te.labels,
            device: device.clone(),
            shard,
        })
    }

    pub fn initial_point(&self) -> Result<Tensor> {
        Ok(self.model.init(
            self.parsed.init,
            self.spec.seed,
            &self.device,
            self.parsed.dtype,
        )?)
    }

    /// The problem a method runs on: curvature on a fixed sub-sample where
    /// the method asks for one (dense Newton's `hessian_batch`, or the
    /// `hessian_fraction` of the second-order methods).
    pub fn problem_for(&self, method: &Method) -> Result<HfProblem> {
        let n = self.objective.num_samples();
        let rows = match method {
            Method::DenseNewton(c) => c.hessian_batch.map(|b| b.min(n)),
            Method::NewtonCg(_) | Method::Hf(_) | Method::TrustRegion(_)
                if self.spec.hessian_fraction < 1.0 =>
            {
                Some(((n as f64 * self.spec.hessian_fraction).round() as usize).max(1))
            }
            _ => None,
        };
        let curvature = match rows {
            Some(rows) if rows < n => {
                let idx = subsample_indices(n, rows, self.spec.seed)?;
                self.curvature_objective.subsample(&idx)?
            }
            _ => self.curvature_objective.clone(),
        };
        Ok(HfProblem::new(
            self.objective.clone(),
            curvature,
            self.parsed.curvature,
        ))
    }

    /// A classifier's test accuracy (an error for an autoencoder).
    pub fn test_accuracy(&self, w: &Tensor) -> Result<f64> {
        Ok(self
            .model
            .accuracy(w, &self.test_x, &self.test_labels, EVAL_CHUNK)?)
    }

    /// A classifier's training accuracy (an error for an autoencoder),
    /// over every rank's rows.
    pub fn train_accuracy(&self, w: &Tensor) -> Result<f64> {
        let local = self
            .model
            .accuracy(w, &self.train_x, &self.train_labels, EVAL_CHUNK)?;
        self.over_ranks(local)
    }

    /// A mean over this rank's training rows as the mean over all rows.
    fn over_ranks(&self, local: f64) -> Result<f64> {
        match &self.shard {
            Some(s) => s.mean(self.train_x.dim(0)?, local),
            None => Ok(local),
        }
    }

    /// What the trace records about `w`: the test accuracy of a
    /// classifier; the training and test reconstruction errors of an
    /// autoencoder (a forward pass over both sets).
    pub fn scores(&self, w: &Tensor) -> Result<Scores> {
        if self.model.is_autoencoder() {
            Ok(Scores {
                train_error: Some(self.over_ranks(self.model.reconstruction_error(
                    w,
                    &self.train_x,
                    EVAL_CHUNK,
                )?)?),
                test_error: Some(
                    self.model
                        .reconstruction_error(w, &self.test_x, EVAL_CHUNK)?,
                ),
                ..Scores::default()
            })
        } else {
            Ok(Scores {
                test_accuracy: Some(self.test_accuracy(w)?),
                ..Scores::default()
            })
        }
    }

    /// An evaluator for the trace ([`Self::scores`] every few records).
    pub fn evaluator(self: &Arc<Self>) -> Evaluator {
        let me = self.clone();
        Arc::new(move |w: &Tensor| me.scores(w))
    }

    /// Runs one method from the problem's initial point.
    pub fn run(self: &Arc<Self>, method: &Method, mut opts: RunOptions) -> Result<RunOutput> {
        if opts.scores.is_none() {
            opts.scores = Some(self.evaluator());
        }
        run(
            method,
            self.problem_for(method)?,
            self.initial_point()?,
            opts,
        )
    }
}
