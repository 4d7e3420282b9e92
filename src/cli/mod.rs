//! The command line: every subcommand's flags live here, turned into the plain configuration of the module
//! that does the work.

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

pub mod clb;
pub mod clb_v3;
pub mod emulator;
pub mod kube;
pub mod run;
pub mod wait_drained;

/// Kubernetes operator for Tencent Cloud CLB backends.
#[derive(Debug, Parser)]
#[command(name = "clb-operator", version, about)]
pub struct Cli {
    /// Log format on stderr; the level comes from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The subcommands of `clb-operator`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the operator.
    Run(run::RunArgs),
    /// Print the CustomResourceDefinition YAML (what `crds/` holds).
    Crd,
    /// Wait until no ClbBackendBinding owns the node's CVM (for drain scripts and lifecycle hooks).
    WaitDrained(wait_drained::WaitDrainedArgs),
    /// Run a local CLB API v2 endpoint with signature checks, async tasks and fault injection.
    Emulator(emulator::EmulatorArgs),
    /// Talk to a CLB API v2 endpoint directly.
    Clb(clb::ClbArgs),
}

/// Parses the command line, runs the chosen command and turns its outcome into the process exit code.
pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    let json = cli.log_format == LogFormat::Json;
    match cli.command {
        Command::Run(args) => {
            crate::telemetry::init(json, "info");
            match run::run(args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = format!("{e:#}"), "Operator failed");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Crd => match crate::crd::yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot render the CRD: {e}");
                ExitCode::FAILURE
            }
        },
        Command::WaitDrained(args) => {
            crate::telemetry::init(json, "warn");
            wait_drained::run(args).await
        }
        Command::Emulator(args) => {
            crate::telemetry::init(json, "info");
            emulator::run(args).await
        }
        Command::Clb(args) => {
            crate::telemetry::init(json, "warn");
            clb::run(args).await
        }
    }
}
