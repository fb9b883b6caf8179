//! A scripted model server for driving real agent harnesses offline: it answers the
//! Anthropic Messages API (`POST /v1/messages`, streamed server-sent events or plain
//! JSON), the OpenAI-compatible chat API (`POST /v1/chat/completions`, streamed or
//! not) and the OpenAI Responses API (`POST /v1/responses`, Codex CLI's) from a script
//! of turns, and records every request body it received, so a test can read the tool
//! results the harness sent back. Loopback only.
//!
//! The server keeps no conversation state: the turn answered is the number of assistant
//! messages (Responses: assistant messages and function calls) already in the request's
//! conversation, so the harness's retries and side requests cannot shift the script;
//! for a text-only agent, the number of the script's own answers among them, since such
//! a harness may add assistant messages of its own (Aider's few-shot examples and its
//! "Ok." after command output). A request that offers no tools (a title or summary
//! request) gets a short text answer. Past the script's end the model says "done".
//!
//! Each exchange is timed on the server's clock ([`Exchange`]): when the request was
//! read whole and when the answer was written, with the tool call the answer asked for
//! and the tool results the request carried, so a benchmark can tell how long the
//! harness took from a `tool_use` to its `tool_result` (`cargo xtask bench harness`).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use self::answers::{
    anthropic_message, anthropic_sse, openai_completion, openai_sse, responses_object,
    responses_sse, text_answer,
};

mod answers;

/// One model turn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Turn {
    /// Run this shell command with the harness's shell tool.
    Bash(String),
    /// Answer with this text and end the turn.
    Text(String),
}

impl Turn {
    /// A script from JSON: `[{"bash": "ls"}, {"text": "done"}]`.
    pub fn script_from_json(v: &Value) -> Result<Vec<Turn>, String> {
        let turns = v.as_array().ok_or("a script is a JSON array of turns")?;
        turns
            .iter()
            .enumerate()
            .map(|(i, t)| match (t["bash"].as_str(), t["text"].as_str()) {
                (Some(c), None) => Ok(Turn::Bash(c.to_string())),
                (None, Some(s)) => Ok(Turn::Text(s.to_string())),
                _ => Err(format!(
                    "turn {i}: expected {{\"bash\": CMD}} or {{\"text\": TEXT}}, got {t}"
                )),
            })
            .collect()
    }
}

/// One request and its answer, timed from the server's start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// When the request had been read whole.
    pub received: Duration,
    /// When the answer had been written and flushed.
    pub sent: Duration,
    /// The id of the `tool_use` the answer asked for, if it asked for one.
    pub tool_use_id: Option<String>,
    /// The `tool_use_id` of every tool result the request carried, in order.
    pub result_ids: Vec<String>,
}

/// A running server; it lives as long as the process (its thread is detached).
#[derive(Debug)]
pub struct ModelServer {
    pub addr: SocketAddr,
    requests: Arc<Mutex<Vec<Value>>>,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
}

impl ModelServer {
    /// Serves `script` on 127.0.0.1 (a free port), appending each request body as one
    /// JSON line to `record` when given.
    pub fn start(script: Vec<Turn>, record: Option<PathBuf>) -> std::io::Result<ModelServer> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let requests = Arc::new(Mutex::new(Vec::new()));
        let exchanges = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            script: Arc::new(script),
            requests: requests.clone(),
            exchanges: exchanges.clone(),
            record,
            started: Instant::now(),
        };
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(conn, &shared));
            }
        });
        Ok(ModelServer {
            addr,
            requests,
            exchanges,
        })
    }

    /// `http://127.0.0.1:PORT`, for `ANTHROPIC_BASE_URL` (OpenAI clients add `/v1`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The request bodies received so far.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// The exchanges answered so far, in the order their answers were written.
    pub fn exchanges(&self) -> Vec<Exchange> {
        self.exchanges.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// The text of every tool result the harness sent back, in order (deduplicated:
    /// each request repeats the conversation so far).
    pub fn tool_results(&self) -> Vec<String> {
        let mut seen = Vec::new();
        for req in self.requests() {
            for r in tool_results(&req) {
                if !seen.contains(&r) {
                    seen.push(r);
                }
            }
        }
        seen
    }
}

#[derive(Debug, Clone)]
struct Shared {
    script: Arc<Vec<Turn>>,
    requests: Arc<Mutex<Vec<Value>>>,
    exchanges: Arc<Mutex<Vec<Exchange>>>,
    record: Option<PathBuf>,
    started: Instant,
}

/// The tool results of one request, Anthropic (`tool_result` blocks), OpenAI chat
/// (`tool` messages, or the user observations of a text-only agent after its first
/// turn) or Responses (`function_call_output` input items).
pub fn tool_results(req: &Value) -> Vec<String> {
    let mut out: Vec<String> = responses_input(req)
        .iter()
        .filter(|i| i["type"] == "function_call_output")
        .map(|i| content_text(&i["output"]))
        .collect();
    let messages = req["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    let mut after_assistant = false;
    for m in messages {
        match (m["role"].as_str(), &m["content"]) {
            (Some("user"), Value::Array(blocks)) => {
                for b in blocks.iter().filter(|b| b["type"] == "tool_result") {
                    out.push(content_text(&b["content"]));
                }
            }
            (Some("tool"), c) => out.push(content_text(c)),
            (Some("user"), Value::String(s)) if after_assistant => out.push(s.clone()),
            _ => {}
        }
        after_assistant = m["role"] == "assistant";
    }
    out
}

/// The `tool_use_id` of every Anthropic tool result in a request, in order.
pub fn tool_result_ids(req: &Value) -> Vec<String> {
    let messages = req["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    messages
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .filter(|b| b["type"] == "tool_result")
        .filter_map(|b| b["tool_use_id"].as_str().map(str::to_string))
        .collect()
}

/// Text of a content value: a string, or the text blocks of an array.
fn content_text(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter_map(|b| b["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The input items of a Responses API request (none for the other APIs).
fn responses_input(req: &Value) -> &[Value] {
    req["input"].as_array().map(Vec::as_slice).unwrap_or(&[])
}

/// Which turn a request asks for: the number of assistant messages in it (for the
/// Responses API, of assistant messages and function calls among its input items).
pub fn turn_index(req: &Value) -> usize {
    if req["input"].is_array() {
        return responses_input(req)
            .iter()
            .filter(|i| i["type"] == "function_call" || i["role"] == "assistant")
            .count();
    }
    req["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count())
}

/// Which turn a text-only agent's request asks for: the number of its assistant
/// messages that are answers of `script`.
fn text_turn_index(script: &[Turn], req: &Value) -> usize {
    let answers: Vec<String> = script.iter().map(text_answer).collect();
    let messages = req["messages"].as_array().map(Vec::as_slice).unwrap_or(&[]);
    messages
        .iter()
        .filter(|m| m["role"] == "assistant")
        .filter_map(|m| m["content"].as_str())
        .filter(|c| answers.iter().any(|a| a.trim() == c.trim()))
        .count()
}

/// The turn to answer `req` with.
fn pick(script: &[Turn], req: &Value) -> Turn {
    let offers_tools = req["tools"].as_array().is_some_and(|t| !t.is_empty());
    let text_agent = req["tools"].is_null() && is_openai(req);
    let index = if text_agent {
        text_turn_index(script, req)
    } else {
        turn_index(req)
    };
    match script.get(index) {
        Some(Turn::Bash(c)) if offers_tools || text_agent => Turn::Bash(c.clone()),
        Some(Turn::Text(t)) => Turn::Text(t.clone()),
        _ => Turn::Text("done".into()),
    }
}

/// An OpenAI chat request (its system prompt is a message, and it has no `system` field).
fn is_openai(req: &Value) -> bool {
    req["messages"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["role"] == "system"))
}

/// The name of a tool, Anthropic and Responses (`name`) or OpenAI chat (`function.name`).
fn tool_name(t: &Value) -> Option<&str> {
    t["name"].as_str().or(t["function"]["name"].as_str())
}

/// The properties of a tool's argument schema (Anthropic, Responses or OpenAI chat).
fn tool_properties(t: &Value) -> Option<&Value> {
    [
        &t["input_schema"],
        &t["parameters"],
        &t["function"]["parameters"],
    ]
    .into_iter()
    .map(|s| &s["properties"])
    .find(|p| p.is_object())
}

/// The argument a shell tool takes its command in: `cmd` when its schema has that and
/// no `command` (Codex's `exec_command`), else `command`.
fn command_arg(t: &Value) -> &'static str {
    match tool_properties(t) {
        Some(p) if p.get("command").is_none() && p.get("cmd").is_some() => "cmd",
        _ => "command",
    }
}

/// The shell tool a request offers and its command argument: `Bash` (Claude Code),
/// else `exec_command` (Codex), else the first tool whose name mentions bash or shell,
/// else the first named tool.
fn shell_tool(req: &Value) -> (String, String) {
    let (name, arg, _) = shell_tool_schema(req);
    (name, arg)
}

/// [`shell_tool`] and whether the tool takes a `yield_time_ms` (Codex's exec_command:
/// how long it waits for the command before answering that it still runs).
fn shell_tool_schema(req: &Value) -> (String, String, bool) {
    let tools: Vec<&Value> = req["tools"]
        .as_array()
        .map(|t| t.iter().filter(|t| tool_name(t).is_some()).collect())
        .unwrap_or_default();
    let named =
        |f: &dyn Fn(&str) -> bool| tools.iter().copied().find(|t| tool_name(t).is_some_and(f));
    let tool = named(&|n| n == "Bash")
        .or_else(|| named(&|n| n == "exec_command"))
        .or_else(|| {
            named(&|n| {
                let n = n.to_lowercase();
                n.contains("bash") || n.contains("shell")
            })
        })
        .or_else(|| tools.first().copied());
    match tool {
        Some(t) => (
            tool_name(t).unwrap_or("bash").to_string(),
            command_arg(t).into(),
            tool_properties(t).is_some_and(|p| p.get("yield_time_ms").is_some()),
        ),
        None => ("bash".into(), "command".into(), false),
    }
}

fn serve(conn: TcpStream, shared: &Shared) {
    let mut reader = BufReader::new(match conn.try_clone() {
        Ok(c) => c,
        Err(_) => return,
    });
    let mut out = conn;
    // One request per connection is enough (we answer `connection: close`).
    let Some((path, body)) = read_request(&mut reader) else {
        return;
    };
    let received = shared.started.elapsed();
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Ok(mut r) = shared.requests.lock() {
        r.push(req.clone());
    }
    if let Some(p) = &shared.record
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    {
        let _ = writeln!(f, "{req}");
    }
    let turn = pick(&shared.script, &req);
    let stream = req["stream"].as_bool() == Some(true);
    let route = path.split('?').next().unwrap_or_default();
    let (ctype, text) = match (route, stream) {
        (p, true) if p.ends_with("/messages") => ("text/event-stream", anthropic_sse(&req, &turn)),
        (p, false) if p.ends_with("/messages") => (
            "application/json",
            anthropic_message(&req, &turn).to_string(),
        ),
        (p, true) if p.ends_with("/chat/completions") => {
            ("text/event-stream", openai_sse(&req, &turn))
        }
        (p, false) if p.ends_with("/chat/completions") => (
            "application/json",
            openai_completion(&req, &turn).to_string(),
        ),
        (p, true) if p.ends_with("/responses") => ("text/event-stream", responses_sse(&req, &turn)),
        (p, false) if p.ends_with("/responses") => (
            "application/json",
            responses_object(&req, &turn).to_string(),
        ),
        _ => {
            let _ = write!(
                out,
                "HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{{}}"
            );
            return;
        }
    };
    let _ = write!(
        out,
        "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = out.flush();
    let exchange = Exchange {
        received,
        sent: shared.started.elapsed(),
        tool_use_id: tool_use_id(&req, &turn).filter(|_| route.ends_with("/messages")),
        result_ids: tool_result_ids(&req),
    };
    if let Ok(mut e) = shared.exchanges.lock() {
        e.push(exchange);
    }
}

/// The id of the tool call an Anthropic answer to `req` asks for (see `anthropic_blocks`).
fn tool_use_id(req: &Value, turn: &Turn) -> Option<String> {
    match turn {
        Turn::Bash(_) => Some(format!("toolu_{:04}", turn_index(req))),
        Turn::Text(_) => None,
    }
}

/// Reads one request: its path and body (by `content-length`).
fn read_request(r: &mut impl BufRead) -> Option<(String, Vec<u8>)> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let path = line.split_whitespace().nth(1)?.to_string();
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).ok()? == 0 {
            return None;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).ok()?;
    Some((path, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Read;

    fn post(server: &ModelServer, path: &str, body: &Value) -> String {
        let mut s = TcpStream::connect(server.addr).expect("connect");
        let b = body.to_string();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{b}",
            b.len()
        )
        .expect("write");
        let mut reply = String::new();
        s.read_to_string(&mut reply).expect("read");
        reply
    }

    fn script() -> Vec<Turn> {
        Turn::script_from_json(&json!([{"bash": "echo hi"}, {"text": "all done"}])).expect("script")
    }

    #[test]
    fn anthropic_stream_follows_the_script_by_conversation_length() {
        let server = ModelServer::start(script(), None).expect("start");
        let tools = json!([{"name": "Read"}, {"name": "Bash"}]);
        let first = post(
            &server,
            "/v1/messages?beta=true",
            &json!({"stream": true, "tools": tools, "messages": [{"role": "user", "content": "go"}]}),
        );
        assert!(first.starts_with("HTTP/1.1 200"), "{first}");
        assert!(first.contains("event: content_block_start"), "{first}");
        assert!(first.contains(r#""name":"Bash""#), "{first}");
        assert!(
            first.contains(r#"partial_json":"{\"command\":\"echo hi\"}"#),
            "{first}"
        );
        assert!(first.contains(r#""stop_reason":"tool_use""#), "{first}");
        let second = json!({"stream": true, "tools": tools, "messages": [
            {"role": "user", "content": "go"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_0000"}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_0000",
                "content": [{"type": "text", "text": "hi"}]}]}]});
        let reply = post(&server, "/v1/messages", &second);
        assert!(reply.contains(r#""text":"all done""#), "{reply}");
        assert!(reply.contains(r#""stop_reason":"end_turn""#), "{reply}");
        assert_eq!(server.tool_results(), vec!["hi".to_string()]);
        assert_eq!(server.requests().len(), 2);
        let ex = server.exchanges();
        assert_eq!(ex.len(), 2, "{ex:?}");
        assert_eq!(ex[0].tool_use_id.as_deref(), Some("toolu_0000"));
        assert!(ex[0].result_ids.is_empty(), "{ex:?}");
        assert_eq!(
            (ex[1].tool_use_id.as_deref(), ex[1].result_ids.as_slice()),
            (None, ["toolu_0000".to_string()].as_slice())
        );
        assert!(
            ex[0].received <= ex[0].sent && ex[0].sent <= ex[1].received,
            "timed in order: {ex:?}"
        );
    }

    #[test]
    fn a_request_without_tools_gets_text_not_a_tool_call() {
        let server = ModelServer::start(script(), None).expect("start");
        let reply = post(
            &server,
            "/v1/messages",
            &json!({"messages": [{"role": "user", "content": "title?"}]}),
        );
        assert!(reply.contains(r#""type":"text""#), "{reply}");
        assert!(!reply.contains("tool_use\""), "{reply}");
    }

    #[test]
    fn openai_tool_call_and_text_agent_forms_and_a_record_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let record = dir.path().join("requests.jsonl");
        let server = ModelServer::start(script(), Some(record.clone())).expect("start");
        let with_tools = post(
            &server,
            "/v1/chat/completions",
            &json!({"tools": [{"type": "function", "function": {"name": "bash"}}],
                "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "go"}]}),
        );
        assert!(
            with_tools.contains(r#""finish_reason":"tool_calls""#),
            "{with_tools}"
        );
        assert!(
            with_tools.contains(r#"\"command\":\"echo hi\""#),
            "{with_tools}"
        );
        let text_agent = post(
            &server,
            "/v1/chat/completions",
            &json!({"stream": true, "messages": [{"role": "system", "content": "s"},
                {"role": "user", "content": "go"}]}),
        );
        assert!(
            text_agent.contains(r#"```bash\necho hi\n```"#),
            "{text_agent}"
        );
        assert!(text_agent.ends_with("data: [DONE]\n\n"), "{text_agent}");
        // The harness's own assistant messages (Aider's examples, its "Ok." after
        // command output) do not count as turns; the script's answers do.
        let answer = "THOUGHT: running it.\n\n```bash\necho hi\n```";
        let own = json!({"messages": [{"role": "system", "content": "s"},
            {"role": "user", "content": "example"}, {"role": "assistant", "content": "Ok."},
            {"role": "user", "content": "go"}]});
        let first = post(&server, "/v1/chat/completions", &own);
        assert!(first.contains(r#"```bash\necho hi\n```"#), "{first}");
        let observed = json!({"messages": [{"role": "system", "content": "s"},
            {"role": "user", "content": "go"}, {"role": "assistant", "content": answer},
            {"role": "user", "content": "<returncode>0</returncode> hi"},
            {"role": "assistant", "content": "Ok."}]});
        let last = post(&server, "/v1/chat/completions", &observed);
        assert!(last.contains("all done"), "{last}");
        assert!(
            server.exchanges().iter().all(|e| e.tool_use_id.is_none()),
            "OpenAI answers carry no Anthropic tool_use id"
        );
        let lines = std::fs::read_to_string(&record).expect("record");
        assert_eq!(lines.lines().count(), 4);
        assert_eq!(
            server.tool_results(),
            vec![
                "go".to_string(),
                "<returncode>0</returncode> hi".to_string()
            ]
        );
    }

    #[test]
    fn responses_call_codex_exec_command_and_read_its_output() {
        let server = ModelServer::start(script(), None).expect("start");
        let tools = json!([
            {"type": "function", "name": "exec_command",
                "parameters": {"properties": {"cmd": {}, "yield_time_ms": {}}}},
            {"type": "function", "name": "write_stdin", "parameters": {"properties": {}}},
            {"type": "web_search"}]);
        let user = json!({"type": "message", "role": "user",
            "content": [{"type": "input_text", "text": "go"}]});
        let first = post(
            &server,
            "/v1/responses",
            &json!({"stream": true, "tools": tools, "input": [user]}),
        );
        assert!(first.contains("event: response.created\n"), "{first}");
        assert!(
            first.contains(r#""type":"response.output_item.done""#),
            "{first}"
        );
        assert!(first.contains(r#""call_id":"call_0""#), "{first}");
        assert!(first.contains(r#""name":"exec_command""#), "{first}");
        assert!(
            first.contains(r#""arguments":"{\"cmd\":\"echo hi\",\"yield_time_ms\":30000}""#),
            "{first}"
        );
        assert!(first.contains("event: response.completed\n"), "{first}");
        let call = json!({"type": "function_call", "call_id": "call_0", "name": "exec_command",
            "arguments": "{}"});
        let output = json!({"type": "function_call_output", "call_id": "call_0",
            "output": "Process exited with code 0\nOutput:\nhi\n"});
        let second = post(
            &server,
            "/v1/responses",
            &json!({"tools": tools, "input": [user, call, output]}),
        );
        let body: Value =
            serde_json::from_str(second.split("\r\n\r\n").nth(1).expect("a body")).expect("JSON");
        assert_eq!(
            body["output"][0]["content"][0]["text"], "all done",
            "{body}"
        );
        assert_eq!(
            server.tool_results(),
            vec!["Process exited with code 0\nOutput:\nhi\n".to_string()]
        );
    }

    #[test]
    fn a_bad_script_names_the_turn() {
        let e = Turn::script_from_json(&json!([{"bash": "ls"}, {"say": "x"}])).unwrap_err();
        assert!(e.starts_with("turn 1:"), "{e}");
    }
}
