//! Spy plots of assembled Hessians.
//!
//! The flat layout interleaves classes (`W[j, c]` at `j·k + c`), so the
//! matrix is 784 x 784 blocks of 10 x 10. Reordering rows and columns class
//! by class (`c·d + j`) shows the same matrix as 10 x 10 blocks of 784 x 784,
//! block `(c, c')` being the batch's pixel Gram matrix weighted by
//! `A_i[c, c']`; the zero rows and columns of dead pixels then repeat in
//! every block as streaks.

use serde::{Deserialize, Serialize};

use anyhow::Result;
use hessfree_analysis::AssembledHessian;
use hessfree_report::SpyMask;

/// Row and column order of a spy plot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HessianOrder {
    /// The flat parameter layout, `pixel·k + class`.
    PixelMajor,
    /// `class·d + pixel`: 10 x 10 blocks of 784 x 784.
    ClassMajor,
}

impl HessianOrder {
    /// The flat (pixel-major) index shown at position `i` of the plot.
    pub fn flat_index(self, i: usize, inputs: usize, classes: usize) -> usize {
        match self {
            Self::PixelMajor => i,
            Self::ClassMajor => (i % inputs) * classes + i / inputs,
        }
    }
}

/// The spy mask of the full `dk x dk` matrix (dead pixels included) in
/// `order`, at most `out_px` pixels on a side: a pixel is dark iff some entry
/// of its block is non-zero (see [`SpyMask`]).
pub fn hessian_spy_mask(
    h: &AssembledHessian,
    order: HessianOrder,
    out_px: usize,
) -> Result<SpyMask> {
    let n = h.full_dim();
    let (d, k) = (h.inputs, h.classes);
    Ok(SpyMask::from_fn(n, n, out_px, |r, c| {
        h.entry(order.flat_index(r, d, k), order.flat_index(c, d, k)) != 0.0
    })?)
}
