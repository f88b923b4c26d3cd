//! Curvature analysis for hessfree: what the Hessian looks like, measured
//! through products alone where possible and through the assembled matrix
//! where the question is about the matrix itself.
//!
//! - [`lanczos`](mod@lanczos): Lanczos with full reorthogonalisation: extremal eigenvalues
//!   with residual bounds, and the tridiagonal matrix behind them;
//! - [`hutchinson`]: Hutchinson's trace estimator with Rademacher probes and a
//!   confidence interval;
//! - [`slq`]: the spectral density by stochastic Lanczos quadrature;
//! - [`spectrum`]: all of the above for one objective at one point;
//! - [`rank`]: the assembled softmax-regression Hessian restricted to the
//!   pixels a batch uses, its numerical rank and the rank identity
//!   `rank(H) = (k−1)·rank(X)`;
//! - [`lambda_min`]: the smallest eigenvalue of a penalised softmax Hessian,
//!   certified by a bracket;
//! - [`approximation`]: how well one small assembled curvature matrix (the
//!   K-FAC matrix, say) stands in for another: relative Frobenius error,
//!   eigenvalues, and the condition number it leaves as a preconditioner;
//! - [`memory`]: dense bytes against the measured working memory of the
//!   matrix-free operator.
//!
//! Nothing here optimises, loads data or draws: the points at which
//! curvature is analysed come from the caller, and the one CG is
//! [`hessfree_model::cg`]. The Hessian study that puts these together over
//! MNIST lives in the harness crate.

#![warn(missing_docs)]

pub mod approximation;
pub mod error;
pub mod hutchinson;
pub mod lambda_min;
pub mod lanczos;
pub mod memory;
pub mod rank;
pub mod slq;
pub mod spectrum;
mod util;

pub use approximation::{
    SpdPreconditioner, block_diagonal, damped_condition_dense, descending_eigenvalues,
    jacobi_condition, relative_frobenius,
};
pub use error::{AnalysisError, Result};
pub use hutchinson::{TraceEstimate, hutchinson_trace, student_t_975};
pub use lambda_min::{LambdaMin, certify_lambda_min};
pub use lanczos::{LanczosResult, RitzValue, lanczos, lanczos_from, tridiagonal_eigen};
pub use memory::{OperatorMemory, ProcMemory, dense_hessian_bytes, measure_operator_memory};
pub use rank::{
    AssembledHessian, BatchRank, NumericalRank, active_pixels, assemble_softmax_data_hessian,
    batch_rank, numerical_rank, rank_tolerance, singular_values, symmetric_eigenvalues,
};
pub use slq::{SpectralNodes, gaussian_density, slq_density};
pub use spectrum::{
    DampedCondition, SpectrumOptions, SpectrumReport, damped_condition, laplacian_gram_extremes,
    laplacian_smoothest_mode, operator_spectrum, rayleigh_quotient, shift_direction,
    spectrum_report,
};
