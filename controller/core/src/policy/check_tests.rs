//! `policy check`: every problem at once, located; the registry against the shipped
//! default and docs/POLICY.md.

use super::check::{Severity, check};
use super::*;

fn errors(text: &str) -> Vec<check::Problem> {
    check(text)
        .into_iter()
        .filter(|p| p.severity == Severity::Error)
        .collect()
}

#[test]
fn every_problem_is_reported_with_its_line_and_column() {
    let text = "[session]\nmemory = \"4Q\"\npids = \"many\"\n\n[memory]\npresure_at = 80\n";
    let found = errors(text);
    let lines: Vec<String> = found.iter().map(|p| p.render("f.toml")).collect();
    assert_eq!(found.len(), 3, "{lines:#?}");
    assert!(
        lines[0].starts_with("f.toml:2:10: session.memory: \"4Q\""),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].starts_with("f.toml:3:8: session.pids: expected integer"),
        "{}",
        lines[1]
    );
    assert_eq!(
        lines[2],
        "f.toml:6:1: memory.presure_at: unknown key; did you mean `memory.pressure_at`?"
    );
}

#[test]
fn syntax_errors_are_located() {
    let found = errors("[session]\nmemory = \n");
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].line, found[0].key.as_str()), (2, "syntax"));
    let found = errors("\u{0}\u{1}binary");
    assert_eq!(found[0].key, "syntax");
}

#[test]
fn unknown_sections_and_choices_get_suggestions() {
    let found = errors("[memroy]\npressure_at = 80\n[session]\nadmission = \"clam\"\n");
    assert_eq!(found[0].message, "unknown key; did you mean `memory`?");
    assert!(
        found[1].message.contains("did you mean \"clamp\""),
        "{:?}",
        found[1]
    );
    let found = errors("[bogus]\nx = 1\n");
    assert_eq!(found[0].message, "unknown section");
}

#[test]
fn cross_field_problems_are_errors() {
    let base = "[caps]\nmem_max = \"4G\"\n";
    let class = |name: &str, commands: &str, intent: &str| {
        format!(
            "[[class]]\nname = \"{name}\"\ncommands = [{commands}]\nintent = \"{intent}\"\nsuggestion = \"less\"\n"
        )
    };
    let text = format!(
        "{base}{}{}{}",
        class("test", "\"pytest\", \"python\"", "mem.max=8G"),
        class("py", "\"python3 -m pip\"", "mem=64M"),
        class("test", "\"tox\"", "pids=99999")
    );
    let found: Vec<String> = errors(&text).iter().map(|p| p.render("p")).collect();
    assert_eq!(found.len(), 4, "{found:#?}");
    assert!(
        found[0].contains("class[1].intent: mem.max 8G is above caps.mem_max 4G"),
        "{}",
        found[0]
    );
    assert!(
        found[1].contains("class[2].commands: \"python3 -m pip\" can never match: class \"test\" takes it first with \"python\""),
        "{}",
        found[1]
    );
    assert!(
        found[2].contains("class[3].name: duplicate class name \"test\" (also class[1])"),
        "{}",
        found[2]
    );
    assert!(
        found[3].contains("class[3].intent: pids 99999 is above caps.pids 8192"),
        "{}",
        found[3]
    );

    let found = errors("[session]\nruntime_reserve = \"5G\"\n");
    assert!(
        found[0]
            .message
            .contains("smaller than session.memory (4G)"),
        "{found:?}"
    );
    assert_eq!(found[0].line, 2);
    let found = errors("[memory]\ncritical_at = 80\n");
    assert!(found[0].message.contains("got 75 / 85 / 80"), "{found:?}");
    let found = errors("[memory]\npsi_stall = \"2s\"\n");
    assert!(
        found[0].message.contains("longer than memory.psi_window"),
        "{found:?}"
    );
    let found = errors("[[class]]\nname = \"x\"\n");
    let keys: Vec<&str> = found.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "class[1].commands",
            "class[1].intent",
            "class[1].suggestion"
        ]
    );
}

#[test]
fn warnings_do_not_stop_a_policy() {
    let text = "[memory]\npressure_at = 40\ncalm_below = 30\nreclaim_percent = 80\n";
    let found = check(text);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found.iter().all(|p| p.severity == Severity::Warning));
    assert!(
        found[0]
            .render("w")
            .starts_with("w:2:15: memory.pressure_at: warning: 40")
    );
    let p = Policy::parse(text, "w").expect("warnings only");
    assert_eq!(p.memory.pressure_at, 40);
}

#[test]
fn parse_errors_list_every_problem() {
    let err = Policy::parse("[session]\npids = 0\n[caps]\npids = -1\n", "x.toml").unwrap_err();
    let text = err.to_string();
    assert_eq!(text.lines().count(), 2, "{text}");
    assert!(
        text.starts_with("x.toml:2:8: session.pids: 0 is out of range"),
        "{text}"
    );
}

/// Leaving out every key but the classes gives the default policy: the registry's
/// defaults and policies/default.toml agree.
#[test]
fn registry_defaults_are_the_shipped_default() {
    let classes = &DEFAULT_POLICY[DEFAULT_POLICY.find("[[class]]").unwrap()..];
    let classes = &classes[..classes.find("\n# The call history").unwrap()];
    let from_registry = Policy::parse(classes, "classes only").unwrap();
    assert_eq!(from_registry, Policy::default_policy());
    let empty = Policy::parse("", "empty").unwrap();
    assert!(empty.classes.is_empty());
    assert_eq!(empty.memory, Policy::default_policy().memory);
    let filled = effective_text("# mine\n[memory]\npressure_at = 80 # note\n").unwrap();
    assert!(
        filled.starts_with("# mine\n[memory]\npressure_at = 80 # note\n"),
        "{filled}"
    );
    assert!(check(&filled).is_empty());
    assert_eq!(Policy::parse(&filled, "f").unwrap().memory.pressure_at, 80);
}

/// docs/POLICY.md's key table is `agentcg policy explain --markdown`.
#[test]
fn policy_doc_matches_the_registry() {
    let doc = include_str!("../../../../docs/POLICY.md");
    let begin = "<!-- keys: generated by `agentcg policy explain --markdown` -->\n";
    let end = "<!-- keys end -->";
    let start = doc
        .find(begin)
        .expect("docs/POLICY.md lacks the keys marker")
        + begin.len();
    let stop = doc[start..]
        .find(end)
        .expect("docs/POLICY.md lacks the end marker")
        + start;
    assert_eq!(
        doc[start..stop],
        keys::markdown(),
        "docs/POLICY.md is stale: regenerate its table with `agentcg policy explain --markdown`"
    );
}

#[test]
fn the_admission_section_is_typed_and_warns_on_a_useless_queue() {
    let p = Policy::parse(
        "[admission]\nenabled = false\nmin_samples = 5\npercentile = 90\nqueue_for = \"0s\"\n",
        "a",
    )
    .unwrap();
    assert_eq!(
        p.admission,
        crate::admission::AdmissionPolicy {
            enabled: false,
            min_samples: 5,
            percentile: 90,
            queue_for: std::time::Duration::ZERO,
        }
    );
    assert_eq!(Policy::default_policy().admission.percentile, 95);
    let found = errors("[admission]\nenabled = \"yes\"\npercentile = 30\n");
    let lines: Vec<String> = found.iter().map(|p| p.render("a")).collect();
    assert_eq!(found.len(), 2, "{lines:?}");
    assert!(
        lines[0].starts_with("a:2:11: admission.enabled: expected boolean"),
        "{lines:?}"
    );
    assert_eq!(
        lines[1],
        "a:3:14: admission.percentile: 30 is out of range 50..=100"
    );
    let found = check("[admission]\nenabled = false\nqueue_for = \"1m\"\n");
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].severity, Severity::Warning);
    assert_eq!(found[0].key, "admission.queue_for");
}

#[test]
fn a_syntax_error_toml_edit_leaves_unexplained_still_says_why() {
    // Found by the `policy` fuzz target: a control character in a comment, for which
    // toml_edit's message is empty.
    for text in [
        "# tiers\x01 here\n",
        "a = 1 # x\x7f\n",
        "# ok\n[memory]\n# \x02\n",
    ] {
        let found = errors(text);
        assert_eq!(found.len(), 1, "{text:?}: {found:?}");
        assert!(!found[0].message.trim().is_empty(), "{text:?}: {found:?}");
    }
    let err = edit::set(
        "# tiers\x01 here\n",
        &[edit::Assignment::parse("memory.pressure_at=80").unwrap()],
    )
    .unwrap_err();
    assert!(err.contains("control character '\\u{1}'"), "{err}");
}
