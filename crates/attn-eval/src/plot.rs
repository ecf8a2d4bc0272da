//! PNG plots of the eval (quality vs attention speed-up per comparison; loss by position).
//! Until the plotting module lands, no plots are drawn: `all` returns an empty list.

use std::path::{Path, PathBuf};

use crate::schema::Row;

/// Every plot the rows support; the files written.
///
/// # Errors
/// Never in this version.
pub fn all(_rows: &[Row], _out: &Path) -> Result<Vec<PathBuf>, String> {
    Ok(Vec::new())
}
