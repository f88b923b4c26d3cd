#!/usr/bin/env bash
# Reruns every committed comparison report from scratch (long: about an hour
# on two cores, plus 65 minutes for the deep autoencoder, 25 for K-FAC against Adam on it and 5 for the projection). `cargo xtask report` only re-renders them from their data.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

cargo xtask compare --optimizers 'sgd,sgd@init=normal:0.1,sgd@init=normal:0.1;laplace=0.001' \
    --model softmax-nobias --l2 0 --dtype f32 --out docs/reports/seed-sgd \
    --title "The notebook's SGD runs (1000 steps, batch 100, lr 0.5)" \
    --reference sgd=0.9123 --reference 'sgd@init=normal:0.1=0.9146' \
    --reference 'sgd@init=normal:0.1;laplace=0.001=0.9113'

cargo xtask compare \
    --optimizers 'newton-cg,newton-cg@curvature_dtype=f32,trust-region,lbfgs,dense-newton,dense-newton@hessian_batch=1000;max_time=240,sgd' \
    --model softmax --l2 1e-4 --dtype f64 --grad-tol 1e-8 --max-iters 500 --max-time 900 \
    --out docs/reports/newton-vs-sgd-l2 \
    --title "L2-regularised softmax regression on MNIST (lam = 1e-4, f64): five optimisers"

cargo xtask compare --optimizers newton-cg,trust-region,sgd \
    --model softmax-nobias --l2 0 --laplace 1e-3 --init normal:0.1 --dtype f64 \
    --grad-tol 1e-7 --max-iters 500 --max-time 240 --out docs/reports/laplace-newton \
    --title "Newton with the notebook's Laplacian penalty (eps = 1e-3)"

# About 20 minutes. Removing the directory first drops weight files of runs
# that are no longer in the report.
rm -rf docs/reports/mlp
cargo xtask compare --optimizers 'newton-cg,newton-cg@preconditioner=kfac,hf@hessian_fraction=1,kfac,lbfgs,sgd@lr=0.03|0.1|0.3,adam@lr=3e-4|1e-3|3e-3' \
    --model mlp:256 --activation tanh --init glorot --l2 1e-4 --dtype f32 \
    --curvature ggn --hessian-fraction 0.1 --grad-tol 0 --max-iters 100000 --max-time 120 --grid-time 40 \
    --sgd-steps 1000000 --sgd-eval-every 500 --sgd-momentum 0.9 \
    --out docs/reports/mlp \
    --title "MLP 784-256-10 (tanh): Gauss-Newton Newton-CG (plain and K-FAC-preconditioned), Martens' HF, K-FAC, L-BFGS, SGD and Adam, 120 s each"

# The deep autoencoder (about 65 minutes). Resumable: after an interruption,
# rerun this command with `--resume docs/reports/deep-autoencoder` added.
# Removing the directory first drops weight files of runs no longer in it.
rm -rf docs/reports/deep-autoencoder
cargo xtask compare \
    --optimizers 'adam@lr=1e-3|3e-3|1e-2;checkpoint_every=2000,sgd@lr=0.003|0.01|0.03;checkpoint_every=2000,hf,hf@curvature_batch=2000,hf@gradient_batch=3000;curvature_batch=500;trace_every=5,kfac@model_batch=250;checkpoint_every=100;trace_every=50' \
    --model autoencoder:400,200,100,50,25,6 --init sparse --l2 1e-5 --dtype f32 --curvature ggn \
    --grad-tol 0 --max-iters 100000 --sgd-steps 100000000 --sgd-eval-every 2000 --sgd-batch 100 \
    --sgd-momentum 0.9 --sgd-nesterov --grid-time 120 --max-time 480 --checkpoint-every 1 \
    --out docs/reports/deep-autoencoder \
    --title "Deep autoencoder 784-400-200-100-50-25-6 (mirrored) on MNIST: HF, K-FAC, Adam and SGD with Nesterov momentum, 480 s each" \
    --rationale "The shape is Martens' CURVES autoencoder (ICML 2010), 400-200-100-50-25-6 and its mirror: five logistic layers on each side of a linear 6-unit code, with his sparse initialisation (15 non-zero incoming weights per unit). Deep, narrow nets of this kind are where Martens found gradient descent stalling on pathological curvature, so it is the test HF was designed for; it was not chosen to hurt the baselines, which get the same start and a learning-rate grid each. HF runs three ways: Martens' preset (curvature batches of 15000, gradient and line search on the full set), curvature batches of 2000, and his large-batch option (gradient, preconditioner and line search on 3000 rows, curvature on the first 500 of them; chosen from 15000/2000, 6000/1000 and 3000/500 in 240-s trial runs, where 3000/500 was lowest). K-FAC is adaptive with its statistics and quadratic model on 250 rows of each batch of 1000, the kfac-autoencoder report's setting. His MNIST shape, 784-1000-500-250-30 (2.8M parameters), would need days on two cores; this one has 0.84M parameters and fits a 75-minute report. The loss is his: sigmoid cross-entropy against the pixels, mean over cases, with a small L2 penalty (1e-5); the reconstruction error is his squared error per case."

# K-FAC against Adam on the same autoencoder, for the K-FAC issue's target
# (Adam's final training error in a third of Adam's time); about 25 minutes.
cargo xtask compare \
    --optimizers 'adam@lr=1e-3;checkpoint_every=2000,kfac@model_batch=250;checkpoint_every=100;trace_every=50' \
    --model autoencoder:400,200,100,50,25,6 --init sparse --l2 1e-5 --dtype f32 --curvature ggn \
    --grad-tol 0 --max-iters 100000 --sgd-steps 100000000 --sgd-eval-every 2000 --sgd-batch 100 \
    --sgd-momentum 0.9 --sgd-nesterov --max-time 480 --checkpoint-every 1 \
    --out docs/reports/kfac-autoencoder \
    --title "K-FAC against Adam on the deep autoencoder 784-400-200-100-50-25-6 (mirrored), 480 s each" \
    --rationale "The K-FAC issue's target: reach Adam's final training reconstruction error in at most a third of Adam's solver time. Network, start (sparse initialisation), loss (sigmoid cross-entropy, L2 1e-5) and budget are the deep-autoencoder report's. Adam runs at lr 1e-3, the best point of that report's grid (1e-3, 3e-3, 1e-2), with PyTorch's other defaults and batches of 100. K-FAC is adaptive (learning rate and momentum from its quadratic model), with batches of 1000, statistics on 250 rows of each, the quadratic model's two Gauss-Newton products on the same 250 rows (model_batch) and inverses every 20 steps. K-FAC's training error is traced every 50 steps, so the time it first reaches Adam's error is known to within one trace interval, about 10 s."

# Martens' MNIST autoencoder, 784-1000-500-250-30: timed pieces and three HF
# iterations, and a full run projected from them (about 5 minutes).
cargo xtask project --hf-iters 3 --out docs/reports/martens-projection

# The MPI scaling study (about 1 minute; needs scripts/install-mpi.sh).
cargo run --quiet -p xtask --features mpi -- mpi-study --out docs/reports/mpi
