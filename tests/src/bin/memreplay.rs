//! memreplay: replays the memory curve of a recorded agent run (`resources.json`,
//! docs/ARCHITECTURE.md#agent-traces) for `cargo xtask bench memory`, or holds a fixed
//! amount (the agent runtime's base).
//!
//! ```text
//! memreplay --trace FILE --speed X --out FILE [--start-at-ms UNIX_MS] [--base-mib N]
//! memreplay --base-mib N [--ready FILE]     hold N MiB until killed (SIGTERM)
//! memreplay --trace FILE --peak-mib         print the trace's peak, MiB rounded up
//! ```
//!
//! Each sample's target is reached at its time divided by X, in chunks of at most
//! 64 MiB: new chunks are mmap'ed and every page is written; shrinking munmaps (so the
//! memory goes back to the kernel at once). The latency of each growth step (all chunks
//! of one sample) and each step's lag behind its schedule are written to `--out` as
//! JSON when the replay ends; a killed replay writes nothing. `--base-mib` with a trace
//! holds the base in the replay process itself (the reference script's way; the
//! benchmark runs the base as a separate process instead). Rounding: see
//! agentcg_vmtests::replay.

use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use agentcg_vmtests::replay::{self, MIB, Op, PAGE};
use serde_json::json;

/// One anonymous mapping, every page touched.
struct Chunk {
    ptr: *mut u8,
    len: usize,
}

impl Chunk {
    fn map(len: u64) -> Result<Self, String> {
        let len = usize::try_from(len).map_err(|_| format!("chunk of {len} bytes"))?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {len} bytes: {}",
                std::io::Error::last_os_error()
            ));
        }
        let ptr = ptr.cast::<u8>();
        for off in (0..len).step_by(PAGE as usize) {
            // SAFETY: `off < len`, inside the mapping just created.
            unsafe { ptr.add(off).write_volatile(1) };
        }
        Ok(Self { ptr, len })
    }

    /// Gives the tail beyond `keep` bytes (a page multiple) back to the kernel.
    fn truncate(&mut self, keep: u64) {
        let keep = usize::try_from(keep).unwrap_or(self.len).min(self.len);
        // SAFETY: unmaps the page-aligned tail [keep, len) of our own mapping.
        unsafe { libc::munmap(self.ptr.add(keep).cast(), self.len - keep) };
        self.len = keep;
    }
}

impl Drop for Chunk {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: unmaps exactly the mapping this chunk owns.
            unsafe { libc::munmap(self.ptr.cast(), self.len) };
        }
    }
}

#[derive(Default)]
struct Opts {
    trace: Option<String>,
    speed: f64,
    out: Option<String>,
    start_at_ms: Option<u64>,
    base_mib: u64,
    ready: Option<String>,
    peak: bool,
}

fn parse_args() -> Result<Opts, String> {
    let mut opts = Opts {
        speed: 1.0,
        ..Opts::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--peak-mib" {
            opts.peak = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag} {v}: not a number"))
        };
        match flag.as_str() {
            "--trace" => opts.trace = Some(value),
            "--speed" => {
                opts.speed = value
                    .parse()
                    .ok()
                    .filter(|s: &f64| *s > 0.0)
                    .ok_or_else(|| format!("--speed {value}: not a positive number"))?;
            }
            "--out" => opts.out = Some(value),
            "--start-at-ms" => opts.start_at_ms = Some(num(&value)?),
            "--base-mib" => opts.base_mib = num(&value)?,
            "--ready" => opts.ready = Some(value),
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(opts)
}

fn main() -> ExitCode {
    match parse_args().and_then(|opts| run(&opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("memreplay: {e}");
            ExitCode::from(2)
        }
    }
}

fn grow(chunks: &mut Vec<Chunk>, bytes: u64) -> Result<(), String> {
    let mut sizes: Vec<u64> = Vec::new();
    for op in replay::plan(&sizes, bytes) {
        if let Op::Grow(n) = op {
            chunks.push(Chunk::map(n)?);
            sizes.push(n);
        }
    }
    Ok(())
}

fn run(opts: &Opts) -> Result<(), String> {
    let mut base = Vec::new();
    grow(&mut base, opts.base_mib * MIB)?;
    let Some(trace) = &opts.trace else {
        if let Some(ready) = &opts.ready {
            std::fs::write(ready, "ready\n").map_err(|e| format!("{ready}: {e}"))?;
        }
        loop {
            // SAFETY: pause(2) has no preconditions; a signal ends the process.
            unsafe { libc::pause() };
        }
    };
    let text = std::fs::read_to_string(trace).map_err(|e| format!("{trace}: {e}"))?;
    let samples = replay::parse_resources(&text).map_err(|e| format!("{trace}: {e}"))?;
    if opts.peak {
        let peak = samples.iter().map(|s| s.bytes).max().unwrap_or(0);
        println!("{}", peak.div_ceil(MIB));
        return Ok(());
    }
    let out = opts.out.as_ref().ok_or("--out FILE is required")?;
    let steps = replay::schedule(&samples, opts.speed);
    if let Some(at) = opts.start_at_ms {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        std::thread::sleep(Duration::from_millis(at).saturating_sub(now));
    }
    let start = Instant::now();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut chunks: Vec<Chunk> = Vec::new();
    let mut sizes: Vec<u64> = Vec::new();
    let mut peak = 0;
    let mut records = Vec::with_capacity(steps.len());
    for (i, step) in steps.iter().enumerate() {
        std::thread::sleep(step.due.saturating_sub(start.elapsed()));
        let lag = start.elapsed().saturating_sub(step.due);
        let from: u64 = sizes.iter().sum();
        let ops = replay::plan(&sizes, step.target);
        let t0 = Instant::now();
        for op in &ops {
            match *op {
                Op::Grow(n) => chunks.push(Chunk::map(n)?),
                Op::Pop => drop(chunks.pop()),
                Op::Truncate(n) => {
                    if let Some(top) = chunks.last_mut() {
                        top.truncate(n);
                    }
                }
            }
        }
        let took = t0.elapsed();
        replay::apply(&mut sizes, &ops);
        peak = peak.max(step.target);
        let grew = step.target > from;
        records.push(json!({
            "i": i,
            "due_ms": ms(step.due),
            "lag_ms": ms(lag),
            "from": from,
            "target": step.target,
            "chunks": ops.iter().filter(|op| matches!(op, Op::Grow(_))).count(),
            "grow_ms": grew.then(|| ms(took)),
        }));
    }
    let completion = start.elapsed();
    let growth: Vec<f64> = records
        .iter()
        .filter_map(|r| r["grow_ms"].as_f64())
        .collect();
    let result = json!({
        "trace": trace,
        "speed": opts.speed,
        "base_mib": opts.base_mib,
        "samples": steps.len(),
        "scheduled_ms": steps.last().map_or(0.0, |s| ms(s.due)),
        "completion_ms": ms(completion),
        "peak_bytes": peak,
        "growth_ms": growth,
        "steps": records,
    });
    drop(chunks);
    drop(base);
    let text = serde_json::to_string(&result).map_err(|e| e.to_string())?;
    std::fs::write(out, text + "\n").map_err(|e| format!("{out}: {e}"))?;
    eprintln!(
        "memreplay: {} steps ({} growth) in {:.0} ms (scheduled {:.0} ms), peak {} MiB",
        steps.len(),
        growth.len(),
        ms(completion),
        steps.last().map_or(0.0, |s| ms(s.due)),
        peak.div_ceil(MIB)
    );
    Ok(())
}
