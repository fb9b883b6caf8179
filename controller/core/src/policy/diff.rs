//! `policy diff`: what changes between two valid policies, key by key in words
//! (`memory.pressure_at: 85 -> 80`, `class.test.intent: "..." -> "..."`), each change
//! marked when it takes effect only at a restart of agentcgd.

use toml_edit::{ImDocument, Item, TableLike, Value};

use super::keys::{self, Applies};

/// One changed key.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    pub key: String,
    pub from: String,
    pub to: String,
    /// Read once at start: the running daemon does not take it at reload.
    pub restart: bool,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {} -> {}", self.key, self.from, self.to)?;
        if self.restart {
            write!(f, " (takes effect at restart)")?;
        }
        Ok(())
    }
}

/// The value at a dotted path, as written (without comments and spacing).
fn value_at(doc: &dyn TableLike, path: &str) -> Option<String> {
    let mut t = doc;
    let parts: Vec<&str> = path.split('.').collect();
    let (last, sections) = parts.split_last()?;
    for p in sections {
        t = t.get(p)?.as_table_like()?;
    }
    t.get(last)?.as_value().map(plain)
}

fn plain(v: &Value) -> String {
    v.clone().decorated("", "").to_string()
}

/// Each class as (name, [(field, value)]).
fn classes(doc: &dyn TableLike) -> Vec<(String, Vec<(String, String)>)> {
    let tables: Vec<&dyn TableLike> = match doc.get("class") {
        Some(Item::ArrayOfTables(a)) => a.iter().map(|t| t as &dyn TableLike).collect(),
        Some(Item::Value(Value::Array(a))) => a
            .iter()
            .filter_map(|v| v.as_inline_table().map(|t| t as &dyn TableLike))
            .collect(),
        _ => Vec::new(),
    };
    tables
        .into_iter()
        .map(|t| {
            let name = t
                .get("name")
                .and_then(Item::as_str)
                .unwrap_or("")
                .to_string();
            let fields = t
                .iter()
                .filter(|(k, _)| *k != "name")
                .filter_map(|(k, v)| Some((k.to_string(), plain(v.as_value()?))))
                .collect();
            (name, fields)
        })
        .collect()
}

/// What changes from `old` to `new` (both must pass [`super::check::check`]).
pub fn diff(old: &str, new: &str) -> Result<Vec<Change>, String> {
    let old = super::effective_text(old)?;
    let new = super::effective_text(new)?;
    let parse = |t: &str| ImDocument::parse(t.to_string()).map_err(|e| e.to_string());
    let (old, new) = (parse(&old)?, parse(&new)?);
    let mut out = Vec::new();
    for key in keys::KEYS.iter().filter(|k| k.default.is_some()) {
        let from = value_at(old.as_table(), key.path).unwrap_or_default();
        let to = value_at(new.as_table(), key.path).unwrap_or_default();
        if from != to {
            out.push(Change {
                key: key.path.to_string(),
                from,
                to,
                restart: key.applies == Applies::Restart,
            });
        }
    }
    let (before, after) = (classes(old.as_table()), classes(new.as_table()));
    let change = |key: String, from: &str, to: &str| Change {
        key,
        from: from.to_string(),
        to: to.to_string(),
        restart: false,
    };
    for (name, fields) in &before {
        match after.iter().find(|(n, _)| n == name) {
            None => out.push(change(format!("class.{name}"), "defined", "removed")),
            Some((_, now)) => {
                for (field, value) in fields {
                    let to = now.iter().find(|(f, _)| f == field).map_or("", |(_, v)| v);
                    if value != to {
                        out.push(change(format!("class.{name}.{field}"), value, to));
                    }
                }
            }
        }
    }
    for (name, _) in after
        .iter()
        .filter(|(n, _)| !before.iter().any(|(b, _)| b == n))
    {
        out.push(change(format!("class.{name}"), "absent", "added"));
    }
    let order = |cs: &[(String, Vec<(String, String)>)]| {
        cs.iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let (was, is) = (order(&before), order(&after));
    let kept = |cs: &[(String, Vec<(String, String)>)],
                other: &[(String, Vec<(String, String)>)]| {
        cs.iter()
            .filter(|(n, _)| other.iter().any(|(o, _)| o == n))
            .map(|(n, _)| n.clone())
            .collect::<Vec<_>>()
    };
    if kept(&before, &after) != kept(&after, &before) {
        out.push(change("class order".into(), &was, &is));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::DEFAULT_POLICY;

    #[test]
    fn only_the_scheduler_choice_waits_for_a_restart() {
        let new = DEFAULT_POLICY
            .replace("scheduler = \"sched_ext\"", "scheduler = \"kernel\"")
            .replace("keep = \"30d\"", "keep = \"7d\"");
        let changes = diff(DEFAULT_POLICY, &new).unwrap();
        let marked: Vec<(&str, bool)> = changes
            .iter()
            .map(|c| (c.key.as_str(), c.restart))
            .collect();
        assert_eq!(marked, [("cpu.scheduler", true), ("history.keep", false)]);
        assert!(
            changes[0]
                .to_string()
                .ends_with("(takes effect at restart)"),
            "{}",
            changes[0]
        );
    }

    #[test]
    fn changes_are_named_in_words() {
        assert!(diff(DEFAULT_POLICY, DEFAULT_POLICY).unwrap().is_empty());
        let new = DEFAULT_POLICY
            .replace("pressure_at = 85", "pressure_at = 80")
            .replace(
                "mem=512M,mem.max=2G,pids=2048",
                "mem=512M,mem.max=3G,pids=2048",
            )
            .replace("pids = 4096", "pids = 4000");
        let words: Vec<String> = diff(DEFAULT_POLICY, &new)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            words,
            [
                "session.pids: 4096 -> 4000",
                "memory.pressure_at: 85 -> 80",
                "class.test.intent: \"mem=512M,mem.max=2G,pids=2048,timeout=30m\" -> \"mem=512M,mem.max=3G,pids=2048,timeout=30m\"",
            ]
        );
        // A key left out is its default: no change.
        let sparse = "[memory]\npressure_at = 85\n";
        assert!(diff(sparse, "").unwrap().is_empty());
        let words: Vec<String> = diff("", DEFAULT_POLICY)
            .unwrap()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(words.len(), 5, "{words:?}");
        assert_eq!(words[0], "class.test: absent -> added");
    }
}
