//! Loss by position in the window: one line per method over the position buckets of
//! `quality.loss_by_position`, and below it each method's difference to the exact run, where
//! damage to long-range attention shows as a rise towards the end of the window.

use std::collections::BTreeMap;
use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::axis::Axis;
use super::pareto::darker;
use super::{
    anchored, bold, draw_err, fit_text, header, marker, style_of, text, DrawResult, PlotError,
    Shape, GREY,
};
use crate::report::groups;
use crate::schema::Row;

struct Line {
    label: String,
    /// Other methods of the same comparison drawn as this line: `"= name"` (the same curve, bit
    /// for bit) or `"≈ name"` (within [`SAME_NATS`] in every bucket).
    same: Vec<String>,
    colour: RGBColor,
    shape: Shape,
    exact: bool,
    /// (bucket middle, mean loss); NaN breaks the line.
    loss: Vec<(f64, f64)>,
    /// (bucket middle, loss − exact loss).
    delta: Vec<(f64, f64)>,
}

/// Two curves closer than this in every bucket (nats) are drawn as one line with both names:
/// on the chart they could not be told apart anyway (e.g. an implementation and its recurrent
/// or reference twin, or `sdpa-flash` and exact).
const SAME_NATS: f64 = 1e-3;

/// `"="` when `a` and `b` are the same curve bit for bit, `"≈"` when every bucket is within
/// [`SAME_NATS`], `None` otherwise (NaN buckets must coincide).
fn same_curve(a: &[(f64, f64)], b: &[(f64, f64)]) -> Option<&'static str> {
    if a.len() != b.len() || a.iter().zip(b).any(|(p, q)| p.0 != q.0) {
        return None;
    }
    if a.iter().zip(b).all(|(p, q)| p.1.to_bits() == q.1.to_bits()) {
        return Some("=");
    }
    let close = |x: f64, y: f64| {
        (x.is_finite() && y.is_finite() && (x - y).abs() <= SAME_NATS)
            || (!x.is_finite() && !y.is_finite())
    };
    a.iter().zip(b).all(|(p, q)| close(p.1, q.1)).then_some("≈")
}

/// Consecutive finite runs of `pts` (a NaN or infinity breaks the line).
fn runs(pts: &[(f64, f64)]) -> Vec<Vec<(f64, f64)>> {
    let mut out = vec![Vec::new()];
    for &(x, y) in pts {
        if y.is_finite() {
            if let Some(last) = out.last_mut() {
                last.push((x, y));
            }
        } else if out.last().is_some_and(|l| !l.is_empty()) {
            out.push(Vec::new());
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// Mean loss per position bucket of every successful row of `rows` that has buckets, written to
/// `path` as an 1100 × 760 PNG: the top panel shows the loss, the bottom one the difference to
/// the exact row of the same comparison (when there is one). `rows` is normally one
/// comparison; rows of several comparisons are labelled with theirs.
///
/// # Errors
/// [`PlotError::NothingToPlot`] when no row has a finite bucket; font and drawing errors.
pub fn loss_by_position(rows: &[Row], path: &Path) -> Result<(), PlotError> {
    let gs = groups(rows);
    let several = gs.len() > 1;
    let mut lines = Vec::new();
    let mut failed = Vec::new();
    for g in &gs {
        let exact = g.exact();
        let exact_buckets: BTreeMap<(usize, usize), f64> = exact
            .map(|e| e.quality.loss_by_position.iter().map(|&(a, b, l)| ((a, b), l)).collect())
            .unwrap_or_default();
        let mut i = 0;
        let first = lines.len(); // this comparison's lines start here
        for r in &g.rows {
            if r.status != "ok" {
                failed.push((r.method.clone(), super::status_word(&r.status)));
                continue;
            }
            let is_exact = r.method == "exact";
            let b = &r.quality.loss_by_position;
            if !b.iter().any(|x| x.2.is_finite()) {
                continue;
            }
            let mid = |a: usize, e: usize| (a as f64 + e as f64) / 2.0;
            let loss: Vec<(f64, f64)> = b.iter().map(|&(a, e, l)| (mid(a, e), l)).collect();
            // A curve the chart already has (same comparison): one line, both names. Exact
            // always keeps its own (black) line, whatever order the rows come in.
            let twin = lines[first..]
                .iter_mut()
                .filter(|_| !is_exact)
                .find_map(|l: &mut Line| same_curve(&l.loss, &loss).map(|how| (l, how)));
            if let Some((l, how)) = twin {
                l.same.push(format!("{how} {}", r.method));
                continue;
            }
            let (colour, shape) = if is_exact { (BLACK, Shape::Diamond) } else { style_of(i) };
            if !is_exact {
                i += 1;
            }
            let delta = if is_exact {
                Vec::new()
            } else {
                b.iter()
                    .filter_map(|&(a, e, l)| exact_buckets.get(&(a, e)).map(|x| (mid(a, e), l - x)))
                    .collect()
            };
            let label =
                if several { format!("{} ({})", r.method, g.subtitle()) } else { r.method.clone() };
            lines.push(Line {
                label,
                same: Vec::new(),
                colour,
                shape,
                exact: is_exact,
                loss,
                delta,
            });
        }
    }
    if lines.is_empty() {
        return Err(PlotError::NothingToPlot("no row has loss by position".into()));
    }
    super::font::ensure()?;
    let subtitle = match gs.as_slice() {
        [g] => format!("{} · {}", g.task(), g.subtitle()),
        _ => format!("{} comparisons", gs.len()),
    };
    draw(path, &subtitle, &lines, &failed).map_err(draw_err(path))
}

fn draw(
    path: &Path,
    subtitle: &str,
    lines: &[Line],
    failed: &[(String, &'static str)],
) -> DrawResult<()> {
    let root = BitMapBackend::new(path, (1100, 760)).into_drawing_area();
    root.fill(&WHITE)?;
    let body = header(&root, "Loss by position in the window", subtitle)?;
    let (plots, legend_area) = body.split_horizontally(790);
    let has_delta = lines.iter().any(|l| l.delta.iter().any(|d| d.1.is_finite()));
    let (top, bottom) = if has_delta {
        let (_, h) = plots.dim_in_pixel();
        let (t, b) = plots.split_vertically(h * 56 / 100);
        (t, Some(b))
    } else {
        (plots, None)
    };

    let xv: Vec<f64> = lines.iter().flat_map(|l| l.loss.iter().map(|p| p.0)).collect();
    let xs = Axis::fit(&xv, &[], false, "");
    let yv: Vec<f64> = lines.iter().flat_map(|l| l.loss.iter().map(|p| p.1)).collect();
    let ys = Axis::fit(&yv, &[], false, "");
    // Markers (the shapes tell methods apart once the colours repeat) on at most ~24 points.
    let stride = lines.iter().map(|l| l.loss.len()).max().unwrap_or(0).div_ceil(24).max(1);

    let xf = |v: &f64| xs.label(*v);
    {
        let mut chart = ChartBuilder::on(&top)
            .margin_left(12)
            .margin_right(28)
            .margin_top(6)
            .margin_bottom(4)
            .x_label_area_size(if has_delta { 34 } else { 58 })
            .y_label_area_size(84)
            .build_cartesian_2d(xs.range(), ys.range())?;
        let yf = |v: &f64| ys.label(*v);
        let mut mesh = chart.configure_mesh();
        mesh.y_desc("mean loss, nats")
            .axis_desc_style(text(17, BLACK))
            .label_style(text(15, BLACK))
            .x_label_formatter(&xf)
            .y_label_formatter(&yf)
            .bold_line_style(RGBColor(232, 232, 232))
            .light_line_style(TRANSPARENT)
            .axis_style(GREY);
        if !has_delta {
            mesh.x_desc("position in the window (middle of the bucket), tokens");
        }
        mesh.draw()?;
        // Methods first, exact last and thickest, so that it stays visible when they coincide.
        for l in lines.iter().filter(|l| !l.exact).chain(lines.iter().filter(|l| l.exact)) {
            let width = if l.exact { 3 } else { 2 };
            for run in runs(&l.loss) {
                chart.draw_series(LineSeries::new(run.clone(), l.colour.stroke_width(width)))?;
                for p in run.iter().step_by(stride) {
                    marker(&root, chart.backend_coord(p), 3, l.shape, l.colour)?;
                }
            }
        }
    }
    if let Some(bottom) = bottom {
        let dv: Vec<f64> = lines.iter().flat_map(|l| l.delta.iter().map(|p| p.1)).collect();
        let ds = Axis::fit(&dv, &[0.0], false, "");
        let mut chart = ChartBuilder::on(&bottom)
            .margin_left(12)
            .margin_right(28)
            .margin_top(10)
            .margin_bottom(8)
            .x_label_area_size(58)
            .y_label_area_size(84)
            .build_cartesian_2d(xs.range(), ds.range())?;
        let yf = |v: &f64| ds.label(*v);
        chart
            .configure_mesh()
            .x_desc("position in the window (middle of the bucket), tokens")
            .y_desc("loss − exact loss, nats")
            .axis_desc_style(text(17, BLACK))
            .label_style(text(15, BLACK))
            .x_label_formatter(&xf)
            .y_label_formatter(&yf)
            .bold_line_style(RGBColor(232, 232, 232))
            .light_line_style(TRANSPARENT)
            .axis_style(GREY)
            .draw()?;
        chart.draw_series(LineSeries::new([(xs.lo, 0.0), (xs.hi, 0.0)], BLACK.stroke_width(2)))?;
        for l in lines.iter().filter(|l| !l.exact) {
            for run in runs(&l.delta) {
                chart.draw_series(LineSeries::new(run.clone(), l.colour.stroke_width(2)))?;
                for p in run.iter().step_by(stride) {
                    marker(&root, chart.backend_coord(p), 3, l.shape, l.colour)?;
                }
            }
        }
    }
    legend(&legend_area, lines, failed)?;
    root.present()?;
    Ok(())
}

fn legend<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    lines: &[Line],
    failed: &[(String, &'static str)],
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    let x0 = super::LEGEND_X;
    let mut y = super::legend_title(area)?;
    let style = text(14, BLACK);
    let total = lines.len() + failed.len();
    for (k, l) in lines.iter().enumerate() {
        if y + 18 * l.same.len() as i32 > h - 44 && k + 1 < total {
            let more = format!("… and {} more", lines.len() - k);
            area.draw(&Text::new(more, (x0, y), anchored(text(13, GREY), HPos::Left, VPos::Top)))?;
            return Ok(());
        }
        let width = if l.exact { 3 } else { 2 };
        area.draw(&PathElement::new(
            vec![(x0, y + 8), (x0 + 26, y + 8)],
            l.colour.stroke_width(width),
        ))?;
        marker(area, (x0 + 13, y + 8), 4, l.shape, l.colour)?;
        let colour = if l.exact { BLACK } else { darker(l.colour) };
        let st = anchored(
            if l.exact { bold(14, colour) } else { text(14, colour) },
            HPos::Left,
            VPos::Top,
        );
        let name = fit_text(area, &l.label, &style, (w - x0 - 44) as u32);
        area.draw(&Text::new(name, (x0 + 34, y), st.clone()))?;
        for other in &l.same {
            y += 18;
            let small = text(13, colour);
            let name = fit_text(area, other, &small, (w - x0 - 54) as u32);
            area.draw(&Text::new(name, (x0 + 44, y), anchored(small, HPos::Left, VPos::Top)))?;
        }
        y += 24;
    }
    y += 6;
    super::legend_failed(area, failed, y)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_within_a_thousandth_of_a_nat_are_one_line() {
        let a = [(1.0, 3.0), (2.0, f64::NAN), (3.0, 2.5)];
        assert_eq!(same_curve(&a, &a), Some("="));
        let b = [(1.0, 3.0005), (2.0, f64::NAN), (3.0, 2.4991)];
        assert_eq!(same_curve(&a, &b), Some("≈"));
        let c = [(1.0, 3.0), (2.0, f64::NAN), (3.0, 2.502)];
        assert_eq!(same_curve(&a, &c), None); // 2e-3 apart in one bucket
        let d = [(1.0, 3.0), (2.0, 3.0), (3.0, 2.5)];
        assert_eq!(same_curve(&a, &d), None); // a NaN bucket against a finite one
        let e = [(1.0, 3.0), (2.5, f64::NAN), (3.0, 2.5)];
        assert_eq!(same_curve(&a, &e), None); // other buckets
        assert_eq!(same_curve(&a, &a[..2]), None);
    }
}
