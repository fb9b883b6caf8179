//! What agentcgd accepts as a request before hyper sees it: a head of at most
//! `max_head` bytes that parses as HTTP/1.x, and a body announced by `content-length`
//! of at most `max_body` bytes. Anything else is a [`Refusal`]: a 4xx answer with the
//! API's JSON error body, after which the connection is closed.

/// The limits on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Request line and headers, bytes.
    pub max_head: usize,
    /// Body, bytes.
    pub max_body: u64,
    /// Time to send a whole request (head and body), and the longest a connection may
    /// sit idle between requests; never applied while a response is being sent.
    pub request_timeout: std::time::Duration,
    /// Open connections per uid.
    pub connections_per_uid: usize,
}

impl Limits {
    /// The limits agentcgd's flags set.
    pub fn from_args(args: &agentcg_daemon::args::Args) -> Self {
        Limits {
            max_head: args.max_head,
            max_body: args.max_body,
            request_timeout: std::time::Duration::from_secs(args.request_timeout),
            connections_per_uid: args.connections_per_uid,
        }
    }
}

/// A complete, acceptable request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head (request line, headers, blank line).
    pub len: usize,
    /// Bytes of the body that follows.
    pub body: u64,
}

/// Why a request is refused, answered as `{"error": {code, message}}`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("malformed HTTP request: {0}")]
    Malformed(String),
    #[error("request head (request line and headers) over {0} bytes")]
    HeadTooLarge(usize),
    #[error("{0}: send the body with a content-length")]
    LengthRequired(&'static str),
    #[error("request body of {size} bytes is over the limit of {max} bytes")]
    BodyTooLarge { size: u64, max: u64 },
    #[error("no complete request within {0:?}: connection closed")]
    Timeout(std::time::Duration),
    #[error(
        "uid {uid} has {max} connections open to agentcgd already: close one (or wait) and retry"
    )]
    TooManyConnections { uid: u32, max: usize },
}

impl Refusal {
    /// HTTP status, reason phrase and error code.
    fn status(&self) -> (u16, &'static str, &'static str) {
        match self {
            Refusal::Malformed(_) => (400, "Bad Request", "malformed_request"),
            Refusal::HeadTooLarge(_) => (431, "Request Header Fields Too Large", "head_too_large"),
            Refusal::LengthRequired(_) => (411, "Length Required", "length_required"),
            Refusal::BodyTooLarge { .. } => (413, "Content Too Large", "body_too_large"),
            Refusal::Timeout(_) => (408, "Request Timeout", "request_timeout"),
            Refusal::TooManyConnections { .. } => {
                (429, "Too Many Requests", "too_many_connections")
            }
        }
    }

    /// The whole answer, ready to write; the connection closes after it.
    pub fn response(&self) -> Vec<u8> {
        let (status, reason, code) = self.status();
        let body =
            serde_json::json!({"error": {"code": code, "message": self.to_string()}}).to_string();
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }
}

/// Most headers a request may carry.
const MAX_HEADERS: usize = 64;

/// Looks at the bytes received so far of a request: `Ok(None)` while its head is
/// incomplete (and within the limit), the head once it is complete and acceptable.
pub fn frame(buf: &[u8], limits: &Limits) -> Result<Option<Head>, Refusal> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head => {
            return Err(Refusal::HeadTooLarge(limits.max_head));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Refusal::Malformed(format!(
                "more than {MAX_HEADERS} headers"
            )));
        }
        Err(e) => return Err(Refusal::Malformed(e.to_string())),
    };
    if len > limits.max_head {
        return Err(Refusal::HeadTooLarge(limits.max_head));
    }
    let mut length: Option<u64> = None;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(Refusal::LengthRequired("transfer-encoding is not accepted"));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| {
                    Refusal::Malformed(format!(
                        "content-length `{}` is not a number",
                        String::from_utf8_lossy(h.value)
                            .chars()
                            .take(40)
                            .collect::<String>()
                    ))
                })?;
            if length.is_some_and(|l| l != n) {
                return Err(Refusal::Malformed("two different content-lengths".into()));
            }
            length = Some(n);
        }
    }
    let needs_body = matches!(req.method, Some("POST" | "PUT" | "PATCH"));
    let body = match length {
        None if needs_body => return Err(Refusal::LengthRequired("no content-length")),
        None => 0,
        Some(n) if n > limits.max_body => {
            return Err(Refusal::BodyTooLarge {
                size: n,
                max: limits.max_body,
            });
        }
        Some(n) => n,
    };
    Ok(Some(Head { len, body }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_head: 128,
        max_body: 1000,
        request_timeout: std::time::Duration::from_secs(1),
        connections_per_uid: 4,
    };

    #[test]
    fn complete_heads_give_their_length_and_body() {
        let get = b"GET /v1/status HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(
            frame(get, &LIMITS),
            Ok(Some(Head {
                len: get.len(),
                body: 0
            }))
        );
        let head = b"POST /v1/calls HTTP/1.1\r\ncontent-length: 12\r\n\r\n";
        let post = [head.as_slice(), b"{\"a\""].concat();
        assert_eq!(
            frame(&post, &LIMITS),
            Ok(Some(Head {
                len: head.len(),
                body: 12
            }))
        );
        assert_eq!(frame(b"GET /v1/status HTTP/1.1\r\nho", &LIMITS), Ok(None));
        assert_eq!(frame(b"", &LIMITS), Ok(None));
    }

    #[test]
    fn each_refusal_has_its_status() {
        let long = format!("GET /{} HTTP/1.1\r\n", "a".repeat(200));
        let cases: Vec<(Vec<u8>, u16)> = vec![
            (b"\x00\x01garbage\r\n\r\n".to_vec(), 400),
            (b"GET / HTTP/1.1\r\nbad header\r\n\r\n".to_vec(), 400),
            (long.into_bytes(), 431),
            (b"POST /v1/calls HTTP/1.1\r\n\r\n".to_vec(), 411),
            (
                b"POST /v1/calls HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n".to_vec(),
                411,
            ),
            (
                b"POST /v1/calls HTTP/1.1\r\ncontent-length: 1001\r\n\r\n".to_vec(),
                413,
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n".to_vec(),
                400,
            ),
            (
                b"POST / HTTP/1.1\r\ncontent-length: -1\r\n\r\n".to_vec(),
                400,
            ),
        ];
        for (req, status) in cases {
            let r = frame(&req, &LIMITS).expect_err(&String::from_utf8_lossy(&req));
            assert_eq!(r.status().0, status, "{r}");
        }
    }

    #[test]
    fn a_refusal_is_a_closing_json_answer() {
        let text =
            String::from_utf8(Refusal::Timeout(std::time::Duration::from_secs(10)).response())
                .unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(
            head.starts_with("HTTP/1.1 408 Request Timeout\r\n"),
            "{head}"
        );
        assert!(head.contains("connection: close"), "{head}");
        assert!(
            head.contains(&format!("content-length: {}", body.len())),
            "{head}"
        );
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["error"]["code"], "request_timeout");
        assert!(v["error"]["message"].as_str().unwrap().contains("10s"));
    }
}
