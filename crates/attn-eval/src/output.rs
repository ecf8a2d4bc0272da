//! Writes what an eval leaves in `--out`: `report.md` and the PNG plots (`results.jsonl` is
//! appended row by row while the eval runs).

use std::path::PathBuf;

use crate::run::EvalConfig;
use crate::schema::Row;
use crate::EvalError;

/// Writes `report.md` and every plot the rows support; returns the files written.
///
/// # Errors
/// [`EvalError::Io`] for the report; plot failures are reported on stderr and skipped (a missing
/// font must not lose the numbers).
pub fn write_outputs(cfg: &EvalConfig, rows: &[Row]) -> Result<Vec<PathBuf>, EvalError> {
    let mut files = vec![cfg.out.join("results.jsonl")];
    let meta = crate::report::ReportMeta::collect(&cfg.command, cfg.threads, cfg.seed);
    let md = crate::report::render(rows, &meta);
    let path = cfg.out.join("report.md");
    std::fs::write(&path, md).map_err(|e| EvalError::Io { path: path.clone(), source: e })?;
    files.push(path);
    match crate::plot::all(rows, &cfg.out) {
        Ok(p) => files.extend(p),
        Err(e) => eprintln!("warning: plots not written: {e}"),
    }
    Ok(files)
}
