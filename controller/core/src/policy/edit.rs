//! `policy set KEY=VALUE...`: changes values in policy text with toml_edit, so that
//! everything else (comments, order, spacing) stays byte-identical.

use toml_edit::{DocumentMut, Item, Table, TableLike, Value};

use super::keys;

/// One assignment: `memory.pressure_at=80`, `session.memory=4G`,
/// `class.test.intent=mem.max=3G`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    pub key: String,
    pub value: String,
}

impl Assignment {
    /// Splits `KEY=VALUE` at the first `=`.
    pub fn parse(text: &str) -> Result<Assignment, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("`{text}`: expected KEY=VALUE"))?;
        Ok(Assignment {
            key: key.trim().to_string(),
            value: value.to_string(),
        })
    }
}

/// The TOML value of `raw`: a TOML literal if it is one of the key's type (`80`,
/// `"4G"`, `["git"]`), else the text as a string (`4G`, `mem.max=3G`).
fn literal(kind: keys::Kind, raw: &str) -> Value {
    let parsed = raw.trim().parse::<Value>().ok();
    let fits = |v: &Value| match kind {
        keys::Kind::Int { .. } => v.is_integer(),
        keys::Kind::Bool => v.is_bool(),
        keys::Kind::Cpus => v.is_integer() || v.is_float(),
        keys::Kind::Commands => v.is_array(),
        _ => v.is_str(),
    };
    match parsed {
        Some(v) if fits(&v) => v.decorated(" ", ""),
        _ => Value::from(raw).decorated(" ", ""),
    }
}

/// `text` with each assignment applied. Only the values named change; a key the
/// text lacks is added to its section (created if missing). Validation of the
/// result is the caller's ([`super::check::check`]).
pub fn set(text: &str, assignments: &[Assignment]) -> Result<String, String> {
    let mut doc: DocumentMut = text.parse().map_err(|e: toml_edit::TomlError| {
        format!(
            "the policy does not parse: {}",
            super::check::syntax_message(text, &e)
        )
    })?;
    for a in assignments {
        let (table, field, kind) = locate(&mut doc, &a.key)?;
        let mut value = literal(kind, &a.value);
        match table.get_mut(field) {
            Some(Item::Value(old)) => {
                *value.decor_mut() = old.decor().clone();
                *old = value;
            }
            Some(_) => return Err(format!("{}: is a table, not a value", a.key)),
            None => {
                table.insert(field, Item::Value(value));
            }
        }
    }
    Ok(doc.to_string())
}

/// The table that holds `key`'s value, the field name in it, and the key's type.
fn locate<'d>(
    doc: &'d mut DocumentMut,
    key: &'d str,
) -> Result<(&'d mut dyn TableLike, &'d str, keys::Kind), String> {
    let unknown = || {
        let near = keys::did_you_mean(key, keys::KEYS.iter().map(|k| k.path))
            .map(|n| format!("; did you mean `{n}`?"))
            .unwrap_or_default();
        format!("{key}: no such policy key{near}")
    };
    if let Some(rest) = key.strip_prefix("class.") {
        let (name, field) = rest.rsplit_once('.').ok_or_else(unknown)?;
        let spec = keys::find(&format!("class.{field}")).ok_or_else(unknown)?;
        let classes = doc
            .get_mut("class")
            .and_then(Item::as_array_of_tables_mut)
            .ok_or_else(|| format!("{key}: the policy has no [[class]]"))?;
        let table: &mut Table = classes
            .iter_mut()
            .find(|t| t.get("name").and_then(Item::as_str) == Some(name))
            .ok_or_else(|| format!("{key}: no class named \"{name}\""))?;
        return Ok((table, field, spec.kind));
    }
    let spec = keys::KEYS
        .iter()
        .find(|k| k.path == key && k.default.is_some())
        .ok_or_else(unknown)?;
    let parts: Vec<&str> = spec.path.split('.').collect();
    let (last, sections) = parts.split_last().ok_or_else(unknown)?;
    let mut table = doc.as_table_mut() as &mut dyn TableLike;
    for part in sections {
        if table.get(part).is_none() {
            table.insert(part, Item::Table(Table::new()));
        }
        table = table
            .get_mut(part)
            .and_then(Item::as_table_like_mut)
            .ok_or_else(|| format!("{key}: {part} is not a table"))?;
    }
    Ok((table, last, spec.kind))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::check::check;
    use toml_edit::ImDocument;

    const SHIPPED: [(&str, &str); 4] = [
        ("default", include_str!("../../../../policies/default.toml")),
        (
            "swe-agent-host",
            include_str!("../../../../policies/swe-agent-host.toml"),
        ),
        (
            "multi-tenant",
            include_str!("../../../../policies/multi-tenant.toml"),
        ),
        ("laptop", include_str!("../../../../policies/laptop.toml")),
    ];

    /// A valid value of `kind` different from every shipped one.
    fn other(kind: keys::Kind) -> (&'static str, &'static str) {
        match kind {
            keys::Kind::Int { max, .. } if max >= 100 => ("77", "77"),
            keys::Kind::Int { .. } => ("2", "2"),
            keys::Kind::Bool => ("false", "false"),
            keys::Kind::Cpus => ("1.5", "1.5"),
            keys::Kind::Size { .. } => ("20M", "\"20M\""),
            keys::Kind::Duration { min, .. } if min >= std::time::Duration::from_secs(3600) => {
                ("3d", "\"3d\"")
            }
            keys::Kind::Duration { .. } => ("1s", "\"1s\""),
            keys::Kind::Choice(options) => (options[0], ""),
            keys::Kind::Intent => ("mem=32M", "\"mem=32M\""),
            _ => ("new text", "\"new text\""),
        }
    }

    /// Setting any value of any shipped policy changes exactly that value's text.
    #[test]
    fn set_leaves_the_rest_of_every_shipped_policy_byte_identical() {
        for (name, text) in SHIPPED {
            assert!(check(text).is_empty(), "{name}: {:?}", check(text));
            let doc = ImDocument::parse(text).unwrap();
            for key in keys::KEYS.iter().filter(|k| k.default.is_some()) {
                let (section, field) = key.path.rsplit_once('.').unwrap();
                let mut t: &dyn TableLike = doc.as_table();
                for part in section.split('.') {
                    t = t.get(part).and_then(Item::as_table_like).unwrap();
                }
                let span = t
                    .get(field)
                    .and_then(Item::span)
                    .unwrap_or_else(|| panic!("{name}: {}", key.path));
                let (raw, mut lit) = other(key.kind);
                let quoted = format!("\"{raw}\"");
                if lit.is_empty() {
                    lit = &quoted;
                }
                let set_to = Assignment::parse(&format!("{}={raw}", key.path)).unwrap();
                let out = set(text, &[set_to]).unwrap();
                let expected = format!("{}{lit}{}", &text[..span.start], &text[span.end..]);
                assert_eq!(out, expected, "{name}: {}", key.path);
            }
            let out = set(
                text,
                &[Assignment::parse("class.vcs.intent=mem.max=300M").unwrap()],
            );
            if text.contains("name = \"vcs\"") {
                let out = out.unwrap();
                assert!(out.contains("intent = \"mem.max=300M\""));
                assert_eq!(
                    out.len(),
                    text.len()
                        - text
                            .lines()
                            .find(|l| l.starts_with("intent = \"mem=64M"))
                            .unwrap()
                            .len()
                        + "intent = \"mem.max=300M\"".len()
                );
            } else {
                assert!(out.unwrap_err().contains("no class named \"vcs\""));
            }
        }
    }

    #[test]
    fn missing_keys_are_added_and_bad_keys_refused() {
        let text = "# keep me\n[session]\npids = 1 # few\n";
        let out = set(text, &[Assignment::parse("memory.pressure_at=80").unwrap()]).unwrap();
        assert_eq!(out, format!("{text}\n[memory]\npressure_at = 80\n"));
        let err = set("", &[Assignment::parse("memory.presure_at=80").unwrap()]).unwrap_err();
        assert_eq!(
            err,
            "memory.presure_at: no such policy key; did you mean `memory.pressure_at`?"
        );
        assert!(Assignment::parse("memory.pressure_at").is_err());
        let out = set(
            "[memory]\npressure_at = 85\n",
            &[Assignment::parse("memory.pressure_at=lots").unwrap()],
        )
        .unwrap();
        let problems = check(&out);
        assert_eq!(
            (problems[0].line, problems[0].column),
            (2, 15),
            "{problems:?}"
        );
    }
}
