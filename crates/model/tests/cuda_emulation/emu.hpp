// Just enough of CUDA's device model to run fused_cuda.cu on the CPU with
// g++: one std::thread per CUDA thread, blocks one after another,
// __syncthreads as a block-wide barrier and __shfl_xor_sync as an exchange
// through a per-warp buffer between two warp-wide barriers. It checks the
// kernel's logic (indexing, tiling, partial sums, reduction), not its speed
// or CUDA's memory model.
#pragma once
#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstddef>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__
#define __launch_bounds__(...)
#define __shared__ static

struct dim3 {
    unsigned x = 0, y = 0, z = 0;
};

namespace emu {
inline thread_local dim3 thread_idx;
inline thread_local dim3 block_idx;
inline dim3 block_dim;
inline dim3 grid_dim;
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<std::barrier<>>> warp_barriers;
// Two exchange buffers used alternately, so one barrier per shuffle is
// enough: a thread writes the other buffer next time, and cannot write this
// one again before every lane has passed the next barrier (and so has read).
inline std::vector<double> exchange[2];
inline thread_local unsigned phase = 0;

inline void sync_block() { block_barrier->arrive_and_wait(); }

template <typename V>
V shfl_xor(V v, int mask) {
    const unsigned t = thread_idx.x;
    auto& bar = *warp_barriers[t / 32];
    auto& buf = exchange[phase];
    phase ^= 1;
    buf[t] = (double)v;
    bar.arrive_and_wait();
    return (V)buf[(t & ~31u) | ((t & 31u) ^ (unsigned)mask)];
}

// Runs `kernel` on a grid of `grid` blocks of `threads` threads. One OS
// thread per CUDA thread walks the blocks in order; a barrier after each
// block keeps the block's `__shared__` (static) storage to that block.
inline void launch(unsigned grid, unsigned threads, const std::function<void()>& kernel) {
    grid_dim = {grid, 1, 1};
    block_dim = {threads, 1, 1};
    exchange[0].assign(threads, 0.0);
    exchange[1].assign(threads, 0.0);
    block_barrier = std::make_unique<std::barrier<>>(threads);
    warp_barriers.clear();
    for (unsigned w = 0; w < (threads + 31) / 32; ++w)
        warp_barriers.push_back(std::make_unique<std::barrier<>>(std::min(32u, threads - 32 * w)));
    std::vector<std::thread> pool;
    for (unsigned t = 0; t < threads; ++t)
        pool.emplace_back([t, grid, &kernel] {
            thread_idx = {t, 0, 0};
            phase = 0;
            for (unsigned b = 0; b < grid; ++b) {
                block_idx = {b, 0, 0};
                kernel();
                sync_block();
            }
        });
    for (auto& th : pool) th.join();
}
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __syncthreads() emu::sync_block()
#define __shfl_xor_sync(mask, v, o) emu::shfl_xor((v), (o))
using std::fma;
using std::min;
using std::max;
