//! The FUSE operations of a [`Union`], whatever carries the requests: each operation takes
//! its decoded arguments and a reply handle, calls the union and answers through the handle.
//! Two transports feed it: fuser's `/dev/fuse` loop (`dev_fuse`) and the io_uring ring
//! (`ring_dispatch`). No union logic lives here; what is here is FUSE's own business: file
//! handles, directory snapshots per listing, TTLs, negative entries, readdirplus, set-id
//! killing, which requests go to a worker, and passthrough (the kernel reads and writes the
//! backing file itself when the daemon may ask it to).

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::statvfs::Statvfs;

use super::pool::Pool;
use super::setid::{self, Asker, Change};
use crate::cow::{Attr, Caller, DirEntry, Ino, SetAttr, Union};

/// How long the kernel may trust entries and attributes. Every change goes through this
/// daemon, and the kernel invalidates what a change it sees affects, so these can be long;
/// objects that live only in read-only layers never change at all.
const TTL_UPPER: Duration = Duration::from_secs(1);
const TTL_LOWER: Duration = Duration::from_secs(3600);
/// How long a miss is cached.
const TTL_NEGATIVE: Duration = Duration::from_secs(1);

/// `FOPEN_KEEP_CACHE`: the kernel keeps the file's pages across opens.
pub const FOPEN_KEEP_CACHE: u32 = 1 << 1;
/// `FOPEN_PASSTHROUGH`: the kernel reads and writes the backing file itself.
pub const FOPEN_PASSTHROUGH: u32 = 1 << 7;

/// Where an operation's answer goes: a transport's reply to one request. Sent exactly once,
/// from the request's thread or a worker's.
pub trait Reply<T>: Send + 'static {
    fn send(self, r: Result<T, Errno>);
}

/// An entry (lookup, create, mkdir, ...): the object and how long the kernel may keep it.
/// Inode 0 is a negative entry: the kernel caches the miss for `ttl`.
#[derive(Clone, Copy)]
pub struct EntryOut {
    pub ino: Ino,
    pub st: libc::stat,
    pub ttl: Duration,
}

/// An open file handle, with its passthrough backing id if the kernel does the I/O.
#[derive(Clone, Copy)]
pub struct OpenOut {
    pub fh: u64,
    /// `FOPEN_*` flags (`FOPEN_PASSTHROUGH` is added by the transport when `backing` is set).
    pub flags: u32,
    pub backing: Option<u32>,
}

/// The answer to a getxattr or listxattr: the size asked for, or the bytes.
pub enum XattrOut {
    Size(u32),
    Data(Vec<u8>),
}

/// A directory listing being filled for one READDIR: `add` returns true when the entry did
/// not fit (and was not added).
pub trait DirSink: Send + 'static {
    fn add(&mut self, ino: Ino, next: u64, mode: u32, name: &[u8]) -> bool;
    fn done(self, r: Result<(), Errno>);
}

/// The same for READDIRPLUS: each entry comes with its attributes.
pub trait DirPlusSink: Send + 'static {
    fn add(&mut self, next: u64, name: &[u8], e: &EntryOut) -> bool;
    fn done(self, r: Result<(), Errno>);
}

/// A passthrough backing file registered with the kernel; closed when the last open handle
/// of its inode is released.
pub struct Backing {
    dev: Arc<OwnedFd>,
    id: u32,
}

impl Drop for Backing {
    fn drop(&mut self) {
        if let Err(e) = crate::sys::fuse_backing_close(self.dev.as_fd(), self.id) {
            log::debug!("closing backing file {}: {e}", self.id);
        }
    }
}

struct Handle {
    fd: Arc<OwnedFd>,
    /// Keeps the kernel's backing file while this handle is open (passthrough).
    _backing: Option<Arc<Backing>>,
}

/// A shared backing file and the (device, inode) of the real file it stands for.
type Shared = (Weak<Backing>, (u64, u64));

/// The FUSE side of a mount: a cheap handle on its state, which requests handed to the
/// worker threads take along.
#[derive(Clone)]
pub struct FuseFs(Arc<Inner>);

impl std::ops::Deref for FuseFs {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

/// The state of a mount's FUSE side.
pub struct Inner {
    pub(super) union: Arc<Union>,
    files: RwLock<HashMap<u64, Handle>>,
    /// The listing being read of each directory (merged once at offset 0, then served by
    /// offset until the kernel has it all).
    listings: RwLock<HashMap<Ino, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    /// Passthrough wanted (the caller checked CAP_SYS_ADMIN) and granted by the kernel.
    pub(super) passthrough: AtomicBool,
    pub(super) want_passthrough: bool,
    /// FUSE over io_uring wanted (see `ring_dispatch`), and the ring once started.
    pub(super) want_ring: bool,
    pub(super) ring: OnceLock<super::ring::Ring>,
    /// The kernel's INIT has been answered.
    pub(super) initialized: AtomicBool,
    /// The connection's `/dev/fuse` descriptor when this process mounted it (as root): for
    /// the passthrough ioctls and the io_uring ring.
    pub(super) dev: OnceLock<Arc<OwnedFd>>,
    /// One backing file per inode at a time (a kernel rule): shared by its open handles, and
    /// known by the (device, inode) of the real file it stands for.
    backing: Mutex<HashMap<Ino, Shared>>,
    /// Workers for the requests that may take long.
    pool: Pool,
    /// Inodes whose `security.capability` was just removed: the empty SETATTR that follows
    /// is the kernel's kill before a write, not chown(f, -1, -1) (see `setattr`).
    caps_dropped: Mutex<HashSet<Ino>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(r) = self.ring.get() {
            log::info!("io_uring: {} requests served over the ring", r.requests());
        }
    }
}

/// Locks `m`, also when a thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn caller(who: &Asker) -> Caller {
    Caller {
        uid: who.uid,
        gid: who.gid,
    }
}

/// Worker threads for the requests that may take long.
const WORKERS: usize = 2;

impl FuseFs {
    /// An adapter for `union`; `passthrough` asks for FUSE passthrough and `ring` for FUSE
    /// over io_uring (both need this process's own `/dev/fuse` descriptor, see
    /// [`FuseFs::set_dev`]; passthrough also needs CAP_SYS_ADMIN).
    pub fn new(union: Arc<Union>, passthrough: bool, ring: bool) -> FuseFs {
        FuseFs(Arc::new(Inner {
            pool: Pool::new(WORKERS),
            caps_dropped: Mutex::new(HashSet::new()),
            union,
            files: RwLock::new(HashMap::new()),
            listings: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            passthrough: AtomicBool::new(false),
            want_passthrough: passthrough,
            want_ring: ring,
            ring: OnceLock::new(),
            initialized: AtomicBool::new(false),
            dev: OnceLock::new(),
            backing: Mutex::new(HashMap::new()),
        }))
    }

    /// Gives the adapter the connection's `/dev/fuse` descriptor (a duplicate of it).
    pub fn set_dev(&self, dev: OwnedFd) {
        let _ = self.dev.set(Arc::new(dev));
    }

    pub(super) fn from_inner(inner: Arc<Inner>) -> FuseFs {
        FuseFs(inner)
    }

    pub(super) fn inner(&self) -> &Arc<Inner> {
        &self.0
    }

    /// Waits (at most `timeout`) until the mount serves requests the way it will: the
    /// kernel's INIT answered and, when one was started, the io_uring ring registered or
    /// given up. No request is needed for that (the kernel sends INIT at mount time), so
    /// nothing is left in flight that would make an unmount right after fail with EBUSY.
    pub fn wait_serving(&self, timeout: Duration) {
        let end = std::time::Instant::now() + timeout;
        while !self.initialized.load(Ordering::Acquire) {
            if std::time::Instant::now() >= end {
                log::warn!("the kernel's INIT did not come within {timeout:?}");
                return;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
        if let Some(r) = self.ring.get()
            && !r.wait_active(end.saturating_duration_since(std::time::Instant::now()))
        {
            log::info!(
                "requests: /dev/fuse ({})",
                r.failure()
                    .unwrap_or_else(|| "the io_uring ring is not active".into())
            );
        }
    }

    /// Requests served over the io_uring ring so far (`None`: no ring).
    pub fn ring_requests(&self) -> Option<u64> {
        self.ring.get().map(|r| r.requests())
    }
}

impl Inner {
    fn ttl(&self, ino: Ino) -> Duration {
        if self.union.is_lower(ino) {
            TTL_LOWER
        } else {
            TTL_UPPER
        }
    }

    fn entry_out(&self, a: Attr) -> EntryOut {
        EntryOut {
            ino: a.ino,
            st: a.st,
            ttl: self.ttl(a.ino),
        }
    }

    fn fd_of(&self, fh: u64) -> Option<Arc<OwnedFd>> {
        self.files.read().ok()?.get(&fh).map(|h| h.fd.clone())
    }

    /// Remembers an open file under a new handle (with its passthrough backing, if any).
    fn keep_handle(&self, fd: Arc<OwnedFd>, backing: Option<Arc<Backing>>) -> u64 {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                fh,
                Handle {
                    fd,
                    _backing: backing,
                },
            );
        fh
    }

    /// A shared backing file for `ino`'s open file `fd`, or a new one.
    ///
    /// A file opened from a lower layer and then copied up while still open is the one case
    /// the kernel cannot serve: the inode is bound to the lower file until those opens close,
    /// so the new open gets no backing (and the kernel answers it with EIO) rather than the
    /// old one, which would send writes to the read-only layer.
    fn backing_for(&self, ino: Ino, fd: &OwnedFd) -> Option<Arc<Backing>> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
        let dev = self.dev.get()?;
        let st = nix::sys::stat::fstat(fd.as_fd()).ok()?;
        let real = (st.st_dev, st.st_ino);
        let mut map = lock(&self.backing);
        if let Some((weak, was)) = map.get(&ino)
            && let Some(b) = weak.upgrade()
        {
            if *was == real {
                return Some(b);
            }
            log::warn!(
                "inode {ino}: copied up while open from a lower layer; this open gets no passthrough"
            );
            return None;
        }
        match crate::sys::fuse_backing_open(dev.as_fd(), fd.as_fd()) {
            Ok(id) => {
                let b = Arc::new(Backing {
                    dev: dev.clone(),
                    id,
                });
                map.insert(ino, (Arc::downgrade(&b), real));
                Some(b)
            }
            Err(e) => {
                log::debug!("passthrough refused for inode {ino}: {e}; userspace I/O");
                None
            }
        }
    }
}

/// Attributes as an answer (getattr, setattr): the same three facts as an entry.
pub type AttrOut = EntryOut;

/// The operations, one per request kind.
impl FuseFs {
    pub fn lookup(&self, parent: Ino, name: &[u8], r: impl Reply<EntryOut>) {
        r.send(match self.union.lookup(parent, name) {
            Ok(a) => Ok(self.entry_out(a)),
            // A negative entry: the kernel caches the miss.
            Err(Errno::ENOENT) => Ok(EntryOut {
                ino: 0,
                st: crate::sys::zeroed_stat(),
                ttl: TTL_NEGATIVE,
            }),
            Err(e) => Err(e),
        })
    }

    pub fn forget(&self, ino: Ino, nlookup: u64) {
        self.union.forget(ino, nlookup);
    }

    pub fn getattr(&self, ino: Ino, fh: Option<u64>, r: impl Reply<AttrOut>) {
        let a = match fh.and_then(|fh| self.fd_of(fh)) {
            Some(fd) => self.union.getattr_fd(ino, fd.as_fd()),
            None => self.union.getattr(ino),
        };
        r.send(a.map(|a| self.entry_out(a)))
    }

    pub fn setattr(
        &self,
        who: Asker,
        ino: Ino,
        mut s: SetAttr,
        fh: Option<u64>,
        r: impl Reply<AttrOut>,
    ) {
        let SetAttr {
            mode,
            uid,
            gid,
            size,
            ..
        } = s;
        // Set-id bits this change drops (see `setid`). A SETATTR that changes nothing is
        // chown(f, -1, -1), or the kernel's request before a write that must drop set-id bits
        // or a file capability; the two differ only for a privileged caller, whose write
        // keeps the bits. A write that drops a capability removes it just before.
        let nothing = mode.is_none()
            && uid.is_none()
            && gid.is_none()
            && size.is_none()
            && s.atime.is_none()
            && s.mtime.is_none();
        let change = if uid.is_some() || gid.is_some() {
            Some(Change::Chown)
        } else if nothing {
            if lock(&self.caps_dropped).remove(&ino) {
                Some(Change::Write)
            } else {
                Some(Change::Chown)
            }
        } else if size.is_some() {
            Some(Change::Write)
        } else {
            None
        };
        if let Some(change) = change
            && mode.is_none()
        {
            s.mode = self.killed_mode(ino, change, &who);
        }
        let me = self.clone();
        let work = move || {
            let fd = fh.and_then(|fh| me.fd_of(fh));
            let a = me.union.setattr(ino, &s, fd.as_ref().map(|f| f.as_fd()));
            r.send(a.map(|a| me.entry_out(a)))
        };
        self.maybe_later(self.union.needs_copy_up(ino), work);
    }

    pub fn readlink(&self, ino: Ino, r: impl Reply<Vec<u8>>) {
        r.send(self.union.readlink(ino))
    }

    #[allow(clippy::too_many_arguments)]
    pub fn mknod(
        &self,
        who: Asker,
        parent: Ino,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u32,
        r: impl Reply<EntryOut>,
    ) {
        let a = self
            .union
            .mknod(parent, name, mode, umask, rdev as u64, caller(&who));
        r.send(a.map(|a| self.entry_out(a)))
    }

    pub fn mkdir(
        &self,
        who: Asker,
        parent: Ino,
        name: &[u8],
        mode: u32,
        umask: u32,
        r: impl Reply<EntryOut>,
    ) {
        let a = self.union.mkdir(parent, name, mode, umask, caller(&who));
        r.send(a.map(|a| self.entry_out(a)))
    }

    pub fn unlink(&self, parent: Ino, name: &[u8], r: impl Reply<()>) {
        r.send(self.union.unlink(parent, name))
    }

    pub fn rmdir(&self, parent: Ino, name: &[u8], r: impl Reply<()>) {
        r.send(self.union.rmdir(parent, name))
    }

    pub fn symlink(
        &self,
        who: Asker,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        r: impl Reply<EntryOut>,
    ) {
        let a = self.union.symlink(parent, name, target, caller(&who));
        r.send(a.map(|a| self.entry_out(a)))
    }

    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: u32,
        r: impl Reply<()>,
    ) {
        r.send(self.union.rename(parent, name, newparent, newname, flags))
    }

    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8], r: impl Reply<EntryOut>) {
        let (me, newname) = (self.clone(), newname.to_vec());
        let work = move || {
            let a = me.union.link(ino, newparent, &newname);
            r.send(a.map(|a| me.entry_out(a)))
        };
        self.maybe_later(self.union.needs_copy_up(ino), work);
    }

    pub fn open(&self, who: Asker, ino: Ino, flags: i32, r: impl Reply<OpenOut>) {
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let kill = if flags & libc::O_TRUNC != 0 {
            self.killed_mode(ino, Change::Write, &who)
        } else {
            None
        };
        let me = self.clone();
        let work = move || r.send(me.open_now(ino, flags, kill));
        self.maybe_later(writes && self.union.needs_copy_up(ino), work);
    }

    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        who: Asker,
        parent: Ino,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        r: impl Reply<(EntryOut, OpenOut)>,
    ) {
        let (a, fd) = match self
            .union
            .create(parent, name, mode, umask, flags, caller(&who))
        {
            Ok(v) => v,
            Err(e) => return r.send(Err(e)),
        };
        let fd = Arc::new(fd);
        let backing = self.backing_for(a.ino, &fd);
        let id = backing.as_ref().map(|b| b.id);
        let fh = self.keep_handle(fd, backing);
        let open = OpenOut {
            fh,
            flags: 0,
            backing: id,
        };
        r.send(Ok((self.entry_out(a), open)))
    }

    pub fn read(&self, fh: u64, offset: u64, size: u32, r: impl Reply<Vec<u8>>) {
        let Some(fd) = self.fd_of(fh) else {
            return r.send(Err(Errno::EBADF));
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match nix::sys::uio::pread(fd.as_fd(), &mut buf[got..], offset as i64 + got as i64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::EINTR) => continue,
                Err(e) => return r.send(Err(e)),
            }
        }
        buf.truncate(got);
        r.send(Ok(buf))
    }

    /// A write through the server (no passthrough); `kill_suidgid` is the kernel's
    /// `FUSE_WRITE_KILL_SUIDGID`.
    #[allow(clippy::too_many_arguments)]
    pub fn write(
        &self,
        who: Asker,
        ino: Ino,
        fh: u64,
        offset: u64,
        data: &[u8],
        kill_suidgid: bool,
        r: impl Reply<u32>,
    ) {
        let Some(fd) = self.fd_of(fh) else {
            return r.send(Err(Errno::EBADF));
        };
        if kill_suidgid
            && let Some(mode) = self.killed_mode(ino, Change::Write, &who)
            && let Err(e) = self.set_mode(ino, mode)
        {
            return r.send(Err(e));
        }
        let mut done = 0;
        while done < data.len() {
            match nix::sys::uio::pwrite(fd.as_fd(), &data[done..], offset as i64 + done as i64) {
                Ok(n) => done += n,
                Err(Errno::EINTR) => continue,
                Err(e) => return r.send(Err(e)),
            }
        }
        r.send(Ok(done as u32))
    }

    /// The last close of handle `fh`.
    pub fn release(&self, fh: u64) {
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh);
    }

    pub fn fsync(&self, fh: u64, datasync: bool, r: impl Reply<()>) {
        let me = self.clone();
        self.pool.run(move || {
            let Some(fd) = me.fd_of(fh) else {
                return r.send(Err(Errno::EBADF));
            };
            r.send(if datasync {
                nix::unistd::fdatasync(fd.as_fd())
            } else {
                nix::unistd::fsync(fd.as_fd())
            })
        });
    }

    pub fn fsyncdir(&self, ino: Ino, datasync: bool, r: impl Reply<()>) {
        let me = self.clone();
        self.pool
            .run(move || r.send(me.union.fsyncdir(ino, datasync)));
    }

    /// READDIR from `offset`: 1 is ".", 2 is "..", 3.. the entries of the snapshot.
    pub fn readdir(&self, ino: Ino, offset: u64, mut out: impl DirSink) {
        let entries = match self.listing(ino, offset) {
            Ok(e) => e,
            Err(e) => return out.done(Err(e)),
        };
        let mut i = offset;
        while i < entries.len() as u64 + 2 {
            let full = match i {
                0 => out.add(ino, 1, libc::S_IFDIR, b"."),
                1 => out.add(self.union.parent_of(ino), 2, libc::S_IFDIR, b".."),
                n => {
                    let e = &entries[(n - 2) as usize];
                    out.add(e.ino, n + 1, e.kind, &e.name)
                }
            };
            if full {
                break;
            }
            i += 1;
        }
        out.done(Ok(()))
    }

    /// READDIRPLUS from `offset` (offsets as for `readdir`).
    pub fn readdirplus(&self, ino: Ino, offset: u64, mut out: impl DirPlusSink) {
        let entries = match self.listing(ino, offset) {
            Ok(e) => e,
            Err(e) => return out.done(Err(e)),
        };
        // The directory's layers, once for all the entries of this reply.
        let dir = match self.union.dir(ino) {
            Ok(d) => d,
            Err(e) => return out.done(Err(e)),
        };
        let mut i = offset;
        while i < entries.len() as u64 + 2 {
            let (a, name): (Attr, &[u8]) = match i {
                0 => match self.union.getattr(ino) {
                    Ok(a) => (a, b"."),
                    Err(e) => return out.done(Err(e)),
                },
                1 => match self.union.getattr(self.union.parent_of(ino)) {
                    Ok(a) => (a, b".."),
                    Err(e) => return out.done(Err(e)),
                },
                n => {
                    let e = &entries[(n - 2) as usize];
                    match self.union.lookup_in(ino, &dir, &e.name) {
                        Ok(a) => (a, &e.name[..]),
                        Err(_) => {
                            i += 1; // removed since the snapshot
                            continue;
                        }
                    }
                }
            };
            if out.add(i + 1, name, &self.entry_out(a)) {
                if i >= 2 {
                    self.union.forget(a.ino, 1); // not sent: not counted by the kernel
                }
                break;
            }
            i += 1;
        }
        out.done(Ok(()))
    }

    pub fn statfs(&self, r: impl Reply<Statvfs>) {
        r.send(self.union.statfs())
    }

    pub fn setxattr(&self, ino: Ino, name: &[u8], value: &[u8], flags: i32, r: impl Reply<()>) {
        let (me, name, value) = (self.clone(), name.to_vec(), value.to_vec());
        let work = move || r.send(me.union.setxattr(ino, &name, &value, flags));
        self.maybe_later(self.union.needs_copy_up(ino), work);
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8], size: u32, r: impl Reply<XattrOut>) {
        r.send(self.union.getxattr(ino, name).and_then(|v| sized(v, size)))
    }

    pub fn listxattr(&self, ino: Ino, size: u32, r: impl Reply<XattrOut>) {
        r.send(self.union.listxattr(ino).and_then(|names| {
            let mut buf = Vec::new();
            for n in names {
                buf.extend_from_slice(&n);
                buf.push(0);
            }
            sized(buf, size)
        }))
    }

    pub fn removexattr(&self, ino: Ino, name: &[u8], r: impl Reply<()>) {
        let (me, name) = (self.clone(), name.to_vec());
        let work = move || {
            let res = me.union.removexattr(ino, &name);
            if res.is_ok() && name == b"security.capability" {
                lock(&me.caps_dropped).insert(ino);
            }
            r.send(res)
        };
        self.maybe_later(self.union.needs_copy_up(ino), work);
    }

    /// The inode-flag ioctls (lsattr/chattr, and the kernel's own fileattr calls) reach the
    /// object in its layer; anything else (a terminal's TCGETS, say) is not for a file here:
    /// ENOTTY, quietly, since programs ask it of every file they open.
    pub fn ioctl(&self, ino: Ino, cmd: u32, in_data: &[u8], out_size: u32, r: impl Reply<Vec<u8>>) {
        const GETFLAGS: u32 = libc::FS_IOC_GETFLAGS as u32;
        const SETFLAGS: u32 = libc::FS_IOC_SETFLAGS as u32;
        const GETFLAGS32: u32 = 0x8004_6601;
        const SETFLAGS32: u32 = 0x4004_6602;
        const FSGETXATTR: u32 = 0x801c_581f;
        const FSSETXATTR: u32 = 0x401c_5820;
        let word =
            |d: &[u8]| -> Option<u32> { Some(u32::from_ne_bytes(d.get(..4)?.try_into().ok()?)) };
        let out = |v: &[u8]| v[..v.len().min(out_size as usize)].to_vec();
        r.send(match cmd {
            GETFLAGS | GETFLAGS32 => self.union.inode_flags(ino).map(|f| out(&f.to_ne_bytes())),
            SETFLAGS | SETFLAGS32 => match word(in_data) {
                Some(f) => self.union.set_inode_flags(ino, f).map(|_| Vec::new()),
                None => Err(Errno::EINVAL),
            },
            FSGETXATTR => self.union.fsxattr(ino).map(|v| out(&v)),
            FSSETXATTR => match in_data.get(..crate::sys::FSXATTR_SIZE) {
                Some(d) => {
                    let mut v = [0u8; crate::sys::FSXATTR_SIZE];
                    v.copy_from_slice(d);
                    self.union.set_fsxattr(ino, &v).map(|_| Vec::new())
                }
                None => Err(Errno::EINVAL),
            },
            _ => Err(Errno::ENOTTY),
        })
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32, r: impl Reply<()>) {
        let me = self.clone();
        self.pool.run(move || {
            let Some(fd) = me.fd_of(fh) else {
                return r.send(Err(Errno::EBADF));
            };
            r.send(nix::fcntl::fallocate(
                fd.as_fd(),
                nix::fcntl::FallocateFlags::from_bits_truncate(mode),
                offset as i64,
                length as i64,
            ))
        });
    }

    pub fn lseek(&self, fh: u64, offset: i64, whence: i32, r: impl Reply<i64>) {
        let Some(fd) = self.fd_of(fh) else {
            return r.send(Err(Errno::EBADF));
        };
        let w = match whence {
            libc::SEEK_DATA => nix::unistd::Whence::SeekData,
            libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
            libc::SEEK_END => nix::unistd::Whence::SeekEnd,
            libc::SEEK_CUR => nix::unistd::Whence::SeekCur,
            _ => nix::unistd::Whence::SeekSet,
        };
        r.send(nix::unistd::lseek(fd.as_fd(), offset, w))
    }

    /// Copies `len` bytes from (handle, offset) `from` to `to`.
    pub fn copy_file_range(&self, from: (u64, u64), to: (u64, u64), len: u64, r: impl Reply<u32>) {
        let me = self.clone();
        self.pool.run(move || {
            let (Some(i), Some(o)) = (me.fd_of(from.0), me.fd_of(to.0)) else {
                return r.send(Err(Errno::EBADF));
            };
            let (mut oi, mut oo) = (from.1 as i64, to.1 as i64);
            r.send(
                nix::fcntl::copy_file_range(
                    i.as_fd(),
                    Some(&mut oi),
                    o.as_fd(),
                    Some(&mut oo),
                    len as usize,
                )
                .map(|n| n as u32),
            )
        });
    }
}

/// An attribute value or list answered as asked: its size (`size` 0), the bytes, or ERANGE.
fn sized(v: Vec<u8>, size: u32) -> Result<XattrOut, Errno> {
    if size == 0 {
        Ok(XattrOut::Size(v.len() as u32))
    } else if v.len() <= size as usize {
        Ok(XattrOut::Data(v))
    } else {
        Err(Errno::ERANGE)
    }
}

impl FuseFs {
    /// The listing of directory `ino` for a read at `offset`: merged anew at offset 0 (so a
    /// new read sees the current directory), the same one for the following offsets, dropped
    /// once read to its end.
    fn listing(&self, ino: Ino, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
        // (The read guard must be gone before the write lock below is taken.)
        let known = self
            .listings
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&ino)
            .cloned();
        if offset > 0
            && let Some(l) = known
        {
            if offset >= l.len() as u64 + 2 {
                self.listings
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&ino);
            }
            return Ok(l);
        }
        let l = Arc::new(self.union.readdir(ino)?);
        self.listings
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ino, l.clone());
        Ok(l)
    }

    /// Runs `work` on a worker when `slow`, else right here.
    fn maybe_later(&self, slow: bool, work: impl FnOnce() + Send + 'static) {
        if slow {
            self.pool.run(work);
        } else {
            work();
        }
    }

    /// The permission bits `ino` keeps when `change` by `who` drops set-id bits from it, or
    /// `None` when it keeps them all (see `setid`).
    fn killed_mode(&self, ino: Ino, change: Change, who: &Asker) -> Option<u32> {
        let st = self.union.getattr(ino).ok()?.st;
        setid::killed_mode(st.st_mode, st.st_gid, change, who)
    }

    /// Sets the permission bits of `ino` (copying it up when it is below).
    fn set_mode(&self, ino: Ino, mode: u32) -> Result<(), Errno> {
        let s = SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        self.union.setattr(ino, &s, None).map(|_| ())
    }

    fn open_now(&self, ino: Ino, flags: i32, kill: Option<u32>) -> Result<OpenOut, Errno> {
        if let Some(mode) = kill {
            self.set_mode(ino, mode)?;
        }
        let fd = Arc::new(self.union.open(ino, flags)?);
        let backing = self.backing_for(ino, &fd);
        let id = backing.as_ref().map(|b| b.id);
        // FOPEN_KEEP_CACHE with passthrough makes every read fail with EIO (seen on 6.18).
        let flags = if id.is_none() && self.union.is_lower(ino) {
            FOPEN_KEEP_CACHE
        } else {
            0
        };
        let fh = self.keep_handle(fd, backing);
        Ok(OpenOut {
            fh,
            flags,
            backing: id,
        })
    }
}
