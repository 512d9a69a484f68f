//! `keibi demo`: a small end-to-end use of the store through the filesystem core.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};

use crate::home::Home;
use crate::id::{Ino, ROOT_INO};
use crate::status::StoreFigures;
use crate::tree::Kind;
use crate::verify;
use crate::vfs::{Creator, OpenFlags, Vfs};

/// Arguments of `keibi demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory tree to import; without it a sample tree is generated.
    #[arg(long, value_name = "DIR")]
    pub source: Option<PathBuf>,
}

const WRITE_PIECE_BYTES: usize = 1024 * 1024;

fn sample_tree(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir.join("docs/notes"))?;
    std::fs::write(
        dir.join("README.txt"),
        "keibi demo: files written through the filesystem core\n",
    )?;
    std::fs::write(dir.join("empty"), b"")?;
    let big = crate::testing::noise(3 * 1024 * 1024 + 123, 1);
    std::fs::write(dir.join("big.bin"), &big)?;
    std::fs::write(dir.join("docs/big-copy.bin"), &big)?;
    for i in 0..20 {
        std::fs::write(
            dir.join(format!("docs/notes/note-{i}.txt")),
            format!("note {i}\n").repeat(i + 1),
        )?;
    }
    std::os::unix::fs::symlink("../README.txt", dir.join("docs/readme-link"))?;
    Ok(())
}

fn import(vfs: &Vfs, src: &Path, parent: Ino, who: Creator) -> anyhow::Result<u64> {
    let mut count = 0;
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .with_context(|| format!("reading {}", src.display()))?
        .collect::<Result<_, _>>()?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let path = e.path();
        let name = e.file_name();
        let name = name.as_encoded_bytes();
        let meta = std::fs::symlink_metadata(&path)?;
        let perm = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o7777;
        if meta.is_dir() {
            let attr = vfs.mkdir(parent, name, perm, who)?;
            count += import(vfs, &path, attr.ino, who)?;
        } else if meta.is_symlink() {
            let target = std::fs::read_link(&path)?;
            vfs.symlink(parent, name, target.as_os_str().as_encoded_bytes(), who)?;
            count += 1;
        } else if meta.is_file() {
            let (_, fh) = vfs.create(parent, name, perm, who, OpenFlags::default())?;
            let mut file = std::fs::File::open(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            let mut piece = vec![0u8; WRITE_PIECE_BYTES];
            let mut offset = 0u64;
            loop {
                let n = read_full(&mut file, &mut piece)
                    .with_context(|| format!("reading {}", path.display()))?;
                if n == 0 {
                    break;
                }
                vfs.write(fh, offset, &piece[..n])?;
                offset += n as u64;
            }
            vfs.release(fh)?;
            count += 1;
        }
    }
    Ok(count)
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn compare(vfs: &Vfs, src: &Path, dir: Ino) -> anyhow::Result<u64> {
    let mut bytes = 0;
    for e in std::fs::read_dir(src)? {
        let e = e?;
        let path = e.path();
        let attr = vfs.lookup(dir, e.file_name().as_encoded_bytes())?;
        match attr.kind {
            Kind::Dir => bytes += compare(vfs, &path, attr.ino)?,
            Kind::File => {
                let mut file = std::fs::File::open(&path)?;
                let fh = vfs.open(attr.ino, OpenFlags::default())?;
                let mut want = vec![0u8; WRITE_PIECE_BYTES];
                let mut offset = 0u64;
                loop {
                    let n = read_full(&mut file, &mut want)?;
                    let got = vfs.read(fh, offset, u32::try_from(WRITE_PIECE_BYTES)?)?;
                    if got != want[..n] {
                        vfs.release(fh)?;
                        bail!(
                            "{} reads back different from its source at offset {offset}",
                            path.display()
                        );
                    }
                    if n == 0 {
                        break;
                    }
                    offset += n as u64;
                }
                vfs.release(fh)?;
                bytes += offset;
            }
            Kind::Symlink => {
                if vfs.readlink(attr.ino)?
                    != std::fs::read_link(&path)?.as_os_str().as_encoded_bytes()
                {
                    bail!("symlink {} reads back different", path.display());
                }
            }
            Kind::Fifo | Kind::Socket | Kind::CharDevice | Kind::BlockDevice => {}
        }
    }
    Ok(bytes)
}

pub fn run(home: &Home, args: &Args) -> anyhow::Result<ExitCode> {
    let store = home
        .open()
        .with_context(|| format!("opening the store in {}", home.root().display()))?;
    let scratch = tempfile::TempDir::new()?;
    let src = if let Some(s) = &args.source {
        s.clone()
    } else {
        sample_tree(scratch.path())?;
        scratch.path().to_path_buf()
    };
    let vfs = Vfs::new(
        store.tables,
        std::sync::Arc::clone(&store.chunks),
        home.root(),
    )?;
    let who = Creator {
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
    };
    let name = format!(
        "demo-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    let top = vfs.mkdir(ROOT_INO, name.as_bytes(), 0o755, who)?;
    let started = std::time::Instant::now();
    let n = import(&vfs, &src, top.ino, who)?;
    vfs.sync_all()?;
    println!(
        "imported {n} entries from {} into /{name} in {:.2?}",
        src.display(),
        started.elapsed()
    );
    let bytes = compare(&vfs, &src, top.ino)?;
    println!(
        "read back {} through the filesystem core: identical to the source",
        super::bytes(bytes)
    );
    vfs.shutdown()?;
    let report = verify::run(
        store.backend.as_ref(),
        store.chunks.cipher(),
        verify::Options {
            sample_percent: 100,
            progress: false,
        },
    );
    println!(
        "verify: {} chunks re-hashed, {} records checked, {} problems",
        report.chunks_checked, report.records_checked, report.findings_total
    );
    let f = StoreFigures::compute(store.backend.as_ref())?;
    println!(
        "store: {} files, {} of file data, {} after dedup, {} stored",
        f.files,
        super::bytes(f.logical_bytes),
        super::bytes(f.chunk_bytes),
        super::bytes(f.stored_bytes)
    );
    Ok(if report.findings_total == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
