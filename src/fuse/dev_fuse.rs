//! The `/dev/fuse` transport: `fuser::Filesystem` for [`FuseFs`]. fuser reads each request
//! from the device and decodes it; this file hands it to the adapter's operation and turns
//! the adapter's answers into fuser's replies. It also answers FUSE_INIT (what strata asks
//! of the kernel), and starts the io_uring ring there when the kernel offers it.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    IoctlFlags, KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLseek, ReplyOpen,
    ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use nix::errno::Errno;
use nix::sys::statvfs::Statvfs;
use nix::sys::time::TimeSpec;

use super::adapter::{AttrOut, DirPlusSink, DirSink, EntryOut, FuseFs, OpenOut, Reply, XattrOut};
use super::setid::Asker;
use crate::cow::SetAttr;

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

fn file_attr(ino: u64, st: &libc::stat) -> FileAttr {
    FileAttr {
        ino: INodeNo(ino),
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

fn who(req: &Request) -> Asker {
    Asker {
        pid: req.pid(),
        uid: req.uid(),
        gid: req.gid(),
    }
}

// ---- the adapter's answers as fuser replies

impl Reply<EntryOut> for ReplyEntry {
    fn send(self, r: Result<EntryOut, Errno>) {
        match r {
            Ok(e) => self.entry(&e.ttl, &file_attr(e.ino, &e.st), Generation(0)),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Reply<AttrOut> for ReplyAttr {
    fn send(self, r: Result<AttrOut, Errno>) {
        match r {
            Ok(a) => self.attr(&a.ttl, &file_attr(a.ino, &a.st)),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Reply<Vec<u8>> for ReplyData {
    fn send(self, r: Result<Vec<u8>, Errno>) {
        match r {
            Ok(d) => self.data(&d),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Reply<()> for ReplyEmpty {
    fn send(self, r: Result<(), Errno>) {
        match r {
            Ok(()) => self.ok(),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Reply<OpenOut> for ReplyOpen {
    fn send(self, r: Result<OpenOut, Errno>) {
        match r {
            Ok(o) => {
                let flags = FopenFlags::from_bits_retain(o.flags);
                match o.backing {
                    Some(id) => crate::sys::fuser_opened_passthrough(self, o.fh, flags, id),
                    None => self.opened(FileHandle(o.fh), flags),
                }
            }
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Reply<(EntryOut, OpenOut)> for ReplyCreate {
    fn send(self, r: Result<(EntryOut, OpenOut), Errno>) {
        match r {
            Ok((e, o)) => {
                let attr = file_attr(e.ino, &e.st);
                let flags = FopenFlags::from_bits_retain(o.flags);
                match o.backing {
                    Some(id) => crate::sys::fuser_created_passthrough(
                        self,
                        (&e.ttl, &attr),
                        o.fh,
                        flags,
                        id,
                    ),
                    None => self.created(&e.ttl, &attr, Generation(0), FileHandle(o.fh), flags),
                }
            }
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Reply<u32> for ReplyWrite {
    fn send(self, r: Result<u32, Errno>) {
        match r {
            Ok(n) => self.written(n),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Reply<XattrOut> for ReplyXattr {
    fn send(self, r: Result<XattrOut, Errno>) {
        match r {
            Ok(XattrOut::Size(n)) => self.size(n),
            Ok(XattrOut::Data(d)) => self.data(&d),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Reply<Statvfs> for ReplyStatfs {
    fn send(self, r: Result<Statvfs, Errno>) {
        match r {
            Ok(s) => self.statfs(
                s.blocks(),
                s.blocks_free(),
                s.blocks_available(),
                s.files(),
                s.files_free(),
                s.block_size() as u32,
                s.name_max() as u32,
                s.fragment_size() as u32,
            ),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Reply<Vec<u8>> for ReplyIoctl {
    fn send(self, r: Result<Vec<u8>, Errno>) {
        match r {
            Ok(d) => self.ioctl(0, &d),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl Reply<i64> for ReplyLseek {
    fn send(self, r: Result<i64, Errno>) {
        match r {
            Ok(o) => self.offset(o),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl DirSink for ReplyDirectory {
    fn add(&mut self, ino: u64, next: u64, mode: u32, name: &[u8]) -> bool {
        ReplyDirectory::add(
            self,
            INodeNo(ino),
            next,
            kind_of(mode),
            OsStr::from_bytes(name),
        )
    }
    fn done(self, r: Result<(), Errno>) {
        match r {
            Ok(()) => self.ok(),
            Err(e) => self.error(errno(e)),
        }
    }
}

impl DirPlusSink for ReplyDirectoryPlus {
    fn add(&mut self, next: u64, name: &[u8], e: &EntryOut) -> bool {
        ReplyDirectoryPlus::add(
            self,
            INodeNo(e.ino),
            next,
            OsStr::from_bytes(name),
            &e.ttl,
            &file_attr(e.ino, &e.st),
            Generation(0),
        )
    }
    fn done(self, r: Result<(), Errno>) {
        match r {
            Ok(()) => self.ok(),
            Err(e) => self.error(errno(e)),
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
        // Writes through the server come in pieces of at most 1 MiB (the kernel's page limit
        // for one request anyway); the ring's buffers are sized by it.
        let _ = config.set_max_write(super::MAX_WRITE as u32);
        let has_dev = self.dev.get().is_some();
        if self.want_passthrough
            && has_dev
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
        self.init_ring(config);
        self.initialized.store(true, Ordering::Release);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        FuseFs::lookup(self, parent.0, name.as_bytes(), reply)
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        FuseFs::forget(self, ino.0, nlookup)
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        FuseFs::getattr(self, ino.0, fh.map(|f| f.0), reply)
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
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: time_of(atime),
            mtime: time_of(mtime),
        };
        FuseFs::setattr(self, who(req), ino.0, set, fh.map(|f| f.0), reply)
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        FuseFs::readlink(self, ino.0, reply)
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
        let name = name.as_bytes();
        FuseFs::mknod(self, who(req), parent.0, name, mode, umask, rdev, reply)
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
        FuseFs::mkdir(
            self,
            who(req),
            parent.0,
            name.as_bytes(),
            mode,
            umask,
            reply,
        )
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        FuseFs::unlink(self, parent.0, name.as_bytes(), reply)
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        FuseFs::rmdir(self, parent.0, name.as_bytes(), reply)
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        let (name, target) = (link_name.as_bytes(), target.as_os_str().as_bytes());
        FuseFs::symlink(self, who(req), parent.0, name, target, reply)
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
        let (name, newname) = (name.as_bytes(), newname.as_bytes());
        FuseFs::rename(
            self,
            parent.0,
            name,
            newparent.0,
            newname,
            flags.bits(),
            reply,
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
        FuseFs::link(self, ino.0, newparent.0, newname.as_bytes(), reply)
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        FuseFs::open(self, who(req), ino.0, flags.0, reply)
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
        let name = name.as_bytes();
        FuseFs::create(self, who(req), parent.0, name, mode, umask, flags, reply)
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
        FuseFs::read(self, fh.0, offset, size, reply)
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
        let kill = write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID);
        FuseFs::write(self, who(req), ino.0, fh.0, offset, data, kill, reply)
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
        FuseFs::release(self, fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        FuseFs::fsync(self, fh.0, datasync, reply)
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        // ENOSYS once, and the kernel opens directories by itself from then on and keeps their
        // listings in its page cache (FOPEN_CACHE_DIR), dropped whenever the directory changes
        // through the mount: a warm walk sends no request at all. Listings are then read with
        // file handle 0.
        reply.error(errno(Errno::ENOSYS));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectory,
    ) {
        FuseFs::readdir(self, ino.0, offset, reply)
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        reply: ReplyDirectoryPlus,
    ) {
        FuseFs::readdirplus(self, ino.0, offset, reply)
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
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        FuseFs::fsyncdir(self, ino.0, datasync, reply)
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        FuseFs::statfs(self, reply)
    }

    fn setxattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        FuseFs::setxattr(self, ino.0, name.as_bytes(), value, flags, reply)
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
        FuseFs::ioctl(self, ino.0, cmd, in_data, out_size, reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        FuseFs::getxattr(self, ino.0, name.as_bytes(), size, reply)
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        FuseFs::listxattr(self, ino.0, size, reply)
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        FuseFs::removexattr(self, ino.0, name.as_bytes(), reply)
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        FuseFs::fallocate(self, fh.0, offset, length, mode, reply)
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
        FuseFs::lseek(self, fh.0, offset, whence, reply)
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
        let (from, to) = ((fh_in.0, offset_in), (fh_out.0, offset_out));
        FuseFs::copy_file_range(self, from, to, len, reply)
    }
}
