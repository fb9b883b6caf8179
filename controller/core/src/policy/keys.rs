//! The registry of policy keys: for every key its type, default, range, when a change
//! takes effect and its documentation. `policy check` validates against it, the
//! effective policy takes its defaults from it, and `agentcg policy explain` and
//! docs/POLICY.md are rendered from it.

use std::time::Duration;

/// What a key's value must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A byte size string (`"4G"`), at least `min` bytes.
    Size { min: u64 },
    /// A duration string (`"30m"`), within `min..=max`.
    Duration { min: Duration, max: Duration },
    /// An integer within `min..=max`.
    Int { min: i64, max: i64 },
    /// A number of CPUs, integer or fractional, 0..=1024.
    Cpus,
    /// `true` or `false`.
    Bool,
    /// One of these strings.
    Choice(&'static [&'static str]),
    /// A compact intent (`"mem=256M,mem.max=1G"`).
    Intent,
    /// Free text.
    Text,
    /// A class name: a label usable as `class=NAME` in an intent.
    Name,
    /// A non-empty array of command prefixes (`["pytest", "python -m pytest"]`).
    Commands,
}

impl Kind {
    /// How the type reads in messages and docs.
    pub fn describe(&self) -> String {
        match self {
            Kind::Size { min: 0 } => "size (\"512M\", \"4G\")".into(),
            Kind::Size { min } => format!(
                "size (\"512M\", \"4G\"), at least {}",
                crate::units::compact_size(*min)
            ),
            Kind::Duration { min, max } => format!(
                "duration (\"500ms\", \"30m\"), {}..{}",
                crate::units::compact_duration(*min),
                crate::units::compact_duration(*max)
            ),
            Kind::Int { min, max } => format!("integer {min}..={max}"),
            Kind::Cpus => "number of CPUs 0..=1024 (0.5 allowed)".into(),
            Kind::Bool => "boolean (true, false)".into(),
            Kind::Choice(options) => format!("one of {}", quoted(options)),
            Kind::Intent => "intent (\"mem=256M,mem.max=1G,timeout=30m\")".into(),
            Kind::Text => "string".into(),
            Kind::Name => "class name (letters, digits, '-', '_')".into(),
            Kind::Commands => "array of command prefixes ([\"pytest\", \"cargo test\"])".into(),
        }
    }
}

fn quoted(options: &[&str]) -> String {
    options
        .iter()
        .map(|o| format!("\"{o}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// When a changed value takes effect in a running agentcgd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applies {
    /// At the next reload: new sessions and calls get it, and the memory response, the
    /// BPF watermarks, the scheduler's supervisor and the history pruner follow it.
    Reload,
    /// Read once at start (`cpu.scheduler`: which scheduler is attached).
    Restart,
}

/// One key of the policy.
#[derive(Debug, Clone, Copy)]
pub struct Key {
    /// Dotted path; `class.*` keys are fields of each `[[class]]`.
    pub path: &'static str,
    pub kind: Kind,
    /// The default as a TOML literal; `None` for class fields (required in each class).
    pub default: Option<&'static str>,
    pub applies: Applies,
    pub doc: &'static str,
}

const fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

const fn ms(m: u64) -> Duration {
    Duration::from_millis(m)
}

const MIB: u64 = 1 << 20;

const fn key(
    path: &'static str,
    kind: Kind,
    default: &'static str,
    applies: Applies,
    doc: &'static str,
) -> Key {
    Key {
        path,
        kind,
        default: Some(default),
        applies,
        doc,
    }
}

const fn class_key(path: &'static str, kind: Kind, doc: &'static str) -> Key {
    Key {
        path,
        kind,
        default: None,
        applies: Applies::Reload,
        doc,
    }
}

const WEIGHT: Kind = Kind::Int {
    min: 1,
    max: 10_000,
};
const OOM_ADJ: Kind = Kind::Int { min: 0, max: 1000 };
const PERCENT: Kind = Kind::Int { min: 0, max: 100 };
const WEIGHT_DOC: &str = "`cpu.weight` of sessions and calls of this priority class";
const OOM_DOC: &str = "written to each tool's `/proc/self/oom_score_adj` before exec: if the kernel's OOM killer strikes before the memory response freed memory, it takes low-priority tools first, never the agent runtime, which keeps its own value. Raising needs no privilege; lowering would, so negative values are refused";

use Applies::{Reload, Restart};

/// Every key, in the order of docs/POLICY.md.
pub const KEYS: &[Key] = &[
    key(
        "session.memory",
        Kind::Size { min: 16 * MIB },
        "\"4G\"",
        Reload,
        "budget (`memory.max`) of a session created without `--memory`",
    ),
    key(
        "session.pids",
        Kind::Int {
            min: 1,
            max: 4_194_304,
        },
        "4096",
        Reload,
        "`pids.max` of such a session",
    ),
    key(
        "session.cpus",
        Kind::Cpus,
        "0",
        Reload,
        "CPUs (`cpu.max`) of such a session; `0` = no bandwidth limit",
    ),
    key(
        "session.runtime_reserve",
        Kind::Size { min: 0 },
        "\"128M\"",
        Reload,
        "memory kept for the agent runtime: `memory.min` of `runtime/` for high-priority sessions, `memory.low` otherwise; the session's calls share `memory - runtime_reserve` (`calls/memory.max`). Must be below `session.memory`",
    ),
    key(
        "session.admission",
        Kind::Choice(&["clamp", "reject"]),
        "\"clamp\"",
        Reload,
        "`clamp`: a call expecting more memory than its session has left is admitted with less (the reply lists the clamp); `reject`: it is refused (`no_room`). Either way a call is refused when less than 16 MiB is left",
    ),
    key(
        "priority.high.cpu_weight",
        WEIGHT,
        "400",
        Reload,
        WEIGHT_DOC,
    ),
    key("priority.high.oom_score_adj", OOM_ADJ, "0", Reload, OOM_DOC),
    key(
        "priority.normal.cpu_weight",
        WEIGHT,
        "100",
        Reload,
        WEIGHT_DOC,
    ),
    key(
        "priority.normal.oom_score_adj",
        OOM_ADJ,
        "500",
        Reload,
        OOM_DOC,
    ),
    key("priority.low.cpu_weight", WEIGHT, "25", Reload, WEIGHT_DOC),
    key(
        "priority.low.oom_score_adj",
        OOM_ADJ,
        "1000",
        Reload,
        OOM_DOC,
    ),
    key(
        "cpu.scheduler",
        Kind::Choice(&["sched_ext", "kernel"]),
        "\"sched_ext\"",
        Restart,
        "`sched_ext`: agentcg's sched_ext scheduler when the kernel has sched_ext (else the kernel's); `kernel`: only `cpu.weight`/`cpu.max`",
    ),
    key(
        "cpu.on_budget_exceeded",
        Kind::Choice(&["throttle", "freeze", "kill"]),
        "\"kill\"",
        Reload,
        "what happens to a call whose declared `cpu.budget` ran out: `kill` (outcome `cpu_budget_exceeded`), `freeze` (until its timeout), `throttle` (it keeps the scheduler's floor share)",
    ),
    key(
        "cpu.on_scheduler_exit",
        Kind::Choice(&["reload", "fallback"]),
        "\"reload\"",
        Reload,
        "`reload` the scheduler after it exits (at most `cpu.reload_limit` times), or `fallback` to the kernel cpu controller",
    ),
    key(
        "cpu.reload_limit",
        Kind::Int { min: 0, max: 100 },
        "3",
        Reload,
        "how many times the scheduler is reloaded after exits before agentcgd falls back for good",
    ),
    key(
        "memory.burst_step",
        Kind::Size { min: 0 },
        "\"128M\"",
        Reload,
        "elastic budgets: when a call crosses its `memory.high` (its declared expected size; BPF event) while the root has room for one more step below `pressure_at`, its `memory.high` is raised by this much, never above its `memory.max`. `\"0\"` keeps declared sizes rigid",
    ),
    key(
        "memory.pressure_at",
        PERCENT,
        "85",
        Reload,
        "percent of the effective memory limit of the root (see \"The limit defended\" below) at which the response starts (a BPF watermark event on the root or on the limiting ancestor says so within microseconds of the charge). Must be ordered `calm_below < pressure_at < critical_at`",
    ),
    key(
        "memory.critical_at",
        PERCENT,
        "95",
        Reload,
        "percent at which the response may kill (also when the kernel hits the `memory.max` of the root or of an ancestor); a burst is never granted above `pressure_at`",
    ),
    key(
        "memory.calm_below",
        PERCENT,
        "75",
        Reload,
        "percent under which (with no PSI trigger for `calm_for`) the response undoes everything",
    ),
    key(
        "memory.psi_stall",
        Kind::Duration {
            min: ms(1),
            max: secs(10),
        },
        "\"100ms\"",
        Reload,
        "the PSI trigger (`some <stall> <window>`) armed on `memory.pressure` of the root and of every session; the daemon waits on them with `poll`. A session's trigger counts only while calls of lower priority than the session run. At most `psi_window`",
    ),
    key(
        "memory.psi_window",
        Kind::Duration {
            min: ms(500),
            max: secs(10),
        },
        "\"1s\"",
        Reload,
        "the window of that PSI trigger (the kernel accepts 500 ms to 10 s)",
    ),
    key(
        "memory.step_interval",
        Kind::Duration {
            min: ms(10),
            max: secs(60),
        },
        "\"200ms\"",
        Reload,
        "least time between two steps while pressure persists",
    ),
    key(
        "memory.calm_for",
        Kind::Duration {
            min: ms(0),
            max: secs(3600),
        },
        "\"1s\"",
        Reload,
        "how long it must stay calm before frozen calls thaw and throttled ones get their `memory.high` back",
    ),
    key(
        "memory.reclaim_percent",
        Kind::Int { min: 1, max: 100 },
        "10",
        Reload,
        "the reclaim step asks each victim's session for this percent of its usage (`memory.reclaim`; anonymous memory without swap mostly cannot be reclaimed, and the record says how much was)",
    ),
    key(
        "caps.mem_max",
        Kind::Size { min: 16 * MIB },
        "\"16G\"",
        Reload,
        "upper bound of any single call's `memory.max`, whatever it declares",
    ),
    key(
        "caps.cpus",
        Kind::Cpus,
        "64",
        Reload,
        "upper bound of any single call's CPUs (`cpu.max`)",
    ),
    key(
        "caps.pids",
        Kind::Int {
            min: 1,
            max: 4_194_304,
        },
        "8192",
        Reload,
        "upper bound of any single call's `pids.max`",
    ),
    key(
        "caps.timeout",
        Kind::Duration {
            min: secs(1),
            max: secs(30 * 86_400),
        },
        "\"2h\"",
        Reload,
        "upper bound of any single call's wall-clock timeout",
    ),
    key(
        "call.intent",
        Kind::Intent,
        "\"mem=256M,mem.max=1G,pids=1024,timeout=30m\"",
        Reload,
        "intent of a call that declares nothing and matches no class",
    ),
    key(
        "call.suggestion",
        Kind::Text,
        "\"declare what the call needs (e.g. --intent mem.max=2G) or make it do less at once\"",
        Reload,
        "advice given when a budget ends such a call",
    ),
    class_key(
        "class.name",
        Kind::Name,
        "`[[class]]` (any number, none by default): the class label (`class=NAME` in intents, records and metrics); unique",
    ),
    class_key(
        "class.commands",
        Kind::Commands,
        "command prefixes of the class: the first class with a prefix matching a shell segment of the call (`cd x && python -m pytest` is `test`) gives the default intent and the advice. A prefix that an earlier class's prefix already takes can never match",
    ),
    class_key(
        "class.intent",
        Kind::Intent,
        "default intent of the class's calls (within the caps)",
    ),
    class_key(
        "class.suggestion",
        Kind::Text,
        "advice given when a budget ends a call of the class",
    ),
    key(
        "history.keep",
        Kind::Duration {
            min: secs(3600),
            max: secs(3650 * 86_400),
        },
        "\"30d\"",
        Reload,
        "how long the call history (`<state-dir>/history.db`, `agentcg history`) keeps a record after its call ended. Older records are pruned at start and every hour, except the newest 10,000, which are always kept",
    ),
    key(
        "admission.enabled",
        Kind::Bool,
        "true",
        Reload,
        "admission from history: a call declaring no `mem` expects its class's recorded `percentile` peak (times the session factor), and a call that cannot fit now (its session's remaining memory, or host memory at or above `memory.pressure_at`) waits up to `queue_for`. `false`: the class default is expected and the host's memory never stops a call",
    ),
    key(
        "admission.min_samples",
        Kind::Int {
            min: 1,
            max: 10_000,
        },
        "20",
        Reload,
        "recorded calls of a class (among the newest 1,000 records, which agentcgd keeps in memory) needed before their peaks replace the class's default `mem`",
    ),
    key(
        "admission.percentile",
        Kind::Int { min: 50, max: 100 },
        "95",
        Reload,
        "which nearest-rank percentile of the class's recorded peaks a call is expected to use. The session factor (the median peak of the session's own calls of the class over the class's median, within 0.5..2, once the session ended 3 of them) scales it",
    ),
    key(
        "admission.queue_for",
        Kind::Duration {
            min: secs(0),
            max: secs(3600),
        },
        "\"30s\"",
        Reload,
        "how long a call that cannot fit waits, highest priority first and in arrival order within a priority, to be admitted as soon as memory frees; then it is rejected with the reason. `\"0s\"`: it never waits (clamped per `session.admission`, or rejected)",
    ),
];

/// The key at `path` (`class.NAME` fields as `class.name`, `class[2].intent` too).
pub fn find(path: &str) -> Option<&'static Key> {
    let canonical = canonical(path);
    KEYS.iter().find(|k| k.path == canonical)
}

/// `class[3].intent` -> `class.intent`.
fn canonical(path: &str) -> String {
    match path.strip_prefix("class[") {
        Some(rest) => match rest.split_once("].") {
            Some((_, field)) => format!("class.{field}"),
            None => path.to_string(),
        },
        None => path.to_string(),
    }
}

/// The registry key closest to `path` by edit distance, if close enough to be a typo.
pub fn did_you_mean<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    candidates
        .map(|c| (edit_distance(word, c), c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(1))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `agentcg policy explain KEY`: type, default, when it applies, documentation.
pub fn explain(k: &Key) -> String {
    let default = k.default.unwrap_or("(required in each [[class]])");
    let applies = match k.applies {
        Applies::Reload => "at reload (new sessions and calls)",
        Applies::Restart => "at restart of agentcgd",
    };
    format!(
        "{}\n  type:    {}\n  default: {default}\n  applies: {applies}\n  {}\n",
        k.path,
        k.kind.describe(),
        k.doc
    )
}

/// The key table of docs/POLICY.md.
pub fn markdown() -> String {
    let mut out =
        String::from("| key | type | default | applies | meaning |\n|---|---|---|---|---|\n");
    for k in KEYS {
        let default = k
            .default
            .map(|d| format!("`{d}`"))
            .unwrap_or("required".into());
        let applies = match k.applies {
            Applies::Reload => "reload",
            Applies::Restart => "restart",
        };
        out.push_str(&format!(
            "| `{}` | {} | {default} | {applies} | {} |\n",
            k.path,
            k.kind.describe().replace('|', "\\|"),
            k.doc.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_are_close_words_only() {
        let keys = ["pressure_at", "critical_at", "calm_below"];
        assert_eq!(
            did_you_mean("presure_at", keys.into_iter()),
            Some("pressure_at")
        );
        assert_eq!(
            did_you_mean("critcal_at", keys.into_iter()),
            Some("critical_at")
        );
        assert_eq!(did_you_mean("bogus", keys.into_iter()), None);
    }

    #[test]
    fn class_fields_are_found_by_index_too() {
        assert_eq!(
            find("class[2].intent").map(|k| k.path),
            Some("class.intent")
        );
        assert_eq!(
            find("memory.pressure_at").map(|k| k.path),
            Some("memory.pressure_at")
        );
        assert!(find("memory.nope").is_none());
    }
}
