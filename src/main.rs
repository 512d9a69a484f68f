//! The `keibi` binary: parse arguments, set up tracing, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("KEIBI_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = keibi::cli::Cli::parse();
    match keibi::cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("keibi: error: {e:#}");
            ExitCode::from(2)
        }
    }
}
