//! A small blocking HTTP/1.1 client for agentcgd's unix socket: requests are written
//! by hand (the API is JSON with a content length), replies are parsed with `httparse`
//! (hyper's own header parser). Every tool call pays for this client twice, so it has
//! no async runtime to build; measured in the VM, that runtime and hyper's client cost
//! about 0.6 ms per command and 1-1.5 ms per request under emulation.
//!
//! One connection is kept for all the requests of a command (`agentcg run` declares
//! and finishes on it). A request the daemon cannot have seen (the write failed on a
//! connection it closed meanwhile) is sent again on a new one.
//!
//! A patient client ([`Client::patient`], what `agentcg run` uses) rides out a daemon
//! restart: it waits for the socket to answer again (bounded, with one line on stderr)
//! and sends a request whose reply was lost once more. Only requests that are safe to
//! repeat are sent this way: GETs, the finish report (idempotent) and declarations
//! carrying a client token (the daemon answers a repeated token with the same call).

use std::cell::{Cell, RefCell};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where the CLI looks for the daemon when neither `--socket` nor `AGENTCG_SOCKET` says.
pub const DEFAULT_SOCKET: &str = "/run/agentcg/agentcg.sock";
/// Largest reply accepted (a long call listing is well below).
const MAX_REPLY: usize = 64 << 20;
/// Headers a reply may carry.
const MAX_HEADERS: usize = 32;
/// How long a tool call waits for a restarting daemon (`--restart-wait`'s default).
pub const RESTART_PATIENCE: Duration = Duration::from_secs(10);
/// Pause between two connection attempts to a restarting daemon.
const RETRY_PAUSE: Duration = Duration::from_millis(50);

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach agentcgd at {socket}: {source} (is agentcgd running? pass --socket or set AGENTCG_SOCKET)"
    )]
    Connect {
        socket: PathBuf,
        source: std::io::Error,
    },
    #[error("{message}")]
    Api {
        status: u16,
        code: String,
        message: String,
    },
    #[error("talking to agentcgd: {0}")]
    Protocol(String),
}

impl ClientError {
    /// The API's machine code, if the daemon answered with an error.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// HTTP methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Patch,
    Delete,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
        }
    }
}

/// A client bound to one socket path.
#[derive(Debug)]
pub struct Client {
    socket: PathBuf,
    conn: RefCell<Option<UnixStream>>,
    /// How long to wait for a restarting daemon; zero: fail at once.
    patience: Duration,
    /// The waiting line was printed.
    said_waiting: Cell<bool>,
}

impl Client {
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
            conn: RefCell::new(None),
            patience: Duration::ZERO,
            said_waiting: Cell::new(false),
        }
    }

    /// Waits up to `patience` for a daemon that is not answering (restarting).
    pub fn patient(mut self, patience: Duration) -> Client {
        self.patience = patience;
        self
    }

    pub fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::Get, path, None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Result<Value, ClientError> {
        self.request(Method::Post, path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<Value, ClientError> {
        self.request(Method::Delete, path, None)
    }

    /// A streamed GET: hands each line of the body to `each` as it arrives, until the
    /// daemon ends the stream or `each` returns false. Asked as HTTP/1.0, so the body
    /// is the rest of the connection (no chunked encoding to undo); an error status is
    /// the usual [`ClientError::Api`].
    pub fn stream_lines(
        &self,
        path: &str,
        mut each: impl FnMut(&str) -> bool,
    ) -> Result<(), ClientError> {
        let proto = ClientError::Protocol;
        let mut stream = self.connect()?;
        let req = format!("GET {path} HTTP/1.0\r\nhost: agentcgd\r\n\r\n");
        stream
            .write_all(req.as_bytes())
            .map_err(|e| proto(e.to_string()))?;
        let mut buf = Vec::with_capacity(8192);
        let mut head = None;
        loop {
            if head.is_none() {
                head = parse_head(&buf).map_err(proto)?;
                if let Some(h) = head {
                    if !(200..300).contains(&h.status) {
                        // An error answer: read it whole, from what is already here on.
                        let mut rest = std::io::Cursor::new(buf).chain(&mut stream);
                        let reply = read_reply(&mut rest)?;
                        return decode(reply.status, &reply.body).map(drop);
                    }
                    buf.drain(..h.len);
                }
            }
            if head.is_some() {
                while let Some(end) = buf.iter().position(|&b| b == b'\n') {
                    let line: Vec<u8> = buf.drain(..=end).collect();
                    if !each(String::from_utf8_lossy(&line[..end]).trim_end()) {
                        return Ok(());
                    }
                }
                if buf.len() > MAX_REPLY {
                    return Err(proto("a streamed line is too long".into()));
                }
            }
            if read_more(&mut stream, &mut buf)? == 0 {
                return match head {
                    Some(_) => Ok(()),
                    None => Err(proto("agentcgd closed the connection mid-reply".into())),
                };
            }
        }
    }

    /// Connects; a patient client waits while the daemon is down (the socket refuses
    /// or is missing), up to its patience.
    fn connect(&self) -> Result<UnixStream, ClientError> {
        let start = Instant::now();
        loop {
            match UnixStream::connect(&self.socket) {
                Ok(s) => return Ok(s),
                Err(e) if is_down(&e) && start.elapsed() < self.patience => {
                    self.say_waiting();
                    std::thread::sleep(RETRY_PAUSE);
                }
                Err(source) => {
                    return Err(ClientError::Connect {
                        socket: self.socket.clone(),
                        source,
                    });
                }
            }
        }
    }

    fn say_waiting(&self) {
        if !self.said_waiting.replace(true) {
            eprintln!(
                "agentcg: agentcgd is not answering at {} (restarting?); waiting up to {} s",
                self.socket.display(),
                self.patience.as_secs()
            );
        }
    }

    /// One request, on the kept connection when it is still open; a JSON error body
    /// becomes [`ClientError::Api`]. A patient client sends a request whose reply was
    /// lost (the daemon died with it) again until its patience runs out; only call this
    /// for requests that are safe to repeat, which all of the CLI's are (see the module
    /// note).
    pub fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let req = encode(method, path, body);
        let deadline = Instant::now() + self.patience;
        loop {
            match self.exchange(&req) {
                // The daemon died with the request (or a connection it accepted while
                // dying was reset): send it again, on a new connection.
                Err(ClientError::Protocol(_)) if Instant::now() < deadline => {
                    self.say_waiting();
                    self.conn.borrow_mut().take();
                    std::thread::sleep(RETRY_PAUSE);
                }
                other => return other,
            }
        }
    }

    fn exchange(&self, req: &[u8]) -> Result<Value, ClientError> {
        let io = |e: std::io::Error| ClientError::Protocol(e.to_string());
        let kept = self.conn.borrow_mut().take();
        let mut stream = match kept {
            // A write to a unix socket whose peer closed fails at once (EPIPE): the
            // daemon never saw the request, so it may go on a new connection.
            Some(mut s) => match s.write_all(req) {
                Ok(()) => s,
                Err(_) => {
                    let mut s = self.connect()?;
                    s.write_all(req).map_err(io)?;
                    s
                }
            },
            None => {
                let mut s = self.connect()?;
                s.write_all(req).map_err(io)?;
                s
            }
        };
        let reply = read_reply(&mut ReadableFirst(&mut stream))?;
        if reply.keep_alive {
            *self.conn.borrow_mut() = Some(stream);
        }
        decode(reply.status, &reply.body)
    }
}

/// Whether a failed connect means no daemon is listening right now.
fn is_down(e: &std::io::Error) -> bool {
    matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::NotFound)
}

/// The request bytes.
fn encode(method: Method, path: &str, body: Option<&Value>) -> Vec<u8> {
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut req = format!(
        "{} {path} HTTP/1.1\r\nhost: agentcgd\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        method.as_str(),
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

/// A reply as read off the socket.
#[derive(Debug, PartialEq, Eq)]
struct Reply {
    status: u16,
    body: Vec<u8>,
    /// The daemon keeps the connection open (no `connection: close`, a known length).
    keep_alive: bool,
}

/// The head of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Head {
    status: u16,
    /// Body length; `None`: until the connection closes.
    length: Option<usize>,
    keep_alive: bool,
    /// Bytes of the head itself.
    len: usize,
}

/// The head of a reply, once `buf` holds all of it.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let head_len = match resp
        .parse(buf)
        .map_err(|e| format!("bad reply head: {e}"))?
    {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => return Ok(None),
    };
    let status = resp.code.ok_or("reply without a status")?;
    let (mut length, mut close) = (None, false);
    for h in resp.headers.iter() {
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(
                value
                    .parse::<usize>()
                    .map_err(|_| format!("bad content-length `{value}`"))?,
            );
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(format!("unsupported transfer-encoding `{value}`"));
        } else if h.name.eq_ignore_ascii_case("connection") {
            close = value.eq_ignore_ascii_case("close");
        }
    }
    if length.is_some_and(|n| n > MAX_REPLY) {
        return Err(format!("reply of {length:?} bytes is too large"));
    }
    Ok(Some(Head {
        status,
        length,
        keep_alive: length.is_some() && !close,
        len: head_len,
    }))
}

/// Reads a socket after poll(2) says it is readable. A blocking read(2) on a unix socket
/// also wakes when the daemon drains our request (the kernel's write-space wake-up has
/// no key for a plain wait); poll's wait filters by event, so we sleep until the reply.
/// Measured in the VM: the early wake-up queued the CLI behind the daemon's work on the
/// daemon's CPU.
struct ReadableFirst<'a>(&'a mut UnixStream);

impl Read for ReadableFirst<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut pfd = libc::pollfd {
            fd: std::os::fd::AsRawFd::as_raw_fd(&*self.0),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd that lives across the call.
        if unsafe { libc::poll(&mut pfd, 1, -1) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.0.read(buf)
    }
}

/// Reads one reply: its head, then `content-length` bytes (or up to EOF).
fn read_reply(stream: &mut impl Read) -> Result<Reply, ClientError> {
    let proto = ClientError::Protocol;
    let mut buf = Vec::with_capacity(8192);
    let mut head = None;
    loop {
        if head.is_none() {
            head = parse_head(&buf).map_err(proto)?;
        }
        if let Some(Head {
            length: Some(len),
            len: head_len,
            ..
        }) = head
            && buf.len() >= head_len + len
        {
            break;
        }
        if read_more(stream, &mut buf)? == 0 {
            match head {
                Some(Head { length: None, .. }) => break,
                _ => return Err(proto("agentcgd closed the connection mid-reply".into())),
            }
        }
        if buf.len() > MAX_REPLY {
            return Err(proto("reply too large".into()));
        }
    }
    let head = head.ok_or_else(|| proto("empty reply".into()))?;
    let end = head.length.map_or(buf.len(), |l| head.len + l);
    Ok(Reply {
        status: head.status,
        body: buf[head.len..end].to_vec(),
        keep_alive: head.keep_alive,
    })
}

/// Reads what the stream has (one read; 0 at its end) onto `buf`, again after EINTR.
fn read_more(stream: &mut impl Read, buf: &mut Vec<u8>) -> Result<usize, ClientError> {
    let mut chunk = [0u8; 8192];
    loop {
        match stream.read(&mut chunk) {
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                return Ok(n);
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        }
    }
}

/// The JSON body of a reply; an error status becomes [`ClientError::Api`].
fn decode(status: u16, body: &[u8]) -> Result<Value, ClientError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ClientError::Protocol(format!("bad reply ({status}): {e}")))?;
    if (200..300).contains(&status) {
        Ok(value)
    } else {
        Err(ClientError::Api {
            status,
            code: value["error"]["code"]
                .as_str()
                .unwrap_or("unknown")
                .to_string(),
            message: value["error"]["message"]
                .as_str()
                .unwrap_or("no message")
                .to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(bytes: &[u8]) -> Result<Reply, ClientError> {
        // Fed one byte at a time: a reply split anywhere must still parse.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(1).min(out.len());
                out[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        read_reply(&mut Trickle(bytes))
    }

    #[test]
    fn requests_carry_method_path_and_length() {
        let req = encode(
            Method::Post,
            "/v1/calls",
            Some(&serde_json::json!({"a": 1})),
        );
        let text = String::from_utf8(req).unwrap();
        assert!(text.starts_with("POST /v1/calls HTTP/1.1\r\n"), "{text}");
        assert!(text.contains("content-length: 7\r\n"), "{text}");
        assert!(text.ends_with("\r\n\r\n{\"a\":1}"), "{text}");
    }

    #[test]
    fn replies_with_a_length_keep_the_connection() {
        let r = reply(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 8\r\n\r\n{\"x\":1}\nEXTRA")
            .unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.body, b"{\"x\":1}\n");
        assert!(r.keep_alive);
        let closed =
            reply(b"HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
                .unwrap();
        assert!(!closed.keep_alive);
        let to_eof = reply(b"HTTP/1.1 200 OK\r\n\r\n[1,2]").unwrap();
        assert_eq!(
            (to_eof.body.as_slice(), to_eof.keep_alive),
            (&b"[1,2]"[..], false)
        );
    }

    #[test]
    fn broken_replies_are_errors() {
        for bad in [
            &b""[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
            b"NOT HTTP\r\n\r\n",
        ] {
            assert!(reply(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn error_bodies_become_api_errors() {
        let err = decode(
            400,
            br#"{"error":{"code":"bad_intent","message":"mem: unknown unit"}}"#,
        )
        .unwrap_err();
        assert_eq!(err.code(), Some("bad_intent"));
        assert_eq!(err.to_string(), "mem: unknown unit");
        assert_eq!(decode(200, b"{\"ok\":true}").unwrap()["ok"], true);
        assert!(matches!(
            decode(200, b"<html>"),
            Err(ClientError::Protocol(_))
        ));
    }

    /// Serves one canned answer on a temporary socket; the client for it.
    fn serve(answer: &'static [u8]) -> (tempfile::TempDir, Client, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut req = [0u8; 1024];
            let _ = conn.read(&mut req).unwrap();
            for part in answer.chunks(7) {
                conn.write_all(part).unwrap();
            }
        });
        (dir, Client::new(&path), server)
    }

    #[test]
    fn a_stream_hands_out_lines_and_an_error_answer_is_an_api_error() {
        let (_d, client, server) = serve(b"HTTP/1.0 200 OK\r\n\r\n{\"seq\":1}\n{\"seq\":2}\n");
        let mut lines = Vec::new();
        client
            .stream_lines("/v1/events", |l| {
                lines.push(l.to_string());
                true
            })
            .unwrap();
        server.join().unwrap();
        assert_eq!(lines, [r#"{"seq":1}"#, r#"{"seq":2}"#]);
        let body = br#"{"error":{"code":"no_such_session","message":"no session named `x`"}}"#;
        let answer: &'static [u8] = Box::leak(
            [
                b"HTTP/1.1 404 Not Found\r\ncontent-length: ".as_slice(),
                body.len().to_string().as_bytes(),
                b"\r\n\r\n",
                body,
            ]
            .concat()
            .into_boxed_slice(),
        );
        let (_d, client, server) = serve(answer);
        let err = client.stream_lines("/v1/events", |_| true).unwrap_err();
        server.join().unwrap();
        assert!(
            matches!(err, ClientError::Api { status: 404, ref code, .. } if code == "no_such_session"),
            "{err}"
        );
    }
}
