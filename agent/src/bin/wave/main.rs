//! `wave`: the users' command line (docs/report.md). Parses the command and hands over to the
//! library; each subcommand's logic lives in its own module of the crate.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use wave_agent::error_chain::ErrorChain;
use wave_agent::report::ReportArgs;
use wave_agent::slots::Part;
use wave_agent::status;

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
    /// Machines claimed / ready / running / completed of every part of a test, from the
    /// slot Leases and the pods.
    Status(StatusArgs),
    /// Stop a test part: every supervisor stops its agents, uploads and stays up.
    Stop(StopArgs),
}

/// Where the test runs (the Kubernetes API from KUBECONFIG or the in-cluster account).
#[derive(Debug, Args)]
struct Target {
    /// The test id (the `testId` label before `--`).
    test_id: String,
    /// Namespace of the test pods; defaults to the kubeconfig context's.
    #[arg(long, short = 'n')]
    namespace: Option<String>,
}

#[derive(Debug, Args)]
struct StatusArgs {
    #[command(flatten)]
    target: Target,
    /// Only this part (the `testId` label after `--`).
    #[arg(long)]
    part: Option<String>,
}

#[derive(Debug, Args)]
struct StopArgs {
    #[command(flatten)]
    target: Target,
    /// The part to stop (the `testId` label after `--`; empty for a test of one part).
    #[arg(long, default_value = "")]
    part: String,
    /// Why: recorded as `stopped` in every summary.json of the part.
    #[arg(long, default_value = "stopped with wave stop")]
    reason: String,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("wave: cannot start the async runtime: {err}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("wave: {}", ErrorChain(err.as_ref()));
            ExitCode::from(2)
        }
    }
}

async fn client(target: &Target) -> anyhow::Result<(kube::Client, String)> {
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes API configuration (KUBECONFIG or in-cluster)")?;
    let namespace = target
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    Ok((client, namespace))
}

/// Runs the command; its exit code is 1 when a report's threshold or agent failed.
async fn run(cli: Cli) -> anyhow::Result<u8> {
    match cli.command {
        Command::Report(args) => return Ok(wave_agent::report::run(&args).await?),
        Command::Status(args) => {
            let (client, namespace) = client(&args.target).await?;
            let parts = status::status(
                client,
                &namespace,
                &args.target.test_id,
                args.part.as_deref(),
            )
            .await?;
            if parts.is_empty() {
                println!(
                    "test {} in namespace {namespace}: no slots claimed",
                    args.target.test_id
                );
            }
            for part in parts {
                println!("test {} {part}", args.target.test_id);
            }
        }
        Command::Stop(args) => {
            let (client, namespace) = client(&args.target).await?;
            let part = Part {
                test_id: args.target.test_id.clone(),
                part: args.part.clone(),
            };
            let name = status::stop(client, &namespace, &part, &args.reason).await?;
            println!("{part} stopped ({}: {name})", args.reason);
        }
    }
    Ok(0)
}
