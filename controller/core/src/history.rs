//! Durable per-call history: one JSON line per finished call in `<state-dir>/calls.jsonl`.
//!
//! [`History`] is the in-memory index of recent records (loaded at start, updated the
//! moment a call ends). [`HistoryWriter`] owns the file on a thread of its own: it
//! appends the records handed to it and fsyncs them in groups (one `fdatasync` for
//! every record that queued up meanwhile), so no request or pressure reaction ever
//! waits on the disk. A record whose write fails stays pending and is retried; its
//! failure is visible in [`WriterStatus`] (docs/ARCHITECTURE.md#off-the-request-path).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::cgroup::Cgroup;
use crate::cgroup::reaper::Reaper;
use crate::record::CallRecord;

/// History file name inside the state directory.
pub const HISTORY_FILE: &str = "calls.jsonl";
/// Records kept in memory for lookups; older ones stay on disk only.
pub const KEEP_IN_MEMORY: usize = 10_000;
/// How long a failed write waits before it is tried again.
const RETRY_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> HistoryError {
    let path = path.to_path_buf();
    move |source| HistoryError::Io { op, path, source }
}

/// The in-memory index of recent records.
#[derive(Debug, Default)]
pub struct History {
    recent: BTreeMap<u64, CallRecord>,
    order: VecDeque<u64>,
    max_id: u64,
    /// Lines that did not parse at load (kept on disk, reported).
    pub skipped_lines: usize,
}

impl History {
    /// Loads the recent records of the history in `state_dir` (creating the directory).
    pub fn load(state_dir: &Path) -> Result<History, HistoryError> {
        std::fs::create_dir_all(state_dir).map_err(io_err("creating", state_dir))?;
        let path = state_dir.join(HISTORY_FILE);
        let mut h = History::default();
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(h),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        for line in BufReader::new(file).lines() {
            let line = line.map_err(io_err("reading", &path))?;
            match serde_json::from_str::<CallRecord>(&line) {
                Ok(r) => h.remember(r),
                Err(_) if line.trim().is_empty() => {}
                Err(_) => h.skipped_lines += 1,
            }
        }
        Ok(h)
    }

    /// Indexes a record (the newest [`KEEP_IN_MEMORY`] are kept).
    pub fn remember(&mut self, r: CallRecord) {
        self.max_id = self.max_id.max(r.call_id);
        if self.recent.insert(r.call_id, r.clone()).is_none() {
            self.order.push_back(r.call_id);
        }
        while self.order.len() > KEEP_IN_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    pub fn get(&self, call_id: u64) -> Option<&CallRecord> {
        self.recent.get(&call_id)
    }

    /// The newest `limit` records, optionally of one session, newest first.
    pub fn recent(&self, session: Option<&str>, limit: usize) -> Vec<&CallRecord> {
        self.recent
            .values()
            .rev()
            .filter(|r| session.is_none_or(|s| r.session == s))
            .take(limit)
            .collect()
    }

    /// The largest call id ever recorded.
    pub fn max_id(&self) -> u64 {
        self.max_id
    }
}

/// Where a record is on its way to the disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// Written and fsynced (or never handed to this writer).
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
    /// Records written and fsynced since start.
    pub written: u64,
    /// Records not yet durable (counted when the status is taken).
    pub pending: usize,
    /// Writes that failed (each retried).
    pub failures: u64,
    /// The error of the latest failure, cleared once a write succeeds again.
    pub last_error: Option<String>,
}

/// Called once per record when it is durable (`Ok`) or its write failed (`Err`, the
/// record is retried); runs on the writer's thread. What follows a durable record (its
/// `call_finished` event, its count in the metrics) hangs off this.
pub type OnWritten = Arc<dyn Fn(&CallRecord, Result<(), String>) + Send + Sync>;

struct Job {
    call_id: u64,
    record: Box<CallRecord>,
    line: String,
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

/// The history file's writer thread.
pub struct HistoryWriter {
    tx: Sender<Job>,
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
    /// Opens (creating) the history file in `state_dir` for appending and starts the
    /// writer thread.
    pub fn start(
        state_dir: &Path,
        reaper: Reaper,
        on_written: OnWritten,
    ) -> Result<HistoryWriter, HistoryError> {
        let path = state_dir.join(HISTORY_FILE);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err("opening", &path))?;
        // A daemon killed mid-write leaves a partial last line: start on a fresh one.
        let torn = ends_torn(&path).map_err(io_err("reading", &path))?;
        Self::spawn(path, file, torn, reaper, on_written)
            .map_err(io_err("starting the writer thread for", state_dir))
    }

    fn spawn(
        path: PathBuf,
        file: File,
        torn: bool,
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
            file,
            torn,
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
        let mut line = serde_json::to_string(r).unwrap_or_default();
        line.push('\n');
        if let Ok(mut s) = self.shared.lock() {
            s.pending.insert(r.call_id, None);
        }
        let _ = self.tx.send(Job {
            call_id: r.call_id,
            record: Box::new(r.clone()),
            line,
            then_remove,
            then_reap,
        });
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

/// Whether the file's last line lacks its newline.
fn ends_torn(path: &Path) -> std::io::Result<bool> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path)?;
    if f.metadata()?.len() == 0 {
        return Ok(false);
    }
    f.seek(SeekFrom::End(-1))?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last)?;
    Ok(last[0] != b'\n')
}

struct Worker {
    path: PathBuf,
    file: File,
    /// The last write failed part-way: the next one starts on a fresh line.
    torn: bool,
    shared: Arc<Mutex<Shared>>,
    reaper: Reaper,
    on_written: OnWritten,
}

impl Worker {
    fn run(mut self, rx: Receiver<Job>) {
        let mut batch: Vec<Job> = Vec::new();
        loop {
            // Failed jobs wait for the next retry, or for new work to go with.
            let first = if batch.is_empty() {
                rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                rx.recv_timeout(RETRY_EVERY)
            };
            match first {
                Ok(job) => batch.push(job),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) if batch.is_empty() => return,
                Err(RecvTimeoutError::Disconnected) => std::thread::sleep(RETRY_EVERY),
            }
            batch.extend(rx.try_iter());
            match self.write(&batch) {
                Ok(()) => self.done(std::mem::take(&mut batch)),
                Err(e) => self.failed(&mut batch, e.to_string()),
            }
        }
    }

    /// Appends the batch in one write and one fdatasync.
    fn write(&mut self, batch: &[Job]) -> Result<(), HistoryError> {
        let mut text = String::new();
        if self.torn {
            text.push('\n');
        }
        for job in batch {
            text.push_str(&job.line);
        }
        let before = self.file.metadata().map(|m| m.len()).ok();
        let written = self
            .file
            .write_all(text.as_bytes())
            .map_err(io_err("appending to", &self.path))
            .and_then(|()| self.file.sync_data().map_err(io_err("syncing", &self.path)));
        if written.is_err() {
            // Cut a partial line off, or at least start the next write on a new line
            // (the loader skips nothing but unparsable lines).
            self.torn = before.is_none_or(|len| self.file.set_len(len).is_err());
        } else {
            self.torn = false;
        }
        written
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
                s.pending.remove(&job.call_id);
            }
            s.status.written += batch.len() as u64;
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
                let slot = s.pending.entry(job.call_id).or_insert(None);
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
mod tests {
    use super::*;
    use crate::testutil::record;
    use std::sync::mpsc;

    type Acks = mpsc::Receiver<(u64, Result<(), String>)>;

    fn writer(dir: &Path) -> (HistoryWriter, Acks) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let w = HistoryWriter::start(
            dir,
            Reaper::start().unwrap(),
            Arc::new(move |rec: &CallRecord, r| {
                let _ = tx.lock().unwrap().send((rec.call_id, r));
            }),
        )
        .unwrap();
        (w, rx)
    }

    #[test]
    fn records_become_durable_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let (w, acks) = writer(dir.path());
        let running = dir.path().join("running-7.json");
        std::fs::write(&running, "{}").unwrap();
        let cg = Cgroup::new(dir.path().join("call-000007"));
        std::fs::create_dir(cg.path()).unwrap();
        w.submit(&record(7), Some(running.clone()), Some(cg.clone()));
        w.submit(&record(8), None, None);
        let mut got = vec![acks.recv().unwrap(), acks.recv().unwrap()];
        got.sort_by_key(|(id, _)| *id);
        assert_eq!(got, vec![(7, Ok(())), (8, Ok(()))]);
        assert_eq!(w.durability(7), Durability::Durable);
        assert!(
            !running.exists(),
            "the state file goes once the record is durable"
        );
        let t = std::time::Instant::now();
        while cg.path().exists() && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !cg.path().exists(),
            "the cgroup is reaped once the record is durable"
        );
        assert_eq!(w.status().written, 2);
        let h = History::load(dir.path()).unwrap();
        assert_eq!(h.max_id(), 8);
        assert!(h.get(7).is_some() && h.get(8).is_some());
    }

    #[test]
    fn a_failed_write_is_reported_kept_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(HISTORY_FILE);
        std::fs::write(&path, "").unwrap();
        let (tx, acks) = mpsc::channel();
        let tx = Mutex::new(tx);
        // A read-only handle: every write fails, as on a read-only or full disk.
        let w = HistoryWriter::spawn(
            path.clone(),
            File::open(&path).unwrap(),
            false,
            Reaper::start().unwrap(),
            Arc::new(move |rec: &CallRecord, r| {
                let _ = tx.lock().unwrap().send((rec.call_id, r));
            }),
        )
        .unwrap();
        let running = dir.path().join("running-3.json");
        std::fs::write(&running, "{}").unwrap();
        w.submit(&record(3), Some(running.clone()), None);
        let (id, result) = acks.recv().unwrap();
        assert_eq!(id, 3);
        let err = result.unwrap_err();
        assert!(
            err.contains(HISTORY_FILE),
            "the error names the file: {err}"
        );
        assert!(matches!(w.durability(3), Durability::Failed(_)));
        let st = w.status();
        assert_eq!(st.pending, 1);
        assert!(st.failures >= 1 && st.last_error.is_some(), "{st:?}");
        assert!(
            running.exists(),
            "the state file stays until the record is durable"
        );
        // Retried, and reported once only.
        std::thread::sleep(RETRY_EVERY * 2 + Duration::from_millis(200));
        assert!(w.status().failures >= 2, "{:?}", w.status());
        assert!(acks.try_recv().is_err());
    }

    #[test]
    fn a_torn_last_line_does_not_swallow_the_next_record() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(HISTORY_FILE), "{\"call_id\": 1, \"sess").unwrap();
        let (w, acks) = writer(dir.path());
        w.submit(&record(2), None, None);
        acks.recv().unwrap().1.unwrap();
        let h = History::load(dir.path()).unwrap();
        assert!(h.get(2).is_some(), "record 2 starts its own line");
        assert_eq!(h.skipped_lines, 1);
    }
}
