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

/// A descriptor the union holds for an object of one layer. For a directory of a lower layer,
/// which never changes while mounted, it also keeps the directory's listing, read once when
/// first needed: lookups of names the directory does not hold (the common case when a name
/// lives in another layer) and `.wh.` whiteout probes then cost no system call, and listings
/// of the merged directory reuse it.
pub struct LayerFd {
    fd: OwnedFd,
    listing: std::sync::OnceLock<Option<Listing>>,
}

/// A directory entry as read: name, file type (if the filesystem says), inode number.
pub type RawEntry = (Vec<u8>, Option<nix::dir::Type>, u64);

/// The entries of a lower directory, sorted by name, with the directory's device.
pub struct Listing {
    pub dev: u64,
    /// Sorted by name.
    pub entries: Vec<RawEntry>,
}

impl Listing {
    /// The entry for `name`.
    pub fn find(&self, name: &[u8]) -> Option<&RawEntry> {
        self.entries
            .binary_search_by(|e| e.0.as_slice().cmp(name))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// Whether `name` is in the directory.
    pub fn has(&self, name: &[u8]) -> bool {
        self.find(name).is_some()
    }
}

impl LayerFd {
    pub fn new(fd: OwnedFd) -> LayerFd {
        LayerFd {
            fd,
            listing: std::sync::OnceLock::new(),
        }
    }

    /// The listing of this (lower, unchanging) directory; `None` when it cannot be read, and
    /// then callers fall back to asking the filesystem name by name.
    pub fn listing(&self) -> Option<&Listing> {
        self.listing
            .get_or_init(|| read_listing(self.fd.as_fd()).ok())
            .as_ref()
    }
}

impl AsFd for LayerFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl std::os::fd::AsRawFd for LayerFd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        std::os::fd::AsRawFd::as_raw_fd(&self.fd)
    }
}

/// Reads a whole directory (without `.` and `..`), sorted by name.
fn read_listing(dir: BorrowedFd<'_>) -> Result<Listing, Errno> {
    let dev = fstat(dir)?.st_dev;
    let mut entries = read_entries(dir)?;
    entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    Ok(Listing { dev, entries })
}

/// Reads a whole directory (without `.` and `..`): (name, file type if the filesystem says,
/// inode number), in the filesystem's order. `dir` is reopened, so its own offset is untouched.
pub fn read_entries(dir: BorrowedFd<'_>) -> Result<Vec<RawEntry>, Errno> {
    let fd = openat(
        dir,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut d = nix::dir::Dir::from_fd(fd)?;
    let mut entries = Vec::new();
    for e in d.iter() {
        let e = e?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        entries.push((n.to_vec(), e.file_type(), e.ino()));
    }
    Ok(entries)
}
