//! What agentcgd keeps in its state directory besides the history, so that a restarted
//! daemon carries on where the last one stopped (docs/ARCHITECTURE.md#state-dir):
//!
//! - `ids`: the ceiling of the block of call ids reserved so far. An id is handed out
//!   only below a ceiling that is on disk (written, fsynced, renamed), so no id is ever
//!   given twice, whatever kills the daemon; ids lost with a block leave gaps.
//! - `running/<id>.json`: one file per running call, written before its grant goes out
//!   and removed once its record is durable: what re-adopting the call needs.
//! - `sessions.json`: the session plans.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::intent::Intent;
use crate::plan::{CallLimits, Clamp};
use crate::record::{CallRecord, MemoryAction};

/// The reserved-ids file.
pub const IDS_FILE: &str = "ids";
/// The directory of running calls' state files.
pub const RUNNING_DIR: &str = "running";
/// Ids reserved per write of [`IDS_FILE`]: one fsync per this many calls.
pub const ID_BLOCK: u64 = 256;

/// A failed state-file operation, with the path.
#[derive(Debug, thiserror::Error)]
#[error("state file {path}: {reason}")]
pub struct StateError {
    pub path: PathBuf,
    pub reason: String,
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> StateError {
    let path = path.to_path_buf();
    move |e| StateError {
        path,
        reason: e.to_string(),
    }
}

/// Writes `text` to `path` atomically: a temporary file, fsynced if `durable`, renamed
/// over it, and the directory fsynced if `durable`.
pub fn write_atomic(path: &Path, text: &str, durable: bool) -> Result<(), StateError> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(state_err(&tmp))?;
    f.write_all(text.as_bytes()).map_err(state_err(&tmp))?;
    if durable {
        f.sync_all().map_err(state_err(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(state_err(path))?;
    if durable && let Some(dir) = path.parent() {
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(state_err(dir))?;
    }
    Ok(())
}

/// Failed writes of running calls' state files, for `agentcg status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StateErrors {
    pub count: u64,
    pub last: Option<String>,
}

impl StateErrors {
    pub fn note(&mut self, e: StateError) {
        self.count += 1;
        self.last = Some(e.to_string());
    }
}

/// Hands out call ids that are never reused.
#[derive(Debug)]
pub struct IdAllocator {
    path: PathBuf,
    next: u64,
    ceiling: u64,
}

impl IdAllocator {
    /// Continues above the persisted ceiling and above `seen` (the largest id in the
    /// history, the running state and the cgroup tree).
    pub fn open(state_dir: &Path, seen: u64) -> Result<IdAllocator, StateError> {
        IdAllocator::open_at(&state_dir.join(IDS_FILE), seen)
    }

    /// The same for any ceiling file (event sequence numbers use one too).
    pub fn open_at(path: &Path, seen: u64) -> Result<IdAllocator, StateError> {
        let path = path.to_path_buf();
        let persisted = match std::fs::read_to_string(&path) {
            Ok(text) => parse_ceiling(&text).ok_or_else(|| StateError {
                path: path.clone(),
                reason: format!(
                    "expected one number, found `{}` (the file is agentcgd's own: set it \
                     to a number above every number it handed out, or remove it only \
                     when the state dir is new)",
                    text.trim().chars().take(40).collect::<String>()
                ),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(state_err(&path)(e)),
        };
        let next = next_after(persisted, seen);
        let mut ids = IdAllocator {
            path,
            next,
            ceiling: next,
        };
        // The first block now: a state dir that cannot take it fails the start, not
        // the first call.
        ids.reserve()?;
        Ok(ids)
    }

    fn reserve(&mut self) -> Result<(), StateError> {
        let ceiling = self.next + ID_BLOCK;
        write_atomic(&self.path, &format!("{ceiling}\n"), true)?;
        self.ceiling = ceiling;
        Ok(())
    }

    /// The next id; reserves (durably) a new block first when the current one is used
    /// up. On an error no id is handed out.
    pub fn take(&mut self) -> Result<u64, StateError> {
        if self.next >= self.ceiling {
            self.reserve()?;
        }
        Ok(self.take_unreserved())
    }

    /// The next number even past the reserved ceiling (when reserving failed and a
    /// number cannot wait). A daemon killed before a later reserve succeeds may hand
    /// such a number out again after its restart; callers that cannot allow this use
    /// [`IdAllocator::take`].
    pub fn take_unreserved(&mut self) -> u64 {
        let id = self.next;
        self.next += 1;
        id
    }
}

fn parse_ceiling(text: &str) -> Option<u64> {
    text.trim().parse().ok()
}

/// The first id a starting daemon may give: above the reserved ceiling (ids below it
/// may have been granted) and above anything seen.
fn next_after(persisted_ceiling: u64, seen: u64) -> u64 {
    persisted_ceiling.max(seen.saturating_add(1)).max(1)
}

/// What a restarted daemon needs to re-adopt a running call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunningState {
    pub call_id: u64,
    pub session: String,
    pub command: Vec<String>,
    pub intent: Intent,
    pub limits: CallLimits,
    pub clamps: Vec<Clamp>,
    pub suggestion: String,
    pub started_unix_ms: u64,
    /// The client's idempotency token of the declaration, if it sent one.
    #[serde(default)]
    pub client_token: Option<String>,
    /// The harness's id of the tool call, if the declaration carried one.
    #[serde(default)]
    pub tool_use_id: Option<String>,
    #[serde(default)]
    pub timed_out: bool,
    #[serde(default)]
    pub budget_exceeded: bool,
    #[serde(default)]
    pub pressure_killed: bool,
    #[serde(default)]
    pub memory_actions: Vec<MemoryAction>,
    /// The call's record, once it ended and until the record is in the history: a
    /// daemon killed in between recovers the record as it was (exit, accounting,
    /// leftovers killed) instead of ending the call a second time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<Box<CallRecord>>,
}

/// The `running/` directory.
#[derive(Debug, Clone)]
pub struct RunningStore {
    dir: PathBuf,
}

impl RunningStore {
    pub fn open(state_dir: &Path) -> Result<RunningStore, StateError> {
        let dir = state_dir.join(RUNNING_DIR);
        std::fs::create_dir_all(&dir).map_err(state_err(&dir))?;
        Ok(RunningStore { dir })
    }

    pub fn path(&self, call_id: u64) -> PathBuf {
        self.dir.join(format!("{call_id}.json"))
    }

    /// Writes a call's state. Not fsynced: it matters only while the call's cgroup
    /// exists, and cgroups do not outlive the boot (a torn file after a power loss is
    /// reported and dropped at start).
    pub fn save(&self, s: &RunningState) -> Result<(), StateError> {
        let text = serde_json::to_string(s).unwrap_or_default();
        write_atomic(&self.path(s.call_id), &text, false)
    }

    pub fn remove(&self, call_id: u64) {
        let _ = std::fs::remove_file(self.path(call_id));
    }

    /// Every state file: the states that parse, and the errors of those that do not
    /// (those files are removed: nothing can be done with them).
    pub fn load_all(&self) -> (BTreeMap<u64, RunningState>, Vec<StateError>) {
        let mut states = BTreeMap::new();
        let mut errors = Vec::new();
        let Ok(dir) = std::fs::read_dir(&self.dir) else {
            return (states, errors);
        };
        for entry in dir.filter_map(Result::ok) {
            let path = entry.path();
            let is_state = path.extension().is_some_and(|e| e == "json");
            if !is_state {
                let _ = std::fs::remove_file(&path);
                continue;
            }
            match parse_state(&path) {
                Ok(s) => {
                    states.insert(s.call_id, s);
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&path);
                    errors.push(e);
                }
            }
        }
        (states, errors)
    }
}

fn parse_state(path: &Path) -> Result<RunningState, StateError> {
    let text = std::fs::read_to_string(path).map_err(state_err(path))?;
    let s: RunningState = serde_json::from_str(&text).map_err(|e| StateError {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let named = path
        .file_stem()
        .and_then(|n| n.to_str())
        .and_then(|n| n.parse::<u64>().ok());
    if named != Some(s.call_id) {
        return Err(StateError {
            path: path.to_path_buf(),
            reason: format!("holds call {} under another name", s.call_id),
        });
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_never_repeat_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = IdAllocator::open(dir.path(), 0).unwrap();
        let first: Vec<u64> = (0..3).map(|_| ids.take().unwrap()).collect();
        assert_eq!(first, vec![1, 2, 3]);
        // kill -9: nothing but the ids file survives; no call was recorded.
        drop(ids);
        let mut again = IdAllocator::open(dir.path(), 0).unwrap();
        let next = again.take().unwrap();
        assert!(next > 3, "id {next} handed out twice");
        assert_eq!(next, 1 + ID_BLOCK);
    }

    #[test]
    fn a_failed_reservation_hands_out_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut ids = IdAllocator::open(dir.path(), 0).unwrap();
        for _ in 0..ID_BLOCK {
            ids.take().unwrap();
        }
        // The disk goes away before the next block: no id without a durable ceiling.
        ids.path = dir.path().join("missing/dir/ids");
        let err = ids.take().unwrap_err();
        assert!(err.path.ends_with("ids.tmp"), "{err}");
        assert!(
            ids.take().is_err(),
            "still nothing without a durable ceiling"
        );
        assert!(IdAllocator::open(&dir.path().join("missing"), 0).is_err());
    }

    #[test]
    fn start_above_everything_seen() {
        assert_eq!(next_after(0, 0), 1);
        assert_eq!(next_after(257, 10), 257);
        assert_eq!(next_after(257, 400), 401);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(IDS_FILE), "bogus").unwrap();
        let err = IdAllocator::open(dir.path(), 0).unwrap_err();
        assert!(err.reason.contains("bogus"), "{err}");
    }

    #[test]
    fn running_states_round_trip_and_bad_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunningStore::open(dir.path()).unwrap();
        let s = RunningState {
            call_id: 42,
            session: "s".into(),
            command: vec!["true".into()],
            intent: Intent::default(),
            limits: crate::testutil::limits(),
            clamps: vec![],
            suggestion: String::new(),
            started_unix_ms: 5,
            client_token: Some("t".into()),
            tool_use_id: None,
            timed_out: false,
            budget_exceeded: true,
            pressure_killed: false,
            memory_actions: vec![],
            ended: None,
        };
        store.save(&s).unwrap();
        std::fs::write(store.path(7), "{\"call_id\": 7, \"sess").unwrap();
        std::fs::write(store.path(8), serde_json::to_string(&s).unwrap()).unwrap();
        let (states, errors) = store.load_all();
        assert_eq!(states.keys().copied().collect::<Vec<_>>(), vec![42]);
        assert_eq!(states[&42], s);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(!store.path(7).exists() && !store.path(8).exists());
        store.remove(42);
        assert!(store.load_all().0.is_empty());
    }
}
