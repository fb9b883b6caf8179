//! Resource intents: what an agent declares a tool call needs.
//!
//! Three input forms reach one validated [`Intent`]:
//! - the compact form `mem=1.5G,mem.max=2G,cpu=2,cpu.weight=200,pids=256,timeout=10m,priority=low,class=test`;
//! - a JSON object with the same keys (`{"mem": "1.5G", "pids": 256}`), sizes as strings or byte counts;
//! - the AgentCgroup reference's `AGENT_RESOURCE_HINT` (`memory:low|medium|high|2g|512m`).
//!
//! Parsing is strict: every key is known, every value in range, duplicates and
//! leftovers rejected, and nothing is ever handed to a shell.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::units::{self, HumanSize, UnitError};

/// Longest intent text accepted, in bytes.
pub const MAX_SPEC_LEN: usize = 1024;
/// Smallest memory amount an intent may declare (1 MiB).
pub const MIN_MEM: u64 = 1 << 20;
/// Largest memory amount an intent may declare (64 TiB): anything above is a typo.
pub const MAX_MEM: u64 = 64 << 40;
/// Smallest CPU amount, in thousandths of a CPU (0.01 CPU: 1 ms of every 100 ms period).
pub const MIN_MILLICPUS: u32 = 10;
/// Largest CPU count, in thousandths of a CPU.
pub const MAX_MILLICPUS: u32 = 1024 * 1000;
/// Largest pids.max a call may ask for (the kernel's PID_MAX_LIMIT).
pub const MAX_PIDS: u32 = 4 * 1024 * 1024;
/// Longest timeout or CPU budget (7 days).
pub const MAX_DURATION: Duration = Duration::from_secs(7 * 86_400);

/// The keys of the compact and JSON forms, with their accepted values, for errors and docs.
pub const KEYS: &[(&str, &str)] = &[
    ("mem", "expected memory, e.g. 512M, 1.5G (sets memory.high)"),
    ("mem.max", "hard memory ceiling, e.g. 2G (sets memory.max)"),
    ("cpu", "CPUs, e.g. 0.5, 2 (sets cpu.max)"),
    ("cpu.weight", "1..=10000 (sets cpu.weight)"),
    ("cpu.budget", "cumulative CPU time, e.g. 120s"),
    ("pids", "1..=4194304 (sets pids.max)"),
    ("timeout", "wall-clock limit, e.g. 30s, 10m"),
    ("priority", "high | normal | low"),
    (
        "class",
        "command class label, [a-z][a-z0-9_-]{0,31}, e.g. test, build, install",
    ),
];

/// Why an intent was rejected. Each variant names the key and the text that failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IntentError {
    #[error("empty intent (write e.g. `mem=512M,timeout=5m`, or leave the intent out)")]
    Empty,
    #[error("intent is {0} bytes long; at most {MAX_SPEC_LEN} are accepted")]
    TooLong(usize),
    #[error("`{0}` is not `key=value` (accepted keys: {keys})", keys = key_list())]
    NotKeyValue(String),
    #[error("unknown key `{0}` (accepted keys: {keys})", keys = key_list())]
    UnknownKey(String),
    #[error("key `{0}` given twice")]
    Duplicate(String),
    #[error("`{key}={value}`: {reason}")]
    BadValue {
        key: String,
        value: String,
        reason: String,
    },
    #[error("mem ({mem}) is larger than mem.max ({max})", mem = HumanSize(*.mem), max = HumanSize(*.max))]
    ExpectedAboveMax { mem: u64, max: u64 },
    #[error("intent JSON: {0}")]
    Json(String),
    #[error(
        "resource hint `{0}`: expected `memory:low`, `memory:medium`, `memory:high` or `memory:SIZE` (e.g. memory:2g)"
    )]
    BadHint(String),
}

fn key_list() -> String {
    KEYS.iter().map(|(k, _)| *k).collect::<Vec<_>>().join(", ")
}

/// A priority class, for sessions and for calls within a session.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "low" => Ok(Priority::Low),
            "normal" => Ok(Priority::Normal),
            "high" => Ok(Priority::High),
            _ => Err(format!(
                "`{s}` is not a priority (accepted: high, normal, low)"
            )),
        }
    }
}

/// A validated intent. `None` means "not declared": the policy's defaults apply.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// Expected memory in bytes (becomes memory.high).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem: Option<u64>,
    /// Maximum memory in bytes (becomes memory.max).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_max: Option<u64>,
    /// CPU bandwidth in thousandths of a CPU (becomes cpu.max).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub millicpus: Option<u32>,
    /// cpu.weight, 1..=10000.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_weight: Option<u16>,
    /// Cumulative CPU-time budget.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_budget: Option<Duration>,
    /// pids.max.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// Wall-clock limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Command class label (`test`, `build`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
}

impl Intent {
    /// Parses the compact `key=value,...` form.
    pub fn parse_compact(spec: &str) -> Result<Intent, IntentError> {
        check_len(spec)?;
        if spec.trim().is_empty() {
            return Err(IntentError::Empty);
        }
        let mut pairs = Vec::new();
        for item in spec.split(',') {
            let (key, value) = item
                .split_once('=')
                .ok_or_else(|| IntentError::NotKeyValue(item.to_string()))?;
            pairs.push((key.to_string(), value.to_string()));
        }
        from_pairs(pairs)
    }

    /// Parses a JSON object with the compact form's keys; numbers are taken as bytes,
    /// seconds, CPUs or counts as the key says. A key given twice is an error, as in
    /// the compact form (serde_json alone would keep the last value).
    pub fn parse_json(text: &str) -> Result<Intent, IntentError> {
        check_len(text)?;
        let JsonPairs(pairs) =
            serde_json::from_str(text).map_err(|e| IntentError::Json(e.to_string()))?;
        if pairs.is_empty() {
            return Err(IntentError::Empty);
        }
        let mut texts = Vec::with_capacity(pairs.len());
        for (key, value) in pairs {
            let text = match value {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => json_number_text(&n),
                other => {
                    return Err(IntentError::BadValue {
                        key,
                        value: other.to_string(),
                        reason: "expected a string or a number".into(),
                    });
                }
            };
            texts.push((key, text));
        }
        from_pairs(texts)
    }

    /// Parses the AgentCgroup reference's `AGENT_RESOURCE_HINT`: `memory:low` (256 MiB),
    /// `memory:medium` (1 GiB), `memory:high` (4 GiB) or `memory:SIZE`. The amount is
    /// the call's hard maximum; its expected size is half of it.
    pub fn parse_hint(hint: &str) -> Result<Intent, IntentError> {
        check_len(hint)?;
        let bad = || IntentError::BadHint(hint.to_string());
        let amount = hint.strip_prefix("memory:").ok_or_else(bad)?;
        let max = match amount {
            "low" => 256 << 20,
            "medium" => 1 << 30,
            "high" => 4 << 30,
            size => units::parse_size(size).map_err(|_| bad())?,
        };
        check_mem("memory", amount, max)?;
        Ok(Intent {
            mem: Some((max / 2).max(MIN_MEM)),
            mem_max: Some(max),
            ..Intent::default()
        })
    }

    /// Parses any of the three forms: JSON if it starts with `{`, a hint if it starts
    /// with `memory:`, the compact form otherwise.
    pub fn parse_any(text: &str) -> Result<Intent, IntentError> {
        let t = text.trim_start();
        if t.starts_with('{') {
            Intent::parse_json(text)
        } else if t.starts_with("memory:") {
            Intent::parse_hint(text)
        } else {
            Intent::parse_compact(text)
        }
    }

    /// Fills every field this intent leaves open from `defaults`.
    pub fn or(self, defaults: &Intent) -> Intent {
        Intent {
            mem: self.mem.or(defaults.mem),
            mem_max: self.mem_max.or(defaults.mem_max),
            millicpus: self.millicpus.or(defaults.millicpus),
            cpu_weight: self.cpu_weight.or(defaults.cpu_weight),
            cpu_budget: self.cpu_budget.or(defaults.cpu_budget),
            pids: self.pids.or(defaults.pids),
            timeout: self.timeout.or(defaults.timeout),
            priority: self.priority.or(defaults.priority),
            class: self.class.or_else(|| defaults.class.clone()),
        }
    }

    /// The compact form of this intent (parses back to an equal intent).
    pub fn to_compact(&self) -> String {
        let mut out = Vec::new();
        if let Some(v) = self.mem {
            out.push(format!("mem={}", units::compact_size(v)));
        }
        if let Some(v) = self.mem_max {
            out.push(format!("mem.max={}", units::compact_size(v)));
        }
        if let Some(v) = self.millicpus {
            out.push(format!("cpu={}", format_millicpus(v)));
        }
        if let Some(v) = self.cpu_weight {
            out.push(format!("cpu.weight={v}"));
        }
        if let Some(v) = self.cpu_budget {
            out.push(format!("cpu.budget={}", units::compact_duration(v)));
        }
        if let Some(v) = self.pids {
            out.push(format!("pids={v}"));
        }
        if let Some(v) = self.timeout {
            out.push(format!("timeout={}", units::compact_duration(v)));
        }
        if let Some(v) = self.priority {
            out.push(format!("priority={v}"));
        }
        if let Some(v) = &self.class {
            out.push(format!("class={v}"));
        }
        out.join(",")
    }
}

/// `1500` → `1.5`, `2000` → `2`.
pub fn format_millicpus(m: u32) -> String {
    if m.is_multiple_of(1000) {
        (m / 1000).to_string()
    } else {
        let s = format!("{}.{:03}", m / 1000, m % 1000);
        s.trim_end_matches('0').to_string()
    }
}

/// A JSON number as the decimal text the value parsers read: integers as they are, a
/// fraction (a double in serde_json) in its shortest exact-round-trip form without an
/// exponent (`0.1`, `1e-7` → `0.0000001`), so `{"cpu": 0.1}` means `cpu=0.1`.
fn json_number_text(n: &serde_json::Number) -> String {
    match n.as_f64() {
        Some(f) if n.is_f64() => f.to_string(),
        _ => n.to_string(),
    }
}

/// The members of a JSON object in document order, duplicates kept (for
/// [`from_pairs`] to reject) instead of merged.
struct JsonPairs(Vec<(String, serde_json::Value)>);

impl<'de> Deserialize<'de> for JsonPairs {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<JsonPairs, D::Error> {
        struct PairsVisitor;
        impl<'de> serde::de::Visitor<'de> for PairsVisitor {
            type Value = JsonPairs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of intent keys")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<JsonPairs, A::Error> {
                let mut pairs = Vec::new();
                while let Some(pair) = map.next_entry()? {
                    pairs.push(pair);
                }
                Ok(JsonPairs(pairs))
            }
        }
        d.deserialize_map(PairsVisitor)
    }
}

fn check_len(text: &str) -> Result<(), IntentError> {
    if text.len() > MAX_SPEC_LEN {
        Err(IntentError::TooLong(text.len()))
    } else {
        Ok(())
    }
}

fn bad(key: &str, value: &str, reason: impl Into<String>) -> IntentError {
    IntentError::BadValue {
        key: key.to_string(),
        value: value.to_string(),
        reason: reason.into(),
    }
}

fn unit_err(key: &str, value: &str, e: UnitError) -> IntentError {
    bad(key, value, e.to_string())
}

fn check_mem(key: &str, value: &str, bytes: u64) -> Result<u64, IntentError> {
    if bytes < MIN_MEM {
        return Err(bad(
            key,
            value,
            format!("below the minimum of {}", HumanSize(MIN_MEM)),
        ));
    }
    if bytes > MAX_MEM {
        return Err(bad(
            key,
            value,
            format!("above the maximum of {}", HumanSize(MAX_MEM)),
        ));
    }
    Ok(bytes)
}

fn parse_int<T: FromStr + PartialOrd + Copy + fmt::Display>(
    key: &str,
    value: &str,
    min: T,
    max: T,
) -> Result<T, IntentError> {
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad(
            key,
            value,
            format!("expected a whole number in {min}..={max}"),
        ));
    }
    match value.parse::<T>() {
        Ok(v) if v >= min && v <= max => Ok(v),
        _ => Err(bad(key, value, format!("out of range {min}..={max}"))),
    }
}

/// CPUs as an exact decimal: `0.1` is 100 millicpus, `0.333` is 333.
fn parse_millicpus(key: &str, value: &str) -> Result<u32, IntentError> {
    let range = || {
        bad(
            key,
            value,
            format!(
                "out of range {}..={}",
                format_millicpus(MIN_MILLICPUS),
                format_millicpus(MAX_MILLICPUS)
            ),
        )
    };
    let milli = units::parse_fixed(value, 3).map_err(|e| match e {
        UnitError::TooPrecise { .. } => bad(
            key,
            value,
            "finer than 1 millicpu: CPUs take at most 3 places, e.g. 0.125",
        ),
        UnitError::Overflow(_) => range(),
        _ => bad(
            key,
            value,
            "expected CPUs as a decimal with at most 3 places, e.g. 0.5 or 2",
        ),
    })?;
    match u32::try_from(milli) {
        Ok(m) if (MIN_MILLICPUS..=MAX_MILLICPUS).contains(&m) => Ok(m),
        _ => Err(range()),
    }
}

fn parse_bounded_duration(key: &str, value: &str, min: Duration) -> Result<Duration, IntentError> {
    let d = units::parse_duration(value).map_err(|e| unit_err(key, value, e))?;
    if d < min || d > MAX_DURATION {
        return Err(bad(
            key,
            value,
            format!(
                "out of range {}..={}",
                units::compact_duration(min),
                units::compact_duration(MAX_DURATION)
            ),
        ));
    }
    Ok(d)
}

fn parse_class(key: &str, value: &str) -> Result<String, IntentError> {
    let mut chars = value.chars();
    let ok = value.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if ok {
        Ok(value.to_string())
    } else {
        Err(bad(
            key,
            value,
            "expected a label matching [a-z][a-z0-9_-]{0,31}",
        ))
    }
}

/// Validates key/value pairs into an intent: known keys, no duplicates, values in range.
fn from_pairs(pairs: Vec<(String, String)>) -> Result<Intent, IntentError> {
    let mut intent = Intent::default();
    let mut seen: Vec<String> = Vec::new();
    for (key, value) in pairs {
        if seen.contains(&key) {
            return Err(IntentError::Duplicate(key));
        }
        let (k, v) = (key.as_str(), value.as_str());
        match k {
            "mem" | "mem.max" => {
                let bytes = units::parse_size(v).map_err(|e| unit_err(k, v, e))?;
                let bytes = check_mem(k, v, bytes)?;
                if k == "mem" {
                    intent.mem = Some(bytes);
                } else {
                    intent.mem_max = Some(bytes);
                }
            }
            "cpu" => intent.millicpus = Some(parse_millicpus(k, v)?),
            "cpu.weight" => intent.cpu_weight = Some(parse_int(k, v, 1u16, 10_000u16)?),
            "cpu.budget" => {
                intent.cpu_budget = Some(parse_bounded_duration(k, v, Duration::from_millis(10))?)
            }
            "pids" => intent.pids = Some(parse_int(k, v, 1u32, MAX_PIDS)?),
            "timeout" => {
                intent.timeout = Some(parse_bounded_duration(k, v, Duration::from_millis(1))?)
            }
            "priority" => intent.priority = Some(v.parse().map_err(|e: String| bad(k, v, e))?),
            "class" => intent.class = Some(parse_class(k, v)?),
            _ if k.is_empty() => return Err(IntentError::NotKeyValue(format!("{k}={v}"))),
            _ => return Err(IntentError::UnknownKey(key)),
        }
        seen.push(key);
    }
    if let (Some(mem), Some(max)) = (intent.mem, intent.mem_max)
        && mem > max
    {
        return Err(IntentError::ExpectedAboveMax { mem, max });
    }
    Ok(intent)
}

#[cfg(test)]
mod tests;
