//! `cargo xtask bench`: benchmarks run in the sched_ext VM (README, section Benchmarks).

mod calls;
mod cpu;
mod harness;
mod memory;
mod soak;
mod stats;
mod telemetry;

use std::fs;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow};
use clap::Subcommand;

use crate::host::Workspace;

/// Benchmarks in the VM
#[derive(Debug, Subcommand)]
pub enum Bench {
    Calls(calls::Args),
    Cpu(cpu::Args),
    Harness(harness::Args),
    Memory(memory::Args),
    Soak(soak::Args),
    Telemetry(telemetry::Args),
}

pub fn main(ws: &Workspace, bench: &Bench) -> Result<ExitCode> {
    match bench {
        Bench::Calls(args) => calls::main(ws, args),
        Bench::Cpu(args) => cpu::main(ws, args),
        Bench::Harness(args) => harness::main(ws, args),
        Bench::Memory(args) => memory::main(ws, args),
        Bench::Soak(args) => soak::main(ws, args),
        Bench::Telemetry(args) => telemetry::main(ws, args),
    }
}

/// Writes `<name>.md` and `<name>.json` into `out` and prints the markdown.
/// The raw JSON a guest program wrote to `path`, with the VM run's `status` handed back
/// for the caller to judge after its report; when it wrote none, the run's own failure
/// if it had one, else that the file is missing.
fn read_raw<T>(
    path: &Path,
    status: Result<T>,
    guest: &str,
) -> Result<(serde_json::Value, Result<T>)> {
    match fs::read_to_string(path) {
        Ok(text) => {
            let raw = serde_json::from_str(&text)
                .with_context(|| format!("{} is not JSON", path.display()))?;
            Ok((raw, status))
        }
        Err(e) => Err(status
            .err()
            .unwrap_or_else(|| anyhow!("{guest} wrote no {}: {e}", path.display()))),
    }
}

fn write_report(out: &Path, name: &str, md: &str, json: &serde_json::Value) -> Result<()> {
    fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let json = serde_json::to_string_pretty(json)?;
    for (file, text) in [
        (format!("{name}.md"), md),
        (format!("{name}.json"), json.as_str()),
    ] {
        let path = out.join(file);
        fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    println!("\n{md}");
    eprintln!(
        "[xtask] wrote {} and {name}.json",
        out.join(format!("{name}.md")).display()
    );
    Ok(())
}

/// The charts' font: DejaVu Sans (Debian fonts-dejavu-core, installed by
/// xtask/provision.sh), which plotters renders with ab_glyph, so no system font library
/// is needed.
const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// Registers [`FONT`] as plotters' "sans-serif".
fn register_font() -> Result<()> {
    let bytes = fs::read(FONT).with_context(|| {
        format!("cannot read the chart font {FONT}: run `cargo xtask provision` (installs fonts-dejavu-core)")
    })?;
    plotters::style::register_font(
        "sans-serif",
        plotters::style::FontStyle::Normal,
        bytes.leak(),
    )
    .map_err(|_| anyhow!("{FONT} is not a usable TrueType font"))
}
