//! `wave`: the users' command line (SPEC 7). Parses the command and hands over to the
//! library; each subcommand's logic lives in its own module of the crate.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use wave_agent::error_chain::ErrorChain;
use wave_agent::report::ReportArgs;

/// `wave`: look at and control wave tests.
#[derive(Debug, Parser)]
#[command(name = "wave", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One report of a whole test from its results (every pod's summary and load metrics).
    Report(Box<ReportArgs>),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("wave: {}", ErrorChain(err.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("failed to start the async runtime")?;
    match cli.command {
        Command::Report(args) => Ok(runtime.block_on(wave_agent::report::run(&args))?),
    }
}
