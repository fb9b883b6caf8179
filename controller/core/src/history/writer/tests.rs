//! The writer: group commit, durability and retries, retention.

use super::*;
use crate::history::HISTORY_DB;
use crate::testutil::record;
use std::sync::mpsc;

type Acks = mpsc::Receiver<(u64, Result<(), String>)>;

fn acks() -> (OnWritten, Acks) {
    let (tx, rx) = mpsc::channel();
    let tx = Mutex::new(tx);
    let on: OnWritten = Arc::new(move |rec: &CallRecord, r| {
        let _ = tx.lock().unwrap().send((rec.call_id, r));
    });
    (on, rx)
}

fn writer(dir: &Path) -> (HistoryWriter, Acks) {
    let (on, rx) = acks();
    let db = dir.join(HISTORY_DB);
    let w = HistoryWriter::start(&db, DAY, Reaper::start().unwrap(), on).unwrap();
    (w, rx)
}

const DAY: Duration = Duration::from_secs(86_400);

fn ids_in(db: &Path) -> Vec<u64> {
    let conn = schema::open_read_only(db).unwrap();
    let mut st = conn
        .prepare("SELECT call_id FROM calls ORDER BY call_id")
        .unwrap();
    st.query_map([], |r| r.get::<_, i64>(0))
        .unwrap()
        .map(|v| v.unwrap() as u64)
        .collect()
}

#[test]
fn records_become_durable_and_their_state_goes() {
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
    let t = Instant::now();
    while cg.path().exists() && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !cg.path().exists(),
        "the cgroup is reaped once the record is durable"
    );
    assert_eq!(w.status().written, 2);
    // Committed: another connection sees both rows, whole.
    let db = dir.path().join(HISTORY_DB);
    assert_eq!(ids_in(&db), vec![7, 8]);
    let conn = schema::open_read_only(&db).unwrap();
    let back = crate::history::query::newest(&conn, &db, 10).unwrap();
    assert_eq!(back, vec![record(8), record(7)]);
}

#[test]
fn records_queued_meanwhile_are_committed_in_one_transaction() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(HISTORY_DB);
    // The first record's callback holds the writer until the others are queued.
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let release_rx = Mutex::new(release_rx);
    let (done_tx, done_rx) = mpsc::channel();
    let done_tx = Mutex::new(done_tx);
    let on: OnWritten = Arc::new(move |rec: &CallRecord, r| {
        if rec.call_id == 1 {
            release_rx.lock().unwrap().recv().unwrap();
        }
        done_tx.lock().unwrap().send((rec.call_id, r)).unwrap();
    });
    let w = HistoryWriter::start(&db, DAY, Reaper::start().unwrap(), on).unwrap();
    w.submit(&record(1), None, None);
    // Wait until the first group is committed (its callback now blocks).
    let t = Instant::now();
    while w.status().commits < 1 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    for id in 2..=50 {
        w.submit(&record(id), None, None);
    }
    release_tx.send(()).unwrap();
    let mut ids: Vec<u64> = (0..50).map(|_| done_rx.recv().unwrap().0).collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=50).collect::<Vec<_>>());
    let st = w.status();
    assert_eq!((st.written, st.commits), (50, 2), "{st:?}");
    assert_eq!(ids_in(&db).len(), 50);
}

#[test]
fn writing_a_record_twice_leaves_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let (w, acks) = writer(dir.path());
    w.submit(&record(4), None, None);
    acks.recv().unwrap().1.unwrap();
    // A recovered record (state file found at start) may come again.
    let mut again = record(4);
    again.duration_ms = 999;
    w.submit(&again, None, None);
    assert_eq!(acks.recv().unwrap(), (4, Ok(())));
    assert_eq!(ids_in(&dir.path().join(HISTORY_DB)), vec![4]);
    let conn = schema::open_read_only(&dir.path().join(HISTORY_DB)).unwrap();
    let ms: i64 = conn
        .query_row("SELECT duration_ms FROM calls", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ms, 1, "the first row is kept");
}

#[test]
fn a_failed_write_is_reported_kept_and_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(HISTORY_DB);
    drop(schema::open(&path).unwrap());
    let (on, acks) = acks();
    // A read-only connection: every commit fails, as on a read-only or full disk.
    let ro = schema::open_read_only(&path).unwrap();
    let w = HistoryWriter::spawn(path.clone(), ro, DAY, Reaper::start().unwrap(), on).unwrap();
    let running = dir.path().join("running-3.json");
    std::fs::write(&running, "{}").unwrap();
    w.submit(&record(3), Some(running.clone()), None);
    let (id, result) = acks.recv().unwrap();
    assert_eq!(id, 3);
    let err = result.unwrap_err();
    assert!(err.contains(HISTORY_DB), "the error names the file: {err}");
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
    assert!(ids_in(&path).is_empty());
}

#[test]
fn the_cutoff_is_now_minus_the_retention() {
    assert_eq!(prune_cutoff(100_000, Duration::from_secs(30)), 70_000);
    assert_eq!(prune_cutoff(5, Duration::from_secs(30)), 0);
    assert_eq!(prune_cutoff(5, Duration::MAX), 0);
}

#[test]
fn pruning_removes_old_records_but_never_the_newest() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(HISTORY_DB);
    let conn = schema::open(&db).unwrap();
    // Calls 1..=6 ended at 1000 * id (+1 ms of duration).
    for id in 1..=6 {
        let mut r = record(id);
        r.started_unix_ms = 1000 * id;
        schema::insert(&conn, &r, "{}").unwrap();
    }
    // Ended before 3500: 1, 2, 3; but the newest 4 (3..=6) stay whatever their age.
    assert_eq!(prune(&conn, 3500, 4).unwrap(), 2);
    assert_eq!(ids_in(&db), vec![3, 4, 5, 6]);
    // None kept by count: whatever ended before the cutoff goes, nothing after it.
    assert_eq!(prune(&conn, 5500, 0).unwrap(), 3);
    assert_eq!(ids_in(&db), vec![6]);
    assert_eq!(prune(&conn, u64::MAX, 1).unwrap(), 0, "the newest stays");
}

#[test]
fn the_writer_prunes_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(HISTORY_DB);
    let conn = schema::open(&db).unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    // PRUNE_KEEPS + 3 calls of 1970: the 3 oldest go, the rest are the newest.
    for id in 1..=(PRUNE_KEEPS as u64 + 3) {
        schema::insert(&tx, &record(id), "{}").unwrap();
    }
    tx.commit().unwrap();
    drop(conn);
    let (w, _acks) = writer(dir.path());
    let t = Instant::now();
    while w.status().pruned == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(w.status().pruned, 3);
    let ids = ids_in(&db);
    assert_eq!((ids.len(), ids[0]), (PRUNE_KEEPS, 4));
}

#[test]
fn a_shorter_retention_set_later_prunes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join(HISTORY_DB);
    let conn = schema::open(&db).unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    // PRUNE_KEEPS + 3 calls that ended two days ago.
    let two_days_ago = now_unix_ms() - 2 * DAY.as_millis() as u64;
    for id in 1..=(PRUNE_KEEPS as u64 + 3) {
        let mut r = record(id);
        r.started_unix_ms = two_days_ago;
        schema::insert(&tx, &r, "{}").unwrap();
    }
    tx.commit().unwrap();
    drop(conn);
    let (on, _acks) = acks();
    let w = HistoryWriter::start(&db, 30 * DAY, Reaper::start().unwrap(), on).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(w.status().pruned, 0, "kept for 30 days");
    w.set_keep(DAY);
    let t = Instant::now();
    while w.status().pruned == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(w.status().pruned, 3);
    assert_eq!(ids_in(&db).len(), PRUNE_KEEPS);
}
