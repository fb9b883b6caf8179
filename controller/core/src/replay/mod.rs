//! Dry-run replay (`agentcg replay`): what a policy would do to recorded agent runs,
//! without a kernel. `trace` reads the runs, `sim` replays them as concurrent sessions
//! through the daemon's own decisions (plan, pressure), and `pack` finds how many
//! sessions a host holds with no kill caused by its memory, against static
//! provisioning at each run's recorded peak.

pub mod pack;
pub mod sim;
pub mod trace;

pub use pack::{Packing, pack, static_sessions};
pub use sim::{
    KillCause, KillRecord, Kills, Report, SessionReport, SessionSpec, sessions, simulate,
    simulate_at,
};
pub use trace::{Run, TraceCall, TraceError, find_runs, load_run, parse_run};

/// Seconds a simulation covers: the longest run, so every run plays at least once.
pub fn horizon(runs: &[Run]) -> usize {
    runs.iter().map(Run::len).max().unwrap_or(0)
}
