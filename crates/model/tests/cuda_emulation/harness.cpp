// Runs the CUDA kernels of fused_cuda.cu under emu.hpp for one shape (the
// -D flags: XT, T, D, K, BIAS, optionally RW and ROWS, the row count, default
// 100) and compares them with a naive
// double-precision evaluation of the same formulas. Exits non-zero if any
// result is off by more than the compute type's tolerance.
#include "emu.hpp"
#include FUSED_CUDA_SOURCE

#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>

namespace {

struct Rng {
    std::uint64_t s;
    double uniform() {  // [0, 1)
        s = s * 6364136223846793005ULL + 1442695040888963407ULL;
        return (double)(s >> 11) * (1.0 / 9007199254740992.0);
    }
};

constexpr bool kU8 = std::is_same<XT, unsigned char>::value;
constexpr double kTol = std::is_same<T, float>::value ? 2e-5 : 1e-12;
int failures = 0;

void compare(const char* what, const std::vector<T>& got, const std::vector<double>& want) {
    double scale = 0, err = 0;
    for (double w : want) scale = std::max(scale, std::fabs(w));
    for (size_t i = 0; i < want.size(); ++i) {
        const double e = std::fabs((double)got[i] - want[i]);
        err = std::isnan(e) ? INFINITY : std::max(err, e);
    }
    const double rel = err / std::max(scale, 1e-300);
    const bool ok = got.size() == want.size() && rel <= kTol;
    std::printf("%-34s %zu values, max |err| / max |want| = %.3e %s\n", what, want.size(), rel,
                ok ? "ok" : "FAIL");
    if (!ok) ++failures;
}

}  // namespace

int main() {
#ifndef ROWS
#define ROWS 100
#endif
    const int n = ROWS;
    const double xscale = kU8 ? 1.0 / 255.0 : 1.0;
    Rng rng{42};
    std::vector<XT> x(n * D);
    std::vector<double> xd(n * D);  // the value X stands for
    for (int i = 0; i < n * D; ++i) {
        const int byte = rng.uniform() < 0.3 ? 0 : (int)(rng.uniform() * 256);
        x[i] = kU8 ? (XT)byte : (XT)(byte / 255.0 - 0.25);
        xd[i] = kU8 ? byte * xscale : (double)x[i];
    }
    std::vector<T> theta(NP), dir(NP);
    // Logits of order one, so that no probability saturates and the
    // curvature weights are not all tiny.
    for (auto& v : theta) v = (T)((rng.uniform() * 2 - 1) * 3 / std::sqrt((double)D));
    for (auto& v : dir) v = (T)(rng.uniform() * 2 - 1);
    std::vector<unsigned> labels(n);
    std::vector<T> dense(n * K);
    for (int i = 0; i < n; ++i) {
        labels[i] = (unsigned)(rng.uniform() * K) % K;
        double s = 0;
        for (int c = 0; c < K; ++c) s += (dense[i * K + c] = (T)(rng.uniform() < 0.5 ? 0 : rng.uniform()));
        if (s == 0) dense[i * K] = (T)1;
    }
    const double inv_n = 1.0 / n;

    // The weights class-major, as the pass kernels read them.
    auto transpose = [&](const std::vector<T>& th) {
        std::vector<T> vt(NW, (T)-999);
        emu::launch((NW + 63) / 64, 64, [&] { fused_transpose(th.data(), vt.data()); });
        return vt;
    };
    const std::vector<T> vt = transpose(theta), vt_dir = transpose(dir);
    bool transposed = true;
    for (int j = 0; j < D; ++j)
        for (int c = 0; c < K; ++c) transposed &= vt[c * D + j] == theta[j * K + c];
    std::printf("%-34s %s\n", "class-major weights", transposed ? "ok" : "FAIL");
    if (!transposed) ++failures;

    // Naive reference: Z, P, and the three products.
    auto logits = [&](const std::vector<T>& th) {
        std::vector<double> z(n * K);
        for (int i = 0; i < n; ++i)
            for (int c = 0; c < K; ++c) {
                double s = BIAS ? (double)th[D * K + c] : 0.0;
                for (int j = 0; j < D; ++j) s += xd[i * D + j] * (double)th[j * K + c];
                z[i * K + c] = s;
            }
        return z;
    };
    const std::vector<double> z = logits(theta);
    std::vector<double> p(n * K), lse(n);
    for (int i = 0; i < n; ++i) {
        double m = z[i * K];
        for (int c = 1; c < K; ++c) m = std::max(m, z[i * K + c]);
        double s = 0;
        for (int c = 0; c < K; ++c) s += std::exp(z[i * K + c] - m);
        lse[i] = m + std::log(s);
        for (int c = 0; c < K; ++c) p[i * K + c] = std::exp(z[i * K + c] - lse[i]);
    }
    // Back-projection of per-row R: (X^T R, sum R) / n.
    auto back = [&](const std::vector<double>& r) {
        std::vector<double> out(NP, 0.0);
        for (int i = 0; i < n; ++i)
            for (int c = 0; c < K; ++c) {
                for (int j = 0; j < D; ++j) out[j * K + c] += xd[i * D + j] * r[i * K + c];
                if (BIAS) out[D * K + c] += r[i * K + c];
            }
        for (auto& v : out) v *= inv_n;
        return out;
    };

    // Each partition: rows per block (a multiple of TR) and the block count.
    // Block counts: one tile each, three blocks (uneven, or some empty when
    // there are fewer tiles), one block for everything.
    const int tiles = (n + TR - 1) / TR;
    for (int blocks : {tiles, 3, 1}) {
        const std::string tag = " (" + std::to_string(blocks) + " blocks)";
        std::vector<T> partial((size_t)blocks * NOUT, (T)-999);

        // Probabilities.
        std::vector<T> probs(n * K, (T)-1);
        emu::launch(blocks, THREADS, [&] {
            fused_probs(x.data(), n, theta.data(), vt.data(), (T)xscale,
                        probs.data());
        });
        compare(("probabilities" + tag).c_str(), probs, p);

        // Gradient and loss, with labels and with dense targets.
        for (int has_labels : {1, 0}) {
            emu::launch(blocks, THREADS, [&] {
                fused_grad(x.data(), n, theta.data(), vt.data(), (T)xscale,
                           has_labels ? labels.data() : nullptr,
                           has_labels ? nullptr : dense.data(), has_labels, partial.data());
            });
            std::vector<T> out(NOUT);
            emu::launch((NOUT + 63) / 64, 64, [&] {
                fused_reduce(partial.data(), blocks, NOUT, inv_n, out.data());
            });
            std::vector<double> r(n * K);
            double loss = 0;
            for (int i = 0; i < n; ++i)
                for (int c = 0; c < K; ++c) {
                    const double y = has_labels ? (labels[i] == (unsigned)c ? 1.0 : 0.0)
                                                : (double)dense[i * K + c];
                    r[i * K + c] = p[i * K + c] - y;
                    loss += y * (lse[i] - z[i * K + c]);
                }
            std::vector<double> want = back(r);
            want.push_back(loss * inv_n);
            compare(((has_labels ? "gradient+loss, labels" : "gradient+loss, dense") + tag).c_str(),
                    out, want);
        }

        // Hessian-vector product at the reference probabilities.
        std::vector<T> pt(n * K);
        for (int i = 0; i < n * K; ++i) pt[i] = (T)p[i];
        emu::launch(blocks, THREADS, [&] {
            fused_hvp(x.data(), n, dir.data(), vt_dir.data(), (T)xscale, pt.data(),
                      partial.data());
        });
        std::vector<T> out(NP);
        emu::launch((NP + 63) / 64, 64, [&] { fused_reduce(partial.data(), blocks, NP, inv_n, out.data()); });
        const std::vector<double> zv = logits(dir);
        std::vector<double> r(n * K);
        for (int i = 0; i < n; ++i) {
            double s = 0;
            for (int c = 0; c < K; ++c) s += (double)pt[i * K + c] * zv[i * K + c];
            for (int c = 0; c < K; ++c)
                r[i * K + c] = (double)pt[i * K + c] * (zv[i * K + c] - s);
        }
        compare(("hessian-vector product" + tag).c_str(), out, back(r));
    }
    std::printf("%s\n", failures == 0 ? "all checks passed" : "SOME CHECKS FAILED");
    return failures == 0 ? 0 : 1;
}
