//! `cargo xtask package`: the Debian package `agentcg`. Stages a release install with
//! prefix /usr in target/agentcg-deb/root (the installer decides every file, as for
//! `cargo xtask install`), packages it with `cargo deb --no-build` (xtask/install's
//! `[package.metadata.deb]`: maintainer scripts run systemd-sysusers, systemd-tmpfiles
//! and daemon-reload), then checks the package with `dpkg-deb --info` and that
//! `dpkg-deb --contents` lists every staged file.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

use crate::host::{self, Workspace};
use crate::install;
use crate::provision::{self, Which};

/// Build the Debian package agentcg (cargo-deb) and check its contents
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Package debug builds (faster to build; for trying the packaging itself)
    #[arg(long)]
    debug: bool,
}

pub fn main(ws: &Workspace, args: &Args) -> Result<ExitCode> {
    provision::ensure(ws, Which::Package)?;
    let stage = ws.target.join("agentcg-deb");
    if ws.target != ws.root.join("target") {
        bail!(
            "the package's assets are read from target/agentcg-deb of the workspace; \
             unset CARGO_TARGET_DIR ({}) for `cargo xtask package`",
            ws.target.display()
        );
    }
    let root = stage.join("root");
    if root.exists() {
        std::fs::remove_dir_all(&root).with_context(|| format!("removing {}", root.display()))?;
    }
    install::run(
        ws,
        &install::Args {
            prefix: "/usr".into(),
            destdir: root.clone(),
            debug: args.debug,
        },
    )?;
    let mut deb = ws.cargo();
    deb.args([
        "deb",
        "-p",
        "agentcg-install",
        "--no-build",
        "--no-strip",
        "--output",
    ])
    .arg(&stage);
    host::run(
        &mut deb,
        "cargo deb failed (xtask/provision.sh package installs cargo-deb)",
    )?;
    let package = newest_deb(&stage)?;
    host::run(
        Command::new("dpkg-deb").arg("--info").arg(&package),
        "dpkg-deb cannot read the package",
    )?;
    let listing = Command::new("dpkg-deb")
        .arg("--contents")
        .arg(&package)
        .output()
        .context("dpkg-deb --contents")?;
    let listing = String::from_utf8_lossy(&listing.stdout);
    let missing = missing_from(&staged_files(&root, &root)?, &listing);
    if !missing.is_empty() {
        bail!("{} lacks staged files: {missing:?}", package.display());
    }
    eprintln!("[xtask] {} holds every staged file", package.display());
    Ok(ExitCode::SUCCESS)
}

/// The .deb cargo-deb just wrote in `dir`.
fn newest_deb(dir: &Path) -> Result<PathBuf> {
    let mut debs: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .collect();
    debs.sort();
    debs.pop()
        .map(|(_, p)| p)
        .with_context(|| format!("cargo deb wrote no .deb in {}", dir.display()))
}

/// Every file under `dir`, as `/path` relative to `root`.
fn staged_files(root: &Path, dir: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(staged_files(root, &path)?);
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            files.push(format!("/{}", rel.display()));
        }
    }
    Ok(files)
}

/// The staged files that `dpkg-deb --contents` (tar -tv lines ending in `./path`) lacks;
/// a man page may be there gzipped, as cargo-deb packs them (Debian policy 12.1).
fn missing_from(staged: &[String], listing: &str) -> Vec<String> {
    let listed: BTreeSet<String> = listing
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .map(|p| p.trim_start_matches('.').to_owned())
        .collect();
    staged
        .iter()
        .filter(|f| {
            let gzipped = f.contains("/share/man/") && listed.contains(&format!("{f}.gz"));
            !listed.contains(f.as_str()) && !gzipped
        })
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_missing_from_the_listing_is_named() {
        let listing = "\
drwxr-xr-x 0/0               0 2026-12-06 05:00 ./usr/bin/
-rwxr-xr-x 0/0         3412552 2026-12-06 05:00 ./usr/bin/agentcgd
-rw-r--r-- 0/0            4096 2026-12-06 05:00 ./etc/agentcg/policy.toml
-rw-r--r-- 0/0            1305 2026-12-06 05:00 ./usr/share/man/man8/agentcgd.8.gz
-rw-r--r-- 0/0            1305 2026-12-06 05:00 ./etc/agentcg/x.gz
";
        let staged = [
            "/usr/bin/agentcgd",
            "/etc/agentcg/policy.toml",
            "/usr/share/man/man8/agentcgd.8",
            "/usr/bin/agentcg",
            "/etc/agentcg/x",
        ]
        .map(String::from);
        // Only man pages may be gzipped.
        assert_eq!(
            missing_from(&staged, listing),
            ["/usr/bin/agentcg", "/etc/agentcg/x"]
        );
        assert!(missing_from(&staged[..3], listing).is_empty());
    }
}
