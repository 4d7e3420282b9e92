//! The `clb-operator` binary: a thin entry point over [`clb_operator::cli`].

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    clb_operator::cli::main().await
}
