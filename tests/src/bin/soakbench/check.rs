//! Did every call end as its kind must, and does every granted call have exactly one
//! history row with its outcome? Pure: the calls as their clients saw them, and the rows.

use std::collections::{BTreeMap, HashMap};

use agentcg_vmtests::mix::Kind;

/// One call as its client saw it.
#[derive(Debug, Clone)]
pub struct Call {
    pub kind: Kind,
    /// The id `run --verbose` printed, or else the record's.
    pub id: Option<u64>,
    /// The client's exit code (`None`: killed by a signal, or it could not run).
    pub exit: Option<i32>,
    /// From the `--record` file, when there is one: its call id, outcome and
    /// `leftover_killed`.
    pub record: Option<(Option<u64>, String, u64)>,
    pub stderr: String,
}

/// Why `call` did not end as its kind must; `None` when it did.
pub fn problem(call: &Call) -> Option<String> {
    let kind = call.kind;
    let what = |why: String| {
        let tail: String = call.stderr.trim().chars().rev().take(300).collect();
        let tail: String = tail.chars().rev().collect();
        Some(format!(
            "{} call {:?}: {why}; stderr: {tail}",
            kind.name(),
            call.id
        ))
    };
    let Some(id) = call.id else {
        return what("not granted (no call id)".into());
    };
    if call.exit != Some(kind.exit_code()) {
        return what(format!(
            "exit {:?}, expected {}",
            call.exit,
            kind.exit_code()
        ));
    }
    let Some((record_id, outcome, leftovers)) = &call.record else {
        return what("no record".into());
    };
    if *record_id != Some(id) {
        return what(format!("the record is of call {record_id:?}"));
    }
    if outcome != kind.outcome() {
        return what(format!("outcome {outcome}, expected {}", kind.outcome()));
    }
    if kind == Kind::Leftover && *leftovers == 0 {
        return what("its leftover process was not killed".into());
    }
    None
}

/// The history against the granted calls.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rows {
    /// Rows read.
    pub rows: usize,
    /// Granted calls without a row.
    pub lost: usize,
    /// Granted calls with more than one row (one per extra row).
    pub duplicates: usize,
    /// Rows whose outcome is not the one the call's kind must have.
    pub wrong_outcome: usize,
    /// Rows of calls no client was granted.
    pub unknown: usize,
}

/// Matches `rows` ((call id, outcome) of each history row) with the granted `calls`.
pub fn match_rows(calls: &[Call], rows: &[(u64, String)]) -> Rows {
    let granted: HashMap<u64, Kind> = calls
        .iter()
        .filter_map(|c| c.id.map(|id| (id, c.kind)))
        .collect();
    let mut by_id: BTreeMap<u64, Vec<&str>> = BTreeMap::new();
    for (id, outcome) in rows {
        by_id.entry(*id).or_default().push(outcome);
    }
    let mut tally = Rows {
        rows: rows.len(),
        ..Rows::default()
    };
    for (id, kind) in &granted {
        match by_id.get(id) {
            None => tally.lost += 1,
            Some(outcomes) => {
                tally.duplicates += outcomes.len() - 1;
                tally.wrong_outcome += outcomes.iter().filter(|o| **o != kind.outcome()).count();
            }
        }
    }
    tally.unknown = by_id
        .iter()
        .filter(|(id, _)| !granted.contains_key(id))
        .map(|(_, o)| o.len())
        .sum();
    tally
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(kind: Kind, id: u64) -> Call {
        let leftovers = u64::from(kind == Kind::Leftover);
        Call {
            kind,
            id: Some(id),
            exit: Some(kind.exit_code()),
            record: Some((Some(id), kind.outcome().into(), leftovers)),
            stderr: String::new(),
        }
    }

    #[test]
    fn a_call_must_end_as_its_kind_says() {
        for (i, kind) in Kind::ALL.into_iter().enumerate() {
            assert_eq!(problem(&call(kind, i as u64)), None, "{kind:?}");
        }
        let mut c = call(Kind::Oom, 7);
        c.exit = Some(0);
        assert!(problem(&c).is_some_and(|p| p.contains("expected 137")));
        let mut c = call(Kind::Leftover, 8);
        c.record = Some((Some(8), "ok".into(), 0));
        assert!(problem(&c).is_some_and(|p| p.contains("leftover")));
        let mut c = call(Kind::Timeout, 9);
        c.record = Some((Some(9), "ok".into(), 0));
        assert!(problem(&c).is_some_and(|p| p.contains("outcome ok")));
        let mut c = call(Kind::Ok, 10);
        c.id = None;
        c.stderr = "agentcg: cannot reach agentcgd".into();
        assert!(problem(&c).is_some_and(|p| p.contains("cannot reach")));
        c = call(Kind::Ok, 11);
        c.record = None;
        assert!(problem(&c).is_some());
    }

    #[test]
    fn every_row_is_matched_exactly_once() {
        let calls = [call(Kind::Ok, 1), call(Kind::Oom, 2), call(Kind::Fail, 3)];
        let row = |id: u64, o: &str| (id, o.to_string());
        let clean = [row(1, "ok"), row(2, "oom_killed"), row(3, "failed")];
        assert_eq!(
            match_rows(&calls, &clean),
            Rows {
                rows: 3,
                ..Rows::default()
            }
        );
        let bad = [row(1, "ok"), row(1, "ok"), row(2, "ok"), row(9, "ok")];
        assert_eq!(
            match_rows(&calls, &bad),
            Rows {
                rows: 4,
                lost: 1,
                duplicates: 1,
                wrong_outcome: 1,
                unknown: 1
            }
        );
    }
}
