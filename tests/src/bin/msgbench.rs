//! msgbench: a hackbench-like messaging workload for the scheduler's benchmarks.
//! `msgbench PAIRS ROUND_TRIPS`: PAIRS pairs of threads bounce a 64-byte message over a
//! Unix socket pair ROUND_TRIPS times each; prints `messages_per_second elapsed_ms`.
//! Every message is a wake-up, so the figure follows the scheduler's wake-up path cost.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

fn bounce(mut s: UnixStream, trips: usize, first: bool) {
    let mut buf = [0u8; 64];
    for _ in 0..trips {
        if first {
            s.write_all(&buf).expect("write");
            s.read_exact(&mut buf).expect("read");
        } else {
            s.read_exact(&mut buf).expect("read");
            s.write_all(&buf).expect("write");
        }
    }
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().unwrap_or(0))
        .collect();
    let pairs = args.first().copied().unwrap_or(4).max(1);
    let trips = args.get(1).copied().unwrap_or(10_000).max(1);
    let t0 = Instant::now();
    let mut threads = Vec::new();
    for _ in 0..pairs {
        let (a, b) = UnixStream::pair().expect("socketpair");
        threads.push(std::thread::spawn(move || bounce(a, trips, true)));
        threads.push(std::thread::spawn(move || bounce(b, trips, false)));
    }
    for t in threads {
        t.join().expect("thread");
    }
    let secs = t0.elapsed().as_secs_f64();
    let messages = (2 * pairs * trips) as f64;
    println!("{:.0} {:.0}", messages / secs, secs * 1000.0);
}
