//! The FUSE wire ABI (include/uapi/linux/fuse.h, protocol 7.41+), decoded and encoded by
//! hand: `fuser` keeps its request parser and reply encoder private, and the
//! FUSE-over-io_uring transport (kernel 6.14+) needs both.
//!
//! # Requests
//! The kernel hands a request to the server in three parts:
//! - the 40-byte `fuse_in_header` ([`in_header`]);
//! - `op`: the op's fixed argument struct (the kernel's `in_args[0]`, e.g. `fuse_write_in`).
//!   On the ring it is the 128-byte `op_in` area: the bytes after the struct, and all of it
//!   for ops without one (LOOKUP, UNLINK, READLINK, STATFS, ...), are ignored (the kernel
//!   copies only the struct, so they may be zeros or a previous request's);
//! - `payload`: the remaining arguments concatenated (NUL-terminated names, write data, xattr
//!   values): on the ring, the payload buffer (which may be larger: the rest is ignored).
//!
//! A classic `/dev/fuse` request is the same three parts back to back: split it after
//! [`IN_HEADER_SIZE`] and then after [`op_struct_size`] bytes, and [`decode`] works on both.
//!
//! Decoding is bounds-checked throughout and never panics: a short struct, a name without
//! its NUL, or data shorter than the size the struct announces is `EINVAL`. Names come back
//! without their NUL. Opcodes not listed in [`Op`] (FORGET, BATCH_FORGET, INIT, INTERRUPT,
//! locks, POLL, COPY_FILE_RANGE_64, ...) are [`Op::Other`]: the caller answers ENOSYS, except
//! for FORGET and BATCH_FORGET, which take no reply at all (on the ring's kernels these two
//! and INTERRUPT still come through `/dev/fuse`). ENOSYS to COPY_FILE_RANGE_64 makes the
//! kernel fall back to COPY_FILE_RANGE, whose reply is a [`write_out`].
//!
//! # Replies
//! A reply is a 16-byte `fuse_out_header` ([`out_header`]) followed by the payload the
//! encoders here build ([`entry_out`], [`attr_out`], [`DirBuf`], ...). On the ring the header
//! goes in the `in_out` area and the payload in the payload buffer; on `/dev/fuse` the two
//! are written back to back. Multi-byte fields are native-endian, as the kernel's are.
//!
//! We do not ask for FUSE_SETXATTR_EXT, so SETXATTR carries the 8-byte compat form of
//! `fuse_setxattr_in`.

#![forbid(unsafe_code)]

use std::time::Duration;

use nix::errno::Errno;
use nix::sys::statvfs::Statvfs;

/// Size of `struct fuse_in_header`.
pub const IN_HEADER_SIZE: usize = 40;
/// Size of `struct fuse_out_header`.
pub const OUT_HEADER_SIZE: usize = 16;
/// Size of a `fuse_dirent` without its name.
pub const DIRENT_SIZE: usize = 24;
/// Size of a `fuse_direntplus` without its name (`fuse_entry_out` + `fuse_dirent`).
pub const DIRENTPLUS_SIZE: usize = ENTRY_OUT_SIZE + DIRENT_SIZE;
const ATTR_SIZE: usize = 88;
const ENTRY_OUT_SIZE: usize = 128;
const ATTR_OUT_SIZE: usize = 104;

/// The opcodes of `enum fuse_opcode`.
pub mod opcode {
    pub const LOOKUP: u32 = 1;
    pub const FORGET: u32 = 2;
    pub const GETATTR: u32 = 3;
    pub const SETATTR: u32 = 4;
    pub const READLINK: u32 = 5;
    pub const SYMLINK: u32 = 6;
    pub const MKNOD: u32 = 8;
    pub const MKDIR: u32 = 9;
    pub const UNLINK: u32 = 10;
    pub const RMDIR: u32 = 11;
    pub const RENAME: u32 = 12;
    pub const LINK: u32 = 13;
    pub const OPEN: u32 = 14;
    pub const READ: u32 = 15;
    pub const WRITE: u32 = 16;
    pub const STATFS: u32 = 17;
    pub const RELEASE: u32 = 18;
    pub const FSYNC: u32 = 20;
    pub const SETXATTR: u32 = 21;
    pub const GETXATTR: u32 = 22;
    pub const LISTXATTR: u32 = 23;
    pub const REMOVEXATTR: u32 = 24;
    pub const FLUSH: u32 = 25;
    pub const INIT: u32 = 26;
    pub const OPENDIR: u32 = 27;
    pub const READDIR: u32 = 28;
    pub const RELEASEDIR: u32 = 29;
    pub const FSYNCDIR: u32 = 30;
    pub const GETLK: u32 = 31;
    pub const SETLK: u32 = 32;
    pub const SETLKW: u32 = 33;
    pub const ACCESS: u32 = 34;
    pub const CREATE: u32 = 35;
    pub const INTERRUPT: u32 = 36;
    pub const BMAP: u32 = 37;
    pub const DESTROY: u32 = 38;
    pub const IOCTL: u32 = 39;
    pub const POLL: u32 = 40;
    pub const NOTIFY_REPLY: u32 = 41;
    pub const BATCH_FORGET: u32 = 42;
    pub const FALLOCATE: u32 = 43;
    pub const READDIRPLUS: u32 = 44;
    pub const RENAME2: u32 = 45;
    pub const LSEEK: u32 = 46;
    pub const COPY_FILE_RANGE: u32 = 47;
    pub const SETUPMAPPING: u32 = 48;
    pub const REMOVEMAPPING: u32 = 49;
    pub const SYNCFS: u32 = 50;
    pub const TMPFILE: u32 = 51;
    pub const STATX: u32 = 52;
    pub const COPY_FILE_RANGE_64: u32 = 53;
}

// fuse_setattr_in.valid bits.
const FATTR_MODE: u32 = 1 << 0;
const FATTR_UID: u32 = 1 << 1;
const FATTR_GID: u32 = 1 << 2;
const FATTR_SIZE: u32 = 1 << 3;
const FATTR_ATIME: u32 = 1 << 4;
const FATTR_MTIME: u32 = 1 << 5;
const FATTR_FH: u32 = 1 << 6;
const FATTR_ATIME_NOW: u32 = 1 << 7;
const FATTR_MTIME_NOW: u32 = 1 << 8;
const FATTR_KILL_SUIDGID: u32 = 1 << 11;
/// fuse_getattr_in.getattr_flags: `fh` is valid.
const FUSE_GETATTR_FH: u32 = 1 << 0;
/// fuse_fsync_in.fsync_flags: data only.
const FUSE_FSYNC_FDATASYNC: u32 = 1 << 0;
/// fuse_write_in.write_flags: kill suid and sgid bits.
pub const FUSE_WRITE_KILL_SUIDGID: u32 = 1 << 2;

/// The size of the fixed argument struct the kernel sends first for `opcode` (its
/// `in_args[0]`), 0 for ops without one (and for unknown opcodes). Split a `/dev/fuse`
/// request after the header and then after this many bytes to get [`decode`]'s `op` and
/// `payload`.
pub fn op_struct_size(opcode: u32) -> usize {
    use opcode::*;
    match opcode {
        FORGET => 8,                                // fuse_forget_in
        GETATTR => 16,                              // fuse_getattr_in
        SETATTR => 88,                              // fuse_setattr_in
        MKNOD => 16,                                // fuse_mknod_in
        MKDIR => 8,                                 // fuse_mkdir_in
        RENAME => 8,                                // fuse_rename_in
        LINK => 8,                                  // fuse_link_in
        OPEN | OPENDIR => 8,                        // fuse_open_in
        READ | READDIR | READDIRPLUS => 40,         // fuse_read_in
        WRITE => 40,                                // fuse_write_in
        RELEASE | RELEASEDIR => 24,                 // fuse_release_in
        FSYNC | FSYNCDIR => 16,                     // fuse_fsync_in
        SETXATTR => 8,                              // fuse_setxattr_in, compat size
        GETXATTR | LISTXATTR => 8,                  // fuse_getxattr_in
        FLUSH => 24,                                // fuse_flush_in
        INIT => 64,                                 // fuse_init_in
        GETLK | SETLK | SETLKW => 48,               // fuse_lk_in
        ACCESS => 8,                                // fuse_access_in
        CREATE | TMPFILE => 16,                     // fuse_create_in
        INTERRUPT => 8,                             // fuse_interrupt_in
        BMAP => 16,                                 // fuse_bmap_in
        IOCTL => 32,                                // fuse_ioctl_in
        POLL => 24,                                 // fuse_poll_in
        NOTIFY_REPLY => 40,                         // fuse_notify_retrieve_in
        BATCH_FORGET => 8,                          // fuse_batch_forget_in
        FALLOCATE => 32,                            // fuse_fallocate_in
        RENAME2 => 16,                              // fuse_rename2_in
        LSEEK => 24,                                // fuse_lseek_in
        COPY_FILE_RANGE | COPY_FILE_RANGE_64 => 56, // fuse_copy_file_range_in
        SETUPMAPPING => 40,                         // fuse_setupmapping_in
        REMOVEMAPPING => 4,                         // fuse_removemapping_in
        SYNCFS => 8,                                // fuse_syncfs_in
        STATX => 24,                                // fuse_statx_in
        _ => 0, // LOOKUP, READLINK, SYMLINK, UNLINK, RMDIR, STATFS, REMOVEXATTR, DESTROY
    }
}

/// `struct fuse_in_header`, less its padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InHeader {
    /// Length of the whole request on `/dev/fuse` (header included).
    pub len: u32,
    pub opcode: u32,
    /// The request's id, echoed in the reply's [`out_header`].
    pub unique: u64,
    /// The inode the op is on (the parent directory for name ops).
    pub nodeid: u64,
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Length of the request extensions at the end of the payload, in 8-byte units.
    pub total_extlen: u16,
}

/// Parses a `fuse_in_header` from the first 40 bytes of `b` (`EINVAL` if shorter).
pub fn in_header(b: &[u8]) -> Result<InHeader, Errno> {
    let f = Fields::new(b, IN_HEADER_SIZE);
    Ok(InHeader {
        len: f.u32(0)?,
        opcode: f.u32(4)?,
        unique: f.u64(8)?,
        nodeid: f.u64(16)?,
        uid: f.u32(24)?,
        gid: f.u32(28)?,
        pid: f.u32(32)?,
        total_extlen: f.u16(36)?,
    })
}

/// A time SETATTR sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Time {
    /// The current time (`UTIME_NOW`).
    Now,
    /// Seconds since the epoch (negative before it) and nanoseconds.
    At(i64, u32),
}

/// A decoded request, borrowing names and data from the buffers it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op<'a> {
    Lookup {
        name: &'a [u8],
    },
    /// `fh` when the kernel asks for the attributes of an open file (FUSE_GETATTR_FH).
    Getattr {
        fh: Option<u64>,
    },
    /// Each field is `Some` when its FATTR_* bit is set.
    Setattr {
        fh: Option<u64>,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<Time>,
        mtime: Option<Time>,
        /// FATTR_KILL_SUIDGID: drop the suid/sgid bits as a write by the caller would.
        kill_suidgid: bool,
    },
    Readlink,
    Symlink {
        name: &'a [u8],
        target: &'a [u8],
    },
    Mknod {
        mode: u32,
        rdev: u32,
        umask: u32,
        name: &'a [u8],
    },
    Mkdir {
        mode: u32,
        umask: u32,
        name: &'a [u8],
    },
    Unlink {
        name: &'a [u8],
    },
    Rmdir {
        name: &'a [u8],
    },
    /// RENAME (`flags` 0) and RENAME2 (`RENAME_*` flags).
    Rename {
        newdir: u64,
        name: &'a [u8],
        newname: &'a [u8],
        flags: u32,
    },
    /// A new name `name` in the request's directory for the existing `oldnodeid`.
    Link {
        oldnodeid: u64,
        name: &'a [u8],
    },
    Open {
        flags: i32,
    },
    Opendir {
        flags: i32,
    },
    Read {
        fh: u64,
        offset: u64,
        size: u32,
    },
    /// `data` is exactly the `size` bytes the kernel announced.
    Write {
        fh: u64,
        offset: u64,
        data: &'a [u8],
        /// FUSE_WRITE_* bits ([`FUSE_WRITE_KILL_SUIDGID`], ...).
        write_flags: u32,
    },
    Statfs,
    Release {
        fh: u64,
        flags: i32,
    },
    Releasedir {
        fh: u64,
    },
    Fsync {
        fh: u64,
        datasync: bool,
    },
    Fsyncdir {
        fh: u64,
        datasync: bool,
    },
    Setxattr {
        name: &'a [u8],
        value: &'a [u8],
        flags: i32,
    },
    /// `size` 0 asks for the value's size only ([`xattr_size_out`]).
    Getxattr {
        name: &'a [u8],
        size: u32,
    },
    /// `size` 0 asks for the list's size only ([`xattr_size_out`]).
    Listxattr {
        size: u32,
    },
    Removexattr {
        name: &'a [u8],
    },
    Flush {
        fh: u64,
    },
    Readdir {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Readdirplus {
        fh: u64,
        offset: u64,
        size: u32,
    },
    Access {
        mask: u32,
    },
    Create {
        flags: i32,
        mode: u32,
        umask: u32,
        name: &'a [u8],
    },
    Fallocate {
        fh: u64,
        offset: u64,
        length: u64,
        mode: i32,
    },
    Lseek {
        fh: u64,
        offset: i64,
        whence: i32,
    },
    /// From the request's inode and `fh_in` to `nodeid_out` and `fh_out`; replied to with a
    /// [`write_out`].
    CopyFileRange {
        fh_in: u64,
        off_in: u64,
        nodeid_out: u64,
        fh_out: u64,
        off_out: u64,
        len: u64,
        flags: u64,
    },
    /// `data`: the `in_size` bytes of input; the reply is an [`ioctl_out`] followed by at
    /// most `out_size` bytes.
    Ioctl {
        fh: u64,
        flags: u32,
        cmd: u32,
        arg: u64,
        out_size: u32,
        data: &'a [u8],
    },
    /// Any other opcode: answer ENOSYS (no reply at all to FORGET and BATCH_FORGET).
    Other(u32),
}

/// Decodes the request `h` announces from its fixed struct `op` and its `payload` (see the
/// module doc). `op` may be longer than the struct (the ring's 128 bytes) and `payload`
/// longer than the arguments: the rest is ignored. `EINVAL` for a short `op`, a name
/// without its NUL, or data shorter than announced.
pub fn decode<'a>(h: &InHeader, op: &'a [u8], payload: &'a [u8]) -> Result<Op<'a>, Errno> {
    use opcode::*;
    let f = Fields::new(op, op_struct_size(h.opcode));
    let mut p = Payload(payload);
    Ok(match h.opcode {
        LOOKUP => Op::Lookup { name: p.name()? },
        GETATTR => Op::Getattr {
            fh: (f.u32(0)? & FUSE_GETATTR_FH != 0)
                .then(|| f.u64(8))
                .transpose()?,
        },
        SETATTR => {
            let valid = f.u32(0)?;
            let has = |bit: u32| valid & bit != 0;
            let time = |sec: usize, nsec: usize, set: u32, now: u32| -> Result<_, Errno> {
                Ok(if has(now) {
                    Some(Time::Now)
                } else if has(set) {
                    Some(Time::At(f.u64(sec)? as i64, f.u32(nsec)?))
                } else {
                    None
                })
            };
            Op::Setattr {
                fh: has(FATTR_FH).then(|| f.u64(8)).transpose()?,
                size: has(FATTR_SIZE).then(|| f.u64(16)).transpose()?,
                atime: time(32, 56, FATTR_ATIME, FATTR_ATIME_NOW)?,
                mtime: time(40, 60, FATTR_MTIME, FATTR_MTIME_NOW)?,
                mode: has(FATTR_MODE).then(|| f.u32(68)).transpose()?,
                uid: has(FATTR_UID).then(|| f.u32(76)).transpose()?,
                gid: has(FATTR_GID).then(|| f.u32(80)).transpose()?,
                kill_suidgid: has(FATTR_KILL_SUIDGID),
            }
        }
        READLINK => Op::Readlink,
        SYMLINK => Op::Symlink {
            name: p.name()?,
            target: p.name()?,
        },
        MKNOD => Op::Mknod {
            mode: f.u32(0)?,
            rdev: f.u32(4)?,
            umask: f.u32(8)?,
            name: p.name()?,
        },
        MKDIR => Op::Mkdir {
            mode: f.u32(0)?,
            umask: f.u32(4)?,
            name: p.name()?,
        },
        UNLINK => Op::Unlink { name: p.name()? },
        RMDIR => Op::Rmdir { name: p.name()? },
        RENAME | RENAME2 => Op::Rename {
            newdir: f.u64(0)?,
            flags: if h.opcode == RENAME2 { f.u32(8)? } else { 0 },
            name: p.name()?,
            newname: p.name()?,
        },
        LINK => Op::Link {
            oldnodeid: f.u64(0)?,
            name: p.name()?,
        },
        OPEN => Op::Open {
            flags: f.u32(0)? as i32,
        },
        OPENDIR => Op::Opendir {
            flags: f.u32(0)? as i32,
        },
        READ => Op::Read {
            fh: f.u64(0)?,
            offset: f.u64(8)?,
            size: f.u32(16)?,
        },
        WRITE => Op::Write {
            fh: f.u64(0)?,
            offset: f.u64(8)?,
            data: p.bytes(f.u32(16)?)?,
            write_flags: f.u32(20)?,
        },
        STATFS => Op::Statfs,
        RELEASE => Op::Release {
            fh: f.u64(0)?,
            flags: f.u32(8)? as i32,
        },
        RELEASEDIR => Op::Releasedir { fh: f.u64(0)? },
        FSYNC => Op::Fsync {
            fh: f.u64(0)?,
            datasync: f.u32(8)? & FUSE_FSYNC_FDATASYNC != 0,
        },
        FSYNCDIR => Op::Fsyncdir {
            fh: f.u64(0)?,
            datasync: f.u32(8)? & FUSE_FSYNC_FDATASYNC != 0,
        },
        SETXATTR => Op::Setxattr {
            name: p.name()?,
            value: p.bytes(f.u32(0)?)?,
            flags: f.u32(4)? as i32,
        },
        GETXATTR => Op::Getxattr {
            size: f.u32(0)?,
            name: p.name()?,
        },
        LISTXATTR => Op::Listxattr { size: f.u32(0)? },
        REMOVEXATTR => Op::Removexattr { name: p.name()? },
        FLUSH => Op::Flush { fh: f.u64(0)? },
        READDIR => Op::Readdir {
            fh: f.u64(0)?,
            offset: f.u64(8)?,
            size: f.u32(16)?,
        },
        READDIRPLUS => Op::Readdirplus {
            fh: f.u64(0)?,
            offset: f.u64(8)?,
            size: f.u32(16)?,
        },
        ACCESS => Op::Access { mask: f.u32(0)? },
        CREATE => Op::Create {
            flags: f.u32(0)? as i32,
            mode: f.u32(4)?,
            umask: f.u32(8)?,
            name: p.name()?,
        },
        FALLOCATE => Op::Fallocate {
            fh: f.u64(0)?,
            offset: f.u64(8)?,
            length: f.u64(16)?,
            mode: f.u32(24)? as i32,
        },
        LSEEK => Op::Lseek {
            fh: f.u64(0)?,
            offset: f.u64(8)? as i64,
            whence: f.u32(16)? as i32,
        },
        COPY_FILE_RANGE => Op::CopyFileRange {
            fh_in: f.u64(0)?,
            off_in: f.u64(8)?,
            nodeid_out: f.u64(16)?,
            fh_out: f.u64(24)?,
            off_out: f.u64(32)?,
            len: f.u64(40)?,
            flags: f.u64(48)?,
        },
        IOCTL => Op::Ioctl {
            fh: f.u64(0)?,
            flags: f.u32(8)?,
            cmd: f.u32(12)?,
            arg: f.u64(16)?,
            data: p.bytes(f.u32(24)?)?,
            out_size: f.u32(28)?,
        },
        other => Op::Other(other),
    })
}

/// A fixed struct: bounds-checked native-endian reads at byte offsets. Every read fails
/// with `EINVAL` if the buffer is shorter than the struct, so an op that reads nothing
/// ([`Op::Other`]) does not care.
struct Fields<'a> {
    b: &'a [u8],
    whole: bool,
}

impl<'a> Fields<'a> {
    /// `b`, which should hold a struct of `size` bytes.
    fn new(b: &'a [u8], size: usize) -> Self {
        Fields {
            b,
            whole: b.len() >= size,
        }
    }

    fn array<const N: usize>(&self, off: usize) -> Result<[u8; N], Errno> {
        if !self.whole {
            return Err(Errno::EINVAL);
        }
        self.b
            .get(off..off.checked_add(N).ok_or(Errno::EINVAL)?)
            .and_then(|s| s.try_into().ok())
            .ok_or(Errno::EINVAL)
    }

    fn u16(&self, off: usize) -> Result<u16, Errno> {
        self.array(off).map(u16::from_ne_bytes)
    }

    fn u32(&self, off: usize) -> Result<u32, Errno> {
        self.array(off).map(u32::from_ne_bytes)
    }

    fn u64(&self, off: usize) -> Result<u64, Errno> {
        self.array(off).map(u64::from_ne_bytes)
    }
}

/// The payload, consumed from the front.
struct Payload<'a>(&'a [u8]);

impl<'a> Payload<'a> {
    /// The next NUL-terminated name, without its NUL.
    fn name(&mut self) -> Result<&'a [u8], Errno> {
        let end = self.0.iter().position(|&c| c == 0).ok_or(Errno::EINVAL)?;
        let (name, rest) = self.0.split_at(end);
        self.0 = rest.get(1..).unwrap_or_default();
        Ok(name)
    }

    /// The next `n` bytes.
    fn bytes(&mut self, n: u32) -> Result<&'a [u8], Errno> {
        let n = usize::try_from(n).map_err(|_| Errno::EINVAL)?;
        if self.0.len() < n {
            return Err(Errno::EINVAL);
        }
        let (data, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(data)
    }
}

/// Native-endian writes into a fixed-size reply struct.
struct Out<'a>(&'a mut [u8]);

impl Out<'_> {
    fn u32(&mut self, off: usize, v: u32) {
        self.0[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn u64(&mut self, off: usize, v: u64) {
        self.0[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

/// `struct fuse_out_header`: `len` is the whole reply's (header included), `error` 0 or a
/// negated errno, `unique` the request's.
pub fn out_header(len: u32, error: i32, unique: u64) -> [u8; 16] {
    let mut b = [0; OUT_HEADER_SIZE];
    let mut o = Out(&mut b);
    o.u32(0, len);
    o.u32(4, error as u32);
    o.u64(8, unique);
    b
}

/// `struct fuse_attr` for `st`, with inode number `ino` (`st.st_ino` is not used). Times
/// before the epoch are encoded as the two's complement the kernel reads back as signed.
fn attr(ino: u64, st: &libc::stat) -> [u8; ATTR_SIZE] {
    let mut b = [0; ATTR_SIZE];
    let mut o = Out(&mut b);
    o.u64(0, ino);
    o.u64(8, st.st_size as u64);
    o.u64(16, st.st_blocks as u64);
    o.u64(24, st.st_atime as u64);
    o.u64(32, st.st_mtime as u64);
    o.u64(40, st.st_ctime as u64);
    o.u32(48, st.st_atime_nsec as u32);
    o.u32(52, st.st_mtime_nsec as u32);
    o.u32(56, st.st_ctime_nsec as u32);
    o.u32(60, st.st_mode);
    o.u32(64, st.st_nlink as u32);
    o.u32(68, st.st_uid);
    o.u32(72, st.st_gid);
    o.u32(76, st.st_rdev as u32);
    o.u32(80, st.st_blksize as u32);
    // 84: flags (FUSE_ATTR_SUBMOUNT, FUSE_ATTR_DAX): none.
    b
}

/// `struct fuse_entry_out` (128 bytes): the reply to LOOKUP, MKNOD, MKDIR, SYMLINK and LINK
/// (and the first part of CREATE's). Generation 0.
pub fn entry_out(
    nodeid: u64,
    st: &libc::stat,
    entry_ttl: Duration,
    attr_ttl: Duration,
) -> [u8; 128] {
    let mut b = [0; ENTRY_OUT_SIZE];
    let mut o = Out(&mut b);
    o.u64(0, nodeid);
    // 8: generation 0.
    o.u64(16, entry_ttl.as_secs());
    o.u64(24, attr_ttl.as_secs());
    o.u32(32, entry_ttl.subsec_nanos());
    o.u32(36, attr_ttl.subsec_nanos());
    b[40..].copy_from_slice(&attr(nodeid, st));
    b
}

/// `struct fuse_attr_out` (104 bytes): the reply to GETATTR and SETATTR.
pub fn attr_out(ino: u64, st: &libc::stat, ttl: Duration) -> [u8; 104] {
    let mut b = [0; ATTR_OUT_SIZE];
    let mut o = Out(&mut b);
    o.u64(0, ttl.as_secs());
    o.u32(8, ttl.subsec_nanos());
    b[16..].copy_from_slice(&attr(ino, st));
    b
}

/// `struct fuse_open_out` (16 bytes): the reply to OPEN and OPENDIR, and CREATE's second
/// part (after its [`entry_out`]). `open_flags`: FOPEN_* bits; `backing_id` (with
/// FOPEN_PASSTHROUGH) from FUSE_DEV_IOC_BACKING_OPEN, else 0.
pub fn open_out(fh: u64, open_flags: u32, backing_id: i32) -> [u8; 16] {
    let mut b = [0; 16];
    let mut o = Out(&mut b);
    o.u64(0, fh);
    o.u32(8, open_flags);
    o.u32(12, backing_id as u32);
    b
}

/// `struct fuse_write_out` (8 bytes): the reply to WRITE and COPY_FILE_RANGE.
pub fn write_out(size: u32) -> [u8; 8] {
    let mut b = [0; 8];
    Out(&mut b).u32(0, size);
    b
}

/// `struct fuse_statfs_out` (its `fuse_kstatfs`, 80 bytes): the reply to STATFS.
pub fn statfs_out(s: &Statvfs) -> [u8; 80] {
    let mut b = [0; 80];
    let mut o = Out(&mut b);
    o.u64(0, s.blocks());
    o.u64(8, s.blocks_free());
    o.u64(16, s.blocks_available());
    o.u64(24, s.files());
    o.u64(32, s.files_free());
    o.u32(40, s.block_size() as u32);
    o.u32(44, s.name_max() as u32);
    o.u32(48, s.fragment_size() as u32);
    // 52: padding; 56..80: spare.
    b
}

/// `struct fuse_getxattr_out` (8 bytes): the reply to GETXATTR and LISTXATTR asked with
/// size 0. (Asked with a size, the reply is the value or list itself, or ERANGE.)
pub fn xattr_size_out(size: u32) -> [u8; 8] {
    let mut b = [0; 8];
    Out(&mut b).u32(0, size);
    b
}

/// `struct fuse_lseek_out` (8 bytes): the reply to LSEEK.
pub fn lseek_out(offset: i64) -> [u8; 8] {
    offset.to_ne_bytes()
}

/// `struct fuse_ioctl_out` (16 bytes) for a restricted ioctl: `result`, then no flags and no
/// iovecs. The output data (at most the request's `out_size`) follows it in the reply.
pub fn ioctl_out(result: i32) -> [u8; 16] {
    let mut b = [0; 16];
    Out(&mut b).u32(0, result as u32);
    b
}

/// The reply to READDIR (`fuse_dirent`s, [`DirBuf::push`]) or READDIRPLUS
/// (`fuse_direntplus`es, [`DirBuf::push_plus`]), never both in one buffer: entries, each
/// padded with zeros to a multiple of 8 bytes, up to the size the request asked for.
#[derive(Debug, Clone)]
pub struct DirBuf {
    buf: Vec<u8>,
    max: usize,
}

impl DirBuf {
    /// An empty buffer that will hold at most `max` bytes (the request's `size`).
    pub fn new(max: usize) -> Self {
        DirBuf {
            buf: Vec::with_capacity(max.min(64 * 1024)),
            max,
        }
    }

    /// Adds a `fuse_dirent`: inode `ino`, the offset of the entry after it `next_off`, the
    /// file type from `mode`'s S_IFMT bits (a `st_mode`; `d_type << 12` does too). `false`,
    /// and nothing added, if the padded entry does not fit.
    pub fn push(&mut self, ino: u64, next_off: u64, mode: u32, name: &[u8]) -> bool {
        let Ok(namelen) = u32::try_from(name.len()) else {
            return false;
        };
        if !self.fits(DIRENT_SIZE + name.len()) {
            return false;
        }
        self.dirent(ino, next_off, namelen, mode, name);
        true
    }

    /// Adds a `fuse_direntplus`: the [`entry_out`] of `nodeid` (its attributes `st`), then
    /// the `fuse_dirent` of [`push`](Self::push), with `nodeid` as its inode and its type
    /// from `st.st_mode`. Each entry with a non-zero `nodeid` counts as a lookup for the
    /// kernel (nodeid 0 is a negative entry, which the kernel skips). `false`, and nothing
    /// added, if the padded entry does not fit.
    pub fn push_plus(
        &mut self,
        nodeid: u64,
        st: &libc::stat,
        entry_ttl: Duration,
        attr_ttl: Duration,
        next_off: u64,
        name: &[u8],
    ) -> bool {
        let Ok(namelen) = u32::try_from(name.len()) else {
            return false;
        };
        if !self.fits(DIRENTPLUS_SIZE + name.len()) {
            return false;
        }
        self.buf
            .extend_from_slice(&entry_out(nodeid, st, entry_ttl, attr_ttl));
        self.dirent(nodeid, next_off, namelen, st.st_mode, name);
        true
    }

    /// Whether an entry of `len` bytes, once padded, fits.
    fn fits(&self, len: usize) -> bool {
        self.buf.len() + len.next_multiple_of(8) <= self.max
    }

    fn dirent(&mut self, ino: u64, off: u64, namelen: u32, mode: u32, name: &[u8]) {
        self.buf.extend_from_slice(&ino.to_ne_bytes());
        self.buf.extend_from_slice(&off.to_ne_bytes());
        self.buf.extend_from_slice(&namelen.to_ne_bytes());
        self.buf
            .extend_from_slice(&((mode >> 12) & 15).to_ne_bytes());
        self.buf.extend_from_slice(name);
        self.buf.resize(self.buf.len().next_multiple_of(8), 0);
    }

    /// Bytes so far.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether no entry has been added.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The reply payload.
    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::opcode::*;
    use super::*;

    /// Lays out a struct field by field, native-endian, the way the C compiler does for
    /// these naturally aligned structs.
    #[derive(Default)]
    struct B(Vec<u8>);

    impl B {
        fn u16(mut self, v: u16) -> Self {
            self.0.extend_from_slice(&v.to_ne_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_ne_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_ne_bytes());
            self
        }
        fn bytes(mut self, v: &[u8]) -> Self {
            self.0.extend_from_slice(v);
            self
        }
        /// The struct for `opcode`: checks its size against [`op_struct_size`].
        fn op(self, opcode: u32) -> Vec<u8> {
            assert_eq!(self.0.len(), op_struct_size(opcode), "opcode {opcode}");
            self.0
        }
    }

    fn header(opcode: u32) -> InHeader {
        InHeader {
            len: 0,
            opcode,
            unique: 7,
            nodeid: 1,
            uid: 0,
            gid: 0,
            pid: 1,
            total_extlen: 0,
        }
    }

    /// Checks that `op` and `payload` decode to `want`, split exactly as on `/dev/fuse` and
    /// as the ring delivers them: `op` in 128 bytes, with junk after it, and the payload
    /// buffer larger than the arguments (junk past them too).
    fn check(opcode: u32, op: &[u8], payload: &[u8], want: Op<'_>) {
        let h = header(opcode);
        assert_eq!(decode(&h, op, payload), Ok(want.clone()), "exact split");
        let mut op128 = op.to_vec();
        op128.resize(128, 0x5a);
        let mut big = payload.to_vec();
        big.extend_from_slice(&[0xa5; 300]);
        assert_eq!(decode(&h, &op128, &big), Ok(want), "ring layout");
    }

    #[test]
    fn in_header_layout() {
        let b = B::default()
            .u32(80)
            .u32(WRITE)
            .u64(0x1122334455667788)
            .u64(42)
            .u32(1000)
            .u32(1001)
            .u32(4242)
            .u16(3)
            .u16(0)
            .0;
        assert_eq!(b.len(), IN_HEADER_SIZE);
        assert_eq!(
            in_header(&b),
            Ok(InHeader {
                len: 80,
                opcode: WRITE,
                unique: 0x1122334455667788,
                nodeid: 42,
                uid: 1000,
                gid: 1001,
                pid: 4242,
                total_extlen: 3,
            })
        );
        for n in 0..IN_HEADER_SIZE {
            assert_eq!(in_header(&b[..n]), Err(Errno::EINVAL));
        }
    }

    #[test]
    fn name_ops() {
        // The ring's op_in of an op without a struct is all zeros, but garbage must not
        // matter either.
        let junk = [0xff; 128];
        let h = header;
        assert_eq!(
            decode(&h(LOOKUP), &junk, b"foo\0bar"),
            Ok(Op::Lookup { name: b"foo" })
        );
        check(LOOKUP, &[], b"foo\0", Op::Lookup { name: b"foo" });
        check(UNLINK, &[], b"f\0", Op::Unlink { name: b"f" });
        check(RMDIR, &[], b"d\0", Op::Rmdir { name: b"d" });
        check(
            REMOVEXATTR,
            &[],
            b"user.x\0",
            Op::Removexattr { name: b"user.x" },
        );
        check(
            SYMLINK,
            &[],
            b"link\0../target\0",
            Op::Symlink {
                name: b"link",
                target: b"../target",
            },
        );
        check(READLINK, &[], &[], Op::Readlink);
        check(STATFS, &[], &[], Op::Statfs);
        // Missing NULs.
        assert_eq!(decode(&h(LOOKUP), &[], b"foo"), Err(Errno::EINVAL));
        assert_eq!(decode(&h(LOOKUP), &[], b""), Err(Errno::EINVAL));
        assert_eq!(
            decode(&h(SYMLINK), &[], b"link\0target"),
            Err(Errno::EINVAL)
        );
        assert_eq!(decode(&h(UNLINK), &[], b"x"), Err(Errno::EINVAL));
    }

    #[test]
    fn getattr() {
        let op = B::default().u32(1).u32(0).u64(99).op(GETATTR);
        check(GETATTR, &op, &[], Op::Getattr { fh: Some(99) });
        let op = B::default().u32(0).u32(0).u64(99).op(GETATTR);
        check(GETATTR, &op, &[], Op::Getattr { fh: None });
    }

    fn setattr_in(valid: u32) -> Vec<u8> {
        B::default()
            .u32(valid)
            .u32(0) // padding
            .u64(11) // fh
            .u64(4096) // size
            .u64(0) // lock_owner
            .u64(-5i64 as u64) // atime
            .u64(1_700_000_000) // mtime
            .u64(1) // ctime
            .u32(123) // atimensec
            .u32(456) // mtimensec
            .u32(789) // ctimensec
            .u32(0o100644) // mode
            .u32(0) // unused4
            .u32(1000) // uid
            .u32(1001) // gid
            .u32(0) // unused5
            .op(SETATTR)
    }

    #[test]
    fn setattr() {
        check(
            SETATTR,
            &setattr_in(0),
            &[],
            Op::Setattr {
                fh: None,
                mode: None,
                uid: None,
                gid: None,
                size: None,
                atime: None,
                mtime: None,
                kill_suidgid: false,
            },
        );
        let all = FATTR_MODE
            | FATTR_UID
            | FATTR_GID
            | FATTR_SIZE
            | FATTR_ATIME
            | FATTR_MTIME
            | FATTR_FH
            | FATTR_KILL_SUIDGID
            | 1 << 9 // LOCKOWNER
            | 1 << 10; // CTIME
        check(
            SETATTR,
            &setattr_in(all),
            &[],
            Op::Setattr {
                fh: Some(11),
                mode: Some(0o100644),
                uid: Some(1000),
                gid: Some(1001),
                size: Some(4096),
                atime: Some(Time::At(-5, 123)),
                mtime: Some(Time::At(1_700_000_000, 456)),
                kill_suidgid: true,
            },
        );
        // The kernel sets *_NOW together with the plain bit.
        let now = FATTR_ATIME | FATTR_ATIME_NOW | FATTR_MTIME | FATTR_MTIME_NOW;
        let times = |valid| match decode(&header(SETATTR), &setattr_in(valid), &[]) {
            Ok(Op::Setattr { atime, mtime, .. }) => (atime, mtime),
            other => panic!("{other:?}"),
        };
        assert_eq!(times(now), (Some(Time::Now), Some(Time::Now)));
        assert_eq!(times(FATTR_MTIME_NOW), (None, Some(Time::Now)));
        assert_eq!(times(FATTR_ATIME), (Some(Time::At(-5, 123)), None));
        assert_eq!(
            decode(&header(SETATTR), &setattr_in(all)[..87], &[]),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn create_ops() {
        let op = B::default()
            .u32(0o20644)
            .u32(0x0803)
            .u32(0o022)
            .u32(0)
            .op(MKNOD);
        check(
            MKNOD,
            &op,
            b"null\0",
            Op::Mknod {
                mode: 0o20644,
                rdev: 0x0803,
                umask: 0o022,
                name: b"null",
            },
        );
        let op = B::default().u32(0o755).u32(0o002).op(MKDIR);
        check(
            MKDIR,
            &op,
            b"dir\0",
            Op::Mkdir {
                mode: 0o755,
                umask: 0o002,
                name: b"dir",
            },
        );
        let op = B::default()
            .u32(libc::O_WRONLY as u32 | libc::O_CREAT as u32 | libc::O_EXCL as u32)
            .u32(0o644)
            .u32(0o022)
            .u32(0) // open_flags
            .op(CREATE);
        check(
            CREATE,
            &op,
            b"new\0",
            Op::Create {
                flags: libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL,
                mode: 0o644,
                umask: 0o022,
                name: b"new",
            },
        );
        assert_eq!(decode(&header(CREATE), &op, b"new"), Err(Errno::EINVAL));
        assert_eq!(
            decode(&header(CREATE), &op[..15], b"new\0"),
            Err(Errno::EINVAL)
        );
        let op = B::default().u64(77).op(LINK);
        check(
            LINK,
            &op,
            b"hard\0",
            Op::Link {
                oldnodeid: 77,
                name: b"hard",
            },
        );
    }

    #[test]
    fn rename() {
        let op = B::default().u64(5).op(RENAME);
        check(
            RENAME,
            &op,
            b"a\0b\0",
            Op::Rename {
                newdir: 5,
                name: b"a",
                newname: b"b",
                flags: 0,
            },
        );
        let op = B::default()
            .u64(6)
            .u32(libc::RENAME_NOREPLACE)
            .u32(0)
            .op(RENAME2);
        check(
            RENAME2,
            &op,
            b"old\0new\0",
            Op::Rename {
                newdir: 6,
                name: b"old",
                newname: b"new",
                flags: libc::RENAME_NOREPLACE,
            },
        );
        assert_eq!(
            decode(&header(RENAME2), &op, b"old\0new"),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            decode(&header(RENAME2), &op[..8], b"a\0b\0"),
            Err(Errno::EINVAL)
        );
    }

    #[test]
    fn open_read_write_release() {
        let op = B::default().u32(libc::O_RDWR as u32).u32(0).op(OPEN);
        check(
            OPEN,
            &op,
            &[],
            Op::Open {
                flags: libc::O_RDWR,
            },
        );
        let op = B::default()
            .u32(libc::O_DIRECTORY as u32)
            .u32(0)
            .op(OPENDIR);
        check(
            OPENDIR,
            &op,
            &[],
            Op::Opendir {
                flags: libc::O_DIRECTORY,
            },
        );
        let read_in = |size| {
            B::default()
                .u64(3) // fh
                .u64(1 << 40) // offset
                .u32(size)
                .u32(0) // read_flags
                .u64(0) // lock_owner
                .u32(0) // flags
                .u32(0) // padding
        };
        let op = read_in(4096).op(READ);
        check(
            READ,
            &op,
            &[],
            Op::Read {
                fh: 3,
                offset: 1 << 40,
                size: 4096,
            },
        );
        let op = read_in(4096).op(READDIR);
        check(
            READDIR,
            &op,
            &[],
            Op::Readdir {
                fh: 3,
                offset: 1 << 40,
                size: 4096,
            },
        );
        let op = read_in(4096).op(READDIRPLUS);
        check(
            READDIRPLUS,
            &op,
            &[],
            Op::Readdirplus {
                fh: 3,
                offset: 1 << 40,
                size: 4096,
            },
        );
        let write_in = |size, write_flags| {
            B::default()
                .u64(4)
                .u64(10)
                .u32(size)
                .u32(write_flags)
                .u64(0)
                .u32(0)
                .u32(0)
                .op(WRITE)
        };
        check(
            WRITE,
            &write_in(5, FUSE_WRITE_KILL_SUIDGID),
            b"hello, world",
            Op::Write {
                fh: 4,
                offset: 10,
                data: b"hello",
                write_flags: FUSE_WRITE_KILL_SUIDGID,
            },
        );
        check(
            WRITE,
            &write_in(0, 0),
            &[],
            Op::Write {
                fh: 4,
                offset: 10,
                data: b"",
                write_flags: 0,
            },
        );
        // Data shorter than announced.
        assert_eq!(
            decode(&header(WRITE), &write_in(13, 0), b"hello, world"),
            Err(Errno::EINVAL)
        );
        assert_eq!(
            decode(&header(WRITE), &write_in(u32::MAX, 0), b"x"),
            Err(Errno::EINVAL)
        );
        let release_in = B::default()
            .u64(8)
            .u32(libc::O_RDONLY as u32 | libc::O_NOFOLLOW as u32)
            .u32(1) // release_flags
            .u64(0);
        let op = release_in.op(RELEASE);
        check(
            RELEASE,
            &op,
            &[],
            Op::Release {
                fh: 8,
                flags: libc::O_NOFOLLOW,
            },
        );
        check(RELEASEDIR, &op, &[], Op::Releasedir { fh: 8 });
        let op = B::default().u64(9).u32(0).u32(0).u64(0xabc).op(FLUSH);
        check(FLUSH, &op, &[], Op::Flush { fh: 9 });
    }

    #[test]
    fn fsync() {
        let op = |flags| B::default().u64(2).u32(flags).u32(0).op(FSYNC);
        check(
            FSYNC,
            &op(1),
            &[],
            Op::Fsync {
                fh: 2,
                datasync: true,
            },
        );
        check(
            FSYNC,
            &op(0),
            &[],
            Op::Fsync {
                fh: 2,
                datasync: false,
            },
        );
        check(
            FSYNCDIR,
            &op(1),
            &[],
            Op::Fsyncdir {
                fh: 2,
                datasync: true,
            },
        );
    }

    #[test]
    fn xattrs() {
        let op = B::default()
            .u32(3)
            .u32(libc::XATTR_CREATE as u32)
            .op(SETXATTR);
        check(
            SETXATTR,
            &op,
            b"user.a\0v\0lue",
            Op::Setxattr {
                name: b"user.a",
                value: b"v\0l",
                flags: libc::XATTR_CREATE,
            },
        );
        assert_eq!(
            decode(&header(SETXATTR), &op, b"user.a\0vl"),
            Err(Errno::EINVAL)
        );
        let empty = B::default().u32(0).u32(0).op(SETXATTR);
        check(
            SETXATTR,
            &empty,
            b"user.e\0",
            Op::Setxattr {
                name: b"user.e",
                value: b"",
                flags: 0,
            },
        );
        let op = B::default().u32(256).u32(0).op(GETXATTR);
        check(
            GETXATTR,
            &op,
            b"security.capability\0",
            Op::Getxattr {
                name: b"security.capability",
                size: 256,
            },
        );
        assert_eq!(
            decode(&header(GETXATTR), &op, b"security.capability"),
            Err(Errno::EINVAL)
        );
        let op = B::default().u32(0).u32(0).op(LISTXATTR);
        check(LISTXATTR, &op, &[], Op::Listxattr { size: 0 });
    }

    #[test]
    fn misc_ops() {
        let op = B::default().u32(libc::W_OK as u32).u32(0).op(ACCESS);
        check(
            ACCESS,
            &op,
            &[],
            Op::Access {
                mask: libc::W_OK as u32,
            },
        );
        let op = B::default()
            .u64(1)
            .u64(2)
            .u64(3)
            .u32(libc::FALLOC_FL_KEEP_SIZE as u32)
            .u32(0)
            .op(FALLOCATE);
        check(
            FALLOCATE,
            &op,
            &[],
            Op::Fallocate {
                fh: 1,
                offset: 2,
                length: 3,
                mode: libc::FALLOC_FL_KEEP_SIZE,
            },
        );
        let op = B::default()
            .u64(1)
            .u64(-1i64 as u64)
            .u32(libc::SEEK_DATA as u32)
            .u32(0)
            .op(LSEEK);
        check(
            LSEEK,
            &op,
            &[],
            Op::Lseek {
                fh: 1,
                offset: -1,
                whence: libc::SEEK_DATA,
            },
        );
        let op = B::default()
            .u64(1)
            .u64(2)
            .u64(3)
            .u64(4)
            .u64(5)
            .u64(6)
            .u64(7)
            .op(COPY_FILE_RANGE);
        check(
            COPY_FILE_RANGE,
            &op,
            &[],
            Op::CopyFileRange {
                fh_in: 1,
                off_in: 2,
                nodeid_out: 3,
                fh_out: 4,
                off_out: 5,
                len: 6,
                flags: 7,
            },
        );
        check(COPY_FILE_RANGE_64, &op, &[], Op::Other(COPY_FILE_RANGE_64));
        let ioctl_in = |in_size| {
            B::default()
                .u64(12)
                .u32(2) // flags
                .u32(0x8004_6601) // cmd
                .u64(0xdead_beef)
                .u32(in_size)
                .u32(8) // out_size
                .op(IOCTL)
        };
        check(
            IOCTL,
            &ioctl_in(4),
            b"abcdef",
            Op::Ioctl {
                fh: 12,
                flags: 2,
                cmd: 0x8004_6601,
                arg: 0xdead_beef,
                out_size: 8,
                data: b"abcd",
            },
        );
        assert_eq!(
            decode(&header(IOCTL), &ioctl_in(7), b"abcdef"),
            Err(Errno::EINVAL)
        );
        for o in [
            FORGET,
            INIT,
            BATCH_FORGET,
            INTERRUPT,
            DESTROY,
            GETLK,
            STATX,
            7,
            19,
            9999,
        ] {
            let op = vec![0; op_struct_size(o)];
            check(o, &op, &[], Op::Other(o));
            // Not decoded, so not checked either: a caller must never answer FORGET.
            assert_eq!(decode(&header(o), &[], &[]), Ok(Op::Other(o)));
        }
    }

    /// Every op with a struct refuses one a byte short of it, with or without a payload.
    #[test]
    fn short_structs() {
        for o in 0..64 {
            let n = op_struct_size(o);
            if n == 0 || decode(&header(o), &vec![0; n], &[]) == Ok(Op::Other(o)) {
                continue;
            }
            for len in 0..n {
                let op = vec![0; len];
                assert_eq!(
                    decode(&header(o), &op, &[]),
                    Err(Errno::EINVAL),
                    "{o} {len}"
                );
                assert_eq!(
                    decode(&header(o), &op, b"a\0b\0c\0"),
                    Err(Errno::EINVAL),
                    "{o} {len}"
                );
            }
        }
    }

    /// A classic `/dev/fuse` request, split with `op_struct_size`.
    #[test]
    fn classic_split() {
        fn request(opcode: u32, op: &[u8], payload: &[u8]) -> Vec<u8> {
            let len = (IN_HEADER_SIZE + op.len() + payload.len()) as u32;
            B::default()
                .u32(len)
                .u32(opcode)
                .u64(99)
                .u64(1)
                .u32(0)
                .u32(0)
                .u32(1)
                .u16(0)
                .u16(0)
                .bytes(op)
                .bytes(payload)
                .0
        }
        fn split(b: &[u8]) -> Result<(InHeader, Op<'_>), Errno> {
            let h = in_header(b)?;
            let rest = b.get(IN_HEADER_SIZE..h.len as usize).ok_or(Errno::EINVAL)?;
            let n = op_struct_size(h.opcode).min(rest.len());
            let (op, payload) = rest.split_at(n);
            Ok((h, decode(&h, op, payload)?))
        }
        let write = B::default()
            .u64(4)
            .u64(0)
            .u32(3)
            .u32(0)
            .u64(0)
            .u32(0)
            .u32(0)
            .op(WRITE);
        let b = request(WRITE, &write, b"xyz");
        let (h, op) = split(&b).unwrap();
        assert_eq!((h.opcode, h.unique, h.len as usize), (WRITE, 99, b.len()));
        assert_eq!(
            op,
            Op::Write {
                fh: 4,
                offset: 0,
                data: b"xyz",
                write_flags: 0
            }
        );
        let b = request(LOOKUP, &[], b"name\0");
        assert_eq!(split(&b).unwrap().1, Op::Lookup { name: b"name" });
        let rename2 = B::default().u64(3).u32(1).u32(0).op(RENAME2);
        let b = request(RENAME2, &rename2, b"a\0b\0");
        assert_eq!(
            split(&b).unwrap().1,
            Op::Rename {
                newdir: 3,
                name: b"a",
                newname: b"b",
                flags: 1
            }
        );
        let setxattr = B::default().u32(2).u32(0).op(SETXATTR);
        let b = request(SETXATTR, &setxattr, b"user.k\0vv");
        assert_eq!(
            split(&b).unwrap().1,
            Op::Setxattr {
                name: b"user.k",
                value: b"vv",
                flags: 0
            }
        );
        // The same request cut anywhere: an error, never a panic.
        for n in 0..b.len() {
            let mut c = b[..n].to_vec();
            if c.len() >= 4 {
                c[..4].copy_from_slice(&(n as u32).to_ne_bytes());
            }
            assert!(split(&c).is_err(), "{n}");
        }
    }

    /// Random-ish short buffers for every opcode: decoding may fail, never panic.
    #[test]
    fn fuzz_never_panics() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut decoded = 0;
        for opcode in 0..64 {
            for _ in 0..400 {
                let oplen = (next() % 140) as usize;
                let paylen = (next() % 64) as usize;
                // Mostly small bytes and zeros, so sizes are small and NULs frequent.
                let mut byte = || match next() % 4 {
                    0 => 0,
                    1 => (next() % 8) as u8,
                    _ => next() as u8,
                };
                let op: Vec<u8> = (0..oplen).map(|_| byte()).collect();
                let payload: Vec<u8> = (0..paylen).map(|_| byte()).collect();
                let h = header(opcode);
                if decode(&h, &op, &payload).is_ok() {
                    decoded += 1;
                }
                let _ = in_header(&op);
            }
        }
        assert!(decoded > 1000, "{decoded}");
    }

    fn sample_stat() -> libc::stat {
        let mut st = nix::sys::stat::stat("/").unwrap();
        st.st_ino = 12345; // not encoded
        st.st_size = 0x1_0000_0001;
        st.st_blocks = 17;
        st.st_atime = -2;
        st.st_atime_nsec = 999_999_999;
        st.st_mtime = 1_700_000_000;
        st.st_mtime_nsec = 5;
        st.st_ctime = 3;
        st.st_ctime_nsec = 6;
        st.st_mode = libc::S_IFCHR | 0o620;
        st.st_nlink = 2;
        st.st_uid = 1000;
        st.st_gid = 5;
        st.st_rdev = libc::makedev(136, 3);
        st.st_blksize = 4096;
        st
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_ne_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_ne_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// Checks a `fuse_attr` at `b[0..88]`.
    fn check_attr(b: &[u8], ino: u64) {
        assert_eq!(u64_at(b, 0), ino);
        assert_eq!(u64_at(b, 8), 0x1_0000_0001);
        assert_eq!(u64_at(b, 16), 17);
        assert_eq!(u64_at(b, 24) as i64, -2);
        assert_eq!(u64_at(b, 32), 1_700_000_000);
        assert_eq!(u64_at(b, 40), 3);
        assert_eq!(u32_at(b, 48), 999_999_999);
        assert_eq!(u32_at(b, 52), 5);
        assert_eq!(u32_at(b, 56), 6);
        assert_eq!(u32_at(b, 60), libc::S_IFCHR | 0o620);
        assert_eq!(u32_at(b, 64), 2);
        assert_eq!(u32_at(b, 68), 1000);
        assert_eq!(u32_at(b, 72), 5);
        // The kernel's new_decode_dev of this value gives back 136:3.
        let rdev = u32_at(b, 76);
        assert_eq!(
            (
                (rdev & 0xfff00) >> 8,
                (rdev & 0xff) | ((rdev >> 12) & 0xfff00)
            ),
            (136, 3)
        );
        assert_eq!(u32_at(b, 80), 4096);
        assert_eq!(u32_at(b, 84), 0);
    }

    #[test]
    fn reply_sizes_match_the_kernel_abi() {
        // The sizes of include/uapi/linux/fuse.h (and of fuser's private copy of it).
        let st = sample_stat();
        let d = Duration::from_secs(1);
        assert_eq!(entry_out(1, &st, d, d).len(), 128); // fuse_entry_out
        assert_eq!(attr_out(1, &st, d).len(), 104); // fuse_attr_out
        assert_eq!(open_out(1, 0, 0).len(), 16); // fuse_open_out
        assert_eq!(
            statfs_out(&nix::sys::statvfs::statvfs("/").unwrap()).len(),
            80
        ); // fuse_kstatfs
        assert_eq!(write_out(0).len(), 8); // fuse_write_out
        assert_eq!(xattr_size_out(0).len(), 8); // fuse_getxattr_out
        assert_eq!(lseek_out(0).len(), 8); // fuse_lseek_out
        assert_eq!(ioctl_out(0).len(), 16); // fuse_ioctl_out
        assert_eq!(out_header(0, 0, 0).len(), 16); // fuse_out_header
        assert_eq!(DIRENT_SIZE, 24); // fuse_dirent without its name
        assert_eq!(DIRENTPLUS_SIZE, 152); // fuse_direntplus without its name
    }

    #[test]
    fn entry_and_attr_out() {
        let st = sample_stat();
        let e = entry_out(
            77,
            &st,
            Duration::new(3, 500),
            Duration::new(1, 250_000_000),
        );
        assert_eq!(u64_at(&e, 0), 77); // nodeid
        assert_eq!(u64_at(&e, 8), 0); // generation
        assert_eq!(u64_at(&e, 16), 3); // entry_valid
        assert_eq!(u64_at(&e, 24), 1); // attr_valid
        assert_eq!(u32_at(&e, 32), 500); // entry_valid_nsec
        assert_eq!(u32_at(&e, 36), 250_000_000); // attr_valid_nsec
        check_attr(&e[40..], 77);
        assert_eq!(u32_at(&e, 40 + 60), libc::S_IFCHR | 0o620); // attr.mode

        let a = attr_out(78, &st, Duration::new(2, 7));
        assert_eq!(u64_at(&a, 0), 2); // attr_valid
        assert_eq!(u32_at(&a, 8), 7); // attr_valid_nsec
        assert_eq!(u32_at(&a, 12), 0); // dummy
        check_attr(&a[16..], 78);
    }

    #[test]
    fn small_replies() {
        let h = out_header(16 + 8, -libc::ENOENT, 0xfeed);
        assert_eq!(u32_at(&h, 0), 24);
        assert_eq!(u32_at(&h, 4) as i32, -libc::ENOENT);
        assert_eq!(u64_at(&h, 8), 0xfeed);

        let o = open_out(5, 1 << 7, -1);
        assert_eq!(
            (u64_at(&o, 0), u32_at(&o, 8), u32_at(&o, 12) as i32),
            (5, 1 << 7, -1)
        );
        assert_eq!(u32_at(&write_out(4096), 0), 4096);
        assert_eq!(u32_at(&write_out(4096), 4), 0);
        assert_eq!(u32_at(&xattr_size_out(33), 0), 33);
        assert_eq!(u64_at(&lseek_out(-3), 0) as i64, -3);
        let i = ioctl_out(-libc::ENOTTY);
        assert_eq!(u32_at(&i, 0) as i32, -libc::ENOTTY);
        assert_eq!(&i[4..], &[0; 12]);

        let s = nix::sys::statvfs::statvfs("/").unwrap();
        let b = statfs_out(&s);
        assert_eq!(u64_at(&b, 0), s.blocks());
        assert_eq!(u64_at(&b, 8), s.blocks_free());
        assert_eq!(u64_at(&b, 16), s.blocks_available());
        assert_eq!(u64_at(&b, 24), s.files());
        assert_eq!(u64_at(&b, 32), s.files_free());
        assert_eq!(u32_at(&b, 40) as u64, s.block_size());
        assert_eq!(u32_at(&b, 44) as u64, s.name_max());
        assert_eq!(u32_at(&b, 48) as u64, s.fragment_size());
        assert_eq!(&b[52..], &[0; 28]);
    }

    #[test]
    fn dirbuf_padding_and_fit() {
        // 24 + 5 = 29, padded to 32; 24 + 8 = 32 exactly; 24 + 1 = 25 -> 32.
        let mut d = DirBuf::new(96);
        assert!(d.is_empty());
        assert!(d.push(10, 1, libc::S_IFDIR | 0o755, b"hello"));
        assert_eq!(d.len(), 32);
        assert!(d.push(11, 2, libc::S_IFLNK, b"12345678"));
        assert_eq!(d.len(), 64);
        // 24 + 9 = 33 -> 40 does not fit in the 32 left: nothing written.
        assert!(!d.push(12, 3, libc::S_IFREG, b"123456789"));
        assert_eq!(d.len(), 64);
        assert!(d.push(12, 3, libc::S_IFREG, b"x"));
        assert_eq!(d.len(), 96);
        assert!(!d.push(13, 4, libc::S_IFREG, b""));
        let b = d.into_bytes();
        assert_eq!(b.len(), 96);
        assert_eq!(u64_at(&b, 0), 10); // ino
        assert_eq!(u64_at(&b, 8), 1); // off
        assert_eq!(u32_at(&b, 16), 5); // namelen
        assert_eq!(u32_at(&b, 20), libc::DT_DIR as u32); // type
        assert_eq!(&b[24..32], b"hello\0\0\0");
        assert_eq!(u32_at(&b, 32 + 20), libc::DT_LNK as u32);
        assert_eq!(&b[32 + 24..64], b"12345678");
        assert_eq!(u32_at(&b, 64 + 20), libc::DT_REG as u32);
        assert_eq!(&b[64 + 24..96], b"x\0\0\0\0\0\0\0");
        // d_type << 12 gives the same type; no type bits give DT_UNKNOWN.
        let mut d = DirBuf::new(64);
        assert!(d.push(1, 1, (libc::DT_SOCK as u32) << 12, b"s"));
        assert!(d.push(1, 2, 0o644, b"u"));
        let b = d.into_bytes();
        assert_eq!(u32_at(&b, 20), libc::DT_SOCK as u32);
        assert_eq!(u32_at(&b, 32 + 20), libc::DT_UNKNOWN as u32);
        // Too small for even one entry.
        let mut d = DirBuf::new(31);
        assert!(!d.push(1, 1, 0, b"a"));
        assert!(d.into_bytes().is_empty());
    }

    #[test]
    fn dirbuf_plus() {
        let st = sample_stat();
        let ttl = Duration::new(1, 2);
        // 152 + 3 = 155 -> 160.
        let mut d = DirBuf::new(160 + 159);
        assert!(d.push_plus(40, &st, ttl, ttl, 7, b"tty"));
        assert_eq!(d.len(), 160);
        assert!(!d.push_plus(41, &st, ttl, ttl, 8, b"tty"));
        assert_eq!(d.len(), 160);
        assert!(d.push_plus(0, &st, ttl, ttl, 8, b"")); // negative entry, 152 bytes
        assert_eq!(d.len(), 312);
        let b = d.into_bytes();
        assert_eq!(&b[..128], &entry_out(40, &st, ttl, ttl)[..]);
        assert_eq!(u64_at(&b, 128), 40); // dirent.ino
        assert_eq!(u64_at(&b, 136), 7); // dirent.off
        assert_eq!(u32_at(&b, 144), 3); // dirent.namelen
        assert_eq!(u32_at(&b, 148), libc::DT_CHR as u32); // dirent.type
        assert_eq!(&b[152..160], b"tty\0\0\0\0\0");
        assert_eq!(u64_at(&b, 160), 0);
        assert_eq!(u64_at(&b, 160 + 136), 8);
    }
}
