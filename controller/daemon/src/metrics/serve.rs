//! `GET /metrics` over TCP (`--metrics-listen`), beside the health probes (`health`). The format follows the scraper's
//! `Accept` header: OpenMetrics 1.0 (with exemplars) when it prefers
//! `application/openmetrics-text`, as Prometheus does, else the Prometheus text format
//! 0.0.4. The scrape is encoded on a blocking thread: the collectors read cgroup and
//! /proc files and take the controller's lock for a moment.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;

use crate::health::Health;

/// `Content-Type` of an OpenMetrics 1.0 exposition.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// `Content-Type` of the Prometheus text format.
pub const TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// An exposition format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Text,
    OpenMetrics,
}

/// One media range of an `Accept` header: `type/subtype`, its `version`, its `q`.
fn media_range(part: &str) -> (String, Option<String>, f32) {
    let mut items = part.split(';').map(str::trim);
    let media = items.next().unwrap_or_default().to_ascii_lowercase();
    let (mut version, mut q) = (None, 1.0);
    for param in items {
        let Some((k, v)) = param.split_once('=') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "version" => version = Some(v.trim().trim_matches('"').to_string()),
            "q" => q = v.trim().parse().unwrap_or(0.0),
            _ => {}
        }
    }
    (media, version, q)
}

/// The format to answer with: OpenMetrics when the header rates an OpenMetrics 1.x
/// range (or one without a version) at least as high as anything text/plain would
/// satisfy, and above 0; else the text format, which is also the answer to no header.
pub fn negotiate(accept: &str) -> Format {
    let (mut om, mut text) = (0.0f32, 0.0f32);
    for part in accept.split(',').filter(|p| !p.trim().is_empty()) {
        let (media, version, q) = media_range(part);
        match media.as_str() {
            "application/openmetrics-text"
                if version.as_deref().is_none_or(|v| v.starts_with("1.")) =>
            {
                om = om.max(q)
            }
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if om > 0.0 && om >= text {
        Format::OpenMetrics
    } else {
        Format::Text
    }
}

/// The registry encoded in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String, std::fmt::Error> {
    let mut body = String::new();
    match format {
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut body, registry)?,
        Format::Text => prometheus_client::encoding::prometheus_text::encode(&mut body, registry)?,
    }
    Ok(body)
}

async fn metrics(State(registry): State<Arc<Registry>>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let format = negotiate(accept);
    let encoded = tokio::task::spawn_blocking(move || encode(&registry, format)).await;
    match encoded {
        Ok(Ok(body)) => {
            let ct = match format {
                Format::OpenMetrics => OPENMETRICS,
                Format::Text => TEXT,
            };
            ([(header::CONTENT_TYPE, HeaderValue::from_static(ct))], body).into_response()
        }
        Ok(Err(e)) => {
            tracing::error!("metrics: encoding the scrape: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response()
        }
        Err(e) => {
            tracing::error!("metrics: the scrape's thread: {e}");
            (StatusCode::INTERNAL_SERVER_ERROR, "scrape failed\n").into_response()
        }
    }
}

/// The endpoint's routes: `/metrics`, and the health probes.
pub fn router(registry: Arc<Registry>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry)
        .merge(crate::health::router(health))
}

/// Binds `addr` and serves the registry there in the background. A failure to bind is
/// logged and the daemon runs on without metrics: the endpoint must never keep calls
/// from being controlled.
pub async fn start(addr: SocketAddr, registry: Registry, health: Arc<Health>) {
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, "metrics endpoint not started: binding: {e}");
            return;
        }
    };
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    let app = router(Arc::new(registry), health);
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(%addr, "metrics endpoint stopped: {e}");
        }
    });
}
