//! The loss curve as a PNG, drawn with `plotters`. Axis labels need a font: the first of a few
//! common system fonts that exists is used; without one the curve is drawn without text.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
];

/// Registers a system font for plotters once; `false` when none was found.
fn font_available() -> bool {
    static FOUND: OnceLock<bool> = OnceLock::new();
    *FOUND.get_or_init(|| {
        for path in FONT_PATHS {
            if let Ok(bytes) = std::fs::read(path) {
                // plotters keeps font data for the life of the process.
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                if plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok() {
                    return true;
                }
            }
        }
        false
    })
}

/// Draws training loss (and validation loss, if any) against steps into `path`.
pub fn loss_curve(path: &Path, train: &[(u64, f64)], eval: &[(u64, f64)]) -> Result<()> {
    let points: Vec<&(u64, f64)> = train
        .iter()
        .chain(eval)
        .filter(|(_, l)| l.is_finite())
        .collect();
    if points.is_empty() {
        return Ok(());
    }
    let max_step = points.iter().map(|p| p.0).max().unwrap_or(1).max(1);
    let lo = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    let pad = ((hi - lo) * 0.05).max(1e-3);
    let fonts = font_available();

    let root = BitMapBackend::new(path, (900, 560)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let mut builder = ChartBuilder::on(&root);
    builder
        .margin(16)
        .x_label_area_size(if fonts { 40 } else { 8 })
        .y_label_area_size(if fonts { 60 } else { 8 });
    if fonts {
        builder.caption("loss", ("sans-serif", 22));
    }
    let mut chart = builder
        .build_cartesian_2d(0u64..max_step, (lo - pad)..(hi + pad))
        .map_err(|e| anyhow!("{e}"))?;
    let mut mesh = chart.configure_mesh();
    if fonts {
        mesh.x_desc("step").y_desc("loss");
    } else {
        mesh.disable_x_axis().disable_y_axis();
    }
    mesh.draw().map_err(|e| anyhow!("{e}"))?;
    let train_series = chart
        .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
        .map_err(|e| anyhow!("{e}"))?;
    if fonts {
        train_series
            .label("train")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
    }
    if !eval.is_empty() {
        let s = chart
            .draw_series(LineSeries::new(eval.iter().copied(), RED.stroke_width(2)))
            .map_err(|e| anyhow!("{e}"))?;
        if fonts {
            s.label("val")
                .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
        }
    }
    if fonts {
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()
            .map_err(|e| anyhow!("{e}"))?;
    }
    root.present()
        .map_err(|e| anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(())
}
