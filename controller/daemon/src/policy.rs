//! The policy in force, its file and its versions. Every change (API, SIGHUP, a file
//! edit) goes through [`PolicyStore::swap`]: validate, then put the whole new policy
//! in force or none of it. Changes made through the API are written to the policy
//! file atomically (temp file, fsync, rename); the last [`KEEP_VERSIONS`] policies in
//! force are kept in `<state-dir>/policy-versions/`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use agentcg_core::events::{EventBody, EventBus};
use agentcg_core::plan::budget::BudgetChange;
use agentcg_core::policy::check::{self, Problem, Severity};
use agentcg_core::policy::diff::{self, Change};
use agentcg_core::policy::{self, Policy};
use serde::Serialize;

use crate::supervisor::Shared;

/// How many earlier policies are kept for `policy rollback`.
pub const KEEP_VERSIONS: usize = 10;

/// Why a change was refused; the policy in force is untouched either way.
#[derive(Debug)]
pub enum Refusal {
    /// The text has errors.
    Invalid(Vec<Problem>),
    /// The file could not be read or written, or a version is missing.
    Io(String),
}

impl Refusal {
    /// One line per error, `ORIGIN:LINE:COLUMN: key: message`.
    pub fn render(&self, origin: &str) -> String {
        match self {
            Refusal::Invalid(problems) => problems
                .iter()
                .map(|p| p.render(origin))
                .collect::<Vec<_>>()
                .join("\n"),
            Refusal::Io(e) => e.clone(),
        }
    }
}

/// A change that went in (or found the same policy in force).
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    pub hash: String,
    /// False when the text was the policy in force already (nothing reloaded).
    pub changed: bool,
    pub changes: Vec<String>,
    /// Changed keys that take effect at the next start of agentcgd.
    pub restart_needed: Vec<String>,
    /// Sessions whose budget the change re-applied, or kept (and why).
    pub budgets: Vec<BudgetChange>,
}

/// The result of the last reload attempt.
#[derive(Debug, Clone, Serialize)]
pub struct LastReload {
    pub ok: bool,
    pub at_ms: u64,
    pub source: String,
    pub errors: Vec<String>,
}

/// One kept version.
#[derive(Debug, Clone, Serialize)]
pub struct Version {
    /// 0 is the policy in force, 1 the one before, ...
    pub back: usize,
    pub hash: String,
    pub saved_at_ms: u64,
    pub file: PathBuf,
}

#[derive(Debug)]
struct InForce {
    text: String,
    hash: String,
    source: String,
    loaded_at_ms: u64,
    last_reload: Option<LastReload>,
}

/// The daemon's policy: what is in force and where it lives.
#[derive(Debug)]
pub struct PolicyStore {
    file: PathBuf,
    versions_dir: PathBuf,
    current: Mutex<InForce>,
    controller: Shared,
    events: Arc<EventBus>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// FNV-1a, 64 bits, as 16 hex digits: names a policy text in status, events and
/// versions (not a security measure).
pub fn hash(text: &str) -> String {
    let h = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{h:016x}")
}

/// Writes `text` to `path` atomically: a temp file beside it, fsync, rename, fsync
/// of the directory.
pub fn write_atomically(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or("policy".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

fn errors_only(problems: Vec<Problem>) -> Vec<Problem> {
    problems
        .into_iter()
        .filter(|p| p.severity == Severity::Error)
        .collect()
}

impl PolicyStore {
    /// The store of a daemon whose policy `text` (already in force) came from `source`;
    /// `file` is where changes are written. Keeps the text as the newest version.
    pub fn new(
        file: PathBuf,
        text: String,
        source: String,
        state_dir: &Path,
        controller: Shared,
        events: Arc<EventBus>,
    ) -> PolicyStore {
        let store = PolicyStore {
            file,
            versions_dir: state_dir.join("policy-versions"),
            current: Mutex::new(InForce {
                hash: hash(&text),
                text,
                source,
                loaded_at_ms: unix_ms(),
                last_reload: None,
            }),
            controller,
            events,
        };
        if let Ok(c) = store.current.lock()
            && let Err(e) = store.keep_version(&c.text, &c.hash)
        {
            tracing::warn!(
                "cannot keep a policy version in {}: {e}",
                store.versions_dir.display()
            );
        }
        store
    }

    pub fn file(&self) -> &Path {
        &self.file
    }

    /// Text and hash of the policy in force.
    pub fn text(&self) -> (String, String) {
        self.current
            .lock()
            .map(|c| (c.text.clone(), c.hash.clone()))
            .unwrap_or_default()
    }

    /// For `agentcg status` and `GET /v1/policy`.
    pub fn status(&self) -> serde_json::Value {
        let Ok(c) = self.current.lock() else {
            return serde_json::Value::Null;
        };
        serde_json::json!({
            "file": self.file,
            "source": c.source,
            "hash": c.hash,
            "loaded_at_ms": c.loaded_at_ms,
            "last_reload": c.last_reload,
        })
    }

    /// Validates `text`; if it has no error, puts it in force (and, with `persist`,
    /// writes it to the policy file first). The same text as in force changes nothing.
    pub fn swap(&self, text: String, source: &str, persist: bool) -> Result<Outcome, Refusal> {
        let mut cur = self.lock()?;
        self.swap_locked(&mut cur, text, source, persist)
    }

    fn lock(&self) -> Result<MutexGuard<'_, InForce>, Refusal> {
        self.current
            .lock()
            .map_err(|_| Refusal::Io("policy lock poisoned".into()))
    }

    /// [`Self::swap`] with the lock held by the caller.
    fn swap_locked(
        &self,
        cur: &mut InForce,
        text: String,
        source: &str,
        persist: bool,
    ) -> Result<Outcome, Refusal> {
        let new_hash = hash(&text);
        if new_hash == cur.hash {
            return Ok(Outcome {
                hash: new_hash,
                changed: false,
                changes: Vec::new(),
                restart_needed: Vec::new(),
                budgets: Vec::new(),
            });
        }
        let result = self.validate_and_write(&text, &cur.text, persist);
        let at_ms = unix_ms();
        match result {
            Err(refusal) => {
                let errors: Vec<String> =
                    refusal.render(source).lines().map(str::to_string).collect();
                tracing::error!(
                    "policy from {source} refused, the old one stays:\n{}",
                    errors.join("\n")
                );
                cur.last_reload = Some(LastReload {
                    ok: false,
                    at_ms,
                    source: source.to_string(),
                    errors: errors.clone(),
                });
                self.events.publish(EventBody::PolicyReloaded {
                    source: source.to_string(),
                    ok: false,
                    error: Some(errors.join("\n")),
                    hash: Some(cur.hash.clone()),
                });
                Err(refusal)
            }
            Ok((policy, changes)) => {
                let reapplied = self
                    .controller
                    .lock()
                    .map(|mut c| c.set_policy(policy))
                    .unwrap_or_default();
                for b in &reapplied.budgets {
                    tracing::info!(session = %b.session, changes = ?b.changes, kept_because = ?b.kept_because, "session budget under the reloaded policy");
                }
                if let Some(e) = &reapplied.save_error {
                    tracing::error!("the sessions' new budgets are in force but not saved: {e}");
                }
                let budgets = reapplied.budgets;
                let restart_needed: Vec<String> = changes
                    .iter()
                    .filter(|c| c.restart)
                    .map(|c| c.key.clone())
                    .collect();
                if !restart_needed.is_empty() {
                    tracing::warn!(keys = ?restart_needed, "policy keys changed that take effect at restart");
                }
                if let Err(e) = self.keep_version(&text, &new_hash) {
                    tracing::warn!("cannot keep a policy version: {e}");
                }
                tracing::info!(hash = %new_hash, changes = changes.len(), "policy reloaded from {source}");
                cur.text = text;
                cur.hash = new_hash.clone();
                cur.source = source.to_string();
                cur.loaded_at_ms = at_ms;
                cur.last_reload = Some(LastReload {
                    ok: true,
                    at_ms,
                    source: source.to_string(),
                    errors: Vec::new(),
                });
                self.events.publish(EventBody::PolicyReloaded {
                    source: source.to_string(),
                    ok: true,
                    error: None,
                    hash: Some(new_hash.clone()),
                });
                Ok(Outcome {
                    hash: new_hash,
                    changed: true,
                    changes: changes.iter().map(ToString::to_string).collect(),
                    restart_needed,
                    budgets,
                })
            }
        }
    }

    fn validate_and_write(
        &self,
        text: &str,
        old: &str,
        persist: bool,
    ) -> Result<(Policy, Vec<Change>), Refusal> {
        let problems = errors_only(check::check(text));
        if !problems.is_empty() {
            return Err(Refusal::Invalid(problems));
        }
        let policy = Policy::parse(text, "policy").map_err(|e| Refusal::Io(e.to_string()))?;
        let changes = diff::diff(old, text).map_err(Refusal::Io)?;
        if persist {
            write_atomically(&self.file, text)
                .map_err(|e| Refusal::Io(format!("writing {}: {e}", self.file.display())))?;
        }
        Ok((policy, changes))
    }

    /// Reads the policy file again (SIGHUP, a file edit). The file is read with the
    /// lock held: API changes write the file under the same lock, so a reload never
    /// reads a text older than the policy in force and puts it back.
    pub fn reload_file(&self, why: &str) -> Result<Outcome, Refusal> {
        let source = format!("{} ({why})", self.file.display());
        let mut cur = self.lock()?;
        let text = match policy::read_text(&self.file) {
            Ok(t) => t,
            Err(e) => {
                let refusal = Refusal::Io(e.to_string());
                self.record_failure(&mut cur, &source, &refusal);
                return Err(refusal);
            }
        };
        self.swap_locked(&mut cur, text, &source, false)
    }

    fn record_failure(&self, cur: &mut InForce, source: &str, refusal: &Refusal) {
        let message = refusal.render(source);
        tracing::error!("policy from {source} refused, the old one stays: {message}");
        cur.last_reload = Some(LastReload {
            ok: false,
            at_ms: unix_ms(),
            source: source.to_string(),
            errors: vec![message.clone()],
        });
        self.events.publish(EventBody::PolicyReloaded {
            source: source.to_string(),
            ok: false,
            error: Some(message),
            hash: Some(cur.hash.clone()),
        });
    }

    /// Kept versions, newest (in force) first.
    pub fn versions(&self) -> Vec<Version> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.versions_dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        files.reverse();
        files
            .into_iter()
            .enumerate()
            .map(|(back, file)| {
                let stem = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let (ms, hash) = stem.split_once('-').unwrap_or((&stem, ""));
                Version {
                    back,
                    hash: hash.to_string(),
                    saved_at_ms: ms.parse().unwrap_or(0),
                    file,
                }
            })
            .collect()
    }

    /// The text of the version `back` steps before the one in force.
    pub fn version_text(&self, back: usize) -> Result<String, Refusal> {
        let versions = self.versions();
        let v = versions.get(back).ok_or_else(|| {
            Refusal::Io(format!(
                "no policy version {back} back (kept: {}, 0 being the one in force)",
                versions.len().saturating_sub(1)
            ))
        })?;
        policy::read_text(&v.file).map_err(|e| Refusal::Io(e.to_string()))
    }

    /// Saves `text` as the newest version (unless it is already), keeps the last few.
    fn keep_version(&self, text: &str, hash: &str) -> std::io::Result<()> {
        if self.versions().first().is_some_and(|v| v.hash == hash) {
            return Ok(());
        }
        std::fs::create_dir_all(&self.versions_dir)?;
        let newest = self.versions().first().map_or(0, |v| v.saved_at_ms);
        // Names sort by time; two saves within a millisecond still sort in order.
        let ms = unix_ms().max(newest + 1);
        write_atomically(
            &self.versions_dir.join(format!("{ms:016}-{hash}.toml")),
            text,
        )?;
        for old in self.versions().into_iter().skip(KEEP_VERSIONS + 1) {
            std::fs::remove_file(&old.file)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
