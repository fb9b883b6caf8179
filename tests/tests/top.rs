//! `agentcg top` on the real kernel, in a real pseudo-terminal (tmux): a frame shows a
//! running call with its memory bar, and `q` quits and gives the terminal back.

use std::process::{Command, Stdio};
use std::time::Duration;

use agentcg_vmtests::{Daemon, bin_dir, memhog, wait_for};

fn tmux(args: &[&str]) -> std::process::Output {
    Command::new("tmux")
        .args(["-L", "agentcg-top-test"])
        .args(args)
        .output()
        .expect("tmux (installed by xtask/provision.sh)")
}

fn pane() -> String {
    String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "top"]).stdout).into_owned()
}

#[test]
#[ignore = "kernel test: needs root and the 7.3 VM (cargo xtask vm-test)"]
fn top_shows_a_running_call_with_its_memory_bar_and_q_quits_cleanly() {
    let d = Daemon::start("top");
    let out = d.agentcg(&["session", "create", "s1", "--memory", "512M"]);
    assert!(out.status.success(), "{out:?}");
    let mut call = d
        .cli()
        .args(["run", "--session", "s1", "--intent", "mem.max=256M", "--"])
        .args([memhog().as_str(), "96", "60000"])
        .stdin(Stdio::null())
        .spawn()
        .expect("agentcg run");
    let mut id = 0;
    wait_for(
        "the call holding its memory",
        Duration::from_secs(60),
        || {
            let running = d.get_ok("/v1/running");
            match running.as_array().and_then(|a| a.first()) {
                Some(c) if c["memory_current"].as_u64() > Some(90 << 20) => {
                    id = c["call_id"].as_u64().expect("id");
                    true
                }
                _ => false,
            }
        },
    );
    // The text frame first (no terminal): the call's row with a filled bar.
    let once = d.agentcg(&["top", "--once", "--width", "160"]);
    let frame = String::from_utf8_lossy(&once.stdout);
    assert!(once.status.success(), "{once:?}");
    let row = frame
        .lines()
        .find(|l| l.trim_start().starts_with(&format!("{id} ")) && l.contains("memhog"))
        .unwrap_or_else(|| panic!("no row for call {id} in\n{frame}"));
    assert!(
        row.contains("s1") && row.contains("##") && row.contains("memhog"),
        "{row}"
    );
    assert!(row.contains("running"), "{row}");
    let small = d.agentcg(&["top", "--once"]);
    let small = String::from_utf8_lossy(&small.stdout);
    assert!(small.lines().count() <= 24, "{small}");
    assert!(small.lines().all(|l| l.chars().count() <= 80), "{small}");
    // The live view in an 80x24 pseudo-terminal.
    let _ = tmux(&["kill-server"]);
    let script = format!(
        "{} --socket {} top; echo EXIT=$?; sleep 60",
        bin_dir().join("agentcg").display(),
        d.socket.display()
    );
    let started = tmux(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "80",
        "-y",
        "24",
        &script,
    ]);
    assert!(started.status.success(), "{started:?}");
    wait_for(
        "a frame with the call's row",
        Duration::from_secs(30),
        || {
            pane()
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{id} ")) && l.contains("##"))
        },
    );
    let live = pane();
    assert!(
        live.contains("running calls") && live.contains("sessions"),
        "{live}"
    );
    assert!(live.contains("call_declared"), "the events pane: {live}");
    println!("agentcg top in tmux:\n{live}");
    tmux(&["send-keys", "-t", "top", "q"]);
    wait_for("top to quit", Duration::from_secs(30), || {
        pane().contains("EXIT=0")
    });
    let after = pane();
    assert!(
        !after.contains("running calls"),
        "the alternate screen was left: the frame is gone after q:\n{after}"
    );
    let _ = tmux(&["kill-server"]);
    let _ = call.kill();
    let _ = call.wait();
}
