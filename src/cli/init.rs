//! `keibi init`.

use std::process::ExitCode;

use anyhow::Context;

use crate::home::{Home, InitOptions};

/// Arguments of `keibi init`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Store chunk payloads unencrypted (encryption at rest is on by default).
    #[arg(long)]
    pub no_encryption: bool,
}

pub fn run(home: &Home, args: &Args) -> anyhow::Result<ExitCode> {
    let id = home
        .init(InitOptions {
            encrypt: !args.no_encryption,
        })
        .with_context(|| format!("initialising {}", home.root().display()))?;
    println!("initialised keibi store in {}", home.root().display());
    println!(
        "encryption at rest: {}",
        if args.no_encryption {
            "off"
        } else {
            "on (AES-256-GCM, key wrapped with age)"
        }
    );
    println!("device id: {id}");
    Ok(ExitCode::SUCCESS)
}
