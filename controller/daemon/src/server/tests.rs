//! The front door over a real unix socket, with a small router: requests within the
//! limits are served (several on one connection), bad ones get their JSON 4xx, idle
//! and slow clients are cut at the request timeout, and a response that streams for
//! longer than that timeout is never cut.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::{get, post};
use futures_util::stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{Conn, Front, Limits, track};
use crate::api::guard::PeerCred;

const TIMEOUT: Duration = Duration::from_millis(400);

struct Server {
    _dir: tempfile::TempDir,
    socket: std::path::PathBuf,
}

async fn start(connections_per_uid: usize) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("api.sock");
    let listener = tokio::net::UnixListener::bind(&socket).unwrap();
    let app =
        axum::Router::new()
            .route(
                "/uid",
                get(
                    |axum::extract::ConnectInfo(PeerCred(p)): axum::extract::ConnectInfo<
                        PeerCred,
                    >| async move {
                        format!("{}", p.map_or(-1, |p| i64::from(p.uid)))
                    },
                ),
            )
            .route("/echo", post(|body: String| async move { body }))
            .route(
                "/stream",
                get(|| async {
                    // Five lines over 5 × 200 ms: well past the request timeout.
                    let lines = stream::unfold(0, |i| async move {
                        if i == 5 {
                            return None;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        Some((
                            Ok::<_, std::convert::Infallible>(format!("line {i}\n")),
                            i + 1,
                        ))
                    });
                    Body::from_stream(lines)
                }),
            )
            .layer(axum::middleware::from_fn(track))
            .into_make_service_with_connect_info::<Conn>();
    let limits = Limits {
        max_head: 1024,
        max_body: 4096,
        request_timeout: TIMEOUT,
        connections_per_uid,
    };
    tokio::spawn(async move { axum::serve(Front::new(listener, limits), app).await });
    Server { _dir: dir, socket }
}

/// Reads one answer: its status and body (content-length or up to the close).
async fn answer(s: &mut UnixStream) -> (u16, String) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut res = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(len)) = res.parse(&buf) {
            let status = res.code.unwrap();
            let length = res
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map(|h| {
                    std::str::from_utf8(h.value)
                        .unwrap()
                        .parse::<usize>()
                        .unwrap()
                });
            if let Some(n) = length {
                while buf.len() < len + n {
                    let k = s.read(&mut chunk).await.unwrap();
                    assert!(k > 0, "closed mid-body");
                    buf.extend_from_slice(&chunk[..k]);
                }
                return (status, String::from_utf8_lossy(&buf[len..len + n]).into());
            }
            s.read_to_end(&mut buf).await.unwrap();
            return (status, String::from_utf8_lossy(&buf[len..]).into());
        }
        let k = s.read(&mut chunk).await.unwrap();
        assert!(
            k > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..k]);
    }
}

async fn exchange(server: &Server, req: &[u8]) -> (u16, String) {
    let mut s = UnixStream::connect(&server.socket).await.unwrap();
    s.write_all(req).await.unwrap();
    answer(&mut s).await
}

#[track_caller]
fn assert_refusal((status, body): &(u16, String), want: u16, code: &str) {
    assert_eq!(*status, want, "{body}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(v["error"]["code"], code, "{body}");
}

#[tokio::test]
async fn requests_are_served_with_the_callers_uid_several_per_connection() {
    let server = start(8).await;
    let mut s = UnixStream::connect(&server.socket).await.unwrap();
    let me = nix::unistd::getuid().as_raw().to_string();
    for _ in 0..3 {
        s.write_all(b"GET /uid HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(answer(&mut s).await, (200, me.clone()));
        s.write_all(b"POST /echo HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello")
            .await
            .unwrap();
        assert_eq!(answer(&mut s).await, (200, "hello".to_string()));
    }
}

#[tokio::test]
async fn bad_requests_get_their_json_4xx() {
    let server = start(8).await;
    let big_head = format!("GET /uid HTTP/1.1\r\nx-pad: {}\r\n\r\n", "a".repeat(2000));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (
            b"\x16\x03\x01 not http\r\n\r\n".to_vec(),
            400,
            "malformed_request",
        ),
        (big_head.into_bytes(), 431, "head_too_large"),
        (
            b"POST /echo HTTP/1.1\r\n\r\n".to_vec(),
            411,
            "length_required",
        ),
        (
            b"POST /echo HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            411,
            "length_required",
        ),
        (
            b"POST /echo HTTP/1.1\r\ncontent-length: 999999\r\n\r\n".to_vec(),
            413,
            "body_too_large",
        ),
    ];
    for (req, status, code) in cases {
        let got = exchange(&server, &req).await;
        assert_refusal(&got, status, code);
    }
}

#[tokio::test]
async fn idle_and_slow_clients_are_cut_at_the_request_timeout() {
    let server = start(8).await;
    let t = Instant::now();
    let mut idle = UnixStream::connect(&server.socket).await.unwrap();
    assert_refusal(&answer(&mut idle).await, 408, "request_timeout");
    assert!(t.elapsed() >= TIMEOUT, "{:?}", t.elapsed());
    // A body that trickles in: the timeout bounds the whole request, not each read.
    let mut slow = UnixStream::connect(&server.socket).await.unwrap();
    slow.write_all(b"POST /echo HTTP/1.1\r\ncontent-length: 20\r\n\r\n")
        .await
        .unwrap();
    let t = Instant::now();
    for _ in 0..3 {
        tokio::time::sleep(TIMEOUT / 4).await;
        slow.write_all(b"a").await.unwrap();
    }
    assert_refusal(&answer(&mut slow).await, 408, "request_timeout");
    assert!(t.elapsed() < TIMEOUT * 3, "{:?}", t.elapsed());
    // Idle after a served request: cut too.
    let mut kept = UnixStream::connect(&server.socket).await.unwrap();
    kept.write_all(b"GET /uid HTTP/1.1\r\n\r\n").await.unwrap();
    assert_eq!(answer(&mut kept).await.0, 200);
    assert_refusal(&answer(&mut kept).await, 408, "request_timeout");
}

#[tokio::test]
async fn a_response_streaming_past_the_timeout_is_not_cut() {
    let server = start(8).await;
    let mut s = UnixStream::connect(&server.socket).await.unwrap();
    s.write_all(b"GET /stream HTTP/1.0\r\n\r\n").await.unwrap();
    let t = Instant::now();
    let (status, body) = answer(&mut s).await;
    assert_eq!(status, 200);
    assert!(t.elapsed() > TIMEOUT * 2, "{:?}", t.elapsed());
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(
        lines,
        ["line 0", "line 1", "line 2", "line 3", "line 4"],
        "{body}"
    );
}

#[tokio::test]
async fn connections_over_the_uid_limit_get_429_and_the_rest_are_served() {
    let server = start(2).await;
    let _a = UnixStream::connect(&server.socket).await.unwrap();
    let _b = UnixStream::connect(&server.socket).await.unwrap();
    let over = exchange(&server, b"GET /uid HTTP/1.1\r\n\r\n").await;
    assert_refusal(&over, 429, "too_many_connections");
    assert!(over.1.contains("2 connections"), "{}", over.1);
    drop(_a);
    // The slot is given back once the server sees the close.
    let t = Instant::now();
    loop {
        let got = exchange(&server, b"GET /uid HTTP/1.1\r\n\r\n").await;
        if got.0 == 200 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(2), "{got:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
