//! Who may do what (docs/API.md, "Access"). Every connection is identified by its
//! socket credentials (`SO_PEERCRED`, read when it is accepted); a session belongs to
//! the uid that created it, and its calls with it. A caller sees, changes and closes
//! only its own sessions and calls unless it is an admin: root, or a member of the
//! admin group (`--admin-group`, `agentcg-admin` by default). Every decision is made
//! here, by [`check_owner`] and [`require_admin`].

use std::cell::OnceCell;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::{Group, Uid, User};

use agentcg_core::controller::{ControlError, Controller};
use agentcg_core::plan;

use super::{ApiError, AppState};

/// The credentials of the process at the other end of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub gid: u32,
    pub pid: i32,
}

impl Peer {
    /// Reads `SO_PEERCRED` of a connected unix socket.
    pub fn of(socket: &impl AsFd) -> nix::Result<Peer> {
        let c = getsockopt(socket, PeerCredentials)?;
        Ok(Peer {
            uid: c.uid(),
            gid: c.gid(),
            pid: c.pid(),
        })
    }
}

/// What the server (`crate::server::track`) attaches to every request: the peer of
/// its connection, or `None` when the credentials could not be read (every request is
/// then refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred(pub Option<Peer>);

/// The caller of a request. Whether it is an admin is looked up (in the group
/// database) only when a decision needs it.
#[derive(Debug, Clone)]
pub struct Caller {
    pub peer: Peer,
    admin_group: Arc<str>,
    admin: OnceCell<bool>,
}

impl Caller {
    pub fn new(peer: Peer, admin_group: Arc<str>) -> Caller {
        Caller {
            peer,
            admin_group,
            admin: OnceCell::new(),
        }
    }

    pub fn uid(&self) -> u32 {
        self.peer.uid
    }

    /// Root, or a member of the admin group (its primary group or a listed member).
    pub fn is_admin(&self) -> bool {
        *self.admin.get_or_init(|| {
            if self.peer.uid == 0 {
                return true;
            }
            let Ok(Some(group)) = Group::from_name(&self.admin_group) else {
                return false;
            };
            let user = User::from_uid(Uid::from_raw(self.peer.uid)).ok().flatten();
            in_group(
                group.gid.as_raw(),
                &group.mem,
                self.peer.gid,
                user.as_ref().map(|u| (u.name.as_str(), u.gid.as_raw())),
            )
        })
    }

    /// Whether the caller may see and act on what `owner` owns.
    pub fn may_access(&self, owner: u32) -> bool {
        owner == self.peer.uid || self.is_admin()
    }
}

/// Whether a process of group `peer_gid`, run by `user` (name, primary gid), is in
/// the group `gid` whose listed members are `members`.
pub fn in_group(gid: u32, members: &[String], peer_gid: u32, user: Option<(&str, u32)>) -> bool {
    peer_gid == gid
        || user.is_some_and(|(name, primary)| primary == gid || members.iter().any(|m| m == name))
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<PeerCred>>()
            .and_then(|c| c.0.0)
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "agentcgd could not read this connection's credentials (SO_PEERCRED); \
                     connect through its unix socket",
                )
            })?;
        Ok(Caller::new(peer, state.admin_group.clone()))
    }
}

fn forbidden(message: String) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

/// Refuses a non-admin: `what` names the action (`listing every session's events`).
pub fn require_admin(caller: &Caller, what: &str) -> Result<(), ApiError> {
    if caller.is_admin() {
        return Ok(());
    }
    Err(forbidden(format!(
        "{what} needs an admin (root or a member of group `{}`); uid {} is neither",
        caller.admin_group,
        caller.uid()
    )))
}

/// Refuses a caller that neither owns `what` (owned by `owner`) nor is an admin.
pub fn check_owner(caller: &Caller, owner: u32, what: &str) -> Result<(), ApiError> {
    if caller.may_access(owner) {
        return Ok(());
    }
    Err(forbidden(format!(
        "{what} belongs to uid {owner}; uid {} may act only on its own sessions and calls \
         (root and members of group `{}` may act on all)",
        caller.uid(),
        caller.admin_group
    )))
}

/// [`check_owner`] for what may belong to a closed session, whose owner is no longer
/// known (`owner` is `None`): then only an admin passes, `closed` naming the action.
pub fn check_kept_owner(
    caller: &Caller,
    owner: Option<u32>,
    what: &str,
    closed: &str,
) -> Result<(), ApiError> {
    match owner {
        Some(owner) => check_owner(caller, owner, what),
        None => require_admin(caller, closed),
    }
}

/// Whether the caller may see what belongs to `owner` (`None`, a closed session's:
/// admins only), as lists filter; the quiet form of [`check_kept_owner`].
pub fn may_see(caller: &Caller, owner: Option<u32>) -> bool {
    owner.map_or_else(|| caller.is_admin(), |owner| caller.may_access(owner))
}

/// Session `name` is a valid name (a path parameter arrives percent-decoded: `%2e%2e`
/// is `..`), exists, and the caller may act on it.
pub fn own_session(caller: &Caller, c: &Controller, name: &str) -> Result<(), ApiError> {
    plan::check_session_name(name).map_err(ControlError::from)?;
    let owner = c
        .session_owner(name)
        .ok_or_else(|| ControlError::NoSession(name.to_string()))?;
    check_owner(caller, owner, &format!("session `{name}`"))
}

/// Call `id` exists and the caller may act on it (a call of a closed session: admins
/// only, its owner is no longer known).
pub fn own_call(caller: &Caller, c: &Controller, id: u64) -> Result<(), ApiError> {
    let session = c.call_session(id).ok_or(ControlError::NoCall(id))?;
    check_kept_owner(
        caller,
        c.session_owner(session),
        &format!("call {id} (session `{session}`)"),
        &format!("call {id} of closed session `{session}` (its owner is not kept)"),
    )
}

/// Where process `pid` sits in the cgroup v2 tree, as a path under the cgroupfs mount.
fn cgroup_of(pid: i32) -> Option<PathBuf> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let rel = agentcg_daemon::root::cgroup_v2_path(&text)?;
    let mount = procfs::process::Process::myself()
        .ok()?
        .mountinfo()
        .ok()?
        .0
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")?
        .mount_point;
    Some(mount.join(rel.trim_start_matches('/')))
}

/// Whether a client in cgroup `client` can start tools in the calls of the session at
/// `session`: the kernel lets a non-root process move a process (itself forking
/// included) only below a common ancestor whose `cgroup.procs` it may write, and the
/// session is the highest cgroup delegated to its owner.
pub fn can_start_tools(client: &std::path::Path, session: &std::path::Path) -> bool {
    client.starts_with(session)
}

/// A non-root caller declaring a call must be inside the session (its runtime, as
/// `agentcg run` from the agent is), or the kernel would refuse to start the tool in
/// the call's cgroup: refused here, saying why and what to do.
pub fn client_inside(caller: &Caller, c: &Controller, session: &str) -> Result<(), ApiError> {
    if caller.uid() == 0 {
        return Ok(());
    }
    let session_cg = c.layout().session(session);
    let client = cgroup_of(caller.peer.pid);
    if client
        .as_deref()
        .is_some_and(|p| can_start_tools(p, session_cg.path()))
    {
        return Ok(());
    }
    let at = client.map_or_else(|| "an unknown cgroup".into(), |p| p.display().to_string());
    Err(forbidden(format!(
        "uid {}'s client (pid {}) is in {at}, outside session `{session}` ({}): the kernel \
         lets a non-root process start a tool in a call's cgroup only from inside the \
         same session (cgroup v2 delegation). Run the agent in the session's runtime \
         (POST /v1/sessions/{session}/runtime with its pid, or `runtime_pid` when \
         creating the session) and declare calls from it",
        caller.uid(),
        caller.peer.pid,
        session_cg.path().display()
    )))
}

/// Process `pid` runs as the caller (or the caller is an admin): nobody moves or
/// shields another user's process by attaching it as a session runtime.
pub fn own_process(caller: &Caller, pid: u32) -> Result<(), ApiError> {
    if caller.is_admin() {
        return Ok(());
    }
    let uid = i32::try_from(pid)
        .ok()
        .and_then(|p| procfs::process::Process::new(p).ok())
        .and_then(|p| p.uid().ok());
    match uid {
        Some(uid) => check_owner(caller, uid, &format!("process {pid}")),
        None => Err(ControlError::BadRequest {
            what: format!("runtime pid {pid}"),
            reason: "no such process".into(),
        }
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(uid: u32) -> Caller {
        Caller::new(
            Peer {
                uid,
                gid: uid,
                pid: 1,
            },
            "agentcg-test-no-such-group".into(),
        )
    }

    #[test]
    fn group_membership_by_primary_gid_or_member_list() {
        let members = vec!["alice".to_string()];
        assert!(in_group(900, &members, 900, None), "the process's gid");
        assert!(in_group(900, &members, 1, Some(("bob", 900))), "primary");
        assert!(in_group(900, &members, 1, Some(("alice", 1))), "listed");
        assert!(!in_group(900, &members, 1, Some(("bob", 1))));
        assert!(!in_group(900, &members, 1, None));
    }

    #[test]
    fn owners_and_root_pass_others_are_refused_with_the_reason() {
        assert!(check_owner(&caller(1000), 1000, "session `a`").is_ok());
        assert!(check_owner(&caller(0), 1000, "session `a`").is_ok());
        let e = check_owner(&caller(1001), 1000, "session `a`").unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::FORBIDDEN, "forbidden"));
        for needle in [
            "session `a` belongs to uid 1000",
            "uid 1001",
            "agentcg-test",
        ] {
            assert!(e.message.contains(needle), "{needle}: {}", e.message);
        }
        assert!(require_admin(&caller(0), "x").is_ok());
        let e = require_admin(&caller(1000), "changing the policy").unwrap_err();
        assert!(e.message.starts_with("changing the policy needs an admin"));
    }

    #[test]
    fn tools_start_only_from_inside_the_session() {
        let session = std::path::Path::new("/sys/fs/cgroup/agentcg/session-a");
        for inside in ["session-a/runtime", "session-a/runtime/sub", "session-a"] {
            let p = std::path::Path::new("/sys/fs/cgroup/agentcg").join(inside);
            assert!(can_start_tools(&p, session), "{inside}");
        }
        for outside in ["session-ab/runtime", "session-b/runtime", "."] {
            let p = std::path::Path::new("/sys/fs/cgroup/agentcg").join(outside);
            assert!(!can_start_tools(&p, session), "{outside}");
        }
        assert!(!can_start_tools(
            std::path::Path::new("/sys/fs/cgroup/user.slice"),
            session
        ));
    }

    #[test]
    fn another_users_process_cannot_be_attached() {
        // pid 1 runs as root: a non-root caller may not attach it.
        let e = own_process(&caller(4242), 1).unwrap_err();
        assert_eq!(e.status, StatusCode::FORBIDDEN, "{}", e.message);
        let me = nix::unistd::getuid().as_raw();
        assert!(own_process(&caller(me), std::process::id()).is_ok());
        let e = own_process(&caller(4242), u32::MAX).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST, "{}", e.message);
    }
}
