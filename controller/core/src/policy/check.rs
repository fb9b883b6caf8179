//! `policy check`: every problem of a policy text at once, each with its line and
//! column (toml_edit keeps the spans): syntax, unknown keys (with a "did you mean"),
//! types and ranges from the key registry ([`super::keys`]), then the cross-field
//! checks of [`super::cross`]. Warnings flag legal but suspicious values.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use serde::Serialize;
use toml_edit::{ImDocument, Item, TableLike, Value};

use super::keys::{self, KEYS, Key, Kind};
use crate::intent::Intent;
use crate::units;

/// How bad a problem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
}

/// One problem, located in the text (1-based line and column).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    /// The key path (`memory.pressure_at`, `class[2].intent`); `syntax` for parse errors.
    pub key: String,
    pub message: String,
    pub severity: Severity,
}

impl Problem {
    /// `ORIGIN:LINE:COLUMN: key: message` (`warning: ` before a warning's message).
    pub fn render(&self, origin: &str) -> String {
        let level = match self.severity {
            Severity::Error => "",
            Severity::Warning => "warning: ",
        };
        format!(
            "{origin}:{}:{}: {}: {level}{}",
            self.line, self.column, self.key, self.message
        )
    }
}

/// A typed value read from the text (or from a key's default).
#[derive(Debug, Clone)]
pub(super) enum Val {
    Bytes(u64),
    Time(Duration),
    Int(i64),
    Bool(bool),
    Milli(u32),
    Str(String),
    Intent(Box<Intent>),
    Words(Vec<Vec<String>>),
}

/// A value and where it was written (`None`: the default).
pub(super) type Located = (Val, Option<Range<usize>>);

/// One `[[class]]` as written.
#[derive(Debug, Default)]
pub(super) struct ClassSeen {
    pub index: usize,
    pub fields: BTreeMap<&'static str, Located>,
}

/// What the structural pass read, for the cross-field checks.
#[derive(Debug, Default)]
pub(super) struct Seen {
    pub values: BTreeMap<&'static str, Located>,
    pub classes: Vec<ClassSeen>,
}

impl Seen {
    /// The value of a non-class key: as written, else its default.
    pub fn get(&self, path: &str) -> Option<(Val, Option<Range<usize>>)> {
        if let Some(v) = self.values.get(path) {
            return Some(v.clone());
        }
        let key = keys::find(path)?;
        let default = key.default?.parse::<Value>().ok()?;
        convert(key.kind, &default).ok().map(|v| (v, None))
    }
}

/// Collects problems; turns byte spans into lines and columns.
pub(super) struct Sink<'t> {
    text: &'t str,
    pub problems: Vec<Problem>,
}

impl Sink<'_> {
    pub fn push(
        &mut self,
        span: Option<Range<usize>>,
        key: &str,
        severity: Severity,
        message: String,
    ) {
        let (line, column) = line_col(self.text, span.map_or(0, |s| s.start));
        self.problems.push(Problem {
            line,
            column,
            key: key.to_string(),
            message,
            severity,
        });
    }

    pub fn error(&mut self, span: Option<Range<usize>>, key: &str, message: String) {
        self.push(span, key, Severity::Error, message);
    }
}

/// 1-based line and column (in characters) of byte `offset`.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// toml_edit's message for a syntax error; for the errors it leaves without one (a
/// control character in a comment), what stands at the error's place.
pub fn syntax_message(text: &str, e: &toml_edit::TomlError) -> String {
    let message = e.message().trim();
    if !message.is_empty() {
        return message.to_string();
    }
    let at = e.span().map_or(0, |s| s.start);
    match text.get(at..).and_then(|rest| rest.chars().next()) {
        Some(c) if c.is_control() && c != '\n' => {
            format!("control character {c:?} is not allowed here (TOML allows tab only)")
        }
        Some(c) => format!("unexpected {c:?}"),
        None => "unexpected end of file".to_string(),
    }
}

/// Every problem of `text`, errors and warnings, in text order.
pub fn check(text: &str) -> Vec<Problem> {
    let mut sink = Sink {
        text,
        problems: Vec::new(),
    };
    let doc = match ImDocument::parse(text) {
        Ok(doc) => doc,
        Err(e) => {
            let message = syntax_message(text, &e);
            sink.error(e.span(), "syntax", message);
            return sink.problems;
        }
    };
    let mut seen = Seen::default();
    walk(doc.as_table(), "", &mut seen, &mut sink);
    super::cross::check(&seen, &mut sink);
    sink.problems
        .sort_by_key(|p| (p.line, p.column, p.severity == Severity::Warning));
    sink.problems
}

/// Whether some registry key lies below `prefix` (a section or subsection).
fn is_section(prefix: &str) -> bool {
    let dotted = format!("{prefix}.");
    KEYS.iter()
        .any(|k| k.path.starts_with(&dotted) && !k.path.starts_with("class."))
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

fn walk(table: &dyn TableLike, prefix: &str, seen: &mut Seen, sink: &mut Sink<'_>) {
    for (name, item) in table.iter() {
        let span = table
            .get_key_value(name)
            .and_then(|(k, _)| k.span())
            .or_else(|| item.span());
        let path = join(prefix, name);
        if path == "class" {
            classes(item, span, seen, sink);
        } else if is_section(&path) {
            match item.as_table_like() {
                Some(t) => walk(t, &path, seen, sink),
                None => sink.error(span, &path, "expected a table (a [section])".into()),
            }
        } else if let Some(key) = KEYS.iter().find(|k| k.path == path && k.default.is_some()) {
            leaf(key, item, span, seen, sink);
        } else {
            unknown(&path, prefix, span, sink);
        }
    }
}

fn unknown(path: &str, prefix: &str, span: Option<Range<usize>>, sink: &mut Sink<'_>) {
    let dotted = format!("{prefix}.");
    let siblings = KEYS.iter().filter_map(|k| {
        let rest = if prefix.is_empty() {
            Some(k.path)
        } else {
            k.path.strip_prefix(&dotted)
        }?;
        let next = rest.split('.').next()?;
        Some(join(prefix, next))
    });
    let siblings: Vec<String> = siblings.collect();
    let message = match keys::did_you_mean(path, siblings.iter().map(String::as_str)) {
        Some(near) => format!("unknown key; did you mean `{near}`?"),
        None if prefix.is_empty() => "unknown section".to_string(),
        None => format!("unknown key in [{prefix}] (`agentcg policy explain` lists the keys)"),
    };
    sink.error(span, path, message);
}

fn leaf(
    key: &'static Key,
    item: &Item,
    span: Option<Range<usize>>,
    seen: &mut Seen,
    sink: &mut Sink<'_>,
) {
    let at = item.span().or(span.clone());
    match item.as_value() {
        None => sink.error(
            span,
            key.path,
            format!("expected {}, found a table", key.kind.describe()),
        ),
        Some(v) => match convert(key.kind, v) {
            Ok(val) => {
                seen.values.insert(key.path, (val, at));
            }
            Err(message) => sink.error(at, key.path, message),
        },
    }
}

fn classes(item: &Item, span: Option<Range<usize>>, seen: &mut Seen, sink: &mut Sink<'_>) {
    let tables: Vec<(&dyn TableLike, Option<Range<usize>>)> = match item {
        Item::ArrayOfTables(a) => a.iter().map(|t| (t as &dyn TableLike, t.span())).collect(),
        Item::Value(Value::Array(a)) => {
            let mut out = Vec::new();
            for v in a.iter() {
                match v.as_inline_table() {
                    Some(t) => out.push((t as &dyn TableLike, v.span())),
                    None => sink.error(v.span(), "class", "expected a table per class".into()),
                }
            }
            out
        }
        _ => {
            sink.error(span, "class", "expected [[class]] tables".into());
            return;
        }
    };
    for (index, (table, span)) in tables.into_iter().enumerate() {
        let class = one_class(table, index + 1, span, sink);
        seen.classes.push(class);
    }
}

fn one_class(
    table: &dyn TableLike,
    index: usize,
    span: Option<Range<usize>>,
    sink: &mut Sink<'_>,
) -> ClassSeen {
    let mut class = ClassSeen {
        index,
        fields: BTreeMap::new(),
    };
    let fields: Vec<&'static Key> = KEYS
        .iter()
        .filter(|k| k.path.starts_with("class."))
        .collect();
    for (name, item) in table.iter() {
        let key_span = table.get_key_value(name).and_then(|(k, _)| k.span());
        let label = format!("class[{index}].{name}");
        let Some(key) = fields
            .iter()
            .find(|k| k.path.strip_prefix("class.") == Some(name))
        else {
            let names = fields.iter().filter_map(|k| k.path.strip_prefix("class."));
            let message = match keys::did_you_mean(name, names) {
                Some(near) => format!("unknown key; did you mean `{near}`?"),
                None => "unknown key in [[class]] (name, commands, intent, suggestion)".into(),
            };
            sink.error(key_span, &label, message);
            continue;
        };
        let at = item.span().or(key_span);
        match item.as_value().map(|v| convert(key.kind, v)) {
            Some(Ok(val)) => {
                class.fields.insert(key.path, (val, at));
            }
            Some(Err(message)) => sink.error(at, &label, message),
            None => sink.error(at, &label, format!("expected {}", key.kind.describe())),
        }
    }
    for k in &fields {
        let field = k.path.trim_start_matches("class.");
        if table.get(field).is_none() {
            sink.error(
                span.clone(),
                &format!("class[{index}].{field}"),
                "missing (every [[class]] needs name, commands, intent and suggestion)".into(),
            );
        }
    }
    class
}

/// Type and range of one value.
pub(super) fn convert(kind: Kind, v: &Value) -> Result<Val, String> {
    let expected = || format!("expected {}, found {}", kind.describe(), type_name(v));
    match kind {
        Kind::Size { min } => {
            let s = v.as_str().ok_or_else(expected)?;
            let bytes = units::parse_size(s).map_err(|e| format!("\"{s}\": {e}"))?;
            if bytes < min {
                return Err(format!(
                    "\"{s}\" is below the least {}",
                    units::compact_size(min)
                ));
            }
            Ok(Val::Bytes(bytes))
        }
        Kind::Duration { min, max } => {
            let s = v.as_str().ok_or_else(expected)?;
            let d = units::parse_duration(s).map_err(|e| format!("\"{s}\": {e}"))?;
            if d < min || d > max {
                return Err(format!(
                    "\"{s}\" is out of range {}..{}",
                    units::compact_duration(min),
                    units::compact_duration(max)
                ));
            }
            Ok(Val::Time(d))
        }
        Kind::Int { min, max } => {
            let n = v.as_integer().ok_or_else(expected)?;
            if n < min || n > max {
                return Err(format!("{n} is out of range {min}..={max}"));
            }
            Ok(Val::Int(n))
        }
        Kind::Cpus => {
            let n = v
                .as_float()
                .or(v.as_integer().map(|i| i as f64))
                .ok_or_else(expected)?;
            if !(0.0..=1024.0).contains(&n) {
                return Err(format!("{n} is out of range 0..=1024 CPUs"));
            }
            Ok(Val::Milli((n * 1000.0).round() as u32))
        }
        Kind::Bool => Ok(Val::Bool(v.as_bool().ok_or_else(expected)?)),
        Kind::Choice(options) => {
            let s = v.as_str().ok_or_else(expected)?;
            if options.contains(&s) {
                return Ok(Val::Str(s.to_string()));
            }
            let hint = keys::did_you_mean(s, options.iter().copied())
                .map(|n| format!("; did you mean \"{n}\"?"))
                .unwrap_or_default();
            Err(format!("\"{s}\" is not {}{hint}", kind.describe()))
        }
        Kind::Intent => {
            let s = v.as_str().ok_or_else(expected)?;
            Intent::parse_compact(s)
                .map(|i| Val::Intent(Box::new(i)))
                .map_err(|e| format!("\"{s}\": {e}"))
        }
        Kind::Text => Ok(Val::Str(v.as_str().ok_or_else(expected)?.to_string())),
        Kind::Name => {
            let s = v.as_str().ok_or_else(expected)?;
            Intent::parse_compact(&format!("class={s}"))
                .map(|_| Val::Str(s.to_string()))
                .map_err(|e| format!("\"{s}\": {e}"))
        }
        Kind::Commands => {
            let a = v.as_array().ok_or_else(expected)?;
            let mut words = Vec::new();
            for c in a.iter() {
                let s = c
                    .as_str()
                    .ok_or_else(|| format!("expected strings, found {}", type_name(c)))?;
                let w: Vec<String> = s.split_whitespace().map(str::to_string).collect();
                if w.is_empty() {
                    return Err("a command prefix is empty".into());
                }
                words.push(w);
            }
            if words.is_empty() {
                return Err("commands is empty: the class would match nothing".into());
            }
            Ok(Val::Words(words))
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::String(_) => "a string",
        Value::Integer(_) => "an integer",
        Value::Float(_) => "a float",
        Value::Boolean(_) => "a boolean",
        Value::Datetime(_) => "a datetime",
        Value::Array(_) => "an array",
        Value::InlineTable(_) => "a table",
    }
}
