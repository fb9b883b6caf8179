//! The one-time import of the history file earlier versions wrote (`calls.jsonl`, one
//! JSON record a line): all of it in one transaction, then the file is renamed to
//! `calls.jsonl.imported` so it is never imported twice. A line that does not parse
//! (a torn last line of a killed daemon) is counted and reported, not fatal.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::{HistoryError, schema};
use crate::record::CallRecord;

/// The history file of earlier versions, inside the state directory.
pub const LEGACY_FILE: &str = "calls.jsonl";
/// What it is renamed to once imported.
pub const IMPORTED_FILE: &str = "calls.jsonl.imported";

/// What an import did, for the daemon's log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    /// The file imported (renamed since).
    pub from: PathBuf,
    /// Records read (a record already in the database counts, and stays as it was).
    pub records: usize,
    /// Lines that did not parse, by line number (1-based); skipped.
    pub bad_lines: Vec<usize>,
}

/// Imports `<state_dir>/calls.jsonl` into `conn` if it exists; `None` if there was none.
pub fn import_legacy(
    conn: &mut Connection,
    state_dir: &Path,
    db: &Path,
) -> Result<Option<ImportReport>, HistoryError> {
    let from = state_dir.join(LEGACY_FILE);
    let file = match std::fs::File::open(&from) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HistoryError::io("reading", &from)(e)),
    };
    let mut report = ImportReport {
        from: from.clone(),
        ..ImportReport::default()
    };
    let tx = conn
        .transaction()
        .map_err(HistoryError::sqlite("importing into", db))?;
    for (i, line) in BufReader::new(file).lines().enumerate() {
        let line = line.map_err(HistoryError::io("reading", &from))?;
        match parse_line(&line) {
            Line::Blank => {}
            Line::Bad => report.bad_lines.push(i + 1),
            Line::Record(r) => {
                schema::insert(&tx, &r, line.trim())
                    .map_err(HistoryError::sqlite("importing into", db))?;
                report.records += 1;
            }
        }
    }
    tx.commit()
        .map_err(HistoryError::sqlite("importing into", db))?;
    // Renamed only once the rows are committed: a daemon killed in between imports the
    // file again at its next start, and the rows it has already are left alone.
    let to = state_dir.join(IMPORTED_FILE);
    std::fs::rename(&from, &to).map_err(HistoryError::io("renaming", &from))?;
    Ok(Some(report))
}

enum Line {
    Blank,
    Bad,
    Record(Box<CallRecord>),
}

fn parse_line(line: &str) -> Line {
    if line.trim().is_empty() {
        return Line::Blank;
    }
    match serde_json::from_str(line) {
        Ok(r) => Line::Record(Box::new(r)),
        Err(_) => Line::Bad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::record;

    fn count(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(*) FROM calls", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn the_old_file_is_imported_once_and_bad_lines_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        let mut conn = schema::open(&db).unwrap();
        let line = |id| serde_json::to_string(&record(id)).unwrap();
        let text = format!(
            "{}\n\n{}\nnot json\n{}\n{{\"call_id\": 9, \"sess",
            line(1),
            line(2),
            line(2)
        );
        std::fs::write(dir.path().join(LEGACY_FILE), text).unwrap();
        let report = import_legacy(&mut conn, dir.path(), &db).unwrap().unwrap();
        assert_eq!(report.records, 3, "record 2 twice: read twice, one row");
        assert_eq!(report.bad_lines, vec![4, 6]);
        assert_eq!(count(&conn), 2);
        assert!(!dir.path().join(LEGACY_FILE).exists());
        assert!(dir.path().join(IMPORTED_FILE).exists());
        let json: String = conn
            .query_row("SELECT record FROM calls WHERE call_id = 2", [], |r| {
                r.get(0)
            })
            .unwrap();
        let back: CallRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, record(2));
        // Not twice: nothing to import at the next start.
        assert_eq!(import_legacy(&mut conn, dir.path(), &db).unwrap(), None);
        assert_eq!(count(&conn), 2);
    }

    #[test]
    fn an_import_that_fails_leaves_the_file_for_the_next_start() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("h.db");
        schema::open(&db).unwrap();
        std::fs::write(
            dir.path().join(LEGACY_FILE),
            serde_json::to_string(&record(1)).unwrap(),
        )
        .unwrap();
        let mut ro =
            Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
        let err = import_legacy(&mut ro, dir.path(), &db).unwrap_err();
        assert!(err.to_string().contains("h.db"), "{err}");
        assert!(dir.path().join(LEGACY_FILE).exists());
    }
}
