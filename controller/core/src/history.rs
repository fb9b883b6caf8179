//! Durable per-call history: one JSON line per finished call in `<state-dir>/calls.jsonl`,
//! appended and flushed before the client hears back, reloaded at start.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use crate::record::CallRecord;

/// History file name inside the state directory.
pub const HISTORY_FILE: &str = "calls.jsonl";
/// Records kept in memory for lookups; older ones stay on disk only.
pub const KEEP_IN_MEMORY: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The history file and an in-memory index of recent records.
#[derive(Debug)]
pub struct History {
    path: PathBuf,
    file: File,
    recent: BTreeMap<u64, CallRecord>,
    order: VecDeque<u64>,
    max_id: u64,
    /// Lines that did not parse at load (kept on disk, reported).
    pub skipped_lines: usize,
}

impl History {
    /// Opens (creating) the history in `state_dir` and loads recent records.
    pub fn open(state_dir: &Path) -> Result<History, HistoryError> {
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| HistoryError::Io { op, path, source }
        };
        std::fs::create_dir_all(state_dir).map_err(io("creating", state_dir))?;
        let path = state_dir.join(HISTORY_FILE);
        let mut h = History {
            file: OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(io("opening", &path))?,
            path: path.clone(),
            recent: BTreeMap::new(),
            order: VecDeque::new(),
            max_id: 0,
            skipped_lines: 0,
        };
        let reader = BufReader::new(File::open(&path).map_err(io("reading", &path))?);
        for line in reader.lines() {
            let line = line.map_err(io("reading", &path))?;
            match serde_json::from_str::<CallRecord>(&line) {
                Ok(r) => h.remember(r),
                Err(_) if line.trim().is_empty() => {}
                Err(_) => h.skipped_lines += 1,
            }
        }
        Ok(h)
    }

    fn remember(&mut self, r: CallRecord) {
        self.max_id = self.max_id.max(r.call_id);
        self.order.push_back(r.call_id);
        self.recent.insert(r.call_id, r);
        while self.order.len() > KEEP_IN_MEMORY {
            if let Some(old) = self.order.pop_front() {
                self.recent.remove(&old);
            }
        }
    }

    /// Appends a record durably (write + fsync) and indexes it.
    pub fn append(&mut self, r: &CallRecord) -> Result<(), HistoryError> {
        let mut line = serde_json::to_string(r).unwrap_or_default();
        line.push('\n');
        let err = |source| HistoryError::Io {
            op: "appending to",
            path: self.path.clone(),
            source,
        };
        self.file.write_all(line.as_bytes()).map_err(err)?;
        self.file.sync_data().map_err(|source| HistoryError::Io {
            op: "syncing",
            path: self.path.clone(),
            source,
        })?;
        self.remember(r.clone());
        Ok(())
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

    /// The largest call id ever recorded (ids continue after a restart).
    pub fn max_id(&self) -> u64 {
        self.max_id
    }
}
