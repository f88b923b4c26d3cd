//! Compressed-row storage of byte inputs.
//!
//! MNIST's pixels are 81% zeros. A product with `X` done over the non-zeros
//! alone does a fifth of the dense work and reads about 3 bytes per non-zero
//! (a `u16` column and a `u8` value) instead of one byte per pixel. Whether
//! that is faster depends on the density and the instruction set: the dense
//! kernels stream `X` at full vector width, the sparse ones gather rows of
//! the weights. [`csr_max_density`] is where the sparse kernels stop paying,
//! as measured by the `cpu/softmax/.../csr-u8` benchmarks ([`csr_max_density`]).

use std::ops::Range;

use pulp::{Simd, WithSimd};
use rayon::prelude::*;

use crate::error::{ModelError, Result};
use crate::fused::{Real, SimdLevel};

pub(crate) mod rows;
use rows::{MAX_GROUP, bwd_row, for_each_group, fwd_row, store};

/// The largest fraction of non-zero inputs at which
/// [`crate::fused::XStorage::Auto`] stores `X` as CSR for kernels running at
/// `level`. From the `cpu/softmax/hvp-density` sweep on uniformly random
/// bytes (2-core Xeon, 2 threads, quiet), where the sparse HVP stopped
/// beating the dense `u8` one in both f32 and f64:
///
/// - AVX-512: wins at 10% non-zeros, loses at 20% (f32 2.01 against
///   1.74 ms);
/// - AVX2: wins at 20%, loses at 30% in f32 (2.78 against 2.41 ms);
/// - scalar: wins up to 50%, the largest density measured.
///
/// MNIST (19% non-zeros, concentrated in the middle of the image, so that
/// the rows of `W` it gathers stay in L1) came out even at AVX-512 in f32
/// (9.86 against 9.88 ms) and faster in f64 (16.2 against 19.3 ms), hence
/// 0.2 there. NEON was not measured (no aarch64 machine); it gets AVX2's
/// figure, the nearer vector width. An MLP's first layer takes the same
/// rule; on MNIST its CSR products were 2 to 2.5x faster than the dense ones.
pub fn csr_max_density(level: SimdLevel) -> f64 {
    match level {
        SimdLevel::Avx512 => 0.2,
        SimdLevel::Avx2 | SimdLevel::Neon => 0.25,
        SimdLevel::Scalar => 0.5,
    }
}

/// `X` `[rows, cols]` in compressed rows: row `i`'s non-zeros are
/// `values[indptr[i]..indptr[i+1]]` at columns `indices[..]` (ascending),
/// each meaning `value * scale`.
#[derive(Clone, Debug)]
pub struct CsrU8 {
    rows: usize,
    cols: usize,
    indptr: Vec<usize>,
    indices: Vec<u16>,
    values: Vec<u8>,
    scale: f64,
}

impl CsrU8 {
    /// Compresses dense row-major bytes. Column indices are `u16`, so
    /// `cols` may be at most 65536.
    pub fn from_dense(bytes: &[u8], cols: usize, scale: f64) -> Result<Self> {
        if cols == 0 || cols > 1 << 16 {
            return Err(ModelError::Spec(format!(
                "CSR inputs need 1 to 65536 columns, got {cols}"
            )));
        }
        if !bytes.len().is_multiple_of(cols) {
            return Err(ModelError::Batch(format!(
                "{} bytes do not split into rows of {cols}",
                bytes.len()
            )));
        }
        let rows = bytes.len() / cols;
        let nnz = bytes.iter().filter(|&&b| b != 0).count();
        let mut indptr = Vec::with_capacity(rows + 1);
        let mut indices = Vec::with_capacity(nnz);
        let mut values = Vec::with_capacity(nnz);
        indptr.push(0);
        for row in bytes.chunks_exact(cols) {
            for (j, &b) in row.iter().enumerate() {
                if b != 0 {
                    indices.push(j as u16);
                    values.push(b);
                }
            }
            indptr.push(values.len());
        }
        Ok(Self {
            rows,
            cols,
            indptr,
            indices,
            values,
            scale,
        })
    }

    /// The matrix whose rows are `rows`, each `(matrix, row)`, in order:
    /// a sub-sample's inputs gathered from compressed chunks without going
    /// back to the dense bytes. Every source must have `cols` columns and
    /// the scale `scale`.
    pub fn gather(rows: &[(&CsrU8, usize)], cols: usize, scale: f64) -> Result<Self> {
        let nnz = rows
            .iter()
            .map(|(m, i)| m.indptr[i + 1] - m.indptr[*i])
            .sum();
        let mut indptr = Vec::with_capacity(rows.len() + 1);
        let mut indices = Vec::with_capacity(nnz);
        let mut values = Vec::with_capacity(nnz);
        indptr.push(0);
        for &(m, i) in rows {
            if m.cols != cols || m.scale.to_bits() != scale.to_bits() || i >= m.rows {
                return Err(ModelError::Batch(format!(
                    "gathering row {i} of a {}x{} CSR matrix (scale {}) into one of {cols} \
                     columns (scale {scale})",
                    m.rows, m.cols, m.scale
                )));
            }
            let (idx, val) = m.row(i);
            indices.extend_from_slice(idx);
            values.extend_from_slice(val);
            indptr.push(values.len());
        }
        Ok(Self {
            rows: rows.len(),
            cols,
            indptr,
            indices,
            values,
            scale,
        })
    }

    /// Rows of `X`, the samples.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Columns of `X`, the inputs; at most 65536.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// The number of stored (non-zero) values.
    pub fn nnz(&self) -> usize {
        self.values.len()
    }

    /// The fraction of inputs that are non-zero.
    pub fn density(&self) -> f64 {
        density(self.nnz(), self.rows * self.cols)
    }

    /// The value one stored byte stands for.
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// Bytes one pass over `X` reads: values, columns and row offsets.
    pub fn bytes(&self) -> usize {
        self.values.len() * 3 + self.indptr.len() * std::mem::size_of::<usize>()
    }

    /// Row offsets, `rows + 1` of them.
    pub fn indptr(&self) -> &[usize] {
        &self.indptr
    }

    /// Column of each stored value, ascending within a row.
    pub fn indices(&self) -> &[u16] {
        &self.indices
    }

    /// The stored bytes, all non-zero; each stands for `value * scale`.
    pub fn values(&self) -> &[u8] {
        &self.values
    }

    /// Row `i`'s columns and values.
    pub fn row(&self, i: usize) -> (&[u16], &[u8]) {
        let r = self.indptr[i]..self.indptr[i + 1];
        (&self.indices[r.clone()], &self.values[r])
    }
}

/// Products with a dense `[*, h]` matrix, for a layer of `h` units on these
/// inputs (an MLP's first layer): each non-zero scales one `h`-wide row.
/// Both are deterministic: rows are split by a fixed tree that depends only
/// on the row count, never on the threads.
///
/// The dense side is worked on in slabs of one cache line of columns
/// (`Slabs`), packed so that a slab's rows are contiguous: the slab of `W`
/// or of the accumulator (`cols` lines, MNIST: 50 KB) then stays in L1 while
/// the rows' non-zeros gather from it. Unpacked, rows of 256 `f32` are 1 KB
/// apart, so the lines of one slab fall into 4 of L1's 64 sets and evict
/// each other.
impl CsrU8 {
    /// `X W` for `W` `[cols, h]` row-major: `[rows, h]`.
    pub fn matmul<T: Real>(&self, w: &[T], h: usize) -> Result<Vec<T>> {
        self.check("W", w.len(), self.cols, h)?;
        let table = self.table::<T>(false);
        let mut out = vec![T::ZERO; self.rows * h];
        if h == 0 {
            return Ok(out);
        }
        let slabs = Slabs::new::<T>(self.cols, h);
        let packed = slabs.pack(w);
        out.par_chunks_mut(MATMUL_ROWS * h)
            .enumerate()
            .for_each(|(b, block)| {
                let rows = b * MATMUL_ROWS..(b * MATMUL_ROWS + block.len() / h);
                pulp::Arch::new().dispatch(RowsTimesW {
                    x: self,
                    table: &table,
                    packed: &packed,
                    slabs,
                    rows,
                    out: block,
                });
            });
        Ok(out)
    }

    /// `Xᵀ D` for `D` `[rows, h]` row-major, or `(X ⊙ X)ᵀ D` when `squared`:
    /// `[cols, h]`.
    pub fn t_matmul<T: Real>(&self, d: &[T], h: usize, squared: bool) -> Result<Vec<T>> {
        self.check("D", d.len(), self.rows, h)?;
        let table = self.table::<T>(squared);
        let leaf = (self.rows / 16).max(T_MATMUL_MIN_LEAF);
        let slabs = Slabs::new::<T>(self.cols, h);
        let packed = self.t_tree(&table, d, slabs, 0..self.rows, leaf);
        Ok(slabs.unpack(&packed))
    }

    fn t_tree<T: Real>(
        &self,
        table: &[T; 256],
        d: &[T],
        slabs: Slabs,
        rows: Range<usize>,
        leaf: usize,
    ) -> Vec<T> {
        if rows.len() <= leaf {
            let mut acc = vec![T::ZERO; self.cols * slabs.h];
            pulp::Arch::new().dispatch(RowsTransposed {
                x: self,
                table,
                d,
                slabs,
                rows,
                acc: &mut acc,
            });
            return acc;
        }
        let mid = rows.start + rows.len() / 2;
        let (mut a, b) = rayon::join(
            || self.t_tree(table, d, slabs, rows.start..mid, leaf),
            || self.t_tree(table, d, slabs, mid..rows.end, leaf),
        );
        for (a, b) in a.iter_mut().zip(&b) {
            *a += *b;
        }
        a
    }

    /// What each byte stands for in `T`, computed as the data crate scales
    /// pixels (`k as T * scale as T`), so that the products see the very
    /// inputs the dense tensors hold; squared for `(X ⊙ X)`.
    fn table<T: Real>(&self, squared: bool) -> [T; 256] {
        let s = T::from_f64(self.scale);
        std::array::from_fn(|k| {
            let x = T::from_u8(k as u8) * s;
            if squared { x * x } else { x }
        })
    }

    fn check(&self, what: &str, len: usize, rows: usize, h: usize) -> Result<()> {
        if len != rows * h {
            return Err(ModelError::Batch(format!(
                "{what} holds {len} values, expected {rows} x {h} for CSR inputs of {} x {}",
                self.rows, self.cols
            )));
        }
        Ok(())
    }
}

/// Rows per parallel task of [`CsrU8::matmul`].
const MATMUL_ROWS: usize = 64;
/// The smallest leaf of [`CsrU8::t_matmul`]'s tree; each leaf holds a
/// `[cols, h]` accumulator (MNIST, 256 units, `f32`: 800 KB).
const T_MATMUL_MIN_LEAF: usize = 256;

/// A `[cols, h]` matrix cut into `full` slabs of `width` columns (one cache
/// line of `T`) and a `tail` of `h mod width`, stored slab after slab, each
/// slab row-major (`[cols, width]`), the tail last (`[cols, tail]`).
#[derive(Clone, Copy)]
struct Slabs {
    cols: usize,
    h: usize,
    width: usize,
    full: usize,
    tail: usize,
}

impl Slabs {
    fn new<T>(cols: usize, h: usize) -> Self {
        let width = (64 / std::mem::size_of::<T>()).max(1);
        Self {
            cols,
            h,
            width,
            full: h / width,
            tail: h % width,
        }
    }

    /// Where element `(j, c)` lives in the packed layout.
    fn index(&self, j: usize, c: usize) -> usize {
        let s = c / self.width;
        if s < self.full {
            s * self.cols * self.width + j * self.width + c % self.width
        } else {
            self.full * self.cols * self.width + j * self.tail + (c - self.full * self.width)
        }
    }

    fn pack<T: Real>(&self, m: &[T]) -> Vec<T> {
        let mut out = vec![T::ZERO; m.len()];
        for j in 0..self.cols {
            for c in 0..self.h {
                out[self.index(j, c)] = m[j * self.h + c];
            }
        }
        out
    }

    fn unpack<T: Real>(&self, p: &[T]) -> Vec<T> {
        let mut out = vec![T::ZERO; p.len()];
        for j in 0..self.cols {
            for c in 0..self.h {
                out[j * self.h + c] = p[self.index(j, c)];
            }
        }
        out
    }
}

/// `out[i, :] = Σ_j x_ij W[j, :]` for a block of rows, slab by slab of the
/// packed `W`, each row's sum in registers.
struct RowsTimesW<'a, T> {
    x: &'a CsrU8,
    table: &'a [T; 256],
    packed: &'a [T],
    slabs: Slabs,
    rows: Range<usize>,
    out: &'a mut [T],
}

impl<T: Real> WithSimd for RowsTimesW<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<M: Simd>(self, m: M) {
        let RowsTimesW {
            x,
            table,
            packed,
            slabs,
            rows,
            out,
        } = self;
        let Slabs {
            cols,
            h,
            width,
            full,
            tail,
        } = slabs;
        let lanes = T::lanes::<M>();
        for s in 0..full {
            let slab = &packed[s * cols * width..][..cols * width];
            for_each_group!(lanes, width, MAX_GROUP, |g, NV, CH| {
                for (i, o) in rows.clone().zip(out.chunks_exact_mut(h)) {
                    let (cj, vals) = x.row(i);
                    // SAFETY: `check` matched `W` to `[cols, h]` and every
                    // column is below `cols`, so row `j` of the slab holds
                    // `width >= g + NV · lanes` values; so does `o` from
                    // `s · width + g`.
                    unsafe {
                        let a = fwd_row::<M, T, NV, CH>(
                            m,
                            slab.as_ptr().add(g),
                            width,
                            cj,
                            vals,
                            table,
                        );
                        let o = o.as_mut_ptr().add(s * width + g);
                        for (q, a) in a.iter().enumerate() {
                            store::<M, T>(o.add(q * lanes), *a);
                        }
                    }
                }
            });
        }
        if tail > 0 {
            let t = &packed[full * cols * width..];
            for (i, o) in rows.zip(out.chunks_exact_mut(h)) {
                let (cj, vals) = x.row(i);
                for (&j, &v) in cj.iter().zip(vals) {
                    let sv = table[usize::from(v)];
                    for c in 0..tail {
                        o[full * width + c] += sv * t[usize::from(j) * tail + c];
                    }
                }
            }
        }
    }
}

/// `acc[j, :] += x_ij D[i, :]` over a range of rows into a packed
/// accumulator, slab by slab, `D`'s piece of each row in registers.
struct RowsTransposed<'a, T> {
    x: &'a CsrU8,
    table: &'a [T; 256],
    d: &'a [T],
    slabs: Slabs,
    rows: Range<usize>,
    acc: &'a mut [T],
}

impl<T: Real> WithSimd for RowsTransposed<'_, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<M: Simd>(self, m: M) {
        let RowsTransposed {
            x,
            table,
            d,
            slabs,
            rows,
            acc,
        } = self;
        let Slabs {
            cols,
            h,
            width,
            full,
            tail,
        } = slabs;
        let lanes = T::lanes::<M>();
        for s in 0..full {
            let slab = &mut acc[s * cols * width..][..cols * width];
            for_each_group!(lanes, width, MAX_GROUP, |g, NV, _CH| {
                for i in rows.clone() {
                    let (cj, vals) = x.row(i);
                    // SAFETY: `check` matched `D` to `[rows, h]`, and
                    // `s · width + g + NV · lanes <= h`; as in `RowsTimesW`
                    // for the slab.
                    unsafe {
                        let di = d.as_ptr().add(i * h + s * width + g);
                        let dv: [T::V<M>; NV] =
                            std::array::from_fn(|q| T::load(m, di.add(q * lanes)));
                        bwd_row::<M, T, NV>(
                            m,
                            slab.as_mut_ptr().add(g),
                            width,
                            cj,
                            vals,
                            table,
                            dv,
                        );
                    }
                }
            });
        }
        if tail > 0 {
            let t = &mut acc[full * cols * width..];
            for i in rows {
                let (cj, vals) = x.row(i);
                let di = &d[i * h + full * width..][..tail];
                for (&j, &v) in cj.iter().zip(vals) {
                    let sv = table[usize::from(v)];
                    for (a, &dc) in t[usize::from(j) * tail..][..tail].iter_mut().zip(di) {
                        *a += sv * dc;
                    }
                }
            }
        }
    }
}

/// `nnz / len`, 0 for an empty matrix.
pub fn density(nnz: usize, len: usize) -> f64 {
    if len == 0 {
        0.0
    } else {
        nnz as f64 / len as f64
    }
}

/// The fraction of non-zero bytes.
pub fn byte_density(bytes: &[u8]) -> f64 {
    density(bytes.iter().filter(|&&b| b != 0).count(), bytes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compresses_rows_with_empty_rows_and_columns() {
        // Row 1 is empty, column 1 is empty.
        let dense = [3u8, 0, 0, 0, 0, 0, 0, 0, 7, 1, 0, 255];
        let x = CsrU8::from_dense(&dense, 3, 0.5).unwrap();
        assert_eq!(x.rows(), 4);
        assert_eq!(x.indptr(), &[0, 1, 1, 2, 4]);
        assert_eq!(x.row(0), (&[0u16][..], &[3u8][..]));
        assert_eq!(x.row(1), (&[][..], &[][..]));
        assert_eq!(x.row(2), (&[2u16][..], &[7u8][..]));
        assert_eq!(x.row(3), (&[0u16, 2][..], &[1u8, 255][..]));
        assert_eq!(x.nnz(), 4);
        assert!((x.density() - 4.0 / 12.0).abs() < 1e-15);
        assert!((byte_density(&dense) - x.density()).abs() < 1e-15);
    }

    #[test]
    fn products_match_dense_loops() {
        // 700 rows: several leaves and blocks; row 1 and column 2 empty;
        // 37 units: whole vectors at every width, then a tail.
        let (rows, cols, h) = (700, 5, 37);
        let mut dense = vec![0u8; rows * cols];
        for (t, b) in dense.iter_mut().enumerate() {
            let (i, j) = (t / cols, t % cols);
            if i != 1 && j != 2 && (t * 7919) % 3 == 0 {
                *b = (t % 251) as u8 + 1;
            }
        }
        let scale = 1.0 / 255.0;
        let x = CsrU8::from_dense(&dense, cols, scale).unwrap();
        let xv = |i: usize, j: usize| f64::from(dense[i * cols + j]) * scale;
        let w: Vec<f64> = (0..cols * h).map(|t| (t as f64).sin()).collect();
        let d: Vec<f64> = (0..rows * h).map(|t| (t as f64 * 0.37).cos()).collect();
        let xw = x.matmul(&w, h).unwrap();
        let xtd = x.t_matmul(&d, h, false).unwrap();
        let x2td = x.t_matmul(&d, h, true).unwrap();
        for i in 0..rows {
            for c in 0..h {
                let e: f64 = (0..cols).map(|j| xv(i, j) * w[j * h + c]).sum();
                assert!((xw[i * h + c] - e).abs() < 1e-12, "XW[{i},{c}]");
            }
        }
        for j in 0..cols {
            for c in 0..h {
                let e: f64 = (0..rows).map(|i| xv(i, j) * d[i * h + c]).sum();
                let e2: f64 = (0..rows).map(|i| xv(i, j).powi(2) * d[i * h + c]).sum();
                assert!((xtd[j * h + c] - e).abs() < 1e-10, "XtD[{j},{c}]");
                assert!((x2td[j * h + c] - e2).abs() < 1e-10, "X2tD[{j},{c}]");
            }
        }
        assert!(xtd[2 * h..3 * h].iter().all(|&v| v == 0.0), "empty column");
        assert!(xw[h..2 * h].iter().all(|&v| v == 0.0), "empty row");
        // f32: the same sums to f32 rounding.
        let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
        let d32: Vec<f32> = d.iter().map(|&v| v as f32).collect();
        let xw32 = x.matmul(&w32, h).unwrap();
        let xtd32 = x.t_matmul(&d32, h, false).unwrap();
        for (a, b) in xw32.iter().zip(&xw) {
            assert!((f64::from(*a) - b).abs() < 1e-5, "f32 XW");
        }
        for (a, b) in xtd32.iter().zip(&xtd) {
            assert!(
                (f64::from(*a) - b).abs() < 1e-4 * b.abs().max(1.0),
                "f32 XtD"
            );
        }
        assert!(x.matmul(&w[1..], h).is_err());
        assert!(x.t_matmul(&d[1..], h, false).is_err());
    }

    #[test]
    fn refuses_bad_shapes() {
        assert!(CsrU8::from_dense(&[1, 2, 3], 2, 1.0).is_err());
        assert!(CsrU8::from_dense(&[], 0, 1.0).is_err());
        assert!(CsrU8::from_dense(&[0; 4], (1 << 16) + 1, 1.0).is_err());
    }
}
