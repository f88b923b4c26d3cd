//! Turning numbers into files people read: SVG line plots, PNG images,
//! Markdown tables, CSV and JSON, all written atomically.
//!
//! A leaf of the crate graph: it knows no model or solver type and takes
//! plain numbers (`f64` points, `f32` weights, `u8` pixels, a non-zero
//! predicate). The report schemas that give those numbers meaning live in
//! the harness crate, which regenerates reports from their committed data.
//!
//! Every file goes through [`write_atomic`], hessfree's one atomic writer:
//! a reader (or a later `--check`) never sees a half-written report.

#![warn(missing_docs)]

mod csv;
mod error;
mod format;
mod fs;
mod json;
mod markdown;
mod plot;
mod png;
mod spy;

pub use crate::csv::{Csv, csv_field};
pub use crate::error::{ReportError, Result};
pub use crate::format::{fmt_bytes, fmt_duration_s, fmt_sci, fmt_sig};
pub use crate::fs::{ensure_dir, stale_files, write_atomic, write_atomic_with, write_rendered};
pub use crate::json::{to_json_pretty, write_json};
pub use crate::markdown::{
    Align, escape_cell, markdown_image, markdown_table, markdown_table_aligned,
};
pub use crate::plot::{DEFAULT_PLOT_SIZE, LinePlot, Series, series_color};
pub use crate::png::{
    ColorScale, GRID_BACKGROUND_RGB, NAN_RGB, WeightGrid, diverging_rgb, encode_gray_png,
    encode_rgb_png, gray_image, gray_image_png, split_columns, weight_grid_png,
};
pub use crate::spy::{SpyMask, spy_png};
