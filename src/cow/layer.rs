//! Directory-descriptor helpers for one layer: every access is relative to a directory file
//! descriptor that the union holds, and names are single path components, so nothing can lead
//! outside a layer. Errors are plain errnos: the filesystem's own language.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

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
    /// For the top lower directory of a merged directory: layers visited by lookups through
    /// it, and once there were [`MERGED_INDEX_AFTER`], the index of the lower directories merged
    /// with it (see [`MergedIndex`]).
    probes: std::sync::atomic::AtomicU32,
    merged: std::sync::OnceLock<Option<MergedIndex>>,
}

/// Layers visited by lookups through a merged directory (lookups × its lower layers) before
/// its [`MergedIndex`] is built: a directory of a few layers looked up in only a few times (a
/// path walked through once) does not pay for reading every layer's listing, one of 64 layers
/// gets the index at its first lookup, and lookups then cost the same however many layers
/// there are.
pub const MERGED_INDEX_AFTER: u32 = 64;

/// Fewest lower directories a merged directory must have to get a [`MergedIndex`]: below
/// this, asking each layer's listing in turn costs no more than one index lookup.
pub const MERGED_INDEX_MIN_LAYERS: usize = 4;

/// Which of the lower directories merged into one directory of the view hold a name (or its
/// `.wh.` whiteout), from their listings, built once per mount and directory: a lookup then
/// visits only those layers instead of asking all of them, so its own cost does not grow with
/// the number of layers (opening and listing each layer's copy of the directory, once, still
/// does). Lower layers never change while mounted, so the index never goes stale.
pub struct MergedIndex {
    /// The directories it was built from, top first (by address: checked on every use).
    layers: Vec<usize>,
    /// Name → positions (in `layers`) of the layers whose listing has the name or `.wh.NAME`.
    names: std::collections::HashMap<Box<[u8]>, Vec<u16>>,
}

impl MergedIndex {
    /// The index of `layers` (top first); `None` when a listing cannot be read or there are
    /// too many layers to number.
    fn build<L>(layers: &[(L, Arc<LayerFd>)]) -> Option<MergedIndex> {
        let count = u16::try_from(layers.len()).ok()?;
        let mut names: std::collections::HashMap<Box<[u8]>, Vec<u16>> =
            std::collections::HashMap::new();
        for (pos, (_, layer)) in (0..count).zip(layers) {
            for (name, _, _) in &layer.listing()?.entries {
                let name = name
                    .strip_prefix(crate::cow::format::OCI_WHITEOUT_PREFIX.as_bytes())
                    .unwrap_or(name);
                let at = names.entry(name.into()).or_default();
                if at.last() != Some(&pos) {
                    at.push(pos);
                }
            }
        }
        Some(MergedIndex {
            layers: layers
                .iter()
                .map(|(_, l)| Arc::as_ptr(l) as usize)
                .collect(),
            names,
        })
    }

    /// The positions of the layers that hold `name` or its whiteout, top first.
    pub fn layers_with(&self, name: &[u8]) -> &[u16] {
        self.names.get(name).map_or(&[], |v| v.as_slice())
    }
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
            probes: std::sync::atomic::AtomicU32::new(0),
            merged: std::sync::OnceLock::new(),
        }
    }

    /// The [`MergedIndex`] of `layers`, the lower directories merged into one directory of
    /// the view, top first, this one first; `None` while it is not worth building (see
    /// [`MERGED_INDEX_AFTER`], [`MERGED_INDEX_MIN_LAYERS`]) or when it cannot be.
    pub fn merged_index<L>(&self, layers: &[(L, Arc<LayerFd>)]) -> Option<&MergedIndex> {
        if layers.len() < MERGED_INDEX_MIN_LAYERS
            || !layers
                .first()
                .is_some_and(|(_, l)| std::ptr::eq(Arc::as_ptr(l), self))
        {
            return None;
        }
        let index = match self.merged.get() {
            Some(index) => index.as_ref()?,
            None => {
                let visits = u32::try_from(layers.len()).unwrap_or(u32::MAX);
                let seen = self
                    .probes
                    .fetch_add(visits, std::sync::atomic::Ordering::Relaxed);
                if seen.saturating_add(visits) < MERGED_INDEX_AFTER {
                    return None;
                }
                self.merged
                    .get_or_init(|| MergedIndex::build(layers))
                    .as_ref()?
            }
        };
        // The same directory is always merged with the same ones below it (they are opened
        // together, by one lookup); checked all the same, as a wrong index would hide files.
        let same = index.layers.len() == layers.len()
            && index
                .layers
                .iter()
                .zip(layers)
                .all(|(a, (_, l))| *a == Arc::as_ptr(l) as usize);
        same.then_some(index)
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
