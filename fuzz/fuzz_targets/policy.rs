//! The policy parser and checker on arbitrary text: no input panics, every problem and
//! every rejection carries a message (check, parse, diff, `set`), and the checker and the parser agree on whether
//! a text is a valid policy.
#![no_main]

use agentcg_core::policy::{self, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let problems = policy::check::check(text);
    for p in &problems {
        let line = p.render("fuzz.toml");
        assert!(!p.message.trim().is_empty(), "empty message in {line:?}");
    }
    let parsed = Policy::parse(text, "fuzz.toml");
    if let Err(e) = &parsed {
        assert!(!e.to_string().trim().is_empty(), "empty parse error");
    }
    let errors = problems
        .iter()
        .filter(|p| p.severity == policy::check::Severity::Error)
        .count();
    assert_eq!(
        errors == 0,
        parsed.is_ok(),
        "checker ({problems:?}) and parser ({parsed:?}) disagree on {text:?}"
    );
    if parsed.is_ok() {
        // `policy show --effective` of a valid policy is itself a valid policy.
        let eff = policy::effective_text(text).expect("a valid policy has an effective text");
        Policy::parse(&eff, "effective").unwrap_or_else(|e| panic!("effective text refused: {e}"));
    }
    if let Err(e) = policy::diff::diff(policy::DEFAULT_POLICY, text) {
        assert!(!e.trim().is_empty(), "empty diff error");
    }
    // `policy set`: the first line is the assignment, the rest the file it edits.
    let (first, rest) = text.split_once('\n').unwrap_or((text, ""));
    match policy::edit::Assignment::parse(first) {
        Ok(a) => {
            if let Err(e) = policy::edit::set(rest, &[a]) {
                assert!(!e.trim().is_empty(), "empty set error");
            }
        }
        Err(e) => assert!(!e.trim().is_empty(), "empty assignment error"),
    }
});
