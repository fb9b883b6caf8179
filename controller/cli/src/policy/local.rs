//! The policy commands that need no daemon: `check` and `explain`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use agentcg_core::policy::check::{self, Severity};
use agentcg_core::policy::{self, keys};

use crate::EXIT_USAGE;

/// Exit status of a policy with errors (or warnings under `--strict`).
pub const EXIT_PROBLEMS: u8 = 1;

/// What checking one file found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub errors: usize,
    pub warnings: usize,
}

/// Checks one file, printing each problem; `Err` when it cannot be read.
pub fn check_file(path: &Path) -> Result<Tally, String> {
    let text = policy::read_text(path).map_err(|e| e.to_string())?;
    let origin = path.display().to_string();
    let mut tally = Tally::default();
    for p in check::check(&text) {
        match p.severity {
            Severity::Error => tally.errors += 1,
            Severity::Warning => tally.warnings += 1,
        }
        println!("{}", p.render(&origin));
    }
    Ok(tally)
}

/// The exit status for what the files held: 2 if one was unreadable, else 1 on an
/// error (or, `strict`, a warning), else 0.
pub fn check_status(results: &[Result<Tally, String>], strict: bool) -> u8 {
    if results.iter().any(Result::is_err) {
        return EXIT_USAGE;
    }
    let bad = results
        .iter()
        .flatten()
        .any(|t| t.errors > 0 || (strict && t.warnings > 0));
    if bad { EXIT_PROBLEMS } else { 0 }
}

pub fn check(files: &[PathBuf], strict: bool) -> ExitCode {
    let results: Vec<Result<Tally, String>> = files
        .iter()
        .map(|f| {
            let r = check_file(f);
            match &r {
                Err(e) => eprintln!("agentcg: {e}"),
                Ok(t) if t.errors + t.warnings == 0 => eprintln!("{}: ok", f.display()),
                Ok(_) => {}
            }
            r
        })
        .collect();
    ExitCode::from(check_status(&results, strict))
}

pub fn explain(key: Option<&str>, markdown: bool) -> ExitCode {
    if markdown {
        print!("{}", keys::markdown());
        return ExitCode::SUCCESS;
    }
    let Some(path) = key else {
        for k in keys::KEYS {
            println!("{}", keys::explain(k));
        }
        return ExitCode::SUCCESS;
    };
    match keys::find(path) {
        Some(k) => {
            print!("{}", keys::explain(k));
            ExitCode::SUCCESS
        }
        None => {
            let near = keys::did_you_mean(path, keys::KEYS.iter().map(|k| k.path))
                .map(|n| format!("; did you mean `{n}`?"))
                .unwrap_or_default();
            eprintln!("agentcg: no policy key `{path}`{near}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_files_and_problems_pick_the_exit_status() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let good = write("good.toml", b"[memory]\npressure_at = 80\n");
        let warn = write(
            "warn.toml",
            b"[memory]\npressure_at = 40\ncalm_below = 30\n",
        );
        let bad = write("bad.toml", b"[memory]\npressure_at = 800\n");
        let garbage = write("garbage.toml", &[0xff, 0xfe, 0x00, 0x12]);
        let big = write("big.toml", &vec![b'#'; 10 << 20]);
        let one = |p: &Path| vec![check_file(p)];
        assert_eq!(check_status(&one(&good), true), 0);
        assert_eq!(check_status(&one(&warn), false), 0);
        assert_eq!(check_status(&one(&warn), true), EXIT_PROBLEMS);
        assert_eq!(check_status(&one(&bad), false), EXIT_PROBLEMS);
        let err = check_file(&garbage).unwrap_err();
        assert!(err.contains("not UTF-8"), "{err}");
        let err = check_file(&big).unwrap_err();
        assert!(err.contains("more than a policy may be"), "{err}");
        let err = check_file(dir.path()).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        let err = check_file(&dir.path().join("missing.toml")).unwrap_err();
        assert!(err.contains("No such file"), "{err}");
        assert_eq!(
            check_status(&[check_file(&good), check_file(&big)], false),
            EXIT_USAGE
        );
    }
}
