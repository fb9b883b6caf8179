//! Writes a planned install under a DESTDIR (`/` for the live system): each file is
//! written beside its destination and renamed over it, so a running agentcgd or a
//! reader never sees half a file; configuration that exists already is kept.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::InstallError;
use crate::layout::{Content, Entry};

/// What an install did, by path under DESTDIR.
#[derive(Debug, Default)]
pub struct Report {
    pub written: Vec<PathBuf>,
    /// Configuration left as it was.
    pub kept: Vec<PathBuf>,
}

/// `dest` (absolute) under `destdir`.
pub fn under(destdir: &Path, dest: &Path) -> PathBuf {
    destdir.join(dest.strip_prefix("/").unwrap_or(dest))
}

/// Installs every entry under `destdir`.
pub fn apply(entries: &[Entry], destdir: &Path) -> Result<Report, InstallError> {
    let mut report = Report::default();
    for entry in entries {
        let path = under(destdir, &entry.dest);
        if entry.keep_existing && path.exists() {
            report.kept.push(path);
            continue;
        }
        write(entry, &path)?;
        report.written.push(path);
    }
    Ok(report)
}

fn write(entry: &Entry, path: &Path) -> Result<(), InstallError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir).map_err(InstallError::io(dir))?;
    let bytes = match &entry.content {
        Content::Bytes(b) => b.clone(),
        Content::Copy(src) => std::fs::read(src).map_err(InstallError::io(src))?,
    };
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.agentcg-install"));
    let result = (|| {
        let mut file = std::fs::File::create(&tmp)?;
        file.write_all(&bytes)?;
        file.set_permissions(std::fs::Permissions::from_mode(entry.mode))?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        InstallError::io(path)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configuration_is_kept_and_the_rest_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = Entry {
            keep_existing: true,
            ..Entry::file("/etc/x/conf".into(), Content::Bytes(b"new".to_vec()))
        };
        let bin = Entry {
            mode: 0o755,
            ..Entry::file("/bin/tool".into(), Content::Bytes(b"v2".to_vec()))
        };
        let first = apply(&[conf.clone(), bin.clone()], dir.path()).expect("first");
        assert_eq!(first.written.len(), 2);
        std::fs::write(dir.path().join("etc/x/conf"), "edited").expect("edit");
        let again = apply(&[conf, bin], dir.path()).expect("again");
        assert_eq!(again.kept, [dir.path().join("etc/x/conf")]);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("etc/x/conf")).expect("read"),
            "edited"
        );
        let mode = std::fs::metadata(dir.path().join("bin/tool"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
        assert!(!dir.path().join("bin/.tool.agentcg-install").exists());
    }

    #[test]
    fn a_missing_source_names_itself_and_writes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = Entry::file("/a/b".into(), Content::Copy("/nonexistent/agentcgd".into()));
        let err = apply(&[e], dir.path()).expect_err("missing source");
        assert!(err.to_string().contains("/nonexistent/agentcgd"), "{err}");
        assert!(!dir.path().join("a/b").exists());
    }
}
