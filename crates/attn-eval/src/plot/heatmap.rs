//! The (layer × head) grid of one method's relative attention-output errors, with a colour bar
//! (logarithmic when the errors span more than a factor 100) and the values written in the cells
//! when they fit.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::axis::{Axis, Ticked};
use super::{anchored, draw_err, header, text, DrawResult, PlotError, GREY};
use crate::report::{grid_max, grid_mean, num, subtitle};
use crate::schema::Row;

/// Colour of cells without a number.
const EMPTY: RGBColor = RGBColor(222, 222, 222);

/// How values become colours.
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
}

impl Scale {
    fn fit(values: &[f64]) -> Self {
        let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let min_pos = finite.iter().copied().filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
        if min >= 0.0 && min_pos.is_finite() && max / min_pos > 100.0 {
            return Scale { lo: min_pos, hi: max, log: true };
        }
        let lo = min.min(0.0);
        let hi = if max > lo { max } else { lo + 1.0 };
        Scale { lo, hi, log: false }
    }

    /// Position of `v` on the scale, 0 … 1 (clamped).
    fn t(&self, v: f64) -> f64 {
        let t = if self.log {
            (v.max(self.lo).log10() - self.lo.log10()) / (self.hi.log10() - self.lo.log10())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        if t.is_finite() {
            t.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    fn colour(&self, v: f64) -> RGBColor {
        if v.is_finite() {
            ViridisRGB::get_color(self.t(v))
        } else {
            EMPTY
        }
    }
}

/// Per-(layer, head) relative error of `row` (`quality.head_error`) as a heat-map, written to
/// `path` as a 1000 × 720 PNG: layers down, heads across, a colour bar on the right; cells
/// without a number are grey.
///
/// # Errors
/// [`PlotError::NothingToPlot`] when the row has no finite per-head error; font and drawing
/// errors.
pub fn head_heatmap(row: &Row, path: &Path) -> Result<(), PlotError> {
    let grid = &row.quality.head_error;
    let layers = grid.len();
    let heads = grid.iter().map(Vec::len).max().unwrap_or(0);
    if layers == 0 || heads == 0 || !grid.iter().flatten().any(|v| v.is_finite()) {
        return Err(PlotError::NothingToPlot(format!(
            "`{}` on {}: no per-head errors",
            row.method,
            subtitle(row)
        )));
    }
    super::font::ensure()?;
    let mut sub = format!(
        "{} · {} · mean {}, max {}",
        row.task,
        subtitle(row),
        num(grid_mean(grid), 3),
        num(grid_max(grid), 3)
    );
    if let Some(r) = grid_mean(&row.quality.head_recall) {
        sub += &format!(", mean recall {} %", num(Some(100.0 * r), 4));
    }
    let title = format!("Per-head attention output error — {}", row.method);
    draw(path, &title, &sub, grid, layers, heads).map_err(draw_err(path))
}

fn draw(
    path: &Path,
    title: &str,
    sub: &str,
    grid: &[Vec<f64>],
    layers: usize,
    heads: usize,
) -> DrawResult<()> {
    let root = BitMapBackend::new(path, (1000, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let body = header(&root, title, sub)?;
    let (bw, _) = body.dim_in_pixel();
    let (chart_area, _) = body.split_horizontally(bw - 190);
    let values: Vec<f64> = grid.iter().flatten().copied().collect();
    let scale = Scale::fit(&values);

    let (lf, hf) = (layers as f64, heads as f64);
    // Ticks at the cell centres; at most ~32 labels per axis.
    let every = |n: usize| n.div_ceil(32).max(1);
    let xticks: Vec<f64> = (0..heads).step_by(every(heads)).map(|h| h as f64 + 0.5).collect();
    let yticks: Vec<f64> =
        (0..layers).step_by(every(layers)).map(|l| lf - l as f64 - 0.5).collect();
    let mut chart = ChartBuilder::on(&chart_area)
        .margin_left(12)
        .margin_right(10)
        .margin_top(8)
        .margin_bottom(8)
        .x_label_area_size(58)
        .y_label_area_size(74)
        .build_cartesian_2d(
            Ticked { lo: 0.0, hi: hf, ticks: xticks },
            Ticked { lo: 0.0, hi: lf, ticks: yticks },
        )?;
    let xf = |v: &f64| format!("{}", (v - 0.5).round() as i64);
    let yf = |v: &f64| format!("{}", (lf - v - 0.5).round() as i64);
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc("head")
        .y_desc("layer")
        .axis_desc_style(text(17, BLACK))
        .label_style(text(14, BLACK))
        .x_label_formatter(&xf)
        .y_label_formatter(&yf)
        .axis_style(GREY)
        .draw()?;

    let (px, py) = chart.plotting_area().get_pixel_range();
    let cell_w = f64::from(px.end - px.start) / hf;
    let cell_h = f64::from(py.end - py.start) / lf;
    let gap = cell_w.min(cell_h) >= 8.0;
    let mut any_empty = false;
    for (l, row) in grid.iter().enumerate() {
        for h in 0..heads {
            let v = row.get(h).copied().unwrap_or(f64::NAN);
            any_empty |= !v.is_finite();
            let (x0, y1) = (h as f64, lf - l as f64);
            chart.draw_series(std::iter::once(Rectangle::new(
                [(x0, y1 - 1.0), (x0 + 1.0, y1)],
                scale.colour(v).filled(),
            )))?;
            if gap {
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x0, y1 - 1.0), (x0 + 1.0, y1)],
                    WHITE.stroke_width(1),
                )))?;
            }
        }
    }
    // Values in the cells, when they fit.
    let label = |v: f64| num(Some(v), 2);
    let fits = cell_w >= 50.0 && cell_h >= 18.0;
    if fits {
        let size = if cell_h >= 24.0 { 13 } else { 11 };
        for (l, row) in grid.iter().enumerate() {
            for (h, &v) in row.iter().enumerate() {
                if !v.is_finite() {
                    continue;
                }
                let c = chart.backend_coord(&(h as f64 + 0.5, lf - l as f64 - 0.5));
                let bg = scale.colour(v);
                let lum =
                    0.299 * f64::from(bg.0) + 0.587 * f64::from(bg.1) + 0.114 * f64::from(bg.2);
                let fg = if lum > 140.0 { BLACK } else { WHITE };
                root.draw(&Text::new(
                    label(v),
                    c,
                    anchored(text(size, fg), HPos::Center, VPos::Center),
                ))?;
            }
        }
    }

    // The colour bar, level with the grid.
    let (bx0, bx1) = (px.end + 40, px.end + 68);
    let (by0, by1) = (py.start, py.end);
    let n = (by1 - by0).max(1);
    for i in 0..n {
        let t = 1.0 - f64::from(i) / f64::from(n);
        root.draw(&Rectangle::new(
            [(bx0, by0 + i), (bx1, by0 + i + 1)],
            ViridisRGB::get_color(t).filled(),
        ))?;
    }
    root.draw(&Rectangle::new([(bx0, by0), (bx1, by1)], GREY.stroke_width(1)))?;
    let axis = Axis::spanning(scale.lo, scale.hi, scale.log, 6.0);
    for &p in &axis.ticks {
        let t = (p - axis.lo) / (axis.hi - axis.lo);
        if !t.is_finite() {
            continue;
        }
        let y = by1 - (t * f64::from(by1 - by0)).round() as i32;
        root.draw(&PathElement::new(vec![(bx1, y), (bx1 + 5, y)], GREY.stroke_width(1)))?;
        root.draw(&Text::new(
            axis.label(p),
            (bx1 + 9, y),
            anchored(text(14, BLACK), HPos::Left, VPos::Center),
        ))?;
    }
    let bar_title = if scale.log { "relative error (log)" } else { "relative error" };
    root.draw(&Text::new(
        bar_title,
        ((bx0 + bx1) / 2 + 20, by0 - 10),
        anchored(text(14, BLACK), HPos::Center, VPos::Bottom),
    ))?;
    if any_empty {
        root.draw(&Rectangle::new([(bx0, by1 + 26), (bx0 + 16, by1 + 42)], EMPTY.filled()))?;
        root.draw(&Text::new(
            "not measured",
            (bx0 + 22, by1 + 34),
            anchored(text(13, GREY), HPos::Left, VPos::Center),
        ))?;
    }
    root.present()?;
    Ok(())
}
