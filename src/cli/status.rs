//! `keibi status`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;
use serde::Serialize;

use crate::control::Request;
use crate::home::Home;
use crate::limits::STATUS_WATCH_INTERVAL_MS;
use crate::status::StoreFigures;

/// Arguments of `keibi status`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print the figures as JSON.
    #[arg(long)]
    pub json: bool,
    /// Follow a running mount's replication with a progress bar of the chunks and records
    /// still to come from peers (one line per second when not on a terminal); ends once
    /// nothing is missing, waiting or pending, exit 0, or when the mount stops, exit 2.
    #[arg(long, conflicts_with = "json")]
    pub watch: bool,
}

/// What a running mount adds to the store figures.
#[derive(Clone, Debug, Serialize)]
pub struct MountFigures {
    /// Where it is mounted.
    pub mountpoint: String,
    /// File content held in memory, not yet committed.
    pub staged_bytes: u64,
    /// Extended attributes are served (`--xattrs`).
    pub xattrs: bool,
    /// With `--low-latency`: the CPU-latency request.
    pub low_latency: Option<LowLatencyFigures>,
    /// Automatic gc (`--gc-every`), unless turned off.
    pub gc: Option<AutoGcFigures>,
}

/// Automatic gc of a running mount.
#[derive(Clone, Debug, Serialize)]
pub struct AutoGcFigures {
    /// Seconds between runs.
    pub every_secs: u64,
    /// What the last run did; `None` before the first.
    pub last_run: Option<crate::gc::auto::LastRun>,
}

/// The CPU-latency request of a mount started with `--low-latency`.
#[derive(Clone, Debug, Serialize)]
pub struct LowLatencyFigures {
    /// Whether a CPU latency of 0 is requested now (requests arrived in the last 100 ms).
    pub held: bool,
    /// How many times it has been requested since the mount started.
    pub holds: u64,
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
            "mount:     {} ({} staged, not yet committed){}",
            m.mountpoint,
            super::bytes(m.staged_bytes),
            if m.xattrs {
                "; extended attributes served"
            } else {
                ""
            }
        )?,
        None => writeln!(out, "mount:     not mounted")?,
    }
    if let Some(l) = s.mount.as_ref().and_then(|m| m.low_latency.as_ref()) {
        let now = if l.held {
            "requested now"
        } else {
            "withdrawn while idle"
        };
        writeln!(
            out,
            "latency:   --low-latency: CPU latency 0 {now} (requested {} times)",
            l.holds
        )?;
    }
    if let Some(g) = s.mount.as_ref().and_then(|m| m.gc.as_ref()) {
        render_auto_gc(&mut out, g)?;
    }
    writeln!(
        out,
        "entries:   {} files, {} directories, {} other, {} tombstones",
        f.files, f.dirs, f.other_nodes, f.tombstones
    )?;
    // Chunks no record refers to any more (overwritten, deleted) count until gc removes
    // them, so after many rewrites `deduped` can exceed `file data`.
    writeln!(
        out,
        "chunks:    {} (those no file refers to stay until gc)",
        f.chunks
    )?;
    writeln!(
        out,
        "file data: {} (before dedup and compression)",
        super::bytes(f.logical_bytes)
    )?;
    writeln!(
        out,
        "deduped:   {} (the stored chunks, before compression)",
        super::bytes(f.chunk_bytes)
    )?;
    writeln!(
        out,
        "stored:    {} (compressed frames)",
        super::bytes(f.stored_bytes)
    )?;
    writeln!(out, "on disk:   {}", super::bytes(f.disk_bytes))?;
    if let Some(d) = &f.disk {
        let room = d.available_bytes.saturating_sub(d.kept_free_bytes);
        writeln!(
            out,
            "disk:      {} free of {}; {} kept free, so {} left for files{}",
            super::bytes(d.available_bytes),
            super::bytes(d.total_bytes),
            super::bytes(d.kept_free_bytes),
            super::bytes(room),
            if room == 0 {
                " (new data is refused)"
            } else {
                ""
            }
        )?;
    }
    if let Some(r) = &s.replication {
        render_replication(&mut out, r)?;
    }
    Ok(out)
}

fn render_auto_gc(out: &mut String, g: &AutoGcFigures) -> std::fmt::Result {
    let every = humantime::format_duration(std::time::Duration::from_secs(g.every_secs));
    match &g.last_run {
        None => writeln!(out, "gc:        every {every}; not run yet"),
        Some(r) => {
            let ago = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
                .saturating_sub(r.ended_unix_secs);
            let ago = humantime::format_duration(std::time::Duration::from_secs(ago));
            match &r.error {
                Some(e) => writeln!(
                    out,
                    "gc:        every {every}; last run {ago} ago {}: {e}",
                    if r.skipped { "skipped" } else { "failed" }
                ),
                None => writeln!(
                    out,
                    "gc:        every {every}; last run {ago} ago deleted {} chunks ({})",
                    r.deleted_chunks,
                    super::bytes(r.deleted_bytes)
                ),
            }
        }
    }
}

fn render_replication(out: &mut String, r: &crate::replication::Status) -> std::fmt::Result {
    writeln!(
        out,
        "listen:    {}",
        r.listen.as_deref().unwrap_or("(not accepting peers)")
    )?;
    writeln!(
        out,
        "missing:   {} chunks not fetched yet; fetched {} chunks, {} ({} ahead of their file, on announcement); {} fetch errors",
        r.chunks_missing,
        r.chunks_fetched,
        super::bytes(r.bytes_fetched),
        r.chunks_announced,
        r.fetch_errors
    )?;
    if r.fetched_unpersisted {
        writeln!(
            out,
            "           chunks fetched a moment ago are not on disk yet (a crash would fetch them again)"
        )?;
    }
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
    if args.watch {
        return watch(home);
    }
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

/// Replication progress read from a running mount's JSON status.
#[derive(Debug, Default, PartialEq, Eq)]
struct Progress {
    chunks_missing: u64,
    chunks_fetched: u64,
    bytes_fetched: u64,
    records_received: u64,
    waiting_records: u64,
    pending_records: u64,
    peers_connected: usize,
}

impl Progress {
    fn of(status: &serde_json::Value) -> Option<Self> {
        let r = status.get("replication").filter(|r| !r.is_null())?;
        let n = |v: &serde_json::Value, k: &str| v.get(k).and_then(serde_json::Value::as_u64);
        let peers = r.get("peers")?.as_array()?;
        let sum = |k: &str| peers.iter().filter_map(|p| n(p, k)).sum::<u64>();
        Some(Self {
            chunks_missing: n(r, "chunks_missing")?,
            chunks_fetched: n(r, "chunks_fetched")?,
            bytes_fetched: n(r, "bytes_fetched")?,
            records_received: sum("records_received"),
            waiting_records: sum("waiting_records"),
            pending_records: sum("pending_records"),
            peers_connected: peers
                .iter()
                .filter(|p| p.get("connected_out") == Some(&serde_json::Value::Bool(true)))
                .count(),
        })
    }

    fn caught_up(&self) -> bool {
        self.peers_connected > 0
            && self.chunks_missing == 0
            && self.waiting_records == 0
            && self.pending_records == 0
    }
}

/// `keibi status --watch`: polls the mount every [`STATUS_WATCH_INTERVAL_MS`] until it has
/// caught up with its peers.
fn watch(home: &Home) -> anyhow::Result<ExitCode> {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template("[{bar:40}] {pos}/{len} chunks  {msg}") {
        bar.set_style(style);
    }
    let mut start: Option<u64> = None;
    loop {
        let Some(answer) = crate::control::call(home.root(), &Request::Status { json: true })
            .context("asking the running `keibi mount`")?
        else {
            bar.abandon();
            eprintln!("keibi: no mount is running on {}", home.root().display());
            return Ok(ExitCode::from(2));
        };
        let value: serde_json::Value =
            serde_json::from_str(&answer.output).context("reading the mount's status")?;
        let Some(p) = Progress::of(&value) else {
            bar.abandon();
            eprintln!("keibi: the mount on {} has no peers", home.root().display());
            return Ok(ExitCode::from(2));
        };
        let first = *start.get_or_insert(p.chunks_fetched);
        let done = p.chunks_fetched.saturating_sub(first);
        let line = format!(
            "{} fetched, {} records received, {} waiting, {} to send, {} peers connected",
            super::bytes(p.bytes_fetched),
            p.records_received,
            p.waiting_records,
            p.pending_records,
            p.peers_connected
        );
        bar.set_length(done + p.chunks_missing);
        bar.set_position(done);
        bar.set_message(line.clone());
        if bar.is_hidden() {
            println!("{done}/{} chunks  {line}", done + p.chunks_missing);
        }
        if p.caught_up() {
            bar.finish();
            println!("caught up: nothing missing, waiting or pending");
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(std::time::Duration::from_millis(STATUS_WATCH_INTERVAL_MS));
    }
}

#[cfg(test)]
mod tests {
    use super::Progress;

    #[test]
    fn progress_reads_the_mount_status_and_knows_when_it_caught_up() {
        let mut v = serde_json::json!({
            "replication": {
                "chunks_missing": 3, "chunks_fetched": 10, "bytes_fetched": 4096,
                "peers": [
                    {"connected_out": true, "records_received": 5, "waiting_records": 1,
                     "pending_records": 0},
                    {"connected_out": false, "records_received": 2, "waiting_records": 0,
                     "pending_records": 4}
                ]
            }
        });
        let p = Progress::of(&v).expect("progress");
        assert_eq!(p.records_received, 7);
        assert_eq!(p.pending_records, 4);
        assert_eq!(p.peers_connected, 1);
        assert!(!p.caught_up());
        v["replication"]["chunks_missing"] = 0.into();
        v["replication"]["peers"][0]["waiting_records"] = 0.into();
        v["replication"]["peers"][1]["pending_records"] = 0.into();
        assert!(Progress::of(&v).expect("progress").caught_up());
        assert_eq!(
            Progress::of(&serde_json::json!({"replication": null})),
            None
        );
    }
}
