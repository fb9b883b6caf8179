//! agentcg's synchronous core: intents, policy decisions, cgroupfs I/O and call
//! records. The daemon and the CLI are thin front-ends over this crate.

pub mod admission;
pub mod cgroup;
pub mod civil;
pub mod controller;
pub mod events;
pub mod history;
pub mod intent;
pub mod plan;
pub mod policy;
pub mod pressure;
pub mod probe;
pub mod record;
pub mod replay;
pub mod spawn;
#[cfg(test)]
mod testutil;
pub mod units;
