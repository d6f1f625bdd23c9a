//! The few system calls the crate needs that `nix` does not wrap: extended attributes on file
//! descriptors and on names relative to a directory descriptor. This is the only module of the
//! store and of `cow` that contains `unsafe` code; every function here checks its arguments and
//! turns the C return convention into `nix::Result`.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use nix::errno::Errno;

fn cstring(bytes: &[u8]) -> nix::Result<CString> {
    CString::new(bytes).map_err(|_| Errno::EINVAL)
}

/// The path `/proc/self/fd/<dirfd>/<name>`: it names `name` inside the directory `dirfd` without
/// resolving any path from `/`, and the `l*xattr` calls do not follow `name` if it is a symlink.
fn fd_path(dir: impl AsFd, name: &OsStr) -> nix::Result<CString> {
    if name.is_empty() || name.as_bytes().contains(&b'/') {
        return Err(Errno::EINVAL);
    }
    let mut p = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    p.extend_from_slice(name.as_bytes());
    cstring(&p)
}

/// Sets the extended attribute `key` of the open file `fd`.
pub fn fsetxattr(fd: impl AsFd, key: &OsStr, value: &[u8]) -> nix::Result<()> {
    let k = cstring(key.as_bytes())?;
    // SAFETY: k is NUL-terminated, value is a valid slice for its length.
    let r = unsafe {
        libc::fsetxattr(
            fd.as_fd().as_raw_fd(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Sets the extended attribute `key` of `name` inside directory `dir`, not following a symlink.
pub fn lsetxattr_at(dir: impl AsFd, name: &OsStr, key: &OsStr, value: &[u8]) -> nix::Result<()> {
    let p = fd_path(dir, name)?;
    let k = cstring(key.as_bytes())?;
    // SAFETY: both strings are NUL-terminated, value is valid for its length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Runs a size-query-then-fetch xattr call until the buffer is large enough.
fn grow_read(mut call: impl FnMut(*mut libc::c_void, usize) -> isize) -> nix::Result<Vec<u8>> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let want = Errno::result(call(std::ptr::null_mut(), 0))? as usize;
        if want == 0 {
            return Ok(Vec::new());
        }
        buf.resize(want, 0);
        match Errno::result(call(buf.as_mut_ptr().cast(), buf.len())) {
            Ok(n) => {
                buf.truncate(n as usize);
                return Ok(buf);
            }
            Err(Errno::ERANGE) => continue, // it grew in between: ask again
            Err(e) => return Err(e),
        }
    }
}

fn split_names(list: Vec<u8>) -> Vec<OsString> {
    list.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| OsString::from_vec(s.to_vec()))
        .collect()
}

/// Lists the extended attribute names of `name` inside `dir` (symlinks not followed).
pub fn llistxattr_at(dir: impl AsFd, name: &OsStr) -> nix::Result<Vec<OsString>> {
    let p = fd_path(dir, name)?;
    // SAFETY: p is NUL-terminated; grow_read passes a buffer valid for the given length.
    let list = grow_read(|buf, len| unsafe { libc::llistxattr(p.as_ptr(), buf.cast(), len) })?;
    Ok(split_names(list))
}

/// Reads the extended attribute `key` of `name` inside `dir` (symlinks not followed).
/// `Ok(None)` when the attribute does not exist.
pub fn lgetxattr_at(dir: impl AsFd, name: &OsStr, key: &OsStr) -> nix::Result<Option<Vec<u8>>> {
    let p = fd_path(dir, name)?;
    let k = cstring(key.as_bytes())?;
    // SAFETY: both strings are NUL-terminated; the buffer is valid for the given length.
    match grow_read(|buf, len| unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf, len) }) {
        Ok(v) => Ok(Some(v)),
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Lists the extended attribute names of the open file `fd`.
pub fn flistxattr(fd: impl AsFd) -> nix::Result<Vec<OsString>> {
    let raw = fd.as_fd().as_raw_fd();
    // SAFETY: the buffer is valid for the given length.
    let list = grow_read(|buf, len| unsafe { libc::flistxattr(raw, buf.cast(), len) })?;
    Ok(split_names(list))
}

/// Reads the extended attribute `key` of the open file `fd`; `Ok(None)` when it does not exist.
pub fn fgetxattr(fd: impl AsFd, key: &OsStr) -> nix::Result<Option<Vec<u8>>> {
    let raw = fd.as_fd().as_raw_fd();
    let k = cstring(key.as_bytes())?;
    // SAFETY: k is NUL-terminated; the buffer is valid for the given length.
    match grow_read(|buf, len| unsafe { libc::fgetxattr(raw, k.as_ptr(), buf, len) }) {
        Ok(v) => Ok(Some(v)),
        Err(Errno::ENODATA) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether a process with this pid exists now, and its start time (field 22 of
/// `/proc/PID/stat`, in clock ticks since boot), so that a reused pid is not mistaken for it.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: skip to the last ')'.
    let close = stat.iter().rposition(|b| *b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// The effective user id of this process.
pub fn euid() -> u32 {
    nix::unistd::geteuid().as_raw()
}

/// Whether this process holds `cap` in its effective capability set (read from /proc).
pub fn has_capability(cap: u32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << cap) != 0)
}

/// `CAP_SYS_ADMIN`, needed for FUSE passthrough and for `trusted.*` xattrs.
pub const CAP_SYS_ADMIN: u32 = 21;
/// `CAP_MKNOD`, needed to create device nodes.
pub const CAP_MKNOD: u32 = 27;

/// The kernel release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// What an xattr call applies to.
#[derive(Clone, Copy)]
pub enum XTarget<'a> {
    /// An open file or directory (not an `O_PATH` descriptor).
    Fd(std::os::fd::BorrowedFd<'a>),
    /// `name` inside directory `dir`, not following a symlink.
    At(std::os::fd::BorrowedFd<'a>, &'a OsStr),
    /// A path that is followed (for `/proc/self/fd/N` of an `O_PATH` descriptor).
    Follow(&'a CStr),
}

/// Reads an xattr of a target; `Ok(None)` when it does not exist.
pub fn xget(t: XTarget<'_>, key: &OsStr) -> nix::Result<Option<Vec<u8>>> {
    match t {
        XTarget::Fd(fd) => fgetxattr(fd, key),
        XTarget::At(dir, name) => lgetxattr_at(dir, name, key),
        XTarget::Follow(p) => {
            let k = cstring(key.as_bytes())?;
            // SAFETY: both strings are NUL-terminated; the buffer is valid for the given length.
            match grow_read(|buf, len| unsafe { libc::getxattr(p.as_ptr(), k.as_ptr(), buf, len) })
            {
                Ok(v) => Ok(Some(v)),
                Err(Errno::ENODATA) => Ok(None),
                Err(e) => Err(e),
            }
        }
    }
}

/// Lists the xattr names of a target.
pub fn xlist(t: XTarget<'_>) -> nix::Result<Vec<OsString>> {
    match t {
        XTarget::Fd(fd) => flistxattr(fd),
        XTarget::At(dir, name) => llistxattr_at(dir, name),
        XTarget::Follow(p) => {
            // SAFETY: p is NUL-terminated; the buffer is valid for the given length.
            let list =
                grow_read(|buf, len| unsafe { libc::listxattr(p.as_ptr(), buf.cast(), len) })?;
            Ok(split_names(list))
        }
    }
}

/// Sets an xattr of a target (`flags`: `XATTR_CREATE`, `XATTR_REPLACE` or 0).
pub fn xset(t: XTarget<'_>, key: &OsStr, value: &[u8], flags: i32) -> nix::Result<()> {
    let k = cstring(key.as_bytes())?;
    let (ptr, len) = (value.as_ptr().cast(), value.len());
    // SAFETY: all strings are NUL-terminated and the value is valid for its length.
    let r = match t {
        XTarget::Fd(fd) => unsafe { libc::fsetxattr(fd.as_raw_fd(), k.as_ptr(), ptr, len, flags) },
        XTarget::At(dir, name) => {
            let p = fd_path(dir, name)?;
            unsafe { libc::lsetxattr(p.as_ptr(), k.as_ptr(), ptr, len, flags) }
        }
        XTarget::Follow(p) => unsafe { libc::setxattr(p.as_ptr(), k.as_ptr(), ptr, len, flags) },
    };
    Errno::result(r).map(drop)
}

/// Removes an xattr of a target.
pub fn xremove(t: XTarget<'_>, key: &OsStr) -> nix::Result<()> {
    let k = cstring(key.as_bytes())?;
    // SAFETY: all strings are NUL-terminated.
    let r = match t {
        XTarget::Fd(fd) => unsafe { libc::fremovexattr(fd.as_raw_fd(), k.as_ptr()) },
        XTarget::At(dir, name) => {
            let p = fd_path(dir, name)?;
            unsafe { libc::lremovexattr(p.as_ptr(), k.as_ptr()) }
        }
        XTarget::Follow(p) => unsafe { libc::removexattr(p.as_ptr(), k.as_ptr()) },
    };
    Errno::result(r).map(drop)
}

/// An all-zero `struct stat` (plain integers: all-zero is a valid value).
pub fn zeroed_stat() -> libc::stat {
    // SAFETY: libc::stat is a plain C struct of integers; all-zero bytes are a valid value.
    unsafe { std::mem::zeroed() }
}

/// Raises the soft limit of open files to the hard limit (a union keeps a descriptor per
/// directory and layer it has looked up).
pub fn raise_nofile_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
}

/// The write end of the pipe a daemonized child reports readiness on.
pub struct Ready(Option<std::os::fd::OwnedFd>);

impl Ready {
    /// Tells the waiting parent that all went well; it exits 0.
    pub fn ok(mut self) {
        if let Some(fd) = self.0.take() {
            let _ = nix::unistd::write(&fd, &[0u8]);
        }
    }
    /// Tells the waiting parent what failed; it prints it and exits 1.
    pub fn fail(mut self, msg: &str) {
        if let Some(fd) = self.0.take() {
            let mut b = vec![1u8];
            b.extend_from_slice(msg.as_bytes());
            let _ = nix::unistd::write(&fd, &b);
        }
    }
}

/// Forks into the background: the parent waits until the child calls [`Ready::ok`] (exit 0)
/// or [`Ready::fail`] (message on stderr, exit 1), or dies (exit 1); only the child returns,
/// in a new session. Call it before any thread is started.
pub fn daemonize() -> nix::Result<Ready> {
    let (r, w) = nix::unistd::pipe()?;
    // SAFETY: called while the process has a single thread (the CLI calls it before mounting
    // or spawning anything), so the child may run arbitrary code.
    match unsafe { nix::unistd::fork() }? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(w);
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match nix::unistd::read(&r, &mut chunk) {
                    Ok(0) => break,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
            match buf.first() {
                Some(0) => std::process::exit(0),
                Some(_) => {
                    eprintln!("Error: {}", String::from_utf8_lossy(&buf[1..]));
                    std::process::exit(1)
                }
                None => {
                    eprintln!("Error: the background server exited before the mount was ready");
                    std::process::exit(1)
                }
            }
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            let _ = nix::unistd::setsid();
            Ok(Ready(Some(w)))
        }
    }
}

/// Points standard input, output and error at `/dev/null` (a daemon keeps no terminal).
pub fn detach_stdio() {
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for target in 0..3 {
            // SAFETY: dup2 onto the standard descriptors of this process.
            unsafe {
                libc::dup2(null.as_raw_fd(), target);
            }
        }
    }
}

/// Unmounts `path`; lazily (`MNT_DETACH`) when it is busy or its server is gone.
pub fn unmount(path: &std::path::Path) -> nix::Result<()> {
    use nix::mount::{MntFlags, umount2};
    match umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(Errno::EBUSY) | Err(Errno::ENOTCONN) => umount2(path, MntFlags::MNT_DETACH),
        Err(e) => Err(e),
    }
}

/// `FS_IOC_GETFLAGS`: the inode flags of an open file (what `lsattr` shows).
pub fn get_inode_flags(fd: impl AsFd) -> nix::Result<u32> {
    let mut flags: libc::c_int = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one int to the pointer, which is valid.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    Errno::result(r).map(|_| flags as u32)
}

/// `FS_IOC_SETFLAGS`: sets the inode flags of an open file (what `chattr` does).
pub fn set_inode_flags(fd: impl AsFd, flags: u32) -> nix::Result<()> {
    let flags = flags as libc::c_int;
    // SAFETY: FS_IOC_SETFLAGS reads one int from the pointer, which is valid.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::FS_IOC_SETFLAGS, &flags) };
    Errno::result(r).map(drop)
}

/// Size of `struct fsxattr` (`FS_IOC_FSGETXATTR`).
pub const FSXATTR_SIZE: usize = 28;
const FS_IOC_FSGETXATTR: libc::c_ulong = 0x801c_581f;
const FS_IOC_FSSETXATTR: libc::c_ulong = 0x401c_5820;

/// `FS_IOC_FSGETXATTR`: the extended inode flags of an open file, as raw `struct fsxattr`.
pub fn get_fsxattr(fd: impl AsFd) -> nix::Result<[u8; FSXATTR_SIZE]> {
    let mut buf = [0u8; FSXATTR_SIZE];
    // SAFETY: FS_IOC_FSGETXATTR writes a struct fsxattr (28 bytes) to the buffer, which is valid.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), FS_IOC_FSGETXATTR, buf.as_mut_ptr()) };
    Errno::result(r).map(|_| buf)
}

/// `FS_IOC_FSSETXATTR`: sets the extended inode flags of an open file from raw `struct fsxattr`.
pub fn set_fsxattr(fd: impl AsFd, value: &[u8; FSXATTR_SIZE]) -> nix::Result<()> {
    // SAFETY: FS_IOC_FSSETXATTR reads a struct fsxattr (28 bytes) from the buffer, which is valid.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), FS_IOC_FSSETXATTR, value.as_ptr()) };
    Errno::result(r).map(drop)
}

// ---- FUSE passthrough

/// `FUSE_DEV_IOC_BACKING_OPEN`: `_IOW(229, 1, struct fuse_backing_map)` (16 bytes).
const FUSE_DEV_IOC_BACKING_OPEN: libc::c_ulong = 0x4010_e501;
/// `FUSE_DEV_IOC_BACKING_CLOSE`: `_IOW(229, 2, uint32_t)`.
const FUSE_DEV_IOC_BACKING_CLOSE: libc::c_ulong = 0x4004_e502;

/// Registers the open file `fd` as a passthrough backing file of the FUSE connection `dev`
/// and returns its backing id.
pub fn fuse_backing_open(dev: impl AsFd, fd: impl AsFd) -> nix::Result<u32> {
    // struct fuse_backing_map { int32_t fd; uint32_t flags; uint64_t padding; }
    let mut map = [0u8; 16];
    map[..4].copy_from_slice(&fd.as_fd().as_raw_fd().to_ne_bytes());
    // SAFETY: the ioctl reads a struct fuse_backing_map (16 bytes) from the buffer, which is
    // valid for the call.
    let r = unsafe {
        libc::ioctl(
            dev.as_fd().as_raw_fd(),
            FUSE_DEV_IOC_BACKING_OPEN,
            map.as_ptr(),
        )
    };
    Errno::result(r).map(|id| id as u32)
}

/// Drops backing id `id` of the FUSE connection `dev`.
pub fn fuse_backing_close(dev: impl AsFd, id: u32) -> nix::Result<()> {
    // SAFETY: the ioctl reads one u32 from the pointer, which is valid for the call.
    let r = unsafe { libc::ioctl(dev.as_fd().as_raw_fd(), FUSE_DEV_IOC_BACKING_CLOSE, &id) };
    Errno::result(r).map(drop)
}

/// Answers an open through fuser with passthrough to backing id `id` (which stays ours).
pub fn fuser_opened_passthrough(
    reply: fuser::ReplyOpen,
    fh: u64,
    flags: fuser::FopenFlags,
    id: u32,
) {
    // SAFETY: `id` is a live backing id of this connection; the fuser handle made of it is
    // turned back into the raw id right after the reply, so fuser never closes it.
    let b = unsafe { reply.wrap_backing(id) };
    reply.opened_passthrough(fuser::FileHandle(fh), flags, &b);
    let _ = b.into_raw();
}

/// Answers a create through fuser with passthrough to backing id `id` (which stays ours).
pub fn fuser_created_passthrough(
    reply: fuser::ReplyCreate,
    entry: (&std::time::Duration, &fuser::FileAttr),
    fh: u64,
    flags: fuser::FopenFlags,
    id: u32,
) {
    // SAFETY: as in `fuser_opened_passthrough`.
    let b = unsafe { reply.wrap_backing(id) };
    reply.created_passthrough(
        entry.0,
        entry.1,
        fuser::Generation(0),
        fuser::FileHandle(fh),
        flags,
        &b,
    );
    let _ = b.into_raw();
}

// ---- scheduling

/// Sets the calling thread's scheduling policy: `SCHED_IDLE` when `idle`, else `SCHED_OTHER`.
pub fn set_thread_idle(idle: bool) -> nix::Result<()> {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    // SAFETY: `param` is a valid sched_param for the call; pid 0 is the calling thread.
    let r = unsafe { libc::sched_setscheduler(0, policy, &param) };
    Errno::result(r).map(drop)
}

// ---- processes and namespaces (the runner's)

/// Runs `f` in a new child process made by `clone(2)` with `flags` (namespace flags such as
/// `CLONE_NEWPID`), which reports its end with SIGCHLD like a forked child; returns its pid.
/// The child exits with what `f` returns. Call it while the process has a single thread.
pub fn clone_process(
    flags: nix::sched::CloneFlags,
    f: impl FnMut() -> isize,
) -> nix::Result<nix::unistd::Pid> {
    // The child gets a copy of this stack (no CLONE_VM): it runs on its own memory.
    let mut stack = vec![0u8; 1 << 20];
    // SAFETY: the process is single-threaded here (the runner's monitor makes no threads), so
    // the child may run arbitrary code, as after fork; the stack is large for what it runs.
    unsafe { nix::sched::clone(Box::new(f), &mut stack, flags, Some(libc::SIGCHLD)) }
}

/// `fork(2)`. Call it while the process has a single thread.
pub fn fork_process() -> nix::Result<nix::unistd::ForkResult> {
    // SAFETY: the callers (the runner's monitor and `exec`) have a single thread when they fork.
    unsafe { nix::unistd::fork() }
}

/// The highest capability number this kernel knows.
pub fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// Drops every capability not in `keep` (a bit mask) from the bounding set.
pub fn drop_bounding_capabilities(keep: u64) -> nix::Result<()> {
    for cap in 0..=last_capability() {
        if keep & (1u64 << cap) == 0 {
            // SAFETY: prctl with integer arguments only.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            match Errno::result(r) {
                Ok(_) | Err(Errno::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    let r = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    };
    Errno::result(r).map(drop)
}

/// Sets the effective, permitted and inheritable capability sets to `caps` (a bit mask).
pub fn set_capabilities(caps: u64) -> nix::Result<()> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut hdr = Header {
        version: VERSION_3,
        pid: 0,
    };
    let lo = caps as u32;
    let hi = (caps >> 32) as u32;
    let data = [
        Data {
            effective: lo,
            permitted: lo,
            inheritable: lo,
        },
        Data {
            effective: hi,
            permitted: hi,
            inheritable: hi,
        },
    ];
    // SAFETY: capset reads a version-3 header and two data structs, both valid and sized so.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut Header, data.as_ptr()) };
    Errno::result(r).map(drop)
}

/// Closes every descriptor from `first` on except those in `keep`.
pub fn close_fds_except(first: i32, keep: &[i32]) {
    let mut keep: Vec<i32> = keep.iter().copied().filter(|k| *k >= first).collect();
    keep.sort_unstable();
    let mut lo = first;
    for k in keep.into_iter().chain(std::iter::once(-1)) {
        let hi = if k < 0 { u32::MAX } else { (k - 1) as u32 };
        if k < 0 || k > lo {
            // SAFETY: close_range with integer arguments only.
            let r = unsafe { libc::syscall(libc::SYS_close_range, lo as u32, hi, 0u32) };
            if r != 0 {
                // Older kernels: one descriptor at a time, as /proc lists them.
                if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
                    let fds: Vec<i32> = d
                        .flatten()
                        .filter_map(|e| e.file_name().to_str()?.parse().ok())
                        .filter(|fd| *fd >= lo && (k < 0 || *fd < k))
                        .collect();
                    for fd in fds {
                        let _ = nix::unistd::close(fd);
                    }
                }
            }
        }
        if k >= 0 {
            lo = k + 1;
        }
    }
}

/// Marks every descriptor from `first` on close-on-exec (so an exec leaks none of them).
pub fn cloexec_from(first: u32) {
    // SAFETY: close_range with integer arguments only; CLOSE_RANGE_CLOEXEC closes nothing.
    unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        );
    }
}

/// Makes the terminal `fd` the controlling terminal of this (session leader) process.
pub fn set_controlling_terminal(fd: impl AsFd) -> nix::Result<()> {
    // SAFETY: TIOCSCTTY takes an integer argument.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSCTTY, 0) };
    Errno::result(r).map(drop)
}

/// The window size of a terminal.
pub fn window_size(fd: impl AsFd) -> Option<libc::winsize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a struct winsize to the pointer, which is valid.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCGWINSZ, &mut ws) };
    (r == 0).then_some(ws)
}

/// Sets the window size of a terminal.
pub fn set_window_size(fd: impl AsFd, ws: &libc::winsize) -> nix::Result<()> {
    // SAFETY: TIOCSWINSZ reads a struct winsize from the pointer, which is valid.
    let r = unsafe { libc::ioctl(fd.as_fd().as_raw_fd(), libc::TIOCSWINSZ, ws) };
    Errno::result(r).map(drop)
}

/// Whether a process with this pid exists now (a zombie counts).
pub fn process_exists(pid: i32) -> bool {
    pid > 0 && nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok()
}

/// Gives every signal its default action and unblocks all (a child about to run another
/// program: Rust ignores SIGPIPE, the runner blocks the signals it forwards).
pub fn reset_signals() {
    use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, SigmaskHow, Signal, sigaction};
    let dfl = SigAction::new(SigHandler::SigDfl, SaFlags::empty(), SigSet::empty());
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: installing the default action runs no code of ours in a handler.
            let _ = unsafe { sigaction(sig, &dfl) };
        }
    }
    let _ = nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None);
}

/// Duplicates `fd` onto the descriptor number `target` (for a child's standard streams).
pub fn dup_onto(fd: impl AsFd, target: i32) -> nix::Result<()> {
    // SAFETY: dup2 onto a standard descriptor of this process; the old one is replaced.
    let r = unsafe { libc::dup2(fd.as_fd().as_raw_fd(), target) };
    Errno::result(r).map(drop)
}

/// Closes a descriptor number this process holds and no Rust object owns any more (in a
/// forked child, a descriptor the parent's objects own).
pub fn close_raw(fd: i32) {
    // SAFETY: closing a descriptor number; the forked child never uses its owner again.
    unsafe {
        libc::close(fd);
    }
}

/// Takes ownership of a descriptor number handed over by a parent process (it must be open
/// and owned by nothing else in this process); `None` if it is not open.
pub fn inherited_fd(raw: i32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: F_GETFD only queries the descriptor.
    if raw < 3 || unsafe { libc::fcntl(raw, libc::F_GETFD) } < 0 {
        return None;
    }
    // SAFETY: the descriptor is open, and the caller says nothing else owns it.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) })
}

/// Waits up to `timeout` for the child `pid` to end (a pidfd polled, so the wait ends the
/// moment it does); `true` when it ended. The child is not reaped.
pub fn wait_child_exit(pid: i32, timeout: std::time::Duration) -> bool {
    // SAFETY: pidfd_open takes integer arguments and returns a new descriptor or -1.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if raw < 0 {
        return false;
    }
    let Some(fd) = inherited_fd(raw as i32) else {
        return false;
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    let mut fds = [nix::poll::PollFd::new(
        fd.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    loop {
        match nix::poll::poll(
            &mut fds,
            nix::poll::PollTimeout::try_from(ms).unwrap_or(nix::poll::PollTimeout::MAX),
        ) {
            Ok(n) => return n > 0,
            Err(Errno::EINTR) => continue,
            Err(_) => return false,
        }
    }
}

/// A unix socket pair (`SOCK_SEQPACKET`, close-on-exec), for handing a descriptor to a parent.
pub fn seqpacket_pair() -> nix::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: socketpair writes two descriptors into the array, which is valid.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    Errno::result(r)?;
    // SAFETY: both descriptors are new and owned by nothing else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Sends the descriptor `fd` over the unix socket `sock` (SCM_RIGHTS, one byte of data).
pub fn send_fd(sock: impl AsFd, fd: impl AsFd) -> nix::Result<()> {
    let raw = fd.as_fd().as_raw_fd();
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: an all-zero msghdr is valid; the pointers set below outlive the call, and the
    // control buffer is CMSG_SPACE bytes for one descriptor, as CMSG_FIRSTHDR/CMSG_DATA expect.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<i32>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>(), raw);
        Errno::result(libc::sendmsg(sock.as_fd().as_raw_fd(), &msg, 0)).map(drop)
    }
}

/// Receives a descriptor sent with [`send_fd`]; `None` when the other end closed without one.
pub fn recv_fd(sock: impl AsFd) -> Option<std::os::fd::OwnedFd> {
    let mut data = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: 1,
    };
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<i32>() as u32) } as usize;
    let mut cbuf = vec![0u8; space];
    // SAFETY: as in send_fd; the received descriptor is new (MSG_CMSG_CLOEXEC) and owned by
    // nothing else.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let n = loop {
            let n = libc::recvmsg(sock.as_fd().as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC);
            if n < 0 && Errno::last() == Errno::EINTR {
                continue;
            }
            break n;
        };
        if n <= 0 {
            return None;
        }
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        if cmsg.is_null()
            || (*cmsg).cmsg_level != libc::SOL_SOCKET
            || (*cmsg).cmsg_type != libc::SCM_RIGHTS
        {
            return None;
        }
        let raw = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<i32>());
        use std::os::fd::FromRawFd;
        Some(std::os::fd::OwnedFd::from_raw_fd(raw))
    }
}

/// For the master side of a new pseudo-terminal (opened from a `ptmx`): unlocks it and opens
/// its slave side (`TIOCGPTPEER`, so the slave is the one of the same devpts instance).
pub fn pty_peer(master: impl AsFd) -> nix::Result<std::os::fd::OwnedFd> {
    let m = master.as_fd().as_raw_fd();
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int from the pointer, which is valid.
    Errno::result(unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &unlock) })?;
    // SAFETY: TIOCGPTPEER takes open flags and returns a new descriptor.
    let raw = unsafe {
        libc::ioctl(
            m,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    Errno::result(raw)?;
    use std::os::fd::FromRawFd;
    // SAFETY: the descriptor is new and owned by nothing else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(raw) })
}

/// Makes the mount at `fd` and every mount below it read-only (`mount_setattr` with
/// `AT_RECURSIVE`; a bind remount changes one mount only, whatever its flags say).
pub fn make_tree_read_only(fd: impl AsFd) -> nix::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    let attr = MountAttr {
        attr_set: 0x1, // MOUNT_ATTR_RDONLY
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = c"";
    // SAFETY: the path is an empty NUL-terminated string, `attr` a valid struct mount_attr of
    // the size given; the kernel only reads both.
    let r = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_fd().as_raw_fd(),
            empty.as_ptr(),
            (libc::AT_EMPTY_PATH | libc::AT_RECURSIVE) as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    Errno::result(r).map(drop)
}
