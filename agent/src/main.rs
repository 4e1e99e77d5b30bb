//! `wave-agent` entry point: parses the command line and hands over to the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use tokio::net::TcpListener;
use tracing_subscriber::EnvFilter;
use wave_agent::cli::{Cli, Command};
use wave_agent::error_chain::ErrorChain;
use wave_agent::logs::StdoutSink;
use wave_agent::shutdown::Shutdown;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("WAVE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    match run(cli) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("wave-agent: {}", ErrorChain(err.as_ref()));
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Install(args) => {
            let path = wave_agent::install::install(&args.dir)?;
            println!("installed {}", path.display());
            Ok(0)
        }
        Command::Run(args) => {
            // One worker thread: the supervisor's own work (log capture above all) stays
            // within one core and leaves the rest of the machine to the agents.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .context("failed to start the async runtime")?;
            let (stdout, writer) = StdoutSink::spawn(std::io::stdout());
            let outcome = runtime.block_on(async {
                let shutdown = Shutdown::default();
                shutdown.on_signals().context("failed to handle signals")?;
                let address = SocketAddr::new(args.metrics_address, args.metrics_port);
                let listener = TcpListener::bind(address).await.with_context(|| {
                    format!("failed to serve metrics on {address} (is WAVE_METRICS_PORT taken?)")
                })?;
                let outcome = wave_agent::run::run(*args, listener, shutdown, Some(stdout)).await?;
                Ok::<_, anyhow::Error>(outcome)
            });
            // Agent output still queued reaches stdout before the process exits.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            let _ = writer.join();
            Ok(outcome?.exit_code())
        }
    }
}
