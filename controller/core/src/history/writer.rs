//! The history writer: a thread of its own owns the database's write connection. It
//! commits every record that queued up meanwhile in one transaction (one fsync per
//! group, `synchronous=FULL`), then tells `on_written` per record, so no request or
//! pressure reaction ever waits on the disk. A group whose commit fails stays pending
//! and is retried; its failure is visible in [`WriterStatus`]
//! (docs/ARCHITECTURE.md#off-the-request-path). The same thread prunes records older
//! than the policy's `[history] keep`, at start and every [`PRUNE_EVERY`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;

use super::{HistoryError, PRUNE_KEEPS, schema};
use crate::cgroup::Cgroup;
use crate::cgroup::reaper::Reaper;
use crate::record::CallRecord;

/// How long a failed write waits before it is tried again.
pub(super) const RETRY_EVERY: Duration = Duration::from_secs(1);
/// How often records past the retention are pruned (and once at start).
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Where a record is on its way to the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// Committed (or never handed to this writer).
    Durable,
    /// Queued or being written.
    Pending,
    /// The last attempt failed (kept and retried); the error.
    Failed(String),
}

/// What the writer has done, for `agentcg status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct WriterStatus {
    pub path: PathBuf,
    /// Records committed since start.
    pub written: u64,
    /// Transactions that committed them (one per group of queued records).
    pub commits: u64,
    /// Records not yet durable (counted when the status is taken).
    pub pending: usize,
    /// Writes that failed (each retried).
    pub failures: u64,
    /// The error of the latest failure, cleared once a write succeeds again.
    pub last_error: Option<String>,
    /// Records removed by the retention since start.
    pub pruned: u64,
    /// The error of the latest prune, cleared once one succeeds.
    pub prune_error: Option<String>,
}

/// Called once per record when it is durable (`Ok`) or its write failed (`Err`, the
/// record is retried); runs on the writer's thread. What follows a durable record (its
/// `call_finished` event, its count in the metrics) hangs off this.
pub type OnWritten = Arc<dyn Fn(&CallRecord, Result<(), String>) + Send + Sync>;

/// What the writer thread is sent.
enum Msg {
    Record(Job),
    /// A new retention (`[history] keep` reloaded): prune with it now.
    Keep(Duration),
}

struct Job {
    record: Box<CallRecord>,
    json: String,
    /// Removed once the record is durable (the running call's state file).
    then_remove: Option<PathBuf>,
    /// Handed to the reaper once the record is durable, or its write failed: until
    /// then a restarted daemon finds the cgroup and knows the call did not vanish.
    then_reap: Option<Cgroup>,
}

#[derive(Default)]
struct Shared {
    status: WriterStatus,
    /// Call ids not durable yet: `None` in flight, `Some(error)` failed.
    pending: HashMap<u64, Option<String>>,
}

/// The history database's writer thread.
pub struct HistoryWriter {
    tx: Sender<Msg>,
    shared: Arc<Mutex<Shared>>,
}

impl std::fmt::Debug for HistoryWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HistoryWriter")
            .field("status", &self.status())
            .finish()
    }
}

impl HistoryWriter {
    /// Opens the database at `db` for writing and starts the writer thread, which keeps
    /// records for `keep`.
    pub fn start(
        db: &Path,
        keep: Duration,
        reaper: Reaper,
        on_written: OnWritten,
    ) -> Result<HistoryWriter, HistoryError> {
        let conn = schema::open(db)?;
        Self::spawn(db.to_path_buf(), conn, keep, reaper, on_written)
            .map_err(HistoryError::io("starting the writer thread for", db))
    }

    fn spawn(
        path: PathBuf,
        conn: Connection,
        keep: Duration,
        reaper: Reaper,
        on_written: OnWritten,
    ) -> std::io::Result<HistoryWriter> {
        let shared = Arc::new(Mutex::new(Shared {
            status: WriterStatus {
                path: path.clone(),
                ..WriterStatus::default()
            },
            pending: HashMap::new(),
        }));
        let (tx, rx) = channel();
        let worker = Worker {
            path,
            conn,
            keep,
            shared: shared.clone(),
            reaper,
            on_written,
        };
        std::thread::Builder::new()
            .name("history".into())
            .spawn(move || worker.run(rx))?;
        Ok(HistoryWriter { tx, shared })
    }

    /// Queues a record; `then_remove` is deleted once it is durable, and `then_reap`
    /// goes to the reaper then (or when the write fails: nothing leaks).
    pub fn submit(&self, r: &CallRecord, then_remove: Option<PathBuf>, then_reap: Option<Cgroup>) {
        let json = serde_json::to_string(r).unwrap_or_default();
        if let Ok(mut s) = self.shared.lock() {
            s.pending.insert(r.call_id, None);
        }
        let _ = self.tx.send(Msg::Record(Job {
            record: Box::new(r.clone()),
            json,
            then_remove,
            then_reap,
        }));
    }

    /// Keeps records for `keep` from now on (a policy reload); prunes with it at once.
    pub fn set_keep(&self, keep: Duration) {
        let _ = self.tx.send(Msg::Keep(keep));
    }

    pub fn durability(&self, call_id: u64) -> Durability {
        let Ok(s) = self.shared.lock() else {
            return Durability::Pending;
        };
        match s.pending.get(&call_id) {
            None => Durability::Durable,
            Some(None) => Durability::Pending,
            Some(Some(e)) => Durability::Failed(e.clone()),
        }
    }

    pub fn status(&self) -> WriterStatus {
        self.shared
            .lock()
            .map(|s| WriterStatus {
                pending: s.pending.len(),
                ..s.status.clone()
            })
            .unwrap_or_default()
    }
}

fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Calls that ended before this (unix ms) are past a retention of `keep`.
pub fn prune_cutoff(now_unix_ms: u64, keep: Duration) -> u64 {
    now_unix_ms.saturating_sub(keep.as_millis().try_into().unwrap_or(u64::MAX))
}

/// Deletes the records that ended before `cutoff`, except the newest `keep_newest`
/// (whatever their age: the in-memory index and a restarted daemon's recovery look
/// them up). Queries read a snapshot (WAL): one under way sees what it started with.
pub fn prune(conn: &Connection, cutoff: u64, keep_newest: usize) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM calls WHERE ended_unix_ms < ?1 AND call_id < coalesce(
             (SELECT min(call_id) FROM
                 (SELECT call_id FROM calls ORDER BY call_id DESC LIMIT ?2)), ?3)",
        rusqlite::params![
            schema::int(cutoff),
            schema::int(keep_newest as u64),
            i64::MAX
        ],
    )
}

struct Worker {
    path: PathBuf,
    conn: Connection,
    keep: Duration,
    shared: Arc<Mutex<Shared>>,
    reaper: Reaper,
    on_written: OnWritten,
}

impl Worker {
    fn run(mut self, rx: Receiver<Msg>) {
        let mut batch: Vec<Job> = Vec::new();
        let mut next_prune = Instant::now();
        loop {
            if Instant::now() >= next_prune {
                self.prune();
                next_prune = Instant::now() + PRUNE_EVERY;
            }
            // Failed jobs wait for the next retry, or for new work to go with.
            let mut wait = next_prune.saturating_duration_since(Instant::now());
            if !batch.is_empty() {
                wait = wait.min(RETRY_EVERY);
            }
            match rx.recv_timeout(wait) {
                Ok(msg) => self.take(msg, &mut batch, &mut next_prune),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) if batch.is_empty() => return,
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(RETRY_EVERY),
            }
            for msg in rx.try_iter() {
                self.take(msg, &mut batch, &mut next_prune);
            }
            if batch.is_empty() {
                continue;
            }
            match self.write(&batch) {
                Ok(()) => self.done(std::mem::take(&mut batch)),
                Err(e) => self.failed(&mut batch, e.to_string()),
            }
        }
    }

    fn take(&mut self, msg: Msg, batch: &mut Vec<Job>, next_prune: &mut Instant) {
        match msg {
            Msg::Record(job) => batch.push(job),
            Msg::Keep(keep) if keep != self.keep => {
                self.keep = keep;
                *next_prune = Instant::now();
            }
            Msg::Keep(_) => {}
        }
    }

    /// Commits the group in one transaction (one fsync).
    fn write(&mut self, batch: &[Job]) -> Result<(), HistoryError> {
        let err = HistoryError::sqlite("writing to", &self.path);
        let tx = self.conn.transaction().map_err(&err)?;
        for job in batch {
            schema::insert(&tx, &job.record, &job.json).map_err(&err)?;
        }
        tx.commit().map_err(err)
    }

    fn prune(&mut self) {
        let cutoff = prune_cutoff(now_unix_ms(), self.keep);
        let result = prune(&self.conn, cutoff, PRUNE_KEEPS);
        if let Ok(mut s) = self.shared.lock() {
            match result {
                Ok(n) => {
                    s.status.pruned += n as u64;
                    s.status.prune_error = None;
                }
                Err(e) => {
                    s.status.prune_error =
                        Some(HistoryError::sqlite("pruning", &self.path)(e).to_string())
                }
            }
        }
    }

    fn done(&self, mut batch: Vec<Job>) {
        for job in &mut batch {
            if let Some(p) = &job.then_remove {
                let _ = std::fs::remove_file(p);
            }
            if let Some(cg) = job.then_reap.take() {
                self.reaper.reap(cg);
            }
        }
        if let Ok(mut s) = self.shared.lock() {
            for job in &batch {
                s.pending.remove(&job.record.call_id);
            }
            s.status.written += batch.len() as u64;
            s.status.commits += 1;
            s.status.last_error = None;
        }
        for job in &batch {
            (self.on_written)(&job.record, Ok(()));
        }
    }

    fn failed(&self, batch: &mut [Job], error: String) {
        for job in batch.iter_mut() {
            if let Some(cg) = job.then_reap.take() {
                self.reaper.reap(cg);
            }
        }
        let mut first_failures = Vec::new();
        if let Ok(mut s) = self.shared.lock() {
            for job in batch.iter() {
                let slot = s.pending.entry(job.record.call_id).or_insert(None);
                if slot.is_none() {
                    first_failures.push(&*job.record);
                }
                *slot = Some(error.clone());
            }
            s.status.failures += 1;
            s.status.last_error = Some(error.clone());
        }
        for r in first_failures {
            (self.on_written)(r, Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests;
