//! `keibi verify`.

use std::fmt::Write as _;
use std::process::ExitCode;

use anyhow::Context;

use crate::control::Request;
use crate::home::{self, Home};
use crate::store::{self, Backend, rocks::RocksBackend};
use crate::verify::{self, Finding, Report};

/// Arguments of `keibi verify`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Re-hash only this percentage of chunks (1-100), chosen by hash.
    #[arg(long, value_name = "PERCENT", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub sample: Option<u8>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Fetch every damaged or missing chunk again from a peer, checked against its hash,
    /// and store it in place of the bad one; then verify again. Needs the running mount
    /// (its peers send the chunks).
    #[arg(long)]
    pub repair: bool,
}

/// Renders `report` as `keibi verify` prints it.
pub(crate) fn render(report: &Report, json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(report)? + "\n");
    }
    let mut out = String::new();
    for f in &report.findings {
        writeln!(
            out,
            "{}: {}: {}\n    what to do: {}",
            f.kind, f.subject, f.detail, f.advice
        )?;
    }
    if report.findings_total > report.findings.len() as u64 {
        writeln!(
            out,
            "... and {} more findings",
            report.findings_total - report.findings.len() as u64
        )?;
    }
    if report.orphan_chunks > 0 {
        writeln!(
            out,
            "note: {} stored chunks are neither referenced nor indexed: left by a commit that a \
             crash or a full disk interrupted; harmless",
            report.orphan_chunks
        )?;
    }
    writeln!(
        out,
        "checked {} chunks ({}, {}% sample) and {} records: {}",
        report.chunks_checked,
        super::bytes(report.chunk_bytes_checked),
        report.sample_percent,
        report.records_checked,
        if report.findings_total == 0 {
            "no problems".to_string()
        } else {
            format!("{} problems", report.findings_total)
        }
    )?;
    Ok(out)
}

/// Renders a `keibi verify --repair`: the first report, what was fetched again, and the
/// report of the verify run after it (as one JSON object with `--json`).
pub(crate) fn render_repaired(
    before: &Report,
    repair: &crate::replication::Repair,
    after: &Report,
    json: bool,
) -> anyhow::Result<String> {
    let failed: Vec<(String, &str)> = repair
        .failed
        .iter()
        .map(|(id, why)| (id.to_string(), why.as_str()))
        .collect();
    if json {
        let fetched: Vec<String> = repair.fetched.iter().map(ToString::to_string).collect();
        let failed: Vec<serde_json::Value> = failed
            .iter()
            .map(|(id, why)| serde_json::json!({ "chunk": id, "error": why }))
            .collect();
        let all = serde_json::json!({
            "before": before,
            "repair": { "fetched": fetched, "failed": failed },
            "after": after,
        });
        return Ok(serde_json::to_string_pretty(&all)? + "\n");
    }
    let mut out = render(before, false)?;
    for (id, why) in &failed {
        writeln!(out, "repair: chunk {id}: not fetched: {why}")?;
    }
    writeln!(
        out,
        "repair: fetched {} chunks again from peers; {} could not be fetched\nafter the repair:",
        repair.fetched.len(),
        failed.len()
    )?;
    out += &render(after, false)?;
    Ok(out)
}

/// The exit code of a verify that produced `report`: 0 clean, 1 findings.
pub(crate) fn exit_code(report: &Report) -> u8 {
    u8::from(report.findings_total != 0)
}

pub fn run(home: &Home, args: &Args) -> anyhow::Result<ExitCode> {
    let req = Request::Verify {
        sample_percent: args.sample.unwrap_or(100),
        json: args.json,
        repair: args.repair,
    };
    if let Some(code) = super::via_mount(home, &req)? {
        return Ok(code);
    }
    if args.repair {
        anyhow::bail!(
            "--repair fetches chunks from the peers of the running mount, and no mount of {} \
             is running: start `keibi mount` with its peers, then run it again",
            home.root().display()
        );
    }
    let dir = home.store_dir();
    if !dir.join("CURRENT").exists() {
        return Err(home::Error::NotInitialised(home.root().to_path_buf()).into());
    }
    let opts = verify::Options {
        sample_percent: args.sample.unwrap_or(100),
        progress: !args.json,
    };
    let report = match RocksBackend::open(&dir, false) {
        Ok(backend) => {
            let backend: std::sync::Arc<dyn Backend> = std::sync::Arc::new(backend);
            let store = home
                .open_backend(backend)
                .with_context(|| format!("opening {}", dir.display()))?;
            verify::run(store.backend.as_ref(), store.chunks.cipher(), opts)
        }
        Err(e @ store::Error::Damaged(_)) => Report {
            findings: vec![Finding {
                kind: "store-damaged",
                subject: dir.display().to_string(),
                detail: format!("the database cannot be opened: {e}"),
                advice: "the database files are damaged: copy the home directory elsewhere, check the disk, and restore the store from a peer or backup",
            }],
            findings_total: 1,
            ..Report::default()
        },
        Err(e) => return Err(anyhow::Error::new(e).context(format!("opening {}", dir.display()))),
    };
    print!("{}", render(&report, args.json)?);
    Ok(ExitCode::from(exit_code(&report)))
}
