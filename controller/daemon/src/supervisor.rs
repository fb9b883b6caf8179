//! The daemon's moving parts around the controller: the socket, the one timer that
//! expires calls, the sweep (trigger 3 of docs/ARCHITECTURE.md#who-ends-a-call), the
//! wake-ups handlers wait on, and shutdown on signals.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use agentcg_core::controller::Controller;
use agentcg_core::controller::settle::{self, LeftoverWatch};
use agentcg_core::history::Durability;
use tokio::sync::Notify;

use crate::health::Health;
use crate::systemd::Notifier;

pub type Shared = Arc<Mutex<Controller>>;

/// How often the sweep looks for abandoned calls.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Wake-ups shared by the daemon's tasks.
#[derive(Debug, Default)]
pub struct Wakers {
    /// A call ended, or a record became durable (or failed to).
    pub ended: Notify,
    /// A call was declared: the timer may have an earlier deadline.
    pub declared: Notify,
}

/// Waits while running call `id` holds processes its tool left behind, as
/// [`LeftoverWatch`] decides (at once when its cgroup is empty); the caller then ends
/// it, killing what is left.
pub async fn settle_leftovers(shared: &Shared, id: u64) {
    let mut watch = LeftoverWatch::new(std::time::Instant::now());
    loop {
        let left = match shared.lock() {
            Ok(c) => c.leftovers(id),
            Err(_) => return,
        };
        if watch.end_now(std::time::Instant::now(), left) {
            return;
        }
        tokio::time::sleep(settle::STEP).await;
    }
}

/// Waits until `done()` holds, re-checking at each wake-up of `notify`, for at most
/// `limit`. Returns whether it held.
pub async fn wait_for(notify: &Notify, limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if done() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return done();
        }
    }
}

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

/// The socket's mode and group: an explicit `mode` as given; otherwise 0660 with the
/// socket group when it exists (its members may connect), 0600 (root only) when not.
pub fn socket_access(group_gid: Option<u32>, mode: Option<u32>) -> (u32, Option<u32>) {
    match (mode, group_gid) {
        (Some(m), g) => (m, g),
        (None, Some(g)) => (0o660, Some(g)),
        (None, None) => (0o600, None),
    }
}

/// Gives the socket its group (`group`, if it exists) and mode, and says so.
pub fn secure_socket(path: &Path, group: &str, mode: Option<u32>) -> Result<(), String> {
    let gid = nix::unistd::Group::from_name(group)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw());
    let (mode, gid) = socket_access(gid, mode);
    if let Some(g) = gid {
        std::os::unix::fs::chown(path, None, Some(g))
            .map_err(|e| format!("chgrp {group} {}: {e}", path.display()))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {mode:o} {}: {e}", path.display()))?;
    match gid {
        Some(_) => tracing::info!(socket = %path.display(), "socket mode {mode:o}, group {group}"),
        None => tracing::warn!(
            socket = %path.display(),
            "group `{group}` does not exist: socket mode {mode:o} (root only); create the \
             group (groupadd {group}, or the sysusers.d file) and add the agents' users to it"
        ),
    }
    Ok(())
}

/// The one timer: sleeps until the earliest deadline of a running call, kills that
/// call, and goes back to sleep. A call that ends takes its deadline with it (the
/// timer asks the controller each time), so no timer outlives its call.
pub async fn deadline_loop(shared: Shared, wakers: Arc<Wakers>) {
    loop {
        let declared = wakers.declared.notified();
        tokio::pin!(declared);
        declared.as_mut().enable();
        let next = shared.lock().ok().and_then(|c| c.next_deadline());
        let Some((deadline, call_id)) = next else {
            declared.await;
            continue;
        };
        tokio::select! {
            () = tokio::time::sleep_until(deadline.into()) => {}
            () = declared => continue,
        }
        let expired = shared.lock().map(|mut c| c.expire_call(call_id));
        match expired {
            Ok(Ok(true)) => tracing::info!(call_id, "timeout expired: call killed"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(call_id, "killing timed-out call: {e}"),
            Err(_) => {
                tracing::error!("controller lock poisoned");
                return;
            }
        }
    }
}

/// Periodically ends calls whose end no one reported (see `Controller::sweep`), and
/// says when the history writer or the reaper are in trouble.
pub async fn sweep_loop(shared: Shared, wakers: Arc<Wakers>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    let mut last_trouble = (None, None);
    loop {
        tick.tick().await;
        let Ok(mut c) = shared.lock() else {
            tracing::error!("controller lock poisoned");
            return;
        };
        let swept = c.sweep();
        let writer = c.writer_status();
        let reaper = c.reaper_status();
        drop(c);
        if !swept.is_empty() {
            wakers.ended.notify_waiters();
        }
        for rec in swept {
            if rec.outcome == agentcg_core::record::Outcome::Abandoned {
                tracing::warn!(call_id = rec.call_id, session = %rec.session, "call abandoned by its client; cleaned up");
            } else {
                tracing::warn!(call_id = rec.call_id, session = %rec.session, "call ended by the sweep: its tool's exit event was missed");
            }
        }
        let trouble = (writer.last_error.clone(), reaper.last_error.clone());
        if trouble != last_trouble {
            if let Some(e) = &trouble.0 {
                tracing::error!(pending = writer.pending, "history: {e}");
            }
            if let Some(e) = &trouble.1 {
                tracing::warn!(pending = reaper.pending.len(), "removing cgroups: {e}");
            }
            last_trouble = trouble;
        }
    }
}

/// The one-line state systemd shows in `systemctl status` (`STATUS=`).
pub fn status_line(shared: &Shared) -> String {
    match shared.lock() {
        Ok(c) => format!(
            "serving: {} sessions, {} running calls",
            c.list_sessions().len(),
            c.running_count()
        ),
        Err(_) => "controller lock poisoned".into(),
    }
}

/// Tells systemd the daemon is alive (`WATCHDOG=1`) every `every`, from the daemon's
/// event loop and only while the controller can be locked: a hung loop, a deadlock or
/// a stopped process miss the pings and systemd restarts the service. Each ping carries
/// the status line. Without a watchdog, the status is refreshed every [`SWEEP_EVERY`].
/// Each tick is also the beat `/healthz` looks for.
pub async fn watchdog_loop(
    shared: Shared,
    notifier: Arc<Notifier>,
    every: Option<Duration>,
    health: Arc<Health>,
) {
    let mut tick = tokio::time::interval(beat_every(every));
    loop {
        tick.tick().await;
        if shared.is_poisoned() {
            tracing::error!("controller lock poisoned: no more watchdog pings");
            return;
        }
        let status = status_line(&shared);
        let ping = if every.is_some() { "WATCHDOG=1\n" } else { "" };
        notifier.send(&format!("{ping}STATUS={status}"));
        health.beat();
    }
}

/// How often the watchdog loop ticks: the watchdog's interval, else [`SWEEP_EVERY`].
pub fn beat_every(watchdog: Option<Duration>) -> Duration {
    watchdog.unwrap_or(SWEEP_EVERY)
}

/// How long a stopping daemon waits for the records of the calls it ended.
const STOP_RECORDS_WAIT: Duration = Duration::from_secs(10);

/// Ends every running call (`--stop-ends-calls`) and waits until their records are
/// durable.
pub async fn end_all_calls(shared: &Shared, wakers: &Wakers) {
    let Ok(ended) = shared.lock().map(|mut c| c.end_all_calls()) else {
        tracing::error!("controller lock poisoned: running calls not ended");
        return;
    };
    wakers.ended.notify_waiters();
    let ids: Vec<u64> = ended.iter().map(|r| r.call_id).collect();
    tracing::info!(calls = ?ids, "stopping: ended every running call");
    let durable = wait_for(&wakers.ended, STOP_RECORDS_WAIT, || {
        shared.lock().is_ok_and(|c| {
            ids.iter()
                .all(|id| c.durability(*id) == Durability::Durable)
        })
    })
    .await;
    if !durable {
        tracing::warn!(
            "stopping: not every record was durable within {STOP_RECORDS_WAIT:?}; the next start recovers them from their state files"
        );
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn wait_for_wakes_on_notify_and_gives_up_at_its_limit() {
        let notify = Arc::new(Notify::new());
        let flag = Arc::new(AtomicBool::new(false));
        let (n, f) = (notify.clone(), flag.clone());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(30)).await;
            f.store(true, Ordering::SeqCst);
            n.notify_waiters();
        });
        let start = tokio::time::Instant::now();
        assert!(
            wait_for(&notify, Duration::from_secs(5), || flag
                .load(Ordering::SeqCst))
            .await
        );
        assert_eq!(start.elapsed(), Duration::from_millis(30));
        let start = tokio::time::Instant::now();
        assert!(!wait_for(&notify, Duration::from_millis(200), || false).await);
        assert_eq!(start.elapsed(), Duration::from_millis(200));
    }

    #[test]
    fn the_socket_is_the_groups_when_it_exists_else_roots_alone() {
        assert_eq!(socket_access(Some(990), None), (0o660, Some(990)));
        assert_eq!(socket_access(None, None), (0o600, None));
        assert_eq!(socket_access(None, Some(0o666)), (0o666, None));
        assert_eq!(socket_access(Some(990), Some(0o640)), (0o640, Some(990)));
    }
}
