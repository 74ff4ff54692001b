//! SVG chart of a sweep: delivery ratio and goodput against loss, one line per burst setting.

use std::path::Path;

use anyhow::{Result, anyhow};
use plotters::prelude::*;

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(255, 127, 14),
    RGBColor(23, 190, 207),
];

pub use checkvalve_formats::qualification::Point;

/// The series a point is drawn in: its burst setting, with the rate and shard size when the
/// sweep varied them.
fn series_label(p: &Point, rates: bool, shards: bool) -> String {
    let mut label = p.burst_label();
    if rates {
        label.push_str(&format!(", {}", p.rate));
    }
    if shards {
        let shard = p.shard_size.map_or("default".into(), |s| s.to_string());
        label.push_str(&format!(", shard {shard}"));
    }
    label
}

/// The mean of each loss rate's repeats, in order of loss.
fn means(series: &[&Point], value: impl Fn(&Point) -> f64) -> Vec<(f64, f64)> {
    let mut xs: Vec<f64> = series.iter().map(|p| p.loss * 100.0).collect();
    xs.sort_by(f64::total_cmp);
    xs.dedup();
    xs.into_iter()
        .map(|x| {
            let at: Vec<f64> = series
                .iter()
                .filter(|p| p.loss * 100.0 == x)
                .map(|p| value(p))
                .collect();
            (x, at.iter().sum::<f64>() / at.len() as f64)
        })
        .collect()
}

/// Draws `points` into an SVG file at `path`: a line through each loss rate's mean, a dot for
/// every repeat.
pub fn draw(points: &[Point], title: &str, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(360);
    let max_loss = points.iter().map(|p| p.loss * 100.0).fold(1.0, f64::max);
    let max_goodput = points.iter().map(|p| p.goodput_mbps).fold(1.0, f64::max) * 1.1;
    let varied = |f: &dyn Fn(&Point) -> String| {
        let mut v: Vec<String> = points.iter().map(f).collect();
        v.sort();
        v.dedup();
        v.len() > 1
    };
    let rates = varied(&|p| p.rate.clone());
    let shards = varied(&|p| format!("{:?}", p.shard_size));
    let label = |p: &Point| series_label(p, rates, shards);
    let mut bursts: Vec<String> = points.iter().map(label).collect();
    bursts.sort();
    bursts.dedup();

    let mut ratio = ChartBuilder::on(&top)
        .caption(
            format!("{title}: files delivered intact"),
            ("sans-serif", 20),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_loss, 0.0..105.0)
        .map_err(|e| anyhow!("{e}"))?;
    ratio
        .configure_mesh()
        .x_desc("configured loss (%)")
        .y_desc("delivered (%)")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    ratio
        .draw_series(LineSeries::new(
            [(0.0, 100.0), (max_loss, 100.0)],
            BLACK.mix(0.3),
        ))
        .map_err(|e| anyhow!("{e}"))?;
    let mut goodput = ChartBuilder::on(&bottom)
        .caption(format!("{title}: goodput"), ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..max_loss, 0.0..max_goodput)
        .map_err(|e| anyhow!("{e}"))?;
    goodput
        .configure_mesh()
        .x_desc("configured loss (%)")
        .y_desc("goodput (Mbit/s)")
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    for (i, b) in bursts.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let series: Vec<&Point> = points.iter().filter(|p| &label(p) == b).collect();
        let r: Vec<(f64, f64)> = series
            .iter()
            .map(|p| (p.loss * 100.0, p.delivery_ratio() * 100.0))
            .collect();
        let g: Vec<(f64, f64)> = series
            .iter()
            .map(|p| (p.loss * 100.0, p.goodput_mbps))
            .collect();
        ratio
            .draw_series(LineSeries::new(
                means(&series, |p| p.delivery_ratio() * 100.0),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?
            .label(b.clone())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], color.stroke_width(2)));
        ratio
            .draw_series(
                r.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
        goodput
            .draw_series(LineSeries::new(
                means(&series, |p| p.goodput_mbps),
                color.stroke_width(2),
            ))
            .map_err(|e| anyhow!("{e}"))?;
        goodput
            .draw_series(
                g.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
        let first = series
            .iter()
            .filter(|p| p.delivery_ratio() < 1.0)
            .map(|p| p.loss * 100.0)
            .min_by(f64::total_cmp);
        if let Some(x) = first {
            ratio
                .draw_series(std::iter::once(Text::new(
                    format!("{b}: below 100% from {x:.1}% loss"),
                    (max_loss * 0.3, 25.0 - 9.0 * i as f64),
                    ("sans-serif", 14).into_font().color(&color),
                )))
                .map_err(|e| anyhow!("{e}"))?;
        }
    }
    ratio
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerLeft)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}
