//! Reading the command string Claude Code hands its shell prefix, without a shell.
//!
//! Claude Code wraps the model's command: `source <snapshot> ... && eval '<command>'
//! < /dev/null && pwd -P >| /tmp/claude-<n>-cwd`, the command quoted as one shell word
//! (single-quoted parts, a `'` written as `"'"`). [`split_wrapped`] finds that word and
//! decodes it; a string without `eval '` is the command itself. [`Wrapped::rebuild`]
//! puts the command back in its place once its intent is taken off
//! (`crate::written_intent`).

/// A command string split around the model's command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wrapped {
    /// Claude Code's preamble, up to and including `eval ` (empty when not wrapped).
    pub before: String,
    /// The model's command, decoded.
    pub command: String,
    /// What follows the quoted command (empty when not wrapped).
    pub after: String,
    /// Whether the command was a quoted `eval` word (it must be quoted again).
    pub quoted: bool,
}

impl Wrapped {
    /// The whole string again, with `command` in place of the model's command.
    pub fn rebuild(&self, command: &str) -> String {
        if self.quoted {
            format!("{}{}{}", self.before, single_quote(command), self.after)
        } else {
            command.to_string()
        }
    }
}

/// Splits Claude Code's wrapped command string. The model's command is the shell word
/// after the first `eval '` (one in the model's own command comes later, its quote
/// written as `'"'"'`); it is decoded as bash would
/// (single-quoted text, and `"..."` parts holding no `$`, `` ` `` or `\`, which is how
/// Claude Code writes a `'`). Anything else is taken as a bare command.
pub fn split_wrapped(s: &str) -> Wrapped {
    let bare = || Wrapped {
        before: String::new(),
        command: s.to_string(),
        after: String::new(),
        quoted: false,
    };
    let Some(at) = s.find("eval '") else {
        return bare();
    };
    let start = at + "eval ".len();
    match decode_word(&s[start..]) {
        Some((command, used)) => Wrapped {
            before: s[..start].to_string(),
            command,
            after: s[start + used..].to_string(),
            quoted: true,
        },
        None => bare(),
    }
}

/// Decodes one shell word made of quoted parts; returns it and the bytes it used.
/// `None` when a quote is not closed or a part is not plain quoting.
fn decode_word(s: &str) -> Option<(String, usize)> {
    let mut out = String::new();
    let mut rest = s;
    loop {
        let mut chars = rest.chars();
        match chars.next() {
            Some(q @ ('\'' | '"')) => {
                let body = chars.as_str();
                let end = body.find(q)?;
                let part = &body[..end];
                if q == '"' && part.contains(['$', '`', '\\']) {
                    return None;
                }
                out.push_str(part);
                rest = &body[end + 1..];
            }
            None | Some(' ' | '\t' | '\n' | ';' | '&' | '|' | '<' | '>' | ')') => {
                return Some((out, s.len() - rest.len()));
            }
            Some(_) => return None,
        }
    }
}

/// Quotes `s` as one bash word: single quotes, a `'` written as `'"'"'`.
pub fn single_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r#"'"'"'"#))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::written_intent::take_intent;

    const WRAPPED: &str = r#"source /root/.claude/shell-snapshots/snapshot-bash-1-x.sh 2>/dev/null || true && { \builtin shopt -u extglob; } >/dev/null 2>&1 || true && eval 'AGENTCG_INTENT=mem.max=2G echo '"'"'it'"'"''"'"'s'"'"' "hi" | cat' < /dev/null && pwd -P >| /tmp/claude-6849-cwd"#;

    #[test]
    fn finds_and_decodes_the_model_command_in_claude_codes_wrapper() {
        let w = split_wrapped(WRAPPED);
        assert!(w.quoted);
        assert_eq!(
            w.command,
            r#"AGENTCG_INTENT=mem.max=2G echo 'it''s' "hi" | cat"#
        );
        assert!(w.before.ends_with("|| true && eval "), "{}", w.before);
        assert_eq!(w.after, " < /dev/null && pwd -P >| /tmp/claude-6849-cwd");
        assert_eq!(
            w.rebuild(&w.command),
            WRAPPED,
            "quoted back as Claude Code does"
        );
    }

    #[test]
    fn rebuild_replaces_only_the_command() {
        let w = split_wrapped(WRAPPED);
        let (intent, rest) = take_intent(&w.command).expect("intent");
        assert_eq!(intent.as_deref(), Some("mem.max=2G"));
        assert_eq!(rest, r#"echo 'it''s' "hi" | cat"#);
        let again = split_wrapped(&w.rebuild(&rest));
        assert_eq!(again.command, rest);
        assert_eq!(again.before, w.before);
        assert_eq!(again.after, w.after);
    }

    #[test]
    fn a_string_without_a_wrapper_is_the_command() {
        let w = split_wrapped("AGENT_RESOURCE_HINT=memory:high make -j4");
        assert!(!w.quoted);
        assert_eq!(w.rebuild("make -j4"), "make -j4");
        let (intent, rest) = take_intent(&w.command).expect("intent");
        assert_eq!(intent.as_deref(), Some("memory:high"));
        assert_eq!(rest, "make -j4");
    }

    #[test]
    fn an_eval_in_the_model_command_is_part_of_it() {
        let cmd = "eval 'ls' && echo ok";
        let s = format!(
            "source x && eval {} < /dev/null && pwd -P",
            single_quote(cmd)
        );
        let w = split_wrapped(&s);
        assert_eq!(w.command, cmd);
        assert_eq!(w.after, " < /dev/null && pwd -P");
    }

    #[test]
    fn an_eval_word_with_expansions_is_not_decoded() {
        let s = r#"eval "$(cat x)" && pwd"#;
        assert!(!split_wrapped(s).quoted);
        let s = r#"eval 'ls'"$X" && pwd"#;
        assert!(!split_wrapped(s).quoted);
    }
}
