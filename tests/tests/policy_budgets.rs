//! Issue 11, hot reload: session budgets set by the policy are re-applied to existing
//! sessions on the real kernel. A session created without `--memory` takes a changed
//! `session.memory` (its cgroup files change, `policy diff` said it would); one created
//! with its own keeps it; one that already uses more than the new budget keeps its old
//! budget and the answer says why.

use std::path::Path;
use std::time::Duration;

use agentcg_vmtests::{Daemon, fresh_record, read_record, wait_for};

const MIB: u64 = 1 << 20;

fn read(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .to_string()
}

fn text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn policy_budgets_follow_a_reload_where_sessions_left_them_to_it() {
    let d = Daemon::start("policy-budgets");
    d.create_session(&["a"]);
    d.create_session(&["own", "--memory", "2G"]);
    d.create_session(&["busy"]);
    let session = |name: &str, file: &str| read(&d.root.join(format!("session-{name}/{file}")));
    assert_eq!(session("a", "memory.max"), (4096 * MIB).to_string());

    // `busy` holds 600 MiB in a call while the budget drops to 512 MiB.
    let record = fresh_record("budgets-busy");
    let mut hog = d.spawn_memhog(&record, "busy", "mem=700M,mem.max=900M", &["600", "30000"]);
    wait_for(
        "busy's call to hold 600 MiB",
        Duration::from_secs(120),
        || {
            let used: u64 = session("busy", "memory.current").parse().unwrap_or(0);
            used > 600 * MIB
        },
    );

    let file = std::env::temp_dir().join(format!("agentcg-budgets-{}.toml", std::process::id()));
    std::fs::write(&file, "[session]\nmemory = \"512M\"\npids = 1000\n").unwrap();
    let diff = d.agentcg(&["policy", "diff", file.to_str().unwrap()]);
    let said = text(&diff);
    assert_eq!(diff.status.code(), Some(1), "{said}");
    assert!(
        said.contains("session a: memory.max 4 GiB -> 512 MiB")
            && said.contains("(would be re-applied)"),
        "{said}"
    );
    assert!(
        said.contains("session busy:") && said.contains("kept: it uses"),
        "{said}"
    );
    assert!(!said.contains("session own: memory.max"), "{said}");
    assert_eq!(
        session("a", "memory.max"),
        (4096 * MIB).to_string(),
        "diff changes nothing"
    );

    let set = d.agentcg(&["policy", "set", "session.memory=512M", "session.pids=1000"]);
    let said = text(&set);
    assert!(set.status.success(), "{said}");
    assert!(
        said.contains("session a:") && said.contains("(re-applied)"),
        "{said}"
    );
    assert_eq!(session("a", "memory.max"), (512 * MIB).to_string());
    assert_eq!(session("a", "pids.max"), "1000");
    assert_eq!(session("a", "calls/memory.max"), (384 * MIB).to_string());
    // Its own memory stays; the pids it left to the policy follow it.
    assert_eq!(session("own", "memory.max"), (2048 * MIB).to_string());
    assert_eq!(session("own", "pids.max"), "1000");
    // Busy keeps its whole old budget, and its call runs on.
    assert_eq!(session("busy", "memory.max"), (4096 * MIB).to_string());
    assert_eq!(session("busy", "pids.max"), "4096");
    let shown = d.get_ok("/v1/sessions/a");
    assert_eq!(shown["plan"]["memory_max"], 512 * MIB, "{shown}");

    let _ = std::fs::remove_file(&file);
    let status = hog.wait().expect("wait agentcg run");
    let r = read_record(&record);
    assert!(status.success(), "{status:?}: {r}");
    assert_eq!(r["outcome"], "ok", "{r}");
}
