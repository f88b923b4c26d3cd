//! The fused kernel's two halves over compressed rows ([`CsrU8`]).
//!
//! The per-row softmax work in between is the dense kernel's
//! (`rowwise_block`). What differs is how `X` is touched:
//!
//! - forward, `z_i = xscale · Σ_{j ∈ row i} x_ij W[j, :] + b`: each non-zero
//!   scales one row of the input-major weights `wr` (`kw` wide, a few vector
//!   registers) into accumulators that stay in registers for the row;
//! - backward, `Acc[j, :] += x_ij r_i`: each non-zero adds one scaled row of
//!   `R` into an input-major accumulator `[d, kw]` of the compute type,
//!   which stays in L1/L2 (MNIST: 784 x 16 `f32`, 50 KB) and is added into
//!   the leaf's `f64` partial sums every [`FLUSH_ROWS`] rows, as the dense
//!   kernel adds each block's register tile.
//!
//! Column groups of up to `MAX_GROUP` vectors are held in registers at a
//! time, so any class count works; MNIST's 10 classes are one group at every
//! level (16 `f32` lanes = 1 AVX-512 vector, 2 AVX2 vectors, 10 scalars).

use std::ops::Range;

use pulp::{Simd, WithSimd};

use super::{BLOCK_ROWS, Job, Partial, Pixel, Real, rowwise_block};
use crate::csr::CsrU8;
use crate::csr::rows::{MAX_GROUP, bwd_row, for_each_group, fwd_row, store};
use crate::fused::SimdLevel;

/// Rows between additions of the compute-type accumulator into `f64`: long
/// enough that the flush (`d · kw` additions) costs a few percent of the
/// block's work at MNIST's density, short enough that `f32` sums stay close
/// to the dense kernel's (which adds every 64-row block).
const FLUSH_ROWS: usize = 4 * BLOCK_ROWS;

/// `T`'s lanes at `level`: the width `kw` is padded to a multiple of.
pub fn lanes<T: Real>(level: SimdLevel) -> usize {
    let bytes = match level {
        SimdLevel::Avx512 => 64,
        SimdLevel::Avx2 => 32,
        SimdLevel::Neon => 16,
        SimdLevel::Scalar => return 1,
    };
    bytes / std::mem::size_of::<T>()
}

/// One leaf over compressed rows; the counterpart of `leaf_impl`.
pub(super) fn leaf<M: Simd, S: Pixel, T: Real>(
    m: M,
    job: &Job<'_, S, T>,
    csr: &CsrU8,
    rows: Range<usize>,
    mut p_out: Option<&mut [T]>,
) -> Partial {
    let (d, kp, kw) = (job.d, job.kp, job.kw);
    // A level whose lanes do not divide `kw` was not the one `kw` was
    // padded for (the scalar fallback of `run_leaf`): 1 lane always fits.
    if !kw.is_multiple_of(T::lanes::<M>()) {
        return leaf(pulp::Scalar::new(), job, csr, rows, p_out);
    }
    let back = job.mode.backward();
    let mut part = Partial::new(if back { kp * d } else { 0 }, kp);
    let mut z = vec![T::ZERO; BLOCK_ROWS * kp];
    let mut r = vec![T::ZERO; BLOCK_ROWS * kp];
    let mut acc = vec![T::ZERO; if back { d * kw } else { 0 }];
    let mut pending = 0;
    let mut b0 = rows.start;
    while b0 < rows.end {
        let nb = BLOCK_ROWS.min(rows.end - b0);
        m.vectorize(Forward {
            job,
            csr,
            b0,
            nb,
            z: &mut z,
        });
        let out = p_out.as_deref_mut().map(|p| {
            let o = (b0 - rows.start) * job.k;
            &mut p[o..o + nb * job.k]
        });
        rowwise_block(m, job, b0, nb, &mut z, &mut r, out, &mut part);
        if back {
            m.vectorize(Backward {
                job,
                csr,
                b0,
                nb,
                r: &r,
                acc: &mut acc,
            });
            pending += nb;
            if pending >= FLUSH_ROWS || b0 + nb == rows.end {
                flush(&mut acc, &mut part.acc, d, kp, kw);
                pending = 0;
            }
        }
        b0 += nb;
    }
    part
}

/// `out[c, j] += acc[j, c]` in `f64` (class-major, as the dense kernel's
/// partial sums are), then zeroes `acc`.
fn flush<T: Real>(acc: &mut [T], out: &mut [f64], d: usize, kp: usize, kw: usize) {
    for j in 0..d {
        let row = &mut acc[j * kw..][..kw];
        for (c, a) in row[..kp].iter().enumerate() {
            out[c * d + j] += a.to_f64();
        }
        row.fill(T::ZERO);
    }
}

/// Each byte as `T`; the scale is applied to `Z` and `R`, as in the dense
/// kernel.
fn byte_values<T: Real>() -> [T; 256] {
    std::array::from_fn(|k| T::from_u8(k as u8))
}

struct Forward<'a, 'j, S, T> {
    job: &'a Job<'j, S, T>,
    csr: &'a CsrU8,
    b0: usize,
    nb: usize,
    z: &'a mut [T],
}

impl<S, T: Real> WithSimd for Forward<'_, '_, S, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<M: Simd>(self, m: M) {
        let Forward {
            job,
            csr,
            b0,
            nb,
            z,
        } = self;
        let (kp, kw) = (job.kp, job.kw);
        let lanes = T::lanes::<M>();
        let mut tile = [T::ZERO; MAX_GROUP * 16];
        let bytes = byte_values::<T>();
        for i in 0..nb {
            let (cols, vals) = csr.row(b0 + i);
            for_each_group!(lanes, kw, MAX_GROUP, |g, NV, CH| {
                // SAFETY: `XSlice::run` checked the CSR shape against `d`, so
                // every column is below `d`, and `wr` is `[d, kw]` with
                // `g + NV·lanes <= kw`; `tile` holds `MAX_GROUP · 16` values,
                // at least `NV · lanes`.
                unsafe {
                    let a =
                        fwd_row::<M, T, NV, CH>(m, job.wr.as_ptr().add(g), kw, cols, vals, &bytes);
                    for (q, v) in a.iter().enumerate() {
                        store::<M, T>(tile.as_mut_ptr().add(q * lanes), *v);
                    }
                }
                let width = (NV * lanes).min(kp.saturating_sub(g));
                for c in 0..width {
                    z[i * kp + g + c] = tile[c] * job.xscale + job.vb[g + c];
                }
            });
        }
    }
}

struct Backward<'a, 'j, S, T> {
    job: &'a Job<'j, S, T>,
    csr: &'a CsrU8,
    b0: usize,
    nb: usize,
    r: &'a [T],
    acc: &'a mut [T],
}

impl<S, T: Real> WithSimd for Backward<'_, '_, S, T> {
    type Output = ();
    #[inline(always)]
    fn with_simd<M: Simd>(self, m: M) {
        let Backward {
            job,
            csr,
            b0,
            nb,
            r,
            acc,
        } = self;
        let (kp, kw) = (job.kp, job.kw);
        let lanes = T::lanes::<M>();
        let bytes = byte_values::<T>();
        // One row of R, padded with zeros to `kw`.
        let mut rp = vec![T::ZERO; kw];
        for i in 0..nb {
            let (cols, vals) = csr.row(b0 + i);
            if cols.is_empty() {
                continue;
            }
            rp[..kp].copy_from_slice(&r[i * kp..][..kp]);
            for_each_group!(lanes, kw, MAX_GROUP, |g, NV, _CH| {
                // SAFETY: as in `Forward`; `acc` is `[d, kw]`, `rp` is `kw`.
                unsafe {
                    let rv: [T::V<M>; NV] =
                        std::array::from_fn(|q| T::load(m, rp.as_ptr().add(g + q * lanes)));
                    bwd_row::<M, T, NV>(m, acc.as_mut_ptr().add(g), kw, cols, vals, &bytes, rv);
                }
            });
        }
    }
}
