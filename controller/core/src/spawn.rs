//! Starting a tool inside its call cgroup with `clone3(CLONE_INTO_CGROUP)` (Linux ≥ 5.7):
//! the child is born in the cgroup, so not one instruction of the tool runs outside
//! its limits, and no migration write is needed.
//!
//! Everything the child needs (argv, envp, the resolved program path) is prepared
//! before the clone; between clone and exec the child only makes async-signal-safe
//! system calls.

use std::ffi::{CString, OsStr, OsString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// `CLONE_INTO_CGROUP` from linux/sched.h.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` (CLONE_ARGS_SIZE_VER2 = 88 bytes) from linux/sched.h.
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}
const _: () = assert!(std::mem::size_of::<CloneArgs>() == 88);

/// Why a tool could not be started.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    #[error("command is empty")]
    EmptyCommand,
    #[error("`{0}`: command not found in PATH")]
    NotFound(String),
    #[error("argument {0:?} contains a NUL byte")]
    Nul(OsString),
    #[error("opening cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("clone3(CLONE_INTO_CGROUP) into {path}: {source}")]
    Clone {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("executing {program}: {source}")]
    Exec {
        program: PathBuf,
        source: std::io::Error,
    },
    #[error("{op}: {source}")]
    Sys {
        op: &'static str,
        source: std::io::Error,
    },
}

/// Resolves `program` like execvp: a name with a `/` is used as is, otherwise the
/// first executable match in `path_var`.
pub fn resolve_program(program: &OsStr, path_var: Option<&OsStr>) -> Option<PathBuf> {
    if program.as_bytes().contains(&b'/') {
        return Some(PathBuf::from(program));
    }
    let path_var = path_var.unwrap_or(OsStr::new("/usr/local/bin:/usr/bin:/bin"));
    std::env::split_paths(path_var)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn cstring(s: &OsStr) -> Result<CString, SpawnError> {
    CString::new(s.as_bytes()).map_err(|_| SpawnError::Nul(s.to_os_string()))
}

fn sys(op: &'static str) -> SpawnError {
    SpawnError::Sys {
        op,
        source: std::io::Error::last_os_error(),
    }
}

/// Starts `argv` inside the cgroup directory `cgroup` with the current environment and
/// stdio, and returns the child's pid. The caller waits for it (see [`wait`]).
/// `oom_score_adj`, when given and not 0, is written to the child's
/// `/proc/self/oom_score_adj` before exec (raising it needs no privilege): the kernel's
/// OOM killer then picks low-priority tools before anything else.
pub fn spawn_in_cgroup(
    cgroup: &Path,
    argv: &[OsString],
    oom_score_adj: Option<i16>,
) -> Result<libc::pid_t, SpawnError> {
    let program = argv.first().ok_or(SpawnError::EmptyCommand)?;
    let path_var = std::env::var_os("PATH");
    let resolved = resolve_program(program, path_var.as_deref())
        .ok_or_else(|| SpawnError::NotFound(program.to_string_lossy().into_owned()))?;
    let c_prog = cstring(resolved.as_os_str())?;
    let c_args: Vec<CString> = argv.iter().map(|a| cstring(a)).collect::<Result<_, _>>()?;
    let mut arg_ptrs: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let c_env: Vec<CString> = std::env::vars_os()
        .filter_map(|(k, v)| {
            let mut kv = k;
            kv.push("=");
            kv.push(v);
            CString::new(kv.as_bytes()).ok()
        })
        .collect();
    let mut env_ptrs: Vec<*const libc::c_char> = c_env.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());

    // Built before the clone: the child may not allocate.
    let oom_adj = oom_score_adj
        .filter(|&a| a != 0)
        .map(|a| a.to_string().into_bytes());
    let c_dir = cstring(cgroup.as_os_str())?;
    // SAFETY: plain open(2) of a NUL-terminated path.
    let dirfd = unsafe {
        libc::open(
            c_dir.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dirfd < 0 {
        return Err(SpawnError::OpenCgroup {
            path: cgroup.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: dirfd is a fresh descriptor we own.
    let dirfd = unsafe { OwnedFd::from_raw_fd(dirfd) };

    // A close-on-exec pipe tells the parent whether exec failed (and with which errno).
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(sys("pipe2"));
    }
    // SAFETY: both descriptors are fresh and ours.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };

    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dirfd.as_raw_fd() as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 without a new stack behaves like fork: the child gets a copy of
    // our address space and, until exec, only runs async-signal-safe calls below.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &mut args as *mut CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if pid < 0 {
        return Err(SpawnError::Clone {
            path: cgroup.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        // Child. SAFETY: only async-signal-safe calls; pointers were built before the clone.
        unsafe {
            // Rust ignores SIGPIPE and the CLI ignores SIGINT/SIGQUIT; a tool expects defaults.
            for sig in [libc::SIGPIPE, libc::SIGINT, libc::SIGQUIT, libc::SIGTERM] {
                libc::signal(sig, libc::SIG_DFL);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            if let Some(adj) = &oom_adj {
                // Best effort: a kernel without the file still runs the tool.
                let fd = libc::open(
                    c"/proc/self/oom_score_adj".as_ptr(),
                    libc::O_WRONLY | libc::O_CLOEXEC,
                );
                if fd >= 0 {
                    libc::write(fd, adj.as_ptr().cast(), adj.len());
                    libc::close(fd);
                }
            }
            libc::execve(c_prog.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(wr.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127);
        }
    }
    drop(wr);
    let mut buf = [0u8; 4];
    // SAFETY: reading at most 4 bytes into a 4-byte buffer.
    let n = loop {
        let n = unsafe { libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break n;
        }
    };
    if n == 4 {
        let _ = wait(pid as libc::pid_t);
        return Err(SpawnError::Exec {
            program: resolved,
            source: std::io::Error::from_raw_os_error(i32::from_ne_bytes(buf)),
        });
    }
    Ok(pid as libc::pid_t)
}

/// Waits for `pid` and returns its exit code or the signal that ended it.
pub fn wait(pid: libc::pid_t) -> Result<crate::record::ExitInfo, SpawnError> {
    let mut status = 0;
    loop {
        // SAFETY: waitpid on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            return Err(sys("waitpid"));
        }
    }
    Ok(if libc::WIFEXITED(status) {
        crate::record::ExitInfo {
            code: Some(libc::WEXITSTATUS(status)),
            signal: None,
        }
    } else {
        crate::record::ExitInfo {
            code: None,
            signal: Some(libc::WTERMSIG(status)),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_execvp() {
        let path = OsStr::new("/nonexistent:/bin:/usr/bin");
        let sh = resolve_program(OsStr::new("sh"), Some(path)).unwrap();
        assert!(sh.ends_with("sh") && sh.is_absolute());
        assert_eq!(
            resolve_program(OsStr::new("./x"), None),
            Some(PathBuf::from("./x"))
        );
        assert_eq!(
            resolve_program(OsStr::new("no-such-tool-xyz"), Some(path)),
            None
        );
    }

    #[test]
    fn errors_before_any_clone() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            spawn_in_cgroup(dir.path(), &[], None),
            Err(SpawnError::EmptyCommand)
        ));
        let err = spawn_in_cgroup(dir.path(), &["no-such-tool-xyz".into()], None).unwrap_err();
        assert!(err.to_string().contains("not found"), "{err}");
        let err = spawn_in_cgroup(&dir.path().join("missing"), &["true".into()], None).unwrap_err();
        assert!(matches!(err, SpawnError::OpenCgroup { .. }), "{err}");
    }
}
