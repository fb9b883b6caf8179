//! `agentcg-install` into a temporary DESTDIR with this build's binaries: every file is
//! there with its mode, the man pages render without a groff warning, systemd's own
//! tools accept the sysusers.d, tmpfiles.d and unit files where they were put (they
//! find them through their search paths under `--root`), and a second install keeps an
//! edited policy. groff, systemd-sysusers, systemd-tmpfiles and systemd-analyze come
//! with Debian 12 (xtask/provision.sh installs systemd); a missing one fails the test.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// agentcg-install, and beside it the binaries it installs (cargo builds the bins of
/// every workspace member before `cargo test --workspace` runs a test).
fn built(name: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_BIN_EXE_agentcg-install")).with_file_name(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --workspace` first",
        path.display()
    );
    path
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (install it: xtask/provision.sh build)"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn install(destdir: &Path, prefix: &str) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_agentcg-install"));
    cmd.arg("--prefix")
        .arg(prefix)
        .arg("--destdir")
        .arg(destdir);
    cmd.arg("--workspace").arg(workspace());
    for bin in ["agentcgd", "agentcg", "agentcg-claude"] {
        cmd.arg("--bin").arg(built(bin));
    }
    String::from_utf8_lossy(&run(&mut cmd).stdout).into_owned()
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

#[test]
fn an_install_has_every_file_and_systemd_accepts_them() {
    let dest = tempfile::tempdir().expect("tempdir");
    let d = dest.path();
    install(d, "/usr/local");
    for bin in ["agentcgd", "agentcg", "agentcg-claude"] {
        let path = d.join("usr/local/bin").join(bin);
        assert_eq!(mode(&path), 0o755, "{}", path.display());
        assert_eq!(
            std::fs::read(&path).expect("installed"),
            std::fs::read(built(bin)).expect("built"),
            "{bin} is not the built binary"
        );
    }
    for file in [
        "usr/local/lib/systemd/system/agentcgd.service",
        "usr/local/lib/systemd/system/agentcgd.socket",
        "usr/local/lib/sysusers.d/agentcg.conf",
        "usr/local/lib/tmpfiles.d/agentcg.conf",
        "etc/agentcg/policy.toml",
        "usr/local/share/bash-completion/completions/agentcg",
        "usr/local/share/zsh/site-functions/_agentcg",
        "usr/local/share/fish/vendor_completions.d/agentcg.fish",
    ] {
        assert_eq!(mode(&d.join(file)), 0o644, "{file}");
    }
    let policy = std::fs::read_to_string(d.join("etc/agentcg/policy.toml")).expect("policy");
    assert_eq!(
        policy,
        std::fs::read_to_string(workspace().join("policies/default.toml")).expect("default")
    );

    // Man pages: agentcg(1), one per subcommand, agentcgd(8); each renders cleanly.
    let man1 = d.join("usr/local/share/man/man1");
    let pages: Vec<PathBuf> = std::fs::read_dir(&man1)
        .expect("man1")
        .map(|e| e.expect("entry").path())
        .collect();
    for page in [
        "agentcg.1",
        "agentcg-run.1",
        "agentcg-session-list.1",
        "agentcg-policy-check.1",
    ] {
        assert!(pages.contains(&man1.join(page)), "{page} not in {pages:?}");
    }
    let man8 = d.join("usr/local/share/man/man8/agentcgd.8");
    for page in pages.iter().chain([&man8]) {
        let out = run(Command::new("groff")
            .args(["-man", "-Tutf8", "-ww"])
            .arg(page));
        assert!(
            out.stderr.is_empty(),
            "{}: {}",
            page.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = run(Command::new("groff")
        .args(["-man", "-Tutf8", "-P", "-cbou"])
        .arg(&man8));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--stop-ends-calls"), "{text}");
    assert!(text.contains("--metrics-listen"), "{text}");

    // sysusers.d: found through systemd's search path under the root, both groups made.
    let out = run(Command::new("systemd-sysusers")
        .arg(format!("--root={}", d.display()))
        .arg("--dry-run"));
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    for group in ["'agentcg'", "'agentcg-admin'"] {
        assert!(said.contains(&format!("Creating group {group}")), "{said}");
    }
    // tmpfiles.d: found the same way, and its directories really made.
    run(Command::new("systemd-tmpfiles")
        .arg(format!("--root={}", d.display()))
        .arg("--create"));
    for dir in ["run/agentcg", "var/lib/agentcg", "etc/agentcg"] {
        assert!(d.join(dir).is_dir(), "{dir} not created");
    }

    // The installed units verify, with ExecStart= on the installed agentcgd.
    let units = tempfile::tempdir().expect("tempdir");
    let installed_bin = d.join("usr/local/bin/agentcgd");
    let mut names = Vec::new();
    for unit in ["agentcgd.service", "agentcgd.socket"] {
        let text = std::fs::read_to_string(d.join("usr/local/lib/systemd/system").join(unit))
            .expect("unit");
        let path = units.path().join(unit);
        std::fs::write(
            &path,
            text.replace("/usr/local/bin/agentcgd", &installed_bin.to_string_lossy()),
        )
        .expect("write");
        names.push(path);
    }
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&names)
        .output()
        .expect("systemd-analyze");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify:\n{said}"
    );
}

#[test]
fn a_reinstall_keeps_the_operators_policy_and_another_prefix_moves_the_units_to_etc() {
    let dest = tempfile::tempdir().expect("tempdir");
    let d = dest.path();
    install(d, "/opt/agentcg");
    let service =
        std::fs::read_to_string(d.join("etc/systemd/system/agentcgd.service")).expect("service");
    assert!(
        service
            .lines()
            .any(|l| l.starts_with("ExecStart=/opt/agentcg/bin/agentcgd ")),
        "{service}"
    );
    assert!(d.join("etc/sysusers.d/agentcg.conf").is_file());
    assert!(d.join("opt/agentcg/share/man/man8/agentcgd.8").is_file());
    std::fs::write(d.join("etc/agentcg/policy.toml"), "# edited\n").expect("edit");
    let said = install(d, "/opt/agentcg");
    assert!(said.contains("kept"), "{said}");
    assert_eq!(
        std::fs::read_to_string(d.join("etc/agentcg/policy.toml")).expect("policy"),
        "# edited\n"
    );
}
