//! One readable line per event, for `agentcg events` and `agentcg top`.

use std::time::Duration;

use super::{Event, EventBody};
use crate::units::{HumanSize, compact_duration};

/// `12:04:05.123 #42 call_finished  call 7 in s1: ok after 120 ms, peak 3.2 MiB`.
pub fn line(e: &Event) -> String {
    let seq = if e.seq == 0 {
        "-".to_string()
    } else {
        format!("#{}", e.seq)
    };
    format!(
        "{} {seq} {:<19} {}",
        clock(e.time_ms),
        e.body.kind(),
        summary(&e.body)
    )
}

/// UTC time of day with milliseconds.
pub fn clock(unix_ms: u64) -> String {
    let day_ms = unix_ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day_ms / 3_600_000,
        day_ms / 60_000 % 60,
        day_ms / 1000 % 60,
        day_ms % 1000
    )
}

/// What happened, in words.
pub fn summary(body: &EventBody) -> String {
    match body {
        EventBody::SessionCreated { session, plan } => format!(
            "session {session}: priority {}, memory {}, calls share {}",
            plan.priority.as_str(),
            HumanSize(plan.memory_max),
            HumanSize(plan.calls_memory_max)
        ),
        EventBody::SessionClosed { session, forced } => {
            format!(
                "session {session}{}",
                if *forced { " (forced)" } else { "" }
            )
        }
        EventBody::CallDeclared {
            call_id,
            session,
            class,
            limits,
            command,
            clamps,
            ..
        } => format!(
            "call {call_id} in {session}: class {}, mem.max {}, timeout {}{}: {}",
            class.as_deref().unwrap_or("-"),
            HumanSize(limits.memory_max),
            compact_duration(Duration::from_millis(limits.timeout_ms)),
            if clamps.is_empty() {
                String::new()
            } else {
                format!(", {} clamped", clamps.len())
            },
            shorten(&command.join(" "), 60)
        ),
        EventBody::CallRejected {
            session,
            reason,
            message,
        } => format!("{session}: {reason}: {message}"),
        EventBody::CallQueued { session, admission } => {
            format!("{session}: queued: {}", admission.decision.reason)
        }
        EventBody::CallFinished { record: r } => format!(
            "call {} in {}: {} after {} ms, peak {}, cpu {} ms",
            r.call_id,
            r.session,
            r.outcome.as_str(),
            r.duration_ms,
            r.accounting
                .memory_peak
                .map_or("-".into(), |p| HumanSize(p).to_string()),
            r.accounting.cpu.usage_usec / 1000
        ),
        EventBody::MemoryStep {
            call_id,
            session,
            action,
            reason,
            detail,
            ..
        } => format!(
            "{}: {action}: {detail} ({reason})",
            subject(*call_id, session.as_deref())
        ),
        EventBody::Pressure {
            scope,
            session,
            source,
            level,
            detail,
        } => format!(
            "{scope}{} {level} ({source}): {detail}",
            session
                .as_deref()
                .map(|s| format!(" {s}"))
                .unwrap_or_default()
        ),
        EventBody::CpuBudgetExceeded {
            call_id,
            session,
            budget_ms,
            used_ms,
        } => format!(
            "call {call_id} in {session}: used {used_ms} ms of its {budget_ms} ms CPU budget"
        ),
        EventBody::SchedulerExit { reason } => format!("sched_ext scheduler exited: {reason}"),
        EventBody::SchedulerReloaded { attempt } => {
            format!("sched_ext scheduler reloaded (attempt {attempt})")
        }
        EventBody::SchedulerFallback { reason } => {
            format!("CPU falls back to the kernel's cpu controller: {reason}")
        }
        EventBody::PolicyReloaded {
            source,
            ok,
            error,
            hash,
        } => match (ok, error) {
            (true, _) => format!(
                "policy reloaded from {source} (hash {})",
                hash.as_deref().unwrap_or("?")
            ),
            (false, e) => format!(
                "policy from {source} refused, the old one stays: {}",
                e.as_deref().unwrap_or("invalid")
            ),
        },
        EventBody::Lagged { missed } => {
            format!("missed {missed} event(s): this consumer read too slowly")
        }
    }
}

fn subject(call_id: Option<u64>, session: Option<&str>) -> String {
    match (call_id, session) {
        (Some(id), Some(s)) => format!("call {id} in {s}"),
        (Some(id), None) => format!("call {id}"),
        (None, Some(s)) => format!("session {s}"),
        (None, None) => "agentcg".into(),
    }
}

/// At most `max` characters, with `…` when cut.
pub fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}
