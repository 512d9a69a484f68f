//! `keibi status`.

use std::process::ExitCode;

use anyhow::Context;

use crate::home::Home;
use crate::status::StoreFigures;

/// Arguments of `keibi status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(home: &Home, args: &Args) -> anyhow::Result<ExitCode> {
    let store = home
        .open()
        .with_context(|| format!("opening the store in {}", home.root().display()))?;
    let f = StoreFigures::compute(store.backend.as_ref())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&f)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("store:     {}", home.store_dir().display());
    println!(
        "entries:   {} files, {} directories, {} other, {} tombstones",
        f.files, f.dirs, f.other_nodes, f.tombstones
    );
    println!("chunks:    {}", f.chunks);
    println!(
        "file data: {} (before dedup and compression)",
        super::bytes(f.logical_bytes)
    );
    println!(
        "deduped:   {} (unique chunks, before compression)",
        super::bytes(f.chunk_bytes)
    );
    println!(
        "stored:    {} (compressed frames)",
        super::bytes(f.stored_bytes)
    );
    println!("on disk:   {}", super::bytes(f.disk_bytes));
    Ok(ExitCode::SUCCESS)
}
