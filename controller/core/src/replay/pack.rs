//! Packing: how many concurrent sessions a host holds. Static provisioning reserves
//! each session's recorded peak for its whole life, so it holds sessions while the sum
//! of their peaks fits. Under a policy, sessions share the host and it holds `n` when
//! the simulation of every count up to `n` kills nothing for lack of host memory (the
//! response's kills, the host's OOM kills). Session `i` replays run `i mod runs` either
//! way (`sim::sessions`).

use serde::Serialize;

use super::sim::{self, KillCause, KillRecord, Kills};
use super::trace::Run;
use crate::intent::Priority;
use crate::plan::PlanError;
use crate::policy::Policy;

/// The packing figure for one host size.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Packing {
    pub host_memory: u64,
    /// Sessions static peak provisioning holds, and the sum of their peaks.
    pub static_sessions: usize,
    pub static_reserve: u64,
    /// Sessions the policy holds with no host kill, and the largest memory they used.
    pub packed_sessions: usize,
    pub packed_peak_used: u64,
    /// `packed_sessions / static_sessions`.
    pub ratio: f64,
    /// The most any sharing can reach on these runs: [`ceiling`].
    pub ceiling: f64,
    /// Kills in the run with one session more, and the first of them.
    pub next_kills: Kills,
    pub next_first_kill: Option<KillRecord>,
}

/// Sessions whose recorded peaks fit `host` together (session `i` runs run `i mod runs`).
pub fn static_sessions(runs: &[Run], host: u64) -> (usize, u64) {
    let mut reserved = 0u64;
    let mut n = 0;
    if runs.is_empty() {
        return (0, 0);
    }
    loop {
        let peak = runs[n % runs.len()].peak();
        if reserved + peak > host || peak == 0 && n >= runs.len() {
            return (n, reserved);
        }
        reserved += peak;
        n += 1;
    }
}

/// The highest ratio any sharing of the host can reach on `runs` with every run's
/// recorded memory kept: their summed peaks over their summed means. On average `n`
/// sessions hold `n` means, which must fit the host, where static provisioning holds
/// one session per peak. 0 when the runs hold no memory.
pub fn ceiling(runs: &[Run]) -> f64 {
    let mean: f64 = runs.iter().map(Run::mean).sum();
    if mean <= 0.0 {
        return 0.0;
    }
    runs.iter().map(|r| r.peak() as f64).sum::<f64>() / mean
}

/// The packing figure: sessions added one at a time until the host kills.
pub fn pack(
    policy: &Policy,
    runs: &[Run],
    host: u64,
    priorities: &[Priority],
) -> Result<Packing, PlanError> {
    let (static_n, static_reserve) = static_sessions(runs, host);
    let seconds = super::horizon(runs);
    let limit = (static_n.max(1) * 64).min(100_000);
    let mut held = (0, 0);
    let mut next = None;
    for n in 1..=limit {
        let specs = sim::sessions(runs, n, priorities);
        let report = sim::simulate(policy, runs, &specs, host, seconds)?;
        if report.kills.host() > 0 {
            next = Some(report);
            break;
        }
        held = (n, report.peak_used);
    }
    Ok(Packing {
        host_memory: host,
        static_sessions: static_n,
        static_reserve,
        packed_sessions: held.0,
        packed_peak_used: held.1,
        ratio: if static_n == 0 {
            0.0
        } else {
            held.0 as f64 / static_n as f64
        },
        ceiling: ceiling(runs),
        next_kills: next.as_ref().map(|r| r.kills).unwrap_or_default(),
        next_first_kill: next.and_then(|r| {
            r.killed
                .into_iter()
                .find(|k| matches!(k.cause, KillCause::Response | KillCause::HostOom))
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replay::sim::tests::run;

    const MB: u64 = 1_000_000;

    /// One run of ten seconds: 100 MB of runtime, and a 900 MB test call in its first
    /// second. Static provisioning holds two on 2 GB; shared, five sessions start at
    /// distinct phases (0, 6, 2, 8, 4) and hold at most 1.4 GB, the sixth starts at
    /// phase 0 again and two calls peak together (2.4 GB): the host kills.
    #[test]
    fn shared_hosts_hold_more_than_static_peaks() {
        let r = run("r", &[100 * MB; 10], &[(0, "pytest", &[900 * MB])]);
        let policy = Policy::default_policy();
        let p = pack(&policy, &[r], 2000 * MB, &[]).expect("packs");
        assert_eq!((p.static_sessions, p.static_reserve), (2, 2000 * MB));
        assert_eq!(p.packed_sessions, 5);
        assert_eq!(p.packed_peak_used, 1400 * MB);
        assert!((p.ratio - 2.5).abs() < 1e-9, "{}", p.ratio);
        // Peak 1000 MB, mean (9 x 100 + 1000) / 10 = 190 MB.
        assert!((p.ceiling - 1000.0 / 190.0).abs() < 1e-9, "{}", p.ceiling);
        assert!(p.ratio <= p.ceiling);
        assert!(p.next_kills.host_oom > 0, "{:?}", p.next_kills);
        let first = p.next_first_kill.expect("a kill");
        assert_eq!(
            (first.command.as_str(), first.cause),
            ("pytest", KillCause::HostOom)
        );
    }

    #[test]
    fn the_ceiling_is_summed_peaks_over_summed_means() {
        let flat = run("flat", &[200 * MB; 4], &[]);
        let spiky = run("spiky", &[100 * MB, 100 * MB, 100 * MB, 500 * MB], &[]);
        assert!((ceiling(std::slice::from_ref(&flat)) - 1.0).abs() < 1e-9);
        // Peaks 200 + 500 over means 200 + 200.
        assert!((ceiling(&[flat, spiky]) - 700.0 / 400.0).abs() < 1e-9);
        assert_eq!(ceiling(&[]), 0.0);
    }

    #[test]
    fn static_provisioning_sums_peaks_round_robin() {
        let a = run("a", &[300 * MB; 2], &[]);
        let b = run("b", &[500 * MB; 2], &[]);
        assert_eq!(
            static_sessions(&[a.clone(), b.clone()], 1600 * MB),
            (4, 1600 * MB)
        );
        assert_eq!(static_sessions(&[a, b], 1599 * MB), (3, 1100 * MB));
        assert_eq!(static_sessions(&[], 1 << 30), (0, 0));
    }
}
