//! PSI triggers on a cgroup's `memory.pressure` (Documentation/accounting/psi.rst):
//! writing `some <stall µs> <window µs>` to an open file descriptor arms a trigger
//! that makes `poll()` report `POLLPRI` when tasks stalled on memory that long within
//! the window. The trigger lives as long as the descriptor; waiting on it costs
//! nothing (no timer, no reading). [`read_memory`] reads the same file's averages and
//! totals, for the status views and the metrics.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Cgroup, CgroupError};

/// `memory.pressure`: PSI of the cgroup's memory.
pub const MEMORY_PRESSURE: &str = "memory.pressure";

/// The text that arms a `some` trigger.
pub fn trigger_spec(stall: Duration, window: Duration) -> String {
    format!("some {} {}", stall.as_micros(), window.as_micros())
}

/// Opens `memory.pressure` of `cg` non-blocking and arms a trigger; poll the returned
/// file for `POLLPRI`. The kernel wants the window within 500 ms..10 s and the stall
/// at most the window (EINVAL otherwise); unprivileged writers need whole seconds.
pub fn memory_trigger(cg: &Cgroup, stall: Duration, window: Duration) -> Result<File, CgroupError> {
    let path = cg.path().join(MEMORY_PRESSURE);
    let spec = trigger_spec(stall, window);
    let io = |op, source| CgroupError::Io {
        op,
        path: path.clone(),
        value: Some(spec.clone()),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| io("opening", e))?;
    // One write with the terminating NUL, as psi.rst's example does.
    let mut bytes = spec.clone().into_bytes();
    bytes.push(0);
    file.write_all(&bytes)
        .map_err(|e| io("arming PSI trigger", e))?;
    Ok(file)
}

/// One line of a PSI file: `some avg10=0.12 avg60=0.00 avg300=0.00 total=1234`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct PsiLine {
    /// Share of the last 10 s stalled, in percent.
    pub avg10: f64,
    /// Stalled time since the cgroup was created, in microseconds.
    pub total_usec: u64,
}

/// A cgroup's `memory.pressure`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Psi {
    pub some: PsiLine,
    pub full: PsiLine,
}

/// Parses a PSI file's text; `None` when a line it needs is missing or malformed.
pub fn parse(text: &str) -> Option<Psi> {
    let line = |kind: &str| -> Option<PsiLine> {
        let rest = text
            .lines()
            .find_map(|l| l.strip_prefix(kind)?.strip_prefix(' '))?;
        let field = |name: &str| {
            rest.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
        };
        Some(PsiLine {
            avg10: field("avg10")?.parse().ok()?,
            total_usec: field("total")?.parse().ok()?,
        })
    };
    Some(Psi {
        some: line("some")?,
        full: line("full")?,
    })
}

/// Reads `memory.pressure` of `cg`.
pub fn read_memory(cg: &Cgroup) -> Result<Psi, CgroupError> {
    let text = cg.read(MEMORY_PRESSURE)?;
    parse(&text).ok_or_else(|| CgroupError::Parse {
        path: cg.path().join(MEMORY_PRESSURE),
        text: text.chars().take(200).collect(),
        reason: "expected `some` and `full` lines with avg10= and total=".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pressure_files_parse_and_bad_ones_do_not() {
        let text = "some avg10=1.50 avg60=0.20 avg300=0.00 total=12345\n\
                    full avg10=0.00 avg60=0.00 avg300=0.00 total=678\n";
        let p = parse(text).expect("parse");
        assert_eq!(p.some.avg10, 1.5);
        assert_eq!(p.some.total_usec, 12345);
        assert_eq!(p.full.total_usec, 678);
        assert_eq!(parse("some avg10=x total=1\nfull avg10=0 total=1"), None);
        assert_eq!(parse("some avg10=0.00 total=1\n"), None, "no full line");
    }

    #[test]
    fn spec_is_in_microseconds() {
        assert_eq!(
            trigger_spec(Duration::from_millis(100), Duration::from_secs(1)),
            "some 100000 1000000"
        );
    }

    #[test]
    fn errors_name_the_file_and_the_spec() {
        let dir = std::env::temp_dir().join(format!("agentcg-psi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let err = memory_trigger(
            &Cgroup::new(&dir),
            Duration::from_millis(1),
            Duration::from_secs(1),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("memory.pressure"), "{err}");
        assert!(err.contains("some 1000 1000000"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
