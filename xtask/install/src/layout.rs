//! Where each installed file goes for a given prefix: a pure decision, so the file list
//! can be checked without installing anything. The systemd units, sysusers.d and
//! tmpfiles.d files go under the prefix when systemd searches there (/usr and
//! /usr/local), else under /etc, which it always searches.

use std::path::{Path, PathBuf};

use crate::InstallError;

/// The binaries an install carries, all built from this workspace.
pub const BINARIES: [&str; 3] = ["agentcgd", "agentcg", "agentcg-claude"];
/// The policy agentcgd.service reads (`--policy`), created once and never overwritten.
pub const POLICY_FILE: &str = "/etc/agentcg/policy.toml";
/// Where the units in systemd/ expect agentcgd; the install puts the prefix's path there.
pub const UNIT_BIN: &str = "/usr/local/bin/agentcgd";

/// The directories of one install.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub bin: PathBuf,
    pub man: PathBuf,
    pub share: PathBuf,
    pub units: PathBuf,
    pub sysusers: PathBuf,
    pub tmpfiles: PathBuf,
}

impl Layout {
    /// The layout for `prefix`, which must be absolute and plain (no `.` or `..`).
    pub fn new(prefix: &Path) -> Result<Self, InstallError> {
        // Path::components drops a `.` in the middle, so the segments are checked as text.
        let plain = prefix.is_absolute()
            && prefix
                .as_os_str()
                .as_encoded_bytes()
                .split(|b| *b == b'/')
                .all(|seg| seg != b"." && seg != b"..");
        if !plain {
            return Err(InstallError::Prefix(prefix.to_path_buf()));
        }
        let systemd_searches_prefix =
            prefix == Path::new("/usr") || prefix == Path::new("/usr/local");
        let lib = if systemd_searches_prefix {
            prefix.join("lib")
        } else {
            PathBuf::from("/etc")
        };
        Ok(Layout {
            bin: prefix.join("bin"),
            man: prefix.join("share/man"),
            share: prefix.join("share"),
            units: lib.join("systemd/system"),
            sysusers: lib.join("sysusers.d"),
            tmpfiles: lib.join("tmpfiles.d"),
        })
    }
}

/// What an installed file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A copy of this file.
    Copy(PathBuf),
    /// Generated text (units with the prefix put in, man pages, completions).
    Bytes(Vec<u8>),
}

/// One file to install: its absolute path on the target system (before DESTDIR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub dest: PathBuf,
    pub content: Content,
    pub mode: u32,
    /// Configuration the operator may have edited: an existing file is kept.
    pub keep_existing: bool,
}

impl Entry {
    pub fn file(dest: PathBuf, content: Content) -> Self {
        Entry {
            dest,
            content,
            mode: 0o644,
            keep_existing: false,
        }
    }
}

/// The unit text with agentcgd's path under `layout`; fails if the unit does not name
/// the path it is expected to (a unit edited without the installer).
pub fn unit_for(text: &str, unit: &str, layout: &Layout) -> Result<String, InstallError> {
    let exec = format!("ExecStart={UNIT_BIN}");
    if unit.ends_with(".service") && !text.lines().any(|l| l.starts_with(&exec)) {
        return Err(InstallError::Unit {
            unit: unit.to_owned(),
            expected: exec,
        });
    }
    Ok(text.replace(UNIT_BIN, &layout.bin.join("agentcgd").to_string_lossy()))
}

/// Where a shell's completion file for `bin` goes.
pub fn completion_path(layout: &Layout, shell: &str, bin: &str) -> Option<PathBuf> {
    let share = &layout.share;
    match shell {
        "bash" => Some(share.join("bash-completion/completions").join(bin)),
        "zsh" => Some(share.join("zsh/site-functions").join(format!("_{bin}"))),
        "fish" => Some(
            share
                .join("fish/vendor_completions.d")
                .join(format!("{bin}.fish")),
        ),
        _ => None,
    }
}

/// Where a man page goes, from its file name (`agentcg-run.1`: section 1).
pub fn man_path(layout: &Layout, file: &str) -> Result<PathBuf, InstallError> {
    let section = file
        .rsplit_once('.')
        .map(|(_, s)| s)
        .filter(|s| matches!(*s, "1" | "5" | "8"))
        .ok_or_else(|| InstallError::ManName(file.to_owned()))?;
    Ok(layout.man.join(format!("man{section}")).join(file))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usr_and_usr_local_keep_systemd_files_under_the_prefix() {
        let l = Layout::new(Path::new("/usr/local")).expect("layout");
        assert_eq!(l.bin, Path::new("/usr/local/bin"));
        assert_eq!(l.units, Path::new("/usr/local/lib/systemd/system"));
        assert_eq!(l.sysusers, Path::new("/usr/local/lib/sysusers.d"));
        let l = Layout::new(Path::new("/usr")).expect("layout");
        assert_eq!(l.tmpfiles, Path::new("/usr/lib/tmpfiles.d"));
        assert_eq!(l.man, Path::new("/usr/share/man"));
    }

    #[test]
    fn other_prefixes_put_systemd_files_where_systemd_looks() {
        let l = Layout::new(Path::new("/opt/agentcg")).expect("layout");
        assert_eq!(l.bin, Path::new("/opt/agentcg/bin"));
        assert_eq!(l.units, Path::new("/etc/systemd/system"));
        assert_eq!(l.sysusers, Path::new("/etc/sysusers.d"));
        assert_eq!(l.tmpfiles, Path::new("/etc/tmpfiles.d"));
    }

    #[test]
    fn a_relative_or_dotted_prefix_is_refused() {
        for bad in ["usr/local", "/usr/../opt", "/usr/./local", ""] {
            let err = Layout::new(Path::new(bad)).expect_err(bad);
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn the_service_runs_agentcgd_from_the_prefix() {
        let l = Layout::new(Path::new("/usr")).expect("layout");
        let text = "[Service]\nExecStart=/usr/local/bin/agentcgd --stop-ends-calls\n";
        let out = unit_for(text, "agentcgd.service", &l).expect("unit");
        assert_eq!(
            out,
            "[Service]\nExecStart=/usr/bin/agentcgd --stop-ends-calls\n"
        );
        let err = unit_for("[Service]\nExecStart=/bin/true\n", "agentcgd.service", &l)
            .expect_err("unexpected ExecStart");
        assert!(err.to_string().contains("agentcgd.service"), "{err}");
        // The socket unit names no binary and passes through unchanged.
        let socket = "[Socket]\nListenStream=/run/agentcg/agentcg.sock\n";
        assert_eq!(
            unit_for(socket, "agentcgd.socket", &l).expect("socket"),
            socket
        );
    }

    #[test]
    fn man_pages_go_to_their_section() {
        let l = Layout::new(Path::new("/usr/local")).expect("layout");
        assert_eq!(
            man_path(&l, "agentcg-session-create.1").expect("man"),
            Path::new("/usr/local/share/man/man1/agentcg-session-create.1")
        );
        assert_eq!(
            man_path(&l, "agentcgd.8").expect("man"),
            Path::new("/usr/local/share/man/man8/agentcgd.8")
        );
        assert!(man_path(&l, "agentcg").is_err());
    }

    #[test]
    fn completions_go_where_each_shell_looks() {
        let l = Layout::new(Path::new("/usr")).expect("layout");
        let p = |s| completion_path(&l, s, "agentcg").expect(s);
        assert_eq!(
            p("bash"),
            Path::new("/usr/share/bash-completion/completions/agentcg")
        );
        assert_eq!(
            p("zsh"),
            Path::new("/usr/share/zsh/site-functions/_agentcg")
        );
        assert_eq!(
            p("fish"),
            Path::new("/usr/share/fish/vendor_completions.d/agentcg.fish")
        );
        assert_eq!(completion_path(&l, "tcsh", "agentcg"), None);
    }
}
