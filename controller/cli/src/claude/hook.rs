//! `agentcg-claude --hook pre-tool-use`: Claude Code's `PreToolUse` hook for the Bash
//! tool. It adds the call's `tool_use_id` to the command as a last comment line
//! (`<command>\n# AGENTCG_TOOL_USE_ID=toolu_…`, through the hook's `updatedInput`): a
//! comment changes no command's meaning, where a word in front would break one that
//! starts with a function definition or a compound command, and Claude Code checks the
//! updated command again. The shell prefix takes the line off ([`take_tool_use_id`])
//! and declares the call with the id, so the call's record names the tool call of the
//! conversation it ran for.

use std::io::Read;
use std::process::ExitCode;

use serde_json::{Value, json};

/// The name in the comment line the hook adds.
pub const TOOL_USE_VAR: &str = "AGENTCG_TOOL_USE_ID";
/// The longest id taken, as agentcgd accepts (Claude Code's are `toolu_` and 24 characters).
const MAX_ID: usize = 64;

/// Whether `id` is a tool-call id as Claude Code writes them (and agentcgd accepts).
fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
}

/// The hook event of a command string that is this hook's own command line
/// (`…/agentcg-claude --hook EVENT`): Claude Code runs hook commands through its shell
/// prefix too, and the hook runs as it is, not as a call. The model's commands never
/// match: Claude Code hands them over wrapped (`… eval '<command>' …`).
pub fn own_invocation(command: &str) -> Option<&str> {
    let words: Vec<&str> = command.split_whitespace().collect();
    match words.as_slice() {
        [program, "--hook", event]
            if std::path::Path::new(program)
                .file_name()
                .is_some_and(|n| n == "agentcg-claude") =>
        {
            Some(event)
        }
        _ => None,
    }
}

/// The comment line the hook adds for `id`, with the newline before it.
fn label_line(id: &str) -> String {
    format!("\n# {TOOL_USE_VAR}={id}")
}

/// The id of the comment line the hook added to `command`, and the command without
/// it; a command without one (no hook configured) is returned as it is.
pub fn take_tool_use_id(command: &str) -> (Option<String>, String) {
    let taken = command.rsplit_once('\n').and_then(|(rest, last)| {
        last.strip_prefix("# ")
            .and_then(|l| l.strip_prefix(TOOL_USE_VAR))
            .and_then(|l| l.strip_prefix('='))
            .filter(|id| valid_id(id))
            .map(|id| (id, rest))
    });
    match taken {
        Some((id, rest)) => (Some(id.to_string()), rest.to_string()),
        None => (None, command.to_string()),
    }
}

/// The hook's answer to a `PreToolUse` event: for a Bash call with a valid
/// `tool_use_id`, its input with the id's comment line after the command; else nothing
/// (the call goes on unchanged).
pub fn pre_tool_use(event: &Value) -> Option<Value> {
    if event["tool_name"] != "Bash" {
        return None;
    }
    let id = event["tool_use_id"].as_str().filter(|id| valid_id(id))?;
    let command = event["tool_input"]["command"].as_str()?;
    if take_tool_use_id(command).0.is_some() {
        return None;
    }
    let mut input = event["tool_input"].clone();
    input["command"] = json!(format!("{command}{}", label_line(id)));
    Some(json!({"hookSpecificOutput": {"hookEventName": "PreToolUse", "updatedInput": input}}))
}

/// `agentcg-claude --hook EVENT`: reads the hook's event from stdin, prints the answer.
pub fn main(event_name: &str) -> ExitCode {
    if event_name != "pre-tool-use" {
        eprintln!("agentcg-claude: unknown hook `{event_name}` (expected pre-tool-use)");
        return ExitCode::from(crate::EXIT_USAGE);
    }
    let mut text = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut text) {
        eprintln!("agentcg-claude: reading the hook event: {e}");
        return ExitCode::from(crate::EXIT_USAGE);
    }
    let event: Value = match serde_json::from_str(&text) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("agentcg-claude: the hook event is not JSON: {e}");
            return ExitCode::from(crate::EXIT_USAGE);
        }
    };
    if let Some(answer) = pre_tool_use(&event) {
        println!("{answer}");
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tool: &str, id: &str, command: &str) -> Value {
        json!({"hook_event_name": "PreToolUse", "session_id": "c", "tool_name": tool,
            "tool_use_id": id, "tool_input": {"command": command, "description": "d"}})
    }

    #[test]
    fn a_bash_call_gets_its_id_as_a_last_comment_and_the_prefix_takes_it_off() {
        let bomb = ":(){ :|:& };:";
        let answer = pre_tool_use(&event("Bash", "toolu_01AbC", bomb)).expect("answer");
        let input = &answer["hookSpecificOutput"]["updatedInput"];
        assert_eq!(answer["hookSpecificOutput"]["hookEventName"], "PreToolUse");
        assert_eq!(
            input["command"],
            ":(){ :|:& };:\n# AGENTCG_TOOL_USE_ID=toolu_01AbC"
        );
        assert_eq!(input["description"], "d", "the rest of the input is kept");
        let (id, rest) = take_tool_use_id(input["command"].as_str().unwrap());
        assert_eq!((id.as_deref(), rest.as_str()), (Some("toolu_01AbC"), bomb));
    }

    #[test]
    fn other_tools_bad_ids_and_labelled_commands_are_left_alone() {
        assert_eq!(pre_tool_use(&event("Read", "toolu_1", "x")), None);
        assert_eq!(pre_tool_use(&event("Bash", "toolu 1; rm", "ls")), None);
        assert_eq!(pre_tool_use(&event("Bash", "", "ls")), None);
        let labelled = "ls\n# AGENTCG_TOOL_USE_ID=toolu_1";
        assert_eq!(pre_tool_use(&event("Bash", "toolu_2", labelled)), None);
    }

    #[test]
    fn the_hooks_own_command_line_is_recognised_and_nothing_else() {
        assert_eq!(
            own_invocation("/usr/local/bin/agentcg-claude --hook pre-tool-use"),
            Some("pre-tool-use")
        );
        for c in [
            "agentcg-claude --hook",
            "/bin/agentcg --hook pre-tool-use",
            "source s && eval 'agentcg-claude --hook pre-tool-use' < /dev/null",
            "agentcg-claude --hook pre-tool-use; rm -rf x",
        ] {
            assert_eq!(own_invocation(c), None, "{c}");
        }
    }

    #[test]
    fn only_a_well_formed_last_comment_line_is_taken() {
        for c in [
            "ls",
            "# AGENTCG_TOOL_USE_ID=toolu_1",
            "ls\n# AGENTCG_TOOL_USE_ID=$(id)",
            "ls\n# AGENTCG_TOOL_USE_ID=",
            "ls\n# AGENTCG_TOOL_USE_ID=toolu_1\necho",
            "ls\necho # AGENTCG_TOOL_USE_ID=toolu_1",
        ] {
            assert_eq!(take_tool_use_id(c), (None, c.to_string()), "{c}");
        }
    }
}
