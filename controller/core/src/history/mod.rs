//! Durable per-call history: one row per finished call in the SQLite database
//! `<state-dir>/history.db` (docs/ARCHITECTURE.md#the-history).
//!
//! [`History`] is the in-memory index of recent records (the newest
//! [`KEEP_IN_MEMORY`], loaded at start, updated the moment a call ends); an older
//! record is read by id from the database ([`query::by_id`]).
//! [`HistoryWriter`] owns the database's write connection on a thread of its own and
//! commits records in groups ([`writer`]); [`query`] answers `agentcg history` on
//! read-only connections; [`schema`] opens and migrates the database; [`import`] takes
//! in the `calls.jsonl` of earlier versions once.

pub mod import;
pub mod query;
pub mod schema;
pub mod writer;

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::record::CallRecord;
pub use import::ImportReport;
/// A connection to the history database (for [`query`]'s callers).
pub use rusqlite::Connection;
pub use writer::{Durability, HistoryWriter, OnWritten, WriterStatus};

/// History database file name inside the state directory.
pub const HISTORY_DB: &str = "history.db";
/// Records kept in memory for lookups (`GET /v1/calls`). Each costs ~1.7 KiB of heap,
/// so this bounds agentcgd's RSS: 10,000 of them were 16 MiB, most of its growth over
/// 10,000 calls. Older records are read from the database when asked for by id.
pub const KEEP_IN_MEMORY: usize = 1_000;
/// Records the retention pruning never removes, whatever their age.
pub const PRUNE_KEEPS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{op} {path}: {source}")]
    Sqlite {
        op: &'static str,
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("{path}: schema version {found}, this agentcgd knows up to {known}")]
    Schema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("{path}: the record of call {call_id} does not parse: {source}")]
    Record {
        path: PathBuf,
        call_id: i64,
        source: serde_json::Error,
    },
}

impl HistoryError {
    fn io(op: &'static str, path: &Path) -> impl Fn(std::io::Error) -> HistoryError {
        let path = path.to_path_buf();
        move |source| HistoryError::Io {
            op,
            path: path.clone(),
            source,
        }
    }

    fn sqlite(op: &'static str, path: &Path) -> impl Fn(rusqlite::Error) -> HistoryError {
        let path = path.to_path_buf();
        move |source| HistoryError::Sqlite {
            op,
            path: path.clone(),
            source,
        }
    }
}

/// The in-memory index of recent records.
#[derive(Debug, Default)]
pub struct History {
    recent: BTreeMap<u64, CallRecord>,
    order: VecDeque<u64>,
    max_id: u64,
}

/// What [`History::load`] found.
#[derive(Debug)]
pub struct Loaded {
    pub history: History,
    /// The database.
    pub db: PathBuf,
    /// The `calls.jsonl` of an earlier version, imported this time.
    pub import: Option<ImportReport>,
}

impl History {
    /// Opens (creating, migrating) the database in `state_dir` (creating the
    /// directory), imports an earlier version's `calls.jsonl`, and loads the newest
    /// [`KEEP_IN_MEMORY`] records.
    pub fn load(state_dir: &Path) -> Result<Loaded, HistoryError> {
        std::fs::create_dir_all(state_dir).map_err(HistoryError::io("creating", state_dir))?;
        let db = state_dir.join(HISTORY_DB);
        let mut conn = schema::open(&db)?;
        let import = import::import_legacy(&mut conn, state_dir, &db)?;
        let mut history = History::default();
        for r in query::newest(&conn, &db, KEEP_IN_MEMORY)?.into_iter().rev() {
            history.remember(r);
        }
        history.max_id = query::max_id(&conn, &db)?.max(history.max_id);
        Ok(Loaded {
            history,
            db,
            import,
        })
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

    /// The newest `limit` records that `keep` keeps, newest first (filtered before
    /// the limit, so a filter never shortens the list while older records match).
    pub fn recent(&self, keep: impl Fn(&CallRecord) -> bool, limit: usize) -> Vec<&CallRecord> {
        self.recent
            .values()
            .rev()
            .filter(|r| keep(r))
            .take(limit)
            .collect()
    }

    /// The largest call id ever recorded.
    pub fn max_id(&self) -> u64 {
        self.max_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::record;

    #[test]
    fn load_imports_the_old_file_and_indexes_the_newest_records() {
        let dir = tempfile::tempdir().unwrap();
        let old: String = [3, 1, 2]
            .iter()
            .map(|&id| serde_json::to_string(&record(id)).unwrap() + "\n")
            .collect();
        std::fs::write(dir.path().join(import::LEGACY_FILE), old + "torn{").unwrap();
        let loaded = History::load(dir.path()).unwrap();
        let report = loaded.import.unwrap();
        assert_eq!((report.records, report.bad_lines), (3, vec![4]));
        assert_eq!(loaded.history.max_id(), 3);
        let ids: Vec<u64> = loaded
            .history
            .recent(|_| true, 10)
            .iter()
            .map(|r| r.call_id)
            .collect();
        assert_eq!(ids, vec![3, 2, 1]);
        assert_eq!(loaded.db, dir.path().join(HISTORY_DB));
        // The next start finds nothing to import, and the same records.
        let again = History::load(dir.path()).unwrap();
        assert!(again.import.is_none());
        assert_eq!(again.history.get(2), Some(&record(2)));
    }

    #[test]
    fn the_index_stays_bounded_over_ten_thousand_calls() {
        let mut h = History::default();
        for id in 1..=10_000u64 {
            h.remember(record(id));
        }
        assert_eq!(h.recent.len(), KEEP_IN_MEMORY);
        assert_eq!(h.order.len(), KEEP_IN_MEMORY);
        assert!(h.get(10_000 - KEEP_IN_MEMORY as u64).is_none());
        assert!(h.get(10_001 - KEEP_IN_MEMORY as u64).is_some());
        assert_eq!(h.max_id(), 10_000);
    }

    #[test]
    fn max_id_comes_from_the_whole_table_not_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(HISTORY_DB);
        let mut conn = schema::open(&db).unwrap();
        let tx = conn.transaction().unwrap();
        for id in 1..=(KEEP_IN_MEMORY as u64 + 5) {
            let r = record(id);
            schema::insert(&tx, &r, &serde_json::to_string(&r).unwrap()).unwrap();
        }
        tx.commit().unwrap();
        drop(conn);
        let loaded = History::load(dir.path()).unwrap();
        assert_eq!(loaded.history.max_id(), KEEP_IN_MEMORY as u64 + 5);
        assert!(
            loaded.history.get(5).is_none(),
            "older than the newest KEEP_IN_MEMORY"
        );
        assert!(loaded.history.get(6).is_some());
    }
}
