#!/usr/bin/env python3
"""Peer benchmark: the same MNIST workloads as hessfree, run by established tools.

Why this exists
---------------
hessfree's speed claims are only meaningful next to what a careful user of
the usual tools would get on the same machine, in the same session. This
script measures those peer figures and writes them to one JSON file, so the
comparison is reproducible rather than copied from an old table:

* scikit-learn ``LogisticRegression(solver="newton-cg")`` on full MNIST: the
  whole-solver reference (wall time, Newton iterations, Hessian-vector
  products, final objective against the known optimum f*).
* JAX gradients, Hessian-vector products (HVPs) and Gauss-Newton products for
  softmax regression and a 784-256-10 tanh MLP: the per-step reference.
* numpy's closed-form softmax HVP: what a hand-written BLAS version costs.

Everything runs on 2 threads (BLAS, OpenMP and XLA), because the figures it
is compared with are 2-core figures.

Before timing anything the script checks its own kernels (JAX HVP against the
numpy closed form, against finite differences of the gradient, and the
Gauss-Newton product against the HVP where the two must agree); a failed
check stops the run, so a fast but wrong kernel is never reported.

Usage (from the repository root)::

    python peers/bench_peers.py                # full run, writes docs/reports/bench/peers.json
    python peers/bench_peers.py --quick        # small and fast, to test the script
    python peers/bench_peers.py --only jax/mlp --only sklearn
    python peers/bench_peers.py --list         # print the ids and exit

Only the standard library is imported at the top: the thread-count
environment variables must be set before numpy or JAX is first imported,
which happens in ``import_peers()``.
"""

import argparse
import datetime
import gzip
import inspect
import json
import math
import os
import platform
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import types
import warnings
import zlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

SCHEMA = 1
LAM = 1e-4  # L2 strength of the softmax-regression objective (DESIGN.md)
FSTAR = 0.25924829500842  # its optimum on full MNIST train, f64 (DESIGN.md)
TARGET_REL = 1e-6  # "time to 1e-6 relative of f*"
FULL_NS = (1000, 60000)  # row counts of the per-step benchmarks
QUICK_CAP = 2000  # --quick caps every n at this
MLP_HIDDEN = 256
N_CLASSES = 10

# Environment variables recorded as found (never changed by this script).
RECORDED_ENV = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_VERBOSE",
    "GOTO_NUM_THREADS",
    "JAX_PLATFORMS",
    "JAX_ENABLE_X64",
)

# Filled in by import_peers(), after the thread pins are in place.
np = None
jax = None
jnp = None


class PeerError(Exception):
    """A failure with a message meant for the user (bad data, missing package...)."""


# ---------------------------------------------------------------------------
# Threads and imports
# ---------------------------------------------------------------------------


def pin_threads(threads):
    """Set the thread counts of BLAS, OpenMP and XLA. Must run before numpy/JAX load.

    OpenBLAS, MKL and OpenMP read these variables once, when the library is
    loaded, so setting them later has no effect. XLA reads XLA_FLAGS when
    its CPU client starts. Any value already in the environment is replaced:
    the figures are only comparable at a fixed thread count.

    About XLA: ``--xla_cpu_multi_thread_eigen=true`` lets XLA use its Eigen
    thread pool; the token ``intra_op_parallelism_threads=N`` has no leading
    dashes and XLA ignores it (it is kept because it is the customary
    spelling). XLA sizes its pool from the CPUs this process may run on, so
    on a machine with more than ``threads`` cores, run the script under
    ``taskset -c 0,1``. The JSON records the pool size actually observed.
    """
    n = str(threads)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = n
    os.environ["XLA_FLAGS"] = (
        f"--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads={n}"
    )
    # CPU only: do not let JAX probe for accelerators.
    os.environ.setdefault("JAX_PLATFORMS", "cpu")


def import_peers():
    """Import numpy, JAX, scikit-learn and threadpoolctl, or fail with an install hint."""
    global np, jax, jnp
    try:
        import numpy
        import jax as jax_mod
        import jax.numpy as jnp_mod
        import sklearn  # noqa: F401
        import threadpoolctl  # noqa: F401
    except ImportError as e:
        raise PeerError(
            f"missing package ({e}). Install the pinned versions with:\n"
            "  python3 -m venv /tmp/peers-venv && "
            "/tmp/peers-venv/bin/pip install -r peers/requirements.txt\n"
            "and run the script with /tmp/peers-venv/bin/python."
        ) from e
    np, jax, jnp = numpy, jax_mod, jnp_mod
    # f64 results need x64 mode. It does not change f32 work: every array
    # below is created with an explicit dtype, and results are checked.
    jax.config.update("jax_enable_x64", True)


# ---------------------------------------------------------------------------
# MNIST from IDX files
# ---------------------------------------------------------------------------

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path):
    """Read one IDX file of unsigned bytes (gzip or raw) into a numpy array.

    Gzip is recognised by its magic bytes, not by the file name. Anything
    that is not a complete, well-formed IDX ubyte file is refused with the
    file's name in the message.
    """
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise PeerError(f"{path}: cannot read: {e.strerror}") from e
    if blob[:2] == b"\x1f\x8b":
        try:
            blob = gzip.decompress(blob)
        except (OSError, EOFError, zlib.error) as e:
            raise PeerError(f"{path}: corrupt gzip data: {e}") from e
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        raise PeerError(
            f"{path}: not an IDX file of unsigned bytes (header {blob[:4].hex()})"
        )
    ndim = blob[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(blob) < header:
        raise PeerError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", blob[4:header])
    want = header + math.prod(dims)
    if len(blob) != want:
        raise PeerError(
            f"{path}: IDX header says {dims} ({want} bytes) but the file has "
            f"{len(blob)} bytes (truncated or corrupt)"
        )
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)


def find_mnist_file(data_dir, name):
    """Path of ``name`` in data_dir, or of its uncompressed twin without ``.gz``."""
    for candidate in (data_dir / name, data_dir / name.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    raise PeerError(
        f"{data_dir / name}: missing (nor is there an uncompressed "
        f"{name.removesuffix('.gz')}); pass --data-dir"
    )


def load_mnist(data_dir):
    """Load MNIST train and test sets; pixels as uint8, labels as int64.

    Refuses a set whose pieces do not fit together: wrong image size, image
    and label counts that differ, labels outside 0..9, or a train/test set
    that is not the standard 60000/10000 (f* is only known for that).
    """
    arrays, paths = {}, {}
    for key, name in MNIST_FILES.items():
        paths[key] = find_mnist_file(data_dir, name)
        arrays[key] = read_idx(paths[key])
    for split, n_want in (("train", 60000), ("test", 10000)):
        imgs, labs = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        ip, lp = paths[f"{split}_images"], paths[f"{split}_labels"]
        if imgs.ndim != 3 or imgs.shape[1:] != (28, 28):
            raise PeerError(f"{ip}: expected N x 28 x 28 images, got shape {imgs.shape}")
        if labs.ndim != 1:
            raise PeerError(f"{lp}: expected a 1-d label file, got shape {labs.shape}")
        if imgs.shape[0] != labs.shape[0]:
            raise PeerError(
                f"{ip} has {imgs.shape[0]} images but {lp} has {labs.shape[0]} labels"
            )
        if imgs.shape[0] != n_want:
            raise PeerError(f"{ip}: expected {n_want} images, got {imgs.shape[0]}")
        if labs.max() >= N_CLASSES:
            raise PeerError(f"{lp}: label {int(labs.max())} is outside 0..9")
    return {
        "train_x": arrays["train_images"].reshape(60000, 784),
        "train_y": arrays["train_labels"].astype(np.int64),
        "test_x": arrays["test_images"].reshape(10000, 784),
        "test_y": arrays["test_labels"].astype(np.int64),
    }


def scaled(pixels, dtype):
    """Pixels as ``dtype`` in [0, 1] (x / 255), C-contiguous."""
    return np.ascontiguousarray(pixels.astype(dtype) / dtype(255))


def one_hot(labels, dtype):
    return np.eye(N_CLASSES, dtype=dtype)[labels]


# ---------------------------------------------------------------------------
# The models, in JAX
# ---------------------------------------------------------------------------
#
# Parameters are pytrees: (W, b) for softmax regression, (W1, b1, W2, b2)
# for the MLP. Data (X, one-hot Y) is always passed as an argument, never
# closed over, so that jit does not bake 190 MB of pixels into the program.


def softmax_logits(params, X):
    W, b = params
    return X @ W + b


def mlp_logits(params, X):
    W1, b1, W2, b2 = params
    return jnp.tanh(X @ W1 + b1) @ W2 + b2


def mean_ce(Z, Y):
    """Mean softmax cross-entropy of logits Z against one-hot Y."""
    return -jnp.mean(jnp.sum(Y * jax.nn.log_softmax(Z, axis=1), axis=1))


def softmax_loss(params, X, Y):
    """hessfree's softmax-regression objective: mean CE + lam/2 ||W||^2 (bias free)."""
    W, _ = params
    return mean_ce(softmax_logits(params, X), Y) + 0.5 * LAM * jnp.sum(W * W)


def mlp_loss(params, X, Y):
    """Mean softmax cross-entropy of the MLP, no regulariser."""
    return mean_ce(mlp_logits(params, X), Y)


def make_grad(loss):
    return jax.jit(jax.grad(loss))


def make_hvp(loss):
    """Exact Hessian-vector product: forward-mode derivative of the gradient."""

    def hvp(params, v, X, Y):
        return jax.jvp(lambda p: jax.grad(loss)(p, X, Y), (params,), (v,))[1]

    return jax.jit(hvp)


def make_ggn(logits_fn):
    """Gauss-Newton product G v = J^T H_L J v of the mean softmax CE.

    J is the Jacobian of the logits with respect to the parameters, H_L the
    Hessian of the loss with respect to the logits, block diagonal over rows
    with blocks (diag(p) - p p^T) / n. J v comes from a jvp, J^T (.) from a
    vjp; under jit XLA shares the forward pass between the two.
    """

    def ggn(params, v, X, Y):
        f = lambda p: logits_fn(p, X)  # noqa: E731
        Jv = jax.jvp(f, (params,), (v,))[1]
        Z, pullback = jax.vjp(f, params)
        P = jax.nn.softmax(Z, axis=1)
        PJv = P * Jv
        HJv = (PJv - P * jnp.sum(PJv, axis=1, keepdims=True)) / Z.shape[0]
        return pullback(HJv)[0]

    return jax.jit(ggn)


# ---------------------------------------------------------------------------
# The softmax-regression objective in closed form, in numpy
# ---------------------------------------------------------------------------


def np_softmax(Z):
    E = np.exp(Z - Z.max(axis=1, keepdims=True))
    return E / E.sum(axis=1, keepdims=True)


def np_softmax_grad(W, b, X, Y):
    """Gradient of mean CE + lam/2 ||W||^2: X^T (P - Y) / n + lam W, colsum(P - Y) / n."""
    R = (np_softmax(X @ W + b) - Y) / X.shape[0]
    return X.T @ R + LAM * W, R.sum(axis=0)


def np_softmax_hvp_from_p(P, V, vb, X):
    """HVP given the class probabilities P: Z = XV + vb, R = P*Z - P*rowsum(P*Z)."""
    PZ = P * (X @ V + vb)
    R = (PZ - P * PZ.sum(axis=1, keepdims=True)) / X.shape[0]
    return X.T @ R + LAM * V, R.sum(axis=0)


def np_softmax_hvp(W, b, V, vb, X):
    """Full HVP from the parameters, P included (what one CG step costs)."""
    return np_softmax_hvp_from_p(np_softmax(X @ W + b), V, vb, X)


def np_objective(coef, intercept, X, y):
    """mean CE + lam/2 ||coef||^2 in f64; coef is (classes, features)."""
    Z = X @ coef.T + intercept
    zmax = Z.max(axis=1, keepdims=True)
    lse = np.log(np.exp(Z - zmax).sum(axis=1)) + zmax[:, 0]
    ce = np.mean(lse - Z[np.arange(len(y)), y])
    return float(ce + 0.5 * LAM * np.sum(coef * coef))


# ---------------------------------------------------------------------------
# Parameter points and timing
# ---------------------------------------------------------------------------


def softmax_point(dtype, seed=0):
    """A fixed, non-trivial point (W, b) and direction v for softmax regression."""
    rng = np.random.default_rng(seed)
    params = (0.01 * rng.standard_normal((784, N_CLASSES)), 0.01 * rng.standard_normal(N_CLASSES))
    v = (rng.standard_normal((784, N_CLASSES)), rng.standard_normal(N_CLASSES))
    cast = lambda t: tuple(a.astype(dtype) for a in t)  # noqa: E731
    return cast(params), cast(v)


def mlp_point(dtype, seed=1):
    """A fixed point (scaled Gaussian init) and direction v for the 784-256-10 MLP."""
    rng = np.random.default_rng(seed)
    h = MLP_HIDDEN
    params = (
        rng.standard_normal((784, h)) / math.sqrt(784),
        np.zeros(h),
        rng.standard_normal((h, N_CLASSES)) / math.sqrt(h),
        np.zeros(N_CLASSES),
    )
    v = tuple(rng.standard_normal(a.shape) for a in params)
    cast = lambda t: tuple(a.astype(dtype) for a in t)  # noqa: E731
    return cast(params), cast(v)


def to_device(tree):
    return jax.device_put(tree)


def time_call(fn, cfg):
    """Median/min/max wall time of fn() after ``cfg.warmup`` untimed calls.

    Runs ``cfg.repeats`` timed calls, but stops early (after at least
    ``cfg.min_repeats``) once the timed calls have used ``cfg.budget_s``, so
    that one-second kernels do not take minutes.
    """
    for _ in range(cfg.warmup):
        fn()
    times = []
    while len(times) < cfg.repeats:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= cfg.min_repeats and sum(times) >= cfg.budget_s:
            break
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "repeats": len(times),
    }


def check_dtype(tree, dtype, what):
    """Fail if a result came back in another precision than asked (x64 mode mix-ups)."""
    for leaf in jax.tree_util.tree_leaves(tree):
        if leaf.dtype != dtype:
            raise PeerError(f"{what}: result has dtype {leaf.dtype}, expected {dtype}")
        if not bool(jnp.all(jnp.isfinite(leaf))):
            raise PeerError(f"{what}: result is not finite")


def bench_jax(bench_id, fn, args, dtype, cfg):
    """Time a jitted JAX function; block_until_ready so the work is really done.

    The first call (tracing + XLA compilation + one run) is timed on its own
    and reported as first_call_s; it is not part of the median.
    """
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    first = time.perf_counter() - t0
    check_dtype(out, dtype, bench_id)
    stats = time_call(lambda: jax.block_until_ready(fn(*args)), cfg)
    return {"id": bench_id, **stats, "first_call_s": first}


# ---------------------------------------------------------------------------
# Self-checks of the kernels
# ---------------------------------------------------------------------------


def flat(tree):
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in tree])


def rel_err(a, b):
    a, b = flat(a), flat(b)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300))


def axpy(alpha, x, y):
    """y + alpha * x on pytrees."""
    return jax.tree_util.tree_map(lambda xi, yi: yi + alpha * xi, x, y)


def self_checks(data):
    """Check gradients, HVPs and Gauss-Newton products before timing them.

    * softmax: JAX gradient and HVP against the numpy closed form (f64, and
      f32 at a looser tolerance, since the f32 timings use the same code);
    * softmax: HVP against a central finite difference of the gradient;
    * softmax: Gauss-Newton product + lam v_W equals the HVP exactly (the
      logits are linear in the parameters), and matches the finite
      difference too;
    * MLP: HVP against a finite difference of the gradient;
    * MLP: u^T G v against (J u)^T H_L (J v) with J u, J v from finite
      differences of the logits (independent of the jvp/vjp code), plus
      symmetry and v^T G v >= 0.
    Returns a list of {name, rel_err, tol, ok}; raises PeerError on a failure.
    """
    checks = []

    def record(name, err, tol):
        checks.append({"name": name, "rel_err": err, "tol": tol, "ok": err <= tol})

    # Central differences in f64: truncation error ~eps^2, rounding ~1e-16/eps.
    # A wrong kernel (a missing term or factor) is off by O(1), far above the tolerances.
    eps = 1e-5

    # --- softmax regression, f64, 300 rows of real MNIST ---------------------
    n = 300
    X = scaled(data["train_x"][:n], np.float64)
    Y = one_hot(data["train_y"][:n], np.float64)
    params, v = softmax_point(np.float64)
    grad, hvp, ggn = make_grad(softmax_loss), make_hvp(softmax_loss), make_ggn(softmax_logits)
    g_j = grad(params, X, Y)
    h_j = hvp(params, v, X, Y)
    record("softmax f64: JAX grad vs numpy closed form", rel_err(g_j, np_softmax_grad(*params, X, Y)), 1e-12)
    record("softmax f64: JAX HVP vs numpy closed form", rel_err(h_j, np_softmax_hvp(*params, *v, X)), 1e-12)
    fd = jax.tree_util.tree_map(
        lambda a, b: (a - b) / (2 * eps),
        grad(axpy(eps, v, params), X, Y),
        grad(axpy(-eps, v, params), X, Y),
    )
    record("softmax f64: JAX HVP vs finite difference of grad", rel_err(h_j, fd), 1e-7)
    g_v = ggn(params, v, X, Y)
    g_v = (g_v[0] + LAM * v[0], g_v[1])
    record("softmax f64: GGN + lam v_W vs HVP (equal for linear logits)", rel_err(g_v, h_j), 1e-12)
    record("softmax f64: GGN + lam v_W vs finite difference of grad", rel_err(g_v, fd), 1e-7)

    # --- softmax regression, f32, the code path that is timed ----------------
    n = QUICK_CAP
    X32 = scaled(data["train_x"][:n], np.float32)
    Y32 = one_hot(data["train_y"][:n], np.float32)
    p32, v32 = softmax_point(np.float32)
    h32 = hvp(p32, v32, X32, Y32)
    check_dtype(h32, np.float32, "softmax f32 HVP")
    ref = np_softmax_hvp(*[a.astype(np.float64) for a in (*p32, *v32)], X32.astype(np.float64))
    record("softmax f32: JAX HVP vs numpy f64 closed form", rel_err(h32, ref), 1e-5)
    record("softmax f32: numpy f32 HVP vs numpy f64 closed form",
           rel_err(np_softmax_hvp(*p32, *v32, X32), ref), 1e-5)

    # --- MLP 784-256-10 tanh, f64, 200 rows -----------------------------------
    n = 200
    X = scaled(data["train_x"][:n], np.float64)
    Y = one_hot(data["train_y"][:n], np.float64)
    params, v = mlp_point(np.float64)
    _, u = mlp_point(np.float64, seed=2)
    grad, hvp, ggn = make_grad(mlp_loss), make_hvp(mlp_loss), make_ggn(mlp_logits)
    fd = jax.tree_util.tree_map(
        lambda a, b: (a - b) / (2 * eps),
        grad(axpy(eps, v, params), X, Y),
        grad(axpy(-eps, v, params), X, Y),
    )
    record("mlp f64: JAX HVP vs finite difference of grad", rel_err(hvp(params, v, X, Y), fd), 1e-6)

    def fd_jvp(w):
        up = np.asarray(mlp_logits(axpy(eps, w, params), X))
        down = np.asarray(mlp_logits(axpy(-eps, w, params), X))
        return (up - down) / (2 * eps)

    Ju, Jv = fd_jvp(u), fd_jvp(v)
    P = np_softmax(np.asarray(mlp_logits(params, X)))
    PJv = P * Jv
    uGv_fd = float(np.sum(Ju * (PJv - P * PJv.sum(axis=1, keepdims=True))) / n)
    Gv, Gu = ggn(params, v, X, Y), ggn(params, u, X, Y)
    uGv, vGu, vGv = float(flat(u) @ flat(Gv)), float(flat(v) @ flat(Gu)), float(flat(v) @ flat(Gv))
    record("mlp f64: u^T GGN v vs (Ju)^T H_L (Jv) by finite differences",
           abs(uGv - uGv_fd) / abs(uGv_fd), 1e-6)
    record("mlp f64: GGN symmetry u^T G v vs v^T G u", abs(uGv - vGu) / abs(uGv), 1e-12)
    record("mlp f64: v^T G v >= 0", 0.0 if vGv >= 0 else 1.0, 0.0)

    failed = [c for c in checks if not c["ok"]]
    if failed:
        lines = "\n".join(f"  {c['name']}: rel_err {c['rel_err']:.3g} > tol {c['tol']:.0e}" for c in failed)
        raise PeerError(f"kernel self-checks failed:\n{lines}")
    return checks


# ---------------------------------------------------------------------------
# The benchmarks
# ---------------------------------------------------------------------------


def plan_ids(ns):
    """All benchmark ids of a run, in the order they run."""
    n_big = ns[-1]
    ids = []
    for prec in ("f32", "f64"):
        for n in ns:
            ids += [f"jax/softmax/grad/{prec}/n{n}", f"jax/softmax/hvp/{prec}/n{n}"]
    ids += [f"jax/softmax-dense/hvp/f32/n{n}" for n in ns]
    for n in ns:
        ids += [f"jax/mlp/{op}/f32/n{n}" for op in ("grad", "hvp", "ggn")]
    for prec in ("f32", "f64"):
        ids += [f"numpy/softmax/{op}/{prec}/n{n_big}" for op in ("grad", "hvp", "hvp-reuse-p")]
    ids.append("sklearn/newton-cg/l2")
    ids.append("sklearn/newton-cholesky/l2")
    return ids


def run_jax_benches(data, ns, wanted, cfg, report):
    """JAX: softmax grad/HVP (MNIST and dense random X), MLP grad/HVP/GGN."""
    dense_rng = np.random.default_rng(3)
    for n in ns:
        # --- softmax regression on MNIST, f32 and f64 ---
        for prec, dtype in (("f32", np.float32), ("f64", np.float64)):
            ids = [f"jax/softmax/grad/{prec}/n{n}", f"jax/softmax/hvp/{prec}/n{n}"]
            if not any(map(wanted, ids)):
                continue
            X = to_device(scaled(data["train_x"][:n], dtype))
            Y = to_device(one_hot(data["train_y"][:n], dtype))
            params, v = to_device(softmax_point(dtype))
            if wanted(ids[0]):
                report(bench_jax(ids[0], make_grad(softmax_loss), (params, X, Y), dtype, cfg))
            if wanted(ids[1]):
                report(bench_jax(ids[1], make_hvp(softmax_loss), (params, v, X, Y), dtype, cfg))
            del X, Y
        # --- the same f32 HVP on dense uniform [0, 1) X of the same shape ---
        bid = f"jax/softmax-dense/hvp/f32/n{n}"
        if wanted(bid):
            X = to_device(dense_rng.random((n, 784), dtype=np.float32))
            Y = to_device(one_hot(data["train_y"][:n], np.float32))
            params, v = to_device(softmax_point(np.float32))
            report(bench_jax(bid, make_hvp(softmax_loss), (params, v, X, Y), np.float32, cfg))
            del X, Y
        # --- MLP 784-256-10 tanh, f32 ---
        ids = [f"jax/mlp/{op}/f32/n{n}" for op in ("grad", "hvp", "ggn")]
        if any(map(wanted, ids)):
            X = to_device(scaled(data["train_x"][:n], np.float32))
            Y = to_device(one_hot(data["train_y"][:n], np.float32))
            params, v = to_device(mlp_point(np.float32))
            fns = (
                (make_grad(mlp_loss), (params, X, Y)),
                (make_hvp(mlp_loss), (params, v, X, Y)),
                (make_ggn(mlp_logits), (params, v, X, Y)),
            )
            for bid, (fn, args) in zip(ids, fns):
                if wanted(bid):
                    report(bench_jax(bid, fn, args, np.float32, cfg))
            del X, Y


def run_numpy_benches(data, n, wanted, cfg, report):
    """numpy closed-form softmax gradient and HVP (BLAS gemms plus elementwise work)."""
    for prec, dtype in (("f32", np.float32), ("f64", np.float64)):
        ids = [f"numpy/softmax/grad/{prec}/n{n}", f"numpy/softmax/hvp/{prec}/n{n}",
               f"numpy/softmax/hvp-reuse-p/{prec}/n{n}"]
        if not any(map(wanted, ids)):
            continue
        X = scaled(data["train_x"][:n], dtype)
        Y = one_hot(data["train_y"][:n], dtype)
        (W, b), (V, vb) = softmax_point(dtype)
        P = np_softmax(X @ W + b)
        calls = (
            lambda: np_softmax_grad(W, b, X, Y),
            lambda: np_softmax_hvp(W, b, V, vb, X),
            lambda: np_softmax_hvp_from_p(P, V, vb, X),
        )
        for bid, fn in zip(ids, calls):
            if wanted(bid):
                out = fn()
                if any(a.dtype != dtype for a in out):
                    raise PeerError(f"{bid}: numpy result is {out[0].dtype}, expected {dtype}")
                report({"id": bid, **time_call(fn, cfg)})


class NewtonCgCounter:
    """Counts scikit-learn's newton-cg work without changing its arithmetic.

    scikit-learn's LogisticRegression calls
    ``sklearn.linear_model._logistic._newton_cg(grad_hess, func, grad, x0, ...)``.
    ``grad_hess(x)`` is called at the start of every outer (Newton)
    iteration, at the current iterate, including the last call that only
    finds the gradient small enough; it returns the gradient and a
    ``hessp`` closure; the
    inner CG loop (``_cg``) calls ``hessp`` once per CG step, and nothing
    else calls it. So this class replaces ``_newton_cg`` with a wrapper that
    passes wrapped callables through:

    * ``hessp`` calls are counted: that is the number of HVPs;
    * each ``grad_hess`` call records a timestamp and a copy of the iterate
      (7850 floats, microseconds), so that the objective along the path can
      be evaluated after the fit, outside the timed region, and the time at
      which an iterate first came within 1e-6 of f* can be read off;
    * ``func`` and ``grad`` calls (the line search) are counted.
    """

    def __init__(self):
        import sklearn.linear_model._logistic as logistic

        self.module = logistic
        self.original = getattr(logistic, "_newton_cg", None)
        if self.original is None:
            raise PeerError(
                "this scikit-learn has no sklearn.linear_model._logistic._newton_cg; "
                "install the version pinned in peers/requirements.txt"
            )
        self.signature = inspect.signature(self.original)
        self.reset()

    def reset(self):
        self.hvps = self.grad_hess_calls = self.func_calls = self.grad_calls = 0
        self.iterates = []  # (perf_counter time, copy of the iterate)

    def __enter__(self):
        self.module._newton_cg = self.wrapped
        return self

    def __exit__(self, *exc):
        self.module._newton_cg = self.original

    def wrapped(self, *args, **kwargs):
        bound = self.signature.bind(*args, **kwargs)
        grad_hess = bound.arguments["grad_hess"]
        func = bound.arguments["func"]
        grad = bound.arguments["grad"]

        def counted_hessp(hessp):
            def hessp_(p):
                self.hvps += 1
                return hessp(p)

            return hessp_

        def grad_hess_(x, *a):
            self.iterates.append((time.perf_counter(), x.copy()))
            self.grad_hess_calls += 1
            g, hessp = grad_hess(x, *a)
            return g, counted_hessp(hessp)

        def func_(*a):
            self.func_calls += 1
            return func(*a)

        def grad_(*a):
            self.grad_calls += 1
            return grad(*a)

        bound.arguments.update(grad_hess=grad_hess_, func=func_, grad=grad_)
        return self.original(*bound.args, **bound.kwargs)


def run_sklearn(data, n, sk_repeats):
    """scikit-learn newton-cg, multinomial L2 logistic regression, f64.

    scikit-learn minimises C * sum_i CE_i + ||W||^2 / 2 (bias unpenalised).
    Divided by C n that is mean CE + ||W||^2 / (2 C n), which is hessfree's
    objective mean CE + lam/2 ||W||^2 when C = 1 / (n lam); internally
    scikit-learn works with exactly this scaled form, so its stopping test
    max |gradient| <= tol is on the same gradient hessfree sees.

    One warm-up fit on a small subset loads the code paths and thread
    pools; then ``sk_repeats`` timed fits on n rows. The objective f is
    recomputed here from coef_ and intercept_ and cross-checked against
    scikit-learn's own log_loss.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    X = scaled(data["train_x"][:n], np.float64)
    y = data["train_y"][:n]
    Xt, yt = scaled(data["test_x"], np.float64), data["test_y"]
    full = n == 60000
    counter = NewtonCgCounter()

    def make(n_rows):
        return LogisticRegression(C=1.0 / (n_rows * LAM), l1_ratio=0.0, solver="newton-cg",
                                  tol=1e-8, max_iter=100)

    make(500).fit(X[:500], y[:500])  # warm-up, not timed

    runs = []
    for _ in range(sk_repeats):
        clf = make(n)
        counter.reset()
        with warnings.catch_warnings(record=True) as caught, counter:
            warnings.simplefilter("always", ConvergenceWarning)
            t0 = time.perf_counter()
            clf.fit(X, y)
            wall = time.perf_counter() - t0
        runs.append({
            "clf": clf, "wall": wall, "t0": t0,
            "iterates": counter.iterates,
            "counts": (counter.hvps, counter.grad_hess_calls, counter.func_calls, counter.grad_calls),
            "warnings": [str(w.message) for w in caught if issubclass(w.category, ConvergenceWarning)],
        })

    # Everything below is outside the timed region.
    clf = runs[0]["clf"]
    coef, intercept = clf.coef_, clf.intercept_
    f = np_objective(coef, intercept, X, y)
    f_check = float(log_loss(y, clf.predict_proba(X), labels=np.arange(N_CLASSES))
                    + 0.5 * LAM * np.sum(coef * coef))
    if abs(f - f_check) > 1e-10 * abs(f):
        raise PeerError(f"sklearn: own objective {f!r} disagrees with log_loss-based {f_check!r}")
    # The last recorded iterate must be the fitted solution (layout check).
    last = runs[0]["iterates"][-1][1].reshape((N_CLASSES, -1), order="F")
    if not (np.array_equal(last[:, :-1], coef) and np.array_equal(last[:, -1], intercept)):
        raise PeerError("sklearn: recorded iterates do not match coef_/intercept_ layout")
    if len({r["counts"] for r in runs}) != 1:
        raise PeerError(f"sklearn: work differs between repeats: {[r['counts'] for r in runs]}")

    fstar, fstar_source = (FSTAR, "reference f* from DESIGN.md") if full else (
        f, "this fit's final f (--quick: the reference f* is for the full problem)")

    def time_to_target(run):
        """Seconds from the start of fit() until an iterate within TARGET_REL of f*."""
        trace = []
        for t, w in run["iterates"]:
            W = w.reshape((N_CLASSES, -1), order="F")
            fk = np_objective(W[:, :-1], W[:, -1], X, y)
            trace.append({"t_s": t - run["t0"], "f": fk, "rel_gap": abs(fk - fstar) / fstar})
        hit = next((p["t_s"] for p in trace if p["rel_gap"] <= TARGET_REL), None)
        return hit, trace

    hits, trace = [], None
    for run in runs:
        hit, tr = time_to_target(run)
        hits.append(hit)
        trace = trace or tr
    walls = [r["wall"] for r in runs]
    hvps, grad_hess_calls, func_calls, grad_calls = runs[0]["counts"]
    return {
        "id": "sklearn/newton-cg/l2",
        "wall_s": statistics.median(walls),
        "wall_min_s": min(walls),
        "wall_max_s": max(walls),
        "repeats": len(runs),
        "n": n,
        "lam": LAM,
        "C": 1.0 / (n * LAM),
        "tol": 1e-8,
        "dtype": "f64",
        "n_iter": int(np.max(clf.n_iter_)),
        "hvps": hvps,
        "grad_hess_calls": grad_hess_calls,
        "line_search_func_calls": func_calls,
        "line_search_grad_calls": grad_calls,
        "f": f,
        "fstar": fstar,
        "fstar_source": fstar_source,
        "rel_gap_to_fstar": abs(f - FSTAR) / FSTAR if full else None,
        "time_to_rel_1e-6_s": statistics.median(hits) if None not in hits else None,
        "time_to_rel_1e-6_all_s": hits,
        "time_to_target_note": (
            "time from the start of fit() until the first Newton iterate whose objective is "
            "within 1e-6 relative of f*; iterates are copied during the fit and evaluated "
            "afterwards, outside the timed region"
        ),
        "test_accuracy": float(clf.score(Xt, yt)),
        "convergence_warnings": runs[0]["warnings"],
        "trace": trace,
    }


def run_sklearn_cholesky(data, n):
    """scikit-learn newton-cholesky on the same problem: the dense-Newton peer.

    It forms the full (d+1)k x (d+1)k Hessian every iteration and solves it by
    Cholesky. One timed fit (about 11 minutes on 2 cores at n = 60000) and
    no warm-up: even a small fit factors the full 7850² matrix every
    iteration, and the figure to compare is whole minutes.
    """
    from sklearn.linear_model import LogisticRegression

    X = scaled(data["train_x"][:n], np.float64)
    y = data["train_y"][:n]
    Xt, yt = scaled(data["test_x"], np.float64), data["test_y"]

    def make(n_rows):
        return LogisticRegression(C=1.0 / (n_rows * LAM), l1_ratio=0.0, solver="newton-cholesky",
                                  tol=1e-8, max_iter=100)

    clf = make(n)
    t0 = time.perf_counter()
    clf.fit(X, y)
    wall = time.perf_counter() - t0
    f = np_objective(clf.coef_, clf.intercept_, X, y)
    full = n == 60000
    return {
        "id": "sklearn/newton-cholesky/l2",
        "wall_s": wall,
        "repeats": 1,
        "n": n,
        "lam": LAM,
        "tol": 1e-8,
        "dtype": "f64",
        "n_iter": int(np.max(clf.n_iter_)),
        "f": f,
        "rel_gap_to_fstar": abs(f - FSTAR) / FSTAR if full else None,
        "test_accuracy": float(clf.score(Xt, yt)),
    }


# ---------------------------------------------------------------------------
# Machine description and output
# ---------------------------------------------------------------------------


def host_info():
    """CPU model, the SIMD flags that matter for these kernels, and core counts."""
    model, flags = None, set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            # x86 has "model name"; aarch64 kernels may have "Model" or "Hardware".
            if key in ("model name", "Model", "Hardware") and model is None:
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = set(value.split())
    except OSError:
        pass
    model = model or platform.processor() or platform.machine()
    if "asimd" in flags:  # aarch64 calls NEON "asimd"
        flags.add("neon")
    return {
        "cpu_model": model,
        "cpu_flags": sorted(flags & {"avx512f", "avx2", "fma", "neon"}),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "machine": platform.machine(),
        "os": platform.platform(),
    }


def versions():
    import jaxlib
    import scipy
    import sklearn
    import threadpoolctl

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sklearn": sklearn.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "threadpoolctl": threadpoolctl.__version__,
    }


def thread_info(threads):
    """Which BLAS / OpenMP libraries are loaded and with how many threads; XLA's pool size."""
    import scipy.linalg  # noqa: F401  (loads scipy's own OpenBLAS, used by the line search)
    import sklearn.linear_model  # noqa: F401  (loads scikit-learn's OpenMP runtime)
    from threadpoolctl import threadpool_info

    np.ones((64, 64)) @ np.ones((64, 64))
    jax.block_until_ready(jnp.ones((256, 256), jnp.float32) @ jnp.ones((256, 256), jnp.float32))
    libs = [
        {k: lib.get(k) for k in ("user_api", "internal_api", "prefix", "version",
                                 "num_threads", "threading_layer", "architecture", "filepath")}
        for lib in threadpool_info()
    ]
    xla_pool = None
    try:
        names = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
        xla_pool = sum("XLAEigen" in name for name in names)
    except OSError:
        pass
    return {
        "requested": threads,
        "libraries": libs,
        "all_libraries_at_requested": all(lib["num_threads"] == threads for lib in libs),
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "xla_eigen_threads_observed": xla_pool,
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"),
        "MKL_NUM_THREADS": os.environ.get("MKL_NUM_THREADS"),
    }


def git_revision():
    """Short commit of the repository, with "-dirty" for local changes; None if unknown."""
    try:
        rev = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10, check=True)
        return rev.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def write_json_atomic(path, doc):
    """Write doc to path via a temporary file in the same directory and os.replace."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=2, allow_nan=False)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=REPO_ROOT / "data" / "mnist",
                   help="directory with the four MNIST IDX files (default: %(default)s)")
    p.add_argument("--out", type=Path, default=REPO_ROOT / "docs" / "reports" / "bench" / "peers.json",
                   help="JSON output path (default: %(default)s)")
    p.add_argument("--quick", action="store_true",
                   help=f"cap n at {QUICK_CAP} rows, 2 repeats, scikit-learn on {QUICK_CAP} rows")
    p.add_argument("--only", action="append", metavar="PREFIX", default=[],
                   help="run only ids starting with PREFIX (repeatable)")
    p.add_argument("--list", action="store_true", help="print the benchmark ids and exit")
    p.add_argument("--threads", type=int, default=2, help="threads for BLAS/OpenMP/XLA (default: 2)")
    p.add_argument("--repeats", type=int, default=30, help="max timed calls per id (default: 30)")
    p.add_argument("--min-repeats", type=int, default=5, help="min timed calls per id (default: 5)")
    p.add_argument("--budget-s", type=float, default=10.0,
                   help="stop timing an id after this many seconds once min-repeats are done (default: 10)")
    p.add_argument("--sklearn-repeats", type=int, default=3, help="timed scikit-learn fits (default: 3)")
    p.add_argument("--skip-checks", action="store_true", help="skip the kernel self-checks")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats = args.min_repeats = args.sklearn_repeats = 2
    if min(args.threads, args.repeats, args.min_repeats, args.sklearn_repeats) < 1:
        p.error("--threads and the repeat counts must be at least 1")
    args.warmup = 2  # untimed calls before timing (after any compilation)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    ns = tuple(min(n, QUICK_CAP) for n in FULL_NS) if args.quick else FULL_NS
    all_ids = plan_ids(ns)
    if args.list:
        print("\n".join(all_ids))
        return 0

    def wanted(bench_id):
        return not args.only or any(bench_id.startswith(p) for p in args.only)

    if not any(map(wanted, all_ids)):
        raise PeerError(f"--only {args.only} matches no id; ids are:\n  " + "\n  ".join(all_ids))

    pin_threads(args.threads)
    import_peers()
    started = datetime.datetime.now(datetime.timezone.utc)
    print(f"bench_peers: loading MNIST from {args.data_dir}", flush=True)
    data = load_mnist(args.data_dir)
    doc = {
        "schema": SCHEMA,
        "date": started.isoformat(timespec="seconds"),
        "git_revision": git_revision(),
        "quick": args.quick,
        "host": host_info(),
        "versions": versions(),
        "threads": thread_info(args.threads),
        "env": {k: os.environ.get(k) for k in RECORDED_ENV},
        "settings": {"repeats": args.repeats, "min_repeats": args.min_repeats,
                     "budget_s": args.budget_s, "warmup": args.warmup,
                     "sklearn_repeats": args.sklearn_repeats, "only": args.only,
                     "ns": list(ns), "lam": LAM},
        "checks": None,
        "results": [],
    }
    if not doc["threads"]["all_libraries_at_requested"]:
        print(f"bench_peers: warning: not every library runs {args.threads} threads; "
              "see threads.libraries in the JSON", file=sys.stderr)

    if not args.skip_checks:
        print("bench_peers: self-checking the kernels", flush=True)
        doc["checks"] = self_checks(data)
        worst = max(c["rel_err"] / c["tol"] if c["tol"] else 0.0 for c in doc["checks"])
        print(f"bench_peers: {len(doc['checks'])} checks passed (worst err/tol {worst:.2g})", flush=True)

    def report(result):
        doc["results"].append(result)
        shown = result.get("median_s", result.get("wall_s"))
        print(f"  {result['id']:<40} {shown * 1e3:12.3f} ms  ({result['repeats']} repeats)", flush=True)

    cfg = types.SimpleNamespace(repeats=args.repeats, min_repeats=args.min_repeats,
                                budget_s=args.budget_s, warmup=args.warmup)
    run_jax_benches(data, ns, wanted, cfg, report)
    run_numpy_benches(data, ns[-1], wanted, cfg, report)
    if wanted("sklearn/newton-cg/l2"):
        print("bench_peers: scikit-learn newton-cg (the long one)", flush=True)
        report(run_sklearn(data, ns[-1], args.sklearn_repeats))
    if wanted("sklearn/newton-cholesky/l2"):
        print("bench_peers: scikit-learn newton-cholesky (about 11 minutes)", flush=True)
        report(run_sklearn_cholesky(data, ns[-1]))

    doc["elapsed_s"] = (datetime.datetime.now(datetime.timezone.utc) - started).total_seconds()
    write_json_atomic(args.out, doc)
    print(f"bench_peers: wrote {args.out} ({len(doc['results'])} results, {doc['elapsed_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except PeerError as e:
        print(f"bench_peers: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("bench_peers: interrupted", file=sys.stderr)
        sys.exit(130)
