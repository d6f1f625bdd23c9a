//! The io_uring transport's side of the adapter: each request the ring brings is decoded
//! (`wire`), handed to the adapter's operation, and its answer encoded into the ring entry.
//! Requests come this way only when the kernel offers FUSE over io_uring
//! (`/sys/module/fuse/parameters/enable_uring`) and this process mounted `/dev/fuse` itself;
//! INIT, FORGET and INTERRUPT always come through fuser's `/dev/fuse` loop (`dev_fuse`).

use std::os::fd::AsFd;
use std::sync::{Arc, Weak};

use fuser::{InitFlags, KernelConfig};
use nix::errno::Errno;
use nix::sys::statvfs::Statvfs;

use super::adapter::{
    AttrOut, DirPlusSink, DirSink, EntryOut, FOPEN_PASSTHROUGH, FuseFs, Inner, OpenOut, Reply,
    XattrOut,
};
use super::ring::{self, Handler, Request, RingConfig};
use super::setid::Asker;
use super::wire::{self, Op, Time};
use crate::cow::SetAttr;

/// Ring entries per CPU queue: one is served at a time by the queue's thread, the others let
/// requests wait in the ring while one is with a worker (a copy-up, an fsync).
const ENTRIES_PER_QUEUE: usize = 8;

/// The adapter as the ring's handler (weakly: the ring's threads must not keep the mount's
/// state alive).
struct RingHandler(Weak<Inner>);

impl Handler for RingHandler {
    fn handle(&self, req: Request) {
        match self.0.upgrade() {
            Some(inner) => dispatch(&FuseFs::from_inner(inner), req),
            None => req.reply(libc::ENOTCONN, &[]),
        }
    }
}

impl FuseFs {
    /// Asks the kernel for FUSE over io_uring (in the INIT answer) and starts the ring's
    /// threads, which register once the answer is in. Without it, or if the ring cannot
    /// start, every request keeps coming through `/dev/fuse`.
    pub(super) fn init_ring(&self, config: &mut KernelConfig) {
        if !self.want_ring {
            log::info!("requests: /dev/fuse (io_uring not wanted)");
            return;
        }
        let Some(dev) = self.dev.get() else {
            log::info!("requests: /dev/fuse (io_uring needs strata's own /dev/fuse mount: root)");
            return;
        };
        if !config
            .capabilities()
            .contains(InitFlags::FUSE_OVER_IO_URING)
        {
            log::info!(
                "requests: /dev/fuse (the kernel does not offer io_uring: \
                 /sys/module/fuse/parameters/enable_uring is off)"
            );
            return;
        }
        let cfg = RingConfig {
            entries_per_queue: ENTRIES_PER_QUEUE,
            payload_size: super::MAX_WRITE,
        };
        let handler = Arc::new(RingHandler(Arc::downgrade(self.inner())));
        // The threads are ready to register before the INIT answer asks for the ring: once
        // it does, requests wait for the ring (or for its registration to fail).
        match ring::start(dev.as_fd(), cfg, handler) {
            Ok(r) => {
                if config
                    .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                    .is_ok()
                {
                    log::info!("requests: io_uring (one queue per CPU)");
                }
                let _ = self.ring.set(r);
            }
            Err(e) => log::info!("requests: /dev/fuse (io_uring ring not started: {e})"),
        }
    }
}

fn who(h: &wire::InHeader) -> Asker {
    Asker {
        pid: h.pid,
        uid: h.uid,
        gid: h.gid,
    }
}

fn time_of(t: Option<Time>) -> Option<Option<nix::sys::time::TimeSpec>> {
    t.map(|t| match t {
        Time::Now => None,
        Time::At(s, n) => Some(nix::sys::time::TimeSpec::new(s, n as i64)),
    })
}

thread_local! {
    /// The payload of the request being dispatched on this thread (see `dispatch`).
    static PAYLOAD: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Decodes `req` and runs its operation.
fn dispatch(fs: &FuseFs, req: Request) {
    let h = match wire::in_header(req.in_header()) {
        Ok(h) => h,
        Err(e) => return req.reply(e as i32, &[]),
    };
    // The arguments are copied out of the entry, which the reply takes along: the op struct
    // to the stack, the payload (names; write data only without passthrough) to a buffer
    // this thread reuses. Operations that finish later copy what they keep.
    let mut op_bytes = [0u8; ring::OP_SIZE];
    let n = req.op().len().min(ring::OP_SIZE);
    op_bytes[..n].copy_from_slice(&req.op()[..n]);
    PAYLOAD.with(|p| {
        let mut payload = p.borrow_mut();
        payload.clear();
        payload.extend_from_slice(req.payload());
        run(fs, &h, &op_bytes, &payload, req)
    })
}

/// Runs the operation `op_bytes` and `payload` describe, answering through `req`.
fn run(fs: &FuseFs, h: &wire::InHeader, op_bytes: &[u8], payload: &[u8], req: Request) {
    let h = *h;
    let op = match wire::decode(&h, op_bytes, payload) {
        Ok(op) => op,
        Err(e) => return req.reply(e as i32, &[]),
    };
    if log::log_enabled!(target: "strata::request", log::Level::Debug) {
        log::debug!(target: "strata::request", "{}", describe(&h, &op));
    }
    let ino = h.nodeid;
    let r = Answer(req);
    match op {
        Op::Lookup { name } => fs.lookup(ino, name, r),
        Op::Getattr { fh } => fs.getattr(ino, fh, Attrs(r.0)),
        Op::Setattr {
            fh,
            mode,
            uid,
            gid,
            size,
            atime,
            mtime,
            ..
        } => {
            let set = SetAttr {
                mode,
                uid,
                gid,
                size,
                atime: time_of(atime),
                mtime: time_of(mtime),
            };
            fs.setattr(who(&h), ino, set, fh, Attrs(r.0))
        }
        Op::Readlink => fs.readlink(ino, r),
        Op::Symlink { name, target } => fs.symlink(who(&h), ino, name, target, r),
        Op::Mknod {
            mode,
            rdev,
            umask,
            name,
        } => fs.mknod(who(&h), ino, name, mode, umask, rdev, r),
        Op::Mkdir { mode, umask, name } => fs.mkdir(who(&h), ino, name, mode, umask, r),
        Op::Unlink { name } => fs.unlink(ino, name, r),
        Op::Rmdir { name } => fs.rmdir(ino, name, r),
        Op::Rename {
            newdir,
            name,
            newname,
            flags,
        } => fs.rename(ino, name, newdir, newname, flags, r),
        Op::Link { oldnodeid, name } => fs.link(oldnodeid, ino, name, r),
        Op::Open { flags } => fs.open(who(&h), ino, flags, r),
        Op::Read { fh, offset, size } => fs.read(fh, offset, size, r),
        Op::Write {
            fh,
            offset,
            data,
            write_flags,
        } => {
            let kill = write_flags & wire::FUSE_WRITE_KILL_SUIDGID != 0;
            fs.write(who(&h), ino, fh, offset, data, kill, r)
        }
        Op::Statfs => fs.statfs(r),
        Op::Release { fh, .. } => {
            fs.release(fh);
            r.0.reply(0, &[])
        }
        Op::Releasedir { .. } => r.0.reply(0, &[]),
        Op::Fsync { fh, datasync } => fs.fsync(fh, datasync, r),
        Op::Fsyncdir { datasync, .. } => fs.fsyncdir(ino, datasync, r),
        Op::Setxattr { name, value, flags } => fs.setxattr(ino, name, value, flags, r),
        Op::Getxattr { name, size } => fs.getxattr(ino, name, size, r),
        Op::Listxattr { size } => fs.listxattr(ino, size, r),
        Op::Removexattr { name } => fs.removexattr(ino, name, r),
        // Nothing to do at close, and directories open without the server (see dev_fuse):
        // ENOSYS once and the kernel stops asking.
        Op::Flush { .. } | Op::Opendir { .. } => r.0.reply(libc::ENOSYS, &[]),
        Op::Readdir { offset, size, .. } => fs.readdir(ino, offset, Listing::new(r.0, size)),
        Op::Readdirplus { offset, size, .. } => {
            fs.readdirplus(ino, offset, Listing::new(r.0, size))
        }
        Op::Create {
            flags,
            mode,
            umask,
            name,
        } => fs.create(who(&h), ino, name, mode, umask, flags, r),
        Op::Fallocate {
            fh,
            offset,
            length,
            mode,
        } => fs.fallocate(fh, offset, length, mode, r),
        Op::Lseek { fh, offset, whence } => fs.lseek(fh, offset, whence, r),
        Op::CopyFileRange {
            fh_in,
            off_in,
            fh_out,
            off_out,
            len,
            ..
        } => fs.copy_file_range((fh_in, off_in), (fh_out, off_out), len, r),
        Op::Ioctl {
            cmd,
            out_size,
            data,
            ..
        } => fs.ioctl(ino, cmd, data, out_size, Ioctl(r.0)),
        _ => r.0.reply(libc::ENOSYS, &[]),
    }
}

/// One line for the request log (`--log-level strata::request=debug`), as fuser's for the
/// requests that come through `/dev/fuse`: opcode, node, and the name it names, if any.
fn describe(h: &wire::InHeader, op: &Op) -> String {
    let (kind, name): (&str, Option<&[u8]>) = match op {
        Op::Lookup { name } => ("LOOKUP", Some(name)),
        Op::Getattr { .. } => ("GETATTR", None),
        Op::Setattr { .. } => ("SETATTR", None),
        Op::Readlink => ("READLINK", None),
        Op::Symlink { name, .. } => ("SYMLINK", Some(name)),
        Op::Mknod { name, .. } => ("MKNOD", Some(name)),
        Op::Mkdir { name, .. } => ("MKDIR", Some(name)),
        Op::Unlink { name } => ("UNLINK", Some(name)),
        Op::Rmdir { name } => ("RMDIR", Some(name)),
        Op::Rename { name, .. } => ("RENAME", Some(name)),
        Op::Link { name, .. } => ("LINK", Some(name)),
        Op::Open { .. } => ("OPEN", None),
        Op::Opendir { .. } => ("OPENDIR", None),
        Op::Read { .. } => ("READ", None),
        Op::Write { .. } => ("WRITE", None),
        Op::Statfs => ("STATFS", None),
        Op::Release { .. } => ("RELEASE", None),
        Op::Releasedir { .. } => ("RELEASEDIR", None),
        Op::Fsync { .. } => ("FSYNC", None),
        Op::Fsyncdir { .. } => ("FSYNCDIR", None),
        Op::Setxattr { name, .. } => ("SETXATTR", Some(name)),
        Op::Getxattr { name, .. } => ("GETXATTR", Some(name)),
        Op::Listxattr { .. } => ("LISTXATTR", None),
        Op::Removexattr { name } => ("REMOVEXATTR", Some(name)),
        Op::Flush { .. } => ("FLUSH", None),
        Op::Readdir { .. } => ("READDIR", None),
        Op::Readdirplus { .. } => ("READDIRPLUS", None),
        Op::Access { .. } => ("ACCESS", None),
        Op::Create { name, .. } => ("CREATE", Some(name)),
        Op::Fallocate { .. } => ("FALLOCATE", None),
        Op::Lseek { .. } => ("LSEEK", None),
        Op::CopyFileRange { .. } => ("COPY_FILE_RANGE", None),
        Op::Ioctl { .. } => ("IOCTL", None),
        Op::Other(_) => ("OTHER", None),
    };
    let mut line = format!(
        "ring unique: {}, opcode: {kind} ({}), nodeid: {}, pid: {}",
        h.unique, h.opcode, h.nodeid, h.pid
    );
    if let Some(n) = name {
        line.push_str(&format!(", name: {}", String::from_utf8_lossy(n)));
    }
    line
}

/// The reply to one ring request, for any kind of answer.
struct Answer(Request);

impl Answer {
    fn send_with(self, r: Result<(), Errno>, parts: &[&[u8]]) {
        match r {
            Ok(()) => self.0.reply(0, parts),
            Err(e) => self.0.reply(e as i32, &[]),
        }
    }
}

impl Reply<EntryOut> for Answer {
    fn send(self, r: Result<EntryOut, Errno>) {
        match r {
            Ok(e) => self
                .0
                .reply(0, &[&wire::entry_out(e.ino, &e.st, e.ttl, e.ttl)]),
            Err(e) => self.0.reply(e as i32, &[]),
        }
    }
}

/// A getattr's or setattr's answer: attributes, not an entry (the same facts, another
/// layout).
struct Attrs(Request);

impl Reply<AttrOut> for Attrs {
    fn send(self, r: Result<AttrOut, Errno>) {
        match r {
            Ok(a) => self.0.reply(0, &[&wire::attr_out(a.ino, &a.st, a.ttl)]),
            Err(e) => self.0.reply(e as i32, &[]),
        }
    }
}

impl Reply<Vec<u8>> for Answer {
    fn send(self, r: Result<Vec<u8>, Errno>) {
        match r {
            Ok(d) => self.0.reply(0, &[&d]),
            Err(e) => self.0.reply(e as i32, &[]),
        }
    }
}

impl Reply<()> for Answer {
    fn send(self, r: Result<(), Errno>) {
        self.send_with(r, &[])
    }
}

fn open_out(o: &OpenOut) -> [u8; 16] {
    let flags = if o.backing.is_some() {
        o.flags | FOPEN_PASSTHROUGH
    } else {
        o.flags
    };
    wire::open_out(o.fh, flags, o.backing.map_or(0, |id| id as i32))
}

impl Reply<OpenOut> for Answer {
    fn send(self, r: Result<OpenOut, Errno>) {
        match r {
            Ok(o) => self.0.reply(0, &[&open_out(&o)]),
            Err(e) => self.0.reply(e as i32, &[]),
        }
    }
}

impl Reply<(EntryOut, OpenOut)> for Answer {
    fn send(self, r: Result<(EntryOut, OpenOut), Errno>) {
        match r {
            Ok((e, o)) => {
                let entry = wire::entry_out(e.ino, &e.st, e.ttl, e.ttl);
                self.0.reply(0, &[&entry, &open_out(&o)])
            }
            Err(e) => self.0.reply(e as i32, &[]),
        }
    }
}

impl Reply<u32> for Answer {
    fn send(self, r: Result<u32, Errno>) {
        match r {
            Ok(n) => self.0.reply(0, &[&wire::write_out(n)]),
            Err(e) => self.0.reply(e as i32, &[]),
        }
    }
}

impl Reply<XattrOut> for Answer {
    fn send(self, r: Result<XattrOut, Errno>) {
        match r {
            Ok(XattrOut::Size(n)) => self.0.reply(0, &[&wire::xattr_size_out(n)]),
            Ok(XattrOut::Data(d)) => self.0.reply(0, &[&d]),
            Err(e) => self.0.reply(e as i32, &[]),
        }
    }
}

impl Reply<Statvfs> for Answer {
    fn send(self, r: Result<Statvfs, Errno>) {
        match r {
            Ok(s) => self.0.reply(0, &[&wire::statfs_out(&s)]),
            Err(e) => self.0.reply(e as i32, &[]),
        }
    }
}

impl Reply<i64> for Answer {
    fn send(self, r: Result<i64, Errno>) {
        match r {
            Ok(o) => self.0.reply(0, &[&wire::lseek_out(o)]),
            Err(e) => self.0.reply(e as i32, &[]),
        }
    }
}

/// An ioctl's answer: its result word, then the data.
struct Ioctl(Request);

impl Reply<Vec<u8>> for Ioctl {
    fn send(self, r: Result<Vec<u8>, Errno>) {
        match r {
            Ok(d) => self.0.reply(0, &[&wire::ioctl_out(0), &d]),
            Err(e) => self.0.reply(e as i32, &[]),
        }
    }
}

/// A directory listing filled into the kernel's buffer size.
struct Listing {
    req: Request,
    buf: wire::DirBuf,
}

impl Listing {
    fn new(req: Request, size: u32) -> Listing {
        let size = (size as usize).min(super::MAX_WRITE);
        Listing {
            req,
            buf: wire::DirBuf::new(size),
        }
    }

    fn finish(self, r: Result<(), Errno>) {
        match r {
            Ok(()) => self.req.reply(0, &[&self.buf.into_bytes()]),
            Err(e) => self.req.reply(e as i32, &[]),
        }
    }
}

impl DirSink for Listing {
    fn add(&mut self, ino: u64, next: u64, mode: u32, name: &[u8]) -> bool {
        !self.buf.push(ino, next, mode, name)
    }
    fn done(self, r: Result<(), Errno>) {
        self.finish(r)
    }
}

impl DirPlusSink for Listing {
    fn add(&mut self, next: u64, name: &[u8], e: &EntryOut) -> bool {
        !self.buf.push_plus(e.ino, &e.st, e.ttl, e.ttl, next, name)
    }
    fn done(self, r: Result<(), Errno>) {
        self.finish(r)
    }
}
