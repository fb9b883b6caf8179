//! The API's request bodies on arbitrary bytes, through the serde types agentcgd's
//! handlers deserialize and the validation after it (a call's command, token, intent
//! and session name; a session's name and limits planned against the default policy;
//! the call's admission into that session): no input panics and every rejection
//! carries a message. The first byte picks the body.
#![no_main]

use agentcg_core::controller::CallRequest;
use agentcg_core::plan::{self, SessionLoad, SessionRequest};
use agentcg_core::policy::{self, Policy};
use agentcg_core::record::ExitInfo;
use libfuzzer_sys::fuzz_target;

/// Parsed once: the default policy is the same for every input.
static POLICY: std::sync::LazyLock<Policy> = std::sync::LazyLock::new(Policy::default_policy);

fn said(e: &impl std::fmt::Display) {
    let text = e.to_string();
    assert!(!text.trim().is_empty(), "a rejection without a message");
}

fn call(policy: &Policy, body: &[u8]) {
    let req: CallRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return said(&e),
    };
    let checked = match req.check() {
        Ok(c) => c,
        Err(e) => return said(&e),
    };
    let session = SessionRequest {
        name: checked.session,
        ..SessionRequest::default()
    };
    let planned = plan::plan_session(policy, &session).expect("a valid name with defaults");
    let command = policy::command_text(&req.command);
    if let Err(e) = plan::admit(
        policy,
        &planned,
        SessionLoad::default(),
        &checked.intent,
        &command,
    ) {
        said(&e);
    }
}

fn session(policy: &Policy, body: &[u8]) {
    match serde_json::from_slice::<SessionRequest>(body) {
        Ok(req) => {
            if let Err(e) = plan::plan_session(policy, &req) {
                said(&e);
            }
        }
        Err(e) => said(&e),
    }
}

fn finish(body: &[u8]) {
    if let Err(e) = serde_json::from_slice::<ExitInfo>(body) {
        said(&e);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, body)) = data.split_first() else {
        return;
    };
    match which % 3 {
        0 => call(&POLICY, body),
        1 => session(&POLICY, body),
        _ => finish(body),
    }
});
