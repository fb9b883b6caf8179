//! The pure part of memreplay (`cargo xtask bench memory`): parse a recorded agent run's
//! `resources.json` (docs/ARCHITECTURE.md#agent-traces), turn it into a time-compressed
//! schedule of memory targets, and plan how to reach each target in chunks of at most
//! 64 MiB.
//!
//! The samples are parsed by `agentcg replay`'s own trace reader
//! (agentcg_core::replay::trace): `podman stats` decimal units, `MB` = 10^6 bytes.
//!
//! Rounding: a target is rounded up to a whole 4 KiB page, nothing more. A growth step
//! maps new chunks of at most 64 MiB (the last one of a step may be smaller); a shrink
//! unmaps whole chunks from the top and cuts the last one down to the page, so the
//! process never holds more than the trace says plus less than one page.

use std::time::Duration;

use agentcg_core::replay::trace::parse_samples;

pub const MIB: u64 = 1 << 20;
/// Largest chunk mapped (and touched) at once.
pub const CHUNK: u64 = 64 * MIB;
/// Targets are rounded up to this.
pub const PAGE: u64 = 4096;

/// One memory sample, relative to the first one.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds since the first sample (by `epoch`).
    pub offset_s: f64,
    /// Memory in bytes as recorded.
    pub bytes: u64,
}

/// The samples of a `resources.json` (`{"samples": [{"epoch": ..., "mem_usage":
/// "185.5MB / 134.5GB"}, ...]}`), ordered by `epoch`, offsets from the first; parsed
/// as `agentcg replay` parses them (agentcg_core::replay::trace).
pub fn parse_resources(json: &str) -> Result<Vec<Sample>, String> {
    let parsed = parse_samples(json)?;
    let first = parsed[0].0;
    Ok(parsed
        .into_iter()
        .map(|(epoch, bytes)| Sample {
            offset_s: epoch - first,
            bytes,
        })
        .collect())
}

/// One step of the replay: reach `target` bytes at `due` after the start.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Step {
    pub due: Duration,
    pub target: u64,
}

/// The samples compressed `speed` times, targets rounded up to a page.
pub fn schedule(samples: &[Sample], speed: f64) -> Vec<Step> {
    samples
        .iter()
        .map(|s| Step {
            due: Duration::from_secs_f64((s.offset_s / speed).max(0.0)),
            target: round_up(s.bytes),
        })
        .collect()
}

/// `bytes` rounded up to a whole page.
pub fn round_up(bytes: u64) -> u64 {
    bytes.div_ceil(PAGE) * PAGE
}

/// One operation on the stack of mapped chunks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Map and touch a new chunk of this many bytes (at most [`CHUNK`]).
    Grow(u64),
    /// Unmap the top chunk.
    Pop,
    /// Unmap the top chunk's tail so that it keeps this many bytes.
    Truncate(u64),
}

/// How to go from the chunks held (`chunks`, bottom first, page multiples) to
/// `target` bytes (a page multiple).
pub fn plan(chunks: &[u64], target: u64) -> Vec<Op> {
    let mut total: u64 = chunks.iter().sum();
    let mut ops = Vec::new();
    if target >= total {
        while total < target {
            let n = (target - total).min(CHUNK);
            ops.push(Op::Grow(n));
            total += n;
        }
        return ops;
    }
    let mut top = chunks.len();
    while top > 0 && total - chunks[top - 1] >= target {
        total -= chunks[top - 1];
        top -= 1;
        ops.push(Op::Pop);
    }
    if total > target && top > 0 {
        ops.push(Op::Truncate(chunks[top - 1] - (total - target)));
    }
    ops
}

/// Applies `ops` to a chunk list (what the bin does with real mappings).
pub fn apply(chunks: &mut Vec<u64>, ops: &[Op]) {
    for op in ops {
        match *op {
            Op::Grow(n) => chunks.push(n),
            Op::Pop => {
                chunks.pop();
            }
            Op::Truncate(n) => {
                if let Some(top) = chunks.last_mut() {
                    *top = n;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_ordered_by_epoch() {
        let json = r#"{"samples": [
            {"epoch": 101.5, "mem_usage": "300MB / 134.5GB"},
            {"epoch": 100.0, "mem_usage": "11.96MB / 134.5GB", "cpu_percent": "1%"}
        ], "summary": {}}"#;
        let samples = parse_resources(json).expect("parses");
        assert_eq!(
            samples,
            [
                Sample {
                    offset_s: 0.0,
                    bytes: 11_960_000
                },
                Sample {
                    offset_s: 1.5,
                    bytes: 300_000_000
                }
            ]
        );
        assert!(parse_resources(r#"{"samples": []}"#).is_err());
        assert!(parse_resources(r#"{"samples": [{"epoch": 1}]}"#).is_err());
    }

    #[test]
    fn schedule_compresses_time_and_rounds_to_pages() {
        let samples = [
            Sample {
                offset_s: 0.0,
                bytes: 1,
            },
            Sample {
                offset_s: 10.0,
                bytes: 8192,
            },
        ];
        let steps = schedule(&samples, 10.0);
        assert_eq!(steps[0].due, Duration::ZERO);
        assert_eq!(steps[0].target, 4096);
        assert_eq!(steps[1].due, Duration::from_secs(1));
        assert_eq!(steps[1].target, 8192);
        assert_eq!(schedule(&samples, 50.0)[1].due, Duration::from_millis(200));
    }

    #[test]
    fn growth_goes_in_chunks_of_at_most_64_mib() {
        let target = 150 * MIB;
        assert_eq!(
            plan(&[], target),
            [Op::Grow(CHUNK), Op::Grow(CHUNK), Op::Grow(22 * MIB)]
        );
        assert_eq!(plan(&[CHUNK], CHUNK + PAGE), [Op::Grow(PAGE)]);
        assert!(plan(&[CHUNK], CHUNK).is_empty());
    }

    #[test]
    fn shrink_pops_then_truncates_exactly() {
        let chunks = [CHUNK, CHUNK, 22 * MIB];
        assert_eq!(plan(&chunks, 100 * MIB), [Op::Pop, Op::Truncate(36 * MIB)]);
        assert_eq!(plan(&chunks, CHUNK), [Op::Pop, Op::Pop]);
        assert_eq!(plan(&chunks, 0), [Op::Pop, Op::Pop, Op::Pop]);
    }

    #[test]
    fn held_memory_tracks_the_trace_exactly() {
        let mut chunks = Vec::new();
        for mib in [12, 181, 320, 157, 306, 0, 200] {
            let target = round_up(mib * 1_000_000);
            let ops = plan(&chunks, target);
            apply(&mut chunks, &ops);
            assert_eq!(chunks.iter().sum::<u64>(), target);
            assert!(chunks.iter().all(|&c| c > 0 && c <= CHUNK && c % PAGE == 0));
        }
    }
}
