//! Row kernels over compressed rows, shared by the fused softmax kernel and
//! the MLP's first layer: each non-zero `(j, v)` of a row scales row `j` of a
//! dense matrix into register accumulators (`fwd_row`), or adds `v` times a
//! row held in registers into row `j` of an accumulator (`bwd_row`).

use pulp::Simd;

use crate::fused::Real;

/// The most vectors of one row held in registers at once.
pub(crate) const MAX_GROUP: usize = 8;

/// Runs `body` for each column group `g` of up to `max` (at most [`MAX_GROUP`])
/// whole vectors of a `kw`-wide row, with
/// `NV` the group's vectors and `CH` the independent accumulator chains the
/// forward keeps for it (so that a one-vector row is not one long chain of
/// dependent FMAs: at 4 cycles each, that chain bounded the forward).
macro_rules! for_each_group {
    ($lanes:expr, $kw:expr, $max:expr, |$g:ident, $nv:ident, $ch:ident| $body:expr) => {{
        let lanes = $lanes;
        let mut $g = 0;
        while $g < $kw {
            let left = ($kw - $g) / lanes;
            match left.min($max) {
                1 => {
                    const $nv: usize = 1;
                    const $ch: usize = 4;
                    $body
                }
                2 => {
                    const $nv: usize = 2;
                    const $ch: usize = 2;
                    $body
                }
                3 => {
                    const $nv: usize = 3;
                    const $ch: usize = 2;
                    $body
                }
                4 => {
                    const $nv: usize = 4;
                    const $ch: usize = 2;
                    $body
                }
                5 => {
                    const $nv: usize = 5;
                    const $ch: usize = 1;
                    $body
                }
                6 => {
                    const $nv: usize = 6;
                    const $ch: usize = 1;
                    $body
                }
                7 => {
                    const $nv: usize = 7;
                    const $ch: usize = 1;
                    $body
                }
                _ => {
                    const $nv: usize = MAX_GROUP;
                    const $ch: usize = 1;
                    $body
                }
            }
            $g += left.min($max) * lanes;
        }
    }};
}
pub(crate) use for_each_group;

/// `Σ_{(j, v) ∈ row} table[v] · wr[j, 0..NV·lanes]`, in registers: non-zero `t`
/// goes to chain `t mod CH`, and the chains are added in order at the end.
///
/// # Safety
/// Every `cols[t] · kw + NV · lanes` must be within `wr`.
#[inline(always)]
pub(crate) unsafe fn fwd_row<M: Simd, T: Real, const NV: usize, const CH: usize>(
    m: M,
    wr: *const T,
    kw: usize,
    cols: &[u16],
    vals: &[u8],
    table: &[T; 256],
) -> [T::V<M>; NV] {
    let lanes = T::lanes::<M>();
    let mut a = [[T::splat(m, T::ZERO); NV]; CH];
    let step = |a: &mut [T::V<M>; NV], j: u16, v: u8| {
        let s = T::splat(m, table[usize::from(v)]);
        // SAFETY: the caller's bound on every column.
        unsafe {
            let w = wr.add(usize::from(j) * kw);
            for (q, aq) in a.iter_mut().enumerate() {
                *aq = T::fma(m, s, T::load(m, w.add(q * lanes)), *aq);
            }
        }
    };
    let full = cols.len() / CH * CH;
    for t in (0..full).step_by(CH) {
        for (c, ac) in a.iter_mut().enumerate() {
            step(ac, cols[t + c], vals[t + c]);
        }
    }
    for t in full..cols.len() {
        step(&mut a[t - full], cols[t], vals[t]);
    }
    let mut sum = a[0];
    for ac in &a[1..] {
        for (s, x) in sum.iter_mut().zip(ac) {
            *s = m_add::<M, T>(m, *s, *x);
        }
    }
    sum
}

/// `a + b` lane by lane, as `fma(1, a, b)`: exact, and it keeps `Real` to
/// the operations it already has.
#[inline(always)]
fn m_add<M: Simd, T: Real>(m: M, a: T::V<M>, b: T::V<M>) -> T::V<M> {
    T::fma(m, T::splat(m, T::ONE), a, b)
}

/// `acc[j, 0..NV·lanes] += table[v] · r` for each `(j, v)` of the row.
///
/// # Safety
/// Every `cols[t] · kw + NV · lanes` must be within `acc`.
#[inline(always)]
pub(crate) unsafe fn bwd_row<M: Simd, T: Real, const NV: usize>(
    m: M,
    acc: *mut T,
    kw: usize,
    cols: &[u16],
    vals: &[u8],
    table: &[T; 256],
    rv: [T::V<M>; NV],
) {
    let lanes = T::lanes::<M>();
    for (&j, &v) in cols.iter().zip(vals) {
        let s = T::splat(m, table[usize::from(v)]);
        unsafe {
            let a = acc.add(usize::from(j) * kw);
            for (q, r) in rv.iter().enumerate() {
                let p = a.add(q * lanes).cast::<T::V<M>>();
                p.write_unaligned(T::fma(m, s, *r, p.read_unaligned()));
            }
        }
    }
}

/// Writes a vector of `T` to `p`.
///
/// # Safety
/// `p` must point at `T::lanes::<M>()` writable values (any alignment).
#[inline(always)]
pub(crate) unsafe fn store<M: Simd, T: Real>(p: *mut T, v: T::V<M>) {
    unsafe { p.cast::<T::V<M>>().write_unaligned(v) }
}
