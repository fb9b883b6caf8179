//! The soak's figures and verdicts from soakbench's JSON, as pure functions: agentcgd's
//! RSS at the start, after 1,000 calls, at the end and at its largest; whether its fd
//! count stayed flat; no cgroup leaked, no record lost, no call failed.
//!
//! Flat fds: after a warm-up of the first 10 % of the calls, the steady state is the
//! median fd count of the samples taken while calls 10-20 % ran; the count is flat when
//! the last sample (taken once the run is over and every call cgroup is gone) is at most
//! the steady state plus a margin of max(4, 10 % of it). A daemon that keeps one fd per
//! call, or per hundred calls, ends far above its steady state; an idle daemon holds
//! fewer fds than one serving 4 clients, so the last sample below the steady state is flat.

use serde_json::{Value, json};

/// RSS target after `RSS_TARGET_CALLS` calls (issue 12).
pub const RSS_TARGET_BYTES: u64 = 30 << 20;
pub const RSS_TARGET_CALLS: u64 = 10_000;
/// The share of the calls that is warm-up, and where the steady-state window ends.
const WARMUP_SHARE: f64 = 0.1;
const STEADY_END_SHARE: f64 = 0.2;
/// The flatness margin: max(`MARGIN_MIN`, `MARGIN_SHARE` of the steady state).
const MARGIN_MIN: u64 = 4;
const MARGIN_SHARE: f64 = 0.1;

/// One sample of agentcgd.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub t_s: f64,
    pub calls: u64,
    pub rss: u64,
    pub fds: u64,
    pub threads: u64,
}

/// soakbench's samples, in order.
pub fn points(raw: &Value) -> Vec<Point> {
    raw["samples"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|s| Point {
            t_s: s["t_ms"].as_f64().unwrap_or(0.0) / 1e3,
            calls: s["calls"].as_u64().unwrap_or(0),
            rss: s["rss_bytes"].as_u64().unwrap_or(0),
            fds: s["fds"].as_u64().unwrap_or(0),
            threads: s["threads"].as_u64().unwrap_or(0),
        })
        .collect()
}

/// agentcgd's resident memory over the run, bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rss {
    pub start: u64,
    /// The first sample with at least 1,000 calls done: (calls, bytes).
    pub after_1000: Option<(u64, u64)>,
    pub end: u64,
    pub max: u64,
}

pub fn rss(points: &[Point]) -> Option<Rss> {
    Some(Rss {
        start: points.first()?.rss,
        after_1000: points
            .iter()
            .find(|p| p.calls >= 1_000)
            .map(|p| (p.calls, p.rss)),
        end: points.last()?.rss,
        max: points.iter().map(|p| p.rss).max()?,
    })
}

/// agentcgd's open fds over the run, and whether they stayed flat (module note).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fds {
    pub first: u64,
    pub steady: u64,
    pub margin: u64,
    pub last: u64,
    pub max: u64,
    pub flat: bool,
}

/// `None` when no sample fell in the steady-state window (too few calls or samples).
pub fn fds(points: &[Point], calls: u64) -> Option<Fds> {
    let (last, during) = points.split_last()?;
    let window = (calls as f64 * WARMUP_SHARE)..=(calls as f64 * STEADY_END_SHARE);
    let mut steady: Vec<u64> = during
        .iter()
        .filter(|p| window.contains(&(p.calls as f64)))
        .map(|p| p.fds)
        .collect();
    steady.sort_unstable();
    let steady = *steady.get(steady.len().checked_sub(1)? / 2)?;
    let margin = MARGIN_MIN.max((steady as f64 * MARGIN_SHARE).ceil() as u64);
    Some(Fds {
        first: points.first()?.fds,
        steady,
        margin,
        last: last.fds,
        max: points.iter().map(|p| p.fds).max()?,
        flat: last.fds <= steady + margin,
    })
}

/// The targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub calls: u64,
    pub failures: u64,
    pub leaked: u64,
    pub rows_bad: u64,
    pub rss: Option<Rss>,
    pub fds: Option<Fds>,
    /// Sampling stopped early (agentcgd gone): every sample-based target fails.
    pub sampling_failed: bool,
}

impl Verdict {
    pub fn of(raw: &Value) -> Verdict {
        let n = |v: &Value| v.as_u64().unwrap_or(0);
        let points = points(raw);
        let calls = n(&raw["calls"]);
        let rows = &raw["rows"];
        Verdict {
            calls,
            // Calls planned but never made count as failed too.
            failures: n(&raw["failures"]) + calls.saturating_sub(n(&raw["calls_done"])),
            leaked: n(&raw["leaked_cgroups"]),
            rows_bad: ["lost", "duplicates", "wrong_outcome", "unknown"]
                .iter()
                .map(|k| n(&rows[k]))
                .sum(),
            rss: rss(&points),
            fds: fds(&points, calls),
            sampling_failed: !raw["sample_error"].is_null(),
        }
    }

    pub fn no_leak(&self) -> bool {
        self.leaked == 0
    }

    pub fn no_record_lost(&self) -> bool {
        self.rows_bad == 0
    }

    pub fn no_failure(&self) -> bool {
        self.failures == 0
    }

    /// `None` when fewer calls ran than the target is stated for.
    pub fn rss_ok(&self) -> Option<bool> {
        (self.calls >= RSS_TARGET_CALLS)
            .then(|| !self.sampling_failed && self.rss.is_some_and(|r| r.end < RSS_TARGET_BYTES))
    }

    pub fn fds_flat(&self) -> bool {
        !self.sampling_failed && self.fds.is_some_and(|f| f.flat)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "no_leaked_cgroups": self.no_leak(), "no_lost_records": self.no_record_lost(),
            "no_failed_calls": self.no_failure(), "rss_below_30_mib": self.rss_ok(),
            "fds_flat": self.fds_flat(), "failures": self.failures,
            "rss": self.rss.map(|r| json!({"start": r.start, "after_1000": r.after_1000,
                                           "end": r.end, "max": r.max})),
            "fds": self.fds.map(|f| json!({"first": f.first, "steady": f.steady,
                                           "margin": f.margin, "last": f.last, "max": f.max})),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `calls` calls sampled every 10 calls; fds 20 plus 5 while calls run plus `leak`
    /// per 100 calls; the last sample idle.
    fn run(calls: u64, leak: u64) -> Vec<Point> {
        let mut v: Vec<Point> = (0..=calls / 10)
            .map(|i| Point {
                t_s: i as f64,
                calls: i * 10,
                rss: (10 << 20) + i * 1024,
                fds: 25 + i * 10 * leak / 100,
                threads: 8,
            })
            .collect();
        let end = v.last().copied().expect("a sample");
        v.push(Point {
            fds: end.fds - 5,
            ..end
        });
        v
    }

    #[test]
    fn a_steady_fd_count_is_flat_and_a_leak_is_not() {
        let flat = fds(&run(10_000, 0), 10_000).expect("judged");
        assert_eq!((flat.steady, flat.margin, flat.last), (25, 4, 20));
        assert!(flat.flat);
        // One fd per 100 calls: 100 more after 10,000 calls.
        let leak = fds(&run(10_000, 1), 10_000).expect("judged");
        assert!(!leak.flat, "{leak:?}");
        assert_eq!(leak.last - leak.first, 95);
        // Too few samples for a steady state: not judged.
        assert_eq!(fds(&run(5, 0), 5), None);
    }

    #[test]
    fn rss_at_start_after_1000_at_end_and_max() {
        let r = rss(&run(2_000, 0)).expect("samples");
        assert_eq!(r.start, 10 << 20);
        assert_eq!(r.after_1000, Some((1_000, (10 << 20) + 100 * 1024)));
        assert_eq!(
            (r.end, r.max),
            ((10 << 20) + 200 * 1024, (10 << 20) + 200 * 1024)
        );
    }

    fn raw(leaked: u64, lost: u64, failures: u64, end_rss: u64) -> Value {
        let mut samples: Vec<Value> = run(10_000, 0)
            .iter()
            .map(|p| {
                json!({"t_ms": p.t_s * 1e3, "calls": p.calls, "rss_bytes": p.rss,
                            "fds": p.fds, "threads": p.threads})
            })
            .collect();
        if let Some(last) = samples.last_mut() {
            last["rss_bytes"] = json!(end_rss);
        }
        json!({"calls": 10_000, "calls_done": 10_000, "failures": failures,
               "leaked_cgroups": leaked, "sample_error": null, "samples": samples,
               "rows": {"lost": lost, "duplicates": 0, "wrong_outcome": 0, "unknown": 0}})
    }

    #[test]
    fn every_target_can_fail() {
        let good = Verdict::of(&raw(0, 0, 0, 20 << 20));
        assert!(good.no_leak() && good.no_record_lost() && good.no_failure());
        assert_eq!(good.rss_ok(), Some(true));
        assert!(good.fds_flat());
        assert!(!Verdict::of(&raw(1, 0, 0, 20 << 20)).no_leak());
        assert!(!Verdict::of(&raw(0, 1, 0, 20 << 20)).no_record_lost());
        assert!(!Verdict::of(&raw(0, 0, 1, 20 << 20)).no_failure());
        assert_eq!(Verdict::of(&raw(0, 0, 0, 41 << 20)).rss_ok(), Some(false));
        let mut short = raw(0, 0, 0, 20 << 20);
        short["calls_done"] = json!(9_000);
        let v = Verdict::of(&short);
        assert_eq!(v.failures, 1_000, "calls never made are failures");
        short["calls"] = json!(9_000);
        assert_eq!(
            Verdict::of(&short).rss_ok(),
            None,
            "not judged below 10,000 calls"
        );
        let mut died = raw(0, 0, 0, 20 << 20);
        died["sample_error"] = json!("/proc/42: gone");
        let v = Verdict::of(&died);
        assert!(!v.fds_flat() && v.rss_ok() == Some(false));
    }
}
