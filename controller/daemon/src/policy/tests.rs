//! The policy store: validate then swap, atomic writes, versions, rollback, reloads.

use std::sync::{Arc, Mutex};

use agentcg_core::controller::{Controller, StartOptions};
use agentcg_core::events::{EventBody, EventBus};
use agentcg_core::policy::{DEFAULT_POLICY, Policy};

use super::*;

/// `policy_reloaded` events seen: (ok, hash).
type Reloads = Arc<Mutex<Vec<(bool, Option<String>)>>>;

struct Fixture {
    _dir: tempfile::TempDir,
    file: PathBuf,
    store: Arc<PolicyStore>,
    controller: Shared,
    reloads: Reloads,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cgroup/agentcg");
    crate::api::tests::fake_cgroup(root.parent().unwrap());
    crate::api::tests::fake_cgroup(&root);
    let state_dir = dir.path().join("state");
    let events = Arc::new(EventBus::in_memory());
    let reloads: Reloads = Arc::new(Mutex::new(Vec::new()));
    let seen = reloads.clone();
    events.observe(Box::new(move |e| {
        if let EventBody::PolicyReloaded { ok, hash, .. } = &e.body {
            seen.lock().unwrap().push((*ok, hash.clone()));
        }
    }));
    let (controller, _) = Controller::start(
        Policy::default_policy(),
        StartOptions {
            root: &root,
            state_dir: &state_dir,
            on_written: Arc::new(|_: &_, _| {}),
            events: events.clone(),
        },
    )
    .unwrap();
    let controller = Arc::new(Mutex::new(controller));
    let file = dir.path().join("policy.toml");
    std::fs::write(&file, DEFAULT_POLICY).unwrap();
    let store = Arc::new(PolicyStore::new(
        file.clone(),
        DEFAULT_POLICY.into(),
        file.display().to_string(),
        &state_dir,
        controller.clone(),
        events.clone(),
    ));
    Fixture {
        _dir: dir,
        file,
        store,
        controller,
        reloads,
    }
}

fn reloads(f: &Fixture) -> Vec<(bool, Option<String>)> {
    f.reloads.lock().unwrap().clone()
}

#[test]
fn a_valid_policy_goes_in_whole_and_an_invalid_one_not_at_all() {
    let f = fixture();
    let new = DEFAULT_POLICY.replace("cpu_weight = 400", "cpu_weight = 300");
    let out = f.store.swap(new.clone(), "test", true).unwrap();
    assert!(out.changed);
    assert_eq!(out.changes, ["priority.high.cpu_weight: 400 -> 300"]);
    assert_eq!(std::fs::read_to_string(&f.file).unwrap(), new);
    assert_eq!(f.controller.lock().unwrap().policy().weights[2], 300);

    let bad = new
        .replace("cpu_weight = 100", "cpu_weight = 0")
        .replace("pids = 4096", "pids = \"x\"");
    let Err(Refusal::Invalid(problems)) = f.store.swap(bad, "test", true) else {
        panic!("accepted an invalid policy");
    };
    assert_eq!(problems.len(), 2);
    assert_eq!(
        std::fs::read_to_string(&f.file).unwrap(),
        new,
        "file untouched"
    );
    assert_eq!(f.controller.lock().unwrap().policy().weights[1], 100);
    let status = f.store.status();
    assert_eq!(status["hash"], hash(&new));
    assert_eq!(status["last_reload"]["ok"], false);
    assert!(
        status["last_reload"]["errors"][0]
            .as_str()
            .unwrap()
            .starts_with("test:")
    );

    let same = f.store.swap(new.clone(), "again", true).unwrap();
    assert!(!same.changed);
    let seen = reloads(&f);
    assert_eq!(seen, [(true, Some(hash(&new))), (false, Some(hash(&new)))]);
}

#[test]
fn versions_are_kept_and_rolled_back() {
    let f = fixture();
    for w in 1..=12 {
        let text = DEFAULT_POLICY.replace("cpu_weight = 400", &format!("cpu_weight = {}", 400 + w));
        f.store.swap(text, "test", true).unwrap();
    }
    let versions = f.store.versions();
    assert_eq!(versions.len(), KEEP_VERSIONS + 1);
    assert_eq!(versions[0].hash, f.store.text().1);
    let three_back = f.store.version_text(3).unwrap();
    assert!(three_back.contains("cpu_weight = 409"));
    f.store.swap(three_back.clone(), "rollback", true).unwrap();
    assert_eq!(std::fs::read_to_string(&f.file).unwrap(), three_back);
    assert!(matches!(f.store.version_text(40), Err(Refusal::Io(_))));
}

#[test]
fn file_reloads_read_the_file_and_refuse_bad_ones() {
    let f = fixture();
    std::fs::write(&f.file, "[memory]\npressure_at = 500\n").unwrap();
    let Err(refusal) = f.store.reload_file("SIGHUP") else {
        panic!("accepted")
    };
    let line = refusal.render(&f.file.display().to_string());
    assert!(
        line.ends_with("policy.toml:2:15: memory.pressure_at: 500 is out of range 0..=100"),
        "{line}"
    );
    std::fs::write(&f.file, vec![0xffu8; 64]).unwrap();
    assert!(f.store.reload_file("SIGHUP").is_err());
    std::fs::remove_file(&f.file).unwrap();
    assert!(f.store.reload_file("SIGHUP").is_err());
    assert_eq!(f.store.text().0, DEFAULT_POLICY, "still the first policy");
    std::fs::write(&f.file, "[session]\npids = 99\n").unwrap();
    assert!(f.store.reload_file("SIGHUP").unwrap().changed);
    assert_eq!(f.controller.lock().unwrap().policy().session.pids, 99);
    assert!(
        !f.store.reload_file("SIGHUP").unwrap().changed,
        "same text: no second reload"
    );
}

/// One edit of the watched file is one reload, whatever events it makes.
#[test]
fn a_file_edit_is_one_reload() {
    let f = fixture();
    crate::reload::watch_file(f.store.clone()).unwrap();
    let text = DEFAULT_POLICY.replace("pids = 4096", "pids = 4000");
    // Written in place, then again by rename: four events, one new text.
    std::fs::write(&f.file, &text).unwrap();
    let tmp = f.file.with_extension("new");
    std::fs::write(&tmp, &text).unwrap();
    std::fs::rename(&tmp, &f.file).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while f.store.text().1 != hash(&text) && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::thread::sleep(crate::reload::SETTLE * 3);
    assert_eq!(f.store.text().1, hash(&text));
    assert_eq!(reloads(&f), [(true, Some(hash(&text)))]);
}

#[test]
fn a_reload_racing_an_api_change_never_puts_an_older_file_back() {
    // Reloads run all the time (a watcher woken by the API's own writes); every API
    // change must still be the policy in force right after it returns.
    let f = fixture();
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = f.store.reload_file("test");
            }
        });
        for pids in 1000..1200 {
            let text = DEFAULT_POLICY.replace("pids = 4096", &format!("pids = {pids}"));
            let r = f.store.swap(text.clone(), "test", true);
            let in_force = f.store.text().0;
            if r.is_err() || in_force != text {
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            assert!(r.is_ok(), "{pids}: {:?}", r.err());
            assert!(in_force == text, "pids = {pids} went out of force at once");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}
