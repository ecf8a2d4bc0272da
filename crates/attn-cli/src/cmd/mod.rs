//! One file per subcommand; each exposes `run(config, runtime)`.

pub mod bench;
pub mod check;
pub mod list;
pub mod run;
