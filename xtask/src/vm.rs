//! Boots the sched_ext VM once with virtme-ng and runs a shell snippet in it
//! (docs/ARCHITECTURE.md#kernel-tests-in-the-vm).
//!
//! The guest's stdout does not reliably reach the host, so everything goes through the
//! `--rwdir` directory target/vm: the generated guest.sh enables the cpu, memory and pids
//! controllers, runs the job with stdout and stderr in guest.log, saves `dmesg` to
//! dmesg.log and the job's exit status to `status`. The guest's serial console (kernel
//! messages of level warning and above) goes to vng.log on the host, which survives a
//! guest that dies mid-job. The host prints guest.log as it grows, scans dmesg.log (or
//! the console when the guest saved no dmesg) for kernel errors and kills the VM when it
//! overruns the timeout.
//! A lock on target/vm/lock makes concurrent runs in the same tree take turns.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::host::{self, Workspace};

/// The sched_ext kernel the VM boots (installed by `cargo xtask provision vm`).
pub const KERNEL_IMAGE: &str = "/lib/modules/7.3.4+deb13-amd64/vmlinuz.unsigned";

/// Dmesg markers that fail the run.
const FATAL_MARKERS: [&str; 4] = ["BUG:", "WARNING:", "Oops", "Kernel panic"];

/// The guest console's log level: messages more severe than KERN_NOTICE (warnings,
/// errors, stall and hung-task reports, OOM kills, panics) reach vng.log.
const CONSOLE_LOGLEVEL: &str = "loglevel=5";

/// How the VM is booted.
#[derive(Debug, Clone, clap::Args)]
pub struct VmOptions {
    /// Guest memory (vng --memory)
    #[arg(long, default_value = "2G")]
    pub memory: String,
    /// Guest CPUs (vng --cpus)
    #[arg(long, default_value_t = 2)]
    pub cpus: u32,
    /// Kill the VM (vng and QEMU) after this many seconds (the whole kernel suite runs
    /// 45-65 min under emulation, depending on the machine and its load; CI stops at
    /// 90 min in all)
    #[arg(long, value_name = "SECS", default_value_t = 70 * 60)]
    pub timeout: u64,
    /// Kernel image to boot
    #[arg(long, value_name = "PATH", default_value = KERNEL_IMAGE)]
    pub kernel: PathBuf,
}

#[cfg(test)]
impl VmOptions {
    /// Options for unit tests that never boot: a 2-CPU, 2 GiB guest of kernel `/k`.
    pub fn for_tests() -> VmOptions {
        VmOptions {
            memory: "2G".into(),
            cpus: 2,
            timeout: 60,
            kernel: PathBuf::from("/k"),
        }
    }
}

/// What to run in the guest: a shell snippet (run in a subshell from the workspace root,
/// stdin from /dev/null) and environment variables for it.
#[derive(Debug)]
pub struct Job {
    pub script: String,
    pub env: Vec<(&'static str, String)>,
}

impl Job {
    /// A job that runs the workspace's shell script `rel` (e.g. `xtask/bench/soak.sh`)
    /// with `sh`.
    pub fn script_file(ws: &Workspace, rel: &str, env: Vec<(&'static str, String)>) -> Job {
        Job {
            script: format!("sh {}", sh_quote_path(&ws.root.join(rel))),
            env,
        }
    }
}

/// The end of a VM run.
#[derive(Debug)]
pub struct Outcome {
    /// Everything the job printed.
    pub log: String,
    /// The job's exit status, or why the guest did not finish the job.
    end: std::result::Result<i32, String>,
    /// The fatal lines of the guest kernel's log (BUG, WARNING, Oops, panic).
    kernel_errors: Vec<String>,
}

impl Outcome {
    /// The job's exit status; fails when the guest did not finish the job or its kernel
    /// logged a BUG, WARNING or Oops.
    pub fn check(&self) -> Result<i32> {
        if self.kernel_errors.is_empty() {
            return self.end.clone().map_err(anyhow::Error::msg);
        }
        let logged = format!(
            "the guest kernel logged {} BUG/WARNING/Oops/panic line(s), listed above; \
             the full log is target/vm/dmesg.log, or the console target/vm/vng.log",
            self.kernel_errors.len()
        );
        match &self.end {
            Ok(_) => bail!("{logged}"),
            Err(died) => bail!("{logged}; and {died}"),
        }
    }

    /// Whether the guest died of a stray `int3` (`stray_int3_death`) and of nothing
    /// else: the one death a vm-test run survives by booting again.
    pub fn died_of_a_stray_int3(&self) -> bool {
        self.end.is_err() && stray_int3_death(&self.kernel_errors)
    }

    /// The job's status as xtask's exit code (see `check`).
    pub fn exit_code(&self) -> Result<ExitCode> {
        Ok(ExitCode::from(u8::try_from(self.check()?).unwrap_or(1)))
    }
}

/// The files in target/vm shared with the guest.
#[derive(Debug)]
struct GuestFiles {
    dir: PathBuf,
}

impl GuestFiles {
    fn script(&self) -> PathBuf {
        self.dir.join("guest.sh")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("guest.log")
    }
    fn dmesg(&self) -> PathBuf {
        self.dir.join("dmesg.log")
    }
    fn status(&self) -> PathBuf {
        self.dir.join("status")
    }
    fn vng_log(&self) -> PathBuf {
        self.dir.join("vng.log")
    }

    /// Takes target/vm/lock, waiting while another xtask run holds it; the lock file names
    /// its holder.
    fn lock(&self) -> Result<File> {
        let path = self.dir.join("lock");
        let mut lock = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        if lock.try_lock().is_err() {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            eprintln!(
                "[xtask] waiting for the VM run that holds {}: {}",
                path.display(),
                holder.trim()
            );
            lock.lock()
                .with_context(|| format!("cannot lock {}", path.display()))?;
        }
        let me: Vec<String> = std::env::args().collect();
        lock.set_len(0)?;
        writeln!(lock, "pid {}: {}", std::process::id(), me.join(" "))?;
        Ok(lock)
    }

    /// Removes the previous run's results.
    fn reset(&self) -> Result<()> {
        for file in [self.log(), self.dmesg(), self.status(), self.vng_log()] {
            match fs::remove_file(&file) {
                Err(err) if err.kind() != io::ErrorKind::NotFound => {
                    return Err(err).with_context(|| format!("cannot remove {}", file.display()));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Boots the VM, runs `job` in it and prints what it prints.
pub fn run(ws: &Workspace, opts: &VmOptions, job: &Job) -> Result<Outcome> {
    if !opts.kernel.is_file() {
        bail!(
            "kernel image {} is missing: run `cargo xtask provision vm`",
            opts.kernel.display()
        );
    }
    let files = GuestFiles { dir: ws.vm_dir() };
    fs::create_dir_all(&files.dir)
        .with_context(|| format!("cannot create {}", files.dir.display()))?;
    let _lock = files.lock()?;
    files.reset()?;
    fs::write(files.script(), guest_script(ws, &files, job))
        .with_context(|| format!("cannot write {}", files.script().display()))?;
    let end = match boot(ws, opts, &files)? {
        BootEnd::Exited(vng_status) => read_status(&files, vng_status),
        BootEnd::TimedOut => Err(format!(
            "the VM did not finish within {} s and was killed; raise --timeout or see why \
             the job hung in target/vm/guest.log",
            opts.timeout
        )),
    };
    let kernel_errors = scan_kernel_log(&files);
    let log = fs::read_to_string(files.log()).unwrap_or_default();
    Ok(Outcome {
        log,
        end,
        kernel_errors,
    })
}

/// guest.sh: cgroup setup, the job with its output in guest.log, then dmesg and status.
fn guest_script(ws: &Workspace, files: &GuestFiles, job: &Job) -> String {
    let exports: String = std::iter::once(("AGENTCG_VM", "1".to_owned()))
        .chain(job.env.iter().cloned())
        .map(|(key, value)| format!("export {key}={}\n", sh_quote(&value)))
        .collect();
    format!(
        "#!/bin/sh\n\
         # Generated by `cargo xtask` (xtask/src/vm.rs); runs inside the VM.\n\
         finish() {{ dmesg > {dmesg} 2>&1; echo \"$1\" > {status}; exit \"$1\"; }}\n\
         exec > {log} 2>&1 < /dev/null\n\
         cd {root} || finish 125\n\
         echo '+cpu +memory +pids' > /sys/fs/cgroup/cgroup.subtree_control || {{\n\
         \x20 echo 'xtask guest: cannot enable the cpu, memory and pids controllers'; finish 125; }}\n\
         {exports}\
         {stage}\
         (\n{script}\n)\n\
         finish $?\n",
        dmesg = sh_quote_path(&files.dmesg()),
        status = sh_quote_path(&files.status()),
        log = sh_quote_path(&files.log()),
        root = sh_quote_path(&ws.root),
        script = job.script.trim_end(),
        stage = STAGE_BINARIES,
    )
}

/// Copies the executables of AGENTCG_BIN_DIR into the guest's tmpfs and points
/// AGENTCG_BIN_DIR there: executables paged in over 9p under emulation start 4-5x
/// slower (measured: `agentcg --version` 979 ms from the shared host tree, 253 ms from
/// tmpfs), which would swamp every per-call figure.
const STAGE_BINARIES: &str = "if [ -n \"${AGENTCG_BIN_DIR:-}\" ]; then\n\
  mkdir -p /tmp/agentcg-bin\n\
  for f in \"$AGENTCG_BIN_DIR\"/*; do\n\
    [ -f \"$f\" ] && [ -x \"$f\" ] && cp \"$f\" /tmp/agentcg-bin/\n\
  done\n\
  export AGENTCG_BIN_DIR=/tmp/agentcg-bin\n\
fi\n";

enum BootEnd {
    Exited(ExitStatus),
    TimedOut,
}

/// Runs vng until it exits or the timeout expires, printing guest.log as it grows;
/// reports the boot time.
fn boot(ws: &Workspace, opts: &VmOptions, files: &GuestFiles) -> Result<BootEnd> {
    let vng_log = File::create(files.vng_log())
        .with_context(|| format!("cannot create {}", files.vng_log().display()))?;
    let mut cmd = Command::new("vng");
    cmd.arg("--disable-kvm")
        .arg("--rwdir")
        .arg(&files.dir)
        .arg("-r")
        .arg(&opts.kernel)
        .args([
            "--memory",
            &opts.memory,
            "--cpus",
            &opts.cpus.to_string(),
            "--verbose",
            "--append",
            CONSOLE_LOGLEVEL,
            "--exec",
        ])
        .arg(format!("sh {}", sh_quote_path(&files.script())))
        .current_dir(&ws.root)
        .stdin(Stdio::null())
        .stdout(vng_log.try_clone()?)
        .stderr(vng_log);
    eprintln!("[xtask] $ {}", host::display(&cmd));
    let mut child = cmd
        .spawn()
        .context("cannot start vng: run `cargo xtask provision vm` (installs virtme-ng)")?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(opts.timeout);
    let mut log: Option<File> = None;
    loop {
        let exited = child.try_wait()?;
        if log.is_none() {
            log = File::open(files.log()).ok();
            if log.is_some() {
                eprintln!(
                    "[xtask] guest up after {:.1} s",
                    start.elapsed().as_secs_f64()
                );
            }
        }
        if let Some(log) = &mut log {
            io::copy(log, &mut io::stdout().lock()).context("cannot copy guest.log to stdout")?;
        }
        if let Some(status) = exited {
            eprintln!(
                "[xtask] VM exited after {:.1} s ({status})",
                start.elapsed().as_secs_f64()
            );
            return Ok(BootEnd::Exited(status));
        }
        if Instant::now() >= deadline {
            kill_tree(&mut child)?;
            return Ok(BootEnd::TimedOut);
        }
        sleep(Duration::from_millis(200));
    }
}

/// Kills vng and its descendants (virtme-run, QEMU, virtiofsd) and reaps vng.
fn kill_tree(child: &mut Child) -> Result<()> {
    let mut pids = vec![child.id()];
    let mut next = 0;
    while let Some(&pid) = pids.get(next) {
        pids.extend(children_of(pid));
        next += 1;
    }
    for pid in pids {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
    child.wait().context("cannot reap vng after killing it")?;
    Ok(())
}

/// The child process ids of `pid`, from /proc/PID/task/*/children.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Prints the lines of the guest's kernel log that point at trouble and returns the fatal
/// ones: dmesg.log, or the console vng.log when the guest saved no dmesg.
fn scan_kernel_log(files: &GuestFiles) -> Vec<String> {
    let (dmesg, console) = (files.dmesg(), files.vng_log());
    let log = fs::read_to_string(&dmesg).or_else(|_| {
        eprintln!(
            "[xtask] no {} from the guest: checking its console {} instead",
            dmesg.display(),
            console.display()
        );
        fs::read_to_string(&console)
    });
    match log {
        Ok(log) => kernel_trouble(&log),
        Err(err) => {
            eprintln!("[xtask] cannot read {}: {err}", console.display());
            Vec::new()
        }
    }
}

/// Prints the kernel log lines that point at trouble; returns the fatal ones.
fn kernel_trouble(log: &str) -> Vec<String> {
    let (lines, fatal) = trouble_report(log);
    for line in lines {
        eprintln!("[xtask] guest kernel: {line}");
    }
    fatal.into_iter().map(str::to_owned).collect()
}

/// An `int3` trap in kernel code that no text patch, kprobe or debugger claims, and the
/// panic it causes in interrupt context. The guest dies so, rarely, while a sched_ext
/// scheduler is loaded or unloaded: the kernel patches the static keys that flips
/// live, with `int3` as a temporary breakpoint, and the timer interrupt runs through
/// patched sites; sched_ext's own CI on QEMU died the same way (sched-ext/scx#130, #70).
/// Whether QEMU's emulation or the kernel's patching is at fault is not known; agentcg's
/// code patches nothing. See docs/ARCHITECTURE.md#a-guest-that-dies. True only when
/// every fatal line is one of these.
fn stray_int3_death(fatal: &[String]) -> bool {
    let int3 = |line: &String| line.contains("Oops: int3:");
    let its_panic = |line: &String| line.contains("Kernel panic - not syncing: Fatal exception");
    fatal.iter().any(int3) && fatal.iter().all(|line| int3(line) || its_panic(line))
}

/// Lines a fatal report may run to after its first line (registers, code, call trace).
const REPORT_LINES: usize = 60;

/// The lines worth showing (each fatal line with the report that follows it, up to its
/// `---[ end trace` or `REPORT_LINES`, and sched_ext's errors) and the fatal lines.
fn trouble_report(log: &str) -> (Vec<&str>, Vec<&str>) {
    let (mut shown, mut fatal, mut report_left) = (Vec::new(), Vec::new(), 0);
    for line in log.lines() {
        let is_fatal = FATAL_MARKERS.iter().any(|marker| line.contains(marker));
        let sched_ext = line
            .split_once("sched_ext: ")
            .is_some_and(|(_, rest)| rest.contains("disabled") || rest.contains("error"));
        if is_fatal {
            fatal.push(line);
            report_left = REPORT_LINES;
            shown.push(line);
        } else if report_left > 0 || sched_ext {
            shown.push(line);
            report_left = report_left.saturating_sub(1);
            if line.contains("---[ end trace") {
                report_left = 0;
            }
        }
    }
    (shown, fatal)
}

/// The job's exit status as the guest recorded it, or why there is none.
fn read_status(files: &GuestFiles, vng_status: ExitStatus) -> std::result::Result<i32, String> {
    let recorded = fs::read_to_string(files.status()).ok();
    let Some(status) = recorded.and_then(|s| s.trim().parse().ok()) else {
        let vng_log = fs::read_to_string(files.vng_log()).unwrap_or_default();
        let tail: Vec<&str> = vng_log.lines().rev().take(80).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        return Err(format!(
            "the guest did not finish its job (vng: {vng_status}); the kernel may have \
             panicked, QEMU failed or was killed. Last lines of {}:\n{}",
            files.vng_log().display(),
            tail.join("\n")
        ));
    };
    Ok(status)
}

/// `s` quoted for sh.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A path quoted for sh.
pub fn sh_quote_path(path: &Path) -> String {
    sh_quote(&path.to_string_lossy())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_or_warning_on_the_console_is_fatal_and_notices_are_not() {
        let console = "[  1.0] virtme-ng-init: starting script\n\
                       [ 90.1] sched_ext: BPF scheduler \"x\" disabled (runtime error)\n\
                       [ 91.2] WARNING: CPU: 1 PID: 7 at kernel/sched/ext.c:100\n\
                       [ 95.3] Kernel panic - not syncing: Attempted to kill init!\n";
        assert_eq!(kernel_trouble(console).len(), 2);
        let (shown, fatal) = trouble_report(console);
        assert_eq!((shown.len(), fatal.len()), (3, 2), "{shown:?}");
        assert_eq!(
            kernel_trouble("[ 1.0] rcu: Hierarchical SRCU implementation.\n").len(),
            0
        );
    }

    #[test]
    fn a_fatal_line_is_shown_with_its_report_up_to_its_end() {
        let oops = "[ 1.0] booted\n\
                    [ 799.4] Oops: int3: 0000 [#1] SMP NOPTI\n\
                    [ 799.4] RIP: 0010:uncharge_batch+0x1/0x90\n\
                    [ 799.4] Call Trace:\n\
                    [ 799.4] ---[ end trace 0000000000000000 ]---\n\
                    [ 800.0] virtio_net: link up\n";
        let (shown, fatal) = trouble_report(oops);
        assert_eq!(fatal.len(), 1);
        assert_eq!(shown.len(), 4, "{shown:?}");
        assert!(shown[1].contains("RIP: "), "{shown:?}");
        let endless = format!("Oops: int3\n{}", "[ 1.0] frame\n".repeat(100));
        assert_eq!(trouble_report(&endless).0.len(), 1 + REPORT_LINES);
    }

    #[test]
    fn a_guest_that_died_says_so_beside_its_kernel_errors() {
        let died = Outcome {
            log: String::new(),
            end: Err("the guest did not finish its job; Last lines: RIP".to_owned()),
            kernel_errors: vec!["Oops: int3: 0000".into(), "Kernel panic".into()],
        };
        let err = died.check().unwrap_err().to_string();
        assert!(
            err.contains("logged 2") && err.contains("Last lines: RIP"),
            "{err}"
        );
    }

    #[test]
    fn only_a_stray_int3_and_its_panic_alone_are_the_death_a_run_survives() {
        let lines = |v: &[&str]| v.iter().map(|l| l.to_string()).collect::<Vec<_>>();
        let int3 = "[ 799.48] Oops: int3: 0000 [#1] SMP NOPTI";
        let panic = "[ 799.50] Kernel panic - not syncing: Fatal exception in interrupt";
        let died = |fatal: Vec<String>| Outcome {
            log: String::new(),
            end: Err("the guest did not finish its job".to_owned()),
            kernel_errors: fatal,
        };
        assert!(died(lines(&[int3, panic])).died_of_a_stray_int3());
        assert!(!died(lines(&[panic])).died_of_a_stray_int3());
        assert!(!died(Vec::new()).died_of_a_stray_int3());
        let warned = lines(&[
            "[ 10.0] WARNING: CPU: 1 at kernel/sched/ext.c:9",
            int3,
            panic,
        ]);
        assert!(!died(warned).died_of_a_stray_int3());
        let other_oops = lines(&["[ 9.0] Oops: general protection fault", panic]);
        assert!(!died(other_oops).died_of_a_stray_int3());
        let finished = Outcome {
            end: Ok(0),
            ..died(lines(&[int3]))
        };
        assert!(!finished.died_of_a_stray_int3(), "the job finished");
    }

    #[test]
    fn the_console_is_scanned_only_when_the_guest_saved_no_dmesg() {
        let dir = tempfile::tempdir().unwrap();
        let files = GuestFiles {
            dir: dir.path().to_path_buf(),
        };
        let panic = "[ 95.3] Kernel panic - not syncing: Attempted to kill init!\n";
        fs::write(files.vng_log(), panic).unwrap();
        assert_eq!(
            scan_kernel_log(&files).len(),
            1,
            "no dmesg.log: the console counts"
        );
        fs::write(
            files.dmesg(),
            "[ 1.0] rcu: Hierarchical SRCU implementation.\n",
        )
        .unwrap();
        assert_eq!(
            scan_kernel_log(&files).len(),
            0,
            "dmesg.log is the guest's whole log"
        );
        fs::write(
            files.dmesg(),
            "[ 9.1] BUG: kernel NULL pointer dereference\n",
        )
        .unwrap();
        assert_eq!(scan_kernel_log(&files).len(), 1);
    }
}
