//! Shared oracle of the fuzz targets; see `oracle.rs`.
//!
//! The oracle lives in its own file so that the regression test of the data
//! crate (`crates/data/tests/fuzz_regressions.rs`) can include the very same
//! checks with `#[path]` and replay every committed input on stable Rust.

mod oracle;
pub mod checkpoint_oracle;

pub use oracle::{SOURCE, check_gzip_wrapped, check_images, check_labels, gzip};
