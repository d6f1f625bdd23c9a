//! Directory-descriptor helpers for one layer: every access is relative to a directory file
//! descriptor that the union holds, and names are single path components, so nothing can lead
//! outside a layer. Errors are plain errnos: the filesystem's own language.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstat, fstatat};

/// Opens directory `name` inside `dir` for further `*at` calls (never following a symlink).
pub fn open_dir(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        os(name),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// `lstat` of `name` inside `dir`; `None` when it does not exist.
pub fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<FileStat>, Errno> {
    match fstatat(dir, os(name), AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `fstat` of an open file.
pub fn stat_fd(fd: impl AsFd) -> Result<FileStat, Errno> {
    fstat(fd.as_fd())
}

/// A name as an `OsStr`.
pub fn os(name: &[u8]) -> &OsStr {
    OsStr::from_bytes(name)
}

/// The file type bits of a mode.
pub fn fmt(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

/// Whether a mode is a directory.
pub fn is_dir(mode: u32) -> bool {
    fmt(mode) == libc::S_IFDIR
}
