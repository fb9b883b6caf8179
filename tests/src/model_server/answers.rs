//! The scripted model server's answers in each wire format it speaks: Anthropic
//! Messages (a message, or its server-sent events), OpenAI chat completions (a
//! completion, or its chunks) and OpenAI Responses (a response, or its events), each
//! built from one [`Turn`] for one request.

use serde_json::{Value, json};

use super::{Turn, shell_tool, shell_tool_schema, tool_use_id, turn_index};

fn model_of(req: &Value) -> String {
    req["model"].as_str().unwrap_or("scripted").to_string()
}

/// The content blocks and stop reason of an Anthropic answer.
fn anthropic_blocks(req: &Value, turn: &Turn) -> (Vec<Value>, &'static str) {
    match turn {
        Turn::Bash(cmd) => {
            let (name, arg) = shell_tool(req);
            let id = tool_use_id(req, turn);
            (
                vec![json!({"type": "tool_use", "id": id, "name": name, "input": {arg: cmd}})],
                "tool_use",
            )
        }
        Turn::Text(t) => (vec![json!({"type": "text", "text": t})], "end_turn"),
    }
}

fn usage() -> Value {
    json!({"input_tokens": 10, "output_tokens": 10})
}

pub(super) fn anthropic_message(req: &Value, turn: &Turn) -> Value {
    let (content, stop) = anthropic_blocks(req, turn);
    json!({"id": format!("msg_{}", turn_index(req)), "type": "message", "role": "assistant",
        "model": model_of(req), "content": content, "stop_reason": stop,
        "stop_sequence": null, "usage": usage()})
}

fn sse(event: &str, data: &Value) -> String {
    format!("event: {event}\ndata: {data}\n\n")
}

/// The streamed form of an Anthropic answer: message_start, one block (start, one
/// delta, stop), message_delta with the stop reason, message_stop.
pub(super) fn anthropic_sse(req: &Value, turn: &Turn) -> String {
    let (blocks, stop) = anthropic_blocks(req, turn);
    let mut start = anthropic_message(req, turn);
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    let mut s = sse(
        "message_start",
        &json!({"type": "message_start", "message": start}),
    );
    for (i, b) in blocks.iter().enumerate() {
        let (empty, delta) = if b["type"] == "tool_use" {
            let mut e = b.clone();
            e["input"] = json!({});
            let partial = b["input"].to_string();
            (
                e,
                json!({"type": "input_json_delta", "partial_json": partial}),
            )
        } else {
            (
                json!({"type": "text", "text": ""}),
                json!({"type": "text_delta", "text": b["text"]}),
            )
        };
        s += &sse(
            "content_block_start",
            &json!({"type": "content_block_start", "index": i, "content_block": empty}),
        );
        s += &sse(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": i, "delta": delta}),
        );
        s += &sse(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": i}),
        );
    }
    s += &sse(
        "message_delta",
        &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null},
            "usage": {"output_tokens": 10}}),
    );
    s + &sse("message_stop", &json!({"type": "message_stop"}))
}

/// A turn as a text-only agent reads it: a command in a fenced bash block (the agent
/// parses it out), or the text.
pub(super) fn text_answer(turn: &Turn) -> String {
    match turn {
        Turn::Bash(cmd) => format!("THOUGHT: running it.\n\n```bash\n{cmd}\n```"),
        Turn::Text(t) => t.clone(),
    }
}

/// The assistant message of an OpenAI answer: a tool call when the request offers
/// tools, else the turn's text form.
fn openai_message(req: &Value, turn: &Turn) -> (Value, &'static str) {
    match turn {
        Turn::Bash(cmd) if req["tools"].as_array().is_some_and(|t| !t.is_empty()) => {
            let (name, arg) = shell_tool(req);
            let args = json!({arg: cmd}).to_string();
            (
                json!({"role": "assistant", "content": null, "tool_calls": [{
                    "id": format!("call_{}", turn_index(req)), "type": "function",
                    "function": {"name": name, "arguments": args}}]}),
                "tool_calls",
            )
        }
        _ => (
            json!({"role": "assistant", "content": text_answer(turn)}),
            "stop",
        ),
    }
}

pub(super) fn openai_completion(req: &Value, turn: &Turn) -> Value {
    let (message, finish) = openai_message(req, turn);
    json!({"id": format!("chatcmpl-{}", turn_index(req)), "object": "chat.completion",
        "created": 0, "model": model_of(req),
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}})
}

/// The streamed form: one chunk with the whole message as its delta, one with the
/// finish reason, then `[DONE]`.
pub(super) fn openai_sse(req: &Value, turn: &Turn) -> String {
    let (mut message, finish) = openai_message(req, turn);
    if let Some(calls) = message["tool_calls"].as_array_mut() {
        for (i, c) in calls.iter_mut().enumerate() {
            c["index"] = json!(i);
        }
    }
    let chunk = |delta: Value, finish: Value| {
        json!({"id": format!("chatcmpl-{}", turn_index(req)), "object": "chat.completion.chunk",
            "created": 0, "model": model_of(req),
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
    };
    format!(
        "data: {}\n\ndata: {}\n\ndata: [DONE]\n\n",
        chunk(message, Value::Null),
        chunk(json!({}), json!(finish))
    )
}

/// The longest `yield_time_ms` Codex allows: a command that takes longer than the
/// default 10 s under emulation still answers in its own call, not in a later poll.
const MAX_YIELD_MS: u64 = 30_000;

/// The output item of a Responses answer: a `function_call` of the shell tool, or an
/// assistant message.
fn responses_item(req: &Value, turn: &Turn) -> Value {
    let i = turn_index(req);
    match turn {
        Turn::Bash(cmd) => {
            let (name, arg, takes_yield) = shell_tool_schema(req);
            let mut args = json!({arg: cmd});
            if takes_yield {
                args["yield_time_ms"] = json!(MAX_YIELD_MS);
            }
            json!({"type": "function_call", "id": format!("fc_{i}"), "call_id": format!("call_{i}"),
                "name": name, "arguments": args.to_string()})
        }
        Turn::Text(t) => json!({"type": "message", "id": format!("msg_{i}"), "role": "assistant",
            "content": [{"type": "output_text", "text": t}]}),
    }
}

/// The whole Responses answer (`response.completed` carries it too).
pub(super) fn responses_object(req: &Value, turn: &Turn) -> Value {
    json!({"id": format!("resp_{}", turn_index(req)), "object": "response",
        "status": "completed", "model": model_of(req), "output": [responses_item(req, turn)],
        "usage": {"input_tokens": 10, "output_tokens": 10, "total_tokens": 20}})
}

/// The streamed form: `response.created`, the item `added` and `done`, then
/// `response.completed` with the usage.
pub(super) fn responses_sse(req: &Value, turn: &Turn) -> String {
    let done = responses_object(req, turn);
    let item = &done["output"][0];
    let mut created = done.clone();
    created["status"] = json!("in_progress");
    created["output"] = json!([]);
    [
        ("response.created", json!({"response": created})),
        (
            "response.output_item.added",
            json!({"output_index": 0, "item": item}),
        ),
        (
            "response.output_item.done",
            json!({"output_index": 0, "item": item}),
        ),
        ("response.completed", json!({"response": done})),
    ]
    .into_iter()
    .map(|(event, mut data)| {
        data["type"] = json!(event);
        sse(event, &data)
    })
    .collect()
}
