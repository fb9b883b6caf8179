//! memory.png: per arm, the share of runs with all three sessions alive and HIGH's
//! per-run p95 growth latency (median, whisker to the worst run), one bar per parent
//! limit and speed. A run where HIGH did not survive is infinite: its bar or whisker
//! reaches the top of the axis, drawn hollow.
//!
//! Text is drawn with the font `bench::register_font` registers.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::prelude::*;

use super::Arm;
use super::report::Report;
use crate::bench::register_font;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Draws the chart of `report` into `path` (PNG).
pub fn draw(path: &Path, report: &Report) -> Result<()> {
    register_font()?;
    let mut arms: Vec<Arm> = report.cells.iter().map(|c| c.arm).collect();
    arms.sort();
    arms.dedup();
    let mut configs: Vec<(u32, u32)> = report.cells.iter().map(|c| (c.limit, c.speed)).collect();
    configs.dedup();
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (left, right) = root.split_horizontally(700);
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        arms.get(i as usize)
            .map(|a| format!("({}) {}", a.letter(), a.name()))
            .unwrap_or_default()
    };
    let n = arms.len() as f64;
    let width = 0.8 / configs.len() as f64;
    let x_of = |arm: Arm, cfg: usize| {
        let i = arms.iter().position(|&a| a == arm).unwrap_or(0) as f64;
        i - 0.4 + width * cfg as f64
    };
    let cfg_of = |limit: u32, speed: u32| configs.iter().position(|&c| c == (limit, speed));

    // Left: share of runs with all three alive.
    let mut chart = ChartBuilder::on(&left)
        .caption("runs with all 3 sessions alive (%)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..130.0)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(arms.len())
        .x_label_formatter(&label)
        .x_label_style(("sans-serif", 13))
        .y_desc("%")
        .y_labels(7)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (j, &(limit, speed)) in configs.iter().enumerate() {
        let color = COLORS[j % COLORS.len()];
        let bars = report
            .cells
            .iter()
            .filter(|c| cfg_of(c.limit, c.speed) == Some(j))
            .map(|c| {
                let x = x_of(c.arm, j);
                let share = if c.runs == 0 {
                    0.0
                } else {
                    100.0 * c.all_alive as f64 / c.runs as f64
                };
                Rectangle::new([(x, 0.0), (x + width * 0.9, share)], color.filled())
            });
        chart
            .draw_series(bars)
            .map_err(|e| anyhow!("{e}"))?
            .label(format!("{limit} MiB, {speed}x"))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperMiddle)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| anyhow!("{e}"))?;

    // Right: HIGH per-run p95 growth latency, median and worst; failures at the top.
    let top = report
        .cells
        .iter()
        .filter_map(|c| c.high_p95)
        .flat_map(|s| [s.p50, s.p99])
        .filter(|v| v.is_finite())
        .fold(1.0, f64::max)
        * 1.15;
    let clamp = |v: f64| if v.is_finite() { v } else { top };
    let mut chart = ChartBuilder::on(&right)
        .caption(
            "HIGH p95 growth-step latency per run (ms, median; worst)",
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(-0.5..n - 0.5, 0.0..top)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(arms.len())
        .x_label_formatter(&label)
        .x_label_style(("sans-serif", 13))
        .y_desc("ms")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (j, _) in configs.iter().enumerate() {
        let color = COLORS[j % COLORS.len()];
        let cells: Vec<_> = report
            .cells
            .iter()
            .filter(|c| cfg_of(c.limit, c.speed) == Some(j))
            .filter_map(|c| c.high_p95.map(|s| (x_of(c.arm, j), s.p50, s.p99)))
            .collect();
        chart
            .draw_series(cells.iter().map(|&(x, median, _)| {
                let style = if median.is_finite() {
                    color.filled()
                } else {
                    color.stroke_width(2)
                };
                Rectangle::new([(x, 0.0), (x + width * 0.9, clamp(median))], style)
            }))
            .map_err(|e| anyhow!("{e}"))?;
        chart
            .draw_series(cells.iter().map(|&(x, median, worst)| {
                let mid = x + width * 0.45;
                PathElement::new(
                    vec![(mid, clamp(median)), (mid, clamp(worst))],
                    BLACK.stroke_width(2),
                )
            }))
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}
