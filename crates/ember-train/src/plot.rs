//! The loss curves of a run, drawn as an SVG image.

use std::path::Path;

use plotters::prelude::*;

use crate::TrainError;
use crate::error::expect_run;
use crate::metrics::read_metrics;
use crate::output::{check_output, write_output};
use crate::trainer::{METRICS_FILE, MetricsRecord};

/// Reads `metrics.jsonl` of `run_dir` and draws training and validation loss against steps into
/// `out` (SVG). Returns the number of points drawn.
pub fn plot_losses(run_dir: &Path, out: &Path) -> Result<usize, TrainError> {
    expect_run(run_dir)?;
    let metrics_path = run_dir.join(METRICS_FILE);
    let records: Vec<MetricsRecord> = read_metrics(&metrics_path)?
        .into_iter()
        .map(|(_, record)| record)
        .collect();
    let train: Vec<(f64, f64)> = records.iter().map(|r| (r.step as f64, r.loss)).collect();
    let val: Vec<(f64, f64)> = records
        .iter()
        .filter_map(|r| Some((r.step as f64, r.val_loss?)))
        .collect();
    if train.is_empty() {
        return Err(TrainError::Plot {
            path: metrics_path,
            message: "no metrics yet: train first".into(),
        });
    }
    check_output(out, true)?;
    plot_curves(&train, &val, "loss (nats per character)", out)?;
    Ok(train.len() + val.len())
}

/// Draws a training curve and, when not empty, a validation curve, `(step, loss)` points, into
/// `out` (SVG) under `title`.
pub fn plot_curves(
    train: &[(f64, f64)],
    val: &[(f64, f64)],
    title: &str,
    out: &Path,
) -> Result<(), TrainError> {
    let plot_error = |e: &dyn std::fmt::Display| TrainError::Plot {
        path: out.to_path_buf(),
        message: e.to_string(),
    };
    if train.is_empty() {
        return Err(plot_error(&"no points to draw"));
    }
    let max_step = train.iter().map(|p| p.0).fold(1.0, f64::max);
    let losses = train.iter().chain(val).map(|p| p.1);
    let (low, high) = losses.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });

    // Drawn in memory and written whole: an interrupted plot never leaves half an image.
    let mut svg = String::new();
    let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| plot_error(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(16)
        .x_label_area_size(36)
        .y_label_area_size(56)
        .build_cartesian_2d(0.0..max_step, (low * 0.95)..(high * 1.05))
        .map_err(|e| plot_error(&e))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc("loss")
        .draw()
        .map_err(|e| plot_error(&e))?;
    chart
        .draw_series(LineSeries::new(train.iter().copied(), &BLUE))
        .map_err(|e| plot_error(&e))?
        .label("train")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], BLUE));
    if !val.is_empty() {
        chart
            .draw_series(LineSeries::new(val.iter().copied(), &RED))
            .map_err(|e| plot_error(&e))?
            .label("validation")
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], RED));
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| plot_error(&e))?;
    root.present().map_err(|e| plot_error(&e))?;
    drop(chart);
    drop(root);
    write_output(out, svg.as_bytes(), true)
}
