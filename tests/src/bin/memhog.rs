//! memhog: allocates memory in touched chunks, for kernel tests and the demo.
//! `memhog MIB [HOLD_MS] [CHUNK_MIB] [PAUSE_MS]`: grows to MIB mebibytes in chunks,
//! touching every page, pausing PAUSE_MS after each chunk, holds for HOLD_MS, exits 0.

use std::time::Duration;

fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or(0))
        .collect();
    let total_mib = args.first().copied().unwrap_or(64);
    let hold = Duration::from_millis(args.get(1).copied().unwrap_or(0));
    let chunk_mib = args.get(2).copied().unwrap_or(16).max(1);
    let pause = Duration::from_millis(args.get(3).copied().unwrap_or(0));
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    let mut have = 0;
    while have < total_mib {
        let n = chunk_mib.min(total_mib - have);
        let mut v = vec![0u8; (n << 20) as usize];
        for page in v.chunks_mut(4096) {
            page[0] = 1;
        }
        chunks.push(v);
        have += n;
        if have < total_mib {
            std::thread::sleep(pause);
        }
    }
    println!("memhog: holding {have} MiB");
    std::thread::sleep(hold);
    println!("memhog: done ({} chunks)", chunks.len());
}
