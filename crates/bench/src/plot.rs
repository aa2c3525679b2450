//! The job wait distribution of each system as an SVG: the empirical cumulative distribution
//! (fraction of jobs that waited at most x seconds), x on a log scale so a sub-second
//! autoscaler and a minutes-long sequential loop fit on one chart.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::report::ScenarioReport;

/// Shortest wait drawn: the log axis cannot show zero.
const MIN_WAIT_S: f64 = 0.01;
const COLORS: [RGBColor; 3] = [
    RGBColor(214, 39, 40),
    RGBColor(31, 119, 180),
    RGBColor(44, 160, 44),
];

/// Step points of the empirical CDF of sorted waits: (wait, fraction <= wait).
pub fn cdf_points(sorted_waits: &[f64]) -> Vec<(f64, f64)> {
    let n = sorted_waits.len() as f64;
    let mut points = Vec::with_capacity(sorted_waits.len() * 2);
    for (i, w) in sorted_waits.iter().enumerate() {
        let x = w.max(MIN_WAIT_S);
        points.push((x, i as f64 / n));
        points.push((x, (i + 1) as f64 / n));
    }
    points
}

/// Writes the chart of `report` to `path`. Returns false (and writes nothing) when no system
/// has any job.
pub fn write_wait_svg(report: &ScenarioReport, path: &Path) -> anyhow::Result<bool> {
    let series: Vec<(&str, Vec<(f64, f64)>)> = report
        .ordered()
        .into_iter()
        .filter(|(_, r)| !r.waits_s.is_empty())
        .map(|(name, r)| (name, cdf_points(&r.waits_s)))
        .collect();
    if series.is_empty() {
        return Ok(false);
    }
    let max_wait = series
        .iter()
        .flat_map(|(_, p)| p.iter().map(|(x, _)| *x))
        .fold(1.0f64, f64::max);
    let x_max = 10f64.powf(max_wait.log10().ceil()).max(10.0);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 460)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e:?}"))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{}: job wait (waiting -> running), cumulative",
                    report.scenario
                ),
                ("sans-serif", 20),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((MIN_WAIT_S..x_max).log_scale(), 0f64..1f64)
            .map_err(|e| anyhow!("{e:?}"))?;
        chart
            .configure_mesh()
            .x_desc("wait in seconds (log scale)")
            .y_desc("fraction of jobs")
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        for (i, (name, points)) in series.into_iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))
                .map_err(|e| anyhow!("{e:?}"))?
                .label(name)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE)
            .border_style(BLACK)
            .draw()
            .map_err(|e| anyhow!("{e:?}"))?;
        root.present().map_err(|e| anyhow!("{e:?}"))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, svg)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdf_steps_reach_one() {
        let points = cdf_points(&[0.0, 0.5, 2.0]);
        assert_eq!(points.len(), 6);
        assert_eq!(points[0], (MIN_WAIT_S, 0.0));
        assert_eq!(points[5], (2.0, 1.0));
        assert!(points
            .windows(2)
            .all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }
}
