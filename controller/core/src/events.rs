//! The event stream: what happens on the host, as typed events with a daemon-wide
//! increasing `seq` (docs/API.md#events, docs/ARCHITECTURE.md#telemetry).
//!
//! [`EventBus::publish`] numbers an event, hands it to the synchronous observers (the
//! metrics count from here), keeps it in a small ring for consumers that resume with
//! `since`, and offers it to every subscriber's bounded queue without ever waiting: a
//! subscriber whose queue is full misses the event, and is told how many it missed
//! with a `lagged` event once it reads again. A stalled consumer never slows a call.
//! Sequence numbers are reserved on disk in blocks, like call ids, so a restarted
//! daemon never hands one out twice.

pub mod describe;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::controller::state::{IdAllocator, StateError};
use crate::intent::Priority;
use crate::plan::{CallLimits, Clamp, SessionPlan};
use crate::record::CallRecord;

/// File in the state directory holding the reserved ceiling of event sequence numbers.
pub const SEQ_FILE: &str = "events.seq";
/// Events kept for consumers that resume with `since`.
pub const RING: usize = 1024;
/// Events queued for one consumer before it starts missing them.
pub const QUEUE: usize = 256;

/// One event as it goes over the wire: `{"seq":..,"time_ms":..,"type":"..",...}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub seq: u64,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    #[serde(flatten)]
    pub body: EventBody,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    SessionCreated {
        session: String,
        plan: SessionPlan,
    },
    SessionClosed {
        session: String,
        forced: bool,
    },
    CallDeclared {
        call_id: u64,
        session: String,
        class: Option<String>,
        priority: Priority,
        command: Vec<String>,
        limits: CallLimits,
        clamps: Vec<Clamp>,
    },
    /// A declaration refused: `reason` is the API's error code.
    CallRejected {
        session: String,
        reason: String,
        message: String,
    },
    /// A declaration that cannot fit now waits in the admission queue.
    CallQueued {
        session: String,
        admission: Box<crate::admission::Note>,
    },
    /// The call's record is durable in the history.
    CallFinished {
        record: Box<CallRecord>,
    },
    /// A step of the memory response on one call (or, without a call, a session).
    MemoryStep {
        call_id: Option<u64>,
        session: Option<String>,
        /// `burst`, `throttle`, `reclaim`, `freeze`, `kill`, `thaw` or `restore`.
        action: String,
        reason: String,
        detail: String,
        usage_bytes: Option<u64>,
        limit_bytes: Option<u64>,
    },
    /// A pressure signal: a PSI trigger or a memory watermark.
    Pressure {
        /// `host`, `root` or `session`.
        scope: String,
        session: Option<String>,
        /// `psi`, `watermark` or `bpf`.
        source: String,
        /// `calm`, `pressure` or `critical`.
        level: String,
        detail: String,
    },
    CpuBudgetExceeded {
        call_id: u64,
        session: String,
        budget_ms: u64,
        used_ms: u64,
    },
    SchedulerExit {
        reason: String,
    },
    SchedulerReloaded {
        attempt: u32,
    },
    SchedulerFallback {
        reason: String,
    },
    PolicyReloaded {
        source: String,
        ok: bool,
        error: Option<String>,
        /// The hash of the policy in force afterwards (the new one, or the old one
        /// when this one was refused).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hash: Option<String>,
    },
    /// This consumer missed `missed` events (its queue was full, or it resumed from a
    /// `since` older than what is kept).
    Lagged {
        missed: u64,
    },
}

impl EventBody {
    /// The session the event is about, for `?session=` filters.
    pub fn session(&self) -> Option<&str> {
        match self {
            EventBody::SessionCreated { session, .. }
            | EventBody::SessionClosed { session, .. }
            | EventBody::CallDeclared { session, .. }
            | EventBody::CallRejected { session, .. }
            | EventBody::CallQueued { session, .. }
            | EventBody::CpuBudgetExceeded { session, .. } => Some(session),
            EventBody::CallFinished { record } => Some(&record.session),
            EventBody::MemoryStep { session, .. } | EventBody::Pressure { session, .. } => {
                session.as_deref()
            }
            _ => None,
        }
    }

    /// The wire name of the type (`call_finished`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::SessionCreated { .. } => "session_created",
            EventBody::SessionClosed { .. } => "session_closed",
            EventBody::CallDeclared { .. } => "call_declared",
            EventBody::CallRejected { .. } => "call_rejected",
            EventBody::CallQueued { .. } => "call_queued",
            EventBody::CallFinished { .. } => "call_finished",
            EventBody::MemoryStep { .. } => "memory_step",
            EventBody::Pressure { .. } => "pressure",
            EventBody::CpuBudgetExceeded { .. } => "cpu_budget_exceeded",
            EventBody::SchedulerExit { .. } => "scheduler_exit",
            EventBody::SchedulerReloaded { .. } => "scheduler_reloaded",
            EventBody::SchedulerFallback { .. } => "scheduler_fallback",
            EventBody::PolicyReloaded { .. } => "policy_reloaded",
            EventBody::Lagged { .. } => "lagged",
        }
    }
}

/// Whether an event passes a consumer's session filter (`lagged` always does).
pub fn matches(event: &Event, session: Option<&str>) -> bool {
    match session {
        None => true,
        Some(s) => {
            matches!(event.body, EventBody::Lagged { .. }) || event.body.session() == Some(s)
        }
    }
}

/// A synchronous observer: runs inside [`EventBus::publish`], so it must be quick.
pub type Observer = Box<dyn Fn(&Event) + Send + Sync>;

struct Subscriber {
    session: Option<String>,
    tx: mpsc::Sender<Arc<Event>>,
    missed: Arc<AtomicU64>,
}

struct Inner {
    seqs: Option<IdAllocator>,
    /// The next number when there is no allocator (an in-memory bus).
    fallback_next: u64,
    /// The first seq of this run: a `since` below it resumes across a restart.
    first: Option<u64>,
    ring: VecDeque<Arc<Event>>,
    observers: Vec<Observer>,
    subscribers: Vec<Subscriber>,
    /// Events a subscriber missed, over the daemon's life (for the metrics).
    dropped: u64,
    /// The latest failure to reserve sequence numbers on disk.
    seq_error: Option<String>,
    /// The daemon is stopping: streams end, new ones end at once.
    closed: bool,
}

/// What a consumer reads: first `backlog` (from the ring), then `next()`.
#[derive(Debug)]
pub struct Subscription {
    pub backlog: Vec<Arc<Event>>,
    /// Events older than `since` that are no longer kept (reported first as `lagged`).
    pub missed_before: u64,
    rx: mpsc::Receiver<Arc<Event>>,
    missed: Arc<AtomicU64>,
}

impl Subscription {
    /// The next event. What overflowed is reported as `lagged` where it happened: the
    /// bus queues it in the first free slot after the gap, and a consumer that drained
    /// its queue gets it before waiting. `None` once the stream ended.
    pub async fn next(&mut self) -> Option<Arc<Event>> {
        match self.rx.try_recv() {
            Ok(event) => return Some(event),
            Err(mpsc::error::TryRecvError::Disconnected) => return self.take_lag(),
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        if let Some(lag) = self.take_lag() {
            return Some(lag);
        }
        self.rx.recv().await
    }

    /// A `lagged` event for what overflowed, if anything did.
    fn take_lag(&self) -> Option<Arc<Event>> {
        let missed = self.missed.swap(0, Ordering::Relaxed);
        (missed > 0).then(|| Arc::new(lagged(missed)))
    }
}

/// A `lagged` event (it has no sequence number of its own: seq 0).
pub fn lagged(missed: u64) -> Event {
    Event {
        seq: 0,
        time_ms: unix_ms(),
        body: EventBody::Lagged { missed },
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The bus. Cheap to share (`Arc<EventBus>`); every method takes `&self`.
pub struct EventBus {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let i = self.lock();
        f.debug_struct("EventBus")
            .field("subscribers", &i.subscribers.len())
            .field("ring", &i.ring.len())
            .finish_non_exhaustive()
    }
}

/// What the bus has done, for status and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct BusStatus {
    /// The newest seq handed out (0 before the first event).
    pub last_seq: u64,
    pub subscribers: usize,
    /// Events consumers missed because their queue was full.
    pub dropped: u64,
    pub seq_error: Option<String>,
}

impl EventBus {
    /// A bus whose sequence numbers are reserved in `<state_dir>/events.seq`.
    pub fn open(state_dir: &Path) -> Result<EventBus, StateError> {
        std::fs::create_dir_all(state_dir).map_err(|e| StateError {
            path: state_dir.to_path_buf(),
            reason: format!("creating: {e}"),
        })?;
        let seqs = IdAllocator::open_at(&state_dir.join(SEQ_FILE), 0)?;
        Ok(EventBus::with(Some(seqs)))
    }

    /// A bus numbering from 1 in memory only (tests, tools).
    pub fn in_memory() -> EventBus {
        EventBus::with(None)
    }

    fn with(seqs: Option<IdAllocator>) -> EventBus {
        EventBus {
            inner: Mutex::new(Inner {
                seqs,
                fallback_next: 1,
                first: None,
                ring: VecDeque::with_capacity(RING),
                observers: Vec::new(),
                subscribers: Vec::new(),
                dropped: 0,
                seq_error: None,
                closed: false,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // An observer that panicked must not take the stream down with it.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a synchronous observer; it sees every event published from now on.
    pub fn observe(&self, observer: Observer) {
        self.lock().observers.push(observer);
    }

    /// Numbers the event and hands it out; returns its seq. Never blocks on a consumer.
    pub fn publish(&self, body: EventBody) -> u64 {
        let mut i = self.lock();
        let seq = i.next_seq();
        let event = Arc::new(Event {
            seq,
            time_ms: unix_ms(),
            body,
        });
        for o in &i.observers {
            o(&event);
        }
        if i.ring.len() == RING {
            i.ring.pop_front();
        }
        i.ring.push_back(event.clone());
        let mut dropped = 0;
        i.subscribers.retain(|s| {
            if !matches(&event, s.session.as_deref()) {
                return !s.tx.is_closed();
            }
            match offer(s, &event) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(())) => {
                    s.missed.fetch_add(1, Ordering::Relaxed);
                    dropped += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Closed(())) => false,
            }
        });
        i.dropped += dropped;
        seq
    }

    /// A consumer: events after `since` still in the ring (all kept events when
    /// `since` is `None`: none), then every new one matching `session`.
    pub fn subscribe(&self, since: Option<u64>, session: Option<&str>) -> Subscription {
        let (tx, rx) = mpsc::channel(QUEUE);
        let missed = Arc::new(AtomicU64::new(0));
        let mut i = self.lock();
        let (backlog, missed_before) = match since {
            None => (Vec::new(), 0),
            Some(since) => i.replay(since, session),
        };
        i.subscribers.retain(|s| !s.tx.is_closed());
        if !i.closed {
            i.subscribers.push(Subscriber {
                session: session.map(str::to_string),
                tx,
                missed: missed.clone(),
            });
        }
        Subscription {
            backlog,
            missed_before,
            rx,
            missed,
        }
    }

    /// Ends every stream after what it has queued (the daemon is stopping: a follower
    /// must not hold its graceful shutdown open). Events still go to the observers.
    pub fn close(&self) {
        let mut i = self.lock();
        i.closed = true;
        i.subscribers.clear();
    }

    pub fn status(&self) -> BusStatus {
        let mut i = self.lock();
        i.subscribers.retain(|s| !s.tx.is_closed());
        BusStatus {
            last_seq: i.ring.back().map_or(0, |e| e.seq),
            subscribers: i.subscribers.len(),
            dropped: i.dropped,
            seq_error: i.seq_error.clone(),
        }
    }
}

/// Queues `event` for one subscriber, after a `lagged` for what it missed before, so
/// the lag sits where the gap is.
fn offer(s: &Subscriber, event: &Arc<Event>) -> Result<(), mpsc::error::TrySendError<()>> {
    let missed = s.missed.swap(0, Ordering::Relaxed);
    if missed > 0
        && let Err(e) = s.tx.try_send(Arc::new(lagged(missed)))
    {
        s.missed.fetch_add(missed, Ordering::Relaxed);
        return Err(without_event(e));
    }
    s.tx.try_send(event.clone()).map_err(without_event)
}

/// A send error without the event it carried back.
fn without_event<T>(e: mpsc::error::TrySendError<T>) -> mpsc::error::TrySendError<()> {
    match e {
        mpsc::error::TrySendError::Full(_) => mpsc::error::TrySendError::Full(()),
        mpsc::error::TrySendError::Closed(_) => mpsc::error::TrySendError::Closed(()),
    }
}

impl Inner {
    fn next_seq(&mut self) -> u64 {
        let seq = match self.seqs.as_mut() {
            Some(seqs) => match seqs.take() {
                Ok(seq) => {
                    self.seq_error = None;
                    seq
                }
                // The ceiling could not be moved on disk (a full disk): keep numbering
                // in memory rather than hold an event back; the error shows in status.
                Err(e) => {
                    self.seq_error = Some(e.to_string());
                    seqs.take_unreserved()
                }
            },
            None => {
                self.fallback_next += 1;
                self.fallback_next - 1
            }
        };
        self.first.get_or_insert(seq);
        seq
    }

    /// The kept events after `since` that match, and how many of this run's events
    /// after `since` are no longer kept.
    fn replay(&self, since: u64, session: Option<&str>) -> (Vec<Arc<Event>>, u64) {
        let backlog = self
            .ring
            .iter()
            .filter(|e| e.seq > since && matches(e, session))
            .cloned()
            .collect();
        let Some(oldest_kept) = self.ring.front().map(|e| e.seq) else {
            return (backlog, 0);
        };
        let first = self.first.unwrap_or(oldest_kept);
        let missed = oldest_kept.saturating_sub(since.saturating_add(1).max(first));
        (backlog, missed)
    }
}

#[cfg(test)]
mod tests;
