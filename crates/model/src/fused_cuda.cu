// The fused softmax-regression kernels for CUDA: the same one-pass scheme as
// the CPU kernel in fused.rs, compiled at run time by NVRTC (see
// fused_cuda.rs) with the problem's shape baked in, so every loop over
// pixels-per-thread and classes has a constant trip count and the register
// tiles stay in registers.
//
// The including code defines, before this text:
//   XT    the pixel type of X: unsigned char, float or double
//   T     the compute type: float or double
//   D     inputs per row (pixels)
//   K     classes
//   BIAS  1 if the parameters end with a bias of K values, else 0
// and may define RW (rows per warp, default 4).
//
// Layout (as on the CPU): X is [n, D] row-major; the parameters / directions
// are [D*K] weights, W[j, c] at j*K + c, then the optional bias [K]; the
// probabilities are [n, K]. The pass kernels also take `vt`, the weights
// class-major (W[j, c] at c*D + j, made by fused_transpose), so that the
// lanes of a warp read consecutive weights.
//
// One block owns a contiguous range of whole tiles of TR rows (the tiles are
// spread evenly over the grid) and walks them:
//   forward   each warp takes RW consecutive rows and computes their K dot
//             products with the parameters (lanes stride over the pixels, then
//             a warp shuffle sum); the row's softmax work is done by every lane
//             and lane 0 stores R (scaled by xscale) in shared memory;
//   backward  thread t accumulates X[tile, j] R[tile, :] for its pixels
//             j = t + q*THREADS in registers, reading the tile of X again
//             (from L1/L2, it was just read).
// At the end each block writes its unscaled sums (X^T R, sum R, loss) to its
// own slot of `partial`; fused_reduce adds the slots in block order in
// double. Nothing uses atomics, so results are bit-identical between runs for
// a given block count.

#define THREADS 256
#define WARPS (THREADS / 32)
// Rows per warp in the forward half; the host picks 2 for double, whose
// register tiles are twice as wide.
#ifndef RW
#define RW 4
#endif
#define TR (WARPS * RW)
#define PJ ((D + THREADS - 1) / THREADS)
#define NW (D * K)
#define NP (NW + (BIAS ? K : 0))
// A block's partial: NP sums, then the loss.
#define NOUT (NP + 1)

static_assert(K < THREADS, "the block-level sums need fewer classes than threads");

// Two blocks per multiprocessor for float (the grid is about 2 x SMs); double
// needs more registers than that allows without spilling.
#define MIN_BLOCKS (sizeof(T) == 4 ? 2 : 1)

#define MODE_PROBS 0
#define MODE_GRAD 1
#define MODE_HVP 2

__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

template <typename U> struct Math;
template <> struct Math<float> {
    static __device__ __forceinline__ float exp(float v) { return expf(v); }
    static __device__ __forceinline__ float log(float v) { return logf(v); }
};
template <> struct Math<double> {
    static __device__ __forceinline__ double exp(double v) { return ::exp(v); }
    static __device__ __forceinline__ double log(double v) { return ::log(v); }
};

// `theta`: parameters (GRAD, PROBS) or direction (HVP); `vt`: its weights
// class-major.
// `p`: probabilities [n, K] (HVP only).
// `labels` [n] when has_labels, else `dense` [n, K] targets (GRAD only).
// `probs_out` [n, K] (PROBS only); `partial` [gridDim.x, NOUT] (GRAD, HVP).
template <int MODE>
__device__ __forceinline__ void fused_pass(
    const XT* __restrict__ x, int n,
    const T* __restrict__ theta, const T* __restrict__ vt, T xscale,
    const T* __restrict__ p,
    const unsigned int* __restrict__ labels, const T* __restrict__ dense, int has_labels,
    T* __restrict__ probs_out, T* __restrict__ partial)
{
    __shared__ T rs[TR][K];
    __shared__ T warp_sums[WARPS][K];
    __shared__ double warp_loss[WARPS];

    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    // Whole tiles, spread evenly: the first `extra` blocks own one more (a
    // block may own none when there are more blocks than tiles; it then
    // writes zeros). 32-bit arithmetic throughout.
    const int tiles = (n + TR - 1) / TR;
    const int grid = (int)gridDim.x;
    const int b = (int)blockIdx.x;
    const int base = tiles / grid, extra = tiles % grid;
    const int t_begin = b * base + min(b, extra);
    const int r_begin = t_begin * TR;
    const int r_end = min(n, (t_begin + base + (b < extra ? 1 : 0)) * TR);

    T acc[PJ][K];
#pragma unroll
    for (int q = 0; q < PJ; ++q)
#pragma unroll
        for (int c = 0; c < K; ++c) acc[q][c] = T(0);
    T bsum[K];
#pragma unroll
    for (int c = 0; c < K; ++c) bsum[c] = T(0);
    double loss = 0.0;  // in double, as on the CPU

    for (int t0 = r_begin; t0 < r_end; t0 += TR) {
        const int nt = min(TR, r_end - t0);

        // ---- forward: Z for rows warp*RW .. warp*RW + RW - 1 of the tile
        const int i0 = warp * RW;
        T z[RW][K];
#pragma unroll
        for (int a = 0; a < RW; ++a)
#pragma unroll
            for (int c = 0; c < K; ++c) z[a][c] = T(0);
        if (i0 < nt) {
            const XT* xr = x + (size_t)(t0 + i0) * D;
            for (int j = lane; j < D; j += 32) {
                T xv[RW];
#pragma unroll
                for (int a = 0; a < RW; ++a)
                    xv[a] = (i0 + a < nt) ? (T)xr[(size_t)a * D + j] : T(0);
#pragma unroll
                for (int c = 0; c < K; ++c) {
                    const T wc = vt[c * D + j];
#pragma unroll
                    for (int a = 0; a < RW; ++a) z[a][c] = fma(xv[a], wc, z[a][c]);
                }
            }
        }
#pragma unroll
        for (int a = 0; a < RW; ++a)
#pragma unroll
            for (int c = 0; c < K; ++c) z[a][c] = warp_sum(z[a][c]);

        // ---- the softmax work of each row, redundantly in every lane
#pragma unroll
        for (int a = 0; a < RW; ++a) {
            const int i = i0 + a;
            if (i >= nt) break;
            const int row = t0 + i;
            T r[K];
#pragma unroll
            for (int c = 0; c < K; ++c) {
                z[a][c] *= xscale;
                if (BIAS) z[a][c] += theta[NW + c];
            }
            if (MODE == MODE_HVP) {
                T pz[K];
                T s = T(0);
#pragma unroll
                for (int c = 0; c < K; ++c) {
                    pz[c] = p[(size_t)row * K + c] * z[a][c];
                    s += pz[c];
                }
#pragma unroll
                for (int c = 0; c < K; ++c) r[c] = pz[c] - p[(size_t)row * K + c] * s;
            } else {
                T m = z[a][0];
#pragma unroll
                for (int c = 1; c < K; ++c) m = z[a][c] > m ? z[a][c] : m;
                T s = T(0);
#pragma unroll
                for (int c = 0; c < K; ++c) {
                    r[c] = Math<T>::exp(z[a][c] - m);
                    s += r[c];
                }
                const T inv = T(1) / s;
                const T lse = m + Math<T>::log(s);
#pragma unroll
                for (int c = 0; c < K; ++c) r[c] *= inv;
                if (MODE == MODE_PROBS) {
                    if (lane == 0) {
#pragma unroll
                        for (int c = 0; c < K; ++c) probs_out[(size_t)row * K + c] = r[c];
                    }
                } else if (has_labels) {
                    const unsigned int y = labels[row];
#pragma unroll
                    for (int c = 0; c < K; ++c) {
                        if ((unsigned int)c == y) {
                            loss += (double)(lse - z[a][c]);
                            r[c] -= T(1);
                        }
                    }
                } else {
#pragma unroll
                    for (int c = 0; c < K; ++c) {
                        const T yc = dense[(size_t)row * K + c];
                        if (yc != T(0)) loss += (double)(yc * (lse - z[a][c]));
                        r[c] -= yc;
                    }
                }
            }
            if (MODE != MODE_PROBS) {
#pragma unroll
                for (int c = 0; c < K; ++c) bsum[c] += r[c];
                if (lane == 0) {
#pragma unroll
                    for (int c = 0; c < K; ++c) rs[i][c] = r[c] * xscale;
                }
            }
        }
        if (MODE == MODE_PROBS) continue;
        __syncthreads();

        // ---- backward: acc[q][:] += sum_i X[t0 + i, j] R[i, :]
        for (int i = 0; i < nt; ++i) {
            T ri[K];
#pragma unroll
            for (int c = 0; c < K; ++c) ri[c] = rs[i][c];
            const XT* xr = x + (size_t)(t0 + i) * D;
#pragma unroll
            for (int q = 0; q < PJ; ++q) {
                const int j = tid + q * THREADS;
                if (j < D) {
                    const T xv = (T)xr[j];
#pragma unroll
                    for (int c = 0; c < K; ++c) acc[q][c] = fma(xv, ri[c], acc[q][c]);
                }
            }
        }
        __syncthreads();
    }
    if (MODE == MODE_PROBS) return;

    // ---- this block's partial sums
    T* out = partial + (size_t)blockIdx.x * NOUT;
#pragma unroll
    for (int q = 0; q < PJ; ++q) {
        const int j = tid + q * THREADS;
        if (j < D) {
#pragma unroll
            for (int c = 0; c < K; ++c) out[j * K + c] = acc[q][c];
        }
    }
    // Every lane of a warp holds the same bsum and loss (the row work ran
    // redundantly), so lane 0 speaks for its warp.
    if (lane == 0) {
#pragma unroll
        for (int c = 0; c < K; ++c) warp_sums[warp][c] = bsum[c];
        warp_loss[warp] = loss;
    }
    __syncthreads();
    if (tid < K && BIAS) {
        T sum = T(0);
        for (int w = 0; w < WARPS; ++w) sum += warp_sums[w][tid];
        out[NW + tid] = sum;
    }
    if (tid == K) {
        double sum = 0.0;
        for (int w = 0; w < WARPS; ++w) sum += warp_loss[w];
        out[NP] = (T)sum;
    }
}

// vt[c*D + j] = theta[j*K + c]: the weights class-major.
extern "C" __global__ void fused_transpose(const T* __restrict__ theta, T* __restrict__ vt)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= NW) return;
    const int c = i / D;
    const int j = i - c * D;
    vt[i] = theta[j * K + c];
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) fused_probs(
    const XT* __restrict__ x, int n,
    const T* __restrict__ theta, const T* __restrict__ vt, T xscale, T* __restrict__ probs_out)
{
    fused_pass<MODE_PROBS>(x, n, theta, vt, xscale, nullptr, nullptr, nullptr, 1,
                           probs_out, nullptr);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) fused_grad(
    const XT* __restrict__ x, int n,
    const T* __restrict__ theta, const T* __restrict__ vt, T xscale,
    const unsigned int* __restrict__ labels, const T* __restrict__ dense, int has_labels,
    T* __restrict__ partial)
{
    fused_pass<MODE_GRAD>(x, n, theta, vt, xscale, nullptr, labels, dense,
                          has_labels, nullptr, partial);
}

extern "C" __global__ void __launch_bounds__(THREADS, MIN_BLOCKS) fused_hvp(
    const XT* __restrict__ x, int n,
    const T* __restrict__ direction, const T* __restrict__ vt, T xscale, const T* __restrict__ p,
    T* __restrict__ partial)
{
    fused_pass<MODE_HVP>(x, n, direction, vt, xscale, p, nullptr, nullptr, 1,
                         nullptr, partial);
}

// out[i] = scale * sum_b partial[b, i] for i < len (len = NP, or NOUT to
// include the loss), summed in block order in double.
extern "C" __global__ void fused_reduce(
    const T* __restrict__ partial, int blocks, int len, double scale, T* __restrict__ out)
{
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= len) return;
    double s = 0.0;
#pragma unroll 8
    for (int b = 0; b < blocks; ++b) s += (double)partial[(size_t)b * NOUT + i];
    out[i] = (T)(s * scale);
}
