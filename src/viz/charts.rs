//! Charts drawn with [plotters](https://docs.rs/plotters) (its bitmap backend, text set in the
//! embedded DejaVu Sans, so no system font is needed): the corner plot of a table run and the
//! training curve of every run. Rendered into memory and written atomically as PNG.

use std::path::Path;
use std::sync::OnceLock;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

use super::Canvas;

/// Register DejaVu Sans as plotters' `sans-serif` (once per process).
fn fonts() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        use plotters::style::{register_font, FontStyle};
        // A failure leaves text undrawable; the chart functions then return the error.
        let _ = register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
        let _ = register_font("sans-serif", FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Draw into a `width x height` RGB buffer with `draw`, then save it as a PNG at `path`.
fn render(
    path: &Path,
    (width, height): (u32, u32),
    draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> Result<()>,
) -> Result<()> {
    fonts();
    let mut rgb = vec![255u8; (width * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
        draw(root.clone())?;
        root.present().map_err(|e| anyhow!("{e}"))?;
    }
    Canvas {
        width: width as usize,
        height: height as usize,
        rgb,
    }
    .save_png(path)
}

fn err<E: std::fmt::Display>(e: E) -> anyhow::Error {
    anyhow!("drawing a chart: {e}")
}

/// Columns shown in a corner plot at most (the first ones); more panels would be unreadable.
pub const CORNER_MAX_COLUMNS: usize = 8;

/// A corner plot: for the first (up to [`CORNER_MAX_COLUMNS`]) columns, a grid of panels with
/// the pairwise scatter of `rows` (blue) and `samples` (orange) below the diagonal and both
/// histograms on it. `rows` holds `width` values per row (the first `names.len()` are plotted);
/// `samples` holds `names.len()` per row. At most 3,000 points of each are drawn.
pub fn corner_plot(
    path: &Path,
    names: &[String],
    rows: &[f64],
    width: usize,
    samples: &[f64],
    title: &str,
) -> Result<()> {
    let d = names.len();
    let k = d.min(CORNER_MAX_COLUMNS);
    let data: Vec<&[f64]> = rows.chunks(width).take(3000).collect();
    let smp: Vec<&[f64]> = samples.chunks(d).take(3000).collect();
    // Axis ranges from the data's 0.5% and 99.5% quantiles, so a few wild samples do not
    // squash the picture.
    let ranges: Vec<(f64, f64)> = (0..k)
        .map(|c| {
            let mut v: Vec<f64> = data.iter().map(|r| r[c]).collect();
            v.sort_by(f64::total_cmp);
            let q = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
            let (lo, hi) = (q(0.005), q(0.995));
            let pad = 0.1 * (hi - lo).max(1e-9);
            (lo - pad, hi + pad)
        })
        .collect();
    let side = (180 * k as u32).clamp(400, 1600);
    render(path, (side, side + 40), |root| {
        let root = root.titled(title, ("sans-serif", 18)).map_err(err)?;
        let blue = RGBColor(31, 119, 180);
        let orange = RGBColor(255, 127, 14);
        for (i, area) in root.split_evenly((k, k)).iter().enumerate() {
            let (row, col) = (i / k, i % k);
            if col > row {
                continue;
            }
            let (xr, yr) = (ranges[col], ranges[row]);
            let mut cb = ChartBuilder::on(area);
            cb.margin(6).x_label_area_size(28).y_label_area_size(40);
            if row == col {
                let bins = 30;
                let w = (xr.1 - xr.0) / bins as f64;
                let hist = |pts: &[&[f64]]| {
                    let mut h = vec![0.0; bins];
                    for p in pts {
                        let b = (p[col] - xr.0) / w;
                        if b >= 0.0 && (b as usize) < bins {
                            h[b as usize] += 1.0 / (pts.len() as f64 * w);
                        }
                    }
                    h
                };
                let (hd, hs) = (hist(&data), hist(&smp));
                let top = hd.iter().chain(&hs).cloned().fold(1e-12, f64::max) * 1.1;
                let mut ch = cb.build_cartesian_2d(xr.0..xr.1, 0.0..top).map_err(err)?;
                ch.configure_mesh()
                    .disable_mesh()
                    .x_labels(3)
                    .y_labels(3)
                    .x_desc(names[col].as_str())
                    .label_style(("sans-serif", 10))
                    .draw()
                    .map_err(err)?;
                for (h, c) in [(&hd, blue), (&hs, orange)] {
                    ch.draw_series(h.iter().enumerate().map(|(b, &v)| {
                        let x0 = xr.0 + b as f64 * w;
                        Rectangle::new([(x0, 0.0), (x0 + w, v)], c.mix(0.45).filled())
                    }))
                    .map_err(err)?;
                }
            } else {
                let mut ch = cb.build_cartesian_2d(xr.0..xr.1, yr.0..yr.1).map_err(err)?;
                ch.configure_mesh()
                    .disable_mesh()
                    .x_labels(3)
                    .y_labels(3)
                    .x_desc(names[col].as_str())
                    .y_desc(names[row].as_str())
                    .label_style(("sans-serif", 10))
                    .draw()
                    .map_err(err)?;
                let inside =
                    |p: &&&[f64]| (xr.0..xr.1).contains(&p[col]) && (yr.0..yr.1).contains(&p[row]);
                for (pts, c) in [(&data, blue), (&smp, orange)] {
                    ch.draw_series(
                        pts.iter()
                            .filter(inside)
                            .map(|p| Circle::new((p[col], p[row]), 1, c.mix(0.35).filled())),
                    )
                    .map_err(err)?;
                }
            }
        }
        Ok(())
    })
}

/// Draw `loss.png` in the run directory `out` from its `metrics.csv`: the column `y` against
/// the column `x` (non-finite values left out), titled `title`.
///
/// # Errors
/// An unreadable `metrics.csv`, a missing column, or a failed write.
pub fn loss_curve(out: &Path, x: &str, y: &str, title: &str) -> Result<()> {
    let path = out.join("metrics.csv");
    let mut reader =
        csv::Reader::from_path(&path).map_err(|e| anyhow!("{}: {e}", path.display()))?;
    let headers = reader.headers()?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| anyhow!("{}: no column '{name}'", path.display()))
    };
    let (xi, yi) = (col(x)?, col(y)?);
    let mut pts: Vec<(f64, f64)> = Vec::new();
    for rec in reader.records() {
        let rec = rec?;
        if let (Some(a), Some(b)) = (rec.get(xi), rec.get(yi)) {
            if let (Ok(a), Ok(b)) = (a.parse::<f64>(), b.parse::<f64>()) {
                if a.is_finite() && b.is_finite() {
                    pts.push((a, b));
                }
            }
        }
    }
    if pts.is_empty() {
        return Ok(());
    }
    let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max);
    // The y range of the last 90% of the run, so the first steps' large values do not flatten
    // the curve.
    let tail: Vec<f64> = pts[pts.len() / 10..].iter().map(|p| p.1).collect();
    let (lo, hi) = curve_range(&tail);
    let pad = 0.05 * (hi - lo).max(1e-6);
    // The curve starts where it enters that range (the first steps' values are off the chart).
    let from = pts.iter().position(|p| p.1 <= hi + pad).unwrap_or(0);
    let above = pts[from..].iter().filter(|p| p.1 > hi + pad).count();
    let title = match above {
        0 => title.to_string(),
        k => format!(
            "{title} ({k} value{} above the chart)",
            if k == 1 { "" } else { "s" }
        ),
    };
    let series = [(String::new(), pts[from..].to_vec())];
    line_chart(
        &out.join("loss.png"),
        &title,
        (x, y),
        (xmax, (lo - pad, hi + pad)),
        &series,
        false,
    )
}

/// The y range `(lo, hi)` a loss curve shows for the values `ys`: from the smallest value to
/// the 99.5th percentile, so that a few isolated spikes (a degenerate batch whose step the
/// stability guard clipped: one such window of 1e6 bits/dim among thousands near 3) do not
/// flatten the curve; they run off the top of the chart and the title counts them. Fewer than
/// 200 values keep their maximum. `(0, 1)` for no values.
pub fn curve_range(ys: &[f64]) -> (f64, f64) {
    let mut v: Vec<f64> = ys.iter().copied().filter(|y| y.is_finite()).collect();
    if v.is_empty() {
        return (0.0, 1.0);
    }
    v.sort_by(f64::total_cmp);
    let top = match v.len() {
        n if n < 200 => n - 1,
        n => ((n - 1) as f64 * 0.995).floor() as usize,
    };
    (v[0], v[top])
}

/// One panel of a picture of the plane `[-b, b]^2`.
pub enum Panel<'a> {
    /// A density on a grid, colour-mapped on `[0, vmax]` (inferno); non-finite cells in
    /// [`NONFINITE_COLOUR`](super::plots::NONFINITE_COLOUR), never as zero density.
    Density(&'a super::DensityGrid),
    /// Points `(x, y)`, coloured by a density on `[0, vmax]` when given (low densities drawn
    /// first, so dense cores stay on top), white otherwise.
    Points(&'a [[f64; 2]], Option<&'a [f64]>),
}

/// Titled panels side by side on the box `[-half_width, half_width]^2`, with a colour bar for
/// the common scale `[0, vmax]` when any panel is a density map. Written as PNG at `path`.
///
/// # Errors
/// A failed drawing or write.
pub fn plane_panels(
    path: &Path,
    items: &[(String, Panel)],
    half_width: f64,
    vmax: f64,
) -> Result<()> {
    let side = 520u32;
    let bar = items.iter().any(|(_, p)| matches!(p, Panel::Density(_)));
    let bar_w = if bar { 110 } else { 0 };
    let width = side * items.len() as u32 + bar_w;
    let colour = |v: f64| {
        if v.is_finite() {
            let [r, g, b] = super::colormap::inferno(v / vmax);
            RGBColor(r, g, b)
        } else {
            let [r, g, b] = super::plots::NONFINITE_COLOUR;
            RGBColor(r, g, b)
        }
    };
    let b = half_width;
    render(path, (width, side + 20), |root| {
        let (panels, bar_area) = root.split_horizontally(side * items.len() as u32);
        for ((title, panel), area) in items.iter().zip(panels.split_evenly((1, items.len()))) {
            let mut ch = ChartBuilder::on(&area)
                .caption(title.as_str(), ("sans-serif", 18))
                .margin(10)
                .x_label_area_size(30)
                .y_label_area_size(40)
                .build_cartesian_2d(-b..b, -b..b)
                .map_err(err)?;
            ch.configure_mesh()
                .disable_mesh()
                .x_labels(5)
                .y_labels(5)
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(err)?;
            ch.plotting_area().fill(&BLACK).map_err(err)?;
            match panel {
                Panel::Density(g) => {
                    let h = 2.0 * g.half_width / g.size as f64;
                    ch.draw_series(g.values.iter().enumerate().map(|(i, &v)| {
                        let (row, col) = ((i / g.size) as f64, (i % g.size) as f64);
                        let (x0, y0) = (-g.half_width + col * h, g.half_width - row * h);
                        Rectangle::new([(x0, y0), (x0 + h, y0 - h)], colour(v).filled())
                    }))
                    .map_err(err)?;
                }
                Panel::Points(points, dens) => {
                    let mut order: Vec<usize> = (0..points.len()).collect();
                    if let Some(d) = dens {
                        order.sort_by(|&i, &j| d[i].total_cmp(&d[j]));
                    }
                    let inside = |p: &[f64; 2]| p[0].abs() < b && p[1].abs() < b;
                    ch.draw_series(order.into_iter().filter(|&i| inside(&points[i])).map(|i| {
                        let c = match dens {
                            Some(d) => {
                                let [r, g, bl] =
                                    super::colormap::inferno(0.15 + 0.85 * d[i] / vmax);
                                RGBColor(r, g, bl)
                            }
                            None => WHITE,
                        };
                        Circle::new((points[i][0], points[i][1]), 1, c.filled())
                    }))
                    .map_err(err)?;
                }
            }
        }
        if bar {
            let mut ch = ChartBuilder::on(&bar_area)
                .caption("density", ("sans-serif", 14))
                .margin_top(40)
                .margin_bottom(40)
                .margin_right(50)
                .y_label_area_size(0)
                .right_y_label_area_size(45)
                .build_cartesian_2d(0.0..1.0, 0.0..vmax)
                .map_err(err)?;
            ch.configure_mesh()
                .disable_mesh()
                .disable_x_axis()
                .y_labels(6)
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(err)?;
            let steps = 128;
            ch.draw_series((0..steps).map(|k| {
                let (lo, hi) = (
                    vmax * k as f64 / steps as f64,
                    vmax * (k + 1) as f64 / steps as f64,
                );
                Rectangle::new([(0.0, lo), (1.0, hi)], colour(0.5 * (lo + hi)).filled())
            }))
            .map_err(err)?;
        }
        Ok(())
    })
}

/// Several named curves `(x, y)` on one chart with a legend, as PNG at `path` (non-finite
/// points left out).
///
/// # Errors
/// A failed drawing or write.
pub fn curves(
    path: &Path,
    title: &str,
    x: &str,
    y: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<()> {
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|(_, p)| {
            p.iter()
                .copied()
                .filter(|(a, b)| a.is_finite() && b.is_finite())
                .collect()
        })
        .collect();
    let all = finite.iter().flatten();
    let xmax = all.clone().map(|p| p.0).fold(1.0, f64::max);
    let lo = all.clone().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let hi = all.map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    if !lo.is_finite() {
        return Ok(());
    }
    let pad = 0.05 * (hi - lo).max(1e-6);
    let series: Vec<(String, Vec<(f64, f64)>)> = series
        .iter()
        .zip(finite)
        .map(|((name, _), pts)| (name.clone(), pts))
        .collect();
    line_chart(
        path,
        title,
        (x, y),
        (xmax, (lo - pad, hi + pad)),
        &series,
        true,
    )
}

/// Lines on axes `[0, xmax] x [ylo, yhi]` labelled `x`, `y`, titled `title`, with a legend of
/// the series' names when `legend`; PNG at `path`.
fn line_chart(
    path: &Path,
    title: &str,
    (x, y): (&str, &str),
    (xmax, (ylo, yhi)): (f64, (f64, f64)),
    series: &[(String, Vec<(f64, f64)>)],
    legend: bool,
) -> Result<()> {
    const COLOURS: [RGBColor; 6] = [
        RGBColor(31, 119, 180),
        RGBColor(255, 127, 14),
        RGBColor(44, 160, 44),
        RGBColor(214, 39, 40),
        RGBColor(148, 103, 189),
        RGBColor(140, 86, 75),
    ];
    render(path, (800, 480), |root| {
        let mut ch = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(14)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..xmax, ylo..yhi)
            .map_err(err)?;
        ch.configure_mesh()
            .x_desc(x)
            .y_desc(y)
            .x_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 12))
            .axis_desc_style(("sans-serif", 14))
            .draw()
            .map_err(err)?;
        for (i, (name, pts)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            ch.draw_series(LineSeries::new(pts.iter().copied(), colour.stroke_width(2)))
                .map_err(err)?
                .label(name.as_str())
                .legend(move |(lx, ly)| {
                    PathElement::new(vec![(lx, ly), (lx + 18, ly)], colour.stroke_width(2))
                });
        }
        if legend {
            ch.configure_series_labels()
                .position(SeriesLabelPosition::LowerLeft)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 13))
                .draw()
                .map_err(err)?;
        }
        Ok(())
    })
}
