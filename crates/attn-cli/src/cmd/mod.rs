//! One file per subcommand; each exposes `run(config, runtime)`.

pub mod bench;
pub mod check;
pub mod eval;
pub mod fetch;
pub mod list;
pub mod models;
pub mod plan;
pub mod run;
pub mod run_state;
