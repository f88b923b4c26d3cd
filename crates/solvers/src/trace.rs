//! What every solver reports per iteration, and the shared cost counters.

use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

/// One row of a convergence trace. Fields a solver does not have are `None`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TraceRecord {
    /// Outer iteration: 0 for the starting point, counting on across a resume.
    pub iter: u64,
    /// Solver time since the start; trace evaluation is not charged.
    pub wall_seconds: f64,
    /// Full-batch training objective, penalties included.
    pub objective: f64,
    /// `‖∇f‖₂` of the full-batch objective.
    pub grad_norm: f64,
    /// A classifier's test accuracy from the
    /// [`RunOptions::scores`](crate::RunOptions::scores) evaluator, on every
    /// `test_every`-th row and `None` on the others.
    pub test_accuracy: Option<f64>,
    /// An autoencoder's training reconstruction error (squared error per
    /// case), when the evaluator measures one; rows as `test_accuracy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_error: Option<f64>,
    /// An autoencoder's test reconstruction error; rows as `test_accuracy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_error: Option<f64>,
    /// Gradient evaluations so far (with or without the loss).
    pub grad_evals: u64,
    /// Loss-only evaluations so far (line searches, acceptance tests).
    pub loss_evals: u64,
    /// Curvature-vector products so far.
    pub hvp_evals: u64,
    /// Samples touched divided by the training-set size.
    pub data_passes: f64,
    /// Newton-CG's damping `λ`, as used by this iteration's step.
    pub damping: Option<f64>,
    /// The trust-region radius this iteration's step was limited to.
    pub radius: Option<f64>,
    /// CG iterations spent in this outer iteration.
    pub cg_iters: Option<u64>,
    /// The step taken: a line search's `α` (0 for a rejected Newton-CG step),
    /// or SGD's and Adam's scheduled rate.
    pub step_size: Option<f64>,
}

/// What a trace's evaluator measures on a parameter vector, beyond the
/// objective the solver minimises: what a reader judges the model by.
/// Classifiers fill `test_accuracy`, autoencoders the two reconstruction
/// errors (Martens' squared error per case), since an autoencoder's loss
/// (sigmoid cross-entropy) is not the figure its literature reports.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Scores {
    /// Fraction of test rows classified correctly.
    pub test_accuracy: Option<f64>,
    /// Reconstruction error on the training set.
    pub train_error: Option<f64>,
    /// Reconstruction error on the test set.
    pub test_error: Option<f64>,
}

/// Cost counters shared by the problem and its curvature operators.
#[derive(Debug, Default)]
pub struct Counters {
    grad_evals: AtomicU64,
    loss_evals: AtomicU64,
    hvp_evals: AtomicU64,
    samples: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Gradient evaluations.
    pub grad_evals: u64,
    /// Loss-only evaluations.
    pub loss_evals: u64,
    /// Curvature-vector products.
    pub hvp_evals: u64,
    /// Training samples touched by all of the above and by forward passes.
    pub samples: u64,
}

impl Counters {
    /// Counts one gradient evaluation over `samples` samples.
    pub fn grad(&self, samples: usize) {
        self.grad_evals.fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(samples as u64, Ordering::Relaxed);
    }

    /// Counts one loss-only evaluation over `samples` samples.
    pub fn loss(&self, samples: usize) {
        self.loss_evals.fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(samples as u64, Ordering::Relaxed);
    }

    /// Counts one curvature-vector product over `samples` samples.
    pub fn hvp(&self, samples: usize) {
        self.hvp_evals.fetch_add(1, Ordering::Relaxed);
        self.samples.fetch_add(samples as u64, Ordering::Relaxed);
    }

    /// Samples touched outside the three counted operations (e.g. the
    /// forward pass that caches a curvature operator's probabilities).
    pub fn touch(&self, samples: usize) {
        self.samples.fetch_add(samples as u64, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> Counts {
        Counts {
            grad_evals: self.grad_evals.load(Ordering::Relaxed),
            loss_evals: self.loss_evals.load(Ordering::Relaxed),
            hvp_evals: self.hvp_evals.load(Ordering::Relaxed),
            samples: self.samples.load(Ordering::Relaxed),
        }
    }

    /// Sets every counter (used when resuming a run).
    pub fn restore(&self, c: Counts) {
        self.grad_evals.store(c.grad_evals, Ordering::Relaxed);
        self.loss_evals.store(c.loss_evals, Ordering::Relaxed);
        self.hvp_evals.store(c.hvp_evals, Ordering::Relaxed);
        self.samples.store(c.samples, Ordering::Relaxed);
    }
}
