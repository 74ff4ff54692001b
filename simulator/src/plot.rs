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

/// One measured point.
#[derive(Debug, Clone)]
pub struct Point {
    /// Configured loss rate (fraction).
    pub loss: f64,
    /// Configured mean burst (1 = independent).
    pub burst: f64,
    /// Files sent.
    pub files: usize,
    /// Files that arrived byte-identical.
    pub delivered: usize,
    /// Content bytes sent.
    pub bytes: u64,
    /// Content bytes that arrived byte-identical.
    pub bytes_delivered: u64,
    /// Seconds the sender ran.
    pub seconds: f64,
    /// Delivered content bits per second of sender time.
    pub goodput_mbps: f64,
    /// Datagrams the link received.
    pub datagrams: u64,
    /// Loss the link actually applied (fraction).
    pub measured_loss: f64,
    /// Longest run of dropped datagrams.
    pub longest_burst: u64,
}
/// Draws `points` into an SVG file at `path`.
pub fn draw(points: &[Point], title: &str, path: &Path) -> Result<()> {
    let root = SVGBackend::new(path, (960, 720)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let (top, bottom) = root.split_vertically(360);
    let max_loss = points.iter().map(|p| p.loss * 100.0).fold(1.0, f64::max);
    let max_goodput = points.iter().map(|p| p.goodput_mbps).fold(1.0, f64::max) * 1.1;
    let mut bursts: Vec<String> = points.iter().map(|p| p.burst_label()).collect();
    bursts.dedup();
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
        let series: Vec<&Point> = points.iter().filter(|p| &p.burst_label() == b).collect();
        let r: Vec<(f64, f64)> = series
            .iter()
            .map(|p| (p.loss * 100.0, p.delivery_ratio() * 100.0))
            .collect();
        let g: Vec<(f64, f64)> = series
            .iter()
            .map(|p| (p.loss * 100.0, p.goodput_mbps))
            .collect();
        ratio
            .draw_series(LineSeries::new(r.clone(), color.stroke_width(2)))
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
            .draw_series(LineSeries::new(g.clone(), color.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?;
        goodput
            .draw_series(
                g.iter()
                    .map(|&(x, y)| Circle::new((x, y), 4, color.filled())),
            )
            .map_err(|e| anyhow!("{e}"))?;
        if let Some(first) = series.iter().find(|p| p.delivery_ratio() < 1.0) {
            let x = first.loss * 100.0;
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
