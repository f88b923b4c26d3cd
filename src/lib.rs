//! hessfree: matrix-free second-order optimisation.
pub use hessfree_analysis as analysis;
pub use hessfree_data as data;
pub use hessfree_model as model;
pub use hessfree_report as report;
pub use hessfree_solvers as solvers;
