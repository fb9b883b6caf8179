//! agentcgd's own process metrics under their standard names (`process_*`, as every
//! Prometheus client library exports them), read from /proc/self at scrape time.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;

use super::family::{Desc, counter, gauge};

/// One reading of /proc/self.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ProcessSample {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    /// The soft RLIMIT_NOFILE; `None` when unlimited.
    pub max_fds: Option<u64>,
    pub start_time_seconds: f64,
}

/// The raw figures /proc gives, in clock ticks and pages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Raw {
    pub utime_ticks: u64,
    pub stime_ticks: u64,
    pub start_ticks: u64,
    pub rss_pages: u64,
    pub vsize: u64,
    pub ticks_per_second: u64,
    pub page_size: u64,
    pub boot_time_secs: u64,
}

/// Converts ticks and pages into seconds and bytes.
pub fn convert(r: Raw, open_fds: u64, max_fds: Option<u64>) -> ProcessSample {
    let hz = r.ticks_per_second.max(1) as f64;
    ProcessSample {
        cpu_seconds: (r.utime_ticks + r.stime_ticks) as f64 / hz,
        resident_bytes: r.rss_pages.saturating_mul(r.page_size),
        virtual_bytes: r.vsize,
        open_fds,
        max_fds,
        start_time_seconds: r.boot_time_secs as f64 + r.start_ticks as f64 / hz,
    }
}

/// Reads /proc/self.
pub fn read() -> Result<ProcessSample, procfs::ProcError> {
    let me = procfs::process::Process::myself()?;
    let stat = me.stat()?;
    let raw = Raw {
        utime_ticks: stat.utime,
        stime_ticks: stat.stime,
        start_ticks: stat.starttime,
        rss_pages: stat.rss,
        vsize: stat.vsize,
        ticks_per_second: procfs::ticks_per_second(),
        page_size: procfs::page_size(),
        boot_time_secs: procfs::boot_time_secs()?,
    };
    let max_fds = match me.limits()?.max_open_files.soft_limit {
        procfs::process::LimitValue::Value(v) => Some(v),
        procfs::process::LimitValue::Unlimited => None,
    };
    Ok(convert(raw, me.fd_count()? as u64, max_fds))
}

/// Encodes a reading.
pub fn encode(p: &ProcessSample, mut enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
    let e = &mut enc;
    counter(
        e,
        Desc::seconds("process_cpu", "Total user and system CPU time spent"),
        p.cpu_seconds,
    )?;
    gauge(
        e,
        Desc::bytes("process_resident_memory", "Resident memory size"),
        p.resident_bytes,
    )?;
    gauge(
        e,
        Desc::bytes("process_virtual_memory", "Virtual memory size"),
        p.virtual_bytes,
    )?;
    gauge(
        e,
        Desc::new("process_open_fds", "Number of open file descriptors"),
        p.open_fds,
    )?;
    if let Some(max) = p.max_fds {
        gauge(
            e,
            Desc::new("process_max_fds", "Maximum number of open file descriptors"),
            max,
        )?;
    }
    gauge(
        e,
        Desc::seconds(
            "process_start_time",
            "Start time of the process since the Unix epoch",
        ),
        p.start_time_seconds,
    )?;
    Ok(())
}

/// The collector (registered without the `agentcg_` prefix).
#[derive(Debug)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, enc: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        match read() {
            Ok(p) => encode(&p, enc),
            Err(e) => {
                tracing::warn!("metrics: reading /proc/self: {e}");
                Ok(())
            }
        }
    }
}
