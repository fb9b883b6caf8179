//! `GET /healthz` and `GET /readyz` on the metrics listener, for Kubernetes probes and
//! load balancers. Live: the daemon's event loop has taken the controller's lock within
//! the last few beats (the same loop that pings systemd's watchdog beats here too), so a
//! hung loop, a deadlock or a poisoned lock fail the probe and the kubelet restarts the
//! pod. Ready: live, and the API socket is being served.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::{Value, json};

/// Missed beats after which the daemon is no longer live.
const MISSED_BEATS: u32 = 3;

/// What the probes read; the event loop writes it.
#[derive(Debug)]
pub struct Health {
    started: Instant,
    /// Milliseconds from `started` to the last beat.
    last_beat_ms: AtomicU64,
    ready: AtomicBool,
    stale_after: Duration,
}

/// Which probe asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    Live,
    Ready,
}

impl Health {
    /// Health of a loop that beats every `beat_every`.
    pub fn new(beat_every: Duration) -> Self {
        Health {
            started: Instant::now(),
            last_beat_ms: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            stale_after: beat_every * MISSED_BEATS,
        }
    }

    /// The event loop took the controller's lock just now.
    pub fn beat(&self) {
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_beat_ms.store(ms, Ordering::Relaxed);
    }

    /// The API socket is served.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    fn answer(&self, probe: Probe) -> (StatusCode, Value) {
        let last = Duration::from_millis(self.last_beat_ms.load(Ordering::Relaxed));
        let since = self.started.elapsed().saturating_sub(last);
        verdict(
            probe,
            self.ready.load(Ordering::Relaxed),
            since,
            self.stale_after,
        )
    }
}

/// The answer to `probe`, given readiness and the time since the last beat.
pub fn verdict(
    probe: Probe,
    ready: bool,
    since_beat: Duration,
    stale_after: Duration,
) -> (StatusCode, Value) {
    let since = since_beat.as_secs_f64();
    if since_beat > stale_after {
        let body = json!({"status": "stalled", "seconds_since_beat": since});
        return (StatusCode::SERVICE_UNAVAILABLE, body);
    }
    if probe == Probe::Ready && !ready {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"status": "starting"}),
        );
    }
    (
        StatusCode::OK,
        json!({"status": "ok", "ready": ready, "seconds_since_beat": since}),
    )
}

async fn live(State(h): State<Arc<Health>>) -> Response {
    let (code, body) = h.answer(Probe::Live);
    (code, Json(body)).into_response()
}

async fn ready(State(h): State<Arc<Health>>) -> Response {
    let (code, body) = h.answer(Probe::Ready);
    (code, Json(body)).into_response()
}

/// `/healthz` (live) and `/readyz` (ready).
pub fn router(health: Arc<Health>) -> Router {
    Router::new()
        .route("/healthz", get(live))
        .route("/readyz", get(ready))
        .with_state(health)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    const STALE: Duration = Duration::from_secs(15);

    #[test]
    fn live_needs_a_recent_beat_and_ready_needs_the_socket_too() {
        let s = |p, r, since| verdict(p, r, Duration::from_secs(since), STALE).0;
        assert_eq!(s(Probe::Live, false, 1), StatusCode::OK);
        assert_eq!(s(Probe::Ready, false, 1), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(s(Probe::Ready, true, 1), StatusCode::OK);
        assert_eq!(s(Probe::Live, true, 16), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(s(Probe::Ready, true, 16), StatusCode::SERVICE_UNAVAILABLE);
        let (_, body) = verdict(Probe::Live, true, Duration::from_secs(20), STALE);
        assert_eq!(body["status"], "stalled");
    }

    async fn get(app: &Router, path: &str) -> (StatusCode, Value) {
        let resp = app
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).expect("request"))
            .await
            .expect("response");
        let code = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .expect("body");
        (code, serde_json::from_slice(&body).expect("json"))
    }

    #[tokio::test]
    async fn the_endpoints_follow_the_loop() {
        let health = Arc::new(Health::new(Duration::from_millis(20)));
        let app = router(health.clone());
        health.beat();
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(&app, "/readyz").await,
            (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"status": "starting"})
            )
        );
        health.set_ready();
        assert_eq!(get(&app, "/readyz").await.0, StatusCode::OK);
        // No beat for more than three beat intervals: neither live nor ready.
        std::thread::sleep(Duration::from_millis(100));
        let (code, body) = get(&app, "/healthz").await;
        assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(
            get(&app, "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        health.beat();
        assert_eq!(get(&app, "/healthz").await.0, StatusCode::OK);
    }
}
