//! The intent parser on arbitrary text: no input panics, every rejection says why, and
//! an accepted intent survives its own compact form unchanged.
#![no_main]

use agentcg_core::intent::Intent;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for parse in [
        Intent::parse_compact,
        Intent::parse_json,
        Intent::parse_hint,
        Intent::parse_any,
    ] {
        match parse(text) {
            Ok(intent) => {
                let compact = intent.to_compact();
                if !compact.is_empty() {
                    let again = Intent::parse_compact(&compact)
                        .unwrap_or_else(|e| panic!("{compact:?} (from {text:?}) refused: {e}"));
                    assert_eq!(again, intent, "{text:?} -> {compact:?}");
                }
            }
            Err(e) => assert!(
                !e.to_string().trim().is_empty(),
                "empty message for {text:?}"
            ),
        }
    }
});
