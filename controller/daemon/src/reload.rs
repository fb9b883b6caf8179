//! Hot reload of the policy file: on SIGHUP and when the file is written or replaced
//! (inotify on its directory, so editors that write a new file and rename it are seen
//! too), or when the file is a symlink through a name in that directory and that name
//! is replaced: a Kubernetes ConfigMap volume holds `policy.toml -> ..data/policy.toml`
//! and updates by renaming a new `..data` symlink over the old one. Bursts of events
//! are coalesced, and a text whose hash is the one in force changes nothing, so one edit
//! is one reload.

use std::ffi::{OsStr, OsString};
use std::path::{Component, Path};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

use crate::policy::PolicyStore;

/// How long the watcher waits after an event for the burst it belongs to.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Reloads on SIGHUP, on the current tokio runtime.
pub fn on_sighup(store: Arc<PolicyStore>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        tracing::warn!(
            "cannot catch SIGHUP: the policy reloads through the API and file edits only"
        );
        return;
    };
    tokio::spawn(async move {
        while hup.recv().await.is_some() {
            let _ = store.reload_file("SIGHUP");
        }
    });
}

/// Watches the policy file on a thread of its own.
pub fn watch_file(store: Arc<PolicyStore>) -> Result<(), String> {
    let file = store.file().to_path_buf();
    let dir = file
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name: OsString = file
        .file_name()
        .ok_or("the policy path has no file name")?
        .into();
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).map_err(|e| format!("inotify: {e}"))?;
    inotify
        .add_watch(
            dir,
            AddWatchFlags::IN_CLOSE_WRITE | AddWatchFlags::IN_MOVED_TO,
        )
        .map_err(|e| format!("watching {}: {e}", dir.display()))?;
    std::thread::Builder::new()
        .name("policy-watch".into())
        .spawn(move || {
            loop {
                match inotify.read_events() {
                    Ok(events)
                        if events.iter().any(|e| {
                            e.name.as_deref().is_some_and(|changed| {
                                concerns_policy(
                                    changed,
                                    &name,
                                    std::fs::read_link(&file).ok().as_deref(),
                                )
                            })
                        }) =>
                    {
                        std::thread::sleep(SETTLE);
                        let _ = store.reload_file("file changed");
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::error!("policy file watch ended: {e}");
                        return;
                    }
                }
            }
        })
        .map_err(|e| format!("starting the policy watcher: {e}"))?;
    Ok(())
}

/// Whether a change of the directory entry `changed` can change the policy file `name`,
/// whose symlink target (if it is one) is `link`: the file itself, or the first
/// component of a relative target (`..data` of `..data/policy.toml`).
pub fn concerns_policy(changed: &OsStr, name: &OsStr, link: Option<&Path>) -> bool {
    if changed == name {
        return true;
    }
    let via = link
        .filter(|l| l.is_relative())
        .and_then(|l| l.components().next());
    matches!(via, Some(Component::Normal(first)) if first == changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configmap_swap_of_the_link_the_policy_goes_through_is_a_change() {
        let name = OsStr::new("policy.toml");
        let link = Path::new("..data/policy.toml");
        assert!(concerns_policy(name, name, None));
        assert!(concerns_policy(OsStr::new("..data"), name, Some(link)));
        // The kubelet's other steps, and unrelated files, are not.
        assert!(!concerns_policy(OsStr::new("..data_tmp"), name, Some(link)));
        assert!(!concerns_policy(
            OsStr::new("..2026_12_06_05_00_00.1"),
            name,
            Some(link)
        ));
        assert!(!concerns_policy(OsStr::new("policy.toml.swp"), name, None));
        // An absolute target lives elsewhere: nothing in this directory leads to it.
        assert!(!concerns_policy(
            OsStr::new("etc"),
            name,
            Some(Path::new("/etc/x.toml"))
        ));
        assert!(!concerns_policy(
            OsStr::new(".."),
            name,
            Some(Path::new("../x.toml"))
        ));
    }
}
