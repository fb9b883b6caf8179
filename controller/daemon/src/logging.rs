//! Where the daemon's log goes. Under systemd (`$JOURNAL_STREAM` names the stderr it
//! gave us) the events go to journald natively, their fields as journal fields
//! (`CALL_ID`, `SESSION`, `OUTCOME`, …: `journalctl -u agentcgd CALL_ID=42`);
//! elsewhere, formatted lines on stderr. `AGENTCG_LOG` filters both (default `info`).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn filter() -> EnvFilter {
    EnvFilter::try_from_env("AGENTCG_LOG").unwrap_or_else(|_| "info".into())
}

/// Installs the global subscriber.
pub fn init() {
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        match tracing_journald::layer() {
            Ok(journald) => {
                tracing_subscriber::registry()
                    .with(filter())
                    // No prefix: tracing-journald's default "F" would make the
                    // fields F_CALL_ID, F_SESSION, ….
                    .with(
                        journald
                            .with_field_prefix(None)
                            .with_syslog_identifier("agentcgd".into()),
                    )
                    .init();
                return;
            }
            Err(e) => eprintln!("agentcgd: journald unreachable ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter())
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}
