//! What agentcgd tells systemd and takes from it: the sd_notify protocol (one datagram
//! per message to `$NOTIFY_SOCKET`: `READY=1`, `STATUS=…`, `WATCHDOG=1`,
//! `STOPPING=1`; see sd_notify(3)) and socket activation (`$LISTEN_PID`,
//! `$LISTEN_FDS`: the listening socket arrives as file descriptor 3; see
//! sd_listen_fds(3)). Both are a few lines over the kernel's interfaces, so no crate.
//! Outside systemd (no `$NOTIFY_SOCKET`) every notification is a no-op.

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::time::Duration;

use nix::sys::socket::{SockType, getsockopt, sockopt};

/// The first file descriptor systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// A handle on `$NOTIFY_SOCKET`.
#[derive(Debug)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// From `$NOTIFY_SOCKET`; a notifier that says nothing when it is unset or unusable
    /// (the reason is logged).
    pub fn from_env() -> Notifier {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Notifier { target: None };
        };
        let path = path.to_string_lossy().into_owned();
        let target = notify_addr(&path)
            .and_then(|addr| Ok((UnixDatagram::unbound()?, addr)))
            .inspect_err(|e| tracing::warn!("NOTIFY_SOCKET={path} is unusable: {e}"))
            .ok();
        Notifier { target }
    }

    /// Sends one notification (newline-separated `KEY=value` lines). A failure is
    /// logged: systemd then times the service out, which says more than we could.
    pub fn send(&self, message: &str) {
        if let Some((socket, addr)) = &self.target
            && let Err(e) = socket.send_to_addr(message.as_bytes(), addr)
        {
            tracing::warn!("sd_notify {message:?}: {e}");
        }
    }
}

/// The address in `$NOTIFY_SOCKET`: a path, or an abstract name after `@`.
fn notify_addr(value: &str) -> std::io::Result<SocketAddr> {
    match value.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(value),
    }
}

/// How often to send `WATCHDOG=1`: half of `$WATCHDOG_USEC` (as sd_watchdog_enabled(3)
/// advises), if the watchdog is on and meant for process `me`.
pub fn watchdog_every(usec: Option<&str>, pid: Option<&str>, me: u32) -> Option<Duration> {
    if pid.is_some_and(|p| p.parse() != Ok(me)) {
        return None;
    }
    let usec: u64 = usec?.parse().ok().filter(|u| *u > 0)?;
    Some(Duration::from_micros(usec / 2))
}

/// The watchdog interval of this process, from its environment.
pub fn watchdog_from_env() -> Option<Duration> {
    let var = |k| std::env::var(k).ok();
    watchdog_every(
        var("WATCHDOG_USEC").as_deref(),
        var("WATCHDOG_PID").as_deref(),
        std::process::id(),
    )
}

/// Why the socket systemd passed cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ActivationError {
    #[error("LISTEN_FDS={0} is not a count of file descriptors")]
    BadCount(String),
    #[error(
        "systemd passed {0} sockets (LISTEN_FDS); agentcgd.socket must have exactly one ListenStream="
    )]
    NotOne(u32),
    #[error("the socket systemd passed (fd 3) is not a listening unix stream socket: {0}")]
    NotAListener(String),
}

/// The fd systemd passed, if `$LISTEN_PID`/`$LISTEN_FDS` are meant for process `me`.
pub fn passed_fd(
    pid: Option<&str>,
    fds: Option<&str>,
    me: u32,
) -> Result<Option<RawFd>, ActivationError> {
    let (Some(pid), Some(fds)) = (pid, fds) else {
        return Ok(None);
    };
    if pid.parse() != Ok(me) {
        return Ok(None);
    }
    match fds.parse::<u32>() {
        Err(_) => Err(ActivationError::BadCount(fds.to_string())),
        Ok(0) => Ok(None),
        Ok(1) => Ok(Some(LISTEN_FDS_START)),
        Ok(n) => Err(ActivationError::NotOne(n)),
    }
}

/// The API socket systemd passed (socket activation), if any.
pub fn activated_listener() -> Result<Option<tokio::net::UnixListener>, ActivationError> {
    let var = |k| std::env::var(k).ok();
    let Some(fd) = passed_fd(
        var("LISTEN_PID").as_deref(),
        var("LISTEN_FDS").as_deref(),
        std::process::id(),
    )?
    else {
        return Ok(None);
    };
    let bad = |e: std::io::Error| ActivationError::NotAListener(e.to_string());
    // SAFETY: LISTEN_PID names this process, so systemd opened fd 3 for it and nothing
    // else in the process owns it; it is taken once, here, at start.
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    let kind = getsockopt(&owned, sockopt::SockType).map_err(|e| bad(e.into()))?;
    let listening = getsockopt(&owned, sockopt::AcceptConn).map_err(|e| bad(e.into()))?;
    if kind != SockType::Stream || !listening {
        return Err(ActivationError::NotAListener(format!(
            "type {kind:?}, listening {listening}"
        )));
    }
    let listener = UnixListener::from(owned);
    listener.local_addr().map_err(bad)?;
    listener.set_nonblocking(true).map_err(bad)?;
    tokio::net::UnixListener::from_std(listener)
        .map(Some)
        .map_err(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_watchdog_pings_at_half_its_timeout_and_only_for_its_process() {
        assert_eq!(
            watchdog_every(Some("10000000"), None, 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            watchdog_every(Some("10000000"), Some("7"), 7),
            Some(Duration::from_secs(5))
        );
        assert_eq!(watchdog_every(Some("10000000"), Some("8"), 7), None);
        assert_eq!(watchdog_every(None, None, 7), None);
        assert_eq!(watchdog_every(Some("0"), None, 7), None);
        assert_eq!(watchdog_every(Some("soon"), None, 7), None);
    }

    #[test]
    fn a_passed_socket_is_fd_3_when_meant_for_this_process() {
        assert_eq!(passed_fd(Some("7"), Some("1"), 7), Ok(Some(3)));
        assert_eq!(passed_fd(Some("8"), Some("1"), 7), Ok(None));
        assert_eq!(passed_fd(None, None, 7), Ok(None));
        assert_eq!(passed_fd(Some("7"), Some("0"), 7), Ok(None));
        assert_eq!(
            passed_fd(Some("7"), Some("2"), 7),
            Err(ActivationError::NotOne(2))
        );
        assert_eq!(
            passed_fd(Some("7"), Some("x"), 7),
            Err(ActivationError::BadCount("x".into()))
        );
    }

    #[test]
    fn notifications_reach_the_socket_as_one_datagram() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).expect("bind");
        let notifier = Notifier {
            target: Some((
                UnixDatagram::unbound().expect("socket"),
                notify_addr(path.to_str().expect("utf-8")).expect("addr"),
            )),
        };
        notifier.send("READY=1\nSTATUS=serving");
        let mut buf = [0u8; 64];
        let n = server.recv(&mut buf).expect("recv");
        assert_eq!(&buf[..n], b"READY=1\nSTATUS=serving");
    }

    #[test]
    fn an_abstract_notify_socket_is_named_after_the_at_sign() {
        let addr = notify_addr("@/org/freedesktop/systemd1/notify/42").expect("addr");
        assert_eq!(
            addr.as_abstract_name(),
            Some(&b"/org/freedesktop/systemd1/notify/42"[..])
        );
    }
}
