//! # attn-eval — every attention method on real models and real text
//!
//! Runs the exact baseline and each method on the same tokens and reports what each costs in
//! quality and saves in time and memory.
//!
//! - [`run`]: the loop over tasks and methods (resumable), [`lm`] and [`embed`] the tasks;
//! - [`schema`]: one row of `results.jsonl`;
//! - [`report`] and [`plot`]: `report.md` and the PNG plots from the rows;
//! - [`search`]: the offline per-head plan search behind `attn plan`;
//! - [`needle`]: the retrieval task (method prefill, exact greedy decode, exact match);
//! - [`retrieval`]: passkey and RULER-style needle tasks, generated deterministically by seed.

#![deny(missing_docs)]

pub mod embed;
pub mod fidelity;
pub mod lm;
pub mod needle;
pub mod output;
pub mod plot;
pub mod report;
pub mod retrieval;
pub mod run;
pub mod schema;
pub mod search;

use std::path::PathBuf;

/// What can stop an eval (a failing *method* does not: it becomes a `failed` row).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// Loading a model or data set, or running the exact baseline, failed.
    #[error(transparent)]
    Model(#[from] attn_models::ModelError),
    /// Reading or writing an output file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Inputs that cannot be evaluated (too few tokens, a corrupt results file).
    #[error("{0}")]
    Data(String),
    /// Writing the report or the plots failed.
    #[error("report: {0}")]
    Report(String),
}
