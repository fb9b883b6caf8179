//! `agentcg events`: the daemon's event stream, one readable line per event, or the
//! raw NDJSON with `--json`. Without `--follow` it prints the events the daemon still
//! keeps (after `--since`) and exits; with it, it goes on until interrupted, and rides
//! out a daemon restart: it reconnects and resumes after the last event it printed
//! (sequence numbers only grow across restarts, so nothing is printed twice).

use std::io::Write;
use std::process::ExitCode;

use agentcg_core::events::{Event, describe};

use crate::client::{Client, ClientError};
use crate::fail;

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Only the events of this session.
    #[arg(long)]
    session: Option<String>,
    /// Start after this event's seq (resume where an earlier reader stopped).
    #[arg(long)]
    since: Option<u64>,
    /// Keep printing new events as they happen.
    #[arg(long, short)]
    follow: bool,
    /// Print each event as the daemon sends it: one JSON object a line.
    #[arg(long)]
    json: bool,
}

/// The request path for these arguments.
pub fn path(args: &EventsArgs) -> String {
    let mut q = vec![format!("follow={}", args.follow)];
    // Without --follow the replay is the point: from the oldest kept event by default.
    match (args.since, args.follow) {
        (Some(s), _) => q.push(format!("since={s}")),
        (None, false) => q.push("since=0".into()),
        (None, true) => {}
    }
    if let Some(s) = &args.session {
        q.push(format!("session={s}"));
    }
    format!("/v1/events?{}", q.join("&"))
}

pub fn main(client: &Client, args: EventsArgs) -> ExitCode {
    if let Some(s) = &args.session
        && let Err(e) = agentcg_core::plan::check_session_name(s)
    {
        eprintln!("agentcg: --session: {e}");
        return ExitCode::from(crate::EXIT_USAGE);
    }
    let mut out = std::io::stdout().lock();
    let mut args = args;
    let mut last_seq = None;
    let mut stdout_closed = false;
    loop {
        let result = client.stream_lines(&path(&args), |line| {
            let event = serde_json::from_str::<Event>(line).ok();
            if let Some(e) = event.as_ref().filter(|e| e.seq > 0) {
                last_seq = Some(e.seq);
            }
            let text = match (&event, args.json) {
                (Some(e), false) => describe::line(e),
                (None, false) => format!("(unreadable event) {line}"),
                (_, true) => line.to_string(),
            };
            // A closed stdout (`| head`) ends the stream.
            stdout_closed = writeln!(out, "{text}").and_then(|()| out.flush()).is_err();
            !stdout_closed
        });
        match result {
            Ok(()) if !args.follow || stdout_closed => return ExitCode::SUCCESS,
            // The daemon stopped (its stream ended) or died: resume after the last one.
            Ok(()) | Err(ClientError::Protocol(_)) => {
                eprintln!(
                    "agentcg: the event stream ended (agentcgd restarting?); resuming after #{}",
                    last_seq.map_or("-".into(), |s| s.to_string())
                );
                args.since = last_seq.or(args.since);
                std::thread::sleep(RESUME_PAUSE);
            }
            Err(e) => return fail(&e),
        }
    }
}

/// Pause before reconnecting to a daemon whose stream ended.
const RESUME_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_replays_by_default_and_only_follows_when_asked() {
        let args = |since, follow| EventsArgs {
            session: Some("s1".into()),
            since,
            follow,
            json: false,
        };
        assert_eq!(
            path(&args(None, false)),
            "/v1/events?follow=false&since=0&session=s1"
        );
        assert_eq!(path(&args(None, true)), "/v1/events?follow=true&session=s1");
        assert_eq!(
            path(&args(Some(9), true)),
            "/v1/events?follow=true&since=9&session=s1"
        );
    }
}
