//! The policy commands that talk to agentcgd: show, diff, apply, set, edit, history,
//! rollback. A file is checked here first, so its problems name the file; the daemon
//! checks again before it swaps.

use std::path::Path;
use std::process::ExitCode;

use agentcg_core::policy::{self, check};
use serde_json::{Value, json};

use super::local::{EXIT_PROBLEMS, check_file};
use crate::client::{Client, Method};
use crate::{EXIT_USAGE, fail, print_json};

/// Exit status of `diff` for an error (kubectl's convention: 0 same, 1 changes).
const EXIT_DIFF_ERROR: u8 = 2;

/// Reads a policy file and checks it, printing its problems; `Err(exit status)` when
/// it is unreadable (2) or has errors (1).
fn checked_text(path: &Path) -> Result<String, u8> {
    let tally = check_file(path).map_err(|e| {
        eprintln!("agentcg: {e}");
        EXIT_USAGE
    })?;
    if tally.errors > 0 {
        eprintln!(
            "agentcg: {} has errors; the policy in force is unchanged",
            path.display()
        );
        return Err(EXIT_PROBLEMS);
    }
    policy::read_text(path).map_err(|e| {
        eprintln!("agentcg: {e}");
        EXIT_USAGE
    })
}

/// Prints what a change did.
fn report(v: &Value) {
    if v["changed"] == false {
        println!(
            "policy unchanged (hash {})",
            v["hash"].as_str().unwrap_or("?")
        );
        return;
    }
    for c in v["changes"].as_array().into_iter().flatten() {
        println!("{}", c.as_str().unwrap_or_default());
    }
    for line in budget_lines(v, "re-applied") {
        println!("{line}");
    }
    println!(
        "policy in force: hash {}",
        v["hash"].as_str().unwrap_or("?")
    );
}

pub fn show(client: &Client, json_out: bool, effective: bool) -> ExitCode {
    let path = if effective {
        "/v1/policy?effective=true"
    } else {
        "/v1/policy"
    };
    let v = match client.get(path) {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let text = v["text"].as_str().unwrap_or_default();
    if json_out {
        match toml::from_str::<toml::Value>(text) {
            Ok(t) => print_json(
                &json!({"policy": t, "hash": v["hash"], "file": v["file"], "source": v["source"]}),
            ),
            Err(e) => {
                eprintln!("agentcg: the daemon's policy does not parse: {e}");
                return ExitCode::from(crate::EXIT_AGENTCG);
            }
        }
    } else {
        print!("{text}");
    }
    ExitCode::SUCCESS
}

pub fn diff(client: &Client, file: &Path) -> ExitCode {
    let text = match checked_text(file) {
        Ok(t) => t,
        Err(_) => return ExitCode::from(EXIT_DIFF_ERROR),
    };
    let v = match client.post("/v1/policy/check", &json!({"text": text})) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("agentcg: {e}");
            return ExitCode::from(EXIT_DIFF_ERROR);
        }
    };
    let changes: Vec<&Value> = v["changes"].as_array().into_iter().flatten().collect();
    if changes.is_empty() {
        println!("no change");
        return ExitCode::SUCCESS;
    }
    for c in &changes {
        let restart = if c["restart"] == true {
            " (takes effect at restart)"
        } else {
            ""
        };
        println!(
            "{}: {} -> {}{restart}",
            c["key"].as_str().unwrap_or_default(),
            c["from"].as_str().unwrap_or_default(),
            c["to"].as_str().unwrap_or_default()
        );
    }
    let sessions: Vec<&str> = v["sessions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "affects: new sessions and calls; {} running call(s) keep their limits; existing sessions: {}",
        v["running_calls"].as_u64().unwrap_or(0),
        if sessions.is_empty() {
            "none".to_string()
        } else {
            sessions.join(", ")
        }
    );
    let budgets = budget_lines(&v, "would be re-applied");
    if budgets.is_empty() && !sessions.is_empty() {
        println!("their budgets stay as they are");
    }
    for line in budgets {
        println!("{line}");
    }
    ExitCode::from(1)
}

/// One line per session whose budget a change re-applies (`done` says how) or leaves.
fn budget_lines(v: &Value, done: &str) -> Vec<String> {
    v["budgets"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| {
            let changes: Vec<&str> = b["changes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            let outcome = match b["kept_because"].as_str() {
                Some(why) => format!("kept: {why}"),
                None => done.to_string(),
            };
            format!(
                "session {}: {} ({outcome})",
                b["session"].as_str().unwrap_or("?"),
                changes.join(", ")
            )
        })
        .collect()
}

pub fn apply(client: &Client, file: &Path) -> ExitCode {
    let text = match checked_text(file) {
        Ok(t) => t,
        Err(code) => return ExitCode::from(code),
    };
    change(client, Method::Put, &json!({"text": text}), "/v1/policy")
}

fn change(client: &Client, method: Method, body: &Value, path: &str) -> ExitCode {
    match client.request(method, path, Some(body)) {
        Ok(v) => {
            report(&v);
            ExitCode::SUCCESS
        }
        Err(e) if e.code() == Some("invalid_policy") => {
            eprintln!("{e}");
            eprintln!("agentcg: refused; the policy in force is unchanged");
            ExitCode::from(EXIT_PROBLEMS)
        }
        Err(e) => fail(&e),
    }
}

pub fn set(client: &Client, assignments: &[String]) -> ExitCode {
    change(
        client,
        Method::Patch,
        &json!({"set": assignments}),
        "/v1/policy",
    )
}

pub fn rollback(client: &Client, back: usize) -> ExitCode {
    change(
        client,
        Method::Post,
        &json!({"back": back}),
        "/v1/policy/rollback",
    )
}

pub fn history(client: &Client, json_out: bool) -> ExitCode {
    let v = match client.get("/v1/policy/history") {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    if json_out {
        print_json(&v);
        return ExitCode::SUCCESS;
    }
    println!("{:>4}  {:<16}  {:<20}", "BACK", "HASH", "SAVED (UTC)");
    for ver in v["versions"].as_array().into_iter().flatten() {
        let ms = ver["saved_at_ms"].as_u64().unwrap_or(0);
        println!(
            "{:>4}  {:<16}  {:<20}",
            ver["back"],
            ver["hash"].as_str().unwrap_or("?"),
            crate::since::show_utc(ms)
        );
    }
    ExitCode::SUCCESS
}

/// `text` with `errors` as comments at its top (earlier ones removed first).
pub fn with_error_comments(text: &str, errors: &[String]) -> String {
    const MARK: &str = "# agentcg: ";
    let body: String = text
        .lines()
        .skip_while(|l| l.starts_with(MARK))
        .map(|l| format!("{l}\n"))
        .collect();
    let head: String = errors.iter().map(|e| format!("{MARK}{e}\n")).collect();
    format!("{head}{body}")
}

/// `$EDITOR` on a copy of the policy in force; on errors the editor opens again with
/// them at the top; applied once valid (unchanged or empty: nothing happens).
pub fn edit(client: &Client) -> ExitCode {
    let v = match client.get("/v1/policy") {
        Ok(v) => v,
        Err(e) => return fail(&e),
    };
    let original = v["text"].as_str().unwrap_or_default().to_string();
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("agentcg: a temporary directory: {e}");
            return ExitCode::from(crate::EXIT_AGENTCG);
        }
    };
    let path = dir.path().join("policy.toml");
    let editor = std::env::var("VISUAL")
        .or_else(|_| std::env::var("EDITOR"))
        .unwrap_or("vi".into());
    let mut text = original.clone();
    loop {
        if let Err(e) = std::fs::write(&path, &text) {
            eprintln!("agentcg: {}: {e}", path.display());
            return ExitCode::from(crate::EXIT_AGENTCG);
        }
        let status = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{editor} \"$1\""))
            .arg("sh")
            .arg(&path)
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("agentcg: the editor failed; nothing applied");
            return ExitCode::from(EXIT_USAGE);
        }
        let edited = match policy::read_text(&path) {
            Ok(t) => with_error_comments(&t, &[]),
            Err(e) => {
                eprintln!("agentcg: {e}");
                return ExitCode::from(EXIT_USAGE);
            }
        };
        if edited == original || edited.trim().is_empty() {
            println!("no change");
            return ExitCode::SUCCESS;
        }
        let mut problems: Vec<check::Problem> = check::check(&edited)
            .into_iter()
            .filter(|p| p.severity == check::Severity::Error)
            .collect();
        // Lines as the reopened file shows them, below the comments.
        let shift = problems.len();
        let errors: Vec<String> = problems
            .iter_mut()
            .map(|p| {
                p.line += shift;
                p.render("policy.toml")
            })
            .collect();
        if errors.is_empty() {
            return change(client, Method::Put, &json!({"text": edited}), "/v1/policy");
        }
        text = with_error_comments(&edited, &errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_comments_replace_earlier_ones() {
        let once = with_error_comments("[memory]\n", &["p:2:1: x: bad".into()]);
        assert_eq!(once, "# agentcg: p:2:1: x: bad\n[memory]\n");
        let twice = with_error_comments(&once, &["p:3:1: y: worse".into()]);
        assert_eq!(twice, "# agentcg: p:3:1: y: worse\n[memory]\n");
        assert_eq!(with_error_comments(&twice, &[]), "[memory]\n");
    }

    #[test]
    fn budget_lines_say_which_sessions_take_the_new_budget() {
        let v = json!({"budgets": [
            {"session": "a", "changes": ["memory.max 4 GiB -> 6 GiB", "pids.max 4096 -> 2048"]},
            {"session": "b", "changes": ["memory.max 4 GiB -> 1 GiB"],
             "kept_because": "it uses 2 GiB of memory, above the new memory.max 1 GiB"},
        ]});
        assert_eq!(
            budget_lines(&v, "re-applied"),
            [
                "session a: memory.max 4 GiB -> 6 GiB, pids.max 4096 -> 2048 (re-applied)",
                "session b: memory.max 4 GiB -> 1 GiB (kept: it uses 2 GiB of memory, above the new memory.max 1 GiB)",
            ]
        );
        assert!(budget_lines(&json!({}), "re-applied").is_empty());
    }
}
