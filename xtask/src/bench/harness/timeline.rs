//! From the model server's timed exchanges of one Claude Code session to its tool-call
//! times: a tool call lasts from the end of the answer that asked for it (`tool_use`,
//! streamed whole) to the arrival of the first request that carries its `tool_result`.
//! That is the tool call as Claude Code experiences it, its own dispatch included.

use serde_json::Value;

/// One request and its answer, in ns on the model server's clock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    pub received_ns: u64,
    pub sent_ns: u64,
    pub tool_use_id: Option<String>,
    pub result_ids: Vec<String>,
}

impl Exchange {
    /// An exchange as harnessbench writes it; `None` when a field is missing.
    pub fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            received_ns: v["received_ns"].as_u64()?,
            sent_ns: v["sent_ns"].as_u64()?,
            tool_use_id: v["tool_use_id"].as_str().map(str::to_string),
            result_ids: v["result_ids"]
                .as_array()?
                .iter()
                .filter_map(|id| id.as_str().map(str::to_string))
                .collect(),
        })
    }
}

/// The id the scripted model server gives tool call `i` (tests/src/model_server.rs).
pub fn tool_use_id(i: usize) -> String {
    format!("toolu_{i:04}")
}

/// How long each of the `calls` tool calls took, in ns; `None` for a call that was
/// never asked for or whose result never came. The result's arrival is the first
/// request carrying it (later requests repeat the conversation); the `tool_use` is the
/// last answer asking for it sent before then (a retried request is answered again).
pub fn tool_call_times(exchanges: &[Exchange], calls: usize) -> Vec<Option<u64>> {
    (0..calls)
        .map(|i| {
            let id = tool_use_id(i);
            let arrived = exchanges
                .iter()
                .filter(|e| e.result_ids.contains(&id))
                .map(|e| e.received_ns)
                .min()?;
            let sent = exchanges
                .iter()
                .filter(|e| e.tool_use_id.as_deref() == Some(id.as_str()))
                .map(|e| e.sent_ns)
                .filter(|&sent| sent <= arrived)
                .max()?;
            Some(arrived - sent)
        })
        .collect()
}

/// One measured session, as the statistics see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Session {
    pub arm: String,
    pub round: u64,
    pub warmup: bool,
    /// Why the session failed: claude's exit, a result missing or wrong, an agentcg call
    /// missing (from harnessbench), or a tool call without a timed pair.
    pub error: Option<String>,
    /// claude's start to its exit, ns.
    pub wall_ns: u64,
    /// Per tool call, ns (`None`: no pair).
    pub times_ns: Vec<Option<u64>>,
}

impl Session {
    /// A session of harnessbench's document (`{"round", "warmup", "session": {...}}`).
    pub fn from_json(v: &Value, calls: usize) -> Self {
        let s = &v["session"];
        let exchanges: Vec<Exchange> = s["exchanges"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Exchange::from_json)
            .collect();
        let times_ns = tool_call_times(&exchanges, calls);
        let unpaired = times_ns.iter().position(Option::is_none).map(|i| {
            format!(
                "tool call {i} ({}) has no tool_use/tool_result pair",
                tool_use_id(i)
            )
        });
        Self {
            arm: s["arm"].as_str().unwrap_or("?").to_string(),
            round: v["round"].as_u64().unwrap_or(0),
            warmup: v["warmup"] == true,
            error: s["error"].as_str().map(str::to_string).or(unpaired),
            wall_ns: s["wall_ns"].as_u64().unwrap_or(0),
            times_ns,
        }
    }

    /// A failed session counts whole: every tool call and its wall time fail.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }
}

/// Samples of one arm in ms: the tool calls and the session wall times of the measured
/// sessions, and how many of each are failures (infinite).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ArmSamples {
    pub sessions: usize,
    pub failed_sessions: usize,
    pub call_ms: Vec<f64>,
    pub call_failures: usize,
    pub wall_ms: Vec<f64>,
}

/// Gathers `arm`'s samples from the measured (not warm-up) sessions.
pub fn arm_samples(sessions: &[Session], arm: &str, calls: usize) -> ArmSamples {
    let mut out = ArmSamples::default();
    for s in sessions.iter().filter(|s| s.arm == arm && !s.warmup) {
        out.sessions += 1;
        if s.failed() {
            out.failed_sessions += 1;
            out.call_failures += calls;
            continue;
        }
        out.wall_ms.push(s.wall_ns as f64 / 1e6);
        out.call_ms
            .extend(s.times_ns.iter().flatten().map(|&ns| ns as f64 / 1e6));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ex(received: u64, sent: u64, tool: Option<usize>, results: &[usize]) -> Exchange {
        Exchange {
            received_ns: received,
            sent_ns: sent,
            tool_use_id: tool.map(tool_use_id),
            result_ids: results.iter().map(|&i| tool_use_id(i)).collect(),
        }
    }

    #[test]
    fn a_tool_call_is_from_its_tool_use_sent_to_its_first_result_received() {
        let timeline = [
            ex(0, 10, Some(0), &[]),
            // A side request (a title) in the middle carries nothing.
            ex(20, 25, None, &[]),
            ex(110, 120, Some(1), &[0]),
            ex(300, 305, None, &[0, 1]),
        ];
        assert_eq!(
            tool_call_times(&timeline, 2),
            vec![Some(100), Some(180)],
            "later requests repeating a result do not move its arrival"
        );
    }

    #[test]
    fn a_retried_tool_use_counts_from_its_last_answer_before_the_result() {
        let timeline = [
            ex(0, 10, Some(0), &[]),
            ex(40, 50, Some(0), &[]),
            ex(90, 95, None, &[0]),
            // An answer after the result arrived is not the one claude acted on.
            ex(96, 99, Some(0), &[]),
        ];
        assert_eq!(tool_call_times(&timeline, 1), vec![Some(40)]);
    }

    #[test]
    fn a_call_never_answered_or_never_asked_is_missing() {
        let timeline = [ex(0, 10, Some(0), &[]), ex(50, 60, None, &[])];
        assert_eq!(tool_call_times(&timeline, 2), vec![None, None]);
        // A result before any tool_use was sent has no pair either.
        let early = [ex(0, 5, None, &[0]), ex(10, 20, Some(0), &[])];
        assert_eq!(tool_call_times(&early, 1), vec![None]);
    }

    fn raw(arm: &str, warmup: bool, error: Option<&str>, calls: usize) -> Value {
        let mut exchanges: Vec<Value> = (0..calls)
            .map(|i| {
                let prev: Vec<String> = (0..i).map(tool_use_id).collect();
                json!({"received_ns": i as u64 * 1000, "sent_ns": i as u64 * 1000 + 100,
                       "tool_use_id": tool_use_id(i), "result_ids": prev})
            })
            .collect();
        let all: Vec<String> = (0..calls).map(tool_use_id).collect();
        exchanges.push(
            json!({"received_ns": calls as u64 * 1000, "sent_ns": calls as u64 * 1000 + 1,
                              "tool_use_id": null, "result_ids": all}),
        );
        json!({"round": 0, "warmup": warmup,
               "session": {"arm": arm, "wall_ns": 5_000_000_000u64, "error": error,
                           "exchanges": exchanges}})
    }

    #[test]
    fn sessions_parse_and_pair() {
        let s = Session::from_json(&raw("bare", false, None, 3), 3);
        assert_eq!(s.times_ns, vec![Some(900); 3]);
        assert!(!s.failed());
        // Asked for 4 calls, the session made 3: the missing one fails the session.
        let short = Session::from_json(&raw("bare", false, None, 3), 4);
        assert_eq!(
            short.error.as_deref(),
            Some("tool call 3 (toolu_0003) has no tool_use/tool_result pair")
        );
    }

    #[test]
    fn a_failed_session_is_every_call_failed_and_warm_ups_do_not_count() {
        let sessions = [
            Session::from_json(&raw("agentcg", false, None, 2), 2),
            Session::from_json(&raw("agentcg", false, Some("claude exited with 1"), 2), 2),
            Session::from_json(&raw("agentcg", true, None, 2), 2),
            Session::from_json(&raw("bare", false, None, 2), 2),
        ];
        let a = arm_samples(&sessions, "agentcg", 2);
        assert_eq!((a.sessions, a.failed_sessions), (2, 1));
        assert_eq!((a.call_ms.len(), a.call_failures), (2, 2));
        assert_eq!(a.wall_ms, vec![5000.0]);
        assert_eq!(a.call_ms, vec![0.0009, 0.0009]);
    }
}
