//! The argmin adapter for parameters: a newtype over the flat candle tensor
//! implementing argmin-math's traits (like linfa-logistic's newtype).
//!
//! argmin-math's traits cannot return errors, nor can argmin's `dot` on the
//! curvature operator. A candle failure inside one (it should not happen for
//! same-shape tensors, but a device can fail) is stored in this crate's one
//! deferred-error slot, a thread-local (argmin runs a solver's iteration on
//! the caller's thread), instead of panicking, and the vector is replaced by
//! NaNs so that no solver can accept it; the runner raises the stored error
//! after the iteration (see [`take_deferred_error`]).

use std::cell::RefCell;

use argmin_math::{
    ArgminAdd, ArgminConj, ArgminDot, ArgminL1Norm, ArgminL2Norm, ArgminMinMax, ArgminMul,
    ArgminSignum, ArgminSub, ArgminZeroLike,
};
use candle_core::{DType, Tensor};
use hessfree_model::linop::vec;

thread_local! {
    static DEFERRED: RefCell<Option<String>> = const { RefCell::new(None) };
}

/// Records the first error raised inside an argmin-math trait on this thread.
pub fn defer_error(message: String) {
    DEFERRED.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(message);
        }
    });
}

/// Takes the error recorded by [`defer_error`], if any.
pub fn take_deferred_error() -> Option<String> {
    DEFERRED.with(|d| d.borrow_mut().take())
}

/// A flat parameter (or gradient, or direction) vector.
#[derive(Clone, Debug)]
pub struct Params(pub Tensor);

impl Params {
    /// The wrapped vector.
    pub fn tensor(&self) -> &Tensor {
        &self.0
    }

    /// The wrapped vector, by value.
    pub fn into_tensor(self) -> Tensor {
        self.0
    }

    fn nan_like(t: &Tensor) -> Tensor {
        t.affine(0.0, f64::NAN).unwrap_or_else(|_| t.clone())
    }

    /// Unwraps a candle result, deferring its error.
    fn or_defer(&self, r: candle_core::Result<Tensor>) -> Params {
        match r {
            Ok(t) => Params(t),
            Err(e) => {
                defer_error(format!("vector operation failed: {e}"));
                Params(Self::nan_like(&self.0))
            }
        }
    }

    fn scalar(&self, r: hessfree_model::Result<f64>) -> f64 {
        r.unwrap_or_else(|e| {
            defer_error(format!("vector reduction failed: {e}"));
            f64::NAN
        })
    }
}

impl From<Tensor> for Params {
    fn from(t: Tensor) -> Self {
        Params(t)
    }
}

impl ArgminAdd<Params, Params> for Params {
    fn add(&self, other: &Params) -> Params {
        self.or_defer(&self.0 + &other.0)
    }
}

impl ArgminSub<Params, Params> for Params {
    fn sub(&self, other: &Params) -> Params {
        self.or_defer(&self.0 - &other.0)
    }
}

impl ArgminAdd<f64, Params> for Params {
    fn add(&self, other: &f64) -> Params {
        self.or_defer(self.0.affine(1.0, *other))
    }
}

impl ArgminSub<f64, Params> for Params {
    fn sub(&self, other: &f64) -> Params {
        self.or_defer(self.0.affine(1.0, -*other))
    }
}

impl ArgminMul<f64, Params> for Params {
    fn mul(&self, other: &f64) -> Params {
        self.or_defer(self.0.affine(*other, 0.0))
    }
}

/// argmin's blanket `ScaledAdd` multiplies with the scalar on the left.
impl ArgminMul<Params, Params> for f64 {
    fn mul(&self, other: &Params) -> Params {
        other.or_defer(other.0.affine(*self, 0.0))
    }
}

impl ArgminMul<Params, Params> for Params {
    fn mul(&self, other: &Params) -> Params {
        self.or_defer(&self.0 * &other.0)
    }
}

impl ArgminDot<Params, f64> for Params {
    fn dot(&self, other: &Params) -> f64 {
        self.scalar(vec::dot(&self.0, &other.0))
    }
}

impl ArgminL2Norm<f64> for Params {
    fn l2_norm(&self) -> f64 {
        self.scalar(vec::norm(&self.0))
    }
}

impl ArgminL1Norm<f64> for Params {
    fn l1_norm(&self) -> f64 {
        let r = self
            .0
            .abs()
            .and_then(|a| a.sum_all())
            .and_then(|s| s.to_dtype(DType::F64))
            .and_then(|s| s.to_scalar::<f64>());
        self.scalar(r.map_err(Into::into))
    }
}

impl ArgminZeroLike for Params {
    fn zero_like(&self) -> Params {
        self.or_defer(self.0.zeros_like())
    }
}

impl ArgminConj for Params {
    fn conj(&self) -> Params {
        self.clone()
    }
}

impl ArgminSignum for Params {
    fn signum(self) -> Params {
        let r = self.0.sign();
        self.or_defer(r)
    }
}

impl ArgminMinMax for Params {
    fn min(x: &Params, y: &Params) -> Params {
        x.or_defer(x.0.minimum(&y.0))
    }

    fn max(x: &Params, y: &Params) -> Params {
        x.or_defer(x.0.maximum(&y.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use argmin_math::ArgminScaledAdd;
    use candle_core::Device;

    #[test]
    fn arithmetic_matches_plain_vectors() {
        let a = Params(Tensor::new(&[1f64, -2., 3.], &Device::Cpu).unwrap());
        let b = Params(Tensor::new(&[0.5f64, 4., -1.], &Device::Cpu).unwrap());
        assert_eq!(a.dot(&b), 0.5 - 8.0 - 3.0);
        assert_eq!(a.l1_norm(), 6.0);
        assert!((a.l2_norm() - 14f64.sqrt()).abs() < 1e-15);
        let c = a.scaled_add(&2.0, &b);
        assert_eq!(c.0.to_vec1::<f64>().unwrap(), vec![2., 6., 1.]);
        assert_eq!(
            a.clone().signum().0.to_vec1::<f64>().unwrap(),
            vec![1., -1., 1.]
        );
        assert_eq!(
            Params::max(&a, &b).0.to_vec1::<f64>().unwrap(),
            vec![1., 4., 3.]
        );
        assert_eq!(
            ArgminSub::<f64, Params>::sub(&a, &1.0)
                .0
                .to_vec1::<f64>()
                .unwrap(),
            vec![0., -3., 2.]
        );
        assert!(take_deferred_error().is_none());
    }

    #[test]
    fn shape_errors_are_deferred_not_panics() {
        let a = Params(Tensor::new(&[1f64, 2.], &Device::Cpu).unwrap());
        let b = Params(Tensor::new(&[1f64, 2., 3.], &Device::Cpu).unwrap());
        let c = a.add(&b);
        assert!(c.0.to_vec1::<f64>().unwrap().iter().all(|x| x.is_nan()));
        let err = take_deferred_error().expect("error recorded");
        assert!(err.contains("shape"), "{err}");
        assert!(take_deferred_error().is_none(), "taken once");
    }
}
