//! The connection as hyper sees it: bytes from the client are handed on only once
//! the request they belong to passes [`frame`] (so hyper never answers a bad request
//! itself), and only up to the end of its announced body. Reading a request (its
//! head, its body, or the idle time before the next one) is bounded by the request
//! timeout; while a response is in flight (a handler runs or its body, the event
//! stream included, is being sent) nothing is timed.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::UnixStream;
use tokio::time::{Instant, Sleep};

use super::frame::{Limits, Refusal, frame};
use super::slots::Slot;

/// Where the connection is in the request it reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// This many body bytes still to hand on.
    Body(u64),
    /// Refused or ended: hyper reads end-of-file.
    Closed,
}

/// A client connection, checked on the way in.
#[derive(Debug)]
pub struct Guarded {
    io: UnixStream,
    limits: Limits,
    phase: Phase,
    /// Received and not yet handed on; its first `pass` bytes are checked.
    inbound: Vec<u8>,
    pass: usize,
    /// Responses being produced or sent on this connection (see `super::track`).
    in_flight: Arc<AtomicUsize>,
    deadline: Option<Pin<Box<Sleep>>>,
    /// After a refusal, whatever hyper writes is dropped.
    refused: bool,
    _slot: Slot,
}

impl Guarded {
    pub fn new(io: UnixStream, limits: Limits, slot: Slot) -> Guarded {
        Guarded {
            io,
            limits,
            phase: Phase::Head,
            inbound: Vec::new(),
            pass: 0,
            in_flight: Arc::new(AtomicUsize::new(0)),
            deadline: None,
            refused: false,
            _slot: slot,
        }
    }

    pub fn in_flight(&self) -> Arc<AtomicUsize> {
        self.in_flight.clone()
    }

    /// Whether waiting for the client now is reading a request (timed): a partial
    /// request, or an idle connection with no response in flight.
    fn reading_request(&self) -> bool {
        match self.phase {
            Phase::Head => !self.inbound.is_empty() || self.in_flight.load(Ordering::SeqCst) == 0,
            Phase::Body(_) => true,
            Phase::Closed => false,
        }
    }

    /// Answers `r` (unless an earlier response is in flight, which the answer would
    /// corrupt) and ends the connection.
    fn refuse(&mut self, r: &Refusal) {
        tracing::debug!("request refused: {r}");
        // A request whose body is being read has no answer yet.
        let answerable =
            matches!(self.phase, Phase::Body(_)) || self.in_flight.load(Ordering::SeqCst) == 0;
        if answerable {
            // Best effort: a small answer on an idle socket fits its buffer.
            let _ = self.io.try_write(&r.response());
        }
        self.phase = Phase::Closed;
        self.inbound.clear();
        self.pass = 0;
        self.refused = true;
    }

    /// Moves checked bytes forward; `false` when more must be received first.
    fn advance(&mut self) -> bool {
        match self.phase {
            Phase::Closed => true,
            Phase::Body(0) => {
                self.phase = Phase::Head;
                self.deadline = None;
                true
            }
            Phase::Body(n) if !self.inbound.is_empty() => {
                let k = self
                    .inbound
                    .len()
                    .min(usize::try_from(n).unwrap_or(usize::MAX));
                self.pass = k;
                self.phase = Phase::Body(n - k as u64);
                true
            }
            Phase::Head if !self.inbound.is_empty() => match frame(&self.inbound, &self.limits) {
                Ok(Some(head)) => {
                    self.pass = head.len;
                    self.phase = Phase::Body(head.body);
                    true
                }
                Ok(None) => false,
                Err(r) => {
                    self.refuse(&r);
                    true
                }
            },
            _ => false,
        }
    }

    /// The request timer, armed on the first wait of a request: `Ready` when it ran out.
    fn poll_deadline(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if !self.reading_request() {
            self.deadline = None;
            return Poll::Pending;
        }
        let timeout = self.limits.request_timeout;
        self.deadline
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(Instant::now() + timeout)))
            .as_mut()
            .poll(cx)
    }
}

impl AsyncRead for Guarded {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.pass > 0 {
                let n = this.pass.min(buf.remaining());
                buf.put_slice(&this.inbound[..n]);
                this.inbound.drain(..n);
                this.pass -= n;
                return Poll::Ready(Ok(()));
            }
            if this.phase == Phase::Closed {
                return Poll::Ready(Ok(()));
            }
            if this.advance() {
                continue;
            }
            let mut chunk = [0u8; 8192];
            let mut got = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.io).poll_read(cx, &mut got) {
                Poll::Ready(Ok(())) if got.filled().is_empty() => {
                    // The client closed: hyper sees the end (mid-request, an error).
                    this.phase = Phase::Closed;
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => this.inbound.extend_from_slice(got.filled()),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    ready!(this.poll_deadline(cx));
                    this.refuse(&Refusal::Timeout(this.limits.request_timeout));
                }
            }
        }
    }
}

impl AsyncWrite for Guarded {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.refused {
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
