//! cgroup v2 filesystem I/O. Every function takes the cgroup's path (nothing assumes
//! `/sys/fs/cgroup`), and every error carries the path, the value written and the
//! kernel's reply. One controller per file; interface file names are constants.

pub mod cpu;
pub mod layout;
pub mod limit;
pub mod memory;
pub mod pids;
pub mod psi;
pub mod reaper;

use std::io::ErrorKind;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// `cgroup.procs`: the processes in a cgroup.
pub const PROCS: &str = "cgroup.procs";
/// `cgroup.kill`: write 1 to SIGKILL every process in the subtree.
pub const KILL: &str = "cgroup.kill";
/// `cgroup.freeze`: write 1/0 to freeze/thaw the subtree.
pub const FREEZE: &str = "cgroup.freeze";
/// `cgroup.events`: `populated` and `frozen`.
pub const EVENTS: &str = "cgroup.events";
/// `cgroup.subtree_control`: controllers enabled for children.
pub const SUBTREE_CONTROL: &str = "cgroup.subtree_control";
/// `cgroup.controllers`: controllers available here.
pub const CONTROLLERS: &str = "cgroup.controllers";

/// `cgroup.threads`: the threads in a cgroup.
pub const THREADS: &str = "cgroup.threads";
/// The files a delegated cgroup's owner may write (cgroup v2 delegation: moving its
/// processes and enabling controllers below); limit files stay root's.
pub const DELEGATED: [&str; 3] = [PROCS, THREADS, SUBTREE_CONTROL];

/// A failed cgroupfs operation.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{op} {path}{}: {source}", value.as_ref().map(|v| format!(" (value `{v}`)")).unwrap_or_default())]
    Io {
        op: &'static str,
        path: PathBuf,
        value: Option<String>,
        source: std::io::Error,
    },
    #[error("parsing {path}: {reason} in `{text}`")]
    Parse {
        path: PathBuf,
        text: String,
        reason: String,
    },
}

impl CgroupError {
    /// The OS error behind this error, if any.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            CgroupError::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// A cgroup directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    pub fn new(path: impl Into<PathBuf>) -> Cgroup {
        Cgroup { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Delegates the cgroup to `uid` the kernel's way: its [`DELEGATED`] files become
    /// `uid`'s, so processes of `uid` may move in and out of it (with the same right
    /// on the common ancestor) and `clone3(CLONE_INTO_CGROUP)` into it. Nothing for
    /// root.
    pub fn delegate(&self, uid: u32) -> Result<(), CgroupError> {
        if uid == 0 {
            return Ok(());
        }
        for name in DELEGATED {
            let path = self.path.join(name);
            match std::os::unix::fs::chown(&path, Some(uid), None) {
                Ok(()) => {}
                // A file this kernel does not have is not delegated.
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(CgroupError::Io {
                        op: "chown",
                        path,
                        value: Some(uid.to_string()),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    pub fn exists(&self) -> bool {
        self.path.join(PROCS).exists()
    }

    /// Creates the cgroup (its parent must exist). An existing cgroup is an error
    /// unless `allow_existing`.
    pub fn create(&self, allow_existing: bool) -> Result<(), CgroupError> {
        match std::fs::create_dir(&self.path) {
            Err(e) if e.kind() == ErrorKind::AlreadyExists && allow_existing => Ok(()),
            r => r.map_err(|source| self.io("mkdir", &self.path, None, source)),
        }
    }

    fn io(
        &self,
        op: &'static str,
        path: &Path,
        value: Option<&str>,
        source: std::io::Error,
    ) -> CgroupError {
        CgroupError::Io {
            op,
            path: path.to_path_buf(),
            value: value.map(str::to_string),
            source,
        }
    }

    /// Writes `value` into the interface file `file`.
    pub fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.path.join(file);
        std::fs::write(&path, value).map_err(|source| self.io("write", &path, Some(value), source))
    }

    /// Reads the interface file `file`. Interface files report size 0, so a plain
    /// `read_to_string` would stat the file and then read it in small growing pieces;
    /// a page-sized buffer takes the whole of any file we read in one `read(2)` (plus
    /// the one that sees the end), which counts on the per-call path.
    pub fn read(&self, file: &str) -> Result<String, CgroupError> {
        let path = self.path.join(file);
        let bytes = read_all(&path).map_err(|source| self.io("read", &path, None, source))?;
        String::from_utf8(bytes).map_err(|e| CgroupError::Parse {
            path,
            text: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            reason: "not UTF-8".into(),
        })
    }

    /// Reads a single-number file (`max` is `u64::MAX`).
    pub fn read_u64(&self, file: &str) -> Result<u64, CgroupError> {
        let text = self.read(file)?;
        parse_u64_or_max(text.trim()).ok_or_else(|| CgroupError::Parse {
            path: self.path.join(file),
            text: text.trim().to_string(),
            reason: "expected a number or `max`".into(),
        })
    }

    /// Reads a flat-keyed file (`key value` per line) such as `memory.events`.
    pub fn read_flat(&self, file: &str) -> Result<Vec<(String, u64)>, CgroupError> {
        let text = self.read(file)?;
        parse_flat_keyed(&text).map_err(|reason| CgroupError::Parse {
            path: self.path.join(file),
            text,
            reason,
        })
    }

    /// The cgroup id: the inode number of its directory (what BPF's
    /// `bpf_get_current_cgroup_id()` returns).
    pub fn id(&self) -> Result<u64, CgroupError> {
        std::fs::metadata(&self.path)
            .map(|m| m.ino())
            .map_err(|source| self.io("stat", &self.path, None, source))
    }

    /// Whether any process lives in this cgroup's subtree.
    pub fn populated(&self) -> Result<bool, CgroupError> {
        let events = self.read_flat(EVENTS)?;
        Ok(events.iter().any(|(k, v)| k == "populated" && *v == 1))
    }

    /// Pids of the processes directly in this cgroup.
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        Ok(self
            .read(PROCS)?
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect())
    }

    /// Moves a process into this cgroup.
    pub fn attach(&self, pid: u32) -> Result<(), CgroupError> {
        self.write(PROCS, &pid.to_string())
    }

    /// SIGKILLs every process of the subtree (`cgroup.kill`).
    pub fn kill(&self) -> Result<(), CgroupError> {
        self.write(KILL, "1")
    }

    /// Freezes or thaws the subtree.
    pub fn freeze(&self, frozen: bool) -> Result<(), CgroupError> {
        self.write(FREEZE, if frozen { "1" } else { "0" })
    }

    /// Enables controllers for children (`+cpu +memory +pids`), skipping those the
    /// parent does not offer.
    pub fn enable_controllers(&self, wanted: &[&str]) -> Result<(), CgroupError> {
        let available = self.read(CONTROLLERS)?;
        let enabled = self.read(SUBTREE_CONTROL)?;
        let missing: Vec<String> = wanted
            .iter()
            .filter(|c| available.split_whitespace().any(|a| a == **c))
            .filter(|c| !enabled.split_whitespace().any(|a| a == **c))
            .map(|c| format!("+{c}"))
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        self.write(SUBTREE_CONTROL, &missing.join(" "))
    }

    /// How many processes live in the subtree. An empty subtree (the common case: a
    /// call whose tool exited) costs one read of `cgroup.events`; otherwise a leaf's own
    /// `cgroup.procs` says it all and a subtree takes the walk.
    pub fn count_procs(&self) -> usize {
        if !self.populated().unwrap_or(true) {
            return 0;
        }
        let own = self.procs().map(|p| p.len()).unwrap_or(0);
        if own > 0 {
            return own;
        }
        self.count_procs_recursive()
    }

    fn count_procs_recursive(&self) -> usize {
        let own = self.procs().map(|p| p.len()).unwrap_or(0);
        own + self
            .children()
            .iter()
            .map(Cgroup::count_procs_recursive)
            .sum::<usize>()
    }

    /// Child cgroups.
    pub fn children(&self) -> Vec<Cgroup> {
        let Ok(dir) = std::fs::read_dir(&self.path) else {
            return Vec::new();
        };
        dir.filter_map(Result::ok)
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| Cgroup::new(e.path()))
            .collect()
    }

    /// Removes this cgroup and its child cgroups, deepest first, if nothing lives in
    /// them: `Ok(true)` when gone, `Ok(false)` while the kernel still holds one (EBUSY:
    /// exited tasks are still being torn down). Never waits. A leaf (a call's cgroup,
    /// unless its tool made cgroups of its own) goes with one rmdir; the kernel answers
    /// EBUSY for a cgroup with children as for a populated one, and only then are the
    /// children listed.
    pub fn remove_empty(&self) -> Result<bool, CgroupError> {
        if self.rmdir()? {
            return Ok(true);
        }
        let children = self.children();
        if children.is_empty() {
            return Ok(false);
        }
        for child in children {
            if !child.remove_empty()? {
                return Ok(false);
            }
        }
        self.rmdir()
    }

    /// rmdir: `Ok(false)` on EBUSY (populated, or children left).
    fn rmdir(&self) -> Result<bool, CgroupError> {
        match std::fs::remove_dir(&self.path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(true),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => Ok(false),
            Err(source) => Err(self.io("rmdir", &self.path, None, source)),
        }
    }
}

/// The whole file, read into a page-sized buffer that grows only if needed (no stat,
/// no size guess: `File::read_to_string` would stat it and seek).
fn read_all(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => {
                len += n;
                if len == buf.len() {
                    buf.resize(len * 2, 0);
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// `"123"` → 123, `"max"` → `u64::MAX`.
pub fn parse_u64_or_max(text: &str) -> Option<u64> {
    if text == "max" {
        Some(u64::MAX)
    } else {
        text.parse().ok()
    }
}

/// Parses `key value` lines.
pub fn parse_flat_keyed(text: &str) -> Result<Vec<(String, u64)>, String> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut it = line.split_whitespace();
            match (it.next(), it.next().and_then(parse_u64_or_max), it.next()) {
                (Some(k), Some(v), None) => Ok((k.to_string(), v)),
                _ => Err(format!("bad line `{line}`")),
            }
        })
        .collect()
}

/// The value of `key` in flat-keyed pairs, 0 when absent.
pub fn flat_get(pairs: &[(String, u64)], key: &str) -> u64 {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flat_keyed_parsing() {
        let pairs = parse_flat_keyed("low 0\nhigh 12\nmax 3\noom 1\noom_kill 1\n").unwrap();
        assert_eq!(flat_get(&pairs, "high"), 12);
        assert_eq!(flat_get(&pairs, "oom_kill"), 1);
        assert_eq!(flat_get(&pairs, "absent"), 0);
        assert!(parse_flat_keyed("populated").is_err());
        assert!(parse_flat_keyed("a 1 2").is_err());
        assert_eq!(parse_u64_or_max("max"), Some(u64::MAX));
    }

    #[test]
    fn io_errors_carry_path_and_value() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(dir.path().join("nope"));
        let err = cg.write("memory.max", "64M").unwrap_err().to_string();
        assert!(
            err.contains("nope/memory.max") && err.contains("`64M`"),
            "{err}"
        );
    }

    #[test]
    fn fixture_reads_and_destroy_of_an_empty_tree() {
        let dir = tempfile::tempdir().unwrap();
        let cg = Cgroup::new(dir.path().join("call-1"));
        cg.create(false).unwrap();
        assert!(cg.create(false).is_err());
        cg.create(true).unwrap();
        std::fs::write(cg.path().join("memory.peak"), "4096\n").unwrap();
        std::fs::write(cg.path().join(EVENTS), "populated 0\nfrozen 0\n").unwrap();
        std::fs::write(cg.path().join(PROCS), "").unwrap();
        assert_eq!(cg.read_u64("memory.peak").unwrap(), 4096);
        assert!(!cg.populated().unwrap());
        assert_eq!(cg.count_procs(), 0);
        // A fixture directory holds regular files, which rmdir refuses: on cgroupfs
        // the interface files vanish with the directory.
        assert!(cg.remove_empty().is_err());
        let missing = Cgroup::new(dir.path().join("gone"));
        assert!(missing.remove_empty().unwrap());
    }
}
