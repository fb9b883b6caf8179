//! Where agentcgd's cgroup subtree lives (`--root`). `auto`, the default, means the
//! unit's own delegated cgroup when systemd started the daemon, and
//! `/sys/fs/cgroup/agentcg` elsewhere. systemd supports no cgroup created outside a
//! delegated subtree, and the cgroup v2 "no internal processes" rule forbids enabling
//! controllers for children of a cgroup that holds processes: so under systemd the
//! daemon moves itself into the leaf `<own cgroup>/daemon` and creates the sessions
//! beside it. With systemd ≥ 254's `DelegateSubgroup=daemon` (systemd/agentcgd.service)
//! systemd starts it in that leaf already: its root is then the leaf's parent, never a
//! `daemon/daemon`. That is what lets systemd restart a crashed daemon while sessions
//! live beside it (docs/ARCHITECTURE.md#restart).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use agentcg_core::cgroup::Cgroup;

/// The cgroup v2 mount, the base of every cgroup path in /proc/self/cgroup.
pub const CGROUP_MOUNT: &str = "/sys/fs/cgroup";
/// The root outside systemd: a top-level cgroup of agentcg's own, under the mount.
pub const STANDALONE_DIR: &str = "agentcg";
/// The daemon's own leaf inside its root, under systemd.
pub const DAEMON_LEAF: &str = "daemon";

/// The `--root` flag: a path, or `auto`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootArg {
    Auto,
    Path(PathBuf),
}

impl FromStr for RootArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(RootArg::Auto),
            "" => Err("the root is empty: give a cgroup directory or `auto`".into()),
            path if !path.starts_with('/') => Err(format!(
                "`{path}` is not an absolute cgroup directory (or `auto`)"
            )),
            path => Ok(RootArg::Path(PathBuf::from(path))),
        }
    }
}

/// The subtree the daemon runs, and the leaf it must move itself into first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub root: PathBuf,
    /// `Some` under systemd: the daemon's leaf (`<root>/daemon`), beside the sessions.
    pub daemon_leaf: Option<PathBuf>,
}

/// A process's cgroup from the text of its /proc/PID/cgroup (the cgroup v2 line
/// `0::/path`), or `None` if it has none (a cgroup v1 host).
pub fn cgroup_v2_path(proc_pid_cgroup: &str) -> Option<&str> {
    proc_pid_cgroup
        .lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::trim)
}

/// Decides the placement. `own` is the daemon's cgroup (as /proc/self/cgroup says it)
/// when systemd started it, else `None`.
pub fn place(arg: &RootArg, own: Option<&str>, mount: &Path) -> Placement {
    let standalone = |root: PathBuf| Placement {
        root,
        daemon_leaf: None,
    };
    match (arg, own) {
        (RootArg::Path(root), _) => standalone(root.clone()),
        // The root cgroup itself is no unit's: systemd did not delegate it.
        (RootArg::Auto, None | Some("/")) => standalone(mount.join(STANDALONE_DIR)),
        (RootArg::Auto, Some(own)) => {
            let own = mount.join(own.trim_start_matches('/'));
            let root = match own.file_name() {
                Some(name) if name == DAEMON_LEAF => own.parent().unwrap_or(&own).to_path_buf(),
                _ => own,
            };
            Placement {
                daemon_leaf: Some(root.join(DAEMON_LEAF)),
                root,
            }
        }
    }
}

/// Whether systemd started this process as a service (it sets `INVOCATION_ID` for
/// every unit it runs).
pub fn under_systemd() -> bool {
    std::env::var_os("INVOCATION_ID").is_some()
}

/// Resolves `--root` for this process.
pub fn resolve(arg: &RootArg) -> Result<Placement, String> {
    if *arg != RootArg::Auto || !under_systemd() {
        return Ok(place(arg, None, Path::new(CGROUP_MOUNT)));
    }
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| format!("reading /proc/self/cgroup for --root auto: {e}"))?;
    let own = cgroup_v2_path(&text).ok_or_else(|| {
        "--root auto under systemd: /proc/self/cgroup has no cgroup v2 entry (0::); \
         agentcg needs the unified hierarchy"
            .to_string()
    })?;
    Ok(place(arg, Some(own), Path::new(CGROUP_MOUNT)))
}

/// Moves this process (all its threads) into `leaf`, creating it.
pub fn move_into(leaf: &Path) -> Result<(), String> {
    let cg = Cgroup::new(leaf);
    cg.create(true)
        .map_err(|e| format!("creating the daemon's leaf cgroup: {e}"))?;
    cg.attach(std::process::id())
        .map_err(|e| format!("moving agentcgd into its leaf cgroup: {e}"))
}

/// Protects the daemon's leaf from reclaim with `memory.min` (the unit's `MemoryMin=`
/// must be at least as large: protection is bounded by every ancestor's).
pub fn protect(leaf: &Path, min: u64) -> Result<(), String> {
    Cgroup::new(leaf)
        .write("memory.min", &min.to_string())
        .map_err(|e| format!("protecting the daemon's memory: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNT: &str = "/sys/fs/cgroup";

    fn auto(own: Option<&str>) -> Placement {
        place(&RootArg::Auto, own, Path::new(MOUNT))
    }

    #[test]
    fn the_root_flag_is_auto_or_an_absolute_path() {
        assert_eq!("auto".parse(), Ok(RootArg::Auto));
        assert_eq!(
            "/sys/fs/cgroup/x".parse(),
            Ok(RootArg::Path("/sys/fs/cgroup/x".into()))
        );
        let err = "agentcg".parse::<RootArg>().expect_err("relative");
        assert!(err.contains("`agentcg`"), "{err}");
        assert!("".parse::<RootArg>().is_err());
    }

    #[test]
    fn reads_the_v2_line_of_proc_self_cgroup() {
        let text = "0::/system.slice/agentcgd.service\n";
        assert_eq!(cgroup_v2_path(text), Some("/system.slice/agentcgd.service"));
        let hybrid = "12:memory:/x\n1:name=systemd:/y\n0::/z\n";
        assert_eq!(cgroup_v2_path(hybrid), Some("/z"));
        assert_eq!(cgroup_v2_path("12:memory:/x\n"), None);
    }

    #[test]
    fn auto_under_systemd_is_the_units_cgroup_with_the_daemon_in_a_leaf() {
        assert_eq!(
            auto(Some("/system.slice/agentcgd.service")),
            Placement {
                root: "/sys/fs/cgroup/system.slice/agentcgd.service".into(),
                daemon_leaf: Some("/sys/fs/cgroup/system.slice/agentcgd.service/daemon".into()),
            }
        );
    }

    #[test]
    fn auto_started_in_the_leaf_already_takes_its_parent() {
        // DelegateSubgroup=daemon: systemd started it in the leaf; the leaf is where it
        // already is, not a daemon/daemon below it.
        let own = "/system.slice/agentcgd.service/daemon";
        let placed = auto(Some(own));
        assert_eq!(placed, auto(Some("/system.slice/agentcgd.service")));
        assert_eq!(placed.daemon_leaf, Some(Path::new(MOUNT).join(&own[1..])));
    }

    #[test]
    fn auto_in_a_template_instance_named_daemon_is_still_the_units_cgroup() {
        // Only the leaf below a unit is the daemon's: a unit's own cgroup ends in
        // `.service`.
        assert_eq!(
            auto(Some(
                "/system.slice/system-agentcgd.slice/agentcgd@daemon.service"
            ))
            .root,
            Path::new("/sys/fs/cgroup/system.slice/system-agentcgd.slice/agentcgd@daemon.service")
        );
    }

    #[test]
    fn auto_elsewhere_is_agentcgs_own_top_level_cgroup() {
        let standalone = Placement {
            root: "/sys/fs/cgroup/agentcg".into(),
            daemon_leaf: None,
        };
        assert_eq!(auto(None), standalone);
        assert_eq!(auto(Some("/")), standalone);
    }

    #[test]
    fn an_explicit_root_is_taken_as_given() {
        let arg = RootArg::Path("/sys/fs/cgroup/mine".into());
        assert_eq!(
            place(
                &arg,
                Some("/system.slice/agentcgd.service"),
                Path::new(MOUNT)
            ),
            Placement {
                root: "/sys/fs/cgroup/mine".into(),
                daemon_leaf: None,
            }
        );
    }
}
