//! `keibi gc`.

use std::process::ExitCode;

use anyhow::Context;

use crate::control::Request;
use crate::gc::GcPlan;
use crate::home::Home;
use crate::id::ChunkId;

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

/// Plans (and unless `dry_run`, executes) a gc of `chunks`, whose open files hold the
/// `staged` chunks, and renders the outcome as `keibi gc` prints it.
pub(crate) fn collect(
    chunks: &crate::chunk::ChunkStore,
    staged: &dyn Fn() -> Vec<ChunkId>,
    dry_run: bool,
    json: bool,
) -> anyhow::Result<String> {
    let plan = GcPlan::compute(chunks, staged)?;
    if dry_run {
        return Ok(if json {
            let v = serde_json::json!({
                "dry_run": true,
                "stored_chunks": plan.stored_chunks,
                "live_chunks": plan.live_chunks,
                "chunks_to_delete": plan.doomed.len(),
                "orphans_to_delete": plan.orphans.len(),
                "bytes_to_reclaim": plan.doomed_bytes(),
            });
            serde_json::to_string_pretty(&v)? + "\n"
        } else {
            format!(
                "gc plan: {} stored chunks, {} referenced; would delete {} chunks ({}){}\n",
                plan.stored_chunks,
                plan.live_chunks,
                plan.doomed.len(),
                super::bytes(plan.doomed_bytes()),
                orphans(plan.orphans.len() as u64)
            )
        });
    }
    let report = plan.execute()?;
    Ok(if json {
        serde_json::to_string_pretty(&report)? + "\n"
    } else {
        format!(
            "gc: deleted {} chunks ({} stored){}; chunk files on disk {} -> {}\n",
            report.deleted_chunks,
            super::bytes(report.deleted_bytes),
            orphans(report.deleted_orphans),
            super::bytes(report.disk_bytes_before),
            super::bytes(report.disk_bytes_after)
        )
    })
}

/// The text of `n` orphans for gc's summary line (nothing when there are none).
fn orphans(n: u64) -> String {
    if n == 0 {
        String::new()
    } else {
        format!(" and {n} chunk frames left without an index entry")
    }
}

pub fn run(home: &Home, args: &Args) -> anyhow::Result<ExitCode> {
    let req = Request::Gc {
        dry_run: args.dry_run,
        json: args.json,
    };
    if let Some(code) = super::via_mount(home, &req)? {
        return Ok(code);
    }
    let store = home
        .open()
        .with_context(|| format!("opening the store in {}", home.root().display()))?;
    print!(
        "{}",
        collect(&store.chunks, &Vec::new, args.dry_run, args.json)?
    );
    Ok(ExitCode::SUCCESS)
}
