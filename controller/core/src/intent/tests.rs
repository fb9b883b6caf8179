//! Tests of the intent parser: every form, every key, and what is refused and why.

use super::*;

#[test]
fn compact_form_parses_every_key() {
    let i = Intent::parse_compact(
        "mem=1.5G,mem.max=2G,cpu=2,cpu.weight=200,pids=256,timeout=10m,priority=low,class=test,cpu.budget=120s",
    )
    .unwrap();
    assert_eq!(i.mem, Some(3 << 29));
    assert_eq!(i.mem_max, Some(2 << 30));
    assert_eq!(i.millicpus, Some(2000));
    assert_eq!(i.cpu_weight, Some(200));
    assert_eq!(i.pids, Some(256));
    assert_eq!(i.timeout, Some(Duration::from_secs(600)));
    assert_eq!(i.priority, Some(Priority::Low));
    assert_eq!(i.class.as_deref(), Some("test"));
    assert_eq!(i.cpu_budget, Some(Duration::from_secs(120)));
    assert_eq!(Intent::parse_compact(&i.to_compact()).unwrap(), i);
}

#[test]
fn fractional_cpus() {
    assert_eq!(
        Intent::parse_compact("cpu=0.5").unwrap().millicpus,
        Some(500)
    );
    assert_eq!(
        Intent::parse_compact("cpu=1.25").unwrap().millicpus,
        Some(1250)
    );
    assert_eq!(format_millicpus(1250), "1.25");
    assert_eq!(format_millicpus(3000), "3");
}

/// CPUs are decimal: every value with at most 3 places is exact, in both forms,
/// down to the documented minimum of 0.01.
#[test]
fn cpus_are_exact_decimals_in_both_forms() {
    let cases: &[(&str, u32)] = &[
        ("0.01", 10),
        ("0.1", 100),
        ("0.2", 200),
        ("0.3", 300),
        ("0.333", 333),
        ("0.999", 999),
        ("1.001", 1001),
        ("2.5", 2500),
        ("1024", 1_024_000),
    ];
    for (text, milli) in cases {
        let compact = Intent::parse_compact(&format!("cpu={text}")).unwrap();
        assert_eq!(compact.millicpus, Some(*milli), "cpu={text}");
        let number = Intent::parse_json(&format!(r#"{{"cpu": {text}}}"#)).unwrap();
        assert_eq!(number.millicpus, Some(*milli), "JSON number {text}");
        let string = Intent::parse_json(&format!(r#"{{"cpu": "{text}"}}"#)).unwrap();
        assert_eq!(string.millicpus, Some(*milli), "JSON string {text}");
        assert_eq!(format_millicpus(*milli), *text);
    }
    // A JSON number is a number, exponent or not; its text form is not.
    let exp = Intent::parse_json(r#"{"cpu": 1e-2, "mem": 1.5e9}"#).unwrap();
    assert_eq!((exp.millicpus, exp.mem), (Some(10), Some(1_500_000_000)));
    // Every millicpu amount in range prints and parses back to itself.
    for m in (MIN_MILLICPUS..=5000).step_by(7) {
        let i = Intent::parse_compact(&format!("cpu={}", format_millicpus(m))).unwrap();
        assert_eq!(i.millicpus, Some(m));
    }
}

/// Every rejected CPU amount names the key, the value and the reason.
#[test]
fn bad_cpus_name_key_value_and_reason() {
    let cases: &[(&str, &str)] = &[
        ("0.0001", "finer than 1 millicpu"),
        ("0.3333", "finer than 1 millicpu"),
        ("0.005", "out of range 0.01..=1024"),
        ("0.009", "out of range 0.01..=1024"),
        ("0", "out of range 0.01..=1024"),
        ("1024.001", "out of range 0.01..=1024"),
        ("4294967.296", "out of range 0.01..=1024"),
        ("99999999999999999999999", "out of range 0.01..=1024"),
        ("-0.5", "expected CPUs"),
        ("1e-2", "expected CPUs"),
        ("1E3", "expected CPUs"),
        ("NaN", "expected CPUs"),
        ("inf", "expected CPUs"),
        (".5", "expected CPUs"),
        ("1.", "expected CPUs"),
        ("0.5K", "expected CPUs"),
        ("", "expected CPUs"),
    ];
    for (value, reason) in cases {
        let err = Intent::parse_compact(&format!("cpu={value}"))
            .expect_err(value)
            .to_string();
        assert!(
            err.contains(&format!("`cpu={value}`")) && err.contains(reason),
            "cpu={value} → `{err}` (wanted `{reason}`)"
        );
    }
    for (json, reason) in [
        (r#"{"cpu": -0.5}"#, "expected CPUs"),
        (r#"{"cpu": 0.0001}"#, "finer than 1 millicpu"),
        (r#"{"cpu": 1e-7}"#, "finer than 1 millicpu"),
        (r#"{"cpu": 0.005}"#, "out of range"),
        (r#"{"cpu": 1e300}"#, "out of range"),
        (r#"{"cpu": "1e-2"}"#, "expected CPUs"),
        (r#"{"cpu": "NaN"}"#, "expected CPUs"),
    ] {
        let err = Intent::parse_json(json).expect_err(json).to_string();
        assert!(
            err.contains("`cpu=") && err.contains(reason),
            "{json} → `{err}`"
        );
    }
}

/// A key given twice in the JSON form is refused, naming the key, as in the
/// compact form; serde_json alone would silently keep the last value.
#[test]
fn json_duplicate_keys_are_rejected() {
    for json in [
        r#"{"mem": "1G", "mem": "2G"}"#,
        r#"{"mem": "1G", "pids": 4, "mem": "1G"}"#,
        r#"{"cpu": 1, "cpu": "1"}"#,
    ] {
        let err = Intent::parse_json(json).expect_err(json);
        let key = if json.contains("cpu") { "cpu" } else { "mem" };
        assert_eq!(err, IntentError::Duplicate(key.into()), "{json}");
        assert!(err.to_string().contains(&format!("`{key}` given twice")));
        assert!(Intent::parse_any(json).is_err(), "{json}");
    }
    // Members are read in document order; distinct keys still parse.
    let i = Intent::parse_json(r#"{"pids": 4, "mem": "1G", "mem.max": "2G"}"#).unwrap();
    assert_eq!(
        (i.pids, i.mem, i.mem_max),
        (Some(4), Some(1 << 30), Some(2 << 30))
    );
}

#[test]
fn json_form_matches_compact_form() {
    let j =
        Intent::parse_json(r#"{"mem":"512M","mem.max":1073741824,"cpu":1.5,"pids":64}"#).unwrap();
    let c = Intent::parse_compact("mem=512M,mem.max=1G,cpu=1.5,pids=64").unwrap();
    assert_eq!(j, c);
}

#[test]
fn hints_from_the_reference() {
    assert_eq!(
        Intent::parse_hint("memory:high").unwrap().mem_max,
        Some(4 << 30)
    );
    assert_eq!(
        Intent::parse_hint("memory:low").unwrap().mem_max,
        Some(256 << 20)
    );
    let i = Intent::parse_hint("memory:512m").unwrap();
    assert_eq!((i.mem, i.mem_max), (Some(256 << 20), Some(512 << 20)));
    assert_eq!(
        Intent::parse_any("memory:2g").unwrap().mem_max,
        Some(2 << 30)
    );
}

#[test]
fn defaults_fill_only_open_fields() {
    let d = Intent::parse_compact("mem=1G,pids=100,timeout=5m").unwrap();
    let i = Intent::parse_compact("mem=2G").unwrap().or(&d);
    assert_eq!(i.mem, Some(2 << 30));
    assert_eq!(i.pids, Some(100));
    assert_eq!(i.timeout, Some(Duration::from_secs(300)));
}

/// Every one of these is rejected, and the message names the problem.
#[test]
fn malformed_intents_are_rejected_with_a_reason() {
    let huge = format!("mem={}", "9".repeat(2000));
    let cases: &[(&str, &str)] = &[
        ("", "empty"),
        ("   ", "empty"),
        ("mem", "key=value"),
        ("mem=", "empty value"),
        ("=5", "key=value"),
        ("mem=5X", "unknown unit"),
        ("mem=-1G", "not a number"),
        ("mem=1e9", "unknown unit"),
        ("mem=0", "below the minimum"),
        ("mem=100K", "below the minimum"),
        ("mem=999999T", "above the maximum"),
        ("mem=18446744073709551616", "too large"),
        ("mem=1G,mem=2G", "twice"),
        ("mem=2G,mem.max=1G", "larger than mem.max"),
        ("memory=1G", "unknown key `memory`"),
        ("mem=1G,foo=bar", "unknown key `foo`"),
        ("cpu=0", "out of range"),
        ("cpu=-1", "expected CPUs"),
        ("cpu=1.2345", "at most 3 places"),
        ("cpu=0.001", "out of range"),
        ("cpu=abc", "expected CPUs"),
        ("cpu=99999", "out of range"),
        ("cpu.weight=0", "out of range"),
        ("cpu.weight=10001", "out of range"),
        ("cpu.weight=1.5", "whole number"),
        ("pids=0", "out of range"),
        ("pids=99999999999", "out of range"),
        ("pids=+5", "whole number"),
        ("timeout=0", "out of range"),
        ("timeout=30y", "unknown unit"),
        ("timeout=8d", "out of range"),
        ("priority=urgent", "not a priority"),
        ("class=Test", "[a-z]"),
        ("class=a;rm -rf /", "[a-z]"),
        ("mem=$(touch /tmp/x)", "not a number"),
        ("mem=1G;reboot", "unknown unit"),
        ("mem=1G`id`", "unknown unit"),
        ("mem=1G mem.max=2G", "unknown unit"),
        ("mem=1G,,pids=3", "key=value"),
        (huge.as_str(), "at most 1024"),
    ];
    assert!(cases.len() >= 30);
    for (spec, needle) in cases {
        let err = Intent::parse_compact(spec).expect_err(spec).to_string();
        assert!(
            err.contains(needle),
            "`{spec}` → `{err}` (wanted `{needle}`)"
        );
    }
}

/// docs/intent.schema.json documents exactly the keys the parser accepts, and its
/// example parses.
#[test]
fn json_schema_matches_the_parser() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/intent.schema.json")).unwrap();
    let mut documented: Vec<&str> = schema["properties"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut accepted: Vec<&str> = KEYS.iter().map(|(k, _)| *k).collect();
    documented.sort_unstable();
    accepted.sort_unstable();
    assert_eq!(documented, accepted);
    // The CPU range the schema documents is the parser's, in both of its forms.
    let cpu = &schema["properties"]["cpu"]["oneOf"];
    assert_eq!(cpu[0]["minimum"], f64::from(MIN_MILLICPUS) / 1000.0);
    assert_eq!(cpu[0]["maximum"], f64::from(MAX_MILLICPUS / 1000));
    assert_eq!(cpu[1]["pattern"], r"^[0-9]+(\.[0-9]{1,3})?$");
    let example = schema["examples"][0].to_string();
    let i = Intent::parse_json(&example).unwrap();
    assert_eq!(
        i,
        Intent::parse_compact(
            "mem=1.5G,mem.max=2G,cpu=2,cpu.weight=200,pids=256,timeout=10m,priority=low,class=test"
        )
        .unwrap()
    );
}

#[test]
fn malformed_hints_and_json_are_rejected() {
    for hint in [
        "memory:a[$(touch /tmp/x)]g",
        "memory:",
        "mem:2g",
        "memory:huge",
        "memory:0",
    ] {
        assert!(Intent::parse_any(hint).is_err(), "{hint}");
    }
    let cases = [
        (r#"{"mem": "1G", "bogus": 1}"#, "unknown key `bogus`"),
        (r#"{"mem": [1]}"#, "string or a number"),
        (r#"{"mem": -5}"#, "not a number"),
        (r#"{}"#, "empty"),
        (r#"{"mem": "1G""#, "JSON"),
        (r#"[1,2]"#, "key=value"),
        (r#"{"mem": "1G", "mem": "1G"}"#, "`mem` given twice"),
        (r#"{"mem": {"a": 1}}"#, "string or a number"),
        (r#"{"mem": null}"#, "string or a number"),
    ];
    for (text, needle) in cases {
        let err = Intent::parse_any(text).expect_err(text).to_string();
        assert!(err.contains(needle), "`{text}` → `{err}`");
    }
}
