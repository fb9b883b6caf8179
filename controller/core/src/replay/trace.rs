//! Recorded agent runs (the format of `tests/traces/`, README there): a run's
//! `resources.json` (container memory about every second, `podman stats` strings in
//! decimal units: `MB` = 10^6 bytes) and `tool_calls.json` (tool calls with UTC start and
//! end), turned into what the simulator replays: memory per one-second tick, split into
//! the agent runtime and each shell (`Bash`) call.
//!
//! Split: a call's memory is what the container holds above its level just before the
//! call started (the runtime's); the runtime is everything else. Other tools (Read,
//! Edit, ...) run inside the agent process, so their memory is the runtime's. A tick
//! holds the largest sample taken during that second (a peak is never dropped), or the
//! previous tick's value when no sample fell in it.

use std::path::{Path, PathBuf};

use crate::civil::days_from_civil;
use crate::intent::Intent;

/// Why a trace could not be read.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("reading trace {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trace {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// One shell call of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceCall {
    /// First tick of the call.
    pub start: usize,
    /// Tick after its last one (> `start`).
    pub end: usize,
    pub command: String,
    /// What the call declared (a recording declares nothing).
    pub intent: Intent,
    /// The call's memory at each tick of `start..end`.
    pub usage: Vec<u64>,
}

impl TraceCall {
    /// The largest memory the call held.
    pub fn peak(&self) -> u64 {
        self.usage.iter().copied().max().unwrap_or(0)
    }
}

/// A recorded run, one tick per second.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Run {
    pub name: String,
    /// The whole container's memory per tick.
    pub memory: Vec<u64>,
    /// The agent runtime's share of it.
    pub runtime: Vec<u64>,
    /// Shell calls, ordered by start.
    pub calls: Vec<TraceCall>,
}

impl Run {
    /// Ticks (seconds) the run lasts.
    pub fn len(&self) -> usize {
        self.memory.len()
    }

    pub fn is_empty(&self) -> bool {
        self.memory.is_empty()
    }

    /// The container's recorded peak: what static provisioning reserves for the run.
    pub fn peak(&self) -> u64 {
        self.memory.iter().copied().max().unwrap_or(0)
    }

    /// The container's mean memory over the run (0 for an empty run).
    pub fn mean(&self) -> f64 {
        if self.memory.is_empty() {
            return 0.0;
        }
        let sum: u128 = self.memory.iter().map(|&m| u128::from(m)).sum();
        sum as f64 / self.memory.len() as f64
    }
}

/// A `podman stats` size (`185.5MB`, `0B`, `1.2GB`, `512kB`) in bytes: decimal units
/// (binary `KiB`/`MiB`/`GiB` too).
pub fn parse_podman_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as 185.5MB"))?;
    let factor = match unit.trim() {
        "B" | "" => 1.0,
        "kB" | "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        "KiB" => 1024.0,
        "MiB" => 1_048_576.0,
        "GiB" => 1_073_741_824.0,
        other => return Err(format!("`{text}`: unknown unit `{other}`")),
    };
    Ok((number * factor).round() as u64)
}

/// Seconds since the Unix epoch of a UTC time `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
pub fn parse_utc(text: &str) -> Result<f64, String> {
    let bad = || format!("`{text}` is not a UTC time such as 2026-02-07T01:43:04.625Z");
    let body = text.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = body.split_once('T').ok_or_else(bad)?;
    let num = |s: &str| s.parse::<i64>().map_err(|_| bad());
    let d: Vec<&str> = date.split('-').collect();
    let t: Vec<&str> = time.split(':').collect();
    if d.len() != 3 || t.len() != 3 {
        return Err(bad());
    }
    let (y, m, day) = (num(d[0])?, num(d[1])?, num(d[2])?);
    let (h, min) = (num(t[0])?, num(t[1])?);
    let sec: f64 = t[2].parse().map_err(|_| bad())?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&day) || h > 23 || min > 59 || sec >= 61.0 {
        return Err(bad());
    }
    Ok((days_from_civil(y, m, day) * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

/// `(epoch, bytes)` of every sample of a `resources.json`, ordered by epoch.
pub fn parse_samples(json: &str) -> Result<Vec<(f64, u64)>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("resources.json is not JSON: {e}"))?;
    let samples = value["samples"]
        .as_array()
        .ok_or("resources.json has no `samples` array")?;
    let mut parsed = Vec::with_capacity(samples.len());
    for (i, s) in samples.iter().enumerate() {
        let epoch = s["epoch"]
            .as_f64()
            .ok_or_else(|| format!("resources.json sample {i}: no numeric `epoch`"))?;
        let usage = s["mem_usage"]
            .as_str()
            .ok_or_else(|| format!("resources.json sample {i}: no `mem_usage` string"))?;
        let used = usage.split('/').next().unwrap_or_default();
        let bytes =
            parse_podman_size(used).map_err(|e| format!("resources.json sample {i}: {e}"))?;
        parsed.push((epoch, bytes));
    }
    if parsed.is_empty() {
        return Err("resources.json has no samples".into());
    }
    parsed.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(parsed)
}

/// Samples on a one-second grid from the first: the largest sample of each second, or
/// the previous second's value.
fn ticks(samples: &[(f64, u64)]) -> Vec<u64> {
    let first = samples[0].0;
    let last = samples[samples.len() - 1].0 - first;
    let mut memory: Vec<Option<u64>> = vec![None; last as usize + 1];
    for &(epoch, bytes) in samples {
        let slot = &mut memory[((epoch - first) as usize).min(last as usize)];
        *slot = Some(slot.map_or(bytes, |b| b.max(bytes)));
    }
    let mut prev = 0;
    memory
        .into_iter()
        .map(|m| {
            prev = m.unwrap_or(prev);
            prev
        })
        .collect()
}

/// `(start, end, command)` of the shell calls of a `tool_calls.json`, in seconds since
/// the epoch.
fn parse_calls(json: &str) -> Result<Vec<(f64, f64, String)>, String> {
    let value: serde_json::Value =
        serde_json::from_str(json).map_err(|e| format!("tool_calls.json is not JSON: {e}"))?;
    let calls = value.as_array().ok_or("tool_calls.json is not a list")?;
    let mut shell = Vec::new();
    for (i, c) in calls.iter().enumerate() {
        if c["tool"].as_str() != Some("Bash") {
            continue;
        }
        let field = |key: &str| {
            c[key]
                .as_str()
                .ok_or_else(|| format!("tool_calls.json call {i}: no `{key}` string"))
        };
        let start = parse_utc(field("timestamp")?).map_err(|e| format!("call {i}: {e}"))?;
        let end = parse_utc(field("end_timestamp")?).map_err(|e| format!("call {i}: {e}"))?;
        let command = c["input"]["command"]
            .as_str()
            .ok_or_else(|| format!("tool_calls.json call {i}: Bash without `input.command`"))?;
        shell.push((start, end.max(start), command.to_string()));
    }
    shell.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(shell)
}

/// A run from the text of its `resources.json` and, when it has one, `tool_calls.json`.
pub fn parse_run(name: &str, resources: &str, tool_calls: Option<&str>) -> Result<Run, String> {
    let samples = parse_samples(resources)?;
    let first = samples[0].0;
    let memory = ticks(&samples);
    let len = memory.len();
    let mut calls: Vec<(usize, usize, String, u64)> = Vec::new();
    for (start, end, command) in tool_calls.map(parse_calls).transpose()?.unwrap_or_default() {
        let (s, e) = (start - first, end - first);
        if s < 0.0 || s as usize >= len {
            continue; // outside the recording
        }
        let s = s as usize;
        let e = (e as usize + 1).clamp(s + 1, len);
        let baseline = memory[s.saturating_sub(1)];
        calls.push((s, e, command, baseline));
    }
    let (runtime, usage) = split(&memory, &calls);
    Ok(Run {
        name: name.to_string(),
        memory,
        runtime,
        calls: calls
            .into_iter()
            .zip(usage)
            .map(|((start, end, command, _), usage)| TraceCall {
                start,
                end,
                command,
                intent: Intent::default(),
                usage,
            })
            .collect(),
    })
}

/// The runtime's memory per tick and each call's usage: at each tick the memory above
/// the baseline of the oldest running call goes to the running calls, newest first,
/// each up to what it holds above its own baseline.
fn split(memory: &[u64], calls: &[(usize, usize, String, u64)]) -> (Vec<u64>, Vec<Vec<u64>>) {
    let mut runtime = memory.to_vec();
    let mut usage: Vec<Vec<u64>> = calls.iter().map(|c| vec![0; c.1 - c.0]).collect();
    for (t, mem) in memory.iter().copied().enumerate() {
        let running: Vec<usize> = (0..calls.len())
            .filter(|&i| (calls[i].0..calls[i].1).contains(&t))
            .collect();
        let Some(&oldest) = running.first() else {
            continue;
        };
        let base = mem.min(calls[oldest].3);
        let mut left = mem - base;
        runtime[t] = base;
        for &i in running.iter().rev() {
            let own = mem.saturating_sub(calls[i].3).min(left);
            usage[i][t - calls[i].0] = own;
            left -= own;
        }
        runtime[t] += left;
    }
    (runtime, usage)
}

/// Reads the run in `dir` (`resources.json`, optional `tool_calls.json`).
pub fn load_run(dir: &Path) -> Result<Run, TraceError> {
    let read = |path: PathBuf| {
        std::fs::read_to_string(&path).map_err(|source| TraceError::Read { path, source })
    };
    let resources = read(dir.join("resources.json"))?;
    let calls_path = dir.join("tool_calls.json");
    let calls = if calls_path.exists() {
        Some(read(calls_path)?)
    } else {
        None
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string());
    parse_run(&name, &resources, calls.as_deref()).map_err(|message| TraceError::Invalid {
        path: dir.to_path_buf(),
        message,
    })
}

/// The run directories under `paths`: a directory holding `resources.json` is a run,
/// any other directory is searched (two levels deep), sorted by path. Fails on a path
/// that does not exist, is not a directory, or holds no run.
pub fn find_runs(paths: &[PathBuf]) -> Result<Vec<PathBuf>, TraceError> {
    let mut runs = Vec::new();
    for path in paths {
        let invalid = |message: &str| TraceError::Invalid {
            path: path.clone(),
            message: message.to_string(),
        };
        let meta = std::fs::metadata(path).map_err(|source| TraceError::Read {
            path: path.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(invalid(
                "not a directory: give a run's directory (with resources.json) or one holding runs",
            ));
        }
        let before = runs.len();
        collect(path, 2, &mut runs)?;
        if runs.len() == before {
            return Err(invalid("holds no recorded run (no resources.json)"));
        }
    }
    runs.sort();
    runs.dedup();
    Ok(runs)
}

fn collect(dir: &Path, depth: u32, runs: &mut Vec<PathBuf>) -> Result<(), TraceError> {
    if dir.join("resources.json").is_file() {
        runs.push(dir.to_path_buf());
        return Ok(());
    }
    if depth == 0 {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| TraceError::Read {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            collect(&entry.path(), depth - 1, runs)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    fn resources(samples: &[(f64, &str)]) -> String {
        let s: Vec<String> = samples
            .iter()
            .map(|(e, m)| format!(r#"{{"epoch": {e}, "mem_usage": "{m} / 134.5GB"}}"#))
            .collect();
        format!(r#"{{"samples": [{}], "summary": {{}}}}"#, s.join(","))
    }

    #[test]
    fn podman_sizes_are_decimal() {
        assert_eq!(parse_podman_size("185.5MB"), Ok(185_500_000));
        assert_eq!(parse_podman_size("1.2GB"), Ok(1_200_000_000));
        assert_eq!(parse_podman_size(" 512kB "), Ok(512_000));
        assert_eq!(parse_podman_size("0B"), Ok(0));
        assert_eq!(parse_podman_size("64MiB"), Ok(64 << 20));
        assert!(parse_podman_size("12 parsecs").is_err());
        assert!(parse_podman_size("MB").is_err());
    }

    #[test]
    fn utc_times_become_epoch_seconds() {
        assert_eq!(parse_utc("1970-01-01T00:00:00Z"), Ok(0.0));
        // `date -u -d 2026-02-07T01:43:04Z +%s`
        let t = parse_utc("2026-02-07T01:43:04.625Z").expect("parses");
        assert!((t - 1_770_428_584.625).abs() < 1e-6, "{t}");
        assert_eq!(parse_utc("2000-03-01T00:00:00Z"), Ok(951_868_800.0));
        for bad in [
            "2026-02-07 01:43:04Z",
            "2026-02-07T01:43:04",
            "2026-13-07T01:43:04Z",
            "x",
        ] {
            assert!(parse_utc(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ticks_keep_the_peak_of_each_second_and_fill_gaps() {
        let t = ticks(&[(100.0, 5), (100.4, 9), (101.2, 3), (103.5, 7)]);
        assert_eq!(t, [9, 3, 3, 7]);
    }

    /// The runtime holds 200 MB; a pytest call adds 300 MB, then 500 MB, and a grep
    /// starting during it adds 50 MB more: the newest call gets its own share first.
    #[test]
    fn calls_get_the_memory_above_the_level_before_them() {
        let res = resources(&[
            (0.0, "200MB"),
            (1.0, "200MB"),
            (2.0, "500MB"),
            (3.0, "700MB"),
            (4.0, "750MB"),
            (5.0, "200MB"),
        ]);
        let calls = r#"[
            {"tool": "Read", "timestamp": "1970-01-01T00:00:00.5Z", "end_timestamp": "1970-01-01T00:00:01Z", "input": {}},
            {"tool": "Bash", "timestamp": "1970-01-01T00:00:02.1Z", "end_timestamp": "1970-01-01T00:00:04.2Z", "input": {"command": "pytest"}},
            {"tool": "Bash", "timestamp": "1970-01-01T00:00:04Z", "end_timestamp": "1970-01-01T00:00:04.5Z", "input": {"command": "grep x"}}
        ]"#;
        let run = parse_run("r", &res, Some(calls)).expect("parses");
        assert_eq!(run.len(), 6);
        assert_eq!(run.peak(), 750 * MB);
        assert_eq!(run.calls.len(), 2, "only shell calls");
        let (pytest, grep) = (&run.calls[0], &run.calls[1]);
        assert_eq!((pytest.start, pytest.end), (2, 5));
        assert_eq!(pytest.usage, [300 * MB, 500 * MB, 500 * MB]);
        assert_eq!(
            (grep.start, grep.end, grep.command.as_str()),
            (4, 5, "grep x")
        );
        assert_eq!(grep.usage, [50 * MB]);
        assert_eq!(run.runtime, [200 * MB; 6]);
        assert_eq!(pytest.peak(), 500 * MB);
    }

    #[test]
    fn bad_traces_say_what_is_wrong() {
        let err = parse_run("r", r#"{"samples": []}"#, None).unwrap_err();
        assert!(err.contains("no samples"), "{err}");
        let err = parse_run("r", "\u{0}\u{1}garbage", None).unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
        let res = resources(&[(0.0, "1MB")]);
        let err =
            parse_run("r", &res, Some(r#"[{"tool": "Bash", "timestamp": "x"}]"#)).unwrap_err();
        assert!(err.contains("call 0"), "{err}");
    }

    #[test]
    fn runs_are_found_in_directories_and_bad_paths_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("set/run-a");
        std::fs::create_dir_all(&run).expect("mkdir");
        std::fs::write(run.join("resources.json"), resources(&[(0.0, "1MB")])).expect("write");
        std::fs::create_dir_all(dir.path().join("set/empty")).expect("mkdir");
        let found = find_runs(&[dir.path().to_path_buf()]).expect("finds");
        assert_eq!(found, std::slice::from_ref(&run));
        assert_eq!(load_run(&run).expect("loads").name, "run-a");
        let missing = find_runs(&[dir.path().join("nope")])
            .unwrap_err()
            .to_string();
        assert!(missing.contains("nope"), "{missing}");
        let empty = find_runs(&[dir.path().join("set/empty")])
            .unwrap_err()
            .to_string();
        assert!(empty.contains("no recorded run"), "{empty}");
        let file = find_runs(&[run.join("resources.json")])
            .unwrap_err()
            .to_string();
        assert!(file.contains("not a directory"), "{file}");
    }
}
