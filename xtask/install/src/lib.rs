//! Installs agentcg (`cargo xtask install` builds the binaries and runs this): the
//! binaries, the systemd units with the prefix's agentcgd in ExecStart=, the policy
//! (kept if present), man pages and shell completions generated from the real clap
//! definitions, sysusers.d (groups agentcg and agentcg-admin) and tmpfiles.d.
//! `plan` decides the file list (pure); `apply` writes it under a DESTDIR.

pub mod apply;
pub mod generate;
pub mod layout;

use std::path::{Path, PathBuf};

use layout::{BINARIES, Content, Entry, Layout, POLICY_FILE};

/// Why an install cannot go ahead.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("the prefix `{}` is not an absolute path without `.` or `..`", .0.display())]
    Prefix(PathBuf),
    #[error("{unit}: no `{expected}` line to put the prefix's agentcgd in")]
    Unit { unit: String, expected: String },
    #[error("`{0}` is not a man page file name (NAME.SECTION)")]
    ManName(String),
    #[error("generating {0}: {1}")]
    Generate(String, std::io::Error),
    #[error("no {name} among the binaries given ({given})")]
    MissingBinary { name: String, given: String },
    #[error("`{}` is not one of the binaries agentcg installs ({})", .0.display(), BINARIES.join(", "))]
    UnknownBinary(PathBuf),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl InstallError {
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| InstallError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// What an install is made from.
#[derive(Debug, Clone)]
pub struct Sources {
    /// The built binaries (exactly agentcgd, agentcg and agentcg-claude).
    pub binaries: Vec<PathBuf>,
    /// The workspace: systemd/ and policies/ are read from it.
    pub workspace: PathBuf,
}

/// The unit files in systemd/.
pub const UNITS: [&str; 2] = ["agentcgd.service", "agentcgd.socket"];

/// Every file of an install under `prefix`, absolute paths on the target system.
pub fn plan(prefix: &Path, sources: &Sources) -> Result<Vec<Entry>, InstallError> {
    let layout = Layout::new(prefix)?;
    let mut entries = Vec::new();
    for (name, path) in binaries(&sources.binaries)? {
        entries.push(Entry {
            mode: 0o755,
            ..Entry::file(layout.bin.join(name), Content::Copy(path))
        });
    }
    let systemd = sources.workspace.join("systemd");
    for unit in UNITS {
        let path = systemd.join(unit);
        let text = std::fs::read_to_string(&path).map_err(InstallError::io(&path))?;
        let text = layout::unit_for(&text, unit, &layout)?;
        entries.push(Entry::file(
            layout.units.join(unit),
            Content::Bytes(text.into_bytes()),
        ));
    }
    entries.push(Entry::file(
        layout.sysusers.join("agentcg.conf"),
        Content::Copy(systemd.join("agentcg.sysusers")),
    ));
    entries.push(Entry::file(
        layout.tmpfiles.join("agentcg.conf"),
        Content::Copy(systemd.join("agentcg.tmpfiles")),
    ));
    entries.push(Entry {
        keep_existing: true,
        ..Entry::file(
            PathBuf::from(POLICY_FILE),
            Content::Copy(sources.workspace.join("policies/default.toml")),
        )
    });
    for page in generate::man_pages()? {
        let dest = layout::man_path(&layout, &page.name)?;
        entries.push(Entry::file(dest, Content::Bytes(page.text)));
    }
    for (name, shell) in generate::SHELLS {
        if let Some(dest) = layout::completion_path(&layout, name, "agentcg") {
            entries.push(Entry::file(
                dest,
                Content::Bytes(generate::completion(shell)),
            ));
        }
    }
    Ok(entries)
}

/// The given binaries by installed name: each of BINARIES exactly once, nothing else.
fn binaries(given: &[PathBuf]) -> Result<Vec<(&'static str, PathBuf)>, InstallError> {
    for path in given {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !BINARIES.contains(&name) {
            return Err(InstallError::UnknownBinary(path.clone()));
        }
    }
    BINARIES
        .iter()
        .map(|&name| {
            given
                .iter()
                .find(|p| p.file_name().and_then(|n| n.to_str()) == Some(name))
                .map(|p| (name, p.clone()))
                .ok_or_else(|| InstallError::MissingBinary {
                    name: name.to_owned(),
                    given: given
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources() -> Sources {
        Sources {
            binaries: BINARIES
                .iter()
                .map(|b| Path::new("/build").join(b))
                .collect(),
            workspace: Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."),
        }
    }

    #[test]
    fn the_plan_has_every_piece_once() {
        let entries = plan(Path::new("/usr/local"), &sources()).expect("plan");
        let dests: Vec<String> = entries
            .iter()
            .map(|e| e.dest.display().to_string())
            .collect();
        for want in [
            "/usr/local/bin/agentcgd",
            "/usr/local/bin/agentcg",
            "/usr/local/bin/agentcg-claude",
            "/usr/local/lib/systemd/system/agentcgd.service",
            "/usr/local/lib/systemd/system/agentcgd.socket",
            "/usr/local/lib/sysusers.d/agentcg.conf",
            "/usr/local/lib/tmpfiles.d/agentcg.conf",
            "/etc/agentcg/policy.toml",
            "/usr/local/share/man/man1/agentcg.1",
            "/usr/local/share/man/man8/agentcgd.8",
            "/usr/local/share/bash-completion/completions/agentcg",
            "/usr/local/share/zsh/site-functions/_agentcg",
            "/usr/local/share/fish/vendor_completions.d/agentcg.fish",
        ] {
            assert_eq!(
                dests.iter().filter(|d| *d == want).count(),
                1,
                "{want} in {dests:?}"
            );
        }
        let mut unique = dests.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), dests.len(), "a destination twice: {dests:?}");
        // Only the policy is kept when present; only the binaries are executable.
        for e in &entries {
            assert_eq!(
                e.keep_existing,
                e.dest == Path::new(POLICY_FILE),
                "{}",
                e.dest.display()
            );
            assert_eq!(
                e.mode == 0o755,
                e.dest.starts_with("/usr/local/bin"),
                "{}",
                e.dest.display()
            );
        }
    }

    #[test]
    fn the_installed_service_starts_the_prefix_agentcgd() {
        let entries = plan(Path::new("/usr"), &sources()).expect("plan");
        let service = entries
            .iter()
            .find(|e| e.dest == Path::new("/usr/lib/systemd/system/agentcgd.service"))
            .expect("service");
        let Content::Bytes(text) = &service.content else {
            panic!("the service is generated")
        };
        let text = String::from_utf8_lossy(text);
        assert!(
            text.lines()
                .any(|l| l.starts_with("ExecStart=/usr/bin/agentcgd ")),
            "{text}"
        );
        assert!(!text.contains("/usr/local"), "{text}");
    }

    #[test]
    fn binaries_must_be_exactly_the_three() {
        let mut s = sources();
        s.binaries.pop();
        let err = plan(Path::new("/usr"), &s).expect_err("missing");
        assert!(err.to_string().contains("no agentcg-claude"), "{err}");
        s.binaries.push("/build/agentcg-claude".into());
        s.binaries.push("/build/xtask".into());
        let err = plan(Path::new("/usr"), &s).expect_err("unknown");
        assert!(err.to_string().contains("/build/xtask"), "{err}");
    }
}
