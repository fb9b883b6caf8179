//! The history database: how it is opened (WAL, `synchronous=FULL`), its schema
//! (versioned by `PRAGMA user_version`, migrated in order) and how a record becomes a
//! row (`INSERT OR IGNORE`: writing a record twice is a no-op).

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, params};

use super::HistoryError;
use crate::record::CallRecord;

/// How long a connection waits for another one's lock (a reader during a checkpoint).
const BUSY_WAIT: Duration = Duration::from_secs(5);

/// The schema's migrations: entry `i` takes the database from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: one row per finished call; the query fields as columns, the record as JSON.
    "CREATE TABLE calls (
         call_id INTEGER PRIMARY KEY,
         session TEXT NOT NULL,
         class TEXT,
         outcome TEXT NOT NULL,
         priority TEXT NOT NULL,
         started_unix_ms INTEGER NOT NULL,
         ended_unix_ms INTEGER NOT NULL,
         duration_ms INTEGER NOT NULL,
         memory_peak INTEGER,
         cpu_usec INTEGER NOT NULL,
         exit_code INTEGER,
         exit_signal INTEGER,
         record TEXT NOT NULL
     );
     CREATE INDEX calls_session ON calls (session, call_id);
     CREATE INDEX calls_class ON calls (class, call_id);
     CREATE INDEX calls_outcome ON calls (outcome, call_id);
     CREATE INDEX calls_started ON calls (started_unix_ms);
     CREATE INDEX calls_ended ON calls (ended_unix_ms);",
];

/// The schema version this build writes.
pub fn current_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Opens (creating) the database for writing, in WAL mode with `synchronous=FULL`, and
/// migrates it to the current schema.
pub fn open(path: &Path) -> Result<Connection, HistoryError> {
    let conn = Connection::open(path).map_err(HistoryError::sqlite("opening", path))?;
    conn.busy_timeout(BUSY_WAIT)
        .and_then(|()| conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0)))
        .and_then(|_| conn.pragma_update(None, "synchronous", "FULL"))
        .map_err(HistoryError::sqlite("configuring", path))?;
    migrate(&conn, path)?;
    Ok(conn)
}

/// Opens the database for a query: read-only, so a query never takes the writer's lock
/// (WAL: it reads a snapshot while the writer commits).
pub fn open_read_only(path: &Path) -> Result<Connection, HistoryError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn =
        Connection::open_with_flags(path, flags).map_err(HistoryError::sqlite("opening", path))?;
    conn.busy_timeout(BUSY_WAIT)
        .map_err(HistoryError::sqlite("configuring", path))?;
    let found = version(&conn).map_err(HistoryError::sqlite("reading the schema of", path))?;
    if found != current_version() {
        return Err(HistoryError::Schema {
            path: path.to_path_buf(),
            found,
            known: current_version(),
        });
    }
    Ok(conn)
}

fn version(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA user_version", [], |r| r.get(0))
}

/// Applies the migrations the database lacks, each in its own transaction with its
/// version; returns the version found. A database newer than this build is refused.
pub fn migrate(conn: &Connection, path: &Path) -> Result<i64, HistoryError> {
    let err = HistoryError::sqlite("migrating", path);
    let found = version(conn).map_err(HistoryError::sqlite("reading the schema of", path))?;
    let Some(pending) = usize::try_from(found)
        .ok()
        .and_then(|v| MIGRATIONS.get(v..))
    else {
        return Err(HistoryError::Schema {
            path: path.to_path_buf(),
            found,
            known: current_version(),
        });
    };
    for (i, sql) in pending.iter().enumerate() {
        let to = found + i as i64 + 1;
        conn.execute_batch(&format!(
            "BEGIN IMMEDIATE; {sql}; PRAGMA user_version = {to}; COMMIT;"
        ))
        .map_err(|e| {
            let _ = conn.execute_batch("ROLLBACK");
            err(e)
        })?;
    }
    Ok(found)
}

/// A number as SQLite stores it (values past `i64::MAX` are saturated).
pub fn int(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Inserts a record; `false` if its call id was there already (left as it was).
pub fn insert(conn: &Connection, r: &CallRecord, json: &str) -> rusqlite::Result<bool> {
    let n = conn.execute(
        "INSERT OR IGNORE INTO calls (call_id, session, class, outcome, priority,
             started_unix_ms, ended_unix_ms, duration_ms, memory_peak, cpu_usec,
             exit_code, exit_signal, record)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
        params![
            int(r.call_id),
            r.session,
            r.limits.class,
            r.outcome.as_str(),
            r.limits.priority.as_str(),
            int(r.started_unix_ms),
            int(r.started_unix_ms.saturating_add(r.duration_ms)),
            int(r.duration_ms),
            r.accounting.memory_peak.map(int),
            int(r.accounting.cpu.usage_usec),
            r.exit.code,
            r.exit.signal,
            json,
        ],
    )?;
    Ok(n == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::record;

    fn tables(conn: &Connection) -> Vec<String> {
        let mut st = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .unwrap();
        st.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    #[test]
    fn a_new_database_gets_the_whole_schema_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let conn = open(&path).unwrap();
        assert_eq!(version(&conn).unwrap(), current_version());
        assert_eq!(tables(&conn), vec!["calls".to_string()]);
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .query_row("PRAGMA synchronous", [], |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        drop(conn);
        // Reopening migrates nothing (a second CREATE TABLE would fail).
        let conn = open(&path).unwrap();
        assert_eq!(migrate(&conn, &path).unwrap(), current_version());
    }

    #[test]
    fn a_version_0_database_with_other_content_is_migrated() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE notes (x TEXT); INSERT INTO notes VALUES ('kept');")
            .unwrap();
        assert_eq!(version(&conn).unwrap(), 0);
        assert_eq!(migrate(&conn, &path).unwrap(), 0);
        assert_eq!(version(&conn).unwrap(), current_version());
        assert_eq!(
            tables(&conn),
            vec!["calls".to_string(), "notes".to_string()]
        );
        let kept: String = conn
            .query_row("SELECT x FROM notes", [], |r| r.get(0))
            .unwrap();
        assert_eq!(kept, "kept");
    }

    #[test]
    fn a_database_newer_than_this_build_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", 99).unwrap();
        let err = migrate(&conn, &path).unwrap_err();
        assert!(
            matches!(err, HistoryError::Schema { found: 99, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("h.db"), "{err}");
        assert!(open_read_only(&path).is_err());
    }

    #[test]
    fn inserting_a_call_id_twice_keeps_the_first_row() {
        let dir = tempfile::tempdir().unwrap();
        let conn = open(&dir.path().join("h.db")).unwrap();
        let mut r = record(5);
        r.limits.class = Some("test".into());
        r.accounting.memory_peak = Some(u64::MAX);
        assert!(insert(&conn, &r, "{\"first\":1}").unwrap());
        assert!(!insert(&conn, &r, "{\"second\":2}").unwrap());
        let (n, json, class, peak): (i64, String, String, i64) = conn
            .query_row(
                "SELECT count(*), record, class, memory_peak FROM calls",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .unwrap();
        assert_eq!(
            (n, json.as_str(), class.as_str()),
            (1, "{\"first\":1}", "test")
        );
        assert_eq!(peak, i64::MAX, "saturated, not wrapped");
    }
}
