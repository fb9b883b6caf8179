//! agentcg's synchronous core: intents, policy decisions, cgroupfs I/O and call
//! records. The daemon and the CLI are thin front-ends over this crate.

pub mod intent;
pub mod units;
pub mod policy;
pub mod plan;
pub mod cgroup;
pub mod record;
pub mod spawn;
pub mod controller;
pub mod history;
pub mod probe;
