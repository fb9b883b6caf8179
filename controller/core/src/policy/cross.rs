//! Cross-field checks of a policy (after each value passed its own type and range):
//! orderings between keys, class intents within the caps, unique class names, class
//! commands that an earlier class shadows; and warnings for legal but suspicious values.

use std::ops::Range;

use super::check::{ClassSeen, Located, Seen, Severity, Sink, Val};
use crate::intent::Intent;
use crate::units::{compact_duration, compact_size};

pub(super) fn check(seen: &Seen, sink: &mut Sink<'_>) {
    orderings(seen, sink);
    if let Some((Val::Intent(i), span)) = seen.values.get("call.intent").cloned() {
        intent_within_caps("call.intent", &i, span, seen, sink);
    }
    for c in &seen.classes {
        if let Some((Val::Intent(i), span)) = c.fields.get("class.intent").cloned() {
            intent_within_caps(&format!("class[{}].intent", c.index), &i, span, seen, sink);
        }
        if let Some((Val::Str(s), span)) = c.fields.get("class.suggestion")
            && s.trim().is_empty()
        {
            sink.push(
                span.clone(),
                &format!("class[{}].suggestion", c.index),
                Severity::Warning,
                "empty: a call the budget ends gets no advice".into(),
            );
        }
    }
    unique_names(&seen.classes, sink);
    shadowed(&seen.classes, sink);
    warnings(seen, sink);
}

fn int(seen: &Seen, path: &str) -> Option<(i64, Option<Range<usize>>)> {
    match seen.get(path)? {
        (Val::Int(n), s) => Some((n, s)),
        _ => None,
    }
}

fn bytes(seen: &Seen, path: &str) -> Option<(u64, Option<Range<usize>>)> {
    match seen.get(path)? {
        (Val::Bytes(n), s) => Some((n, s)),
        _ => None,
    }
}

fn time(seen: &Seen, path: &str) -> Option<(std::time::Duration, Option<Range<usize>>)> {
    match seen.get(path)? {
        (Val::Time(d), s) => Some((d, s)),
        _ => None,
    }
}

/// The span of the first key written in the file among `spans`.
fn first(spans: [&Option<Range<usize>>; 2]) -> Option<Range<usize>> {
    spans.into_iter().flatten().min_by_key(|s| s.start).cloned()
}

fn orderings(seen: &Seen, sink: &mut Sink<'_>) {
    if let (Some((mem, ms)), Some((reserve, rs))) = (
        bytes(seen, "session.memory"),
        bytes(seen, "session.runtime_reserve"),
    ) && reserve >= mem
    {
        sink.error(
            first([&rs, &ms]),
            "session.runtime_reserve",
            format!(
                "{} must be smaller than session.memory ({}): the calls would get nothing",
                compact_size(reserve),
                compact_size(mem)
            ),
        );
    }
    let (Some((calm, cs)), Some((pressure, ps)), Some((critical, crs))) = (
        int(seen, "memory.calm_below"),
        int(seen, "memory.pressure_at"),
        int(seen, "memory.critical_at"),
    ) else {
        return;
    };
    if calm >= pressure {
        sink.error(
            first([&cs, &ps]),
            "memory.calm_below",
            format!("expected calm_below < pressure_at < critical_at, got {calm} / {pressure} / {critical}"),
        );
    } else if pressure >= critical {
        sink.error(
            first([&crs, &ps]),
            "memory.critical_at",
            format!("expected calm_below < pressure_at < critical_at, got {calm} / {pressure} / {critical}"),
        );
    }
    if let (Some((stall, ss)), Some((window, ws))) = (
        time(seen, "memory.psi_stall"),
        time(seen, "memory.psi_window"),
    ) && stall > window
    {
        sink.error(
            first([&ss, &ws]),
            "memory.psi_stall",
            format!(
                "{} is longer than memory.psi_window ({})",
                compact_duration(stall),
                compact_duration(window)
            ),
        );
    }
}

/// An intent's limits above the caps would always be clamped: an error.
fn intent_within_caps(
    label: &str,
    intent: &Intent,
    span: Option<Range<usize>>,
    seen: &Seen,
    sink: &mut Sink<'_>,
) {
    if let (Some(m), Some((cap, _))) = (intent.mem_max, bytes(seen, "caps.mem_max"))
        && m > cap
    {
        sink.error(
            span.clone(),
            label,
            format!(
                "mem.max {} is above caps.mem_max {}",
                compact_size(m),
                compact_size(cap)
            ),
        );
    }
    if let (Some(p), Some((cap, _))) = (intent.pids, int(seen, "caps.pids"))
        && i64::from(p) > cap
    {
        sink.error(
            span.clone(),
            label,
            format!("pids {p} is above caps.pids {cap}"),
        );
    }
    if let (Some(t), Some((cap, _))) = (intent.timeout, time(seen, "caps.timeout"))
        && t > cap
    {
        sink.error(
            span.clone(),
            label,
            format!(
                "timeout {} is above caps.timeout {}",
                compact_duration(t),
                compact_duration(cap)
            ),
        );
    }
    if let (Some(c), Some((Val::Milli(cap), _))) = (intent.millicpus, seen.get("caps.cpus"))
        && cap > 0
        && c > cap
    {
        sink.error(
            span.clone(),
            label,
            format!(
                "cpu {} is above caps.cpus {}",
                f64::from(c) / 1000.0,
                f64::from(cap) / 1000.0
            ),
        );
    }
    let ceiling = bytes(seen, "session.memory")
        .zip(bytes(seen, "session.runtime_reserve"))
        .map(|((m, _), (r, _))| m.saturating_sub(r));
    if let (Some(m), Some(ceiling)) = (intent.mem.or(intent.mem_max), ceiling)
        && m > ceiling
    {
        sink.push(
            span,
            label,
            Severity::Warning,
            format!(
                "{} is more than the calls of a default session may use ({}): it is clamped there",
                compact_size(m),
                compact_size(ceiling)
            ),
        );
    }
}

fn name_of(c: &ClassSeen) -> Option<(&str, &Option<Range<usize>>)> {
    match c.fields.get("class.name")? {
        (Val::Str(s), span) => Some((s.as_str(), span)),
        _ => None,
    }
}

fn unique_names(classes: &[ClassSeen], sink: &mut Sink<'_>) {
    for (j, c) in classes.iter().enumerate() {
        let Some((name, span)) = name_of(c) else {
            continue;
        };
        if let Some(earlier) = classes[..j]
            .iter()
            .find(|e| name_of(e).is_some_and(|(n, _)| n == name))
        {
            sink.error(
                span.clone(),
                &format!("class[{}].name", c.index),
                format!(
                    "duplicate class name \"{name}\" (also class[{}])",
                    earlier.index
                ),
            );
        }
    }
}

fn commands(c: &ClassSeen) -> Option<&Located> {
    c.fields.get("class.commands")
}

/// A prefix an earlier class's prefix also matches is taken by that class first.
fn shadowed(classes: &[ClassSeen], sink: &mut Sink<'_>) {
    for (j, c) in classes.iter().enumerate() {
        let Some((Val::Words(mine), span)) = commands(c) else {
            continue;
        };
        for pattern in mine {
            let taker = classes[..j].iter().find_map(|e| match commands(e) {
                Some((Val::Words(theirs), _)) => theirs
                    .iter()
                    .find(|q| super::prefix_matches(q, pattern))
                    .map(|q| (e, q.join(" "))),
                _ => None,
            });
            if let Some((earlier, by)) = taker {
                let who = name_of(earlier).map_or(format!("class[{}]", earlier.index), |(n, _)| {
                    format!("class \"{n}\"")
                });
                sink.error(
                    span.clone(),
                    &format!("class[{}].commands", c.index),
                    format!(
                        "\"{}\" can never match: {who} takes it first with \"{by}\"",
                        pattern.join(" ")
                    ),
                );
            }
        }
    }
}

fn warnings(seen: &Seen, sink: &mut Sink<'_>) {
    if let Some((p, span @ Some(_))) = int(seen, "memory.pressure_at")
        && p < 50
    {
        sink.push(
            span,
            "memory.pressure_at",
            Severity::Warning,
            format!("{p}: the response starts with half the memory still free"),
        );
    }
    if let (Some((p, ps)), Some((c, cs))) = (
        int(seen, "memory.pressure_at"),
        int(seen, "memory.critical_at"),
    ) && p < c
        && c - p < 3
        && (ps.is_some() || cs.is_some())
    {
        sink.push(
            first([&cs, &ps]),
            "memory.critical_at",
            Severity::Warning,
            format!("{c}: only {} points above pressure_at, so throttling and reclaim get no time before kills", c - p),
        );
    }
    if let Some((r, span @ Some(_))) = int(seen, "memory.reclaim_percent")
        && r > 50
    {
        sink.push(
            span,
            "memory.reclaim_percent",
            Severity::Warning,
            format!("{r}: asking for over half of a session's memory stalls it"),
        );
    }
    if let Some((t, span @ Some(_))) = time(seen, "memory.step_interval")
        && t < std::time::Duration::from_millis(50)
    {
        sink.push(
            span,
            "memory.step_interval",
            Severity::Warning,
            format!(
                "{}: steps escalate faster than memory can be freed",
                compact_duration(t)
            ),
        );
    }
    if let (Some((Val::Bool(false), es)), Some((q, qs))) = (
        seen.get("admission.enabled"),
        time(seen, "admission.queue_for"),
    ) && !q.is_zero()
        && qs.is_some()
    {
        sink.push(
            first([&qs, &es]),
            "admission.queue_for",
            Severity::Warning,
            format!(
                "{}: no call waits while admission.enabled = false",
                compact_duration(q)
            ),
        );
    }
}
