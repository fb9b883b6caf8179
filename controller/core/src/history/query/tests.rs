//! The queries, on a temporary database.

use super::*;
use crate::history::HISTORY_DB;
use crate::testutil::record;

struct Db {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    conn: Connection,
}

fn db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(HISTORY_DB);
    let conn = schema::open(&path).unwrap();
    Db {
        _dir: dir,
        path,
        conn,
    }
}

fn add(d: &Db, r: &CallRecord) {
    schema::insert(&d.conn, r, &serde_json::to_string(r).unwrap()).unwrap();
}

fn call(id: u64, session: &str, class: Option<&str>, outcome: Outcome, started: u64) -> CallRecord {
    let mut r = record(id);
    r.session = session.into();
    r.limits.class = class.map(str::to_string);
    r.outcome = outcome;
    r.started_unix_ms = started;
    r
}

fn ids(d: &Db, f: &ListFilter) -> Vec<u64> {
    list(&d.conn, &d.path, f)
        .unwrap()
        .iter()
        .map(|r| r.call_id)
        .collect()
}

#[test]
fn lists_filter_and_come_newest_first() {
    let d = db();
    add(&d, &call(1, "a", Some("test"), Outcome::Ok, 100));
    add(&d, &call(2, "b", Some("test"), Outcome::OomKilled, 200));
    add(&d, &call(3, "a", Some("build"), Outcome::OomKilled, 300));
    add(&d, &call(4, "a", None, Outcome::Failed, 400));
    assert_eq!(ids(&d, &ListFilter::default()), vec![4, 3, 2, 1]);
    let f = |session: Option<&str>, class: Option<&str>, outcome, since, limit| ListFilter {
        session: session.map(str::to_string),
        class: class.map(str::to_string),
        outcome,
        since_unix_ms: since,
        limit,
    };
    assert_eq!(ids(&d, &f(Some("a"), None, None, None, 50)), vec![4, 3, 1]);
    assert_eq!(ids(&d, &f(None, Some("test"), None, None, 50)), vec![2, 1]);
    assert_eq!(
        ids(&d, &f(None, None, Some(Outcome::OomKilled), None, 50)),
        vec![3, 2]
    );
    assert_eq!(ids(&d, &f(None, None, None, Some(300), 50)), vec![4, 3]);
    assert_eq!(ids(&d, &f(None, None, None, None, 2)), vec![4, 3]);
    assert_eq!(
        ids(
            &d,
            &f(
                Some("a"),
                Some("build"),
                Some(Outcome::OomKilled),
                Some(300),
                5
            )
        ),
        vec![3]
    );
    assert!(ids(&d, &f(Some("nobody"), None, None, None, 5)).is_empty());
    // The whole record comes back.
    let got = list(&d.conn, &d.path, &f(None, None, None, Some(400), 1)).unwrap();
    assert_eq!(got, vec![call(4, "a", None, Outcome::Failed, 400)]);
}

#[test]
fn list_sql_numbers_its_parameters_in_order() {
    let (sql, params) = list_sql(&ListFilter {
        class: Some("x".into()),
        since_unix_ms: Some(7),
        limit: MAX_LIMIT + 1,
        ..ListFilter::default()
    });
    assert!(
        sql.ends_with("WHERE class = ?1 AND started_unix_ms >= ?2 ORDER BY call_id DESC LIMIT ?3"),
        "{sql}"
    );
    assert_eq!(
        params,
        vec![
            Value::Text("x".into()),
            Value::Integer(7),
            Value::Integer(MAX_LIMIT as i64)
        ]
    );
}

#[test]
fn a_row_whose_record_does_not_parse_is_an_error_naming_it() {
    let d = db();
    schema::insert(&d.conn, &record(9), "{broken").unwrap();
    let err = list(&d.conn, &d.path, &ListFilter::default()).unwrap_err();
    assert!(
        matches!(err, HistoryError::Record { call_id: 9, .. }),
        "{err}"
    );
    assert!(err.to_string().contains(HISTORY_DB), "{err}");
}

#[test]
fn nearest_ranks() {
    assert_eq!(nearest_rank(1, 50), 1);
    assert_eq!(nearest_rank(1, 95), 1);
    assert_eq!(nearest_rank(2, 50), 1);
    assert_eq!(nearest_rank(3, 50), 2);
    assert_eq!(nearest_rank(10, 50), 5);
    assert_eq!(nearest_rank(10, 95), 10);
    assert_eq!(nearest_rank(20, 95), 19);
    assert_eq!(nearest_rank(100, 95), 95);
    assert_eq!(nearest_rank(101, 95), 96);
}

/// The nearest-rank percentile of `values`, computed the obvious way.
fn reference(values: &[u64], p: u64) -> u64 {
    let mut v = values.to_vec();
    v.sort_unstable();
    v[nearest_rank(v.len() as u64, p) as usize - 1]
}

#[test]
fn stats_per_class_have_nearest_rank_percentiles_and_the_oom_rate() {
    let d = db();
    // "test": 20 calls, peaks and durations shuffled, 5 OOM kills; "build": 1 call;
    // unclassified: 3 calls, no peak measured.
    let mut peaks = Vec::new();
    let mut durations = Vec::new();
    for i in 0..20u64 {
        let outcome = if i % 4 == 0 {
            Outcome::OomKilled
        } else {
            Outcome::Ok
        };
        let mut r = call(i + 1, "s", Some("test"), outcome, i);
        let peak = ((i * 7) % 20 + 1) << 20;
        r.accounting.memory_peak = Some(peak);
        r.duration_ms = (i * 13) % 20 * 10;
        r.accounting.cpu.usage_usec = 1000 * (i + 1) + 999;
        peaks.push(peak);
        durations.push(r.duration_ms);
        add(&d, &r);
    }
    let mut b = call(100, "s", Some("build"), Outcome::Ok, 0);
    b.accounting.memory_peak = Some(42);
    add(&d, &b);
    for id in 200..203 {
        let mut r = call(id, "s", None, Outcome::Failed, 0);
        r.accounting.memory_peak = None;
        add(&d, &r);
    }
    let all = stats(&d.conn, &d.path, None).unwrap();
    let classes: Vec<Option<&str>> = all.iter().map(|s| s.class.as_deref()).collect();
    assert_eq!(classes, vec![None, Some("build"), Some("test")]);
    let test = &all[2];
    assert_eq!(test.count, 20);
    assert_eq!(test.oom_rate, 0.25);
    assert_eq!(
        test.memory_peak_bytes,
        Some(Percentiles {
            p50: reference(&peaks, 50),
            p95: reference(&peaks, 95),
            max: 20 << 20,
        })
    );
    // 20 distinct peaks 1..=20 MiB: p50 is the 10th, p95 the 19th.
    assert_eq!(reference(&peaks, 50), 10 << 20);
    assert_eq!(reference(&peaks, 95), 19 << 20);
    assert_eq!(
        test.duration_ms,
        Some(Percentiles {
            p50: reference(&durations, 50),
            p95: reference(&durations, 95),
            max: 190,
        })
    );
    // CPU in whole milliseconds: 1.999 .. 20.999 ms.
    assert_eq!(
        test.cpu_ms,
        Some(Percentiles {
            p50: 10,
            p95: 19,
            max: 20
        })
    );
    let build = &all[1];
    assert_eq!(build.count, 1);
    assert_eq!(
        build.memory_peak_bytes,
        Some(Percentiles {
            p50: 42,
            p95: 42,
            max: 42
        })
    );
    assert_eq!(build.oom_rate, 0.0);
    let none = &all[0];
    assert_eq!(none.count, 3);
    assert_eq!(none.memory_peak_bytes, None, "no peak was measured");
    assert!(none.duration_ms.is_some());
    // One class only.
    let only = stats(&d.conn, &d.path, Some("build")).unwrap();
    assert_eq!(only, vec![build.clone()]);
    assert!(stats(&d.conn, &d.path, Some("nope")).unwrap().is_empty());
}
