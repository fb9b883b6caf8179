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

/// The exit status of a tool that could not be exec'd, as a shell gives it: 127 when
/// the program is not there, 126 when it is but cannot be run.
pub const fn exec_failure_status(errno: i32) -> i32 {
    if errno == libc::ENOENT { 127 } else { 126 }
}

impl SpawnError {
    /// The exit status a shell would give a command that failed to start this way.
    pub fn exit_status(&self) -> i32 {
        match self {
            SpawnError::NotFound(_) => 127,
            SpawnError::Exec { source, .. } => {
                exec_failure_status(source.raw_os_error().unwrap_or(0))
            }
            _ => 126,
        }
    }
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
///
/// The child is created like `posix_spawn` does it, with `CLONE_VM | CLONE_VFORK`: it
/// borrows our address space on a stack of its own until it execs, so no page table is
/// copied, and we resume only once it has exec'd or failed (its errno is then in shared
/// memory; no pipe is needed). glibc ≥ 2.39 offers this as
/// `posix_spawnattr_setcgroup_np`; Debian 12's glibc 2.36 does not, hence the clone here.
/// Signal handlers must not run in the child while it shares our memory: all signals are
/// blocked across the clone, and the child resets the dispositions this process sets
/// (Rust's SIGSEGV/SIGBUS handlers, the ignored SIGPIPE, SIGINT, SIGQUIT) before it
/// unblocks them.
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

    let mut plan = ChildPlan {
        program: c_prog.as_ptr(),
        argv: arg_ptrs.as_ptr(),
        envp: env_ptrs.as_ptr(),
        oom_adj: oom_adj
            .as_deref()
            .map_or((std::ptr::null(), 0), |a| (a.as_ptr(), a.len())),
        exec_errno: 0,
    };
    let mut stack = Box::<[u8]>::new_uninit_slice(CHILD_STACK);
    let mut args = CloneArgs {
        flags: CLONE_INTO_CGROUP | libc::CLONE_VM as u64 | libc::CLONE_VFORK as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack.as_mut_ptr() as u64,
        stack_size: CHILD_STACK as u64,
        cgroup: dirfd.as_raw_fd() as u64,
        ..CloneArgs::default()
    };

    // SAFETY: sigset_t is plain data; pthread_sigmask only reads `all` and fills `old`.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the child runs `child_exec` on its own stack (`stack` outlives it: with
    // CLONE_VFORK we resume only after it has exec'd or exited) and reads `plan`, whose
    // pointers stay valid for as long.
    // The raw syscall returns -errno.
    let pid = unsafe { clone3_on_stack(&mut args, child_exec, (&raw mut plan).cast()) };
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(SpawnError::Clone {
            path: cgroup.to_path_buf(),
            source: std::io::Error::from_raw_os_error(-pid as i32),
        });
    }
    // SAFETY: the child is done with `plan` (CLONE_VFORK); read what it may have written.
    let exec_errno = unsafe { std::ptr::read_volatile(&raw const plan.exec_errno) };
    drop(stack);
    if exec_errno != 0 {
        let _ = wait(pid as libc::pid_t);
        return Err(SpawnError::Exec {
            program: resolved,
            source: std::io::Error::from_raw_os_error(exec_errno),
        });
    }
    Ok(pid as libc::pid_t)
}

/// The child's stack until exec: it only makes a handful of system calls.
const CHILD_STACK: usize = 64 << 10;

/// Everything the child reads, prepared before the clone (the child may not allocate),
/// and the one thing it writes: the errno of a failed exec.
struct ChildPlan {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    oom_adj: (*const u8, usize),
    exec_errno: i32,
}

/// `clone3(args)` where the child starts on `args.stack` and calls `entry(data)`, which
/// never returns; the parent gets the child's pid or -errno. A plain `syscall(2)` call
/// cannot do this: the child would return through a frame on the parent's stack.
///
/// # Safety
/// `args` must describe a valid 16-byte-aligned stack that outlives the child's use of
/// it, and `entry` must be safe to run on it with `data`.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_on_stack(
    args: &mut CloneArgs,
    entry: unsafe extern "C" fn(*mut std::ffi::c_void) -> !,
    data: *mut std::ffi::c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the kernel keeps every register but rax, rcx and r11 across `syscall`, in
    // the child too, whose rsp is the top of the new stack; the child path never reaches
    // the end of the block.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, {data}",
            "call {entry}",
            "ud2",
            "2:",
            entry = in(reg) entry,
            data = in(reg) data,
            inlateout("rax") libc::SYS_clone3 => ret,
            inout("rdi") std::ptr::from_mut(args) => _,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            out("rcx") _,
            out("r11") _,
        );
    }
    ret
}

/// The child between clone and exec: async-signal-safe system calls only.
///
/// # Safety
/// `data` points to a live [`ChildPlan`]; the parent is suspended (CLONE_VFORK).
unsafe extern "C" fn child_exec(data: *mut std::ffi::c_void) -> ! {
    // SAFETY: see the function's contract; every call below is a plain system call.
    unsafe {
        let plan = data.cast::<ChildPlan>();
        // Handlers of this process (Rust's) and its ignored signals return to the
        // defaults a tool expects; exec resets handlers but keeps SIG_IGN.
        for sig in [
            libc::SIGPIPE,
            libc::SIGINT,
            libc::SIGQUIT,
            libc::SIGTERM,
            libc::SIGSEGV,
            libc::SIGBUS,
        ] {
            libc::signal(sig, libc::SIG_DFL);
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        let (adj, adj_len) = (*plan).oom_adj;
        if adj_len > 0 {
            // Best effort: a kernel without the file still runs the tool.
            let fd = libc::open(
                c"/proc/self/oom_score_adj".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            if fd >= 0 {
                libc::write(fd, adj.cast(), adj_len);
                libc::close(fd);
            }
        }
        libc::execve((*plan).program, (*plan).argv, (*plan).envp);
        let errno = *libc::__errno_location();
        std::ptr::write_volatile(&raw mut (*plan).exec_errno, errno);
        // The status the client reports too: the kernel telemetry sees this exit as
        // the tool's (it was born in the cgroup) and may end the call with it first.
        libc::_exit(exec_failure_status(errno));
    }
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
    Ok(crate::record::ExitInfo::from_wait_status(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_exec_exits_as_a_shell_says() {
        assert_eq!(exec_failure_status(libc::ENOENT), 127);
        assert_eq!(exec_failure_status(libc::EACCES), 126);
        assert_eq!(exec_failure_status(libc::ENOEXEC), 126);
        let exec = |errno| SpawnError::Exec {
            program: PathBuf::from("/x"),
            source: std::io::Error::from_raw_os_error(errno),
        };
        assert_eq!(exec(libc::ENOENT).exit_status(), 127);
        assert_eq!(exec(libc::EACCES).exit_status(), 126);
        assert_eq!(SpawnError::NotFound("x".into()).exit_status(), 127);
        assert_eq!(SpawnError::EmptyCommand.exit_status(), 126);
    }

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
