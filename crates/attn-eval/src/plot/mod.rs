//! PNG plots of the eval, drawn with plotters' pure-Rust bitmap backend:
//!
//! - [`pareto`]: per comparison, each method's key quality number against its attention
//!   speed-up over exact;
//! - [`loss_by_position`]: per language-modelling comparison, the mean loss per position bucket
//!   of each method, and its difference to exact;
//! - [`head_heatmap`]: per attention-fidelity row, the (layer × head) grid of relative errors.
//!
//! [`all`] draws every plot the rows support into `OUT/plots/`; [`planned`] names them without
//! drawing (the report links them). Text is rendered with a TrueType font found at run time
//! ([`find_font`]); without one the plots fail with [`PlotError::NoFont`], never a panic.

mod axis;
mod font;
mod heatmap;
mod loss;
mod maps;
mod pareto;

use std::path::{Path, PathBuf};

pub use font::{find_font, FONT_CANDIDATES, FONT_ENV};
pub use heatmap::head_heatmap;
pub use loss::loss_by_position;
pub use maps::{attention_maps, MapPanel};
pub use pareto::pareto;

use crate::report::{groups, Group};
use crate::schema::Row;

/// Why a plot was not drawn.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    /// No TrueType font was found to render text with.
    #[error(
        "no TrueType font for the plots (looked for {searched}); install the DejaVu fonts \
         (Debian/Ubuntu: `apt install fonts-dejavu-core`, Fedora: `dnf install dejavu-sans-fonts`, \
         Arch: `pacman -S ttf-dejavu`, Alpine: `apk add font-dejavu`) or set {FONT_ENV} to a .ttf file"
    )]
    NoFont {
        /// The paths tried, `, `-separated.
        searched: String,
    },
    /// A font file exists but could not be read or parsed.
    #[error("{}: not a usable TrueType font ({detail})", path.display())]
    BadFont {
        /// The font file.
        path: PathBuf,
        /// What went wrong.
        detail: String,
    },
    /// Creating the output folder failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The rows hold nothing this plot can show.
    #[error("nothing to plot: {0}")]
    NothingToPlot(String),
    /// The drawing backend failed (writing or encoding the PNG included).
    #[error("drawing {}: {detail}", path.display())]
    Draw {
        /// The PNG being drawn.
        path: PathBuf,
        /// The backend's error.
        detail: String,
    },
}

/// What went wrong inside a drawing routine, turned into [`PlotError::Draw`] with the path.
type DrawResult<T> = Result<T, Box<dyn std::error::Error>>;

fn draw_err(path: &Path) -> impl FnOnce(Box<dyn std::error::Error>) -> PlotError + '_ {
    move |e| PlotError::Draw { path: path.to_path_buf(), detail: e.to_string() }
}

/// The kinds of plot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PlotKind {
    /// Quality vs attention speed-up of one comparison.
    Pareto,
    /// Loss by position bucket of one language-modelling comparison.
    LossByPosition,
    /// Per-head error grid of one attention-fidelity row.
    HeadHeatmap,
}

impl PlotKind {
    /// A short description (the image's alt text in the report).
    pub fn describe(self) -> &'static str {
        match self {
            Self::Pareto => "quality vs attention speed-up",
            Self::LossByPosition => "loss by position",
            Self::HeadHeatmap => "per-head attention output error",
        }
    }
}

/// A plot the rows support, not yet drawn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedPlot {
    /// What it shows.
    pub kind: PlotKind,
    /// The comparison ([`Row::key`]).
    pub key: String,
    /// The method, for per-row plots ([`PlotKind::HeadHeatmap`]).
    pub method: Option<String>,
    /// The file name inside the plots folder.
    pub file: String,
}

/// The plots folder inside the output folder.
pub const PLOTS_DIR: &str = "plots";

impl PlannedPlot {
    /// The path relative to the output folder (`plots/FILE`), as the report links it.
    pub fn relative_path(&self) -> String {
        format!("{PLOTS_DIR}/{}", self.file)
    }
}

/// `s` reduced to `[a-z0-9._-]`, other runs of characters turned into one `-`.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() || c == '.' || c == '_' {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

/// FNV-1a of `s`, for file names that must stay unique after shortening.
fn short_hash(s: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{:08x}", h >> 32)
}

fn file_name(kind: &str, r: &Row, method: Option<&str>) -> String {
    let setting: String = r
        .setting
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => format!("{k}{s}"),
            other => format!("{k}{other}"),
        })
        .collect::<Vec<_>>()
        .join("-");
    let mut parts = vec![kind.to_string(), r.task.clone(), r.model.clone(), r.dataset.clone()];
    if !setting.is_empty() {
        parts.push(setting);
    }
    if let Some(m) = method {
        parts.push(m.to_string());
    }
    let mut name = slug(&parts.join("-"));
    if name.len() > 100 {
        // Shortened names keep a hash of the whole description to stay distinct.
        name.truncate(90);
        name = format!("{}-{}", name.trim_end_matches('-'), short_hash(&parts.join("|")));
    }
    format!("{name}.png")
}

/// Usable (speed-up, quality) points of a comparison (see [`pareto`]).
fn pareto_points(g: &Group<'_>) -> usize {
    let Some(metric) = pareto::Metric::for_group(g) else { return 0 };
    g.rows
        .iter()
        .filter(|r| r.status == "ok")
        .filter(|r| {
            let x = crate::report::speedup(r, g.exact());
            let y = metric.value(r, g.exact());
            x.is_some_and(f64::is_finite) && y.is_some_and(f64::is_finite)
        })
        .count()
}

fn has_loss(r: &Row) -> bool {
    r.status == "ok" && r.quality.loss_by_position.iter().any(|b| b.2.is_finite())
}

/// The plots one comparison supports: a Pareto plot when at least two methods (exact included)
/// have a speed-up and a quality number; for `lm`, loss by position when a row has buckets; for
/// `fidelity`, a heat-map per successful non-exact row with per-head errors.
pub fn planned_for_group(g: &Group<'_>) -> Vec<PlannedPlot> {
    let Some(first) = g.rows.first() else { return Vec::new() };
    let mut v = Vec::new();
    if pareto_points(g) >= 2 {
        v.push(PlannedPlot {
            kind: PlotKind::Pareto,
            key: g.key.clone(),
            method: None,
            file: file_name("pareto", first, None),
        });
    }
    if g.rows.iter().any(|r| has_loss(r)) {
        v.push(PlannedPlot {
            kind: PlotKind::LossByPosition,
            key: g.key.clone(),
            method: None,
            file: file_name("loss", first, None),
        });
    }
    for r in &g.rows {
        if r.status == "ok"
            && r.method != "exact"
            && r.quality.head_error.iter().flatten().any(|v| v.is_finite())
        {
            v.push(PlannedPlot {
                kind: PlotKind::HeadHeatmap,
                key: g.key.clone(),
                method: Some(r.method.clone()),
                file: file_name("heads", r, Some(&r.method)),
            });
        }
    }
    v
}

/// Every plot the rows support (see [`planned_for_group`]), in report order.
pub fn planned(rows: &[Row]) -> Vec<PlannedPlot> {
    let mut v: Vec<PlannedPlot> = groups(rows).iter().flat_map(planned_for_group).collect();
    // Distinct comparisons can slug to the same name: number the later ones.
    let mut seen = std::collections::BTreeSet::new();
    for p in &mut v {
        let stem = p.file.trim_end_matches(".png").to_string();
        let mut i = 2;
        while !seen.insert(p.file.clone()) {
            p.file = format!("{stem}-{i}.png");
            i += 1;
        }
    }
    v
}

/// Draws every plot the rows support into `out_dir/plots/`; returns the files written.
///
/// # Errors
/// [`PlotError::NoFont`] when no font is found (before anything is drawn), [`PlotError::Io`]
/// when the folder cannot be made, [`PlotError::Draw`] when a PNG cannot be written.
pub fn all(rows: &[Row], out_dir: &Path) -> Result<Vec<PathBuf>, PlotError> {
    let plans = planned(rows);
    if plans.is_empty() {
        return Ok(Vec::new());
    }
    font::ensure()?;
    let dir = out_dir.join(PLOTS_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| PlotError::Io { path: dir.clone(), source: e })?;
    let mut files = Vec::new();
    for p in plans {
        let path = dir.join(&p.file);
        let group: Vec<Row> = rows.iter().filter(|r| r.key() == p.key).cloned().collect();
        match p.kind {
            PlotKind::Pareto => pareto(&group, &p.key, &path)?,
            PlotKind::LossByPosition => loss_by_position(&group, &path)?,
            PlotKind::HeadHeatmap => {
                // The last row of that method wins, as in the report.
                let Some(r) = group
                    .iter()
                    .rev()
                    .find(|r| Some(&r.method) == p.method.as_ref() && r.status == "ok")
                else {
                    continue;
                };
                head_heatmap(r, &path)?;
            }
        }
        files.push(path);
    }
    Ok(files)
}

// ------------------------------------------------------------------------------------------
// Shared drawing helpers
// ------------------------------------------------------------------------------------------

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Colours of the methods (exact is black): a qualitative palette that stays apart on white.
const PALETTE: [RGBColor; 9] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// Dark grey for secondary text.
const GREY: RGBColor = RGBColor(90, 90, 90);
/// Light grey for reference lines.
const LIGHT: RGBColor = RGBColor(200, 200, 200);
/// Dark red for failures.
const FAIL: RGBColor = RGBColor(170, 30, 30);

/// Colour and marker shape of the `i`-th non-exact method.
fn style_of(i: usize) -> (RGBColor, Shape) {
    let shapes = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Diamond];
    (PALETTE[i % PALETTE.len()], shapes[(i / PALETTE.len()) % shapes.len()])
}

/// Marker shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Circle,
    Square,
    Triangle,
    Diamond,
}

/// Draws a filled marker with a dark outline at pixel `c` on `area`.
fn marker<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    c: (i32, i32),
    r: i32,
    shape: Shape,
    colour: RGBColor,
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    let (x, y) = c;
    let outline = RGBColor(30, 30, 30);
    match shape {
        Shape::Circle => {
            area.draw(&Circle::new(c, r, colour.filled()))?;
            area.draw(&Circle::new(c, r, outline.stroke_width(1)))?;
        }
        Shape::Square => {
            let pts = [(x - r, y - r), (x + r, y + r)];
            area.draw(&Rectangle::new(pts, colour.filled()))?;
            area.draw(&Rectangle::new(pts, outline.stroke_width(1)))?;
        }
        Shape::Triangle | Shape::Diamond => {
            let pts: Vec<(i32, i32)> = if shape == Shape::Triangle {
                vec![(x, y - r - 1), (x + r + 1, y + r), (x - r - 1, y + r)]
            } else {
                let r = r + 2;
                vec![(x, y - r), (x + r, y), (x, y + r), (x - r, y)]
            };
            area.draw(&Polygon::new(pts.clone(), colour.filled()))?;
            let mut closed = pts.clone();
            closed.push(pts[0]);
            area.draw(&PathElement::new(closed, outline.stroke_width(1)))?;
        }
    }
    Ok(())
}

/// A text style of the registered font.
fn text(size: u32, colour: RGBColor) -> TextStyle<'static> {
    let mut s = TextStyle::from(("sans-serif", size).into_font());
    s.color = colour.to_backend_color();
    s
}

/// [`text`] in bold.
fn bold(size: u32, colour: RGBColor) -> TextStyle<'static> {
    let mut s = TextStyle::from(("sans-serif", size).into_font().style(FontStyle::Bold));
    s.color = colour.to_backend_color();
    s
}

/// [`text`] anchored at `h`/`v`.
fn anchored(style: TextStyle<'static>, h: HPos, v: VPos) -> TextStyle<'static> {
    style.pos(Pos::new(h, v))
}

/// Shortens `s` to `max` characters with `…`.
fn ellipsize(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Shortens `s` until it is at most `px` pixels wide in `style` on `area`.
fn fit_text<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    s: &str,
    style: &TextStyle<'_>,
    px: u32,
) -> String {
    let mut n = s.chars().count();
    let mut t = s.to_string();
    while n > 4 {
        match area.estimate_text_size(&t, style) {
            Ok((w, _)) if w <= px => return t,
            Err(_) => return t,
            _ => {}
        }
        n -= 1;
        t = ellipsize(s, n);
    }
    t
}

/// Title and subtitle across the top of `root`; returns the area below them.
fn header<DB: DrawingBackend>(
    root: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    subtitle: &str,
) -> DrawResult<DrawingArea<DB, plotters::coord::Shift>>
where
    DB::ErrorType: 'static,
{
    let (w, _) = root.dim_in_pixel();
    let t = anchored(bold(24, BLACK), HPos::Center, VPos::Top);
    let title = fit_text(root, title, &t, w.saturating_sub(40));
    root.draw(&Text::new(title, (w as i32 / 2, 14), t))?;
    let s = anchored(text(16, GREY), HPos::Center, VPos::Top);
    let subtitle = fit_text(root, subtitle, &s, w.saturating_sub(40));
    root.draw(&Text::new(subtitle, (w as i32 / 2, 46), s))?;
    let (_, rest) = root.split_vertically(76);
    Ok(rest)
}

/// The legend's left margin and its "methods" title; returns the first free row below it.
fn legend_title<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
) -> DrawResult<i32>
where
    DB::ErrorType: 'static,
{
    area.draw(&Text::new(
        "methods",
        (LEGEND_X, 12),
        anchored(bold(16, BLACK), HPos::Left, VPos::Top),
    ))?;
    Ok(42)
}

/// Left margin of the legends.
const LEGEND_X: i32 = 14;

/// How a row that has no point is listed: `n/a` for a method not defined for the problem (its
/// mask, head size or layout; not a failure), `failed` for anything else.
fn status_word(status: &str) -> &'static str {
    if status == crate::schema::NOT_APPLICABLE {
        "n/a"
    } else {
        "failed"
    }
}

/// One "NAME: failed" line (red) or "NAME: n/a" line (grey) per method without a point, from
/// row `y` on, while they fit.
fn legend_failed<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    failed: &[(String, &'static str)],
    mut y: i32,
) -> DrawResult<()>
where
    DB::ErrorType: 'static,
{
    let (w, h) = area.dim_in_pixel();
    let (w, h) = (w as i32, h as i32);
    for (m, word) in failed {
        if y > h - 20 {
            break;
        }
        let colour = if *word == "failed" { FAIL } else { GREY };
        let st = anchored(text(13, colour), HPos::Left, VPos::Top);
        let line = fit_text(area, &format!("{m}: {word}"), &st, (w - LEGEND_X - 10) as u32);
        area.draw(&Text::new(line, (LEGEND_X, y), st))?;
        y += 20;
    }
    Ok(())
}
