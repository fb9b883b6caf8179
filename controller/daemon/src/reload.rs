//! Hot reload of the policy file: on SIGHUP and when the file is written or replaced
//! (inotify on its directory, so editors that write a new file and rename it are seen
//! too). Bursts of events are coalesced, and a text whose hash is the one in force
//! changes nothing, so one edit is one reload.

use std::ffi::OsString;
use std::path::Path;
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
                        if events
                            .iter()
                            .any(|e| e.name.as_deref() == Some(name.as_os_str())) =>
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
