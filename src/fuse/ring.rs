//! FUSE over io_uring: the transport only. It moves opaque request and reply bytes between the
//! kernel's per-CPU request queues (fs/fuse/dev_uring.c, Linux 6.14+) and a [`Handler`]; it
//! decodes nothing but the `unique` of a request.
//!
//! The kernel has one queue per possible CPU and queues a request on the queue of the CPU its
//! requester runs on. [`start`] runs one thread per queue, pinned to that CPU (`strata-ring-N`),
//! with its own io_uring: a request and its reply then never cross CPUs, no wake-up IPI.
//!
//! Life of a queue thread:
//! 1. probe the connection until its INIT reply has been processed (the kernel answers EAGAIN
//!    until then) or give up, logging `io_uring: not used: ...` at info level;
//! 2. register its entries (REGISTER); the kernel sends every request but INIT, FORGET,
//!    BATCH_FORGET and INTERRUPT (those stay on `/dev/fuse`) over the ring once every queue has
//!    an entry;
//! 3. loop: a completion brings a request, the [`Handler`] gets it as a [`Request`], and its
//!    reply goes back with COMMIT_AND_FETCH, which also waits for the next request. Replies made
//!    on the queue thread (inside `handle`) ride on the same `io_uring_enter` as the wait for
//!    the next completion: one system call per request. Replies from other threads are queued
//!    and the queue thread is woken by an eventfd it keeps a read armed on;
//! 4. at unmount (or abort) the kernel completes every waiting entry with -ENOTCONN and fails
//!    the commit of every entry that was with us; when all its entries are done, the thread
//!    ends.
//!
//! The io_uring and the memory the kernel writes live in [`super::ring_sys`].

use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, mpsc};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};

use super::ring_sys::{CmdKind, Completion, EntryBufs, HEADER_SIZE, Uring};

/// Serves the requests that come over the ring.
pub trait Handler: Send + Sync + 'static {
    /// Called on a queue thread for each request. Must lead to exactly one [`Request::reply`],
    /// now (on this thread: the common case, cheapest) or later from any thread (slow requests
    /// are handed to a worker pool with the `Request` moved along). A `Request` dropped without
    /// a reply answers EIO.
    fn handle(&self, req: Request);
}

/// Sizes of the ring.
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// Ring entries of each queue: how many requests of one CPU can be with the handler at once
    /// (more wait in the kernel).
    pub entries_per_queue: usize,
    /// Bytes of each entry's payload buffer. The kernel refuses a buffer smaller than
    /// max(8 KiB, max_write, max_pages * page size) of the connection (its INIT reply).
    pub payload_size: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            entries_per_queue: 8,
            payload_size: 1 << 20,
        }
    }
}

const _: () = {
    const fn send<T: Send>() {}
    send::<Request>();
};

/// Bytes of `struct fuse_in_header`.
pub const IN_HEADER_SIZE: usize = 40;
/// Bytes of the `op_in` area (the op's fixed argument struct, zero-padded).
pub const OP_SIZE: usize = 128;
/// Bytes of `struct fuse_out_header`.
const OUT_HEADER_SIZE: usize = 16;
/// Offsets in the entry header: `op_in`, then `fuse_uring_ent_in_out`'s `payload_sz`.
const OP_OFFSET: usize = 128;
const ENT_IN_OUT_OFFSET: usize = 256;
const PAYLOAD_SZ_OFFSET: usize = ENT_IN_OUT_OFFSET + 16;
/// The kernel's smallest payload buffer (FUSE_MIN_READ_BUFFER).
const MIN_PAYLOAD: usize = 8192;
/// How long a queue thread waits for the connection's INIT reply to be processed.
const INIT_WAIT: Duration = Duration::from_secs(10);
/// An errno the kernel accepts in a reply is below ERESTARTSYS (512).
const MAX_ERRNO: i32 = 512;

/// One request from the ring. It owns its ring entry (header and payload buffers) until it is
/// replied to; dropped without a reply, it answers EIO.
pub struct Request {
    queue: Arc<QueueShared>,
    index: usize,
    unique: u64,
    payload_len: usize,
    /// `None` once replied.
    bufs: Option<EntryBufs>,
}

impl Request {
    fn bufs(&self) -> &EntryBufs {
        self.bufs
            .as_ref()
            .expect("a request holds its entry until replied")
    }

    /// The request's `struct fuse_in_header` (40 bytes: len, opcode, unique, nodeid, uid, gid,
    /// pid, total_extlen, padding).
    pub fn in_header(&self) -> &[u8] {
        &self.bufs().header()[..IN_HEADER_SIZE]
    }

    /// The op's fixed argument struct (`in_args[0]`, e.g. `fuse_getattr_in`), zero-padded to
    /// 128 bytes; all zeros for ops without one (LOOKUP).
    pub fn op(&self) -> &[u8] {
        &self.bufs().header()[OP_OFFSET..OP_OFFSET + OP_SIZE]
    }

    /// The rest of the arguments (names, write data), `payload_sz` bytes.
    pub fn payload(&self) -> &[u8] {
        &self.bufs().payload()[..self.payload_len]
    }

    /// The request's `unique`.
    pub fn unique(&self) -> u64 {
        self.unique
    }

    /// The request's opcode (`fuse_in_header.opcode`).
    pub fn opcode(&self) -> u32 {
        let h = self.in_header();
        u32::from_ne_bytes([h[4], h[5], h[6], h[7]])
    }

    /// The queue (CPU) the request came on.
    pub fn queue(&self) -> u16 {
        self.queue.qid
    }

    /// Sends the reply: `error` 0 or a positive errno; `parts` concatenated form the reply's
    /// payload, the bytes after `fuse_out_header` in the classic protocol (ignored when
    /// `error` != 0). A payload larger than the entry's buffer, or an errno out of range,
    /// answers EIO instead (logged).
    pub fn reply(mut self, error: i32, parts: &[&[u8]]) {
        self.send(error, parts);
    }

    fn send(&mut self, error: i32, parts: &[&[u8]]) {
        let Some(mut bufs) = self.bufs.take() else {
            return;
        };
        let opcode = {
            let h = bufs.header();
            u32::from_ne_bytes([h[4], h[5], h[6], h[7]])
        };
        let mut errno = error;
        if !(0..MAX_ERRNO).contains(&errno) {
            log::error!(
                "io_uring: reply to request {} (opcode {opcode}) with errno {error}: EIO instead",
                self.unique
            );
            errno = libc::EIO;
        }
        let mut len = 0;
        if errno == 0 {
            let total: usize = parts.iter().map(|p| p.len()).sum();
            let payload = bufs.payload_mut();
            if total > payload.len() {
                log::error!(
                    "io_uring: reply of {total} bytes to request {} (opcode {opcode}) exceeds the \
                     {}-byte payload buffer: EIO instead",
                    self.unique,
                    payload.len()
                );
                errno = libc::EIO;
            } else {
                for p in parts {
                    payload[len..len + p.len()].copy_from_slice(p);
                    len += p.len();
                }
            }
        }
        let h = bufs.header_mut();
        h[0..4].copy_from_slice(&((OUT_HEADER_SIZE + len) as u32).to_ne_bytes());
        h[4..8].copy_from_slice(&(-errno).to_ne_bytes());
        h[8..16].copy_from_slice(&self.unique.to_ne_bytes());
        // ring_ent_in_out: payload_sz; padding and reserved zero.
        h[PAYLOAD_SZ_OFFSET..PAYLOAD_SZ_OFFSET + 4].copy_from_slice(&(len as u32).to_ne_bytes());
        h[PAYLOAD_SZ_OFFSET + 4..HEADER_SIZE].fill(0);
        give_back(
            &self.queue,
            Returned {
                index: self.index,
                commit_id: self.unique,
                bufs,
            },
        );
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.bufs.is_some() {
            log::warn!(
                "io_uring: request {} (opcode {}) dropped without a reply: EIO",
                self.unique,
                self.opcode()
            );
            self.send(libc::EIO, &[]);
        }
    }
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("queue", &self.queue.qid)
            .field("unique", &self.unique)
            .field("payload_len", &self.payload_len)
            .finish()
    }
}

/// A replied entry on its way back to its queue thread.
struct Returned {
    index: usize,
    commit_id: u64,
    bufs: EntryBufs,
}

/// What a queue shares with the requests it handed out.
struct QueueShared {
    qid: u16,
    /// Entries replied to from other threads.
    remote: Mutex<Remote>,
    /// Written (1) by the first of a batch of remote replies; the queue thread reads it.
    wake: EventFd,
    /// Requests delivered.
    requests: AtomicU64,
}

#[derive(Default)]
struct Remote {
    returned: Vec<Returned>,
    /// The queue thread is gone: nothing will take replies any more.
    closed: bool,
}

impl QueueShared {
    fn remote(&self) -> MutexGuard<'_, Remote> {
        self.remote.lock().unwrap_or_else(|e| e.into_inner())
    }
}

thread_local! {
    /// On a queue thread: the address of its `QueueShared`.
    static LOCAL_QUEUE: Cell<usize> = const { Cell::new(0) };
    /// On a queue thread: entries replied to on it, committed with its next submission.
    static LOCAL_RETURNED: RefCell<Vec<Returned>> = const { RefCell::new(Vec::new()) };
}

fn give_back(queue: &Arc<QueueShared>, r: Returned) {
    let here = LOCAL_QUEUE.try_with(Cell::get).unwrap_or(0);
    if here == Arc::as_ptr(queue) as usize {
        LOCAL_RETURNED.with(|v| v.borrow_mut().push(r));
        return;
    }
    let mut remote = queue.remote();
    if remote.closed {
        log::error!(
            "io_uring: reply to request {} after its queue thread {} ended",
            r.commit_id,
            queue.qid
        );
        return;
    }
    let first = remote.returned.is_empty();
    remote.returned.push(r);
    drop(remote);
    if first && let Err(e) = queue.wake.write(1) {
        log::error!("io_uring: waking queue {}: {e}", queue.qid);
    }
}

/// The state of the ring, shared by its threads and the [`Ring`] handle.
struct RingShared {
    state: Mutex<RingState>,
    changed: Condvar,
}

struct RingState {
    queues: usize,
    /// Queues with at least one registered entry.
    registered: usize,
    /// Queue threads that ended.
    ended: usize,
    /// Why the ring is not used, when it is not.
    failure: Option<String>,
}

impl RingShared {
    fn state(&self) -> MutexGuard<'_, RingState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn update(&self, f: impl FnOnce(&mut RingState)) {
        f(&mut self.state());
        self.changed.notify_all();
    }

    /// Records the first reason the ring is not used, and logs it.
    fn fail(&self, why: String) {
        self.update(|s| {
            if s.failure.is_none() {
                log::info!("io_uring: not used: {why}");
                s.failure = Some(why);
            }
        });
    }

    fn wait_for(&self, timeout: Duration, done: impl Fn(&RingState) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.state();
        loop {
            if done(&s) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .changed
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

impl RingState {
    fn active(&self) -> bool {
        self.registered == self.queues && self.failure.is_none() && self.ended == 0
    }
}

/// The handle of a started ring. Dropping it changes nothing: the queue threads serve until
/// the connection ends (unmount, abort).
pub struct Ring {
    shared: Arc<RingShared>,
    queues: Vec<Arc<QueueShared>>,
}

impl Ring {
    /// Whether every queue has registered its entries (the kernel sends requests over the
    /// ring) and none has ended yet.
    pub fn active(&self) -> bool {
        self.shared.state().active()
    }

    /// Waits until the ring is active (true), or failed, ended or `timeout` passed (false).
    pub fn wait_active(&self, timeout: Duration) -> bool {
        self.shared.wait_for(timeout, |s| {
            s.active() || s.failure.is_some() || s.ended > 0
        });
        self.active()
    }

    /// Why the ring is not used (registration failed or was given up), if so.
    pub fn failure(&self) -> Option<String> {
        self.shared.state().failure.clone()
    }

    /// Number of queues (possible CPUs).
    pub fn queues(&self) -> usize {
        self.queues.len()
    }

    /// Requests delivered to the handler so far, all queues.
    pub fn requests(&self) -> u64 {
        self.queues
            .iter()
            .map(|q| q.requests.load(Ordering::Relaxed))
            .sum()
    }

    /// Whether every queue thread has ended.
    pub fn stopped(&self) -> bool {
        let s = self.shared.state();
        s.ended == s.queues
    }

    /// Waits until every queue thread has ended (true) or `timeout` passed (false).
    pub fn wait_stopped(&self, timeout: Duration) -> bool {
        self.shared.wait_for(timeout, |s| s.ended == s.queues)
    }
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.shared.state();
        f.debug_struct("Ring")
            .field("queues", &s.queues)
            .field("registered", &s.registered)
            .field("ended", &s.ended)
            .field("failure", &s.failure)
            .finish()
    }
}

/// Starts the ring threads (one per possible CPU, pinned to it) on a dup of `dev`, the
/// `/dev/fuse` descriptor of a connection whose INIT is being answered, and returns as soon as
/// each thread has its io_uring and (lazily mapped) buffers, well under a millisecond. Registration happens in the threads (waiting for the
/// INIT reply to be processed); if it fails, they log at info level why
/// (`io_uring: not used: ...`) and end, and requests keep going over `/dev/fuse`.
///
/// Call it before answering INIT, and put FUSE_OVER_IO_URING in the reply only when it returned
/// `Ok`: with that flag the kernel holds every request until the ring is ready or a
/// registration failed, so a ring that never registers would hang the mount. An `Err` means
/// nothing was registered.
pub fn start(dev: BorrowedFd<'_>, cfg: RingConfig, handler: Arc<dyn Handler>) -> io::Result<Ring> {
    if cfg.entries_per_queue == 0 || cfg.entries_per_queue > 4096 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("io_uring: {} entries per queue", cfg.entries_per_queue),
        ));
    }
    if cfg.payload_size < MIN_PAYLOAD || u32::try_from(cfg.payload_size).is_err() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("io_uring: a payload buffer of {} bytes", cfg.payload_size),
        ));
    }
    let possible = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    let nqueues = parse_cpu_list(&possible)
        .map(|cpus| cpus.len())
        .filter(|&n| n > 0 && n <= usize::from(u16::MAX))
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("possible CPUs {:?}", possible.trim()),
            )
        })?;
    let dev = Arc::new(dev.try_clone_to_owned()?);
    let shared = Arc::new(RingShared {
        state: Mutex::new(RingState {
            queues: nqueues,
            registered: 0,
            ended: 0,
            failure: None,
        }),
        changed: Condvar::new(),
    });
    let (ready_tx, ready_rx) = mpsc::channel::<io::Result<Arc<QueueShared>>>();
    let mut go = Vec::new();
    let mut spawn_err = None;
    for qid in 0..nqueues as u16 {
        let (go_tx, go_rx) = mpsc::channel::<bool>();
        let (dev, handler, ring, ready_tx) = (
            dev.clone(),
            handler.clone(),
            shared.clone(),
            ready_tx.clone(),
        );
        let cfg = cfg.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("strata-ring-{qid}"))
            .spawn(move || {
                // Counts the thread as ended when it ends, however (after its ring is dropped).
                let _ended = Ended(ring.clone());
                let queue = match Queue::new(qid, &dev, &cfg, handler, ring) {
                    Ok(q) => {
                        let _ = ready_tx.send(Ok(q.shared.clone()));
                        q
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                drop(ready_tx);
                if go_rx.recv() == Ok(true) {
                    queue.run(dev);
                } else {
                    queue.end();
                }
            });
        match spawned {
            Ok(_) => go.push(go_tx),
            Err(e) => {
                spawn_err = Some(e);
                shared.update(|s| s.ended += nqueues - qid as usize);
                break;
            }
        }
    }
    drop(ready_tx);
    let mut queues = Vec::new();
    let mut err = spawn_err;
    for _ in 0..go.len() {
        match ready_rx.recv() {
            Ok(Ok(q)) => queues.push(q),
            Ok(Err(e)) => err = err.or(Some(e)),
            Err(_) => break,
        }
    }
    if queues.len() < nqueues && err.is_none() {
        err = Some(io::Error::other("a ring thread ended during its setup"));
    }
    if let Some(e) = err {
        for g in go {
            let _ = g.send(false);
        }
        let why = format!("setting up the ring: {e}");
        shared.fail(why);
        return Err(e);
    }
    for g in go {
        let _ = g.send(true);
    }
    queues.sort_by_key(|q| q.qid);
    Ok(Ring { shared, queues })
}

/// One queue, owned by its thread.
struct Queue {
    qid: u16,
    uring: Uring,
    shared: Arc<QueueShared>,
    ring: Arc<RingShared>,
    handler: Arc<dyn Handler>,
    /// The entries' buffers before registration.
    unregistered: Vec<EntryBufs>,
    payload_size: usize,
    /// When the thread began to wait for the connection.
    started: Instant,
    /// Entries not finished (registered and in the kernel, or with a `Request`).
    live: usize,
}

impl Queue {
    /// Pins the thread to CPU `qid` and sets up the queue's io_uring and buffers.
    fn new(
        qid: u16,
        dev: &OwnedFd,
        cfg: &RingConfig,
        handler: Arc<dyn Handler>,
        ring: Arc<RingShared>,
    ) -> io::Result<Queue> {
        pin_to_cpu(usize::from(qid));
        let wake = EventFd::from_flags(EfdFlags::EFD_CLOEXEC)?;
        let uring = Uring::new(dev.as_fd(), wake.as_fd(), cfg.entries_per_queue)?;
        let unregistered = (0..cfg.entries_per_queue)
            .map(|_| EntryBufs::new(cfg.payload_size))
            .collect::<io::Result<Vec<_>>>()?;
        let shared = Arc::new(QueueShared {
            qid,
            remote: Mutex::new(Remote::default()),
            wake,
            requests: AtomicU64::new(0),
        });
        Ok(Queue {
            qid,
            uring,
            shared,
            ring,
            handler,
            unregistered,
            payload_size: cfg.payload_size,
            started: Instant::now(),
            live: 0,
        })
    }

    /// The thread's work: registration, then requests until every entry is finished.
    fn run(mut self, _dev: Arc<OwnedFd>) {
        LOCAL_QUEUE.with(|c| c.set(Arc::as_ptr(&self.shared) as usize));
        match self.register() {
            Ok(()) => self.serve(),
            Err(why) => self.ring.fail(why),
        }
        self.end();
    }

    /// Waits for the connection to be ready, then registers the entries. On failure, no entry
    /// is left registered and the reason is returned.
    fn register(&mut self) -> Result<(), String> {
        self.started = Instant::now();
        let started = self.started;
        // Short pauses first: the INIT answer is usually processed within a millisecond, and
        // requests wait for the ring once it has been asked for.
        let mut pause = Duration::from_micros(100);
        let mut probes = 0;
        loop {
            let res = self.probe().map_err(|e| format!("io_uring: {e}"))?;
            probes += 1;
            match -res {
                libc::EINVAL => {
                    log::debug!(
                        "io_uring: queue {}: connection ready after {probes} probes, {:?}",
                        self.qid,
                        started.elapsed()
                    );
                    break;
                }
                libc::EAGAIN if started.elapsed() < INIT_WAIT => {
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(Duration::from_millis(50));
                }
                libc::EAGAIN => {
                    return Err(format!(
                        "the connection's INIT was not answered within {INIT_WAIT:?}"
                    ));
                }
                libc::EOPNOTSUPP => {
                    return Err("the kernel has it disabled (fuse module parameter \
                                enable_uring=N, or FUSE_OVER_IO_URING not negotiated)"
                        .into());
                }
                libc::ENOTCONN | libc::ECONNABORTED | libc::ENODEV => {
                    return Err("the connection ended before registration".into());
                }
                e => {
                    return Err(format!(
                        "probing /dev/fuse: {}",
                        io::Error::from_raw_os_error(e)
                    ));
                }
            }
        }
        let entries = std::mem::take(&mut self.unregistered);
        let n = entries.len();
        for (index, bufs) in entries.into_iter().enumerate() {
            self.uring
                .register(index, self.qid, bufs)
                .map_err(|e| format!("queueing a registration: {e}"))?;
            self.live += 1;
        }
        self.uring
            .arm_wake()
            .map_err(|e| format!("queueing the eventfd read: {e}"))?;
        // REGISTER is done inline: its failures complete within this call, a success leaves the
        // command waiting for a request. (EAGAIN, which would come later from an io-wq retry,
        // is retried by `entry_failed`.)
        self.uring
            .submit_and_wait(0)
            .map_err(|e| format!("submitting the registrations: {e}"))?;
        let mut first_err = None;
        let mut failed = 0;
        while let Some(c) = self.uring.pop() {
            if let Completion::Entry {
                kind: CmdKind::Register,
                res,
                ..
            } = &c
                && *res < 0
                && *res != -libc::EAGAIN
            {
                failed += 1;
                first_err.get_or_insert(-*res);
            }
            self.process(c);
        }
        if failed == n {
            let errno = first_err.unwrap_or(libc::EIO);
            let e = io::Error::from_raw_os_error(errno);
            let hint = if errno == libc::EINVAL {
                format!(
                    " (is the {}-byte payload buffer smaller than the connection's max_write \
                     or max_pages?)",
                    self.payload_size
                )
            } else {
                String::new()
            };
            return Err(format!("REGISTER of queue {}: {e}{hint}", self.qid));
        }
        if let Some(e) = first_err {
            log::warn!(
                "io_uring: queue {}: {failed} of {n} entries failed to register: {}",
                self.qid,
                io::Error::from_raw_os_error(e)
            );
        }
        log::debug!(
            "io_uring: queue {}: {} entries registered",
            self.qid,
            n - failed
        );
        self.ring.update(|s| s.registered += 1);
        Ok(())
    }

    /// One probe of the connection: its result (-EINVAL when REGISTER can work).
    fn probe(&mut self) -> io::Result<i32> {
        self.uring.probe(self.qid)?;
        loop {
            self.submit_and_wait(1)?;
            while let Some(c) = self.uring.pop() {
                if let Completion::Probe { res } = c {
                    return Ok(res);
                }
            }
        }
    }

    fn submit_and_wait(&mut self, want: usize) -> io::Result<()> {
        loop {
            match self.uring.submit_and_wait(want) {
                Ok(_) => return Ok(()),
                Err(e)
                    if matches!(
                        e.raw_os_error(),
                        Some(libc::EINTR | libc::EAGAIN | libc::EBUSY)
                    ) =>
                {
                    // Interrupted, or short of resources with completions to reap: the caller
                    // reaps and comes back.
                    if e.raw_os_error() != Some(libc::EINTR) {
                        return Ok(());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Serves requests until every entry is finished.
    ///
    /// Replies are handed to the kernel under `SCHED_IDLE`, then the thread waits for the next
    /// request under its normal policy. A reply wakes its requester, and the scheduler puts a
    /// woken task on an idle CPU rather than on a busy one: with this thread still running,
    /// the requester went to the other CPU, its next request to that CPU's queue, and every
    /// round trip paid for waking an idle CPU (on this VM, creating 10,000 files on a tmpfs
    /// took 1.47-1.79 s that way, 0.51-0.56 s with this; the requester pinned: 0.57 s). A CPU
    /// that runs only `SCHED_IDLE` tasks counts as idle, so the requester stays here and runs
    /// at once. The thread is `SCHED_IDLE` only for that one system call: kept so, it starved
    /// under load (removing 3,000 files next to 8 busy loops: 1.60 s against 0.18-0.30 s).
    fn serve(&mut self) {
        let mut yielding = true;
        loop {
            self.commit_local();
            if self.live == 0 {
                break;
            }
            if yielding && self.uring.has_queued() {
                if let Err(e) = crate::sys::set_thread_idle(true) {
                    log::debug!("io_uring: queue {}: no SCHED_IDLE ({e})", self.qid);
                    yielding = false;
                } else {
                    let submitted = self.uring.submit();
                    let _ = crate::sys::set_thread_idle(false);
                    if let Err(e) = submitted {
                        log::debug!("io_uring: queue {}: submitting replies: {e}", self.qid);
                    }
                }
            }
            if let Err(e) = self.submit_and_wait(1) {
                log::error!("io_uring: queue {}: io_uring_enter: {e}", self.qid);
                break;
            }
            while let Some(c) = self.uring.pop() {
                self.process(c);
            }
        }
        log::debug!("io_uring: queue {}: all entries finished", self.qid);
    }

    fn process(&mut self, c: Completion) {
        match c {
            Completion::Entry {
                index,
                res: 0,
                bufs,
                ..
            } => self.dispatch(index, bufs),
            Completion::Entry {
                index,
                kind,
                res,
                bufs,
            } => self.entry_failed(index, kind, -res, bufs),
            Completion::Wake { res } => {
                let returned = std::mem::take(&mut self.shared.remote().returned);
                for r in returned {
                    self.commit(r);
                }
                if res >= 0
                    && let Err(e) = self.uring.arm_wake()
                {
                    log::error!(
                        "io_uring: queue {}: re-arming the eventfd read: {e}",
                        self.qid
                    );
                }
            }
            Completion::Probe { .. } | Completion::Cancel => {}
        }
    }

    fn dispatch(&mut self, index: usize, bufs: EntryBufs) {
        let h = bufs.header();
        let unique = u64::from_ne_bytes(h[8..16].try_into().expect("8 bytes"));
        let payload_sz = u32::from_ne_bytes(
            h[PAYLOAD_SZ_OFFSET..PAYLOAD_SZ_OFFSET + 4]
                .try_into()
                .expect("4 bytes"),
        );
        let payload_len = (payload_sz as usize).min(bufs.payload().len());
        self.shared.requests.fetch_add(1, Ordering::Relaxed);
        let req = Request {
            queue: self.shared.clone(),
            index,
            unique,
            payload_len,
            bufs: Some(bufs),
        };
        let handler = &self.handler;
        if std::panic::catch_unwind(AssertUnwindSafe(|| handler.handle(req))).is_err() {
            log::error!("io_uring: queue {}: the handler panicked", self.qid);
        }
    }

    fn entry_failed(&mut self, index: usize, kind: CmdKind, errno: i32, bufs: EntryBufs) {
        let teardown = matches!(
            errno,
            libc::ENOTCONN | libc::ECONNABORTED | libc::ECANCELED | libc::ENODEV
        );
        if kind == CmdKind::Register && errno == libc::EAGAIN && self.started.elapsed() < INIT_WAIT
        {
            // Not after a successful probe with this kernel; should INIT not be processed yet
            // after all, try again (an entry that never registers could hang the mount).
            std::thread::sleep(Duration::from_millis(1));
            match self.uring.register(index, self.qid, bufs) {
                Ok(()) => return,
                Err(e) => log::error!("io_uring: queue {}: re-registering: {e}", self.qid),
            }
        } else if kind == CmdKind::CommitAndFetch && !teardown {
            // The reply was refused (e.g. its request is gone): the kernel keeps the entry as
            // ours, so the queue would lose it. Register the buffers again as a fresh entry.
            log::warn!(
                "io_uring: queue {}: COMMIT_AND_FETCH failed: {}; registering the entry again",
                self.qid,
                io::Error::from_raw_os_error(errno)
            );
            match self.uring.register(index, self.qid, bufs) {
                Ok(()) => return,
                Err(e) => log::error!("io_uring: queue {}: re-registering: {e}", self.qid),
            }
        } else if !teardown {
            log::debug!(
                "io_uring: queue {}: REGISTER failed: {}",
                self.qid,
                io::Error::from_raw_os_error(errno)
            );
        }
        self.live -= 1;
    }

    /// Queues the commits of the entries replied to on this thread.
    fn commit_local(&mut self) {
        let returned = LOCAL_RETURNED.with(|v| std::mem::take(&mut *v.borrow_mut()));
        for r in returned {
            self.commit(r);
        }
    }

    fn commit(&mut self, r: Returned) {
        if let Err(e) = self
            .uring
            .commit_and_fetch(r.index, self.qid, r.commit_id, r.bufs)
        {
            log::error!(
                "io_uring: queue {}: queueing the reply to {}: {e}",
                self.qid,
                r.commit_id
            );
            self.live -= 1;
        }
    }

    /// Ends the thread: no more replies are taken, the eventfd read is cancelled (so that its
    /// buffer can be freed), and the ring is dropped.
    fn end(mut self) {
        self.shared.remote().closed = true;
        LOCAL_QUEUE.with(|c| c.set(0));
        match self.uring.cancel_wake() {
            Ok(true) => {
                // The cancel completes the read at once (-ECANCELED, or 8 if it won the race).
                'wait: for _ in 0..16 {
                    if self.submit_and_wait(1).is_err() {
                        break;
                    }
                    while let Some(c) = self.uring.pop() {
                        if let Completion::Wake { .. } = c {
                            break 'wait;
                        }
                    }
                }
            }
            Ok(false) => {}
            Err(e) => log::warn!(
                "io_uring: queue {}: cancelling the eventfd read: {e}",
                self.qid
            ),
        }
    }
}

/// Marks a queue thread as ended when dropped.
struct Ended(Arc<RingShared>);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0.update(|s| s.ended += 1);
    }
}

/// Pins the calling thread to `cpu` (an offline CPU cannot be: the thread then runs anywhere;
/// its queue gets requests only once the CPU is online).
fn pin_to_cpu(cpu: usize) {
    use nix::sched::{CpuSet, sched_setaffinity};
    use nix::unistd::Pid;
    let mut set = CpuSet::new();
    if let Err(e) = set
        .set(cpu)
        .and_then(|()| sched_setaffinity(Pid::from_raw(0), &set))
    {
        log::debug!("io_uring: pinning a ring thread to CPU {cpu}: {e}");
    }
}

/// Parses a kernel CPU list ("0-3,8,10-11").
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                if a > b {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok()?),
        }
    }
    Some(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-2,5,7-8"), Some(vec![0, 1, 2, 5, 7, 8]));
        assert_eq!(parse_cpu_list("x"), None);
        assert_eq!(parse_cpu_list("3-1"), None);
    }

    #[test]
    fn config_is_checked() {
        let dev = std::fs::File::open("/dev/null").unwrap();
        struct Nop;
        impl Handler for Nop {
            fn handle(&self, _req: Request) {}
        }
        let small = RingConfig {
            entries_per_queue: 1,
            payload_size: 4096,
        };
        assert!(start(dev.as_fd(), small, Arc::new(Nop)).is_err());
        let none = RingConfig {
            entries_per_queue: 0,
            payload_size: 1 << 20,
        };
        assert!(start(dev.as_fd(), none, Arc::new(Nop)).is_err());
    }
}
