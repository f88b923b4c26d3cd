//! The fuzz targets' oracles: `oracle.rs` for the IDX targets,
//! `checkpoint_oracle.rs` and `weights_oracle.rs` for the checkpoint and
//! weights readers.
//!
//! Each oracle lives in its own file so that a regression test on stable
//! Rust (`crates/data/tests/fuzz_regressions.rs`,
//! `crates/solvers/tests/checkpoint_fuzz_regressions.rs`,
//! `crates/model/tests/weights_fuzz_regressions.rs`) can include the very
//! same checks with `#[path]` and replay every committed input.

pub mod checkpoint_oracle;
mod oracle;
pub mod weights_oracle;

pub use oracle::{SOURCE, check_gzip_wrapped, check_images, check_labels, gzip};
