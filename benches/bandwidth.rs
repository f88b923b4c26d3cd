//! STREAM-like memory bandwidth of this machine, measured in the same
//! `cargo bench` run as the products, so that reports can state the floor of
//! a data-bound product: the bytes of `X` one pass reads over the read
//! bandwidth (188 MB for MNIST's 60000 x 784 f32 inputs, 47 MB as u8).
//!
//! Benchmark ids (criterion prints the throughput in bytes per second):
//! - `cpu/memory/copy/{1,2}threads`: copy 256 MiB to another 256 MiB buffer;
//!   counted as read + write bytes, the STREAM convention;
//! - `cpu/memory/read/{1,2}threads`: sum 256 MiB of `u64`, read bytes only.
//!
//! The buffers are far larger than the caches, so these are DRAM figures.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const BYTES: usize = 256 << 20;

fn split<T>(v: &[T], parts: usize) -> impl Iterator<Item = &[T]> {
    v.chunks(v.len().div_ceil(parts))
}

fn read(v: &[u64], threads: usize) -> u64 {
    // Four independent sums per thread, so the adds are not the bottleneck.
    let sum = |s: &[u64]| {
        let mut acc = [0u64; 4];
        for c in s.chunks_exact(4) {
            for (a, &x) in acc.iter_mut().zip(c) {
                *a = a.wrapping_add(x);
            }
        }
        acc.iter().fold(0u64, |a, &b| a.wrapping_add(b))
    };
    if threads == 1 {
        return sum(v);
    }
    std::thread::scope(|sc| {
        let handles: Vec<_> = split(v, threads)
            .map(|s| sc.spawn(move || sum(s)))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader"))
            .fold(0u64, u64::wrapping_add)
    })
}

fn copy(src: &[u64], dst: &mut [u64], threads: usize) {
    if threads == 1 {
        dst.copy_from_slice(src);
        return;
    }
    let n = src.len().div_ceil(threads);
    std::thread::scope(|sc| {
        for (d, s) in dst.chunks_mut(n).zip(src.chunks(n)) {
            sc.spawn(move || d.copy_from_slice(s));
        }
    });
}

fn bandwidth(c: &mut Criterion) {
    let src: Vec<u64> = (0..(BYTES / 8) as u64).collect();
    let mut dst = vec![0u64; BYTES / 8];
    let mut g = c.benchmark_group("cpu/memory/copy");
    g.throughput(Throughput::Bytes(2 * BYTES as u64));
    for threads in [1, 2] {
        g.bench_function(format!("{threads}threads"), |b| {
            b.iter(|| copy(black_box(&src), black_box(&mut dst), threads))
        });
    }
    g.finish();
    let mut g = c.benchmark_group("cpu/memory/read");
    g.throughput(Throughput::Bytes(BYTES as u64));
    for threads in [1, 2] {
        g.bench_function(format!("{threads}threads"), |b| {
            b.iter(|| black_box(read(black_box(&src), threads)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();
    targets = bandwidth
}
criterion_main!(benches);
