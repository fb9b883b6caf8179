//! An intent the model writes in front of its command, `AGENTCG_INTENT=mem.max=2G
//! pytest` (or `AGENT_RESOURCE_HINT=...`): read and removed as text, never by a shell,
//! for `agentcg shell -c` and `agentcg-claude`. A value holding shell syntax is refused
//! with a message the model reads, and nothing runs.

/// The environment variables the model may set, in front of its command, to declare
/// what the call needs (the same names `agentcg run` reads).
pub const INTENT_VARS: [&str; 2] = ["AGENTCG_INTENT", "AGENT_RESOURCE_HINT"];

/// Why an intent written in a command was refused; the text is what the model reads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentRefusal {
    #[error(
        "{var}={value}: an intent must be literal text (like {var}=mem.max=2G); shell syntax ({what}) is not evaluated, so nothing was run"
    )]
    ShellSyntax {
        var: &'static str,
        value: String,
        what: &'static str,
    },
    #[error("{var}: the quote opened in the intent is not closed, so nothing was run")]
    Unclosed { var: &'static str },
    #[error(
        "{var}: an intent needs a command after it ({var}=mem.max=2G pytest), so nothing was run"
    )]
    NoCommand { var: &'static str },
}

/// Reads an intent assignment at the start of `command` and returns it with the rest of
/// the command. The value is a bare word of intent characters, or one quoted word with
/// no shell syntax in it; `$`, `` ` ``, `\`, `;`, `|`, `&`, `<`, `>`, `(`, `)` anywhere in
/// the value refuse the call (a shell would have run them).
pub fn take_intent(command: &str) -> Result<(Option<String>, String), IntentRefusal> {
    let trimmed = command.trim_start();
    let Some((var, rest)) = INTENT_VARS.iter().find_map(|v| {
        trimmed
            .strip_prefix(v)
            .and_then(|r| r.strip_prefix('='))
            .map(|r| (*v, r))
    }) else {
        return Ok((None, command.to_string()));
    };
    let (value, after) = match rest.chars().next() {
        Some(q @ ('\'' | '"')) => {
            let body = &rest[1..];
            let end = body.find(q).ok_or(IntentRefusal::Unclosed { var })?;
            (&body[..end], &body[end + 1..])
        }
        _ => {
            let end = rest.find([' ', '\t', '\n']).unwrap_or(rest.len());
            (&rest[..end], &rest[end..])
        }
    };
    if let Some(what) = shell_syntax(value) {
        return Err(IntentRefusal::ShellSyntax {
            var,
            value: value.to_string(),
            what,
        });
    }
    // A quoted value must end its word: `VAR='a'b cmd` is not a plain assignment.
    if !after.is_empty() && !after.starts_with([' ', '\t', '\n']) {
        return Err(IntentRefusal::ShellSyntax {
            var,
            value: format!("{value}{}", after.split_whitespace().next().unwrap_or("")),
            what: "quotes inside a word",
        });
    }
    let after = after.trim_start();
    if after.is_empty() {
        return Err(IntentRefusal::NoCommand { var });
    }
    Ok((Some(value.to_string()), after.to_string()))
}

/// The first piece of shell syntax in `value`, named for the model.
fn shell_syntax(value: &str) -> Option<&'static str> {
    if value.contains("$(") {
        Some("$( )")
    } else if value.contains('`') {
        Some("`")
    } else if value.contains('$') {
        Some("$")
    } else if value.contains(['\\', '"', '\'']) {
        Some("quotes or \\")
    } else if value.contains([';', '|', '&', '<', '>', '(', ')']) {
        Some("; | & < > ( )")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_without_an_intent_are_untouched() {
        for c in [
            "ls -l",
            "AGENTCG_INTENTX=1 ls",
            "echo AGENTCG_INTENT=mem=1G",
        ] {
            assert_eq!(take_intent(c), Ok((None, c.to_string())));
        }
    }

    #[test]
    fn quoted_literal_intents_are_read() {
        let (i, rest) = take_intent("AGENTCG_INTENT='mem=512M,timeout=5m' pytest -x").expect("ok");
        assert_eq!(i.as_deref(), Some("mem=512M,timeout=5m"));
        assert_eq!(rest, "pytest -x");
        let (i, _) = take_intent(r#"AGENTCG_INTENT="pids=64" ls"#).expect("ok");
        assert_eq!(i.as_deref(), Some("pids=64"));
    }

    #[test]
    fn shell_syntax_in_an_intent_is_refused_and_named() {
        let e = take_intent("AGENTCG_INTENT='$(touch /tmp/x)' ls").unwrap_err();
        assert!(
            matches!(e, IntentRefusal::ShellSyntax { what: "$( )", .. }),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("nothing was run") && msg.contains("$(touch /tmp/x)"),
            "{msg}"
        );
        for bad in [
            "AGENTCG_INTENT=$(id) ls",
            "AGENTCG_INTENT=`id` ls",
            "AGENTCG_INTENT=$HOME ls",
            "AGENTCG_INTENT=mem=1G;id ls",
            "AGENTCG_INTENT=\"$(id)\" ls",
            "AGENTCG_INTENT='mem=1G'$(id) ls",
        ] {
            assert!(
                matches!(take_intent(bad), Err(IntentRefusal::ShellSyntax { .. })),
                "{bad}"
            );
        }
        assert_eq!(
            take_intent("AGENTCG_INTENT='mem=1G ls"),
            Err(IntentRefusal::Unclosed {
                var: "AGENTCG_INTENT"
            })
        );
        assert_eq!(
            take_intent("AGENTCG_INTENT=mem=1G"),
            Err(IntentRefusal::NoCommand {
                var: "AGENTCG_INTENT"
            })
        );
    }
}
