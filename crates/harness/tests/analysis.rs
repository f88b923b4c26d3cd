//! Tests of the analysis tools against dense matrices, with stated
//! tolerances, on crops of the bundled MNIST. Everything is f64 and small
//! enough to assemble. They live here, not in hessfree-analysis, because
//! that crate depends on the model crate alone and these need the data
//! crate's reader; the spy plots of the harness's Hessian study are tested
//! on the same crops.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};
use faer::Mat;
use hessfree_data::{Dataset, find_files, load_split};
use hessfree_model::linop::assemble_dense;
use hessfree_model::{
    Activation, Batches, CgOptions, CgStop, CurvatureKind, Damped, Init, LinOp, Model, ModelSpec,
    Objective, Penalty, SoftmaxObjective, conjugate_gradient, objective_for,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use hessfree_analysis::*;
use hessfree_harness::hessian::{HessianOrder, hessian_spy_mask};

type R<T> = anyhow::Result<T>;

const DEV: Device = Device::Cpu;

/// The bundled MNIST test split, loaded once.
fn mnist_test() -> &'static Dataset {
    static DATA: OnceLock<Dataset> = OnceLock::new();
    DATA.get_or_init(|| {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/mnist");
        let files = find_files(&dir).expect("bundled MNIST files");
        load_split(&files.test, 10).expect("bundled MNIST test split")
    })
}

/// Rows `rows` of MNIST test, cropped to the `side x side` centre patch
/// (so that the Hessian is small enough to assemble), as `(x, one_hot)`.
fn mnist_crop(rows: &[usize], side: usize) -> R<(Tensor, Tensor)> {
    let data = mnist_test();
    let off = (28 - side) / 2;
    let mut x = Vec::with_capacity(rows.len() * side * side);
    let mut y = vec![0f64; rows.len() * 10];
    for (i, &r) in rows.iter().enumerate() {
        let img = data.image(r);
        for a in 0..side {
            for b in 0..side {
                x.push(img[(off + a) * 28 + off + b] as f64 / 255.0);
            }
        }
        y[i * 10 + data.labels[r] as usize] = 1.0;
    }
    Ok((
        Tensor::from_vec(x, (rows.len(), side * side), &DEV)?,
        Tensor::from_vec(y, (rows.len(), 10), &DEV)?,
    ))
}

fn softmax_obj(
    x: &Tensor,
    y: &Tensor,
    bias: bool,
    penalties: Vec<Penalty>,
) -> R<(Model, SoftmaxObjective)> {
    let model = Model::new(ModelSpec::Softmax { bias }, x.dim(1)?, 10)?;
    let obj = SoftmaxObjective::new(model.clone(), Batches::new(x, y, 64)?, penalties)?;
    Ok((model, obj))
}

fn dense_eigenvalues(op: &dyn LinOp) -> R<Vec<f64>> {
    let m = assemble_dense(op, &DEV, DType::F64)?;
    let sym = Mat::from_fn(m.nrows(), m.ncols(), |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    Ok(symmetric_eigenvalues(sym.as_ref())?)
}

/// Distinct values of an ascending list (gaps above `tol` start a new one).
fn distinct(values: &[f64], tol: f64) -> Vec<f64> {
    let mut out: Vec<f64> = Vec::new();
    for &v in values {
        if out.last().is_none_or(|&l| v - l > tol) {
            out.push(v);
        }
    }
    out
}

fn rel_err(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs()
}

/// A softmax Hessian on a 64-pixel crop of 200 MNIST images with an L2
/// term: 640 x 640, eigenvalue `lam` on the softmax-shift and dead-pixel
/// directions, everything else above it.
fn softmax_640() -> R<(SoftmaxObjective, Tensor)> {
    let rows: Vec<usize> = (0..200).collect();
    let (x, y) = mnist_crop(&rows, 8)?;
    let (model, obj) = softmax_obj(&x, &y, false, vec![Penalty::L2 { lam: 1e-3 }])?;
    let w = model.init(Init::TruncatedNormal { std: 0.1 }, 3, &DEV, DType::F64)?;
    Ok((obj, w))
}

#[test]
fn lanczos_extremes_match_dense_softmax() -> R<()> {
    let (obj, w) = softmax_640()?;
    let op = obj.curvature(&w, CurvatureKind::Hessian)?;
    let dense = dense_eigenvalues(op.as_ref())?;
    let n = dense.len();
    assert_eq!(n, 640);
    let norm = dense[n - 1];

    // A partial run: the top five converge first, to 1e-8 relative, and the
    // reported bound covers the actual error.
    let run = lanczos(op.as_ref(), 120, 11, &DEV, DType::F64)?;
    assert_eq!(run.steps(), 120);
    assert!(!run.breakdown);
    for (i, r) in run.largest(5).iter().enumerate() {
        let exact = dense[n - 1 - i];
        let err = (r.value - exact).abs();
        assert!(err <= 1e-8 * exact, "top {i}: {} vs {exact}", r.value);
        assert!(
            err <= r.residual + 1e-12 * norm,
            "bound {} < error {err}",
            r.residual
        );
    }
    // Ritz values interlace: never outside the spectrum.
    let (lo, hi) = run.extremes();
    assert!(lo >= dense[0] - 1e-12 * norm && hi <= norm * (1.0 + 1e-12));

    // Run to exhaustion: full reorthogonalisation detects the invariant
    // Krylov space (one copy of each distinct eigenvalue) and stops; then the
    // smallest Ritz value is λ_min = lam, and the top five are exact.
    let full = lanczos(op.as_ref(), 640, 12, &DEV, DType::F64)?;
    let distinct_dense = distinct(&dense, 1e-10 * norm);
    assert!(full.breakdown, "no breakdown after {} steps", full.steps());
    // λ = lam has multiplicity ≥ 64, so the space is exhausted well before
    // 640 steps (near the number of distinct eigenvalues; rounding can
    // separate eigenvalues that agree to 1e-10).
    assert!(full.steps() < 600 && full.steps() + 10 >= distinct_dense.len());
    let bottom = full.smallest(1)[0].value;
    assert!(
        rel_err(bottom, dense[0]) <= 1e-8,
        "{bottom} vs {}",
        dense[0]
    );
    assert!(rel_err(dense[0], 1e-3) <= 1e-8, "λ_min is the L2 strength");
    for (i, r) in full.largest(5).iter().enumerate() {
        assert!(rel_err(r.value, dense[n - 1 - i]) <= 1e-8);
    }
    // Quadrature weights of a unit start vector sum to one.
    let total: f64 = full.weights.iter().sum();
    assert!((total - 1.0).abs() < 1e-10);
    Ok(())
}

/// A small tanh MLP: indefinite, generic spectrum (no repeated eigenvalues).
fn tiny_mlp() -> R<(Arc<dyn Objective>, Tensor)> {
    let rows: Vec<usize> = (0..60).collect();
    let (x, y) = mnist_crop(&rows, 3)?;
    let model = Model::new(ModelSpec::mlp(&[6], Activation::Tanh), 9, 10)?;
    let obj = objective_for(&model, Batches::new(&x, &y, 16)?, vec![])?;
    let w = model.init(Init::TruncatedNormal { std: 0.8 }, 5, &DEV, DType::F64)?;
    Ok((obj, w))
}

#[test]
fn lanczos_extremes_match_dense_mlp_both_ends() -> R<()> {
    let (obj, w) = tiny_mlp()?;
    let op = obj.curvature(&w, CurvatureKind::Hessian)?;
    let dense = dense_eigenvalues(op.as_ref())?;
    let n = dense.len(); // 9*6 + 6 + 6*10 + 10 = 130
    assert_eq!(n, 130);
    assert!(dense[0] < 0.0, "the MLP Hessian should be indefinite here");
    let run = lanczos(op.as_ref(), 100, 21, &DEV, DType::F64)?;
    for (i, r) in run.largest(3).iter().enumerate() {
        assert!(
            rel_err(r.value, dense[n - 1 - i]) <= 1e-8,
            "top {i}: {} vs {}",
            r.value,
            dense[n - 1 - i]
        );
    }
    for (i, r) in run.smallest(3).iter().enumerate() {
        assert!(
            rel_err(r.value, dense[i]) <= 1e-8,
            "bottom {i}: {} vs {}",
            r.value,
            dense[i]
        );
    }
    Ok(())
}

#[test]
fn hutchinson_interval_covers_the_exact_trace() -> R<()> {
    let (obj, w) = softmax_640()?;
    let op = obj.curvature(&w, CurvatureKind::Hessian)?;
    let m = assemble_dense(op.as_ref(), &DEV, DType::F64)?;
    let exact: f64 = (0..m.nrows()).map(|i| m[(i, i)]).sum();
    let seeds = 40;
    let mut covered = 0;
    let mut means = 0.0;
    for seed in 0..seeds {
        let est = hutchinson_trace(op.as_ref(), 30, 1000 + seed, &DEV, DType::F64)?;
        assert_eq!(est.samples, 30);
        assert!(est.ci95.0 < est.mean && est.mean < est.ci95.1);
        if est.ci95.0 <= exact && exact <= est.ci95.1 {
            covered += 1;
        }
        means += est.mean / seeds as f64;
    }
    // Nominal 95%: at least 36 of 40 (P(fewer) ≈ 0.14 for a true 95%
    // interval, but the seeds are fixed, so this is deterministic).
    assert!(
        covered >= 36,
        "{covered}/40 intervals cover the exact trace {exact}"
    );
    // The average of 40 estimates (1200 probes) is within 1% of the truth.
    assert!(rel_err(means, exact) < 0.01, "{means} vs {exact}");
    Ok(())
}

#[test]
fn slq_is_a_probability_measure_inside_the_spectrum() -> R<()> {
    let (obj, w) = softmax_640()?;
    let op = obj.curvature(&w, CurvatureKind::Hessian)?;
    let dense = dense_eigenvalues(op.as_ref())?;
    let exact_trace: f64 = dense.iter().sum();
    let slq = slq_density(op.as_ref(), 20, 30, 5, &DEV, DType::F64)?;
    let total: f64 = slq.nodes.iter().map(|n| n.1).sum();
    assert!((total - 1.0).abs() < 1e-10);
    let (lo, hi) = (dense[0], dense[dense.len() - 1]);
    assert!(
        slq.nodes
            .iter()
            .all(|&(t, _)| t >= lo - 1e-12 && t <= hi + 1e-12)
    );
    // Its trace has Hutchinson's expectation; 20 probes land within 10%.
    assert!(rel_err(slq.trace(640), exact_trace) < 0.1);
    // Most of the mass sits at λ = lam = 1e-3: the shift and dead-pixel
    // directions, 64 + 9·(dead) of the 640 dimensions at least.
    let at_lam = dense.iter().filter(|&&l| l < 1e-3 * (1.0 + 1e-8)).count();
    assert!(at_lam >= 64);
    // The SLQ estimate of the spectral CDF at a few points matches the
    // dense fraction to 0.1 (20 probes, so a statistical tolerance).
    for t in [2e-3, 1e-2, 1e-1] {
        let mass = slq.mass_below(t);
        let frac = dense.iter().filter(|&&l| l <= t).count() as f64 / 640.0;
        assert!(
            (mass - frac).abs() < 0.1,
            "SLQ mass {mass} vs fraction {frac} below {t}"
        );
    }
    let density = gaussian_density(&slq.nodes, (hi - lo) * 0.01, 2000);
    let step = density[1].0 - density[0].0;
    let integral: f64 = density.iter().map(|p| p.1 * step).sum();
    assert!((integral - 1.0).abs() < 0.01, "{integral}");
    Ok(())
}

#[test]
fn rank_identity_on_small_mnist_batches() -> R<()> {
    // 10x10 centre crop: dim 1000, small enough to decompose quickly.
    for (batch, seed) in [(1, 0u64), (3, 1), (10, 2), (40, 3), (150, 4)] {
        let rows: Vec<usize> = (0..batch).map(|i| i * 7 + 1).collect();
        let (x, y) = mnist_crop(&rows, 10)?;
        let (model, obj) = softmax_obj(&x, &y, false, vec![])?;
        for init in [Init::Zeros, Init::TruncatedNormal { std: 0.1 }] {
            let w = model.init(init, seed, &DEV, DType::F64)?;
            let h = assemble_softmax_data_hessian(&obj, &w, true)?;
            let r = batch_rank(&h, &x)?;
            assert_eq!(r.dim, 1000);
            assert!(
                r.identity_holds,
                "batch {batch} {init}: rank {} vs 9·{}",
                r.hessian.rank, r.x.rank
            );
            assert_eq!(r.hessian.negative, 0);
            // A clear gap on both sides of the threshold.
            assert!(r.hessian.largest_below <= 0.1 * r.hessian.tolerance);
            assert_eq!(r.hessian.rank_tol_times_10, r.hessian.rank);
            assert_eq!(r.hessian.rank_tol_div_10, r.hessian.rank);
            assert!(
                r.hessian.margin_above() > 1e3,
                "margin {}",
                r.hessian.margin_above()
            );
            // The full matrix (dead pixels included) has the same rank.
            if batch <= 10 {
                let full = h.to_full();
                let ev = symmetric_eigenvalues(full.as_ref())?;
                assert_eq!(numerical_rank(&ev, 1000).rank, r.hessian.rank);
            }
        }
        if batch == 150 {
            // 150 images in 100 pixels: X's rank saturates below n.
            let r = batch_rank(
                &assemble_softmax_data_hessian(
                    &obj,
                    &model.init(Init::Zeros, 0, &DEV, DType::F64)?,
                    true,
                )?,
                &x,
            )?;
            assert!(r.x.rank < 150 && r.x.rank <= r.active_pixels);
        }
    }
    Ok(())
}

#[test]
fn assembly_matches_the_model_and_the_kronecker_form_at_zero() -> R<()> {
    let rows: Vec<usize> = (20..32).collect();
    let (x, y) = mnist_crop(&rows, 6)?;
    let (model, obj) = softmax_obj(&x, &y, false, vec![])?;
    let w = model.init(Init::TruncatedNormal { std: 0.1 }, 9, &DEV, DType::F64)?;
    let mine = assemble_softmax_data_hessian(&obj, &w, true)?;
    let theirs = hessfree_model::dense::softmax_data_hessian(&obj, &w)?;
    let full = mine.to_full();
    let scale = (0..360).map(|i| theirs[(i, i)].abs()).fold(0.0, f64::max);
    for i in 0..360 {
        for j in 0..360 {
            assert!((full[(i, j)] - theirs[(i, j)]).abs() <= 1e-13 * scale);
        }
    }
    // At W = 0, H = A ⊗ XᵀX/n: non-zero eigenvalues are σ_j(X)²/(nk), nine times each.
    let w0 = model.init(Init::Zeros, 0, &DEV, DType::F64)?;
    let h0 = assemble_softmax_data_hessian(&obj, &w0, true)?;
    let mut ev: Vec<f64> = h0.eigenvalues()?;
    let r = batch_rank(&h0, &x)?;
    ev.retain(|&l| l > r.hessian.tolerance);
    let sv = singular_values(hessfree_model::dense::tensor_to_mat(&x)?.as_ref())?;
    let mut expected: Vec<f64> = sv
        .iter()
        .take(r.x.rank)
        .flat_map(|s| std::iter::repeat_n(s * s / (12.0 * 10.0), 9))
        .collect();
    expected.sort_by(f64::total_cmp);
    assert_eq!(ev.len(), expected.len());
    for (a, b) in ev.iter().zip(&expected) {
        assert!((a - b).abs() <= 1e-12 * expected[expected.len() - 1]);
    }
    Ok(())
}

#[test]
fn cg_solves_spd_systems_and_flags_negative_curvature() -> R<()> {
    let (obj, w) = softmax_640()?;
    let op = obj.curvature(&w, CurvatureKind::Hessian)?;
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let b: Vec<f64> = (0..640).map(|_| rng.random_range(-1.0..1.0)).collect();
    let bt = Tensor::from_vec(b.clone(), 640, &DEV)?;
    let plain = |rtol, max_iters| CgOptions::plain(rtol, max_iters);
    let res = conjugate_gradient(op.as_ref(), &bt, None, None, &plain(1e-8, 2000))?;
    assert_eq!(res.stop, CgStop::Residual);
    let r = (op.apply(&res.x)? - &bt)?;
    let rel = hessfree_model::linop::vec::norm(&r)? / hessfree_model::linop::vec::norm(&bt)?;
    assert!(rel < 1e-7, "true residual {rel}");
    assert_eq!(res.residuals.len(), res.iters + 1);
    assert_eq!(res.direction_products(), res.iters);
    // A damped system is better conditioned: fewer iterations.
    let damped = Damped::new(op.clone(), 1e-1);
    let res2 = conjugate_gradient(&damped, &bt, None, None, &plain(1e-8, 2000))?;
    assert!(res2.stop == CgStop::Residual && res2.iters < res.iters);
    // An indefinite operator stops at negative curvature.
    let (mlp, wm) = tiny_mlp()?;
    let hm = mlp.curvature(&wm, CurvatureKind::Hessian)?;
    let bm = Tensor::ones(hm.dim(), DType::F64, &DEV)?;
    let res3 = conjugate_gradient(hm.as_ref(), &bm, None, None, &plain(1e-12, 500))?;
    assert!(matches!(
        res3.stop,
        CgStop::NegativeCurvature | CgStop::Residual
    ));
    // A right-hand side of the wrong length is refused.
    let short = Tensor::ones(3, DType::F64, &DEV)?;
    assert!(conjugate_gradient(op.as_ref(), &short, None, None, &plain(1e-8, 10)).is_err());
    Ok(())
}

#[test]
fn laplacian_penalty_extremes_and_the_certified_lambda_min() -> R<()> {
    let (rows, cols) = (5, 6);
    let rowsel: Vec<usize> = (0..30).collect();
    let data = mnist_test();
    // 30 pixels from a 5x6 window.
    let mut x = Vec::new();
    let mut y = vec![0f64; 300];
    for (i, &r) in rowsel.iter().enumerate() {
        let img = data.image(r);
        for a in 0..rows {
            for b in 0..cols {
                x.push(img[(12 + a) * 28 + 11 + b] as f64 / 255.0);
            }
        }
        y[i * 10 + data.labels[r] as usize] = 1.0;
    }
    let x = Tensor::from_vec(x, (30, 30), &DEV)?;
    let y = Tensor::from_vec(y, (30, 10), &DEV)?;
    let eps = 1e-3;
    let (model, obj) = softmax_obj(&x, &y, false, vec![Penalty::Laplacian { eps, rows, cols }])?;
    let q = assemble_dense(obj.regularizer().as_ref() as &dyn LinOp, &DEV, DType::F64)?;
    let qe = symmetric_eigenvalues(q.as_ref())?;
    let (lo, hi) = laplacian_gram_extremes(rows, cols);
    assert!(
        rel_err(qe[0], 2.0 * eps * lo) < 1e-10,
        "{} vs {}",
        qe[0],
        2.0 * eps * lo
    );
    assert!(rel_err(qe[qe.len() - 1], 2.0 * eps * hi) < 1e-10);
    // λ_min(H) = λ_min(Q): Weyl below (the data term is PSD), the Rayleigh
    // quotient of the smoothest shift direction above.
    let w = model.init(Init::TruncatedNormal { std: 0.1 }, 2, &DEV, DType::F64)?;
    let op = obj.curvature(&w, CurvatureKind::Hessian)?;
    let he = dense_eigenvalues(op.as_ref())?;
    let v = shift_direction(&laplacian_smoothest_mode(rows, cols), 10, 300);
    let rq = rayleigh_quotient(op.as_ref(), &v, &DEV, DType::F64)?;
    assert!(rel_err(rq, 2.0 * eps * lo) < 1e-10);
    assert!(
        rel_err(he[0], 2.0 * eps * lo) < 1e-8,
        "{} vs {}",
        he[0],
        2.0 * eps * lo
    );
    let cert = certify_lambda_min(&obj, &w)?;
    assert!(rel_err(cert.lower, he[0]) < 1e-8 && rel_err(cert.upper, he[0]) < 1e-8);

    // L2 without bias: λ_min = lam exactly; with a bias: 0 (the bias shift).
    let lam = 1e-3;
    for bias in [false, true] {
        let (model, obj) = softmax_obj(&x, &y, bias, vec![Penalty::L2 { lam }])?;
        let w = model.init(Init::TruncatedNormal { std: 0.1 }, 2, &DEV, DType::F64)?;
        let op = obj.curvature(&w, CurvatureKind::Hessian)?;
        let he = dense_eigenvalues(op.as_ref())?;
        let cert = certify_lambda_min(&obj, &w)?;
        let scale = he[he.len() - 1];
        assert!(cert.lower <= he[0] + 1e-12 * scale && he[0] <= cert.upper + 1e-12 * scale);
        let exact = if bias { 0.0 } else { lam };
        assert!((cert.upper - exact).abs() <= 1e-12 * scale && cert.lower == exact);
        assert!(
            (he[0] - exact).abs() <= 1e-12 * scale,
            "bias {bias}: {} vs {exact}",
            he[0]
        );
    }
    Ok(())
}

#[test]
fn numerical_rank_rule_and_t_quantiles() {
    let r = numerical_rank(&[0.0, 1e-17, 1e-9, 3.0, -2.0], 10);
    assert_eq!(r.rank, 3);
    assert_eq!(r.negative, 1);
    assert_eq!(r.tolerance, 3.0 * 10.0 * f64::EPSILON);
    assert_eq!(r.largest_below, 1e-17);
    assert_eq!(r.smallest_above, Some(1e-9));
    assert_eq!((r.rank_tol_times_10, r.rank_tol_div_10), (3, 3));
    let r = numerical_rank(&[1.0, 3e-15, 1e-14], 10);
    // tol = 2.2e-15: 3e-15 counts, 1e-14 counts; at 10x only 1.0; at /10 all.
    assert_eq!((r.rank, r.rank_tol_times_10, r.rank_tol_div_10), (3, 1, 3));
    assert_eq!(student_t_975(1), 12.706);
    assert!((student_t_975(29) - 2.045).abs() < 1e-9);
    // Expansion beyond the table: t_{0.975, 40} = 2.0211, t_{0.975, 120} = 1.9799.
    assert!((student_t_975(40) - 2.0211).abs() < 2e-4);
    assert!((student_t_975(120) - 1.9799).abs() < 2e-4);
}

#[test]
fn memory_accounting() -> R<()> {
    assert_eq!(dense_hessian_bytes(7840, 4), 245_862_400);
    assert_eq!(dense_hessian_bytes(7840, 8), 2 * 245_862_400);
    let (obj, w) = softmax_640()?;
    let m = measure_operator_memory(&obj, &w, CurvatureKind::Hessian, 3)?;
    assert_eq!(m.dim, 640);
    assert_eq!(m.products, 3);
    assert!(m.apply_seconds > 0.0);
    if cfg!(target_os = "linux") {
        let p = ProcMemory::read().expect("/proc/self/status");
        assert!(p.rss_bytes > 0 && p.hwm_bytes >= p.rss_bytes);
        assert!(m.rss_before.is_some() && m.working_bytes.is_some());
    }
    Ok(())
}

#[test]
fn spectrum_report_agrees_with_dense() -> R<()> {
    let (obj, w) = softmax_640()?;
    let opts = SpectrumOptions {
        lanczos_steps: 120,
        trace_probes: 20,
        slq_probes: 4,
        slq_steps: 20,
        ..SpectrumOptions::default()
    };
    let rep = spectrum_report(&obj, &w, CurvatureKind::Hessian, &opts)?;
    let op = obj.curvature(&w, CurvatureKind::Hessian)?;
    let dense = dense_eigenvalues(op.as_ref())?;
    assert!(rel_err(rep.largest[0].value, dense[639]) < 1e-8);
    assert_eq!(rep.products, 120 + 20 + 4 * 20);
    let c = &rep.conditions[1];
    assert_eq!(c.damping, 1e-4);
    let kappa = c.kappa.unwrap();
    // A lower bound on the true condition number.
    assert!(kappa <= (dense[639] + 1e-4) / (dense[0] + 1e-4) * (1.0 + 1e-10));
    assert!(rep.density.iter().all(|p| p.1 >= 0.0));
    Ok(())
}

#[test]
fn spy_pixels_match_the_zero_pattern() -> R<()> {
    // 36 pixels x 10 classes = 360; three images leave dead pixels.
    let rows = [3usize, 10, 44];
    let (x, y) = mnist_crop(&rows, 6)?;
    let (model, obj) = softmax_obj(&x, &y, false, vec![])?;
    for init in [Init::Zeros, Init::TruncatedNormal { std: 0.1 }] {
        let w = model.init(init, 1, &DEV, DType::F64)?;
        let h = assemble_softmax_data_hessian(&obj, &w, true)?;
        assert!(h.pixels.len() < 36, "the crop should have dead pixels");
        let full = h.to_full();
        let nz = |r: usize, c: usize| full[(r, c)] != 0.0;
        for order in [HessianOrder::PixelMajor, HessianOrder::ClassMajor] {
            let idx = |i: usize| order.flat_index(i, 36, 10);
            // Downsampled: each pixel dark iff its block has a non-zero.
            let mask = hessian_spy_mask(&h, order, 100)?;
            assert_eq!((mask.width(), mask.height()), (100, 100));
            let png = image::load_from_memory(&mask.to_png()?)?.to_luma8();
            for py in 0..100 {
                for px in 0..100 {
                    let (rs, cs) = mask.block(py, px).unwrap();
                    let any = rs.clone().any(|r| cs.clone().any(|c| nz(idx(r), idx(c))));
                    assert_eq!(mask.is_dark(py, px), any, "{order:?} ({py},{px})");
                    let luma = png.get_pixel(px as u32, py as u32).0[0];
                    assert_eq!(luma == 0, any);
                }
            }
            // Full resolution: one pixel per entry.
            let mask = hessian_spy_mask(&h, order, 360)?;
            let png = image::load_from_memory(&mask.to_png()?)?.to_luma8();
            for r in 0..360 {
                for c in 0..360 {
                    assert_eq!(
                        png.get_pixel(c as u32, r as u32).0[0] == 0,
                        nz(idx(r), idx(c))
                    );
                }
            }
            // A dead pixel's rows are white across the plot.
            let dead = (0..36).find(|j| !h.pixels.contains(j)).unwrap();
            let row = match order {
                HessianOrder::PixelMajor => dead * 10,
                HessianOrder::ClassMajor => dead,
            };
            assert!((0..360).all(|c| !mask.is_dark(row, c)));
        }
        // Random weights do not fill in zeros: same pattern at both inits.
        let w0 = model.init(Init::Zeros, 0, &DEV, DType::F64)?;
        let h0 = assemble_softmax_data_hessian(&obj, &w0, true)?.to_full();
        for i in 0..360 {
            for j in 0..360 {
                assert_eq!(h0[(i, j)] != 0.0, nz(i, j));
            }
        }
    }
    Ok(())
}
