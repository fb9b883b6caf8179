//! Kernel tests of the `agentcg_sched` sched_ext scheduler in the 7.3.4 VM.

use agentcg_bpf::{SchedOptions, Scheduler};

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn load_attach_detach_reload() {
    for round in 0..2 {
        let s = Scheduler::load(&SchedOptions::default()).unwrap_or_else(|e| panic!("load: {e}"));
        println!("round {round}: {:?} attached={}", s.timings(), s.is_attached());
        std::thread::sleep(std::time::Duration::from_secs(2));
        println!("nodes={} stats={:?} exit={:?}", s.node_entries(), s.stats(), s.exit_info());
        assert!(s.is_attached());
        s.detach();
    }
}
