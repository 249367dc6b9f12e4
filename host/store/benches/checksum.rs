//! Throughput of the candidate entry checksums, in a portable build (no `-C target-cpu`):
//! CRC32C as the store computes it (`crc-fast`, which picks AVX-512 VPCLMULQDQ, PCLMULQDQ with
//! SSE4.2, or ARMv8 CRC and PMULL at run time), CRC32C by the `crc32c` crate (SSE4.2 / ARMv8 CRC
//! instructions, the store's choice before), and XXH3-64 (`xxhash-rust`, whose SIMD path is chosen
//! at compile time).
//!
//! `cargo bench -p filecache-store --bench checksum`

use std::hint::black_box;

use filecache_store::entry::Checksum;
use std::time::{Duration, Instant};

fn throughput(size: usize, iters: usize, elapsed: Duration) -> f64 {
    (size * iters) as f64 / elapsed.as_secs_f64() / 1e9
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    println!(
        "{:>10}  {:>16}  {:>16}  {:>16}",
        "size", "store GB/s", "crc32c GB/s", "xxh3-64 GB/s"
    );
    for size in [1usize << 10, 64 << 10, 1 << 20, 64 << 20] {
        let data: Vec<u8> = (0..size)
            .map(|i| (i as u32).wrapping_mul(2654435761).to_le_bytes()[3])
            .collect();
        let iters = ((256usize << 20) / size).max(2);
        let (mut store, mut crc, mut xxh) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..7 {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(Checksum::of(black_box(&data)));
            }
            store.push(throughput(size, iters, t.elapsed()));
            let t = Instant::now();
            for _ in 0..iters {
                black_box(crc32c::crc32c(black_box(&data)));
            }
            crc.push(throughput(size, iters, t.elapsed()));
            let t = Instant::now();
            for _ in 0..iters {
                black_box(xxhash_rust::xxh3::xxh3_64(black_box(&data)));
            }
            xxh.push(throughput(size, iters, t.elapsed()));
        }
        println!(
            "{:>10}  {:>16.2}  {:>16.2}  {:>16.2}",
            size,
            median(store),
            median(crc),
            median(xxh)
        );
    }
}
