//! `curves.png`: train/test loss and accuracy per epoch, drawn with plotters.

use plotters::prelude::*;
use std::path::Path;
use tessera_core::{Error, Result};

/// One epoch's figures, as written to `metrics.jsonl`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EpochMetrics {
    pub epoch: usize,
    pub train_loss: f64,
    pub train_accuracy: f64,
    pub test_loss: f64,
    pub test_accuracy: f64,
}

/// DejaVu Sans (Bitstream Vera licence, assets/fonts), so text renders without system fonts.
const FONT: &[u8] = include_bytes!("../assets/fonts/DejaVuSans.ttf");

fn plot_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::BadFile {
        path: path.display().to_string(),
        msg: format!("cannot draw the plot: {e}"),
    }
}

/// Draws loss (left) and accuracy (right) curves of the train and test splits.
pub fn write_curves(path: &Path, title: &str, m: &[EpochMetrics]) -> Result<()> {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    REGISTER.call_once(|| {
        // The font is compiled in; a failure here would only mean no text, reported below.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    if m.is_empty() {
        return Ok(());
    }
    let root = BitMapBackend::new(path, (1100, 450)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_err(path, e))?;
    let root = root
        .titled(title, ("sans-serif", 22))
        .map_err(|e| plot_err(path, e))?;
    let (left, right) = root.split_horizontally(550);
    let last = m.iter().map(|r| r.epoch).max().unwrap_or(1).max(2) as f64;
    let first = m.iter().map(|r| r.epoch).min().unwrap_or(1) as f64;
    type Pick = fn(&EpochMetrics) -> (f64, f64);
    let loss: Pick = |r| (r.train_loss, r.test_loss);
    let accuracy: Pick = |r| (r.train_accuracy, r.test_accuracy);
    let panels = [
        (&left, "loss (cross-entropy)", loss),
        (&right, "accuracy", accuracy),
    ];
    for (area, name, get) in panels {
        let values: Vec<(f64, f64)> = m.iter().map(get).collect();
        let lo = values
            .iter()
            .flat_map(|v| [v.0, v.1])
            .fold(f64::INFINITY, f64::min);
        let hi = values
            .iter()
            .flat_map(|v| [v.0, v.1])
            .fold(f64::NEG_INFINITY, f64::max);
        let pad = ((hi - lo) * 0.08).max(1e-3);
        let mut chart = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(first - 0.2..last + 0.2, (lo - pad)..(hi + pad))
            .map_err(|e| plot_err(path, e))?;
        chart
            .configure_mesh()
            .x_desc("epoch")
            .x_labels((last - first) as usize + 1)
            .y_label_formatter(&|v| format!("{v:.3}"))
            .x_label_formatter(&|v| format!("{v:.0}"))
            .draw()
            .map_err(|e| plot_err(path, e))?;
        for (label, color, pick) in [("train", BLUE, 0usize), ("test", RED, 1usize)] {
            let pts: Vec<(f64, f64)> = m
                .iter()
                .zip(&values)
                .map(|(r, v)| (r.epoch as f64, if pick == 0 { v.0 } else { v.1 }))
                .collect();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| plot_err(path, e))?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart
                .draw_series(pts.into_iter().map(|p| Circle::new(p, 3, color.filled())))
                .map_err(|e| plot_err(path, e))?;
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .map_err(|e| plot_err(path, e))?;
    }
    root.present().map_err(|e| plot_err(path, e))
}

/// Reads the epochs recorded in a `metrics.jsonl` (so a resumed run plots the whole history).
pub fn read_metrics(path: &Path) -> Result<Vec<EpochMetrics>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => {
            return Err(Error::Io {
                path: path.display().to_string(),
                source: e,
            })
        }
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| parse_metrics_line(path, l))
        .collect()
}

/// One line of a `metrics.jsonl`; `path` names the file in the error.
pub(crate) fn parse_metrics_line(path: &Path, line: &str) -> Result<EpochMetrics> {
    let v: serde_json::Value = serde_json::from_str(line).map_err(|e| Error::BadFile {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    let f = |k: &str| {
        v[k].as_f64().ok_or_else(|| Error::BadFile {
            path: path.display().to_string(),
            msg: format!("missing {k}"),
        })
    };
    Ok(EpochMetrics {
        epoch: f("epoch")? as usize,
        train_loss: f("train_loss")?,
        train_accuracy: f("train_accuracy")?,
        test_loss: f("test_loss")?,
        test_accuracy: f("test_accuracy")?,
    })
}
