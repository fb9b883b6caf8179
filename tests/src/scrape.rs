//! Scraping agentcgd's Prometheus endpoint over loopback TCP, for the tests that count
//! calls in `agentcg_calls_total` (metrics, events): one GET, and the samples of a text
//! exposition.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::parse_http_response;

/// `GET path` on `addr` with an `Accept` header; the status and body.
pub fn get(addr: &str, path: &str, accept: &str) -> Result<(u16, String), String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\naccept: {accept}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).map_err(|e| e.to_string())?;
    parse_http_response(&raw)
}

/// A scrape of the `/metrics` endpoint at `addr` in the given format; panics unless 200.
pub fn scrape(addr: &str, accept: &str) -> String {
    let (status, body) = get(addr, "/metrics", accept).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(status, 200, "{body}");
    body
}

/// The samples of a text exposition, `name{labels}` to value (exemplars dropped).
pub fn samples(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let l = l.split(" # ").next()?;
            let (series, value) = l.rsplit_once(' ')?;
            Some((series.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// The sum of every series of metric `name` whose labels contain `label` (`""`: all).
pub fn sum(samples: &BTreeMap<String, f64>, name: &str, label: &str) -> f64 {
    let prefix = format!("{name}{{");
    samples
        .iter()
        .filter(|(k, _)| k.starts_with(&prefix) && k.contains(label))
        .map(|(_, v)| v)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_and_sums_skip_comments_exemplars_and_other_metrics() {
        let text = "# TYPE agentcg_calls_total counter\n\
            agentcg_calls_total{class=\"test\",outcome=\"ok\"} 3 # {call_id=\"7\"} 1.0\n\
            agentcg_calls_total{class=\"build\",outcome=\"failed\"} 2\n\
            agentcg_calls_totally{outcome=\"ok\"} 100\n";
        let s = samples(text);
        assert_eq!(s.len(), 3);
        assert_eq!(sum(&s, "agentcg_calls_total", ""), 5.0);
        assert_eq!(sum(&s, "agentcg_calls_total", "outcome=\"ok\""), 3.0);
    }
}
