//! soak.png: agentcgd's RSS (top) and open fds and threads (bottom) against the calls
//! done, one point per sample; the RSS target and the fds' flatness bound (steady state
//! plus margin, verdict.rs) as horizontal lines.

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use super::verdict::{Fds, Point, RSS_TARGET_BYTES};
use crate::bench::register_font;

const MIB: f64 = (1 << 20) as f64;
const BLUE: RGBColor = RGBColor(31, 119, 180);
const ORANGE: RGBColor = RGBColor(255, 127, 14);
const GREEN: RGBColor = RGBColor(44, 160, 44);
const RED: RGBColor = RGBColor(214, 39, 40);

/// Draws `points` into `path` (PNG); `title` names the run.
pub fn draw(path: &Path, points: &[Point], fds: Option<Fds>, title: &str) -> Result<()> {
    register_font()?;
    let e = |e: &dyn std::fmt::Display| anyhow!("{e}");
    let calls = points.iter().map(|p| p.calls).max().unwrap_or(0).max(1) as f64;
    let root = BitMapBackend::new(path, (1200, 820)).into_drawing_area();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 20)).map_err(|x| e(&x))?;
    let (top, bottom) = root.split_vertically(400);

    let target = RSS_TARGET_BYTES as f64 / MIB;
    let rss_top = points
        .iter()
        .map(|p| p.rss as f64 / MIB)
        .fold(target, f64::max)
        * 1.15;
    let mut chart = ChartBuilder::on(&top)
        .caption("agentcgd RSS (MiB)", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..calls, 0.0..rss_top)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("calls done")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_desc("MiB")
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(
            points.iter().map(|p| (p.calls as f64, p.rss as f64 / MIB)),
            BLUE.stroke_width(2),
        ))
        .map_err(|x| e(&x))?
        .label("VmRSS")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], BLUE.stroke_width(2)));
    chart
        .draw_series(LineSeries::new([(0.0, target), (calls, target)], RED))
        .map_err(|x| e(&x))?
        .label("target 30 MiB")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    legend(&mut chart)?;

    let fd_top = points
        .iter()
        .flat_map(|p| [p.fds, p.threads])
        .chain(fds.map(|f| f.steady + f.margin))
        .max()
        .unwrap_or(1) as f64
        * 1.2;
    let mut chart = ChartBuilder::on(&bottom)
        .caption("agentcgd open fds and threads", ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..calls, 0.0..fd_top)
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_desc("calls done")
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style(("sans-serif", 13))
        .draw()
        .map_err(|x| e(&x))?;
    for (name, color, of) in [
        ("open fds", ORANGE, (|p: &Point| p.fds) as fn(&Point) -> u64),
        ("threads", GREEN, |p: &Point| p.threads),
    ] {
        chart
            .draw_series(LineSeries::new(
                points.iter().map(|p| (p.calls as f64, of(p) as f64)),
                color.stroke_width(2),
            ))
            .map_err(|x| e(&x))?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
    }
    if let Some(f) = fds {
        let bound = (f.steady + f.margin) as f64;
        chart
            .draw_series(LineSeries::new([(0.0, bound), (calls, bound)], RED))
            .map_err(|x| e(&x))?
            .label(format!("flat bound: steady {} + {}", f.steady, f.margin))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RED));
    }
    legend(&mut chart)?;
    root.present()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The series' legend, in the lower right corner of `chart`.
fn legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> Result<()> {
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|x| anyhow!("{x}"))
}
