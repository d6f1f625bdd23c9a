//! The FUSE-over-io_uring transport (`strata::fuse::ring`) against the real kernel: a tiny
//! fuser filesystem (a root directory with one file, "hello") is mounted on a `/dev/fuse`
//! descriptor of the test's own, and the ring is started on that descriptor from the
//! filesystem's `init`, with a handler that answers GETATTR, LOOKUP and GETXATTR by
//! hand-encoded replies. Both sides count what they see: with the ring active, fuser must see
//! none of those requests; with `enable_uring=0`, the handler must see none.
//!
//! Needs root, /dev/fuse and the fuse module parameter `enable_uring` (Linux 6.14+), which the
//! tests set and restore; skipped with a message otherwise. The tests of this file run one at a
//! time (the parameter is global). They print the cost of a getxattr over the ring and over
//! `/dev/fuse` (`cargo test --test ring_transport -- --nocapture`); nothing asserts on timing.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileType, Filesystem, Generation, INodeNo, InitFlags, KernelConfig,
    ReplyAttr, ReplyEntry, ReplyXattr, SessionACL,
};
use strata::fuse::ring::{self, Handler, Request, Ring, RingConfig};

mod common;
use common::mounts::{URING_PARAM as PARAM, UringParam};
use strata::sys::{XTarget, xget};

const PAYLOAD: usize = 1 << 20;
const TTL: Duration = Duration::from_secs(60);

const FUSE_LOOKUP: u32 = 1;
const FUSE_GETATTR: u32 = 3;
const FUSE_GETXATTR: u32 = 22;

/// One test at a time: the module parameter is global, and the timings are cleaner alone.
fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Why the tests cannot run here, if so.
fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root".into());
    }
    if !Path::new("/dev/fuse").exists() {
        return Some("no /dev/fuse".into());
    }
    if !Path::new(PARAM).exists() {
        return Some(format!("no {PARAM}: the kernel has no FUSE over io_uring"));
    }
    let io_uring = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled");
    if io_uring.is_ok_and(|v| v.trim() == "2") {
        return Some("io_uring is disabled (kernel.io_uring_disabled=2)".into());
    }
    None
}

/// What both sides saw.
#[derive(Default)]
struct Counts {
    lookup: AtomicU64,
    getattr: AtomicU64,
    getxattr: AtomicU64,
    other: AtomicU64,
    /// Bit N: a request came on queue N (ring side only).
    queues: AtomicU64,
}

impl Counts {
    fn of(&self) -> [u64; 4] {
        [
            self.lookup.load(Ordering::SeqCst),
            self.getattr.load(Ordering::SeqCst),
            self.getxattr.load(Ordering::SeqCst),
            self.other.load(Ordering::SeqCst),
        ]
    }
}

fn attr(ino: u64) -> (u32, u32, u64) {
    // (mode, nlink, size)
    if ino == 1 {
        (libc::S_IFDIR | 0o755, 2, 0)
    } else {
        (libc::S_IFREG | 0o644, 1, 5)
    }
}

// ---------------------------------------------------------------------------------------------
// The ring side: hand-encoded replies (include/uapi/linux/fuse.h)

/// `struct fuse_attr` (88 bytes).
fn fuse_attr(ino: u64) -> Vec<u8> {
    let (mode, nlink, size) = attr(ino);
    let mut a = Vec::with_capacity(88);
    for v in [ino, size, size.div_ceil(512), 0, 0, 0] {
        a.extend_from_slice(&v.to_ne_bytes()); // ino size blocks atime mtime ctime
    }
    for v in [0u32, 0, 0, mode, nlink, 0, 0, 0, 4096, 0] {
        a.extend_from_slice(&v.to_ne_bytes()); // *timensec mode nlink uid gid rdev blksize flags
    }
    assert_eq!(a.len(), 88);
    a
}

/// `struct fuse_attr_out` (104 bytes).
fn attr_out(ino: u64) -> Vec<u8> {
    let mut o = Vec::with_capacity(104);
    o.extend_from_slice(&TTL.as_secs().to_ne_bytes());
    o.extend_from_slice(&[0; 8]); // attr_valid_nsec, dummy
    o.extend_from_slice(&fuse_attr(ino));
    assert_eq!(o.len(), 104);
    o
}

/// `struct fuse_entry_out` (128 bytes).
fn entry_out(ino: u64) -> Vec<u8> {
    let mut o = Vec::with_capacity(128);
    for v in [ino, 0, TTL.as_secs(), TTL.as_secs()] {
        o.extend_from_slice(&v.to_ne_bytes()); // nodeid generation entry_valid attr_valid
    }
    o.extend_from_slice(&[0; 8]); // entry_valid_nsec, attr_valid_nsec
    o.extend_from_slice(&fuse_attr(ino));
    assert_eq!(o.len(), 128);
    o
}

struct TestHandler {
    counts: Arc<Counts>,
}

impl Handler for TestHandler {
    fn handle(&self, req: Request) {
        let c = &self.counts;
        c.queues
            .fetch_or(1 << req.queue().min(63), Ordering::Relaxed);
        let h = req.in_header();
        assert_eq!(h.len(), 40);
        assert_eq!(
            u64::from_ne_bytes(h[8..16].try_into().unwrap()),
            req.unique()
        );
        let nodeid = u64::from_ne_bytes(h[16..24].try_into().unwrap());
        match req.opcode() {
            FUSE_GETATTR if nodeid == 1 || nodeid == 2 => {
                c.getattr.fetch_add(1, Ordering::SeqCst);
                req.reply(0, &[&attr_out(nodeid)]);
            }
            FUSE_LOOKUP => {
                c.lookup.fetch_add(1, Ordering::SeqCst);
                if nodeid == 1 && req.payload() == b"hello\0" {
                    req.reply(0, &[&entry_out(2)]);
                } else {
                    req.reply(libc::ENOENT, &[]);
                }
            }
            FUSE_GETXATTR => {
                c.getxattr.fetch_add(1, Ordering::SeqCst);
                // fuse_getxattr_in { size, padding } in op; the name in the payload.
                let size = u32::from_ne_bytes(req.op()[0..4].try_into().unwrap());
                let name = req.payload().split(|&b| b == 0).next().unwrap_or(b"");
                match name {
                    b"user.remote" => {
                        // Answered later, from another thread.
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_micros(200));
                            req.reply(libc::ENODATA, &[]);
                        });
                    }
                    b"user.slow" => {
                        std::thread::spawn(move || {
                            std::thread::sleep(Duration::from_millis(300));
                            req.reply(libc::ENODATA, &[]);
                        });
                    }
                    b"user.dropped" => drop(req),
                    b"user.panic" => panic!("a handler that panics"),
                    b"user.huge" => req.reply(0, &[&vec![0u8; PAYLOAD + 1]]),
                    b"user.hello" if size == 0 => {
                        req.reply(0, &[&5u32.to_ne_bytes(), &[0; 4]]);
                    }
                    b"user.hello" if size < 5 => req.reply(libc::ERANGE, &[]),
                    b"user.hello" => req.reply(0, &[b"wor", b"ld"]),
                    _ => req.reply(libc::ENODATA, &[]),
                }
            }
            _ => {
                c.other.fetch_add(1, Ordering::SeqCst);
                req.reply(libc::ENOSYS, &[]);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The fuser side

/// What `init` needs to start the ring, and where it leaves the result.
struct RingSetup {
    dev: OwnedFd,
    payload_size: usize,
    handler: Arc<dyn Handler>,
    out: Arc<Mutex<Option<std::io::Result<Ring>>>>,
}

struct TestFs {
    counts: Arc<Counts>,
    ring: Option<RingSetup>,
}

impl TestFs {
    fn file_attr(ino: u64) -> FileAttr {
        let (mode, nlink, size) = attr(ino);
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: if ino == 1 {
                FileType::Directory
            } else {
                FileType::RegularFile
            },
            perm: (mode & 0o7777) as u16,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for TestFs {
    fn init(&mut self, _req: &fuser::Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // The kernel's payload buffer size follows max_write (and max_pages).
        config.set_max_write(PAYLOAD as u32).expect("max_write");
        if let Some(setup) = self.ring.take() {
            let cfg = RingConfig {
                entries_per_queue: 4,
                payload_size: setup.payload_size,
            };
            let started = ring::start(setup.dev.as_fd(), cfg, setup.handler);
            if started.is_ok()
                && let Err(missing) = config.add_capabilities(InitFlags::FUSE_OVER_IO_URING)
            {
                eprintln!("the kernel did not offer {missing:?}");
            }
            *setup.out.lock().unwrap() = Some(started);
        }
        Ok(())
    }

    fn lookup(&self, _req: &fuser::Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.counts.lookup.fetch_add(1, Ordering::SeqCst);
        if parent.0 == 1 && name == "hello" {
            reply.entry(&TTL, &Self::file_attr(2), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(
        &self,
        _req: &fuser::Request,
        ino: INodeNo,
        _fh: Option<fuser::FileHandle>,
        reply: ReplyAttr,
    ) {
        self.counts.getattr.fetch_add(1, Ordering::SeqCst);
        if ino.0 == 1 || ino.0 == 2 {
            reply.attr(&TTL, &Self::file_attr(ino.0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getxattr(
        &self,
        _req: &fuser::Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: ReplyXattr,
    ) {
        self.counts.getxattr.fetch_add(1, Ordering::SeqCst);
        reply.error(Errno::ENODATA);
    }
}

// ---------------------------------------------------------------------------------------------
// Mounting

/// Lazily unmounts the mount point when dropped (a failed test leaves no mount behind).
struct MountGuard(PathBuf);

impl Drop for MountGuard {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

struct Mounted {
    mnt: PathBuf,
    session: fuser::BackgroundSession,
    ring: Option<std::io::Result<Ring>>,
    fs_counts: Arc<Counts>,
    ring_counts: Arc<Counts>,
    // Dropped last: the guard before the directory.
    _guard: MountGuard,
    _dir: tempfile::TempDir,
}

/// Mounts the test filesystem as strata does as root (src/fuse/mod.rs, `mount_dev_fuse`);
/// with `ring_payload`, its `init` starts the ring on the connection with payload buffers of
/// that size.
fn mount(ring_payload: Option<usize>) -> Mounted {
    use nix::fcntl::{OFlag, open};
    use nix::mount::MsFlags;
    use nix::sys::stat::Mode;
    use std::os::fd::AsRawFd;

    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    let dev = open("/dev/fuse", OFlag::O_RDWR | OFlag::O_CLOEXEC, Mode::empty()).expect("open");
    let data = format!(
        "fd={},rootmode=40000,user_id=0,group_id=0,default_permissions,allow_other",
        dev.as_raw_fd()
    );
    nix::mount::mount(
        Some("test"),
        &mnt,
        Some("fuse"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(data.as_str()),
    )
    .expect("mount");
    let guard = MountGuard(mnt.clone());
    let fs_counts = Arc::new(Counts::default());
    let ring_counts = Arc::new(Counts::default());
    let out = Arc::new(Mutex::new(None));
    let ring = ring_payload.map(|payload_size| RingSetup {
        dev: dev.try_clone().expect("dup"),
        payload_size,
        handler: Arc::new(TestHandler {
            counts: ring_counts.clone(),
        }),
        out: out.clone(),
    });
    let fs = TestFs {
        counts: fs_counts.clone(),
        ring,
    };
    let mut cfg = Config::default();
    cfg.acl = SessionACL::All;
    let session = fuser::Session::from_fd(fs, dev, SessionACL::All, cfg).expect("session");
    let session = session.spawn().expect("spawn session");
    let ring = out.lock().unwrap().take();
    Mounted {
        mnt,
        session,
        ring,
        fs_counts,
        ring_counts,
        _guard: guard,
        _dir: dir,
    }
}

impl Mounted {
    fn hello(&self) -> CString {
        CString::new(self.mnt.join("hello").into_os_string().into_encoded_bytes()).unwrap()
    }

    /// Unmounts (not lazily) and checks that the session and the ring threads end.
    fn unmount(self) {
        let t = Instant::now();
        nix::mount::umount2(&self.mnt, nix::mount::MntFlags::empty()).expect("umount");
        let umount_took = t.elapsed();
        if let Some(Ok(ring)) = &self.ring {
            assert!(
                ring.wait_stopped(Duration::from_secs(3)),
                "ring threads still running 3 s after the unmount: {ring:?}"
            );
            assert!(!ring.active());
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        while !self.session.guard.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            self.session.guard.is_finished(),
            "the fuser session still runs 3 s after the unmount"
        );
        self.session.join().expect("session result");
        println!(
            "unmount took {umount_took:?}; all threads ended {:?} after it began",
            t.elapsed()
        );
    }
}

/// `n` getxattr calls of a missing attribute on `path`; µs per call.
fn getxattr_loop(path: &CString, n: u32, pin: Option<usize>) -> f64 {
    std::thread::scope(|s| {
        s.spawn(|| {
            if let Some(cpu) = pin {
                pin_to(cpu);
            }
            let key = OsStr::new("user.missing");
            for _ in 0..n / 10 {
                assert_eq!(xget(XTarget::Follow(path), key), Ok(None));
            }
            let t = Instant::now();
            for _ in 0..n {
                assert_eq!(xget(XTarget::Follow(path), key), Ok(None));
            }
            t.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        })
        .join()
        .unwrap()
    })
}

fn pin_to(cpu: usize) {
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).unwrap();
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("pin");
}

fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Runs the getxattr timing with the requester unpinned and pinned to each CPU; prints it.
fn timings(label: &str, path: &CString) {
    const N: u32 = 10_000;
    let mut line = format!(
        "getxattr over {label}: {:.1} µs unpinned",
        getxattr_loop(path, N, None)
    );
    for cpu in 0..cpus().min(4) {
        let us = getxattr_loop(path, N, Some(cpu));
        line += &format!(", {us:.1} µs pinned to CPU {cpu}");
    }
    println!("{line}");
}

/// What every test starts with: one test at a time, a logger, the reason to skip (printed;
/// `None` then), and `enable_uring` set to `on` until the returned guard goes.
fn begin(on: bool) -> Option<(MutexGuard<'static, ()>, UringParam)> {
    let serial = serial();
    let _ = env_logger::builder().is_test(true).try_init();
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return None;
    }
    Some((serial, UringParam::set(on)))
}

impl Mounted {
    /// The ring its `init` started.
    fn ring(&self) -> &Ring {
        match &self.ring {
            Some(Ok(r)) => r,
            Some(Err(e)) => panic!("ring::start failed: {e}"),
            None => panic!("init did not run"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn the_ring_serves_requests_and_ends_at_unmount() {
    let Some(_guards) = begin(true) else {
        return;
    };
    let m = mount(Some(PAYLOAD));
    let ring = m.ring();
    // (1) every queue registered.
    assert!(
        ring.wait_active(Duration::from_secs(5)),
        "the ring did not become active: {ring:?}"
    );
    assert_eq!(ring.failure(), None);

    // (2) stat of the mount point and of hello, then 10,000 getxattr, all over the ring.
    let md = std::fs::metadata(&m.mnt).expect("stat mnt");
    assert!(md.is_dir());
    let md = std::fs::metadata(m.mnt.join("hello")).expect("stat hello");
    assert!(md.is_file());
    assert_eq!(md.len(), 5);
    let hello = m.hello();
    for _ in 0..10_000 {
        assert_eq!(
            xget(XTarget::Follow(&hello), OsStr::new("user.x")),
            Ok(None)
        );
    }
    assert_eq!(
        xget(XTarget::Follow(&hello), OsStr::new("user.hello")),
        Ok(Some(b"world".to_vec()))
    );
    let [lookup, getattr, getxattr, _] = m.ring_counts.of();
    assert!(lookup >= 1, "no LOOKUP over the ring");
    assert!(getattr >= 1, "no GETATTR over the ring");
    assert!(getxattr >= 10_001, "{getxattr} GETXATTR over the ring");
    assert_eq!(
        m.fs_counts.of()[..3],
        [0, 0, 0],
        "fuser saw lookup/getattr/getxattr"
    );
    assert!(ring.requests() >= lookup + getattr + getxattr);

    // Every CPU's requests come on its own queue.
    for cpu in 0..cpus() {
        getxattr_loop(&hello, 100, Some(cpu));
    }
    let seen = m.ring_counts.queues.load(Ordering::SeqCst);
    assert_eq!(
        seen,
        (1u64 << ring.queues().min(63)) - 1,
        "queues seen: {seen:#b}"
    );

    // (3) replies from another thread, also many at once from several requesters; a dropped
    // request, a panicking handler and a reply too large for the buffer answer EIO.
    std::thread::scope(|s| {
        for cpu in 0..cpus() {
            let hello = &hello;
            s.spawn(move || {
                pin_to(cpu);
                for _ in 0..500 {
                    assert_eq!(
                        xget(XTarget::Follow(hello), OsStr::new("user.remote")),
                        Ok(None)
                    );
                }
            });
        }
    });
    // More requesters than entries (4 a queue), half their requests answered from other
    // threads: requests wait in the kernel for an entry, none is lost.
    std::thread::scope(|s| {
        for i in 0..8 {
            let hello = &hello;
            s.spawn(move || {
                for j in 0..300 {
                    let key = if (i + j) % 2 == 0 {
                        "user.remote"
                    } else {
                        "user.x"
                    };
                    assert_eq!(xget(XTarget::Follow(hello), OsStr::new(key)), Ok(None));
                }
            });
        }
    });
    for key in ["user.dropped", "user.panic", "user.huge"] {
        assert_eq!(
            xget(XTarget::Follow(&hello), OsStr::new(key)),
            Err(nix::errno::Errno::EIO),
            "{key}"
        );
    }
    // The queues still serve after all that.
    assert_eq!(
        xget(XTarget::Follow(&hello), OsStr::new("user.x")),
        Ok(None)
    );
    assert!(ring.active());
    assert_eq!(m.fs_counts.of()[..3], [0, 0, 0]);

    timings("the ring", &hello);

    // (4) the unmount ends every ring thread and the session.
    m.unmount();
}

/// `/sys/fs/fuse/connections`, mounted for the test when it is not (unmounted after).
struct FuseCtl {
    mounted_here: bool,
}

const FUSECTL: &str = "/sys/fs/fuse/connections";

impl FuseCtl {
    fn get() -> FuseCtl {
        let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
        if mounts.lines().any(|l| l.split(' ').nth(1) == Some(FUSECTL)) {
            return FuseCtl {
                mounted_here: false,
            };
        }
        nix::mount::mount(
            Some("fusectl"),
            FUSECTL,
            Some("fusectl"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .expect("mount fusectl");
        FuseCtl { mounted_here: true }
    }
}

impl Drop for FuseCtl {
    fn drop(&mut self) {
        if self.mounted_here {
            let _ = nix::mount::umount2(FUSECTL, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

#[test]
fn an_abort_with_a_request_held_by_the_handler_ends_the_ring() {
    use std::os::unix::fs::MetadataExt;

    let Some(_guards) = begin(true) else {
        return;
    };
    let _ctl = FuseCtl::get();
    let m = mount(Some(PAYLOAD));
    let ring = m.ring();
    assert!(ring.wait_active(Duration::from_secs(5)), "{ring:?}");
    let conn = nix::sys::stat::minor(std::fs::metadata(&m.mnt).expect("stat").dev());
    // A request that the handler holds for 300 ms (answered from another thread).
    let hello = m.hello();
    let requester = std::thread::spawn(move || {
        let t = Instant::now();
        let r = xget(XTarget::Follow(&hello), OsStr::new("user.slow"));
        (r, t.elapsed())
    });
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    std::fs::write(format!("{FUSECTL}/{conn}/abort"), "1").expect("abort");
    let (r, took) = requester.join().unwrap();
    assert_eq!(r, Err(nix::errno::Errno::ECONNABORTED), "after {took:?}");
    assert!(
        took < Duration::from_millis(250),
        "the requester waited {took:?}"
    );
    // The queue with the held entry ends once the handler replies (its commit fails).
    assert!(
        ring.wait_stopped(Duration::from_secs(3)),
        "ring threads still running after the abort: {ring:?}"
    );
    println!("ring threads ended {:?} after the abort", t.elapsed());
    assert!(!ring.active());
    assert_eq!(
        xget(XTarget::Follow(&m.hello()), OsStr::new("user.x")),
        Err(nix::errno::Errno::ENOTCONN)
    );
    m.unmount();
}

#[test]
fn without_enable_uring_everything_goes_over_dev_fuse() {
    let Some(_guards) = begin(false) else {
        return;
    };
    let m = mount(Some(PAYLOAD));
    let ring = m.ring();
    // (5) not active, and it says why without waiting the timeout out.
    let t = Instant::now();
    assert!(!ring.wait_active(Duration::from_secs(5)));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let why = ring.failure().expect("a reason");
    assert!(why.contains("disabled"), "{why}");
    assert!(ring.wait_stopped(Duration::from_secs(2)), "{ring:?}");

    assert!(std::fs::metadata(&m.mnt).expect("stat mnt").is_dir());
    assert_eq!(
        std::fs::metadata(m.mnt.join("hello")).expect("stat").len(),
        5
    );
    let hello = m.hello();
    for _ in 0..1000 {
        assert_eq!(
            xget(XTarget::Follow(&hello), OsStr::new("user.x")),
            Ok(None)
        );
    }
    let [lookup, getattr, getxattr, _] = m.fs_counts.of();
    assert!(lookup >= 1 && getattr >= 1 && getxattr >= 1000);
    assert_eq!(m.ring_counts.of(), [0, 0, 0, 0], "the handler saw requests");
    assert_eq!(ring.requests(), 0);

    timings("/dev/fuse", &hello);
    m.unmount();
}

#[test]
fn a_failed_registration_falls_back_to_dev_fuse() {
    let Some(_guards) = begin(true) else {
        return;
    };
    // Payload buffers smaller than max_write: the kernel refuses every REGISTER, after INIT
    // was answered with FUSE_OVER_IO_URING. Requests must not hang.
    let m = mount(Some(64 << 10));
    let ring = m.ring();
    assert!(!ring.wait_active(Duration::from_secs(5)));
    let why = ring.failure().expect("a reason");
    assert!(why.contains("REGISTER") && why.contains("payload"), "{why}");
    assert!(ring.wait_stopped(Duration::from_secs(2)), "{ring:?}");
    assert_eq!(
        std::fs::metadata(m.mnt.join("hello")).expect("stat").len(),
        5
    );
    let hello = m.hello();
    assert_eq!(
        xget(XTarget::Follow(&hello), OsStr::new("user.x")),
        Ok(None)
    );
    assert!(m.fs_counts.of()[2] >= 1);
    assert_eq!(m.ring_counts.of(), [0, 0, 0, 0]);
    m.unmount();
}

/// Pins the threads of this process named `name` to `cpu`.
fn pin_threads_named(name: &str, cpu: usize) -> usize {
    let mut n = 0;
    for t in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == name
            && let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok())
        {
            let mut set = nix::sched::CpuSet::new();
            set.set(cpu).unwrap();
            nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(tid), &set).expect("pin");
            n += 1;
        }
    }
    n
}

#[test]
fn dev_fuse_timing_with_enable_uring_on_but_no_ring() {
    let Some(_guards) = begin(true) else {
        return;
    };
    let m = mount(None);
    assert!(m.ring.is_none());
    let hello = m.hello();
    assert_eq!(
        xget(XTarget::Follow(&hello), OsStr::new("user.x")),
        Ok(None)
    );
    assert!(m.fs_counts.of()[2] >= 1);
    timings("/dev/fuse (enable_uring=1, no ring)", &hello);
    // The brief's reference point: server and requester on the same CPU.
    assert_eq!(
        pin_threads_named("fuser-0", 0),
        1,
        "the session's event loop thread"
    );
    println!(
        "getxattr over /dev/fuse, server thread and requester both pinned to CPU 0: {:.1} µs",
        getxattr_loop(&hello, 10_000, Some(0))
    );
    m.unmount();
}
