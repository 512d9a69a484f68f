#!/usr/bin/env python3
"""keibi beside Syncthing and rsync on loopback.

Four workloads run against each system in turn, from peer A's folder to peer B's:

  new-file  a new 1 GiB file of random bytes is copied into A
  clone     `git clone` of a 600-file, ~50 MiB repository into A
  append    20 bytes appended to the 1 GiB file
  rename    the 1 GiB file renamed

For each: the time from the start of the change on A until B's copy is identical, and the
bytes that crossed the loopback interface meanwhile (both directions, TCP/IP headers
included: /proc/net/dev, so run it on an otherwise idle machine).

"Identical" means the same names, kinds, mode bits and sizes over the whole folder, and the
same contents for what the workload changed (the new file, the clone, the appended or renamed
file; content that did not change is not re-read each time). The poll compares metadata
every 20 ms and contents when metadata agree; A's contents are hashed in a thread
started right after the change, so reading A overlaps the wait instead of adding to it. For append and rename the timed check
reads the last MiB of each file; a full comparison then runs untimed, and a mismatch fails
the benchmark. keibi's B is read through its mount, so reading a chunk that has not arrived
yet fetches it first: the time is until B's mount returns the right bytes.

Syncthing runs two instances with file watchers (1 s delay, its smallest), no discovery,
relays or NAT, dialling each other on 127.0.0.1. rsync runs as a daemon on 127.0.0.1 and is
started right after each change (`rsync -a --delete --fuzzy --delete-delay`), so its time has
no detection delay: it is the best case for rsync.

Usage: tools/bench-peers.py --keibi PATH [--work DIR] [--only keibi,syncthing,rsync]
                            [--size-mib N]   (the large file; 1024 unless told)
                            [--phases]       (when each change ended, when B's metadata matched)
"""

import argparse
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

GIB = 1 << 30
MIB = 1 << 20
POLL_S = 0.02
WORKLOAD_TIMEOUT_S = 900
TAIL_BYTES = MIB
PHASES = False


def lo_bytes():
    """Bytes received on the loopback interface so far (every byte sent on it is received)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == "lo":
                return int(rest.split()[0])
    raise RuntimeError("no loopback interface in /proc/net/dev")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, ok, timeout_s=60):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if ok():
            return
        time.sleep(0.1)
    raise RuntimeError(f"timed out after {timeout_s} s waiting for {what}")


def stop_all(procs, timeout_s):
    """SIGTERM to each process, then SIGKILL to those still running after timeout_s."""
    for p in procs:
        p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def file_hash(path, tail):
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        if tail is not None:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - tail))
        while True:
            block = f.read(4 * MIB)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def tree(root, content, tail=None, only=""):
    """Path -> (kind, mode bits, size[, content hash]) of everything under root; contents
    are hashed for the paths under `only` (a relative path; everything when empty)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != ".stfolder"]
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            rel = os.path.relpath(p, root)
            kind = "dir" if os.path.isdir(p) and not os.path.islink(p) else "file"
            if os.path.islink(p):
                kind = "link:" + os.readlink(p)
            size = st.st_size if kind == "file" else 0
            entry = (kind, st.st_mode & 0o7777, size)
            under = not only or rel == only or rel.startswith(only + os.sep)
            if content and kind == "file" and under:
                try:
                    entry += (file_hash(p, tail),)
                except OSError as e:
                    entry += (f"unreadable: {e}",)
            out[rel] = entry
    return out


def hash_in_thread(a, tail, only):
    """Starts hashing A's contents under `only`; returns (thread, dict it fills)."""
    want = {}
    hasher = threading.Thread(
        target=lambda: want.update(tree(a, content=True, tail=tail, only=only)))
    hasher.start()
    return hasher, want


def wait_identical(a, b, tail, only, hashing=None):
    """Polls until b holds what a holds: metadata of the whole tree, contents of what the
    workload changed (`only`). A's contents are hashed in a thread (`hashing`, started by
    the caller as soon as the change is made) while b is polled for matching metadata, so
    the checker's reading of A overlaps the replication instead of adding to it; b's
    contents are compared once both are ready."""
    want_meta = tree(a, content=False)
    hasher, want = hashing or hash_in_thread(a, tail, only)
    start = time.monotonic()
    meta_at = None
    while time.monotonic() - start < WORKLOAD_TIMEOUT_S:
        if tree(b, content=False) == want_meta:
            meta_at = meta_at or time.monotonic()
            hasher.join()
            if tree(b, content=True, tail=tail, only=only) == want:
                return meta_at
        time.sleep(POLL_S)
    hasher.join()
    raise RuntimeError(f"{b} did not become identical to {a} in {WORKLOAD_TIMEOUT_S} s")


class Keibi:
    name = "keibi"

    def __init__(self, work, binary, mount_args=()):
        self.work, self.bin, self.procs = work, binary, []
        self.mount_args = list(mount_args)

    def run(self, *args, home):
        return subprocess.run(
            [self.bin, *args, "--home", home], check=True, capture_output=True, text=True
        ).stdout

    def start(self):
        w = self.work
        homes = [os.path.join(w, "keibi-home-a"), os.path.join(w, "keibi-home-b")]
        self.mounts = [os.path.join(w, "keibi-a"), os.path.join(w, "keibi-b")]
        self.homes = homes
        ids = []
        for h, m in zip(homes, self.mounts):
            os.makedirs(m)
            self.run("init", home=h)
            ids.append(self.run("id", home=h).strip())
        ports = [free_port(), free_port()]
        for i in (0, 1):
            j = 1 - i
            log = open(os.path.join(w, f"keibi-{'ab'[i]}.log"), "w")
            self.procs.append(
                subprocess.Popen(
                    [self.bin, "mount", self.mounts[i], "--home", homes[i],
                     "--listen", f"127.0.0.1:{ports[i]}",
                     "--peer", f"{ids[j]}@127.0.0.1:{ports[j]}", *self.mount_args],
                    stdout=log, stderr=log,
                )
            )
        for m in self.mounts:
            wait_for(f"mount {m}", lambda m=m: os.path.ismount(m))

        def connected(h):
            s = json.loads(self.run("status", "--json", home=h))
            return all(p["connected_out"] for p in s["replication"]["peers"])

        for h in homes:
            wait_for(f"{h} to connect", lambda h=h: connected(h))
        return self.mounts

    def sync(self):
        pass

    def stop(self):
        stop_all(self.procs, 60)
        for m in self.mounts:
            subprocess.run(["fusermount3", "-u", "-z", m], capture_output=True)


class Syncthing:
    name = "syncthing"

    def __init__(self, work):
        self.work, self.procs = work, []

    def start(self):
        w = self.work
        self.homes = [os.path.join(w, "st-home-a"), os.path.join(w, "st-home-b")]
        self.dirs = [os.path.join(w, "st-a"), os.path.join(w, "st-b")]
        ids = []
        for h, d in zip(self.homes, self.dirs):
            os.makedirs(os.path.join(d, ".stfolder"))
            subprocess.run(["syncthing", "generate", f"--home={h}", "--no-default-folder"],
                           check=True, capture_output=True)
            ids.append(subprocess.run(["syncthing", "serve", f"--home={h}", "--device-id"],
                                      check=True, capture_output=True, text=True).stdout.strip())
        ports = [free_port(), free_port()]
        self.gui = [free_port(), free_port()]
        self.key = "keibi-bench-api-key"
        for i in (0, 1):
            j = 1 - i
            config = f"""<configuration version="36">
  <folder id="bench" label="bench" path="{self.dirs[i]}" type="sendreceive"
      rescanIntervalS="3600" fsWatcherEnabled="true" fsWatcherDelayS="1" ignorePerms="false">
    <device id="{ids[i]}"></device>
    <device id="{ids[j]}"></device>
  </folder>
  <device id="{ids[i]}" name="{'ab'[i]}" compression="metadata"><address>dynamic</address></device>
  <device id="{ids[j]}" name="{'ab'[j]}" compression="metadata">
    <address>tcp://127.0.0.1:{ports[j]}</address>
  </device>
  <gui enabled="true" tls="false">
    <address>127.0.0.1:{self.gui[i]}</address><apikey>{self.key}</apikey>
  </gui>
  <options>
    <listenAddress>tcp://127.0.0.1:{ports[i]}</listenAddress>
    <globalAnnounceEnabled>false</globalAnnounceEnabled>
    <localAnnounceEnabled>false</localAnnounceEnabled>
    <relaysEnabled>false</relaysEnabled>
    <natEnabled>false</natEnabled>
    <urAccepted>-1</urAccepted>
    <autoUpgradeIntervalH>0</autoUpgradeIntervalH>
    <crashReportingEnabled>false</crashReportingEnabled>
    <startBrowser>false</startBrowser>
    <setLowPriority>false</setLowPriority>
  </options>
</configuration>
"""
            with open(os.path.join(self.homes[i], "config.xml"), "w") as f:
                f.write(config)
        for i in (0, 1):
            log = open(os.path.join(w, f"syncthing-{'ab'[i]}.log"), "w")
            self.procs.append(subprocess.Popen(
                ["syncthing", "serve", f"--home={self.homes[i]}", "--no-browser",
                 "--no-restart", "--no-upgrade"],
                stdout=log, stderr=log, env={**os.environ, "STNOUPGRADE": "1"},
            ))
        for i in (0, 1):
            wait_for(f"syncthing {'ab'[i]} to connect", lambda i=i: self.connected(i), 120)
        # A first file through the folder: both sides have scanned and agree.
        with open(os.path.join(self.dirs[0], "ready"), "w") as f:
            f.write("ready\n")
        wait_for("syncthing's first file",
                 lambda: os.path.exists(os.path.join(self.dirs[1], "ready")), 120)
        os.remove(os.path.join(self.dirs[0], "ready"))
        wait_for("syncthing's first removal",
                 lambda: not os.path.exists(os.path.join(self.dirs[1], "ready")), 120)
        return self.dirs

    def connected(self, i):
        req = urllib.request.Request(f"http://127.0.0.1:{self.gui[i]}/rest/system/connections",
                                     headers={"X-API-Key": self.key})
        try:
            with urllib.request.urlopen(req, timeout=2) as r:
                conns = json.load(r)["connections"]
        except OSError:
            return False
        return any(c.get("connected") for c in conns.values())

    def sync(self):
        pass

    def stop(self):
        stop_all(self.procs, 30)


class Rsync:
    name = "rsync"

    def __init__(self, work):
        self.work, self.proc = work, None

    def start(self):
        w = self.work
        self.dirs = [os.path.join(w, "rsync-a"), os.path.join(w, "rsync-b")]
        for d in self.dirs:
            os.makedirs(d)
        self.port = free_port()
        conf = os.path.join(w, "rsyncd.conf")
        with open(conf, "w") as f:
            f.write(f"use chroot = no\nuid = root\ngid = root\n[b]\npath = {self.dirs[1]}\n"
                    "read only = no\n")
        self.proc = subprocess.Popen(["rsync", "--daemon", "--no-detach", f"--config={conf}",
                                      f"--port={self.port}", "--address=127.0.0.1"])

        def up():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for("rsync daemon", up)
        return self.dirs

    def sync(self):
        subprocess.run(["rsync", "-a", "--delete", "--fuzzy", "--delete-delay",
                        f"{self.dirs[0]}/", f"rsync://127.0.0.1:{self.port}/b/"], check=True)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)


def make_sources(work, size):
    src = os.path.join(work, "src")
    os.makedirs(src)
    big = os.path.join(src, "big.bin")
    with open(big, "wb") as f:
        for _ in range(size // (8 * MIB)):
            f.write(os.urandom(8 * MIB))
    repo = os.path.join(src, "repo")
    os.makedirs(repo)
    env = {**os.environ, "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@keibi.invalid",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@keibi.invalid"}
    subprocess.run(["git", "init", "-q", "-b", "main", repo], check=True, env=env)
    # 600 files, ~50 MiB in all: mostly text-like small files and a few larger binaries.
    for d in range(20):
        os.makedirs(os.path.join(repo, f"dir{d}"))
        for n in range(30):
            size = 3 * MIB if (d, n) in ((0, 0), (5, 5), (10, 10), (15, 15)) else 64 * 1024
            with open(os.path.join(repo, f"dir{d}", f"file{n}"), "wb") as f:
                f.write(os.urandom(size))
    subprocess.run(["git", "-C", repo, "add", "."], check=True, env=env)
    subprocess.run(["git", "-C", repo, "commit", "-q", "-m", "600 files"], check=True, env=env)
    return big, repo


def run_system(system, big, repo):
    # Each system starts on a quiet disk: nothing left to write back from the sources or
    # from the system before it.
    os.sync()
    time.sleep(2)
    a, b = system.start()
    results = []
    try:
        def measure(name, change, only, tail):
            before = lo_bytes()
            start = time.monotonic()
            change()
            hashing = hash_in_thread(a, tail, only)
            system.sync()
            changed = time.monotonic()
            meta_at = wait_identical(a, b, tail, only, hashing)
            elapsed = time.monotonic() - start
            if PHASES:
                print(f"    change done {changed - start:.2f} s, B's metadata matched "
                      f"{meta_at - start:.2f} s, contents {elapsed:.2f} s", flush=True)
            wire = lo_bytes() - before
            if tail is not None:
                wait_identical(a, b, None, only)
            results.append((name, elapsed, wire))
            print(f"  {system.name:9} {name:8} {elapsed:8.2f} s {wire / MIB:10.1f} MiB",
                  flush=True)
            time.sleep(3)

        measure("new-file", lambda: shutil.copyfile(big, os.path.join(a, "big.bin")),
                "big.bin", None)
        measure("clone", lambda: subprocess.run(
            ["git", "clone", "-q", f"file://{repo}", os.path.join(a, "repo")], check=True),
            "repo", None)

        def append():
            with open(os.path.join(a, "big.bin"), "ab") as f:
                f.write(b"0123456789abcdefghij")

        measure("append", append, "big.bin", TAIL_BYTES)
        measure("rename", lambda: os.rename(os.path.join(a, "big.bin"),
                                            os.path.join(a, "big-renamed.bin")),
                "big-renamed.bin", TAIL_BYTES)
    finally:
        system.stop()
    return results


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keibi", required=True, help="path of the keibi binary")
    ap.add_argument("--work", default="/var/tmp", help="directory for the run (on a disk)")
    ap.add_argument("--only", default="keibi,syncthing,rsync")
    ap.add_argument("--low-latency", action="store_true",
                    help="mount keibi's peers with `keibi mount --low-latency`")
    ap.add_argument("--size-mib", type=int, default=GIB // MIB, help="size of the large file")
    ap.add_argument("--phases", action="store_true",
                    help="also print when each change finished and when B's metadata matched")
    args = ap.parse_args()
    global PHASES
    PHASES = args.phases
    work = tempfile.mkdtemp(prefix="keibi-bench-peers.", dir=args.work)
    try:
        print(f"sources in {work} ({args.size_mib} MiB random file, 600-file repository)",
              flush=True)
        big, repo = make_sources(work, args.size_mib * MIB)
        table = {}
        for name in args.only.split(","):
            keibi_args = ["--low-latency"] if args.low_latency else []
            system = {"keibi": lambda: Keibi(work, args.keibi, keibi_args),
                      "syncthing": lambda: Syncthing(work),
                      "rsync": lambda: Rsync(work)}[name]()
            table[name] = run_system(system, big, repo)
        print()
        names = list(table)
        print("| workload | " + " | ".join(f"{n} s | {n} MiB" for n in names) + " |")
        print("|---" * (1 + 2 * len(names)) + "|")
        for i, w in enumerate(("new-file", "clone", "append", "rename")):
            cells = []
            for n in names:
                _, t, b = table[n][i]
                cells += [f"{t:.2f}", f"{b / MIB:.1f}"]
            print(f"| {w} | " + " | ".join(cells) + " |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
