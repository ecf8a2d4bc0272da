//! The font of the plots: a TrueType file found at run time (nothing is embedded), registered
//! with plotters once per process as `sans-serif` (regular, and bold when a bold sibling file
//! exists).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::style::FontStyle;

use super::PlotError;

/// Environment variable naming a `.ttf` file to use instead of the standard paths.
pub const FONT_ENV: &str = "ATTN_PLOT_FONT";

/// Where the regular font is looked for, in order (after [`FONT_ENV`]): DejaVu Sans in the
/// layouts of the common Linux distributions, then Liberation Sans, FreeSans and Arial.
pub const FONT_CANDIDATES: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/DejaVuSans.ttf",
    "/usr/local/share/fonts/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/liberation-sans/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
    "/Library/Fonts/Arial.ttf",
    "/System/Library/Fonts/Supplemental/Arial.ttf",
    "C:\\Windows\\Fonts\\arial.ttf",
];

/// The first readable file among `candidates`.
///
/// # Errors
/// [`PlotError::NoFont`] naming every path tried and the package to install.
pub fn find_font(candidates: &[PathBuf]) -> Result<PathBuf, PlotError> {
    candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| PlotError::NoFont {
        searched: candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "),
    })
}

/// The bold file next to a regular one, when there is one.
fn bold_sibling(regular: &Path) -> Option<PathBuf> {
    let name = regular.file_name()?.to_str()?;
    let bold = [
        ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf"),
        ("LiberationSans-Regular.ttf", "LiberationSans-Bold.ttf"),
        ("FreeSans.ttf", "FreeSansBold.ttf"),
        ("Arial.ttf", "Arial Bold.ttf"),
        ("arial.ttf", "arialbd.ttf"),
    ]
    .iter()
    .find(|(r, _)| *r == name)
    .map(|(_, b)| regular.with_file_name(b))?;
    bold.is_file().then_some(bold)
}

fn load(path: &Path, style: FontStyle) -> Result<(), PlotError> {
    let bytes = std::fs::read(path)
        .map_err(|e| PlotError::BadFont { path: path.to_path_buf(), detail: e.to_string() })?;
    // plotters keeps fonts for the life of the process and wants them `'static`: one leak of
    // each file, once per process (guarded by `FONT`).
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", style, bytes).map_err(|_| PlotError::BadFont {
        path: path.to_path_buf(),
        detail: "not a TrueType/OpenType font".into(),
    })
}

fn register() -> Result<PathBuf, PlotError> {
    let candidates: Vec<PathBuf> = match std::env::var_os(FONT_ENV) {
        Some(p) if !p.is_empty() => vec![PathBuf::from(p)],
        _ => FONT_CANDIDATES.iter().map(PathBuf::from).collect(),
    };
    let regular = find_font(&candidates)?;
    load(&regular, FontStyle::Normal)?;
    if let Some(b) = bold_sibling(&regular) {
        // A bold file that fails to load is not worth failing for: titles fall back to regular.
        let _ = load(&b, FontStyle::Bold);
    }
    Ok(regular)
}

/// The registration's outcome, kept for the process.
static FONT: OnceLock<Result<PathBuf, Failure>> = OnceLock::new();

/// A [`PlotError`] about fonts, in a form that can be kept and handed out again.
#[derive(Debug, Clone)]
enum Failure {
    NoFont(String),
    BadFont(PathBuf, String),
}

impl From<Failure> for PlotError {
    fn from(f: Failure) -> Self {
        match f {
            Failure::NoFont(searched) => PlotError::NoFont { searched },
            Failure::BadFont(path, detail) => PlotError::BadFont { path, detail },
        }
    }
}

/// Registers the font on first use; every later call returns the first call's outcome.
///
/// # Errors
/// [`PlotError::NoFont`] or [`PlotError::BadFont`].
pub(super) fn ensure() -> Result<PathBuf, PlotError> {
    FONT.get_or_init(|| {
        register().map_err(|e| match e {
            PlotError::NoFont { searched } => Failure::NoFont(searched),
            PlotError::BadFont { path, detail } => Failure::BadFont(path, detail),
            other => Failure::BadFont(PathBuf::new(), other.to_string()),
        })
    })
    .clone()
    .map_err(PlotError::from)
}
