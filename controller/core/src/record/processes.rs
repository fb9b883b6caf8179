//! A call's process list, built from the BPF telemetry's fork, exec and exit events
//! (docs/API.md#calls, `processes.list`): who ran (pid, parent, arguments), how each
//! ended and when. Bounded: the first [`LIST_MAX`] processes are listed, the rest only
//! counted, so a fork bomb costs a counter, not memory.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::ExitInfo;

/// Processes listed per call.
pub const LIST_MAX: usize = 64;

/// One process of a call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessInfo {
    pub pid: u32,
    /// The parent's pid, when the telemetry saw it (fork or exec).
    pub ppid: Option<u32>,
    /// Its arguments as of its last exec (at most 256 bytes of them); empty if it
    /// never exec'd (a forked copy of its parent).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// The arguments were longer than what is kept.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub argv_cut: bool,
    /// How it ended; `None` if it had not when the call ended (killed as left behind).
    pub exit: Option<ExitInfo>,
    /// Unix time in milliseconds of its fork (or first exec, for the tool).
    pub started_unix_ms: u64,
    pub ended_unix_ms: Option<u64>,
}

/// The process list of one running call.
#[derive(Debug, Default)]
pub struct CallProcesses {
    list: Vec<ProcessInfo>,
    index: HashMap<u32, usize>,
    omitted: u64,
}

impl CallProcesses {
    /// A process was forked in the call (`at_ms`: unix ms).
    pub fn fork(&mut self, pid: u32, ppid: u32, at_ms: u64) {
        self.add(pid, Some(ppid), at_ms);
    }

    /// A process exec'd. The tool (spawned straight into the cgroup) is first seen
    /// here; a listed process gets its new arguments; one beyond the list was counted
    /// at its fork.
    pub fn exec(&mut self, pid: u32, ppid: Option<u32>, argv: Vec<String>, cut: bool, at_ms: u64) {
        if !self.index.contains_key(&pid) {
            if self.list.len() >= LIST_MAX {
                return;
            }
            self.add(pid, ppid, at_ms);
        }
        if let Some(p) = self.index.get(&pid).map(|&i| &mut self.list[i]) {
            p.argv = argv;
            p.argv_cut = cut;
            p.ppid = p.ppid.or(ppid);
        }
    }

    /// A process exited with wait status `status`.
    pub fn exit(&mut self, pid: u32, status: u32, at_ms: u64) {
        if let Some(p) = self.index.get(&pid).map(|&i| &mut self.list[i]) {
            p.exit = Some(ExitInfo::from_wait_status(status as i32));
            p.ended_unix_ms = Some(at_ms);
        }
    }

    fn add(&mut self, pid: u32, ppid: Option<u32>, at_ms: u64) {
        if let Some(&i) = self.index.get(&pid) {
            // A pid reused within the call: the old process is gone, this is a new one.
            self.list[i] = fresh(pid, ppid, at_ms);
            return;
        }
        if self.list.len() >= LIST_MAX {
            self.omitted += 1;
            return;
        }
        self.index.insert(pid, self.list.len());
        self.list.push(fresh(pid, ppid, at_ms));
    }

    /// The list and the count of the rest, for the record.
    pub fn finish(self) -> (Vec<ProcessInfo>, u64) {
        (self.list, self.omitted)
    }
}

fn fresh(pid: u32, ppid: Option<u32>, at_ms: u64) -> ProcessInfo {
    ProcessInfo {
        pid,
        ppid,
        argv: Vec::new(),
        argv_cut: false,
        exit: None,
        started_unix_ms: at_ms,
        ended_unix_ms: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shell_and_its_child_are_listed_with_arguments_and_ends() {
        let mut c = CallProcesses::default();
        c.exec(
            10,
            Some(1),
            vec!["sh".into(), "-c".into(), "ls; true".into()],
            false,
            100,
        );
        c.fork(11, 10, 101);
        c.exec(11, Some(10), vec!["ls".into()], false, 102);
        c.exit(11, 0, 110);
        c.exit(10, 3 << 8, 120);
        let (list, omitted) = c.finish();
        assert_eq!(omitted, 0);
        assert_eq!(list.len(), 2);
        assert_eq!(list[0].argv, ["sh", "-c", "ls; true"]);
        assert_eq!(list[0].exit.map(|e| e.code), Some(Some(3)));
        assert_eq!((list[1].pid, list[1].ppid), (11, Some(10)));
        assert_eq!(list[1].argv, ["ls"]);
        assert_eq!(
            (list[1].started_unix_ms, list[1].ended_unix_ms),
            (101, Some(110))
        );
    }

    #[test]
    fn beyond_the_limit_processes_are_counted_once_not_listed() {
        let mut c = CallProcesses::default();
        c.exec(1, None, vec!["tool".into()], false, 0);
        for pid in 2..200 {
            c.fork(pid, 1, 1);
            c.exec(pid, Some(1), vec!["child".into()], false, 2);
            c.exit(pid, 0, 3);
        }
        let (list, omitted) = c.finish();
        assert_eq!(list.len(), LIST_MAX);
        assert_eq!(
            omitted,
            198 - (LIST_MAX as u64 - 1),
            "198 children, 63 listed"
        );
    }

    #[test]
    fn a_killed_leftover_has_no_end() {
        let mut c = CallProcesses::default();
        c.exec(1, None, vec!["sh".into()], false, 0);
        c.fork(2, 1, 1);
        let (list, _) = c.finish();
        assert_eq!(list[1].exit, None);
        assert_eq!(list[1].ended_unix_ms, None);
        assert!(list[1].argv.is_empty(), "never exec'd");
    }
}
