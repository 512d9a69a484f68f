//! The control socket: while `keibi mount` runs, `keibi status`, `keibi gc` and `keibi verify`
//! reach its live store through `HOME/control.sock` instead of opening the store (which the
//! mount holds locked).
//!
//! Protocol: the client sends one JSON [`Request`] on one line; the server answers with one
//! JSON [`Response`] on one line and closes. Requests are served one at a time, in order.
//!
//! Tasks: [`Server::start`] spawns one accept thread. Shutdown: [`Server::stop`] (or drop)
//! sets the stop flag, wakes the accept loop with a connection of its own, joins the thread
//! and removes the socket file.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits::{
    CONTROL_ACCEPT_RETRY_MS, CONTROL_REQUEST_BYTES_MAX, CONTROL_REQUEST_TIMEOUT_MS,
};

/// A command for the running mount.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// `keibi status`.
    Status {
        /// Answer as JSON.
        json: bool,
    },
    /// `keibi gc`.
    Gc {
        /// Plan only.
        dry_run: bool,
        /// Answer as JSON.
        json: bool,
    },
    /// `keibi verify`.
    Verify {
        /// Percentage of chunks to re-hash.
        sample_percent: u8,
        /// Answer as JSON.
        json: bool,
        /// Fetch damaged and missing chunks again from peers.
        #[serde(default)]
        repair: bool,
    },
}

/// What the command printed and how it ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The process exit code the command ends with.
    pub exit_code: u8,
    /// Its standard output.
    pub output: String,
}

/// Errors of the control socket.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The socket could not be created, reached, read or written.
    #[error("control socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The other side sent something that is not the protocol.
    #[error("control socket {path}: bad message: {detail}")]
    Protocol {
        /// The socket.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// The socket path in a home directory.
#[must_use]
pub fn socket_path(home: &Path) -> PathBuf {
    home.join("control.sock")
}

/// Sends `req` to the mount running on `home`. `Ok(None)` when no mount is running (no
/// socket, or a stale one left by a mount that was killed).
///
/// # Errors
/// A running mount that fails to answer properly.
pub fn call(home: &Path, req: &Request) -> Result<Option<Response>, Error> {
    let path = socket_path(home);
    let io = |source| Error::Io {
        path: path.clone(),
        source,
    };
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(io(e)),
    };
    let mut line = serde_json::to_string(req).map_err(|e| Error::Protocol {
        path: path.clone(),
        detail: e.to_string(),
    })?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    // No read timeout: a verify of a large store takes as long as it takes.
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer)
        .map(Some)
        .map_err(|e| Error::Protocol {
            path: path.clone(),
            detail: format!("{e} in answer {answer:?}"),
        })
}

/// A handler of requests: runs the command against the live store.
pub type Handler = dyn Fn(Request) -> Response + Send + Sync;

/// The accept thread of a running mount.
pub struct Server {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Listens on `HOME/control.sock` (replacing a stale socket) and serves requests with
    /// `handler` on its own thread.
    ///
    /// # Errors
    /// The socket cannot be created.
    pub fn start(home: &Path, handler: Arc<Handler>) -> Result<Self, Error> {
        let path = socket_path(home);
        let io = |source| Error::Io {
            path: path.clone(),
            source,
        };
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(&path).map_err(io)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("keibi-control".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        return;
                    }
                    match stream {
                        Ok(s) => serve(&s, handler.as_ref()),
                        Err(e) => {
                            // Out of descriptors, say: wait instead of spinning on it.
                            tracing::warn!(error = %e, "control socket accept failed");
                            std::thread::sleep(Duration::from_millis(CONTROL_ACCEPT_RETRY_MS));
                        }
                    }
                }
            })
            .map_err(io)?;
        Ok(Self {
            path,
            stop,
            thread: Some(thread),
        })
    }

    /// Stops serving and removes the socket.
    pub fn stop(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // Wake the accept loop; if it cannot be reached it has ended already.
        let _ = UnixStream::connect(&self.path);
        let _ = thread.join();
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(stream: &UnixStream, handler: &Handler) {
    let timeout = Some(Duration::from_millis(CONTROL_REQUEST_TIMEOUT_MS));
    if stream.set_read_timeout(timeout).is_err() {
        return;
    }
    let mut line = String::new();
    let limited = stream.take(CONTROL_REQUEST_BYTES_MAX as u64);
    let response = match BufReader::new(limited).read_line(&mut line) {
        Ok(0) => return,
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(req) => handler(req),
            Err(e) => Response {
                exit_code: 2,
                output: format!("bad control request: {e}\n"),
            },
        },
        Err(e) => {
            tracing::warn!(error = %e, "control request unreadable");
            return;
        }
    };
    let Ok(mut text) = serde_json::to_string(&response) else {
        return;
    };
    text.push('\n');
    let mut writer = stream;
    if let Err(e) = writer.write_all(text.as_bytes()) {
        tracing::warn!(error = %e, "control answer not delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reaches_the_handler_and_its_answer_comes_back() {
        let home = tempfile::tempdir().expect("tempdir");
        let req = Request::Status { json: true };
        assert_eq!(call(home.path(), &req).expect("no server"), None);
        let handler: Arc<Handler> = Arc::new(|r: Request| Response {
            exit_code: 3,
            output: format!("{r:?}"),
        });
        let mut server = Server::start(home.path(), handler).expect("start");
        let got = call(home.path(), &req).expect("call").expect("served");
        assert_eq!(got.exit_code, 3);
        assert_eq!(got.output, format!("{req:?}"));
        let gc = Request::Gc {
            dry_run: true,
            json: false,
        };
        let got = call(home.path(), &gc).expect("call").expect("served");
        assert_eq!(got.output, format!("{gc:?}"));
        server.stop();
        assert!(!socket_path(home.path()).exists());
        assert_eq!(call(home.path(), &req).expect("stopped"), None);
    }

    #[test]
    fn a_stale_socket_means_no_mount() {
        let home = tempfile::tempdir().expect("tempdir");
        let listener = UnixListener::bind(socket_path(home.path())).expect("bind");
        drop(listener);
        let req = Request::Status { json: false };
        assert_eq!(call(home.path(), &req).expect("stale"), None);
    }

    #[test]
    fn garbage_gets_an_error_answer() {
        let home = tempfile::tempdir().expect("tempdir");
        let handler: Arc<Handler> = Arc::new(|_| Response {
            exit_code: 0,
            output: String::new(),
        });
        let _server = Server::start(home.path(), handler).expect("start");
        let mut s = UnixStream::connect(socket_path(home.path())).expect("connect");
        s.write_all(b"{\"op\":\"format_disk\"}\n").expect("write");
        let mut answer = String::new();
        BufReader::new(s).read_line(&mut answer).expect("read");
        let r: Response = serde_json::from_str(&answer).expect("json");
        assert_eq!(r.exit_code, 2);
        assert!(r.output.contains("bad control request"), "{}", r.output);
    }
}
