//! `keibi mount`: open (or create) the store, mount it with FUSE, serve until unmounted,
//! then commit everything and close the store.
//!
//! Threads: fuser's workers (see `crate::fuse`), the control socket's accept thread, one
//! signal thread that turns SIGINT, SIGTERM or SIGHUP into an unmount, and the automatic
//! gc's (`crate::gc::auto`). All end before this
//! command returns.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};

use crate::control::{self, Request, Response};
use crate::fuse::{self, MountOptions};
use crate::gc::auto::AutoGc;
use crate::home::{Home, InitOptions};
use crate::replication::Replication;
use crate::replication::config::Config;
use crate::replication::tls::Identity;
use crate::status::StoreFigures;
use crate::vfs::Vfs;

/// Arguments of `keibi mount`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory to mount the shared folder on (must exist).
    pub mountpoint: PathBuf,
    /// Let every local user use the mount, not only the one who mounted it (FUSE
    /// `allow_other`; a non-root user needs `user_allow_other` in /etc/fuse.conf).
    #[arg(long)]
    pub allow_other: bool,
    /// Accept peers on this address (`IP:PORT`; port 0 picks a free one). Also `listen` in
    /// HOME/peers.toml.
    #[arg(long, value_name = "IP:PORT")]
    pub listen: Option<std::net::SocketAddr>,
    /// Trust the peer with this device id and dial it at HOST:PORT (repeatable; without
    /// `@HOST:PORT` the peer is trusted but not dialled). Also `[[peer]]` in HOME/peers.toml.
    #[arg(long = "peer", value_name = "DEVICE_ID@HOST:PORT")]
    pub peers: Vec<crate::replication::config::Peer>,
    /// While requests keep arriving, ask the kernel to keep the CPUs in their polling idle
    /// state instead of halting (a CPU-latency request to the kernel; needs root). Small
    /// requests in a row, such as `git checkout`, then wait less for each CPU to wake,
    /// notably on virtual machines. Withdrawn 100 ms after the last request.
    #[arg(long)]
    pub low_latency: bool,
    /// Serve extended attributes (user., trusted., security.) through the mount. They are
    /// stored and replicated either way; serving them costs one more kernel request per
    /// write, the kernel's check for file capabilities.
    #[arg(long)]
    pub xattrs: bool,
    /// Delete chunks no file references any more at this interval, when files changed since
    /// the last run (as `keibi gc` does; `30s`, `10m`, `1h`...; `0` never).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_interval)]
    pub gc_every: Duration,
}

/// A `--gc-every` value; zero for never.
fn parse_interval(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s)
        .map_err(|e| format!("{e}: give a duration such as 30s, 10m or 1h, or 0 for never"))
}

pub fn run(home: &Home, args: &Args) -> anyhow::Result<ExitCode> {
    let mnt = prepare_mountpoint(&args.mountpoint)?;
    // Refused before anything is created or opened.
    let latency = if args.low_latency {
        let hold = fuse::latency::LatencyHold::start().with_context(|| {
            format!(
                "--low-latency: opening {} (it needs root)",
                fuse::latency::CPU_LATENCY_DEVICE
            )
        })?;
        Some(Arc::new(hold))
    } else {
        None
    };
    if !home.store_dir().join("CURRENT").exists() {
        let id = home
            .init(InitOptions { encrypt: true })
            .with_context(|| format!("creating a store in {}", home.root().display()))?;
        eprintln!(
            "keibi: created a store in {} (device id {id})",
            home.root().display()
        );
    }
    let store = home
        .open()
        .with_context(|| format!("opening the store in {}", home.root().display()))?;
    let vfs = Arc::new(
        Vfs::new(store.tables, store.chunks, &home.store_dir()).context("recovering the store")?,
    );
    let replication = start_replication(home, args, &vfs)?;
    let auto_gc = if args.gc_every.is_zero() {
        None
    } else {
        Some(Arc::new(
            AutoGc::start(Arc::clone(&vfs), args.gc_every).context("starting gc")?,
        ))
    };
    let mut control = control::Server::start(
        home.root(),
        live_handler(
            &vfs,
            replication.clone(),
            latency.clone(),
            auto_gc.clone(),
            args.xattrs,
            home,
            &mnt,
        ),
    )
    .context("starting the control socket")?;
    let opts = MountOptions {
        allow_other: args.allow_other,
        xattrs: args.xattrs,
    };
    let session =
        fuse::session(Arc::clone(&vfs), &mnt, opts, latency.clone()).with_context(|| {
            format!(
                "mounting on {} (a FUSE mount needs /dev/fuse and fusermount3, from the fuse3 \
             package; --allow-other needs root or user_allow_other in /etc/fuse.conf)",
                mnt.display()
            )
        })?;
    vfs.set_kernel_cache(Some(Arc::new(fuse::KernelNotifier(session.notifier()))));
    if let Err(e) = fuse::raise_readahead(&mnt) {
        tracing::info!(error = %e, "kernel readahead left at its default");
    }
    let (signal_handle, signal_thread) = unmount_on_signals(&mnt)?;
    eprintln!(
        "keibi: mounted {} (home {}); stop with Ctrl-C or `fusermount3 -u {}`",
        mnt.display(),
        home.root().display(),
        mnt.display()
    );
    let served = session.run().or_else(|e| {
        // The kernel ends a session with ENODEV, or ECONNABORTED when the connection was
        // torn down (a lazy unmount, `umount -f`): both mean the mount is gone.
        match e.raw_os_error() {
            Some(nix::libc::ENODEV | nix::libc::ECONNABORTED) => Ok(()),
            _ => Err(e),
        }
    });
    signal_handle.close();
    let _ = signal_thread.join();
    if let Some(r) = &replication {
        r.stop();
    }
    if let Some(g) = &auto_gc {
        g.stop();
    }
    vfs.set_kernel_cache(None);
    if let Some(l) = &latency {
        l.stop();
    }
    control.stop();
    let closed = vfs.shutdown();
    if let (Err(_), Err(e)) = (&served, &closed) {
        // Only one error can be returned; this one must not vanish.
        eprintln!("keibi: error: committing open files at unmount: {e}");
    }
    served.with_context(|| format!("serving {}", mnt.display()))?;
    closed.context("committing open files at unmount")?;
    eprintln!("keibi: unmounted {}", mnt.display());
    Ok(ExitCode::SUCCESS)
}

/// Starts the thread that turns SIGINT, SIGTERM and SIGHUP into an unmount of `mnt`; the
/// handle closes it.
fn unmount_on_signals(
    mnt: &Path,
) -> anyhow::Result<(signal_hook::iterator::Handle, std::thread::JoinHandle<()>)> {
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .context("installing signal handlers")?;
    let handle = signals.handle();
    let signal_mnt = mnt.to_path_buf();
    let thread = std::thread::Builder::new()
        .name("keibi-signals".into())
        .spawn(move || {
            // Every signal until the session ends: if detaching failed, the next Ctrl-C
            // tries again instead of being ignored.
            let mut detached = false;
            for sig in signals.forever() {
                if detached {
                    eprintln!("keibi: unmounted; waiting for files still open on it to close");
                } else {
                    tracing::info!(sig, "signal received: unmounting");
                    detached = fuse::unmount_lazily(&signal_mnt);
                }
            }
        })
        .context("starting the signal thread")?;
    Ok((handle, thread))
}

/// True for the errors of a FUSE mount whose process is gone.
fn is_dead_mount(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(nix::libc::ENOTCONN | nix::libc::ECONNABORTED)
    )
}

/// Checks the mountpoint (detaching a dead keibi mount left on it) and makes it absolute.
fn prepare_mountpoint(mnt: &Path) -> anyhow::Result<PathBuf> {
    // A dead mount answers the stat of its root from the kernel's cache when that is still
    // fresh; a lookup of a name that is not there always reaches it (keibi caches no
    // negative entries).
    let probe = std::fs::symlink_metadata(mnt.join(".keibi-mount-probe"));
    let meta = match std::fs::metadata(mnt) {
        Ok(_) if probe.as_ref().is_err_and(is_dead_mount) => {
            Err(std::io::Error::from_raw_os_error(nix::libc::ENOTCONN))
        }
        other => other,
    };
    let meta = match meta {
        // A FUSE mount whose process died (and that auto_unmount did not remove) answers
        // ENOTCONN: detach it, then mount afresh.
        Err(e) if is_dead_mount(&e) => {
            eprintln!(
                "keibi: {} is a mount whose process is gone; detaching it",
                mnt.display()
            );
            fuse::unmount_lazily(mnt);
            std::fs::metadata(mnt)
        }
        other => other,
    }
    .with_context(|| format!("mountpoint {}", mnt.display()))?;
    if !meta.is_dir() {
        bail!("mountpoint {} is not a directory", mnt.display());
    }
    mnt.canonicalize()
        .with_context(|| format!("mountpoint {}", mnt.display()))
}

/// Starts replication when `--listen`, `--peer` or HOME/peers.toml name any peer.
fn start_replication(
    home: &Home,
    args: &Args,
    vfs: &Arc<Vfs>,
) -> anyhow::Result<Option<Arc<Replication>>> {
    let config = Config::load(&home.root().join("peers.toml"))
        .map_err(anyhow::Error::msg)?
        .merge(args.listen, args.peers.clone())
        .map_err(anyhow::Error::msg)?;
    Ok(if config.is_empty() {
        None
    } else {
        let identity = Identity::load(home).context("loading this peer's keys")?;
        let r = Replication::start(vfs, &identity, &config).context("starting replication")?;
        if let Some(a) = r.listen_address() {
            eprintln!("keibi: accepting peers on {a}");
        }
        Some(Arc::new(r))
    })
}

/// Serves control requests against the live store of this mount.
fn live_handler(
    vfs: &Arc<Vfs>,
    replication: Option<Arc<Replication>>,
    latency: Option<Arc<fuse::latency::LatencyHold>>,
    auto_gc: Option<Arc<AutoGc>>,
    xattrs: bool,
    home: &Home,
    mnt: &Path,
) -> Arc<control::Handler> {
    let vfs = Arc::clone(vfs);
    let store_dir = home.store_dir().display().to_string();
    let mountpoint = mnt.display().to_string();
    Arc::new(move |req: Request| {
        let answered = match req {
            Request::Status { json } => StoreFigures::compute(vfs.tables().backend().as_ref())
                .map_err(anyhow::Error::from)
                .and_then(|figures| {
                    let s = super::status::Status {
                        store: store_dir.clone(),
                        mount: Some(super::status::MountFigures {
                            mountpoint: mountpoint.clone(),
                            staged_bytes: vfs.staged_bytes(),
                            xattrs,
                            low_latency: latency.as_ref().map(|l| {
                                let (held, holds) = l.state();
                                super::status::LowLatencyFigures { held, holds }
                            }),
                            gc: auto_gc.as_ref().map(|g| super::status::AutoGcFigures {
                                every_secs: g.every().as_secs(),
                                last_run: g.last_run(),
                            }),
                        }),
                        replication: replication.as_ref().map(|r| r.status()),
                        figures,
                    };
                    super::status::render(&s, json)
                })
                .map(|out| (0, out)),
            Request::Gc { dry_run, json } => {
                super::gc::collect(vfs.chunks(), &|| vfs.staged_chunks(), dry_run, json)
                    .map(|out| (0, out))
            }
            Request::Verify {
                sample_percent,
                json,
                repair,
            } => {
                let opts = crate::verify::Options {
                    sample_percent: sample_percent.clamp(1, 100),
                    progress: false,
                };
                let verify = || {
                    crate::verify::run(vfs.tables().backend().as_ref(), vfs.chunks().cipher(), opts)
                };
                let report = verify();
                match (repair, replication.as_ref()) {
                    (true, None) => Err(anyhow::anyhow!(
                        "--repair fetches chunks from peers, and this mount has none (start it \
                         with --peer)"
                    )),
                    (true, Some(r)) if !report.refetch.is_empty() => {
                        let done = r.repair(&report.refetch);
                        // What is left after the repair decides the exit code.
                        let after = verify();
                        super::verify::render_repaired(&report, &done, &after, json)
                            .map(|out| (super::verify::exit_code(&after), out))
                    }
                    // No repair asked, or nothing to fetch.
                    _ => super::verify::render(&report, json)
                        .map(|out| (super::verify::exit_code(&report), out)),
                }
            }
        };
        match answered {
            Ok((exit_code, output)) => Response { exit_code, output },
            Err(e) => Response {
                exit_code: 2,
                output: format!("keibi: error: {e:#}\n"),
            },
        }
    })
}
