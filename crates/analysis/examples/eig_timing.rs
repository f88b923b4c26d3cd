//! Times faer's self-adjoint eigenvalue routine (values only) on an n x n
//! symmetric matrix, n = 7840 by default: the cost that decides how the rank
//! study of `cargo xtask hessian` is planned.
//!
//! `cargo run -p hessfree-analysis --example eig_timing -- 7840`
use std::time::Instant;
fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse().unwrap())
        .unwrap_or(7840);
    // A random PSD-ish symmetric matrix: B Bᵀ with B n x 600.
    let b = faer::Mat::<f64>::from_fn(n, 600, |i, j| {
        (((i * 7919 + j * 104729) % 1000) as f64) / 1000.0 - 0.5
    });
    let t = Instant::now();
    let a = &b * b.transpose();
    println!(
        "gram {n}: {:.2}s par={:?}",
        t.elapsed().as_secs_f64(),
        faer::get_global_parallelism()
    );
    let t = Instant::now();
    let ev = a.self_adjoint_eigenvalues(faer::Side::Lower).unwrap();
    println!(
        "eigenvalues {n}: {:.2}s max {}",
        t.elapsed().as_secs_f64(),
        ev[n - 1]
    );
}
