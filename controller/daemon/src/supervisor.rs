//! The daemon's moving parts around the controller: the socket, per-call timeout
//! timers, the sweep for calls whose client vanished, and shutdown on signals.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentcg_core::controller::Controller;

pub type Shared = Arc<Mutex<Controller>>;

/// How often the sweep looks for abandoned calls.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Binds the API socket, replacing a stale socket file but never a live daemon's.
pub fn bind(path: &Path) -> Result<tokio::net::UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another agentcgd is listening on {}",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("removing stale socket {}: {e}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("binding {}: {e}", path.display()))?;
    Ok(listener)
}

/// Applies the socket's file mode.
pub fn set_socket_mode(path: &Path, mode: u32) -> Result<(), String> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {:o} {}: {e}", mode, path.display()))
}

/// Kills a call when its timeout expires (if it is still running then).
pub fn arm_timeout(shared: Shared, call_id: u64) {
    let deadline = shared.lock().ok().and_then(|c| c.call_deadline(call_id));
    let Some(deadline) = deadline else { return };
    tokio::spawn(async move {
        tokio::time::sleep_until(deadline.into()).await;
        let expired = shared.lock().map(|mut c| c.expire_call(call_id));
        match expired {
            Ok(Ok(true)) => tracing::info!(call_id, "timeout expired: call killed"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(call_id, "killing timed-out call: {e}"),
            Err(_) => tracing::error!("controller lock poisoned"),
        }
    });
}

/// Removes finished calls' cgroups on the next turn of the runtime.
pub fn reap_soon(shared: Shared) {
    tokio::spawn(async move {
        tokio::task::yield_now().await;
        let errors = shared.lock().map(|mut c| c.reap()).unwrap_or_default();
        for e in errors {
            tracing::warn!("removing a finished call's cgroup: {e} (retried later)");
        }
    });
}

/// Periodically finishes calls whose client never reported back.
pub async fn sweep_loop(shared: Shared) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let swept = shared.lock().map(|mut c| c.sweep()).unwrap_or_default();
        for rec in swept {
            if rec.outcome == agentcg_core::record::Outcome::Abandoned {
                tracing::warn!(call_id = rec.call_id, session = %rec.session, "call abandoned by its client; cleaned up");
            } else {
                tracing::warn!(call_id = rec.call_id, session = %rec.session, "call ended by the sweep: its tool's exit event was missed");
            }
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
