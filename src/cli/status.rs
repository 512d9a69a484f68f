//! `keibi status`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::control::Request;
use crate::home::Home;
use crate::status::StoreFigures;

/// Arguments of `keibi status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a running mount adds to the store figures.
#[derive(Clone, Debug, Serialize)]
pub struct MountFigures {
    /// Where it is mounted.
    pub mountpoint: String,
    /// File content held in memory, not yet committed.
    pub staged_bytes: u64,
}

/// Everything `keibi status` prints.
#[derive(Clone, Debug, Serialize)]
pub struct Status {
    /// The store directory.
    pub store: String,
    /// The running mount, if any.
    pub mount: Option<MountFigures>,
    /// Replication of the running mount, if it has peers.
    pub replication: Option<crate::replication::Status>,
    /// Store figures.
    #[serde(flatten)]
    pub figures: StoreFigures,
}

/// Renders `s` as `keibi status` prints it.
pub(crate) fn render(s: &Status, json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(s)? + "\n");
    }
    let f = &s.figures;
    let mut out = String::new();
    writeln!(out, "store:     {}", s.store)?;
    match &s.mount {
        Some(m) => writeln!(
            out,
            "mount:     {} ({} staged, not yet committed)",
            m.mountpoint,
            super::bytes(m.staged_bytes)
        )?,
        None => writeln!(out, "mount:     not mounted")?,
    }
    writeln!(
        out,
        "entries:   {} files, {} directories, {} other, {} tombstones",
        f.files, f.dirs, f.other_nodes, f.tombstones
    )?;
    writeln!(out, "chunks:    {}", f.chunks)?;
    writeln!(
        out,
        "file data: {} (before dedup and compression)",
        super::bytes(f.logical_bytes)
    )?;
    writeln!(
        out,
        "deduped:   {} (unique chunks, before compression)",
        super::bytes(f.chunk_bytes)
    )?;
    writeln!(
        out,
        "stored:    {} (compressed frames)",
        super::bytes(f.stored_bytes)
    )?;
    writeln!(out, "on disk:   {}", super::bytes(f.disk_bytes))?;
    if let Some(r) = &s.replication {
        render_replication(&mut out, r)?;
    }
    Ok(out)
}

fn render_replication(out: &mut String, r: &crate::replication::Status) -> std::fmt::Result {
    writeln!(
        out,
        "listen:    {}",
        r.listen.as_deref().unwrap_or("(not accepting peers)")
    )?;
    writeln!(
        out,
        "missing:   {} chunks not fetched yet; fetched {} chunks, {}; {} fetch errors",
        r.chunks_missing,
        r.chunks_fetched,
        super::bytes(r.bytes_fetched),
        r.fetch_errors
    )?;
    if let Some(e) = &r.fetch_last_error {
        writeln!(out, "           last fetch error: {e}")?;
    }
    if r.conflicts > 0 {
        writeln!(
            out,
            "conflicts: {} resolved (conflict copies kept)",
            r.conflicts
        )?;
    }
    if let Some(e) = &r.last_refused {
        writeln!(out, "refused:   {e}")?;
    }
    for p in &r.peers {
        let state = match (p.connected_out, p.connected_in) {
            (true, true) => "connected both ways",
            (true, false) => "connected (outgoing)",
            (false, true) => "connected (incoming only)",
            (false, false) => "not connected",
        };
        writeln!(out, "peer:      {}", p.device)?;
        writeln!(
            out,
            "           {state}, {}, key exchange {}",
            p.address.as_deref().unwrap_or("no address"),
            p.key_exchange.as_deref().unwrap_or("-")
        )?;
        writeln!(
            out,
            "           {} changes pending to send; sent {} records, {}; received {} records, {}",
            p.pending_records,
            p.records_sent,
            super::bytes(p.sent_bytes),
            p.records_received,
            super::bytes(p.received_bytes)
        )?;
        if p.waiting_records > 0 || p.rejected > 0 {
            writeln!(
                out,
                "           {} records waiting here, {} rejected",
                p.waiting_records, p.rejected
            )?;
        }
        if let Some(e) = &p.last_error {
            writeln!(out, "           last error: {e}")?;
        }
    }
    Ok(())
}

pub fn run(home: &Home, args: &Args) -> anyhow::Result<ExitCode> {
    if let Some(code) = super::via_mount(home, &Request::Status { json: args.json })? {
        return Ok(code);
    }
    let store = home
        .open()
        .with_context(|| format!("opening the store in {}", home.root().display()))?;
    let status = Status {
        store: home.store_dir().display().to_string(),
        mount: None,
        replication: None,
        figures: StoreFigures::compute(store.backend.as_ref())?,
    };
    print!("{}", render(&status, args.json)?);
    Ok(ExitCode::SUCCESS)
}
