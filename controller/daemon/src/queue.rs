//! The admission queue (docs/POLICY.md#admission): calls that cannot fit yet wait here
//! without blocking anything. Each waiting declaration holds a oneshot receiver; the
//! pump ([`pump_loop`]) retries the waiters whenever a call ends and every second,
//! highest priority first and in arrival order within a priority, and answers each
//! with its grant or its rejection. A waiter whose client went away (its request
//! future dropped) leaves the queue with its [`Ticket`].

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use agentcg_core::controller::{CallGrant, CallRequest, ControlError, Controller};
use agentcg_core::intent::Priority;
use agentcg_core::plan::PlanError;

use crate::supervisor::{Shared, Wakers};

/// How often a non-empty queue is retried when no call ends (host memory can fall, and
/// a waiter's `queue_for` can pass, without one). An empty queue sleeps.
const PUMP_EVERY: Duration = Duration::from_secs(1);

/// A waiter's place: priority (highest first), then arrival.
type Place = (Reverse<Priority>, u64);

type Answer = Result<CallGrant, ControlError>;

#[derive(Debug)]
struct Waiter {
    req: CallRequest,
    session: String,
    since: Instant,
    reply: oneshot::Sender<Answer>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    waiting: BTreeMap<Place, Waiter>,
}

/// The calls waiting for memory.
#[derive(Debug, Default)]
pub struct Queue {
    inner: Mutex<Inner>,
    /// A waiter arrived: the pump starts retrying.
    pushed: tokio::sync::Notify,
}

/// A waiter's hold on its place: dropping it (the answer came, or the client went
/// away) leaves the queue.
#[derive(Debug)]
pub struct Ticket {
    queue: Arc<Queue>,
    place: Place,
    pub answer: oneshot::Receiver<Answer>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Ok(mut inner) = self.queue.inner.lock() {
            inner.waiting.remove(&self.place);
        }
    }
}

impl Queue {
    /// Queues a declaration that was answered `Queued` (it arrived at `since`).
    pub fn push(
        self: &Arc<Self>,
        req: CallRequest,
        session: String,
        priority: Priority,
        since: Instant,
    ) -> Ticket {
        let (reply, answer) = oneshot::channel();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        inner.next += 1;
        let place = (Reverse(priority), inner.next);
        inner.waiting.insert(
            place,
            Waiter {
                req,
                session,
                since,
                reply,
            },
        );
        drop(inner);
        self.pushed.notify_one();
        Ticket {
            queue: self.clone(),
            place,
            answer,
        }
    }

    /// When the longest waiter's `queue_for` is over (it is then rejected).
    fn first_deadline(&self, queue_for: Duration) -> Option<Instant> {
        let inner = self.inner.lock().ok()?;
        inner.waiting.values().map(|w| w.since + queue_for).min()
    }

    /// Calls waiting now.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |i| i.waiting.len())
    }

    /// Retries every waiter in order and answers those admitted or rejected; a waiter
    /// still short stays, and no later waiter of its session is tried before it
    /// (except to reject one whose time is up). Returns how many were answered.
    pub fn pump(&self, c: &mut Controller) -> usize {
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let queue_for = c.policy().admission.queue_for;
        let places: Vec<Place> = inner.waiting.keys().copied().collect();
        let mut held = HashSet::new();
        let mut answered = 0;
        for place in places {
            let Some(w) = inner.waiting.get(&place) else {
                continue;
            };
            if w.reply.is_closed() {
                inner.waiting.remove(&place);
                continue;
            }
            let waited = w.since.elapsed();
            if held.contains(&w.session) && waited < queue_for {
                continue;
            }
            match c.declare_call_queued(&w.req, Some(waited)) {
                Err(ControlError::Plan(PlanError::Queued(_))) => {
                    held.insert(w.session.clone());
                }
                answer => {
                    let Some(w) = inner.waiting.remove(&place) else {
                        continue;
                    };
                    answered += 1;
                    if let Err(Ok(grant)) = w.reply.send(answer) {
                        // The client left between the check above and now (cannot
                        // happen on the one-thread runtime): the sweep ends the
                        // call, which nothing will ever run in.
                        tracing::warn!(
                            call_id = grant.call_id,
                            "queued call granted to a client that left"
                        );
                    }
                }
            }
        }
        answered
    }
}

/// Retries the queue whenever a call ends and, while calls wait, every [`PUMP_EVERY`]
/// and when a waiter's `queue_for` is over (so that its rejection is not late). With
/// nobody waiting it sleeps until a call is queued: an idle daemon has no timer.
pub async fn pump_loop(shared: Shared, wakers: Arc<Wakers>, queue: Arc<Queue>) {
    loop {
        let ended = wakers.ended.notified();
        tokio::pin!(ended);
        ended.as_mut().enable();
        let pushed = queue.pushed.notified();
        tokio::pin!(pushed);
        pushed.as_mut().enable();
        let mut wake = None;
        if queue.len() > 0 {
            let mut at = Instant::now() + PUMP_EVERY;
            let Ok(mut c) = shared.lock() else {
                tracing::error!("controller lock poisoned");
                return;
            };
            if queue.pump(&mut c) > 0 {
                // Admitted calls have deadlines for the timer.
                wakers.declared.notify_one();
            }
            let queue_for = c.policy().admission.queue_for;
            if let Some(due) = queue.first_deadline(queue_for) {
                at = at.min(due);
            }
            wake = Some(at);
        }
        let sleep = async {
            match wake {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = ended => {}
            () = pushed => {}
            () = sleep => {}
        }
    }
}
