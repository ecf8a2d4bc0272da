//! Quality against attention speed-up for one comparison: one labelled point per method, the
//! exact baseline as a black diamond at speed-up 1 with dashed reference lines through it, and a
//! side panel listing each method's numbers (and the methods that failed or lack a number).

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::axis::Axis;
use super::{
    anchored, bold, draw_err, ellipsize, fit_text, header, marker, style_of, text, DrawResult,
    PlotError, Shape, GREY, LIGHT,
};
use crate::report::{delta_ppl_pct, grid_mean, groups, speedup, Group};
use crate::schema::Row;

/// The quality number on the y axis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Metric {
    /// lm: perplexity ÷ exact's perplexity (a ratio, so that methods off by 10⁵ % and those
    /// within 1 % share one readable, logarithmic axis).
    PplRatio,
    /// lm without an exact perplexity: KL to exact.
    Kl,
    /// embed: 1 − mean cosine to exact.
    OneMinusCos,
    /// embed without cosines: Pearson with human judgements.
    Pearson,
    /// retrieval: accuracy, %.
    Accuracy,
    /// fidelity: mean relative error over heads.
    HeadError,
}

impl Metric {
    /// The metric a comparison is plotted with, if its task has one.
    pub fn for_group(g: &Group<'_>) -> Option<Self> {
        let any = |f: fn(&Row) -> bool| g.rows.iter().any(|r| r.status == "ok" && f(r));
        match g.task() {
            "lm" => {
                if g.exact().and_then(|e| e.quality.perplexity).is_some_and(|p| p > 0.0)
                    && any(|r| r.quality.perplexity.is_some())
                {
                    Some(Self::PplRatio)
                } else if any(|r| r.quality.kl_to_exact.is_some()) {
                    Some(Self::Kl)
                } else {
                    None
                }
            }
            "embed" => {
                if any(|r| r.quality.cosine_mean.is_some()) {
                    Some(Self::OneMinusCos)
                } else if any(|r| r.quality.pearson.is_some()) {
                    Some(Self::Pearson)
                } else {
                    None
                }
            }
            "retrieval" => any(|r| r.quality.accuracy.is_some()).then_some(Self::Accuracy),
            "fidelity" => any(|r| !r.quality.head_error.is_empty()).then_some(Self::HeadError),
            _ => None,
        }
    }

    /// The row's value.
    pub fn value(self, r: &Row, exact: Option<&Row>) -> Option<f64> {
        let q = &r.quality;
        match self {
            Self::PplRatio => delta_ppl_pct(r, exact).map(|d| 1.0 + d / 100.0),
            Self::Kl => q.kl_to_exact,
            Self::OneMinusCos => q.cosine_mean.map(|c| 1.0 - c),
            Self::Pearson => q.pearson,
            Self::Accuracy => q.accuracy.map(|a| 100.0 * a),
            Self::HeadError => grid_mean(&q.head_error),
        }
    }

    fn axis_title(self) -> &'static str {
        match self {
            Self::PplRatio => "perplexity ÷ exact perplexity (lower is better)",
            Self::Kl => "KL(exact ‖ method), nats (lower is better)",
            Self::OneMinusCos => "1 − mean cosine to exact (lower is better)",
            Self::Pearson => "Pearson r with human judgements (higher is better)",
            Self::Accuracy => "exact-match accuracy, % (higher is better)",
            Self::HeadError => "mean relative error of head outputs (lower is better)",
        }
    }

    fn short(self, v: f64) -> String {
        use crate::report::{num, signed};
        match self {
            Self::PplRatio => format!("Δppl {} %", signed(Some(100.0 * (v - 1.0)), 3)),
            Self::Kl => format!("KL {}", num(Some(v), 3)),
            Self::OneMinusCos => format!("1−cos {}", num(Some(v), 2)),
            Self::Pearson => format!("r {v:.4}"),
            Self::Accuracy => format!("acc {v:.1} %"),
            Self::HeadError => format!("err {}", num(Some(v), 3)),
        }
    }
}

struct Point {
    method: String,
    x: f64,
    y: f64,
    exact: bool,
    colour: RGBColor,
    shape: Shape,
}

/// Pixel rectangle `[x0, y0, x1, y1]`.
type Rect = [i32; 4];

fn overlap(a: &Rect, b: &Rect) -> i64 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0) as i64;
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0) as i64;
    w * h
}

/// Picks a place for a `w × h` label near the point at `c`: the first of the positions around
/// it (right, left, above, below, the diagonals, then the same farther out) that overlaps no
/// marker and no earlier label and stays inside `bounds`, else the one that overlaps least.
/// Returns the rectangle and whether it is far enough to need a leader line.
fn place_label(c: (i32, i32), w: i32, h: i32, taken: &[Rect], bounds: &Rect) -> (Rect, bool) {
    let mut best: Option<(i64, Rect, bool)> = None;
    for (ring, d) in [10, 26, 46, 70].into_iter().enumerate() {
        let (x, y) = c;
        let cands = [
            [x + d, y - h / 2],
            [x - d - w, y - h / 2],
            [x - w / 2, y - d - h],
            [x - w / 2, y + d],
            [x + d * 7 / 10, y - d * 7 / 10 - h],
            [x + d * 7 / 10, y + d * 7 / 10],
            [x - d * 7 / 10 - w, y - d * 7 / 10 - h],
            [x - d * 7 / 10 - w, y + d * 7 / 10],
        ];
        for [x0, y0] in cands {
            let r = [x0, y0, x0 + w, y0 + h];
            if r[0] < bounds[0] || r[1] < bounds[1] || r[2] > bounds[2] || r[3] > bounds[3] {
                continue;
            }
            // Earlier rings are preferred: a small penalty per ring breaks ties.
            let cost: i64 = taken.iter().map(|t| overlap(&r, t)).sum::<i64>() * 10 + ring as i64;
            if cost == ring as i64 {
                return (r, ring > 0);
            }
            if best.as_ref().is_none_or(|b| cost < b.0) {
                best = Some((cost, r, ring > 0));
            }
        }
    }
    best.map_or(([c.0 + 10, c.1 - h / 2, c.0 + 10 + w, c.1 + h / 2], false), |b| (b.1, b.2))
}

/// Quality vs attention speed-up of the comparison `key` ([`Row::key`]) among `rows`, written to
/// `path` as a 1100 × 720 PNG.
///
/// x: exact attention seconds / method attention seconds (logarithmic when the values span more
/// than a factor 10); y: the task's key quality number — lm: Δppl % (KL without an exact
/// perplexity), embed: 1 − mean cosine (Pearson without cosines), retrieval: accuracy %,
/// fidelity: mean per-head error.
///
/// # Errors
/// [`PlotError::NothingToPlot`] when the comparison is absent, has no exact row with an attention
/// time, or no method with both numbers; font and drawing errors.
pub fn pareto(rows: &[Row], key: &str, path: &Path) -> Result<(), PlotError> {
    let gs = groups(rows);
    let g = gs
        .iter()
        .find(|g| g.key == key)
        .ok_or_else(|| PlotError::NothingToPlot(format!("no rows of comparison `{key}`")))?;
    let metric = Metric::for_group(g).ok_or_else(|| {
        PlotError::NothingToPlot(format!("task `{}` has no quality number to plot", g.task()))
    })?;
    let exact = g.exact();
    if exact.and_then(|e| e.cost.attention_s).is_none() {
        return Err(PlotError::NothingToPlot(format!(
            "`{key}`: no successful exact row with an attention time (no speed-ups)"
        )));
    }
    let mut points = Vec::new();
    let mut missing = Vec::new();
    let mut failed = Vec::new();
    let mut i = 0;
    for r in &g.rows {
        if r.status != "ok" {
            failed.push((r.method.clone(), super::status_word(&r.status)));
            continue;
        }
        let is_exact = r.method == "exact";
        let (colour, shape) = if is_exact { (BLACK, Shape::Diamond) } else { style_of(i) };
        if !is_exact {
            i += 1;
        }
        match (speedup(r, exact), metric.value(r, exact)) {
            (Some(x), Some(y)) if x.is_finite() && y.is_finite() => points.push(Point {
                method: r.method.clone(),
                x,
                y,
                exact: is_exact,
                colour,
                shape,
            }),
            (x, _) => missing.push((
                r.method.clone(),
                if x.is_none() { "no attention time" } else { "no quality number" },
            )),
        }
    }
    if points.is_empty() {
        return Err(PlotError::NothingToPlot(format!(
            "`{key}`: no method has both a speed-up and a quality number"
        )));
    }
    super::font::ensure()?;
    let title = format!("{} · {}", g.task(), g.subtitle());
    draw(path, &title, metric, &points, &missing, &failed).map_err(draw_err(path))
}

fn draw(
    path: &Path,
    subtitle: &str,
    metric: Metric,
    points: &[Point],
    missing: &[(String, &str)],
    failed: &[(String, &'static str)],
) -> DrawResult<()> {
    let root = BitMapBackend::new(path, (1100, 720)).into_drawing_area();
    root.fill(&WHITE)?;
    let body = header(&root, "Quality vs attention speed-up", subtitle)?;
    let (chart_area, legend_area) = body.split_horizontally(790);

    let xv: Vec<f64> = points.iter().map(|p| p.x).collect();
    let yv: Vec<f64> = points.iter().map(|p| p.y).collect();
    let (xmin, xmax) = xv.iter().fold((f64::INFINITY, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
    let log_x = xmax / xmin.max(f64::MIN_POSITIVE) > 10.0;
    let xs = Axis::fit(&xv, &[1.0], log_x, "×");
    // The perplexity ratio goes on a logarithmic axis when it spans more than a factor of 10
    // (a diverged method would otherwise squash every usable one onto the exact line).
    let (ymin, ymax) = yv.iter().fold((f64::INFINITY, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
    let log_y = metric == Metric::PplRatio && ymax / ymin.max(f64::MIN_POSITIVE) > 10.0;
    let ys = if metric == Metric::PplRatio {
        Axis::fit(&yv, &[1.0], log_y, "×")
    } else {
        Axis::fit(&yv, &[], false, "")
    };

    let mut chart = ChartBuilder::on(&chart_area)
        .margin_left(12)
        .margin_right(28)
        .margin_top(8)
        .margin_bottom(8)
        .x_label_area_size(58)
        .y_label_area_size(84)
        .build_cartesian_2d(xs.range(), ys.range())?;
    let x_title = if log_x {
        "attention speed-up vs exact (log scale; higher is faster)"
    } else {
        "attention speed-up vs exact (higher is faster)"
    };
    let xf = |v: &f64| xs.label(*v);
    let yf = |v: &f64| ys.label(*v);
    chart
        .configure_mesh()
        .x_desc(x_title)
        .y_desc(if log_y {
            "perplexity ÷ exact perplexity (log scale; lower is better)"
        } else {
            metric.axis_title()
        })
        .axis_desc_style(text(17, BLACK))
        .label_style(text(15, BLACK))
        .x_label_formatter(&xf)
        .y_label_formatter(&yf)
        .bold_line_style(RGBColor(232, 232, 232))
        .light_line_style(TRANSPARENT)
        .axis_style(GREY)
        .draw()?;

    // Reference lines through the exact point: speed-up 1 and exact's quality.
    let dash = LIGHT.stroke_width(2);
    chart.draw_series(DashedLineSeries::new(
        [(xs.map(1.0), ys.lo), (xs.map(1.0), ys.hi)],
        8,
        6,
        dash,
    ))?;
    if let Some(e) = points.iter().find(|p| p.exact) {
        let y = ys.map(e.y);
        chart.draw_series(DashedLineSeries::new([(xs.lo, y), (xs.hi, y)], 8, 6, dash))?;
    }

    let (px, py) = chart.plotting_area().get_pixel_range();
    let bounds: Rect = [px.start + 2, py.start + 2, px.end - 2, py.end - 2];
    let coords: Vec<(i32, i32)> =
        points.iter().map(|p| chart.backend_coord(&(xs.map(p.x), ys.map(p.y)))).collect();
    // Markers first (exact on top), so that labels can avoid all of them.
    let mut taken: Vec<Rect> = coords.iter().map(|&(x, y)| [x - 8, y - 8, x + 8, y + 8]).collect();
    for (p, &c) in points.iter().zip(&coords).filter(|(p, _)| !p.exact) {
        super::marker(&root, c, 6, p.shape, p.colour)?;
    }
    for (p, &c) in points.iter().zip(&coords).filter(|(p, _)| p.exact) {
        marker(&root, c, 7, p.shape, p.colour)?;
    }
    let label_style = text(14, BLACK);
    for (p, &c) in points.iter().zip(&coords) {
        let name = ellipsize(&p.method, 32);
        let (w, h) = root.estimate_text_size(&name, &label_style)?;
        let (w, h) = (w as i32 + 4, h as i32 + 6);
        let (r, far) = place_label(c, w, h, &taken, &bounds);
        if far {
            // A leader line from the marker to the nearest point of the label's box.
            let end = (c.0.clamp(r[0], r[2]), c.1.clamp(r[1], r[3]));
            root.draw(&PathElement::new(vec![c, end], GREY.stroke_width(1)))?;
        }
        let colour = if p.exact { BLACK } else { darker(p.colour) };
        let st = anchored(
            if p.exact { bold(14, colour) } else { text(14, colour) },
            HPos::Left,
            VPos::Top,
        );
        root.draw(&Text::new(name, (r[0] + 2, r[1] + 3), st))?;
        taken.push(r);
    }

    legend(&legend_area, metric, points, missing, failed)?;
    root.present()?;
    Ok(())
}

/// A darker shade of a palette colour, for text on white.
pub(super) fn darker(c: RGBColor) -> RGBColor {
    RGBColor(
        (f64::from(c.0) * 0.72) as u8,
        (f64::from(c.1) * 0.72) as u8,
        (f64::from(c.2) * 0.72) as u8,
    )
}

fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    metric: Metric,
    points: &[Point],
    missing: &[(String, &str)],
    failed: &[(String, &'static str)],
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let x0 = super::LEGEND_X;
    let mut y = super::legend_title(area)?;
    let extra =
        missing.len() + failed.len() + usize::from(!missing.is_empty() || !failed.is_empty());
    let lines = points.len() * 2 + extra;
    let two_lines = (lines as i32) * 19 <= h - y - 10;
    let per = if two_lines { 38 } else { 20 };
    let room = ((h - y - 10) / per).max(1) as usize;
    let name_style = text(14, BLACK);
    let value_style = text(13, GREY);
    let shown =
        if points.len() + extra > room && !two_lines { room.saturating_sub(1) } else { room };
    for (k, p) in points.iter().enumerate() {
        if k >= shown {
            let more = format!("… and {} more", points.len() - k);
            area.draw(&Text::new(more, (x0, y), anchored(text(13, GREY), HPos::Left, VPos::Top)))?;
            return Ok(());
        }
        marker(area, (x0 + 7, y + 9), if p.exact { 6 } else { 5 }, p.shape, p.colour)?;
        let values = format!("{} · {}", fmt_speedup(p.x), metric.short(p.y));
        if two_lines {
            let name = fit_text(area, &p.method, &name_style, (w - x0 - 30) as u32);
            area.draw(&Text::new(
                name,
                (x0 + 22, y),
                anchored(name_style.clone(), HPos::Left, VPos::Top),
            ))?;
            area.draw(&Text::new(
                values,
                (x0 + 22, y + 18),
                anchored(value_style.clone(), HPos::Left, VPos::Top),
            ))?;
        } else {
            let line = fit_text(
                area,
                &format!("{}  {values}", p.method),
                &value_style,
                (w - x0 - 30) as u32,
            );
            area.draw(&Text::new(
                line,
                (x0 + 22, y + 1),
                anchored(text(13, BLACK), HPos::Left, VPos::Top),
            ))?;
        }
        y += per;
    }
    if extra > 0 {
        y += 6;
        for (m, why) in missing {
            if y > h - 40 {
                break;
            }
            let name = fit_text(area, m, &value_style, (w - x0 - 10) as u32);
            area.draw(&Text::new(
                name,
                (x0, y),
                anchored(value_style.clone(), HPos::Left, VPos::Top),
            ))?;
            let why = format!("not plotted: {why}");
            area.draw(&Text::new(
                why,
                (x0 + 12, y + 17),
                anchored(value_style.clone(), HPos::Left, VPos::Top),
            ))?;
            y += 38;
        }
        super::legend_failed(area, failed, y)?;
    }
    Ok(())
}

fn fmt_speedup(x: f64) -> String {
    format!("{}×", crate::report::num(Some(x), 3))
}

#[cfg(test)]
mod tests {
    use super::Metric;

    #[test]
    fn perplexity_ratio_labels_read_as_percent_change() {
        // The axis carries ppl / ppl_exact; the side panel still says the change in percent.
        assert_eq!(Metric::PplRatio.short(1.075), "Δppl +7.50 %");
        assert_eq!(Metric::PplRatio.short(1.0), "Δppl 0 %");
        assert_eq!(Metric::PplRatio.short(0.99), "Δppl -1.00 %");
    }

    #[test]
    fn rows_without_a_point_are_listed_as_na_or_failed() {
        // A method not defined for the problem is not a failure (the tables say n/a too).
        assert_eq!(super::super::status_word(crate::schema::NOT_APPLICABLE), "n/a");
        assert_eq!(super::super::status_word("error"), "failed");
    }
}
