//! Captures what libbpf prints (warnings, the verifier log of a failed load) so that
//! errors can carry it (docs/ARCHITECTURE.md#bpf-pitfalls, pitfall 2: otherwise a failed
//! load only says "Invalid argument").
//!
//! libbpf has one process-wide print callback, and libbpf-rs only accepts a plain `fn`,
//! so the capture buffer is a global. [`Capture`] serialises captures within this crate
//! and restores the previous callback when dropped; code outside this crate that calls
//! `libbpf_rs::set_print` while a capture runs would steal the log.

use std::sync::{Mutex, MutexGuard, PoisonError};

use libbpf_rs::{Link, PrintLevel, ProgramMut};

use crate::error::BpfError;

/// Most bytes kept per capture; the verifier log of a failing program fits easily, and
/// the tail (where the verifier says what went wrong) is what we keep.
const MAX_LOG_BYTES: usize = 1 << 20;

static BUFFER: Mutex<String> = Mutex::new(String::new());
static ACTIVE: Mutex<()> = Mutex::new(());

fn on_print(_level: PrintLevel, msg: String) {
    let mut buf = BUFFER.lock().unwrap_or_else(PoisonError::into_inner);
    buf.push_str(&msg);
    if buf.len() > MAX_LOG_BYTES {
        let mut cut = buf.len() - MAX_LOG_BYTES / 2;
        while !buf.is_char_boundary(cut) {
            cut += 1;
        }
        buf.replace_range(..cut, "[... earlier libbpf output dropped ...]\n");
    }
}

/// An active capture of libbpf's output; restores the previous callback on drop.
pub(crate) struct Capture {
    previous: Option<(PrintLevel, libbpf_rs::PrintCallback)>,
    _active: MutexGuard<'static, ()>,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

impl Capture {
    /// Starts capturing libbpf messages of level `Info` and above.
    pub(crate) fn start() -> Self {
        let active = ACTIVE.lock().unwrap_or_else(PoisonError::into_inner);
        BUFFER
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
        let previous = libbpf_rs::set_print(Some((PrintLevel::Info, on_print)));
        Self {
            previous,
            _active: active,
        }
    }

    /// What libbpf printed since [`Capture::start`] (or the last `take`).
    pub(crate) fn take(&self) -> String {
        std::mem::take(&mut *BUFFER.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Attaches each program to its hook; the first that fails names itself and carries
    /// what libbpf printed.
    pub(crate) fn attach_all(&self, progs: &[&ProgramMut<'_>]) -> Result<Vec<Link>, BpfError> {
        progs
            .iter()
            .map(|prog| {
                prog.attach().map_err(|source| BpfError::Attach {
                    program: prog.name().to_string_lossy().into_owned(),
                    source,
                    log: self.take(),
                })
            })
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        libbpf_rs::set_print(self.previous.take());
        BUFFER
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Opening garbage makes libbpf complain (no bpf() call needed); the complaint must
    /// land in the capture, not on stderr.
    #[test]
    fn captures_what_libbpf_prints() {
        let capture = Capture::start();
        let result = libbpf_rs::ObjectBuilder::default().open_memory(b"definitely not an ELF");
        assert!(result.is_err());
        let log = capture.take();
        assert!(log.contains("libbpf"), "captured: {log:?}");
    }
}
