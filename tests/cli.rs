//! The `keibi` command line: exit codes, messages, verify on clean and damaged stores.
#![expect(
    clippy::expect_used,
    reason = "test helpers fail loudly on setup errors"
)]

use std::path::Path;

use assert_cmd::Command;
use predicates::prelude::*;

use keibi::store::rocks::RocksBackend;
use keibi::store::{Backend, Batch, Cf, Durability};

fn keibi(home: &Path) -> Command {
    let mut c = Command::cargo_bin("keibi").expect("binary");
    c.arg("--home").arg(home);
    c
}

fn init_with_data(home: &Path) {
    keibi(home)
        .arg("init")
        .assert()
        .success()
        .stdout(predicate::str::contains("device id:"));
    keibi(home)
        .arg("demo")
        .assert()
        .success()
        .stdout(predicate::str::contains("identical to the source"));
}

#[test]
fn init_id_status_and_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("h");
    keibi(&home)
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("keibi init --home"));
    keibi(&home).arg("init").assert().success();
    let out = keibi(&home)
        .arg("id")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let id = String::from_utf8(out).expect("utf8");
    assert!(id.trim().parse::<keibi::id::DeviceId>().is_ok(), "{id}");
    keibi(&home)
        .arg("init")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("already holds a keibi store"));
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(home.join("identity.txt"))
            .expect("identity")
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    keibi(&home)
        .args(["verify", "--sample", "0"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--sample"));
    keibi(&home)
        .args(["status", "--json"])
        .assert()
        .success()
        .stdout(predicate::str::contains("\"files\": 0"));
    // The disk of the store, and what the store keeps free on it.
    let out = keibi(&home)
        .arg("status")
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let out = String::from_utf8(out).expect("utf8");
    assert!(out.contains("kept free, so"), "{out}");
    let out = keibi(&home)
        .args(["status", "--json"])
        .assert()
        .success()
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    let kept = v["disk"]["kept_free_bytes"]
        .as_u64()
        .expect("kept_free_bytes");
    let total = v["disk"]["total_bytes"].as_u64().expect("total_bytes");
    assert_eq!(kept, keibi::chunk::free_space_floor(total), "{v}");
    // Following replication needs a running mount, and prints either a bar or JSON.
    keibi(&home)
        .args(["status", "--watch"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no mount is running"));
    keibi(&home)
        .args(["status", "--watch", "--json"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("cannot be used with"));
    // A bad interval is refused before anything is mounted.
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mountpoint");
    keibi(&home)
        .args(["mount", "--gc-every", "soon"])
        .arg(&mnt)
        .assert()
        .code(2)
        .stderr(predicate::str::contains("--gc-every").and(predicate::str::contains("30s")));
}

#[test]
fn verify_is_clean_then_finds_a_corrupt_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    init_with_data(home);
    keibi(home)
        .arg("verify")
        .assert()
        .code(0)
        .stdout(predicate::str::contains("no problems"));
    {
        let db = RocksBackend::open(&home.join("store"), false).expect("open");
        let mut first = None;
        db.scan(Cf::Chunks, &[], None, &mut |k, v| {
            first = Some((k.to_vec(), v.to_vec()));
            std::ops::ControlFlow::Break(())
        })
        .expect("scan");
        let (k, mut v) = first.expect("a chunk");
        let last = v.len() - 1;
        v[last] ^= 0xff;
        let mut b = Batch::new();
        b.put(Cf::Chunks, k, v);
        db.write(b, Durability::Synced).expect("write");
    }
    keibi(home).arg("verify").assert().code(1).stdout(
        predicate::str::contains("corrupt-chunk").and(predicate::str::contains("what to do")),
    );
    let out = keibi(home)
        .args(["verify", "--json"])
        .assert()
        .code(1)
        .get_output()
        .stdout
        .clone();
    let v: serde_json::Value = serde_json::from_slice(&out).expect("json");
    assert_eq!(v["findings"][0]["kind"], "corrupt-chunk");
    // Repairing needs peers, which only a running mount has: a clear refusal, no change.
    keibi(home)
        .args(["verify", "--repair"])
        .assert()
        .code(2)
        .stderr(predicate::str::contains("no mount").and(predicate::str::contains("--repair")));
    keibi(home).arg("verify").assert().code(1);
}

#[test]
fn verify_reports_damaged_database_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    init_with_data(home);
    RocksBackend::open(&home.join("store"), false)
        .expect("open")
        .flush()
        .expect("flush");
    let mut damaged = 0;
    for e in std::fs::read_dir(home.join("store")).expect("store dir") {
        let p = e.expect("entry").path();
        let ext = p.extension().and_then(|e| e.to_str()).unwrap_or("");
        if ext == "sst" || ext == "blob" {
            let mut bytes = std::fs::read(&p).expect("read");
            let mid = bytes.len() / 3;
            for b in &mut bytes[mid..mid + 64] {
                *b ^= 0x5a;
            }
            std::fs::write(&p, bytes).expect("write");
            damaged += 1;
        }
    }
    assert!(damaged > 0, "no database files to damage");
    let out = keibi(home)
        .arg("verify")
        .assert()
        .code(1)
        .get_output()
        .clone();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("store-damaged") || text.contains("corrupt-chunk"),
        "{text}"
    );
}

#[test]
fn gc_dry_run_prints_the_plan_and_deletes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    init_with_data(home);
    keibi(home)
        .args(["gc", "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("would delete 0 chunks"));
    {
        // Orphan a chunk: store one that no record references.
        let db = std::sync::Arc::new(RocksBackend::open(&home.join("store"), false).expect("open"));
        let store = keibi::home::Home::new(home)
            .open_backend(db)
            .expect("store");
        store.chunks.put(b"an orphan chunk").expect("put");
    }
    keibi(home)
        .args(["gc", "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("would delete 1 chunks"));
    keibi(home)
        .args(["gc", "--dry-run"])
        .assert()
        .success()
        .stdout(predicate::str::contains("would delete 1 chunks"));
    keibi(home)
        .arg("gc")
        .assert()
        .success()
        .stdout(predicate::str::contains("deleted 1 chunks"));
    keibi(home).arg("verify").assert().code(0);
}

#[test]
fn unknown_schema_and_locked_store_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path();
    keibi(home).arg("init").assert().success();
    {
        let _held = RocksBackend::open(&home.join("store"), false).expect("open");
        keibi(home)
            .arg("status")
            .assert()
            .code(2)
            .stderr(predicate::str::contains("in use by another keibi process"));
    }
    {
        let db = RocksBackend::open(&home.join("store"), false).expect("open");
        let mut b = Batch::new();
        b.put(
            Cf::Meta,
            b"schema_version".to_vec(),
            99u32.to_le_bytes().to_vec(),
        );
        db.write(b, Durability::Synced).expect("write");
    }
    keibi(home)
        .arg("status")
        .assert()
        .code(2)
        .stderr(predicate::str::contains("schema version 99"));
}

#[test]
fn stores_of_earlier_schema_versions_are_upgraded_on_open() {
    for earlier in [1u32, 2] {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path();
        init_with_data(home);
        let set = |v: u32| {
            let db = RocksBackend::open(&home.join("store"), false).expect("open");
            let mut b = Batch::new();
            b.put(
                Cf::Meta,
                b"schema_version".to_vec(),
                v.to_le_bytes().to_vec(),
            );
            db.write(b, Durability::Synced).expect("write");
        };
        set(earlier);
        keibi(home).arg("verify").assert().code(0);
        let db = RocksBackend::open(&home.join("store"), false).expect("open");
        let found = db
            .get(Cf::Meta, b"schema_version")
            .expect("get")
            .expect("schema version");
        assert_eq!(
            found,
            keibi::store::SCHEMA_VERSION.to_le_bytes(),
            "version {earlier} is rewritten to the current one"
        );
    }
}
