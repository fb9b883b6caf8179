//! The tests' reading of the daemon's raw HTTP/1.1 answers (plain or chunked bodies).

/// Splits a raw HTTP/1.1 response into its status and its body, decoding a chunked
/// body; an error says what is malformed.
pub fn parse_http_response(raw: &[u8]) -> Result<(u16, String), String> {
    let text = std::str::from_utf8(raw).map_err(|e| format!("response is not UTF-8: {e}"))?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or("response has no end of headers")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.trim().eq_ignore_ascii_case("chunked")
        })
    });
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .ok_or("chunked body: no chunk size line")?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|e| format!("chunked body: bad chunk size {size:?}: {e}"))?;
        if size == 0 {
            return Ok((status, out));
        }
        let chunk = after
            .get(..size)
            .ok_or_else(|| format!("chunked body: chunk of {size} bytes cut short"))?;
        out.push_str(chunk);
        rest = after[size..]
            .strip_prefix("\r\n")
            .ok_or("chunked body: no CRLF after a chunk")?;
    }
}

#[cfg(test)]
mod tests {
    use super::parse_http_response;

    #[test]
    fn a_plain_body_is_returned_whole() {
        let raw = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 10\r\n\r\n{\"a\": [1]}";
        assert_eq!(
            parse_http_response(raw),
            Ok((404, "{\"a\": [1]}".to_string()))
        );
    }

    #[test]
    fn a_chunked_body_is_decoded() {
        let raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n: 1\r\n1\r\n}\r\n0\r\n\r\n";
        assert_eq!(
            parse_http_response(raw),
            Ok((200, "{\"a\": 1}".to_string()))
        );
    }

    #[test]
    fn malformed_responses_are_errors() {
        for (raw, needle) in [
            (&b"HTTP/1.1 200 OK\r\n"[..], "no end of headers"),
            (b"garbage\r\n\r\n{}", "bad status line"),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
                "bad chunk size",
            ),
            (
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10\r\nab\r\n",
                "cut short",
            ),
        ] {
            let err = parse_http_response(raw).expect_err(needle);
            assert!(err.contains(needle), "{err}");
        }
    }
}
