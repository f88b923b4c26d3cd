//! Sparsity ("spy") plots of large matrices.
//!
//! The notebook's spy plots of the 7840 x 7840 softmax-regression Hessian show
//! its structure: 10 x 10 blocks, and streaks of zero rows and columns for
//! pixels that are zero across the batch. A 61-million-entry matrix cannot
//! be drawn one entry per pixel, so the matrix is cut into a grid of blocks,
//! one per output pixel, and a pixel is dark if *any* entry of its block is
//! non-zero. That rule never hides a non-zero entry, and a white pixel proves
//! its whole block is zero, which is what a reader of a spy plot relies on.

use std::ops::Range;
use std::path::Path;

use image::{GrayImage, Luma};

use crate::error::{ReportError, Result};
use crate::fs::write_atomic;
use crate::png::{checked_dims, encode_gray_png};

const DARK: u8 = 0;
const LIGHT: u8 = 255;

/// Which output pixels of a spy plot are dark, for a `rows x cols` matrix
/// drawn on at most `out_px x out_px` pixels.
///
/// Each axis gets `min(out_px, dim)` pixels: a matrix is never upscaled, so
/// every pixel covers at least one entry and the blocks along an axis differ
/// in size by at most one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpyMask {
    rows: usize,
    cols: usize,
    height: usize,
    width: usize,
    dark: Vec<bool>,
}

impl SpyMask {
    /// An all-white mask, to be filled with [`SpyMask::mark`] (useful when the
    /// non-zeros are known as a list, or arrive block by block).
    pub fn new(rows: usize, cols: usize, out_px: usize) -> Result<Self> {
        if rows == 0 || cols == 0 || out_px == 0 {
            return Err(ReportError::invalid(
                "spy plot",
                format!("matrix {rows}x{cols} and output size {out_px} must be positive"),
            ));
        }
        let height = out_px.min(rows);
        let width = out_px.min(cols);
        checked_dims("spy plot", width as u64, height as u64)?;
        Ok(Self {
            rows,
            cols,
            height,
            width,
            dark: vec![false; height * width],
        })
    }

    /// Builds the mask by asking `is_nonzero(row, col)` about entries. Each
    /// block is scanned only until its first non-zero, so a dense matrix costs
    /// about one call per pixel and a sparse one at most one call per entry.
    pub fn from_fn(
        rows: usize,
        cols: usize,
        out_px: usize,
        is_nonzero: impl Fn(usize, usize) -> bool,
    ) -> Result<Self> {
        let mut mask = Self::new(rows, cols, out_px)?;
        for py in 0..mask.height {
            let row_block = block(py, mask.rows, mask.height);
            for px in 0..mask.width {
                let col_block = block(px, mask.cols, mask.width);
                let any = row_block
                    .clone()
                    .any(|r| col_block.clone().any(|c| is_nonzero(r, c)));
                mask.dark[py * mask.width + px] = any;
            }
        }
        Ok(mask)
    }

    /// Builds the mask from a row-major `rows * cols` slice of flags.
    pub fn from_row_major(
        rows: usize,
        cols: usize,
        out_px: usize,
        nonzero: &[bool],
    ) -> Result<Self> {
        if rows.checked_mul(cols) != Some(nonzero.len()) {
            return Err(ReportError::invalid(
                "spy plot",
                format!("{} flags given for a {rows}x{cols} matrix", nonzero.len()),
            ));
        }
        Self::from_fn(rows, cols, out_px, |r, c| nonzero[r * cols + c])
    }

    /// Records that entry (`row`, `col`) of the matrix is non-zero.
    pub fn mark(&mut self, row: usize, col: usize) -> Result<()> {
        let (py, px) = self.pixel_of(row, col).ok_or_else(|| {
            ReportError::invalid(
                "spy plot",
                format!(
                    "entry ({row}, {col}) is outside the {}x{} matrix",
                    self.rows, self.cols
                ),
            )
        })?;
        self.dark[py * self.width + px] = true;
        Ok(())
    }

    /// The pixel (y, x) whose block contains matrix entry (`row`, `col`).
    pub fn pixel_of(&self, row: usize, col: usize) -> Option<(usize, usize)> {
        (row < self.rows && col < self.cols).then(|| {
            (
                pixel_index(row, self.rows, self.height),
                pixel_index(col, self.cols, self.width),
            )
        })
    }

    /// The matrix rows and columns covered by pixel (`py`, `px`).
    pub fn block(&self, py: usize, px: usize) -> Option<(Range<usize>, Range<usize>)> {
        (py < self.height && px < self.width).then(|| {
            (
                block(py, self.rows, self.height),
                block(px, self.cols, self.width),
            )
        })
    }

    /// Whether pixel (`py`, `px`) is dark; false outside the image.
    pub fn is_dark(&self, py: usize, px: usize) -> bool {
        py < self.height && px < self.width && self.dark[py * self.width + px]
    }

    /// All pixels, row-major, `true` = dark.
    pub fn pixels(&self) -> &[bool] {
        &self.dark
    }

    /// Number of dark pixels.
    pub fn dark_count(&self) -> usize {
        self.dark.iter().filter(|&&d| d).count()
    }

    /// Image width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Image height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The matrix's (rows, cols).
    pub fn matrix_shape(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Black for non-zero blocks on white.
    pub fn to_image(&self) -> GrayImage {
        // Dimensions were checked to fit u32 in `new`.
        GrayImage::from_fn(self.width as u32, self.height as u32, |x, y| {
            let dark = self.dark[y as usize * self.width + x as usize];
            Luma([if dark { DARK } else { LIGHT }])
        })
    }

    /// The spy plot as PNG bytes.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        encode_gray_png("spy plot", &self.to_image())
    }

    /// Writes the spy plot as a PNG file, atomically.
    pub fn write_png(&self, path: impl AsRef<Path>) -> Result<()> {
        write_atomic(path, self.to_png()?)
    }
}

/// Spy plot of a `rows x cols` matrix as PNG bytes, at most `out_px` pixels
/// on a side; see [`SpyMask`].
pub fn spy_png(
    rows: usize,
    cols: usize,
    is_nonzero: impl Fn(usize, usize) -> bool,
    out_px: usize,
) -> Result<Vec<u8>> {
    SpyMask::from_fn(rows, cols, out_px, is_nonzero)?.to_png()
}

/// The pixel of entry `i` on an axis of `n` entries drawn on `m <= n`
/// pixels: floor(i * m / n). Computed in u128 so huge matrices cannot
/// overflow.
fn pixel_index(i: usize, n: usize, m: usize) -> usize {
    (i as u128 * m as u128 / n as u128) as usize
}

/// The entries whose pixel is `p`: the inverse of [`pixel_index`],
/// [ceil(p n / m), ceil((p + 1) n / m)). Non-empty because m <= n.
fn block(p: usize, n: usize, m: usize) -> Range<usize> {
    let start = |p: usize| (p as u128 * n as u128).div_ceil(m as u128) as usize;
    start(p)..start(p + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_partition_each_axis() {
        for (n, m) in [(10, 4), (7840, 784), (7840, 100), (5, 5), (13, 7), (1, 1)] {
            let mut next = 0;
            for p in 0..m {
                let b = block(p, n, m);
                assert_eq!(b.start, next, "n={n} m={m} p={p}");
                assert!(!b.is_empty(), "n={n} m={m} p={p}");
                assert!(b.len() <= n.div_ceil(m));
                for i in b.clone() {
                    assert_eq!(pixel_index(i, n, m), p);
                }
                next = b.end;
            }
            assert_eq!(next, n);
        }
    }

    /// A block-structured pattern like the Hessian's: 10x10 blocks of a
    /// 40x40 matrix, each non-zero only where both "pixels" are alive, and
    /// pixels 3 and 17 dead (zero rows and columns).
    fn pattern(r: usize, c: usize) -> bool {
        let dead = |i: usize| i % 20 == 3 || i % 20 == 17;
        !dead(r) && !dead(c) && (r / 20 == c / 20 || (r + c).is_multiple_of(7))
    }

    #[test]
    fn pixels_match_the_zero_pattern() {
        let (n, out) = (40, 16);
        let mask = SpyMask::from_fn(n, n, out, pattern).unwrap();
        assert_eq!((mask.height(), mask.width()), (out, out));
        for py in 0..out {
            for px in 0..out {
                let (rows, cols) = mask.block(py, px).unwrap();
                let expected = rows.clone().any(|r| cols.clone().any(|c| pattern(r, c)));
                assert_eq!(mask.is_dark(py, px), expected, "pixel ({py}, {px})");
            }
        }
        // Marking the non-zeros one by one gives the same mask.
        let mut marked = SpyMask::new(n, n, out).unwrap();
        for r in 0..n {
            for c in 0..n {
                if pattern(r, c) {
                    marked.mark(r, c).unwrap();
                }
            }
        }
        assert_eq!(marked, mask);
        // And so does a precomputed flag slice.
        let flags: Vec<bool> = (0..n * n).map(|k| pattern(k / n, k % n)).collect();
        assert_eq!(SpyMask::from_row_major(n, n, out, &flags).unwrap(), mask);
    }

    #[test]
    fn full_resolution_shows_dead_rows_and_png_agrees() {
        let n = 40;
        let mask = SpyMask::from_fn(n, n, 1000, pattern).unwrap();
        assert_eq!((mask.height(), mask.width()), (n, n));
        let img = image::load_from_memory(&mask.to_png().unwrap())
            .unwrap()
            .to_luma8();
        assert_eq!(img.dimensions(), (n as u32, n as u32));
        for r in 0..n {
            for c in 0..n {
                let expected = if pattern(r, c) { DARK } else { LIGHT };
                assert_eq!(
                    img.get_pixel(c as u32, r as u32).0,
                    [expected],
                    "({r}, {c})"
                );
            }
        }
        // Dead row 3 is white across the whole plot.
        assert!((0..n).all(|c| !mask.is_dark(3, c)));
    }

    #[test]
    fn hessian_sized_matrix_is_fast_enough_and_exact() {
        // 7840 x 7840 with 784 output pixels: 10x10 entries per pixel. Only
        // the diagonal is non-zero, so only diagonal pixels are dark.
        let mask = SpyMask::from_fn(7840, 7840, 784, |r, c| r == c).unwrap();
        assert_eq!(mask.dark_count(), 784);
        assert!(mask.is_dark(100, 100) && !mask.is_dark(100, 101));
        assert_eq!(mask.pixel_of(7839, 0), Some((783, 0)));
        assert_eq!(mask.pixel_of(7840, 0), None);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(SpyMask::new(0, 5, 5).is_err());
        assert!(SpyMask::new(5, 5, 0).is_err());
        assert!(SpyMask::from_row_major(2, 2, 2, &[true; 3]).is_err());
        let mut mask = SpyMask::new(4, 4, 2).unwrap();
        let err = mask.mark(4, 0).unwrap_err();
        assert!(err.to_string().contains("(4, 0)"), "{err}");
        assert!(spy_png(3, 5, |_, _| false, 2).is_ok());
    }

    #[test]
    fn rectangular_matrices_keep_their_own_axis_sizes() {
        let mask = SpyMask::from_fn(7840, 10, 784, |r, c| r % 784 == 0 && c == 9).unwrap();
        assert_eq!((mask.height(), mask.width()), (784, 10));
        assert!(mask.is_dark(0, 9) && !mask.is_dark(0, 8) && !mask.is_dark(1, 9));
    }
}
