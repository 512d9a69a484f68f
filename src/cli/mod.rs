//! The `keibi` command line: clap types and one module per subcommand. Orchestration only;
//! the work happens in the library.

mod demo;
mod gc;
mod init;
mod mount;
mod status;
mod verify;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

use crate::home::Home;

/// keibi: a content-addressed replication engine for a shared folder.
#[derive(Debug, Parser)]
#[command(name = "keibi", version, about, long_about = None)]
pub struct Cli {
    /// Home directory holding the store and keys [default: ~/.local/share/keibi].
    #[arg(long, global = true, env = "KEIBI_HOME", value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a store and this peer's keys in the home directory.
    Init(init::Args),
    /// Print this peer's device id.
    Id,
    /// Mount the shared folder and serve it until unmounted (Ctrl-C, SIGTERM or `fusermount3 -u`).
    Mount(mount::Args),
    /// Check the store: re-hash chunks, check records and indexes. Exit 0 clean, 1 problems found, 2 could not run.
    Verify(verify::Args),
    /// Delete chunks that no file references any more.
    Gc(gc::Args),
    /// Show store figures.
    Status(status::Args),
    /// Import a directory tree through the filesystem core, read it back, verify the store.
    Demo(demo::Args),
}

impl Cli {
    fn home(&self) -> Home {
        Home::new(self.home.clone().unwrap_or_else(Home::default_root))
    }
}

/// Runs the parsed command line.
///
/// # Errors
/// Whatever the command failed on, with context naming the file or directory involved.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let home = cli.home();
    match cli.command {
        Command::Init(args) => init::run(&home, &args),
        Command::Id => {
            println!("{}", home.device_id()?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Mount(args) => mount::run(&home, &args),
        Command::Verify(args) => verify::run(&home, &args),
        Command::Gc(args) => gc::run(&home, &args),
        Command::Status(args) => status::run(&home, &args),
        Command::Demo(args) => demo::run(&home, &args),
    }
}

/// Sends `req` to the mount running on `home`, if there is one, and prints its answer.
/// `None` when no mount runs: the caller then opens the store itself.
fn via_mount(home: &Home, req: &crate::control::Request) -> anyhow::Result<Option<ExitCode>> {
    let answer =
        crate::control::call(home.root(), req).context("asking the running `keibi mount`")?;
    Ok(answer.map(|a| {
        print!("{}", a.output);
        ExitCode::from(a.exit_code)
    }))
}

/// Formats a byte count for people.
pub(crate) fn bytes(n: u64) -> String {
    indicatif::BinaryBytes(n).to_string()
}
