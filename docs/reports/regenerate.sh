#!/usr/bin/env bash
# Reruns every committed comparison report from scratch (long: about an hour
# on two cores). `cargo xtask report` only re-renders them from their data.
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

cargo xtask compare --optimizers newton-cg,lbfgs,sgd \
    --model mlp:256 --activation tanh --init glorot --l2 1e-4 --dtype f32 \
    --curvature ggn --hessian-fraction 0.1 --grad-tol 0 --max-iters 100000 --max-time 120 \
    --sgd-steps 1000000 --sgd-eval-every 500 --sgd-lr 0.1 --sgd-momentum 0.9 \
    --out docs/reports/mlp \
    --title "MLP 784-256-10 (tanh): Gauss-Newton Newton-CG vs SGD vs L-BFGS, 120 s each"
