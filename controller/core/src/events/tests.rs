use super::*;

fn closed(session: &str) -> EventBody {
    EventBody::SessionClosed {
        session: session.into(),
        forced: false,
    }
}

#[tokio::test]
async fn events_are_numbered_in_order_and_reach_every_matching_subscriber() {
    let bus = EventBus::in_memory();
    let mut all = bus.subscribe(None, None);
    let mut only_a = bus.subscribe(None, Some("a"));
    assert_eq!(bus.publish(closed("a")), 1);
    assert_eq!(bus.publish(closed("b")), 2);
    assert_eq!(bus.publish(EventBody::SchedulerReloaded { attempt: 1 }), 3);
    for want in 1..=3 {
        assert_eq!(all.next().await.map(|e| e.seq), Some(want));
    }
    let a = only_a.next().await.map(|e| e.seq);
    assert_eq!(a, Some(1));
    bus.publish(closed("a"));
    assert_eq!(
        only_a.next().await.map(|e| e.seq),
        Some(4),
        "b's and global events skipped"
    );
}

#[tokio::test]
async fn a_full_queue_drops_and_the_consumer_is_told_how_many_it_missed() {
    let bus = EventBus::in_memory();
    let mut slow = bus.subscribe(None, None);
    for _ in 0..QUEUE + 5 {
        bus.publish(closed("a"));
    }
    assert_eq!(bus.status().dropped, 5);
    for want in 1..=QUEUE as u64 {
        assert_eq!(slow.next().await.map(|e| e.seq), Some(want));
    }
    let lag = slow.next().await.expect("event");
    assert_eq!(
        lag.body,
        EventBody::Lagged { missed: 5 },
        "lag after the kept ones"
    );
    bus.publish(closed("a"));
    assert_eq!(slow.next().await.map(|e| e.seq), Some(QUEUE as u64 + 6));
}

#[tokio::test]
async fn the_lag_is_queued_where_the_gap_is() {
    let bus = EventBus::in_memory();
    let mut slow = bus.subscribe(None, None);
    for _ in 0..QUEUE + 3 {
        bus.publish(closed("a"));
    }
    assert_eq!(slow.next().await.map(|e| e.seq), Some(1));
    // One slot free: the lag takes it, so this event is missed too.
    bus.publish(closed("a"));
    for want in 2..=QUEUE as u64 {
        assert_eq!(slow.next().await.map(|e| e.seq), Some(want));
    }
    let lag = slow.next().await.expect("lag");
    assert_eq!(lag.body, EventBody::Lagged { missed: 3 });
    let lag = slow.next().await.expect("lag");
    assert_eq!(
        lag.body,
        EventBody::Lagged { missed: 1 },
        "reported once drained"
    );
}

#[test]
fn a_dropped_subscriber_is_forgotten_at_the_next_event() {
    let bus = EventBus::in_memory();
    let sub = bus.subscribe(None, None);
    assert_eq!(bus.status().subscribers, 1);
    drop(sub);
    bus.publish(closed("a"));
    assert_eq!(bus.status().subscribers, 0);
    assert_eq!(bus.status().dropped, 0);
}

#[test]
fn since_replays_what_is_kept_and_counts_what_is_not() {
    let bus = EventBus::in_memory();
    for _ in 0..RING + 10 {
        bus.publish(closed("a"));
    }
    let sub = bus.subscribe(Some(RING as u64 + 5), None);
    let seqs: Vec<u64> = sub.backlog.iter().map(|e| e.seq).collect();
    assert_eq!(
        seqs,
        ((RING as u64 + 6)..=(RING as u64 + 10)).collect::<Vec<_>>()
    );
    assert_eq!(sub.missed_before, 0);
    let old = bus.subscribe(Some(3), None);
    assert_eq!(old.backlog.len(), RING);
    assert_eq!(old.missed_before, 7, "seqs 4..=10 fell out of the ring");
    let filtered = bus.subscribe(Some(0), Some("nobody"));
    assert!(filtered.backlog.is_empty());
}

#[test]
fn observers_see_every_event_in_order() {
    let bus = EventBus::in_memory();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    bus.observe(Box::new(move |e| s.lock().expect("lock").push(e.seq)));
    bus.publish(closed("a"));
    bus.publish(closed("b"));
    assert_eq!(*seen.lock().expect("lock"), vec![1, 2]);
}

#[test]
fn seqs_are_never_reused_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = EventBus::open(dir.path()).expect("open");
    let a = first.publish(closed("a"));
    let b = first.publish(closed("a"));
    drop(first);
    let second = EventBus::open(dir.path()).expect("reopen");
    let c = second.publish(closed("a"));
    assert!(a < b && b < c, "{a} {b} {c}");
    // A resume from the previous run's seq does not count the restart's gap as lost.
    let sub = second.subscribe(Some(b), None);
    assert_eq!(sub.missed_before, 0);
    assert_eq!(sub.backlog.len(), 1);
}

#[test]
fn events_serialize_flat_with_their_type() {
    let e = Event {
        seq: 7,
        time_ms: 1,
        body: EventBody::CpuBudgetExceeded {
            call_id: 3,
            session: "s".into(),
            budget_ms: 10,
            used_ms: 12,
        },
    };
    let v = serde_json::to_value(&e).expect("json");
    assert_eq!(v["type"], "cpu_budget_exceeded");
    assert_eq!(v["seq"], 7);
    assert_eq!(v["call_id"], 3);
    assert_eq!(e.body.kind(), "cpu_budget_exceeded");
    let back: Event = serde_json::from_value(v).expect("parse");
    assert_eq!(back, e);
}

#[test]
fn each_event_reads_as_one_line_that_says_what_happened() {
    let e = Event {
        seq: 42,
        time_ms: 3_600_000 + 61_005,
        body: EventBody::CpuBudgetExceeded {
            call_id: 3,
            session: "s1".into(),
            budget_ms: 100,
            used_ms: 105,
        },
    };
    let line = describe::line(&e);
    assert!(
        line.starts_with("01:01:01.005 #42 cpu_budget_exceeded"),
        "{line}"
    );
    assert!(
        line.ends_with("call 3 in s1: used 105 ms of its 100 ms CPU budget"),
        "{line}"
    );
    let lag = describe::line(&lagged(5));
    assert!(
        lag.contains(" - lagged") && lag.contains("missed 5 event(s)"),
        "{lag}"
    );
    assert_eq!(describe::shorten("abcdef", 4), "abc…");
    assert_eq!(describe::shorten("abc", 4), "abc");
}

#[tokio::test]
async fn closing_ends_every_stream_after_what_it_queued() {
    let bus = EventBus::in_memory();
    let mut sub = bus.subscribe(None, None);
    bus.publish(closed("a"));
    bus.close();
    assert_eq!(sub.next().await.map(|e| e.seq), Some(1));
    assert!(sub.next().await.is_none(), "ended");
    let mut late = bus.subscribe(None, None);
    bus.publish(closed("a"));
    assert!(
        late.next().await.is_none(),
        "a stream opened while stopping ends at once"
    );
}
