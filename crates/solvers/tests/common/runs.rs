//! Running the mini-batch solvers in tests: checkpoints collected through
//! the file format, and results compared bit for bit.

use std::sync::{Arc, Mutex};

use candle_core::Tensor;
use hessfree_solvers::{Checkpointing, RunOutput, Snapshot, SolverError, TraceRecord};

/// Every checkpoint the run hands out, through the file format and back.
pub fn collecting(every: u64) -> (Checkpointing, Arc<Mutex<Vec<Snapshot>>>) {
    let saved = Arc::new(Mutex::new(Vec::new()));
    let sink = saved.clone();
    let ck = Checkpointing {
        every,
        sink: Arc::new(move |snap: &Snapshot| {
            let bytes = snap.encode()?;
            let back = Snapshot::decode(&bytes).map_err(SolverError::Config)?;
            sink.lock().unwrap().push(back);
            Ok(())
        }),
    };
    (ck, saved)
}

pub fn bits(t: &Tensor) -> Vec<u64> {
    t.to_vec1::<f64>()
        .unwrap()
        .iter()
        .map(|x| x.to_bits())
        .collect()
}

/// The trace without its clock, which differs from run to run.
pub fn untimed(out: &RunOutput) -> Vec<TraceRecord> {
    out.trace
        .iter()
        .cloned()
        .map(|mut r| {
            r.wall_seconds = 0.0;
            r
        })
        .collect()
}

/// Whether `a` is `b` to `rel` relative error in every entry (with a floor
/// of 1e-300 so that exact zeros compare).
pub fn close(a: &[f64], b: &[f64], rel: f64) -> bool {
    a.len() == b.len()
        && a.iter()
            .zip(b)
            .all(|(x, y)| (x - y).abs() <= rel * y.abs().max(1e-300))
}
