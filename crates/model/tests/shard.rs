//! [`ShardedObjective`] over ranks simulated by threads (the MPI build runs
//! the same code across processes; xtask's `mpi` tests check that): for
//! 1, 2 and 3 ranks, on a softmax model and an MLP with an L2 penalty, the
//! loss, gradient, curvature products, diagonal and a sub-sample's
//! gradient agree with the one-process objective to 1e-12 relative, and
//! every rank gets the same bits. A rank whose parameters differ is caught.

use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use hessfree_model::shard::{CommCounts, CommStats};
use hessfree_model::{
    Activation, Batches, Collective, CurvatureKind, Init, KernelOptions, Model, ModelSpec,
    Objective, Penalty, ShardedObjective, objective_with_loss, shard_range,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

type R<T> = anyhow::Result<T>;

/// Ranks as threads: each sum is deposited, then added in rank order.
struct Threads {
    rank: usize,
    shared: Arc<Shared>,
    stats: CommStats,
}

struct Shared {
    size: usize,
    slots: Mutex<Vec<Vec<f64>>>,
    barrier: Barrier,
}

impl Threads {
    fn exchange(&self, local: Vec<f64>) -> Vec<Vec<f64>> {
        self.shared.slots.lock().unwrap()[self.rank] = local;
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().unwrap().clone();
        self.shared.barrier.wait();
        all
    }
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.shared.size
    }
    fn sum(&self, local: &[f64]) -> hessfree_model::Result<Vec<f64>> {
        let start = Instant::now();
        let all = self.exchange(local.to_vec());
        let mut total = all[0].clone();
        for part in &all[1..] {
            for (t, p) in total.iter_mut().zip(part) {
                *t += p;
            }
        }
        self.stats.record(8 * local.len() as u64, start);
        Ok(total)
    }
    fn gather_u64(&self, value: u64) -> hessfree_model::Result<Vec<u64>> {
        let all = self.exchange(vec![f64::from_bits(value)]);
        Ok(all.iter().map(|v| v[0].to_bits()).collect())
    }
    fn stats(&self) -> CommCounts {
        self.stats.read()
    }
}

const ROWS: usize = 23;
const INPUTS: usize = 6;
const CLASSES: usize = 3;

fn data() -> R<(Tensor, Tensor)> {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let x: Vec<f64> = (0..ROWS * INPUTS)
        .map(|_| rng.random_range(0.0..1.0))
        .collect();
    let mut y = vec![0f64; ROWS * CLASSES];
    for i in 0..ROWS {
        y[i * CLASSES + rng.random_range(0..CLASSES)] = 1.0;
    }
    Ok((
        Tensor::from_vec(x, (ROWS, INPUTS), &Device::Cpu)?,
        Tensor::from_vec(y, (ROWS, CLASSES), &Device::Cpu)?,
    ))
}

fn objective(model: &Model, x: &Tensor, y: &Tensor) -> R<Arc<dyn Objective>> {
    Ok(objective_with_loss(
        model,
        Batches::new(x, y, 4)?,
        vec![Penalty::L2 { lam: 0.03 }],
        &KernelOptions::default(),
        None,
    )?)
}

/// Everything the solvers ask of an objective, flattened to numbers.
fn evaluate(obj: &dyn Objective, w: &Tensor, v: &Tensor) -> R<Vec<f64>> {
    let flat = |t: Tensor| -> R<Vec<f64>> { Ok(t.flatten_all()?.to_vec1::<f64>()?) };
    let (f, g) = obj.loss_and_grad(w)?;
    let mut out = vec![f, obj.loss(w)?];
    out.extend(flat(g)?);
    for kind in [CurvatureKind::Hessian, CurvatureKind::GaussNewton] {
        out.extend(flat(obj.curvature(w, kind)?.apply(v)?)?);
    }
    out.extend(flat(obj.diag_curvature(w)?)?);
    // Rows 0, 1 and 2 only: the other ranks hold none of them.
    let (fs, gs) = obj.subsample(&[2, 0, 1, 20])?.loss_and_grad(w)?;
    out.push(fs);
    out.extend(flat(gs)?);
    Ok(out)
}

fn max_relative(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs() / y.abs().max(1e-3))
        .fold(0.0, f64::max)
}

#[test]
fn sharded_sums_match_one_process_on_every_rank() -> R<()> {
    let (x, y) = data()?;
    for spec in ["softmax", "mlp:5"] {
        let model = Model::new(ModelSpec::parse(spec, Activation::Tanh)?, INPUTS, CLASSES)?;
        let w = model.init(Init::Glorot, 1, &Device::Cpu, DType::F64)?;
        let w = (w + 0.05)?;
        let v = Tensor::from_vec(
            (0..model.layout().len())
                .map(|i| ((i * 37 % 11) as f64 - 5.0) / 5.0)
                .collect::<Vec<_>>(),
            model.layout().len(),
            &Device::Cpu,
        )?;
        let single = evaluate(objective(&model, &x, &y)?.as_ref(), &w, &v)?;
        for size in 1..=3 {
            let shared = Arc::new(Shared {
                size,
                slots: Mutex::new(vec![Vec::new(); size]),
                barrier: Barrier::new(size),
            });
            let results: Vec<Vec<f64>> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..size)
                    .map(|rank| {
                        let (shared, model, x, y, w, v) = (
                            shared.clone(),
                            model.clone(),
                            x.clone(),
                            y.clone(),
                            w.clone(),
                            v.clone(),
                        );
                        s.spawn(move || -> R<Vec<f64>> {
                            let rows = shard_range(ROWS, size, rank);
                            let local = objective(
                                &model,
                                &x.narrow(0, rows.start, rows.len())?,
                                &y.narrow(0, rows.start, rows.len())?,
                            )?;
                            let comm = Arc::new(Threads {
                                rank,
                                shared,
                                stats: CommStats::default(),
                            });
                            let sharded =
                                ShardedObjective::new(local, comm, rows.start, ROWS, true)?;
                            evaluate(&sharded, &w, &v)
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap().unwrap())
                    .collect()
            });
            for (rank, r) in results.iter().enumerate() {
                assert_eq!(r.len(), single.len());
                let err = max_relative(r, &single);
                assert!(
                    err < 1e-12,
                    "{spec}, {size} ranks, rank {rank}: relative error {err:e}"
                );
                assert_eq!(
                    r.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    results[0].iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
                    "{spec}, {size} ranks: rank {rank} got other bits than rank 0"
                );
            }
        }
    }
    Ok(())
}

#[test]
fn ranks_with_different_parameters_are_caught() -> R<()> {
    let (x, y) = data()?;
    let model = Model::new(
        ModelSpec::parse("softmax", Activation::Tanh)?,
        INPUTS,
        CLASSES,
    )?;
    let shared = Arc::new(Shared {
        size: 2,
        slots: Mutex::new(vec![Vec::new(); 2]),
        barrier: Barrier::new(2),
    });
    let errors: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let (shared, model, x, y) = (shared.clone(), model.clone(), x.clone(), y.clone());
                s.spawn(move || -> R<String> {
                    let rows = shard_range(ROWS, 2, rank);
                    let local = objective(
                        &model,
                        &x.narrow(0, rows.start, rows.len())?,
                        &y.narrow(0, rows.start, rows.len())?,
                    )?;
                    let comm = Arc::new(Threads {
                        rank,
                        shared,
                        stats: CommStats::default(),
                    });
                    let sharded = ShardedObjective::new(local, comm, rows.start, ROWS, true)?;
                    let w = Tensor::full(rank as f64, model.layout().len(), &Device::Cpu)?;
                    Ok(match sharded.loss_and_grad(&w) {
                        Ok(_) => String::new(),
                        Err(e) => e.to_string(),
                    })
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap().unwrap())
            .collect()
    });
    for e in errors {
        assert!(
            e.contains("ranks diverged at gradient evaluation 0: rank 1"),
            "{e}"
        );
    }
    Ok(())
}
