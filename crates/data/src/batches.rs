//! Seeded shuffling, mini-batches and sub-samples.
//!
//! All randomness comes from ChaCha8 keyed by the user's seed, with one
//! ChaCha stream per purpose (stream `e` shuffles epoch `e`; the last stream
//! draws sub-samples). ChaCha's output is fixed by its specification, and the
//! shuffle and the bounded draws are written out here rather than taken from
//! `rand`, whose algorithms may change between releases. A seed therefore
//! names the same batches in every build, and a checkpoint needs only
//! `(seed, epoch, position)` to resume exactly.

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};

/// ChaCha stream reserved for [`subsample_indices`]; epochs use streams from
/// 0 upward and will not reach it.
const SUBSAMPLE_STREAM: u64 = u64::MAX;

/// The generator for one (seed, stream) pair. The seed goes into the key
/// directly instead of through `seed_from_u64`, whose expansion is not part
/// of ChaCha's specification.
fn chacha(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(stream);
    rng
}

/// A uniform draw from `0..bound` without modulo bias (Lemire's method).
/// `bound` must be positive.
fn below(rng: &mut ChaCha8Rng, bound: usize) -> usize {
    let bound = bound as u64;
    // 2^64 mod bound: draws whose low word falls below it would over-represent
    // some results, so they are redrawn.
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let wide = u128::from(rng.next_u64()) * u128::from(bound);
        if (wide as u64) >= threshold {
            return (wide >> 64) as usize;
        }
    }
}

/// The order in which epoch `epoch` visits `0..len`: a Fisher-Yates shuffle
/// driven by ChaCha8 stream `epoch` of `seed`.
pub fn permutation(len: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut rng = chacha(seed, epoch);
    let mut perm: Vec<usize> = (0..len).collect();
    for i in (1..len).rev() {
        let j = below(&mut rng, i + 1);
        perm.swap(i, j);
    }
    perm
}

/// Everything needed to resume a [`BatchSampler`] exactly; small and plain
/// so that a checkpoint can store it field by field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SamplerState {
    /// Number of samples drawn from.
    pub len: usize,
    /// Samples per batch, in `1..=len`.
    pub batch_size: usize,
    /// Seed of the sample order; the same seed gives the same batches.
    pub seed: u64,
    /// The epoch being drawn; its order is `permutation(len, seed, epoch)`.
    pub epoch: u64,
    /// How far into this epoch's order the next batch starts, `0..=len`.
    pub position: usize,
}

/// Mini-batches in the manner of TensorFlow's `mnist.train.next_batch`, which
/// the "MNIST with Newton's Method" notebook trains with.
///
/// Each epoch walks a fresh permutation of the samples. When the rest of an
/// epoch is shorter than a batch, the batch takes that rest and fills up
/// from the start of the next, freshly shuffled epoch, so no sample is
/// skipped and every batch is full. As in TensorFlow, an epoch that ends
/// exactly on a batch boundary rolls over on the following call.
///
/// The sampler yields indices; pair it with [`crate::Dataset::select`] or
/// index tensors directly.
#[derive(Clone, Debug)]
pub struct BatchSampler {
    state: SamplerState,
    /// Cache of `permutation(len, seed, state.epoch)`.
    order: Vec<usize>,
}

impl BatchSampler {
    /// A sampler at the start of epoch 0. `batch_size` must be in `1..=len`.
    pub fn new(len: usize, batch_size: usize, seed: u64) -> Result<Self> {
        Self::restore(SamplerState {
            len,
            batch_size,
            seed,
            epoch: 0,
            position: 0,
        })
    }

    /// Resumes from a state saved with [`BatchSampler::state`]; the batches
    /// that follow are the ones the saved sampler would have produced.
    pub fn restore(state: SamplerState) -> Result<Self> {
        if state.batch_size == 0 || state.batch_size > state.len {
            return Err(DataError::InvalidBatchSize {
                batch_size: state.batch_size,
                len: state.len,
            });
        }
        if state.position > state.len {
            return Err(DataError::InvalidSamplerState {
                reason: format!(
                    "position {} is past the end of an epoch of {} samples",
                    state.position, state.len
                ),
            });
        }
        let order = permutation(state.len, state.seed, state.epoch);
        Ok(BatchSampler { state, order })
    }

    /// The state to checkpoint.
    pub fn state(&self) -> SamplerState {
        self.state
    }

    /// The epoch being drawn, counting from 0: TensorFlow's
    /// `epochs_completed`.
    pub fn epoch(&self) -> u64 {
        self.state.epoch
    }

    /// Samples per batch, as given to [`BatchSampler::new`].
    pub fn batch_size(&self) -> usize {
        self.state.batch_size
    }

    /// The current epoch's order of visiting the samples.
    pub fn epoch_order(&self) -> &[usize] {
        &self.order
    }

    /// The next batch of `batch_size` sample indices.
    pub fn next_batch(&mut self) -> Vec<usize> {
        let mut batch = Vec::with_capacity(self.state.batch_size);
        self.next_batch_into(&mut batch);
        batch
    }

    /// Like [`BatchSampler::next_batch`], reusing `batch`'s allocation.
    pub fn next_batch_into(&mut self, batch: &mut Vec<usize>) {
        let s = &mut self.state;
        batch.clear();
        if s.position + s.batch_size > s.len {
            batch.extend_from_slice(&self.order[s.position..]);
            s.epoch += 1;
            s.position = 0;
            self.order = permutation(s.len, s.seed, s.epoch);
            tracing::trace!(epoch = s.epoch, "reshuffled for a new epoch");
        }
        let take = s.batch_size - batch.len();
        batch.extend_from_slice(&self.order[s.position..s.position + take]);
        s.position += take;
    }
}

/// Never ends: training loops decide when to stop, e.g. with `.take(1000)`.
impl Iterator for BatchSampler {
    type Item = Vec<usize>;

    fn next(&mut self) -> Option<Vec<usize>> {
        Some(self.next_batch())
    }
}

/// How many samples a sub-sample should hold.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SampleSize {
    /// An exact number of samples, at most the population.
    Count(usize),
    /// A fraction in [0, 1] of the population, rounded to the nearest count.
    Fraction(f64),
}

impl From<usize> for SampleSize {
    fn from(count: usize) -> Self {
        SampleSize::Count(count)
    }
}

impl From<f64> for SampleSize {
    fn from(fraction: f64) -> Self {
        SampleSize::Fraction(fraction)
    }
}

impl SampleSize {
    /// The number of samples this size means out of `n`.
    pub fn count_of(self, n: usize) -> Result<usize> {
        let count = match self {
            SampleSize::Count(c) => c,
            SampleSize::Fraction(f) if (0.0..=1.0).contains(&f) => (f * n as f64).round() as usize,
            SampleSize::Fraction(f) => {
                return Err(DataError::InvalidSubsample {
                    reason: format!("fraction {f}, expected a number in [0, 1]"),
                });
            }
        };
        if count > n {
            return Err(DataError::InvalidSubsample {
                reason: format!("{count} samples requested, expected at most {n}"),
            });
        }
        Ok(count)
    }
}

/// A deterministic random subset of `0..n`, sorted and without repeats, for
/// sub-sampled curvature.
///
/// Subsets drawn with the same seed are nested: the sample of size `k` is
/// contained in every larger one. Growing the curvature sample thus adds
/// points without replacing the ones already there.
pub fn subsample_indices(n: usize, size: impl Into<SampleSize>, seed: u64) -> Result<Vec<usize>> {
    let count = size.into().count_of(n)?;
    // A partial Fisher-Yates shuffle: position i receives a uniform pick from
    // what is left, so the first `count` positions are a uniform sample and
    // do not depend on `count`.
    let mut rng = chacha(seed, SUBSAMPLE_STREAM);
    let mut pool: Vec<usize> = (0..n).collect();
    for i in 0..count {
        let j = i + below(&mut rng, n - i);
        pool.swap(i, j);
    }
    pool.truncate(count);
    pool.sort_unstable();
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is_permutation(order: &[usize], len: usize) -> bool {
        let mut sorted = order.to_vec();
        sorted.sort_unstable();
        sorted == (0..len).collect::<Vec<_>>()
    }

    #[test]
    fn permutation_is_a_permutation_and_depends_on_seed_and_epoch() {
        let p = permutation(1000, 7, 0);
        assert!(is_permutation(&p, 1000));
        assert_ne!(p, (0..1000).collect::<Vec<_>>());
        assert_eq!(p, permutation(1000, 7, 0));
        assert_ne!(p, permutation(1000, 8, 0));
        assert_ne!(p, permutation(1000, 7, 1));
    }

    #[test]
    fn permutation_values_are_pinned() {
        // Guards the promise that a seed names the same batches in every
        // build: if this changes, old checkpoints and reported runs no longer
        // reproduce.
        assert_eq!(permutation(10, 42, 0), PINNED_SEED42_EPOCH0);
    }

    const PINNED_SEED42_EPOCH0: [usize; 10] = [7, 6, 5, 1, 0, 4, 8, 9, 2, 3];

    #[test]
    fn below_is_roughly_uniform() {
        let mut rng = chacha(1, 0);
        let mut counts = [0usize; 6];
        for _ in 0..60_000 {
            counts[below(&mut rng, 6)] += 1;
        }
        // Each count is Binomial(60000, 1/6): mean 10000, sd about 91.
        assert!(
            counts.iter().all(|&c| (9_500..10_500).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn each_epoch_covers_every_index_exactly_once() {
        // 10 samples, batch 3: batches straddle epoch ends at different
        // offsets, which is where a sampler would drop or repeat a sample.
        let (len, batch) = (10, 3);
        let mut sampler = BatchSampler::new(len, batch, 5).unwrap();
        let drawn: Vec<usize> = sampler.by_ref().take(20).flatten().collect();
        assert_eq!(drawn.len(), 60);
        for (e, epoch) in drawn.chunks(len).enumerate() {
            assert!(is_permutation(epoch, len), "epoch {e}: {epoch:?}");
            assert_eq!(epoch, permutation(len, 5, e as u64));
        }
        assert_eq!(sampler.epoch(), 5);
        assert_eq!(sampler.state().position, 10);
    }

    #[test]
    fn epochs_are_reshuffled() {
        let mut sampler = BatchSampler::new(100, 100, 3).unwrap();
        let first = sampler.next_batch();
        let second = sampler.next_batch();
        assert_eq!(sampler.epoch(), 1);
        assert_ne!(first, second);
        assert!(is_permutation(&second, 100));
    }

    #[test]
    fn same_seed_same_batches_other_seed_other_batches() {
        let a: Vec<_> = BatchSampler::new(55_000, 100, 11)
            .unwrap()
            .take(1200)
            .collect();
        let b: Vec<_> = BatchSampler::new(55_000, 100, 11)
            .unwrap()
            .take(1200)
            .collect();
        let c: Vec<_> = BatchSampler::new(55_000, 100, 12)
            .unwrap()
            .take(1200)
            .collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    #[test]
    fn restored_state_continues_identically() {
        let mut original = BatchSampler::new(17, 5, 99).unwrap();
        for _ in 0..9 {
            original.next_batch();
        }
        let saved = original.state();
        let mut resumed = BatchSampler::restore(saved).unwrap();
        assert_eq!(resumed.state(), saved);
        for _ in 0..20 {
            assert_eq!(original.next_batch(), resumed.next_batch());
        }
    }

    #[test]
    fn bad_batch_sizes_and_states_are_errors() {
        assert!(matches!(
            BatchSampler::new(10, 0, 1),
            Err(DataError::InvalidBatchSize { .. })
        ));
        assert!(matches!(
            BatchSampler::new(10, 11, 1),
            Err(DataError::InvalidBatchSize { .. })
        ));
        assert!(matches!(
            BatchSampler::new(0, 1, 1),
            Err(DataError::InvalidBatchSize { .. })
        ));
        let state = SamplerState {
            len: 10,
            batch_size: 2,
            seed: 0,
            epoch: 3,
            position: 11,
        };
        assert!(matches!(
            BatchSampler::restore(state),
            Err(DataError::InvalidSamplerState { .. })
        ));
    }

    #[test]
    fn subsample_is_sorted_unique_deterministic_and_nested() {
        let small = subsample_indices(60_000, 1_000, 4).unwrap();
        assert_eq!(small.len(), 1_000);
        assert!(small.windows(2).all(|w| w[0] < w[1]));
        assert!(small.iter().all(|&i| i < 60_000));
        assert_eq!(small, subsample_indices(60_000, 1_000, 4).unwrap());
        assert_ne!(small, subsample_indices(60_000, 1_000, 5).unwrap());
        let large = subsample_indices(60_000, 0.1, 4).unwrap();
        assert_eq!(large.len(), 6_000);
        assert!(small.iter().all(|i| large.binary_search(i).is_ok()));
    }

    #[test]
    fn subsample_edges() {
        assert_eq!(subsample_indices(5, 5, 0).unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(subsample_indices(5, 1.0, 0).unwrap(), vec![0, 1, 2, 3, 4]);
        assert!(subsample_indices(5, 0, 0).unwrap().is_empty());
        for bad in [
            SampleSize::Count(6),
            SampleSize::Fraction(1.5),
            SampleSize::Fraction(f64::NAN),
        ] {
            assert!(
                matches!(
                    subsample_indices(5, bad, 0),
                    Err(DataError::InvalidSubsample { .. })
                ),
                "{bad:?}"
            );
        }
    }
}
