//! When a call whose tool has exited still holds processes: how long agentcgd watches
//! them before ending the call and killing them. The tool's own exit finishes a moment
//! after it is reported, and what it left behind may be a fork bomb: processes that keep
//! multiplying until `pids.max` refuses their forks. Such leftovers are watched while
//! their number grows (up to [`RUNAWAY_WATCH`]), so the call ends as `pids_limited`
//! with feedback the agent can act on instead of `ok`; quiet leftovers are killed after
//! [`QUIET`]. Both triggers that end a call on its tool's exit (the kernel telemetry
//! and the client's report) use the same watch.

use std::time::{Duration, Instant};

/// How long leftovers may go without growing before they are killed.
pub const QUIET: Duration = Duration::from_millis(300);
/// The longest leftovers that keep growing are watched.
pub const RUNAWAY_WATCH: Duration = Duration::from_secs(10);
/// How often the leftovers are looked at.
pub const STEP: Duration = Duration::from_millis(10);

/// What is left in the cgroup of a call whose tool exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Leftovers {
    /// `pids.current`.
    pub tasks: u64,
    /// Forks `pids.max` refused so far (`pids.events` max).
    pub limit_hits: u64,
}

/// Watches one call's leftovers; [`LeftoverWatch::end_now`] says when to end the call.
#[derive(Debug, Clone, Copy)]
pub struct LeftoverWatch {
    started: Instant,
    grew_at: Instant,
    most: u64,
}

impl LeftoverWatch {
    pub fn new(now: Instant) -> Self {
        LeftoverWatch {
            started: now,
            grew_at: now,
            most: 0,
        }
    }

    /// Whether to end the call now, given what is left (`None`: the cgroup is empty or
    /// the call has ended): at once when nothing is left or `pids.max` has refused a
    /// fork; after [`QUIET`] without growth; after [`RUNAWAY_WATCH`] in any case.
    pub fn end_now(&mut self, now: Instant, left: Option<Leftovers>) -> bool {
        let Some(left) = left else { return true };
        if left.limit_hits > 0 {
            return true;
        }
        if left.tasks > self.most {
            self.most = left.tasks;
            self.grew_at = now;
        }
        now.duration_since(self.grew_at) >= QUIET
            || now.duration_since(self.started) >= RUNAWAY_WATCH
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn left(tasks: u64, limit_hits: u64) -> Option<Leftovers> {
        Some(Leftovers { tasks, limit_hits })
    }

    #[test]
    fn an_empty_cgroup_or_a_refused_fork_ends_the_call_at_once() {
        let t = Instant::now();
        assert!(LeftoverWatch::new(t).end_now(t, None));
        assert!(LeftoverWatch::new(t).end_now(t, left(64, 3)));
        assert!(!LeftoverWatch::new(t).end_now(t, left(1, 0)));
    }

    #[test]
    fn quiet_leftovers_are_killed_after_the_quiet_time() {
        let t = Instant::now();
        let mut w = LeftoverWatch::new(t);
        assert!(!w.end_now(t, left(2, 0)));
        assert!(!w.end_now(t + QUIET / 2, left(2, 0)));
        assert!(
            !w.end_now(t + QUIET - STEP, left(1, 0)),
            "fewer is not growth"
        );
        assert!(w.end_now(t + QUIET, left(1, 0)));
    }

    #[test]
    fn growing_leftovers_are_watched_until_the_limit_or_the_runaway_bound() {
        let t = Instant::now();
        let mut w = LeftoverWatch::new(t);
        let mut at = t;
        let mut tasks = 1;
        while at < t + RUNAWAY_WATCH - QUIET {
            assert!(!w.end_now(at, left(tasks, 0)), "still growing at {tasks}");
            tasks += 1;
            at += QUIET / 2;
        }
        assert!(w.end_now(at, left(tasks, 1)), "the limit refused a fork");
        let mut w = LeftoverWatch::new(t);
        assert!(!w.end_now(t + RUNAWAY_WATCH - STEP, left(5, 0)));
        assert!(
            w.end_now(t + RUNAWAY_WATCH, left(6, 0)),
            "growing, but watched long enough"
        );
    }
}
