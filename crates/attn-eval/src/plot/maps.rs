//! Attention maps of a few heads beside what a method keeps of them: per head, the exact
//! probabilities (log colour scale) and the method's own probabilities on its support, with the
//! exact mass the method drops drawn in red.

use std::path::Path;

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, VPos};

use super::{anchored, draw_err, header, text, DrawResult, PlotError, GREY};

/// One head: its exact and its method's attention probabilities, both `[n, n]` row-major.
#[derive(Debug, Clone)]
pub struct MapPanel {
    /// `L5.H0 · vertical-slash:… · recall 0.93`.
    pub title: String,
    /// Sequence length (rows = columns).
    pub n: usize,
    /// Exact probabilities.
    pub exact: Vec<f32>,
    /// The method's probabilities (0 off its support).
    pub method: Vec<f32>,
}

/// Smallest probability drawn (log scale floor).
const FLOOR: f64 = 1e-5;
const PANEL: i32 = 360;

/// Writes one row per head (exact map | method map) to `path` as a PNG.
///
/// # Errors
/// [`PlotError::NothingToPlot`] for no panels or inconsistent sizes; font and drawing errors.
pub fn attention_maps(panels: &[MapPanel], title: &str, path: &Path) -> Result<(), PlotError> {
    if panels.is_empty()
        || panels
            .iter()
            .any(|p| p.n == 0 || p.exact.len() != p.n * p.n || p.method.len() != p.n * p.n)
    {
        return Err(PlotError::NothingToPlot(
            "attention maps: no panels, or sizes disagree".into(),
        ));
    }
    super::font::ensure()?;
    draw(panels, title, path).map_err(draw_err(path))
}

/// Pooled `px × px` image of an `n × n` map: the maximum of each cell.
fn pool(x: &[f32], n: usize, px: usize) -> Vec<f64> {
    let mut out = vec![0f64; px * px];
    for i in 0..n {
        let r = i * px / n;
        for j in 0..n {
            let c = j * px / n;
            let v = f64::from(x[i * n + j]);
            if v > out[r * px + c] {
                out[r * px + c] = v;
            }
        }
    }
    out
}

fn log_t(v: f64) -> f64 {
    ((v.max(FLOOR).log10() - FLOOR.log10()) / -FLOOR.log10()).clamp(0.0, 1.0)
}

fn draw(panels: &[MapPanel], title: &str, path: &Path) -> DrawResult<()> {
    let rows = panels.len() as u32;
    let (w, h) = (2 * PANEL as u32 + 110, 110 + rows * (PANEL as u32 + 46));
    let root = BitMapBackend::new(path, (w, h)).into_drawing_area();
    root.fill(&WHITE)?;
    let sub = "rows: queries, columns: keys · left: exact (log, 1e-5 … 1) · right: the method's; \
               red: exact mass it drops";
    let body = header(&root, title, sub)?;
    let x0 = 40;
    for (k, p) in panels.iter().enumerate() {
        let y0 = 20 + k as i32 * (PANEL + 46);
        body.draw(&Text::new(
            p.title.clone(),
            (x0, y0),
            anchored(text(15, BLACK), HPos::Left, VPos::Top),
        ))?;
        let top = y0 + 24;
        let px = (PANEL as usize).min(p.n.max(1));
        let cell = PANEL as f64 / px as f64;
        let ex = pool(&p.exact, p.n, px);
        let me = pool(&p.method, p.n, px);
        for r in 0..px {
            for c in 0..px {
                let (a0, b0) = ((c as f64 * cell) as i32, (r as f64 * cell) as i32);
                let (a1, b1) = (((c + 1) as f64 * cell) as i32, ((r + 1) as f64 * cell) as i32);
                let e = ex[r * px + c];
                let left = if e > 0.0 { ViridisRGB::get_color(log_t(e)) } else { WHITE };
                body.draw(&Rectangle::new(
                    [(x0 + a0, top + b0), (x0 + a1.max(a0 + 1), top + b1.max(b0 + 1))],
                    left.filled(),
                ))?;
                let m = me[r * px + c];
                let right = if m > 0.0 {
                    ViridisRGB::get_color(log_t(m))
                } else if e > FLOOR {
                    // Dropped exact mass: red, stronger for more mass.
                    let t = log_t(e);
                    RGBColor(255, (235.0 * (1.0 - t)) as u8, (235.0 * (1.0 - t)) as u8)
                } else {
                    WHITE
                };
                let xr = x0 + PANEL + 30;
                body.draw(&Rectangle::new(
                    [(xr + a0, top + b0), (xr + a1.max(a0 + 1), top + b1.max(b0 + 1))],
                    right.filled(),
                ))?;
            }
        }
        for xs in [x0, x0 + PANEL + 30] {
            body.draw(&Rectangle::new(
                [(xs, top), (xs + PANEL, top + PANEL)],
                GREY.stroke_width(1),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}
