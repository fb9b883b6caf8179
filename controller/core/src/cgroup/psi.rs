//! PSI triggers on a cgroup's `memory.pressure` (Documentation/accounting/psi.rst):
//! writing `some <stall µs> <window µs>` to an open file descriptor arms a trigger
//! that makes `poll()` report `POLLPRI` when tasks stalled on memory that long within
//! the window. The trigger lives as long as the descriptor; waiting on it costs
//! nothing (no timer, no reading).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

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

#[cfg(test)]
mod tests {
    use super::*;

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
