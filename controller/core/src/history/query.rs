//! Queries of the history database (`GET /v1/history`, `agentcg history`): the SQL is
//! built by small pure functions from the filters, then run on a connection (the
//! daemon's are read-only, on a blocking thread, outside the controller's mutex).
//! Percentiles are nearest-rank: the value of rank ⌈p/100 · n⌉ in ascending order.

use std::path::Path;

use rusqlite::types::Value;
use rusqlite::{Connection, OptionalExtension};
use serde::Serialize;

use super::{HistoryError, schema};
use crate::record::{CallRecord, Outcome};

/// Records a list returns when no limit is given.
pub const DEFAULT_LIMIT: usize = 50;
/// The most records one list returns.
pub const MAX_LIMIT: usize = 10_000;

/// Which records a list returns (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub session: Option<String>,
    pub class: Option<String>,
    pub outcome: Option<Outcome>,
    /// Calls started at or after this (unix ms).
    pub since_unix_ms: Option<u64>,
    /// 1..=[`MAX_LIMIT`].
    pub limit: usize,
}

impl Default for ListFilter {
    fn default() -> ListFilter {
        ListFilter {
            session: None,
            class: None,
            outcome: None,
            since_unix_ms: None,
            limit: DEFAULT_LIMIT,
        }
    }
}

/// The `SELECT` of a list and its parameters.
pub fn list_sql(f: &ListFilter) -> (String, Vec<Value>) {
    let mut wheres = Vec::new();
    let mut params = Vec::new();
    if let Some(s) = &f.session {
        params.push(Value::Text(s.clone()));
        wheres.push(format!("session = ?{}", params.len()));
    }
    if let Some(c) = &f.class {
        params.push(Value::Text(c.clone()));
        wheres.push(format!("class = ?{}", params.len()));
    }
    if let Some(o) = f.outcome {
        params.push(Value::Text(o.as_str().into()));
        wheres.push(format!("outcome = ?{}", params.len()));
    }
    if let Some(t) = f.since_unix_ms {
        params.push(Value::Integer(schema::int(t)));
        wheres.push(format!("started_unix_ms >= ?{}", params.len()));
    }
    params.push(Value::Integer(schema::int(f.limit.min(MAX_LIMIT) as u64)));
    let mut sql = String::from("SELECT call_id, record FROM calls");
    if !wheres.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&wheres.join(" AND "));
    }
    sql.push_str(&format!(" ORDER BY call_id DESC LIMIT ?{}", params.len()));
    (sql, params)
}

/// The records `f` selects, newest first.
pub fn list(conn: &Connection, db: &Path, f: &ListFilter) -> Result<Vec<CallRecord>, HistoryError> {
    let (sql, params) = list_sql(f);
    let err = HistoryError::sqlite("querying", db);
    let mut st = conn.prepare(&sql).map_err(&err)?;
    let rows = st
        .query_map(rusqlite::params_from_iter(params), |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .map_err(&err)?;
    let mut out = Vec::new();
    for row in rows {
        let (call_id, json) = row.map_err(&err)?;
        let rec = serde_json::from_str(&json).map_err(|source| HistoryError::Record {
            path: db.to_path_buf(),
            call_id,
            source,
        })?;
        out.push(rec);
    }
    Ok(out)
}

/// The newest `n` records, newest first.
pub fn newest(conn: &Connection, db: &Path, n: usize) -> Result<Vec<CallRecord>, HistoryError> {
    list(
        conn,
        db,
        &ListFilter {
            limit: n,
            ..ListFilter::default()
        },
    )
}

/// The record of call `id`, if the database has it.
pub fn by_id(conn: &Connection, db: &Path, id: u64) -> Result<Option<CallRecord>, HistoryError> {
    let json: Option<String> = conn
        .query_row(
            "SELECT record FROM calls WHERE call_id = ?1",
            [schema::int(id)],
            |r| r.get(0),
        )
        .optional()
        .map_err(HistoryError::sqlite("querying", db))?;
    json.map(|j| {
        serde_json::from_str(&j).map_err(|source| HistoryError::Record {
            path: db.to_path_buf(),
            call_id: schema::int(id),
            source,
        })
    })
    .transpose()
}

/// The largest call id in the database (0 when empty).
pub fn max_id(conn: &Connection, db: &Path) -> Result<u64, HistoryError> {
    conn.query_row("SELECT coalesce(max(call_id), 0) FROM calls", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|v| u64::try_from(v).unwrap_or(0))
    .map_err(HistoryError::sqlite("querying", db))
}

/// The nearest rank (1-based) of percentile `p` among `n` sorted values: ⌈p·n/100⌉,
/// at least 1.
pub fn nearest_rank(n: u64, p: u64) -> u64 {
    (n * p).div_ceil(100).max(1)
}

/// p50, p95 and max of one measure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
}

/// What the history says about one command class.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct ClassStats {
    /// `None`: calls that matched no class.
    pub class: Option<String>,
    pub count: u64,
    /// Of the calls whose peak was measured (`None` if none was).
    pub memory_peak_bytes: Option<Percentiles>,
    pub duration_ms: Option<Percentiles>,
    pub cpu_ms: Option<Percentiles>,
    /// Calls that ended `oom_killed`, over `count`.
    pub oom_rate: f64,
}

/// The SQL of one measure's percentiles per class: rows of (class, p50, p95, max).
/// `column` is a column name of `calls` (not user input); `?1` is the class when
/// `one_class`.
pub fn percentiles_sql(column: &str, one_class: bool) -> String {
    let filter = if one_class { " AND class = ?1" } else { "" };
    let (p50, p95) = ("(n * 50 + 99) / 100", "(n * 95 + 99) / 100");
    format!(
        "SELECT class,
             max(CASE WHEN rn = {p50} THEN v END),
             max(CASE WHEN rn = {p95} THEN v END),
             max(v)
         FROM (SELECT class, v,
                   row_number() OVER (PARTITION BY class ORDER BY v) AS rn,
                   count(*) OVER (PARTITION BY class) AS n
               FROM (SELECT class, {column} AS v FROM calls
                     WHERE {column} IS NOT NULL{filter}))
         GROUP BY class"
    )
}

/// The SQL of the counts per class: rows of (class, count, oom_killed count).
pub fn counts_sql(one_class: bool) -> String {
    let filter = if one_class { " WHERE class = ?1" } else { "" };
    format!(
        "SELECT class, count(*), sum(outcome = '{}') FROM calls{filter}
         GROUP BY class ORDER BY class",
        Outcome::OomKilled.as_str()
    )
}

/// Where a measure's percentiles go in a [`ClassStats`].
type Slot = fn(&mut ClassStats) -> &mut Option<Percentiles>;

/// The measures of the statistics: column, divisor (µs to ms), where they go.
const MEASURES: [(&str, u64, Slot); 3] = [
    ("memory_peak", 1, |s| &mut s.memory_peak_bytes),
    ("duration_ms", 1, |s| &mut s.duration_ms),
    ("cpu_usec", 1000, |s| &mut s.cpu_ms),
];

/// The statistics per class (unclassified calls first), or of one class.
pub fn stats(
    conn: &Connection,
    db: &Path,
    class: Option<&str>,
) -> Result<Vec<ClassStats>, HistoryError> {
    let err = HistoryError::sqlite("querying", db);
    let params: Vec<Value> = class.iter().map(|c| Value::Text(c.to_string())).collect();
    let mut st = conn.prepare(&counts_sql(class.is_some())).map_err(&err)?;
    let mut out: Vec<ClassStats> = st
        .query_map(rusqlite::params_from_iter(&params), |r| {
            let count = r.get::<_, i64>(1)?.max(0) as u64;
            let ooms = r.get::<_, i64>(2)?.max(0) as u64;
            Ok(ClassStats {
                class: r.get(0)?,
                count,
                memory_peak_bytes: None,
                duration_ms: None,
                cpu_ms: None,
                oom_rate: if count == 0 {
                    0.0
                } else {
                    ooms as f64 / count as f64
                },
            })
        })
        .map_err(&err)?
        .collect::<Result<_, _>>()
        .map_err(&err)?;
    for (column, divisor, slot) in MEASURES {
        let mut st = conn
            .prepare(&percentiles_sql(column, class.is_some()))
            .map_err(&err)?;
        let rows = st
            .query_map(rusqlite::params_from_iter(&params), |r| {
                let get = |i| r.get::<_, i64>(i).map(|v| v.max(0) as u64 / divisor);
                Ok((
                    r.get::<_, Option<String>>(0)?,
                    Percentiles {
                        p50: get(1)?,
                        p95: get(2)?,
                        max: get(3)?,
                    },
                ))
            })
            .map_err(&err)?;
        for row in rows {
            let (class, p) = row.map_err(&err)?;
            if let Some(s) = out.iter_mut().find(|s| s.class == class) {
                *slot(s) = Some(p);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
