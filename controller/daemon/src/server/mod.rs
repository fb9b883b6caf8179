//! The API's front door on the unix socket: every connection is identified
//! (`SO_PEERCRED`), counted against its uid's limit (429 over it), and read through
//! [`io::Guarded`], which bounds each request's head, body and time and answers a bad
//! one with a JSON 4xx (docs/API.md, "Limits"). axum and hyper serve what passes, as
//! before: a response, the event stream included, is never timed.

mod frame;
mod io;
mod slots;
#[cfg(test)]
mod tests;

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::Response;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::api::guard::{Peer, PeerCred};
pub use frame::Limits;
use frame::Refusal;
use io::Guarded;
use slots::Slots;

/// How long a connection turned away waits for its request before the 429 (so that
/// the client, which writes first, reads the answer rather than a broken pipe).
const TURN_AWAY_WAIT: Duration = Duration::from_secs(1);

/// The socket's listener, for `axum::serve`.
#[derive(Debug)]
pub struct Front {
    listener: UnixListener,
    limits: Limits,
    slots: Slots,
}

impl Front {
    pub fn new(listener: UnixListener, limits: Limits) -> Front {
        Front {
            listener,
            limits,
            slots: Slots::default(),
        }
    }
}

/// What each request of a connection carries: who is at the other end, and the
/// connection's count of responses in flight (which stops its request timer).
#[derive(Debug, Clone)]
pub struct Conn {
    peer: Option<Peer>,
    in_flight: Arc<AtomicUsize>,
}

impl axum::serve::Listener for Front {
    type Io = Guarded;
    type Addr = Conn;

    async fn accept(&mut self) -> (Guarded, Conn) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of descriptors, most likely: let some close.
                    tracing::error!("accept on the API socket: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let peer = Peer::of(&stream)
                .map_err(|e| tracing::warn!("cannot read a connection's SO_PEERCRED ({e})"))
                .ok();
            // Credentials that cannot be read share one count (every request of such a
            // connection is refused anyway).
            let uid = peer.map_or(u32::MAX, |p| p.uid);
            let max = self.limits.connections_per_uid;
            let Some(slot) = self.slots.take(uid, max) else {
                tracing::warn!(uid, max, "connection refused: too many open");
                tokio::spawn(turn_away(stream, Refusal::TooManyConnections { uid, max }));
                continue;
            };
            let io = Guarded::new(stream, self.limits, slot);
            let conn = Conn {
                peer,
                in_flight: io.in_flight(),
            };
            return (io, conn);
        }
    }

    fn local_addr(&self) -> std::io::Result<Conn> {
        Err(std::io::Error::other(
            "a unix socket server has no peer address",
        ))
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Front>> for Conn {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Front>) -> Conn {
        stream.remote_addr().clone()
    }
}

/// Reads (briefly, bounded) what the client sends, answers `why` and closes.
async fn turn_away(mut stream: UnixStream, why: Refusal) {
    let mut sink = [0u8; 4096];
    let _ = tokio::time::timeout(TURN_AWAY_WAIT, async {
        let mut seen = Vec::new();
        while let Ok(n @ 1..) = stream.read(&mut sink).await {
            seen.extend_from_slice(&sink[..n]);
            if seen.windows(4).any(|w| w == b"\r\n\r\n") || seen.len() > 64 * 1024 {
                break;
            }
        }
    })
    .await;
    let _ = stream.write_all(&why.response()).await;
    let _ = stream.shutdown().await;
}

/// Middleware: marks a response in flight on its connection from the moment its
/// handler runs until its body is sent (or dropped), and hands the handlers the
/// caller's credentials.
pub async fn track(ConnectInfo(conn): ConnectInfo<Conn>, mut req: Request, next: Next) -> Response {
    conn.in_flight.fetch_add(1, Ordering::SeqCst);
    let done = InFlight(conn.in_flight.clone());
    req.extensions_mut()
        .insert(ConnectInfo(PeerCred(conn.peer)));
    next.run(req)
        .await
        .map(|body| Body::new(Tracked { body, _done: done }))
}

/// One response in flight; counted down when dropped.
#[derive(Debug)]
struct InFlight(Arc<AtomicUsize>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body that keeps its response counted while it exists.
#[derive(Debug)]
struct Tracked {
    body: Body,
    _done: InFlight,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}
