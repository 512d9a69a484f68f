//! `keibi gc`.

use std::process::ExitCode;

use anyhow::Context;

use crate::gc::GcPlan;
use crate::home::Home;

/// Arguments of `keibi gc`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(home: &Home, args: &Args) -> anyhow::Result<ExitCode> {
    let store = home
        .open()
        .with_context(|| format!("opening the store in {}", home.root().display()))?;
    let plan = GcPlan::compute(&store.chunks, &Vec::new)?;
    if args.dry_run {
        if args.json {
            let v = serde_json::json!({
                "dry_run": true,
                "stored_chunks": plan.stored_chunks,
                "live_chunks": plan.live_chunks,
                "chunks_to_delete": plan.doomed.len(),
                "bytes_to_reclaim": plan.doomed_bytes(),
            });
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!(
                "gc plan: {} stored chunks, {} referenced; would delete {} chunks ({})",
                plan.stored_chunks,
                plan.live_chunks,
                plan.doomed.len(),
                super::bytes(plan.doomed_bytes())
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let report = plan.execute()?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "gc: deleted {} chunks ({} stored); chunk files on disk {} -> {}",
            report.deleted_chunks,
            super::bytes(report.deleted_bytes),
            super::bytes(report.disk_bytes_before),
            super::bytes(report.disk_bytes_after)
        );
    }
    Ok(ExitCode::SUCCESS)
}
