//! `fuser::Filesystem` for a [`Union`]: decodes each request, calls the union, encodes the
//! reply. No union logic lives here; what is here is FUSE's own business: file handles,
//! directory snapshots per open handle, TTLs, negative entries, readdirplus, and passthrough
//! (the kernel reads and writes the backing file itself when the daemon may ask it to).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    BackingId, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    InitFlags, IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate,
    ReplyData, ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nix::errno::Errno;
use nix::sys::time::TimeSpec;

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

struct Handle {
    fd: Arc<OwnedFd>,
    /// Keeps the kernel's backing file while this handle is open (passthrough).
    _backing: Option<Arc<BackingId>>,
}

/// A shared backing file and the (device, inode) of the real file it stands for.
type Backing = (Weak<BackingId>, (u64, u64));

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
    union: Arc<Union>,
    files: RwLock<HashMap<u64, Handle>>,
    /// The listing being read of each directory (merged once at offset 0, then served by
    /// offset until the kernel has it all).
    listings: RwLock<HashMap<Ino, Arc<Vec<DirEntry>>>>,
    next_fh: AtomicU64,
    /// Passthrough wanted (the caller checked CAP_SYS_ADMIN) and granted by the kernel.
    passthrough: AtomicBool,
    want_passthrough: bool,
    /// One backing file per inode at a time (a kernel rule): shared by its open handles, and
    /// known by the (device, inode) of the real file it stands for.
    backing: Mutex<HashMap<Ino, Backing>>,
    /// Workers for the requests that may take long.
    pool: Pool,
    /// Inodes whose `security.capability` was just removed: the empty SETATTR that follows
    /// is the kernel's kill before a write, not chown(f, -1, -1) (see `setattr`).
    caps_dropped: Mutex<HashSet<Ino>>,
}

/// Replies to a request that answers nothing but success or an errno.
fn done(reply: ReplyEmpty, r: Result<(), Errno>) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(errno(e)),
    }
}

/// Locks `m`, also when a thread panicked while holding it.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn errno(e: Errno) -> fuser::Errno {
    fuser::Errno::from(std::io::Error::from(e))
}

fn ts(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        UNIX_EPOCH + Duration::new(sec as u64, nsec as u32)
    } else {
        UNIX_EPOCH - Duration::new((-sec) as u64, 0) + Duration::new(0, nsec as u32)
    }
}

fn kind_of(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn file_attr(a: &Attr) -> FileAttr {
    let st = &a.st;
    FileAttr {
        ino: INodeNo(a.ino),
        size: st.st_size as u64,
        blocks: st.st_blocks as u64,
        atime: ts(st.st_atime, st.st_atime_nsec),
        mtime: ts(st.st_mtime, st.st_mtime_nsec),
        ctime: ts(st.st_ctime, st.st_ctime_nsec),
        crtime: ts(st.st_ctime, st.st_ctime_nsec),
        kind: kind_of(st.st_mode),
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: st.st_blksize as u32,
        flags: 0,
    }
}

fn time_of(t: Option<TimeOrNow>) -> Option<Option<TimeSpec>> {
    t.map(|t| match t {
        TimeOrNow::Now => None,
        TimeOrNow::SpecificTime(st) => {
            let (s, n) = match st.duration_since(UNIX_EPOCH) {
                Ok(d) => (d.as_secs() as i64, d.subsec_nanos() as i64),
                Err(e) => (-(e.duration().as_secs() as i64), 0),
            };
            Some(TimeSpec::new(s, n))
        }
    })
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl FuseFs {
    /// An adapter for `union`; `passthrough` asks for FUSE passthrough (needs CAP_SYS_ADMIN).
    pub fn new(union: Arc<Union>, passthrough: bool) -> FuseFs {
        FuseFs(Arc::new(Inner {
            pool: Pool::new(WORKERS),
            caps_dropped: Mutex::new(HashSet::new()),
            union,
            files: RwLock::new(HashMap::new()),
            listings: RwLock::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            passthrough: AtomicBool::new(false),
            want_passthrough: passthrough,
            backing: Mutex::new(HashMap::new()),
        }))
    }
}

/// Worker threads for the requests that may take long.
const WORKERS: usize = 2;

impl Inner {
    fn ttl(&self, ino: Ino) -> Duration {
        if self.union.is_lower(ino) {
            TTL_LOWER
        } else {
            TTL_UPPER
        }
    }

    fn entry(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => {
                let ttl = self.ttl(a.ino);
                reply.entry(&ttl, &file_attr(&a), Generation(0));
            }
            Err(Errno::ENOENT) => {
                // A negative entry: the kernel caches the miss.
                let a = file_attr(&Attr {
                    ino: 0,
                    st: crate::sys::zeroed_stat(),
                });
                reply.entry(&TTL_NEGATIVE, &a, Generation(0));
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fd_of(&self, fh: FileHandle) -> Option<Arc<OwnedFd>> {
        self.files.read().ok()?.get(&fh.0).map(|h| h.fd.clone())
    }

    /// Remembers an open file under handle `fh` (with its passthrough backing, if any).
    fn keep_handle(&self, fh: u64, fd: Arc<OwnedFd>, backing: Option<Arc<BackingId>>) {
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
    }

    fn new_fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    /// A shared backing id for `ino`'s file, or a new one from `make`.
    ///
    /// A file opened from a lower layer and then copied up while still open is the one case
    /// the kernel cannot serve: the inode is bound to the lower file until those opens close,
    /// so the new open gets no backing (and the kernel answers it with EIO) rather than the
    /// old one, which would send writes to the read-only layer.
    fn backing_for(
        &self,
        ino: Ino,
        fd: &OwnedFd,
        make: impl FnOnce() -> std::io::Result<BackingId>,
    ) -> Option<Arc<BackingId>> {
        if !self.passthrough.load(Ordering::Relaxed) {
            return None;
        }
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
        match make() {
            Ok(b) => {
                let b = Arc::new(b);
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

impl Filesystem for FuseFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Every listing comes with attributes (no FUSE_READDIRPLUS_AUTO): with it the kernel
        // asks for them only in the first 32 KiB of a listing, and `du` or `ls -l` of a large
        // directory then sent one LOOKUP per later entry (10,348 LOOKUPs in a `du` of the
        // benchmark fixture: 0.30-0.47 s against 0.19-0.21 s without; `find`, which stats
        // nothing, pays 0.12-0.15 s against 0.18-0.20 s).
        let wanted = InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_POSIX_ACL
            // The umask comes with each create, not applied: a parent's default ACL may
            // replace it.
            | InitFlags::FUSE_DONT_MASK
            // Set-id bits are killed here (see `setid`): no GETATTR before every chown.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
        for flag in wanted.iter() {
            let _ = config.add_capabilities(flag);
        }
        if self.want_passthrough
            && config.add_capabilities(InitFlags::FUSE_PASSTHROUGH).is_ok()
            && config.set_max_stack_depth(2).is_ok()
        {
            self.passthrough.store(true, Ordering::Relaxed);
        }
        log::info!(
            "file data: {}",
            if self.passthrough.load(Ordering::Relaxed) {
                "FUSE passthrough"
            } else {
                "userspace I/O"
            }
        );
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        self.entry(reply, self.union.lookup(parent.0, name.as_bytes()));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.union.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let r = match fh.and_then(|fh| self.fd_of(fh)) {
            Some(fd) => self.union.getattr_fd(ino.0, fd.as_fd()),
            None => self.union.getattr(ino.0),
        };
        match r {
            Ok(a) => reply.attr(&self.ttl(ino.0), &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut s = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_of(atime),
            mtime: time_of(mtime),
        };
        // Set-id bits this change drops (see `setid`). A SETATTR that changes nothing is
        // chown(f, -1, -1), or the kernel's request before a write that must drop set-id bits
        // or a file capability; the two differ only for a privileged caller, whose write
        // keeps the bits. A write that drops a capability removes it just before.
        let nothing = mode.is_none()
            && uid.is_none()
            && gid.is_none()
            && size.is_none()
            && atime.is_none()
            && mtime.is_none();
        let change = if uid.is_some() || gid.is_some() {
            Some(Change::Chown)
        } else if nothing {
            if lock(&self.caps_dropped).remove(&ino.0) {
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
            s.mode = self.killed_mode(ino.0, change, req);
        }
        let me = self.clone();
        let work = move || me.setattr_now(ino, s, fh, reply);
        self.maybe_later(self.union.needs_copy_up(ino.0), work);
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.union.readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let r = self.union.mknod(
            parent.0,
            name.as_bytes(),
            mode,
            umask,
            rdev as u64,
            caller(req),
        );
        self.entry_or_error(reply, r);
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let r = self
            .union
            .mkdir(parent.0, name.as_bytes(), mode, umask, caller(req));
        self.entry_or_error(reply, r);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(reply, self.union.unlink(parent.0, name.as_bytes()))
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        done(reply, self.union.rmdir(parent.0, name.as_bytes()))
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let r = self.union.symlink(
            parent.0,
            link_name.as_bytes(),
            target.as_os_str().as_bytes(),
            caller(req),
        );
        self.entry_or_error(reply, r);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        done(
            reply,
            self.union.rename(
                parent.0,
                name.as_bytes(),
                newparent.0,
                newname.as_bytes(),
                flags.bits(),
            ),
        )
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let (me, newname) = (self.clone(), newname.to_owned());
        let work = move || me.link_now(ino, newparent, &newname, reply);
        self.maybe_later(self.union.needs_copy_up(ino.0), work);
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY || flags.0 & libc::O_TRUNC != 0;
        let kill = if flags.0 & libc::O_TRUNC != 0 {
            self.killed_mode(ino.0, Change::Write, req)
        } else {
            None
        };
        let me = self.clone();
        let work = move || me.open_now(ino, flags, kill, reply);
        self.maybe_later(writes && self.union.needs_copy_up(ino.0), work);
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let (a, fd) =
            match self
                .union
                .create(parent.0, name.as_bytes(), mode, umask, flags, caller(req))
            {
                Ok(v) => v,
                Err(e) => return reply.error(errno(e)),
            };
        let fd = Arc::new(fd);
        let fh = self.new_fh();
        let backing = self.backing_for(a.ino, &fd, || reply.open_backing(fd.as_fd()));
        self.keep_handle(fh, fd, backing.clone());
        let ttl = self.ttl(a.ino);
        match backing {
            Some(b) => reply.created_passthrough(
                &ttl,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
                &b,
            ),
            None => reply.created(
                &ttl,
                &file_attr(&a),
                Generation(0),
                FileHandle(fh),
                FopenFlags::empty(),
            ),
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(fd) = self.fd_of(fh) else {
            return reply.error(errno(Errno::EBADF));
        };
        let mut buf = vec![0u8; size as usize];
        let mut got = 0;
        while got < buf.len() {
            match nix::sys::uio::pread(fd.as_fd(), &mut buf[got..], offset as i64 + got as i64) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(Errno::EINTR) => continue,
                Err(e) => return reply.error(errno(e)),
            }
        }
        reply.data(&buf[..got]);
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(fd) = self.fd_of(fh) else {
            return reply.error(errno(Errno::EBADF));
        };
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID)
            && let Some(mode) = self.killed_mode(ino.0, Change::Write, req)
            && let Err(e) = self.set_mode(ino.0, mode)
        {
            return reply.error(errno(e));
        }
        let mut done = 0;
        while done < data.len() {
            match nix::sys::uio::pwrite(fd.as_fd(), &data[done..], offset as i64 + done as i64) {
                Ok(n) => done += n,
                Err(Errno::EINTR) => continue,
                Err(e) => return reply.error(errno(e)),
            }
        }
        reply.written(done as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // Nothing to do at close (data goes straight to the real file): ENOSYS tells the
        // kernel to stop sending FLUSH at every close.
        reply.error(errno(Errno::ENOSYS));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.files
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let me = self.clone();
        self.pool
            .run(move || me.fsync_now(ino, fh, datasync, reply));
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS once, and the kernel opens directories by itself from then on and keeps their
        // listings in its page cache (FOPEN_CACHE_DIR), dropped whenever the directory changes
        // through the mount: a warm walk sends no request at all. Listings are then read with
        // file handle 0 (see `listing`).
        reply.error(errno(Errno::ENOSYS));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let entries = match self.listing(ino.0, fh, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(e)),
        };
        // Offsets: 1 is ".", 2 is "..", 3.. the entries of the snapshot.
        let mut i = offset;
        while i < entries.len() as u64 + 2 {
            let full = match i {
                0 => reply.add(ino, 1, FileType::Directory, "."),
                1 => reply.add(
                    INodeNo(self.union.parent_of(ino.0)),
                    2,
                    FileType::Directory,
                    "..",
                ),
                n => {
                    let e = &entries[(n - 2) as usize];
                    reply.add(
                        INodeNo(e.ino),
                        n + 1,
                        kind_of(e.kind),
                        OsStr::from_bytes(&e.name),
                    )
                }
            };
            if full {
                break;
            }
            i += 1;
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let entries = match self.listing(ino.0, fh, offset) {
            Ok(e) => e,
            Err(e) => return reply.error(errno(e)),
        };
        let mut i = offset;
        while i < entries.len() as u64 + 2 {
            let (a, name): (Attr, &[u8]) = match i {
                0 => match self.union.getattr(ino.0) {
                    Ok(a) => (a, b"."),
                    Err(e) => return reply.error(errno(e)),
                },
                1 => match self.union.getattr(self.union.parent_of(ino.0)) {
                    Ok(a) => (a, b".."),
                    Err(e) => return reply.error(errno(e)),
                },
                n => {
                    let e = &entries[(n - 2) as usize];
                    match self.union.lookup(ino.0, &e.name) {
                        Ok(a) => (a, &e.name[..]),
                        Err(_) => {
                            i += 1; // removed since the snapshot
                            continue;
                        }
                    }
                }
            };
            let ttl = self.ttl(a.ino);
            let full = reply.add(
                INodeNo(a.ino),
                i + 1,
                OsStr::from_bytes(name),
                &ttl,
                &file_attr(&a),
                Generation(0),
            );
            if full {
                if i >= 2 {
                    self.union.forget(a.ino, 1); // not sent: not counted by the kernel
                }
                break;
            }
            i += 1;
        }
        reply.ok();
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let me = self.clone();
        self.pool
            .run(move || me.fsyncdir_now(ino, fh, datasync, reply));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.union.statfs() {
            Ok(s) => reply.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        position: u32,
        reply: ReplyEmpty,
    ) {
        let (me, name, value) = (self.clone(), name.to_owned(), value.to_vec());
        let work = move || me.setxattr_now(ino, &name, &value, flags, position, reply);
        self.maybe_later(self.union.needs_copy_up(ino.0), work);
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: ReplyIoctl,
    ) {
        // The inode-flag ioctls (lsattr/chattr, and the kernel's own fileattr calls) reach the
        // object in its layer; anything else (a terminal's TCGETS, say) is not for a file
        // here: ENOTTY, quietly, since programs ask it of every file they open.
        const GETFLAGS: u32 = libc::FS_IOC_GETFLAGS as u32;
        const SETFLAGS: u32 = libc::FS_IOC_SETFLAGS as u32;
        const GETFLAGS32: u32 = 0x8004_6601;
        const SETFLAGS32: u32 = 0x4004_6602;
        const FSGETXATTR: u32 = 0x801c_581f;
        const FSSETXATTR: u32 = 0x401c_5820;
        let word =
            |d: &[u8]| -> Option<u32> { Some(u32::from_ne_bytes(d.get(..4)?.try_into().ok()?)) };
        let out = |v: &[u8]| v[..v.len().min(out_size as usize)].to_vec();
        let r = match cmd {
            GETFLAGS | GETFLAGS32 => self.union.inode_flags(ino.0).map(|f| out(&f.to_ne_bytes())),
            SETFLAGS | SETFLAGS32 => match word(in_data) {
                Some(f) => self.union.set_inode_flags(ino.0, f).map(|_| Vec::new()),
                None => Err(Errno::EINVAL),
            },
            FSGETXATTR => self.union.fsxattr(ino.0).map(|v| out(&v)),
            FSSETXATTR => match in_data.get(..crate::sys::FSXATTR_SIZE) {
                Some(d) => {
                    let mut v = [0u8; crate::sys::FSXATTR_SIZE];
                    v.copy_from_slice(d);
                    self.union.set_fsxattr(ino.0, &v).map(|_| Vec::new())
                }
                None => Err(Errno::EINVAL),
            },
            _ => Err(Errno::ENOTTY),
        };
        match r {
            Ok(data) => reply.ioctl(0, &data),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        match self.union.getxattr(ino.0, name.as_bytes()) {
            Ok(v) if size == 0 => reply.size(v.len() as u32),
            Ok(v) if v.len() <= size as usize => reply.data(&v),
            Ok(_) => reply.error(errno(Errno::ERANGE)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        match self.union.listxattr(ino.0) {
            Ok(names) => {
                let mut buf = Vec::new();
                for n in names {
                    buf.extend_from_slice(&n);
                    buf.push(0);
                }
                if size == 0 {
                    reply.size(buf.len() as u32)
                } else if buf.len() <= size as usize {
                    reply.data(&buf)
                } else {
                    reply.error(errno(Errno::ERANGE))
                }
            }
            Err(e) => reply.error(errno(e)),
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let (me, name) = (self.clone(), name.to_owned());
        let work = move || me.removexattr_now(ino, &name, reply);
        self.maybe_later(self.union.needs_copy_up(ino.0), work);
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let me = self.clone();
        self.pool
            .run(move || me.fallocate_now(ino, fh, offset, length, mode, reply));
    }

    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let Some(fd) = self.fd_of(fh) else {
            return reply.error(errno(Errno::EBADF));
        };
        let w = match whence {
            libc::SEEK_DATA => nix::unistd::Whence::SeekData,
            libc::SEEK_HOLE => nix::unistd::Whence::SeekHole,
            libc::SEEK_END => nix::unistd::Whence::SeekEnd,
            libc::SEEK_CUR => nix::unistd::Whence::SeekCur,
            _ => nix::unistd::Whence::SeekSet,
        };
        match nix::unistd::lseek(fd.as_fd(), offset, w) {
            Ok(o) => reply.offset(o),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        fh_in: FileHandle,
        offset_in: u64,
        _ino_out: INodeNo,
        fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let me = self.clone();
        self.pool.run(move || {
            me.copy_file_range_now((fh_in, offset_in), (fh_out, offset_out), len, reply)
        });
    }
}

impl FuseFs {
    /// The listing of directory `ino` for a read at `offset`: merged anew at offset 0 (so a
    /// new read sees the current directory), the same one for the following offsets, dropped
    /// once read to its end.
    fn listing(&self, ino: Ino, _fh: FileHandle, offset: u64) -> Result<Arc<Vec<DirEntry>>, Errno> {
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

    fn entry_or_error(&self, reply: ReplyEntry, r: Result<Attr, Errno>) {
        match r {
            Ok(a) => {
                let ttl = self.ttl(a.ino);
                reply.entry(&ttl, &file_attr(&a), Generation(0));
            }
            Err(e) => reply.error(errno(e)),
        }
    }
}

/// The requests that may take long, run here or on a worker (see the dispatch above).
impl FuseFs {
    /// Runs `work` on a worker when `slow`, else right here.
    fn maybe_later(&self, slow: bool, work: impl FnOnce() + Send + 'static) {
        if slow {
            self.pool.run(work);
        } else {
            work();
        }
    }

    /// The permission bits `ino` keeps when `change` by the sender of `req` drops set-id bits
    /// from it, or `None` when it keeps them all (see `setid`).
    fn killed_mode(&self, ino: Ino, change: Change, req: &Request) -> Option<u32> {
        let st = self.union.getattr(ino).ok()?.st;
        let asker = Asker {
            pid: req.pid(),
            uid: req.uid(),
            gid: req.gid(),
        };
        setid::killed_mode(st.st_mode, st.st_gid, change, &asker)
    }

    /// Sets the permission bits of `ino` (copying it up when it is below).
    fn set_mode(&self, ino: Ino, mode: u32) -> Result<(), Errno> {
        let s = SetAttr {
            mode: Some(mode),
            ..SetAttr::default()
        };
        self.union.setattr(ino, &s, None).map(|_| ())
    }

    fn setattr_now(&self, ino: INodeNo, s: SetAttr, fh: Option<FileHandle>, reply: ReplyAttr) {
        let fd = fh.and_then(|fh| self.fd_of(fh));
        match self
            .union
            .setattr(ino.0, &s, fd.as_ref().map(|f| f.as_fd()))
        {
            Ok(a) => reply.attr(&self.ttl(ino.0), &file_attr(&a)),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn link_now(&self, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let r = self.union.link(ino.0, newparent.0, newname.as_bytes());
        self.entry_or_error(reply, r);
    }

    fn open_now(&self, ino: INodeNo, flags: OpenFlags, kill: Option<u32>, reply: ReplyOpen) {
        if let Some(mode) = kill
            && let Err(e) = self.set_mode(ino.0, mode)
        {
            return reply.error(errno(e));
        }
        let fd = match self.union.open(ino.0, flags.0) {
            Ok(fd) => Arc::new(fd),
            Err(e) => return reply.error(errno(e)),
        };
        let lower = self.union.is_lower(ino.0);
        let cache = if lower {
            FopenFlags::FOPEN_KEEP_CACHE
        } else {
            FopenFlags::empty()
        };
        let fh = self.new_fh();
        let backing = self.backing_for(ino.0, &fd, || reply.open_backing(fd.as_fd()));
        let passthrough = backing.is_some();
        self.keep_handle(fh, fd, backing.clone());
        match backing {
            // FOPEN_KEEP_CACHE with passthrough makes every read fail with EIO (seen on 6.18).
            Some(b) if passthrough => {
                reply.opened_passthrough(FileHandle(fh), FopenFlags::empty(), &b)
            }
            _ => reply.opened(FileHandle(fh), cache),
        }
    }

    fn fsync_now(&self, _ino: INodeNo, fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        let Some(fd) = self.fd_of(fh) else {
            return reply.error(errno(Errno::EBADF));
        };
        let r = if datasync {
            nix::unistd::fdatasync(fd.as_fd())
        } else {
            nix::unistd::fsync(fd.as_fd())
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    fn fsyncdir_now(&self, ino: INodeNo, _fh: FileHandle, datasync: bool, reply: ReplyEmpty) {
        done(reply, self.union.fsyncdir(ino.0, datasync));
    }

    fn setxattr_now(
        &self,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        done(
            reply,
            self.union.setxattr(ino.0, name.as_bytes(), value, flags),
        )
    }

    fn removexattr_now(&self, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.union.removexattr(ino.0, name.as_bytes());
        if r.is_ok() && name.as_bytes() == b"security.capability" {
            lock(&self.caps_dropped).insert(ino.0);
        }
        done(reply, r)
    }

    fn fallocate_now(
        &self,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let Some(fd) = self.fd_of(fh) else {
            return reply.error(errno(Errno::EBADF));
        };
        let r = nix::fcntl::fallocate(
            fd.as_fd(),
            nix::fcntl::FallocateFlags::from_bits_truncate(mode),
            offset as i64,
            length as i64,
        );
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(e)),
        }
    }

    /// Copies `len` bytes from (handle, offset) `from` to `to`.
    fn copy_file_range_now(
        &self,
        (fh_in, offset_in): (FileHandle, u64),
        (fh_out, offset_out): (FileHandle, u64),
        len: u64,
        reply: ReplyWrite,
    ) {
        let (Some(i), Some(o)) = (self.fd_of(fh_in), self.fd_of(fh_out)) else {
            return reply.error(errno(Errno::EBADF));
        };
        let mut oi = offset_in as i64;
        let mut oo = offset_out as i64;
        match nix::fcntl::copy_file_range(
            i.as_fd(),
            Some(&mut oi),
            o.as_fd(),
            Some(&mut oo),
            len as usize,
        ) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(e)),
        }
    }
}
