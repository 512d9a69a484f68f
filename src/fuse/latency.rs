//! `--low-latency`: keep the CPUs out of deep idle while requests are arriving.
//!
//! Every FUSE request is a round trip between the caller, asleep in the kernel, and a worker
//! thread here, and each leg wakes a thread on the other CPU. When that CPU is idle it has
//! halted, and on a virtual machine resuming a halted CPU is an exit to the host: on the
//! 2-core machine of BENCHMARKS.md about as long as the request itself. A program that makes
//! one small request after another (`git checkout`, unpacking an archive) pays it twice per
//! request. A busy-waiting thread does not help: waking a CPU that runs one costs an
//! interrupt, which is the same exit.
//!
//! What helps is the kernel's own polling idle state, which a CPU enters instead of halting
//! while a CPU-latency constraint of 0 is requested (the kernel's power-management quality
//! of service, through `/dev/cpu_dma_latency`; root only). [`LatencyHold`] requests it when
//! a request arrives and withdraws it once none has come for [`HOLD`], so an idle mount
//! costs no extra power. Each request handler calls [`LatencyHold::touch`].

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// The kernel's interface for CPU-latency requests: a request lasts while the file is open,
/// and its value (microseconds, a native-endian `i32`) is replaced by each write.
pub const CPU_LATENCY_DEVICE: &str = "/dev/cpu_dma_latency";

/// How long after the last request the constraint is kept.
pub const HOLD: Duration = Duration::from_millis(100);

/// The value that constrains nothing: the kernel's default CPU latency (2,000 s).
const UNCONSTRAINED_US: i32 = 2_000_000_000;

/// How often the holding thread checks whether requests have stopped.
const CHECK: Duration = Duration::from_millis(25);

struct Shared {
    /// Microseconds since `epoch` of the last request, at least 1; 0 before the first.
    last: AtomicU64,
    /// Whether the constraint is requested now.
    held: AtomicBool,
    /// How many times it has been requested.
    holds: AtomicU64,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
    epoch: Instant,
}

impl Shared {
    fn now_us(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn idle_for(&self) -> Duration {
        match self.last.load(Ordering::SeqCst) {
            0 => Duration::MAX,
            last => Duration::from_micros(self.now_us().saturating_sub(last)),
        }
    }
}

/// The CPU-latency request of a mount and the thread that sets and withdraws it.
pub struct LatencyHold {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl LatencyHold {
    /// Opens [`CPU_LATENCY_DEVICE`] and starts the holding thread; nothing is requested
    /// until the first [`Self::touch`].
    ///
    /// # Errors
    /// The device cannot be opened for writing (not root, or a kernel without the device).
    pub fn start() -> io::Result<Self> {
        let mut device = OpenOptions::new().write(true).open(CPU_LATENCY_DEVICE)?;
        device.write_all(&UNCONSTRAINED_US.to_ne_bytes())?;
        let shared = Arc::new(Shared {
            last: AtomicU64::new(0),
            held: AtomicBool::new(false),
            holds: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
            epoch: Instant::now(),
        });
        let s = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("keibi-latency".into())
            .spawn(move || hold(&s, device))?;
        Ok(Self {
            shared,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Marks a request: the constraint is requested (if it is not already) and kept for
    /// [`HOLD`] from now.
    pub fn touch(&self) {
        let s = &self.shared;
        s.last.store(s.now_us().max(1), Ordering::SeqCst);
        if !s.held.load(Ordering::SeqCst) {
            let _g = s.lock.lock().unwrap_or_else(PoisonError::into_inner);
            s.wake.notify_one();
        }
    }

    /// Whether the constraint is requested now, and how many times it has been.
    #[must_use]
    pub fn state(&self) -> (bool, u64) {
        (
            self.shared.held.load(Ordering::SeqCst),
            self.shared.holds.load(Ordering::SeqCst),
        )
    }

    /// Withdraws the constraint and ends the thread.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        {
            let _g = self
                .shared
                .lock
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.wake.notify_one();
        }
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(t) = thread {
            let _ = t.join();
        }
    }
}

impl Drop for LatencyHold {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Replaces the request's value. A failure is logged, not returned: this thread has no
/// caller, and a request that does not change costs speed or power, never data (the device
/// was writable when the mount started, so it is not expected).
fn set(device: &mut File, us: i32) {
    if let Err(e) = device.write_all(&us.to_ne_bytes()) {
        tracing::warn!(error = %e, "could not change the CPU-latency request");
    }
}

/// The holding thread: waits for a request, constrains, and withdraws after [`HOLD`]
/// without one. Closing the device at the end drops the request altogether.
fn hold(s: &Shared, mut device: File) {
    loop {
        {
            let mut g = s.lock.lock().unwrap_or_else(PoisonError::into_inner);
            while s.idle_for() >= HOLD && !s.stop.load(Ordering::SeqCst) {
                g = s.wake.wait(g).unwrap_or_else(PoisonError::into_inner);
            }
        }
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        set(&mut device, 0);
        s.held.store(true, Ordering::SeqCst);
        s.holds.fetch_add(1, Ordering::SeqCst);
        while s.idle_for() < HOLD && !s.stop.load(Ordering::SeqCst) {
            thread::sleep(CHECK);
        }
        // A request that came after the last check is still recent when the wait above
        // looks, so the constraint is requested again at once.
        s.held.store(false, Ordering::SeqCst);
        set(&mut device, UNCONSTRAINED_US);
    }
}
