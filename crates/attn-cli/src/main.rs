//! `attn`: list, check, benchmark and run the attention methods of the `attn` library.
//!
//! Flow: clap parses the command line into the raw structs of [`args`]; [`config`] turns them into
//! validated settings (shapes parsed, methods looked up, files named) before any work; each
//! subcommand in [`cmd`] runs from its config. Errors are `anyhow` with context naming the file,
//! shape or method at fault; nothing on a user's input path panics.

mod alloc;
mod args;
mod cmd;
mod config;
mod data;
mod real;
mod shape;
mod tensor_file;

use std::process::ExitCode;

use clap::Parser;

/// Counts heap bytes so that `attn bench` can report the peak allocation of a case exactly
/// (RSS alone misses memory the allocator reuses from earlier cases).
#[global_allocator]
static ALLOC: alloc::Counting = alloc::Counting;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS, // `attn list | head`
        Err(e) => {
            eprintln!("error: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

fn run(cli: args::Cli) -> anyhow::Result<()> {
    let rt = config::Runtime::from_args(&cli.common)?;
    rt.install_thread_pool()?;
    match cli.command {
        args::Command::List(a) => cmd::list::run(&config::ListConfig::from_args(&a)?, &rt),
        args::Command::Bench(a) => cmd::bench::run(&config::BenchConfig::from_args(&a)?, &rt),
        args::Command::Run(a) => cmd::run::run(&config::RunConfig::from_args(&a)?, &rt),
        args::Command::Check(a) => cmd::check::run(&config::CheckConfig::from_args(&a)?, &rt),
        args::Command::Eval(a) => cmd::eval::run(&a, &rt),
        args::Command::Fetch(a) => cmd::fetch::run(&a.names, a.all, a.list),
        args::Command::Embed(a) => cmd::models::embed(&a, &rt),
        args::Command::Perplexity(a) => cmd::models::perplexity(&a, &rt),
        args::Command::BenchModel(a) => cmd::models::bench_model(&a, &rt),
        args::Command::Plan(a) => cmd::plan::run(&a, &rt),
        args::Command::Capture(a) => cmd::plan::capture(&a, &rt),
        args::Command::Maps(a) => cmd::plan::maps(&a, &rt),
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .is_some_and(|j| j.io_error_kind() == Some(BrokenPipe))
    })
}
