//! The merged view: lower layers (read-only, top first) and an optional upper directory with its
//! work directory, served with kernel overlayfs semantics as POSIX-shaped operations on inode
//! numbers. Usable without FUSE (the tests drive it directly); `crate::fuse` adapts it.
//!
//! Every object is reached through file descriptors the union holds: each directory node keeps
//! one descriptor per layer that contributes to it (top first, stopping at an opaque one), each
//! other node an `O_PATH` descriptor of the object itself. So operations never resolve paths
//! from a layer's root, renames of directories do not invalidate anything, and a symlink inside
//! a layer can never lead outside it.
//!
//! Inode numbers are assigned once per origin object (device, inode of the object where it was
//! first seen) and kept for the life of the union, also across copy-up and rename.

use std::collections::{HashMap, HashSet};
use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, RenameFlags, openat, readlinkat, renameat2};
use nix::sys::stat::{
    FileStat, Mode, SFlag, UtimensatFlags, fchmod, fstat, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, linkat, symlinkat, unlinkat};

use super::acl;
use super::format::{self, XattrNs};
use super::layer::{LayerFd, RawEntry, fmt, is_dir, open_dir, os, stat_at};
use crate::sys;

/// An inode number of the merged view.
pub type Ino = u64;
/// The attribute the kernel reads before writes, to drop file capabilities.
const CAPS_XATTR: &[u8] = b"security.capability";
/// The root directory's inode number (as FUSE wants it).
pub const ROOT_INO: Ino = 1;

/// Where an object lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    Upper,
    /// A lower layer, by index (0 is the top lower).
    Lower(usize),
}

/// What to merge: the plain data a mount is described by.
#[derive(Debug, Clone, Default)]
pub struct UnionSpec {
    /// Lower directories, top first.
    pub lowers: Vec<PathBuf>,
    /// The upper directory; `None` makes the view read-only.
    pub upper: Option<PathBuf>,
    /// The work directory (same filesystem as the upper).
    pub work: Option<PathBuf>,
    /// Skip the fsync of copied-up files (`volatile`).
    pub volatile: bool,
    /// Metadata-only copy-up (`metacopy=on`): a change of owner, mode, times, xattrs or
    /// inode flags of a lower file copies up its metadata only, marked with the kernel's
    /// `overlay.metacopy` attribute, and its data stays in the lower layer until it is
    /// opened for writing or truncated. Kernel overlayfs reads such an upper with
    /// `-o metacopy=on`.
    pub metacopy: bool,
}

/// Attributes of an object of the view: its real `stat` with the view's inode number.
#[derive(Debug, Clone, Copy)]
pub struct Attr {
    pub ino: Ino,
    pub st: FileStat,
}

/// One entry of a directory listing.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub ino: Ino,
    /// File type bits (`S_IFDIR`, …).
    pub kind: u32,
}

/// Changes of `setattr`.
#[derive(Debug, Clone, Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    /// `None`: unchanged; `Some(None)`: now; `Some(Some(t))`: that time.
    pub atime: Option<Option<TimeSpec>>,
    pub mtime: Option<Option<TimeSpec>>,
}

/// Who asks (for the owner of new objects).
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

struct Node {
    parent: Ino,
    name: Vec<u8>,
    mode: u32,
    top: Loc,
    /// The object: for a directory, its top layer's directory fd; else its name in its top
    /// layer (opened when needed: a descriptor per file would run into the open-files limit).
    obj: Obj,
    /// For a directory: the fd of each contributing layer, top first (shared: every lookup
    /// in the directory takes it).
    dirs: Layers,
    nlookup: u64,
    /// Removed from the view while still referenced (st_nlink reads 0).
    unlinked: bool,
    /// For a metacopy file (metadata in the upper layer): where its data is.
    data: Option<Obj>,
    /// Known to carry no `security.capability` (the kernel asks for it before every first
    /// write to a file; created here, or asked once: every change of it goes through here).
    no_caps: bool,
}

/// How a node's object is reached.
#[derive(Clone)]
enum Obj {
    /// An open descriptor (directories).
    Fd(Arc<LayerFd>),
    /// A name in a layer directory (everything else).
    At(Arc<LayerFd>, Vec<u8>),
}

impl Obj {
    /// `lstat` of the object.
    fn stat(&self) -> Result<FileStat, Errno> {
        match self {
            Obj::Fd(fd) => fstat(fd.as_fd()),
            Obj::At(dir, name) => {
                nix::sys::stat::fstatat(dir.as_fd(), os(name), AtFlags::AT_SYMLINK_NOFOLLOW)
            }
        }
    }

    /// An `O_PATH` (or, for directories, open) descriptor of the object.
    fn fd(&self) -> Result<Arc<LayerFd>, Errno> {
        match self {
            Obj::Fd(fd) => Ok(fd.clone()),
            Obj::At(dir, name) => Ok(Arc::new(LayerFd::new(opath(dir.as_fd(), name)?))),
        }
    }
}

struct Upper {
    dir: OwnedFd,
    work: OwnedFd,
    ns: XattrNs,
}

/// The result of looking a name up through the layers.
struct Probe {
    top: Loc,
    st: FileStat,
    obj: Obj,
    dirs: Vec<(Loc, Arc<LayerFd>)>,
    /// For a metacopy file: where its data is.
    data: Option<Obj>,
}

/// A lower hard link's name: (parent, name, device, inode of the lower object).
type LowerLinkKey = (Ino, Vec<u8>, u64, u64);

/// A hasher for keys made of integers that the kernel or this process chose (inode and device
/// numbers): nobody outside picks them, so SipHash's protection against chosen keys is not
/// needed, and a lookup of a large tree spent a tenth of the server's time in it.
#[derive(Default, Clone, Copy)]
struct IntHasher(u64);

impl std::hash::Hasher for IntHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by integers (see [`IntHasher`]).
type IntMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IntHasher>>;

/// The contributing layer directories of a directory of the view, top first (see
/// [`Union::dir`]).
pub struct Dir(Layers);

/// The contributing layer directories of a directory of the view, top first.
type Layers = Arc<[(Loc, Arc<LayerFd>)]>;

/// The merged view.
pub struct Union {
    lowers: Vec<OwnedFd>,
    upper: Option<Upper>,
    volatile: bool,
    metacopy: bool,
    nodes: RwLock<IntMap<Ino, Node>>,
    origins: Mutex<IntMap<(u64, u64), Ino>>,
    /// Inode numbers of lower hard links in a writable union, per name: (parent, name,
    /// device, inode). As in kernel overlayfs without `index`, a copy-up breaks a lower hard
    /// link, so each name must be its own node: sharing one made an operation on one name
    /// reach (copy up, chmod, …) whichever name was looked up last (regression test:
    /// union_oracle.rs lower_hard_links_break_on_copy_up_as_in_kernel).
    lower_links: Mutex<HashMap<LowerLinkKey, Ino>>,
    next_ino: AtomicU64,
    /// Serializes changes of the namespace and copy-ups (never held over data I/O).
    write: Mutex<()>,
    tmp_counter: AtomicU64,
}

fn opath(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        os(name),
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// `/proc/self/fd/N`: names the object of an fd (for calls that have no fd form on `O_PATH`).
fn proc_path(fd: &impl AsRawFd) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

fn check_name(name: &[u8]) -> Result<(), Errno> {
    if name.is_empty() || name.contains(&b'/') || name == b"." || name == b".." {
        return Err(Errno::EINVAL);
    }
    if name.len() > 255 {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_path_dir(p: &Path) -> std::io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        p,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

impl Union {
    /// Opens the layers of `spec`.
    pub fn new(spec: &UnionSpec) -> std::io::Result<Union> {
        if spec.lowers.is_empty() && spec.upper.is_none() {
            return Err(std::io::Error::other(
                "a union needs at least one lower or an upper directory",
            ));
        }
        let mut lowers = Vec::new();
        for l in &spec.lowers {
            lowers.push(open_path_dir(l).map_err(|e| {
                std::io::Error::new(e.kind(), format!("lowerdir {}: {e}", l.display()))
            })?);
        }
        let upper = match (&spec.upper, &spec.work) {
            (Some(u), Some(w)) => Some(Upper {
                dir: open_path_dir(u).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("upperdir {}: {e}", u.display()))
                })?,
                work: open_path_dir(w).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("workdir {}: {e}", w.display()))
                })?,
                ns: XattrNs::for_this_process(),
            }),
            (Some(_), None) => return Err(std::io::Error::other("an upperdir needs a workdir")),
            (None, _) => None,
        };
        let u = Union {
            lowers,
            upper,
            volatile: spec.volatile,
            metacopy: spec.metacopy,
            nodes: RwLock::new(IntMap::default()),
            origins: Mutex::new(IntMap::default()),
            lower_links: Mutex::new(HashMap::new()),
            next_ino: AtomicU64::new(ROOT_INO + 1),
            write: Mutex::new(()),
            tmp_counter: AtomicU64::new(0),
        };
        u.clean_work();
        // The root: every layer's root, stopping at an opaque one.
        let mut dirs = Vec::new();
        if let Some(up) = &u.upper {
            let fd = up.dir.try_clone()?;
            let opaque = format::dir_is_opaque(&fd).unwrap_or(false);
            dirs.push((Loc::Upper, Arc::new(LayerFd::new(fd))));
            if !opaque {
                for (i, l) in u.lowers.iter().enumerate() {
                    let fd = l.try_clone()?;
                    let opaque = format::dir_is_opaque(&fd).unwrap_or(false);
                    dirs.push((Loc::Lower(i), Arc::new(LayerFd::new(fd))));
                    if opaque {
                        break;
                    }
                }
            }
        } else {
            for (i, l) in u.lowers.iter().enumerate() {
                let fd = l.try_clone()?;
                let opaque = format::dir_is_opaque(&fd).unwrap_or(false);
                dirs.push((Loc::Lower(i), Arc::new(LayerFd::new(fd))));
                if opaque {
                    break;
                }
            }
        }
        let st = fstat(dirs[0].1.as_fd())?;
        lock(&u.origins).insert((st.st_dev, st.st_ino), ROOT_INO);
        u.nodes.write().unwrap_or_else(|p| p.into_inner()).insert(
            ROOT_INO,
            Node {
                parent: ROOT_INO,
                name: Vec::new(),
                mode: st.st_mode,
                top: dirs[0].0,
                obj: Obj::Fd(dirs[0].1.clone()),
                dirs: dirs.into(),
                nlookup: 1,
                unlinked: false,
                data: None,
                no_caps: false,
            },
        );
        Ok(u)
    }

    /// Whether the view can be written.
    pub fn writable(&self) -> bool {
        self.upper.is_some()
    }

    /// Removes what an interrupted earlier mount left in the work directory.
    fn clean_work(&self) {
        let Some(up) = &self.upper else { return };
        let Ok(fd) = up.work.try_clone() else { return };
        let Ok(mut d) = nix::dir::Dir::from_fd(fd) else {
            return;
        };
        let names: Vec<Vec<u8>> = d
            .iter()
            .flatten()
            .map(|e| e.file_name().to_bytes().to_vec())
            .filter(|n| n.starts_with(b"#strata"))
            .collect();
        for n in names {
            let _ = remove_tree_at(up.work.as_fd(), &n);
        }
    }

    fn tmp_name(&self) -> Vec<u8> {
        format!(
            "#strata.{}.{}",
            std::process::id(),
            self.tmp_counter.fetch_add(1, Ordering::Relaxed)
        )
        .into_bytes()
    }

    fn upper(&self) -> Result<&Upper, Errno> {
        self.upper.as_ref().ok_or(Errno::EROFS)
    }

    fn layer_is_lower(loc: Loc) -> bool {
        matches!(loc, Loc::Lower(_))
    }

    // ---- nodes

    fn with_node<T>(
        &self,
        ino: Ino,
        f: impl FnOnce(&Node) -> Result<T, Errno>,
    ) -> Result<T, Errno> {
        let nodes = self.nodes.read().unwrap_or_else(|p| p.into_inner());
        let n = nodes.get(&ino).ok_or(Errno::ESTALE)?;
        f(n)
    }

    fn dirs_of(&self, ino: Ino) -> Result<Layers, Errno> {
        self.with_node(ino, |n| {
            if !is_dir(n.mode) {
                return Err(Errno::ENOTDIR);
            }
            Ok(n.dirs.clone())
        })
    }

    /// Looks `name` up through the contributing layers of a directory. With a
    /// [`MergedIndex`](super::layer::MergedIndex) of its lower directories, only the layers
    /// that hold the name (or its whiteout) are visited, the others could only be skipped.
    fn probe(&self, dirs: &[(Loc, Arc<LayerFd>)], name: &[u8]) -> Result<Option<Probe>, Errno> {
        let mut res: Option<Probe> = None;
        let lower_at = dirs
            .iter()
            .position(|(loc, _)| Self::layer_is_lower(*loc))
            .unwrap_or(dirs.len());
        let index = dirs
            .get(lower_at)
            .and_then(|(_, top)| top.merged_index(&dirs[lower_at..]));
        if let Some(index) = index {
            let lowers = index
                .layers_with(name)
                .iter()
                .map(|pos| lower_at + usize::from(*pos));
            for i in (0..lower_at).chain(lowers) {
                if self.probe_layer(dirs, i, name, &mut res)? {
                    break;
                }
            }
        } else {
            for i in 0..dirs.len() {
                if self.probe_layer(dirs, i, name, &mut res)? {
                    break;
                }
            }
        }
        Ok(res)
    }

    /// One layer's part of [`Union::probe`]: looks `name` up in `dirs[i]`, merging into
    /// `res`; `true` when the layers below do not count (found, hidden, or opaque).
    fn probe_layer(
        &self,
        dirs: &[(Loc, Arc<LayerFd>)],
        i: usize,
        name: &[u8],
        res: &mut Option<Probe>,
    ) -> Result<bool, Errno> {
        let (loc, dfd) = &dirs[i];
        let lower = Self::layer_is_lower(*loc);
        if lower && name.starts_with(format::OCI_WHITEOUT_PREFIX.as_bytes()) {
            return Ok(false); // OCI whiteout files never show in the view
        }
        // No `.wh.NAME` can exist for a name of 252..=255 bytes (it would pass NAME_MAX);
        // asking for it would fail the lookup with ENAMETOOLONG (regression test: cow.rs
        // names_of_252_to_255_bytes_work_over_lowers).
        let oci_whiteout = || {
            let mut wh = format::OCI_WHITEOUT_PREFIX.as_bytes().to_vec();
            wh.extend_from_slice(name);
            (wh.len() <= 255).then_some(wh)
        };
        // A lower directory's listing answers for names it does not hold.
        if lower && let Some(listing) = dfd.listing() {
            match listing.find(name) {
                None if oci_whiteout().is_some_and(|wh| listing.has(&wh)) => {
                    return Ok(true); // an OCI whiteout hides the name below
                }
                None => return Ok(false),
                // A directory below a directory merges into it: its attributes do not count,
                // so the listing's word that it is one is enough.
                Some((_, Some(nix::dir::Type::Directory), _))
                    if res.as_ref().is_some_and(|p| is_dir(p.st.st_mode)) =>
                {
                    let fd = Arc::new(LayerFd::new(open_dir(dfd.as_fd(), name)?));
                    let opaque = Self::lower_dir_is_opaque(&fd);
                    if let Some(p) = res {
                        p.dirs.push((*loc, fd));
                    }
                    return Ok(opaque);
                }
                Some(_) => {}
            }
        }
        let st = match stat_at(dfd.as_fd(), name)? {
            Some(st) => st,
            None => {
                if lower
                    && let Some(wh) = oci_whiteout()
                    && stat_at(dfd.as_fd(), &wh)?.is_some()
                {
                    return Ok(true); // an OCI whiteout hides the name below
                }
                return Ok(false);
            }
        };
        if format::is_whiteout(st.st_mode, st.st_rdev) {
            return Ok(true);
        }
        if is_dir(st.st_mode) {
            let fd = Arc::new(LayerFd::new(open_dir(dfd.as_fd(), name)?));
            let opaque = if lower {
                Self::lower_dir_is_opaque(&fd)
            } else {
                format::dir_is_opaque_with(fd.as_fd(), None).unwrap_or(false)
            };
            match res {
                None => {
                    *res = Some(Probe {
                        top: *loc,
                        st,
                        obj: Obj::Fd(fd.clone()),
                        dirs: vec![(*loc, fd)],
                        data: None,
                    })
                }
                Some(p) if is_dir(p.st.st_mode) => p.dirs.push((*loc, fd)),
                Some(_) => return Ok(true),
            }
            if opaque {
                return Ok(true);
            }
        } else {
            if res.is_none() {
                let data = if *loc == Loc::Upper && self.may_be_metacopy(&st) {
                    self.metacopy_data(dfd, name, dirs)?
                } else {
                    None
                };
                let mut st = st;
                if let Some(d) = &data {
                    // A metacopy file's blocks are its lower data's (as the kernel says).
                    st.st_blocks = d.stat()?.st_blocks;
                }
                *res = Some(Probe {
                    top: *loc,
                    st,
                    obj: Obj::At(dfd.clone(), name.to_vec()),
                    dirs: Vec::new(),
                    data,
                });
            }
            return Ok(true);
        }
        Ok(false)
    }

    /// Whether a lower layer's directory is opaque (by xattr, or by the OCI marker its listing
    /// shows).
    fn lower_dir_is_opaque(fd: &LayerFd) -> bool {
        let marker = fd
            .listing()
            .map(|l| l.has(format::OCI_OPAQUE_MARKER.as_bytes()));
        format::dir_is_opaque_with(fd.as_fd(), marker).unwrap_or(false)
    }

    /// Whether an upper file may be a metacopy file (worth reading its attributes): only on a
    /// `metacopy=on` union (as the kernel, which refuses such files otherwise), and only a
    /// file with fewer blocks than its size (a metacopy file has no data of its own; one
    /// block is allowed for attributes stored outside the inode). Empty files included: an
    /// empty lower file is copied up with the mark too, which its first write must drop
    /// (regression test: metacopy.rs union_empty_file_metacopy_then_write).
    fn may_be_metacopy(&self, st: &FileStat) -> bool {
        self.metacopy
            && fmt(st.st_mode) == libc::S_IFREG
            && st.st_blocks.saturating_mul(512) < st.st_size.saturating_add(4096)
    }

    /// For an upper file `name` of a directory whose layers are `dirs`: if it is a metacopy
    /// file, the lower file that holds its data (at the same name below, or where its
    /// redirect points).
    fn metacopy_data(
        &self,
        upper_dir: &Arc<LayerFd>,
        name: &[u8],
        dirs: &[(Loc, Arc<LayerFd>)],
    ) -> Result<Option<Obj>, Errno> {
        let Some(redirect) = format::metacopy_at(upper_dir.as_fd(), name)? else {
            return Ok(None);
        };
        let found = match redirect.as_deref() {
            Some(path) if path.starts_with(b"/") => self.lower_file_at_path(path)?,
            other => {
                let target = other.unwrap_or(name);
                check_name(target)?;
                let lowers: Vec<_> = dirs
                    .iter()
                    .filter(|(l, _)| Self::layer_is_lower(*l))
                    .cloned()
                    .collect();
                match self.probe(&lowers, target)? {
                    Some(p) if fmt(p.st.st_mode) == libc::S_IFREG => Some(p.obj),
                    _ => None,
                }
            }
        };
        if found.is_none() {
            log::warn!(
                "{}: metacopy file without its lower data; shown as it is in the upper layer",
                String::from_utf8_lossy(name)
            );
        }
        Ok(found)
    }

    /// The regular file at absolute path `path` in the topmost lower layer that has one (for
    /// a kernel redirect), walked one component at a time inside each layer.
    fn lower_file_at_path(&self, path: &[u8]) -> Result<Option<Obj>, Errno> {
        let comps: Vec<&[u8]> = path
            .split(|c| *c == b'/')
            .filter(|c| !c.is_empty())
            .collect();
        let Some((last, parents)) = comps.split_last() else {
            return Ok(None);
        };
        for c in &comps {
            check_name(c)?;
        }
        'layers: for l in &self.lowers {
            let mut cur = l.try_clone().map_err(|_| Errno::EMFILE)?;
            for c in parents {
                match open_dir(cur.as_fd(), c) {
                    Ok(d) => cur = d,
                    Err(Errno::ENOENT) | Err(Errno::ENOTDIR) | Err(Errno::ELOOP) => {
                        continue 'layers;
                    }
                    Err(e) => return Err(e),
                }
            }
            match stat_at(cur.as_fd(), last)? {
                Some(st) if fmt(st.st_mode) == libc::S_IFREG => {
                    return Ok(Some(Obj::At(Arc::new(LayerFd::new(cur)), last.to_vec())));
                }
                Some(_) => return Ok(None),
                None => {}
            }
        }
        Ok(None)
    }

    /// Records a probed object as a node (adding `lookups` to its count); returns its attrs.
    fn intern(&self, parent: Ino, name: &[u8], p: Probe, lookups: u64) -> Attr {
        let st = p.st;
        let key = (p.st.st_dev, p.st.st_ino);
        let new_ino = || self.next_ino.fetch_add(1, Ordering::Relaxed);
        let ino = if self.is_lower_link(p.top, &p.st) {
            *lock(&self.lower_links)
                .entry((parent, name.to_vec(), key.0, key.1))
                .or_insert_with(new_ino)
        } else {
            *lock(&self.origins).entry(key).or_insert_with(new_ino)
        };
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        match nodes.entry(ino) {
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(Node {
                    parent,
                    name: name.to_vec(),
                    mode: p.st.st_mode,
                    top: p.top,
                    obj: p.obj,
                    dirs: p.dirs.into(),
                    nlookup: lookups,
                    unlinked: false,
                    data: p.data,
                    no_caps: false,
                });
            }
            std::collections::hash_map::Entry::Occupied(mut o) => {
                let n = o.get_mut();
                if ino != ROOT_INO && (n.parent != parent || n.name != name) {
                    n.parent = parent;
                    n.name = name.to_vec();
                }
                n.mode = p.st.st_mode;
                n.top = p.top;
                n.obj = p.obj;
                // A directory looked up again (its entry expired in the kernel) merges the
                // same layer directories as before when they come from the same layers: the
                // descriptors it holds keep their listings and index (exercised by cow.rs
                // deep_lookups_through_the_merged_index_follow_the_rules).
                let same_layers = n.dirs.len() == p.dirs.len()
                    && n.dirs.iter().zip(&p.dirs).all(|(a, b)| a.0 == b.0);
                if !same_layers {
                    n.dirs = p.dirs.into();
                }
                n.data = p.data;
                n.unlinked = false;
                n.nlookup += lookups;
            }
        }
        Attr { ino, st }
    }

    /// Whether an object is a lower hard link of a writable union (one node per name).
    fn is_lower_link(&self, top: Loc, st: &FileStat) -> bool {
        self.upper.is_some() && top != Loc::Upper && !is_dir(st.st_mode) && st.st_nlink > 1
    }

    /// Looks up `name` in directory `parent` (counting one lookup, as FUSE does).
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> Result<Attr, Errno> {
        self.lookup_in(parent, &self.dir(parent)?, name)
    }

    /// The layer directories of directory `ino`, for several lookups in it
    /// ([`Union::lookup_in`]: the entries of one listing).
    pub fn dir(&self, ino: Ino) -> Result<Dir, Errno> {
        self.dirs_of(ino).map(Dir)
    }

    /// [`Union::lookup`] in `dir`, directory `parent`'s layer directories.
    pub fn lookup_in(&self, parent: Ino, dir: &Dir, name: &[u8]) -> Result<Attr, Errno> {
        check_name(name)?;
        match self.probe(&dir.0, name)? {
            Some(p) => Ok(self.intern(parent, name, p, 1)),
            None => Err(Errno::ENOENT),
        }
    }

    /// Drops `n` lookups of an inode; the node goes when none is left (its number stays
    /// reserved for the same object).
    pub fn forget(&self, ino: Ino, n: u64) {
        if ino == ROOT_INO {
            return;
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = nodes.get_mut(&ino) {
            node.nlookup = node.nlookup.saturating_sub(n);
            if node.nlookup == 0 {
                nodes.remove(&ino);
            }
        }
    }

    /// Attributes of an inode.
    pub fn getattr(&self, ino: Ino) -> Result<Attr, Errno> {
        let (obj, unlinked, top, data) = self.with_node(ino, |n| {
            Ok((n.obj.clone(), n.unlinked, n.top, n.data.clone()))
        })?;
        if unlinked && top == Loc::Upper && matches!(obj, Obj::At(..)) {
            // Its name is gone (or names something else now): only open files still reach it,
            // and their getattr comes with a file handle (getattr_fd).
            return Err(Errno::ENOENT);
        }
        let mut st = obj.stat()?;
        if unlinked && Self::layer_is_lower(top) {
            st.st_nlink = 0;
        }
        if let Some(data) = data {
            // A metacopy file's blocks are its lower data's (as the kernel reports them).
            st.st_blocks = data.stat()?.st_blocks;
        }
        Ok(Attr { ino, st })
    }

    /// Attributes through an open file (for `fstat` of an open, maybe unlinked, file).
    pub fn getattr_fd(&self, ino: Ino, fd: BorrowedFd<'_>) -> Result<Attr, Errno> {
        let (metacopy, lower_unlinked) = self.with_node(ino, |n| {
            Ok((n.data.is_some(), n.unlinked && Self::layer_is_lower(n.top)))
        })?;
        if metacopy {
            // The open file is the lower data; the attributes are the upper file's.
            return self.getattr(ino);
        }
        let mut st = fstat(fd)?;
        if lower_unlinked {
            st.st_nlink = 0;
        }
        Ok(Attr { ino, st })
    }

    /// The target of a symlink.
    pub fn readlink(&self, ino: Ino) -> Result<Vec<u8>, Errno> {
        let obj = self.with_node(ino, |n| n.obj.fd())?;
        Ok(readlinkat(obj.as_fd(), "")?.as_bytes().to_vec())
    }

    // ---- copy-up

    /// The upper directory fd of a directory node, copying it up (with its parents) if needed.
    /// Must be called with the write lock held.
    fn upper_dir(&self, ino: Ino) -> Result<Arc<LayerFd>, Errno> {
        self.copy_up(ino)?;
        self.with_node(ino, |n| {
            n.dirs
                .iter()
                .find(|(l, _)| *l == Loc::Upper)
                .map(|(_, fd)| fd.clone())
                .ok_or(Errno::EIO)
        })
    }

    /// Copies an object up to the upper layer (parents first), with its data. Must hold the
    /// write lock.
    fn copy_up(&self, ino: Ino) -> Result<(), Errno> {
        self.copy_up_with(ino, false)
    }

    /// Copies an object up for a change of its metadata: on a `metacopy=on` union, a regular
    /// file's data stays below. Must hold the write lock.
    fn copy_up_meta(&self, ino: Ino) -> Result<(), Errno> {
        self.copy_up_with(ino, self.metacopy)
    }

    fn copy_up_with(&self, ino: Ino, meta_only: bool) -> Result<(), Errno> {
        let up = self.upper()?;
        let (parent, name, mode, top, obj, old_obj, has_data) = self.with_node(ino, |n| {
            Ok((
                n.parent,
                n.name.clone(),
                n.mode,
                n.top,
                n.obj.fd()?,
                n.obj.clone(),
                n.data.is_some(),
            ))
        })?;
        if top == Loc::Upper {
            if has_data && !meta_only {
                return self.copy_up_data(ino);
            }
            return Ok(());
        }
        let meta_only = meta_only && fmt(mode) == libc::S_IFREG;
        if ino == ROOT_INO {
            return Err(Errno::EIO); // the root always has an upper when there is one
        }
        let pfd = self.upper_dir(parent)?;
        let st = fstat(obj.as_fd())?;
        let source = self.obj_ref(ino)?;
        let tmp = self.tmp_name();
        let work = up.work.as_fd();
        let created = (|| -> Result<(), Errno> {
            match fmt(mode) {
                libc::S_IFDIR => {
                    mkdirat(work, os(&tmp), Mode::from_bits_truncate(0o700))?;
                }
                libc::S_IFREG if meta_only => {
                    let dst = new_private_file(work, &tmp)?;
                    nix::unistd::ftruncate(dst.as_fd(), st.st_size)?;
                    sys::fsetxattr(dst.as_fd(), OsStr::new(up.ns.metacopy_key()), b"")?;
                }
                libc::S_IFREG => {
                    let src = nix::fcntl::open(
                        proc_path(&obj.as_raw_fd()).as_c_str(),
                        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )?;
                    let dst = new_private_file(work, &tmp)?;
                    copy_data(&src, &dst, st.st_size as u64)?;
                    if !self.volatile {
                        nix::unistd::fsync(dst.as_fd())?;
                    }
                }
                libc::S_IFLNK => {
                    let target = readlinkat(obj.as_fd(), "")?;
                    symlinkat(target.as_os_str(), work, os(&tmp))?;
                }
                other => {
                    let kind = SFlag::from_bits_truncate(other);
                    mknodat(
                        work,
                        os(&tmp),
                        kind,
                        Mode::from_bits_truncate(0o600),
                        st.st_rdev,
                    )?;
                }
            }
            copy_meta(source.target(), &st, work, &tmp)?;
            Ok(())
        })();
        if let Err(e) = created {
            let _ = remove_tree_at(work, &tmp);
            return Err(e);
        }
        if let Err(e) = renameat2(
            work,
            os(&tmp),
            pfd.as_fd(),
            os(&name),
            RenameFlags::RENAME_NOREPLACE,
        ) {
            let _ = remove_tree_at(work, &tmp);
            return Err(e);
        }
        // The node now lives in the upper layer, with the same inode number.
        let (new_obj, ust) = if is_dir(mode) {
            let fd = Arc::new(LayerFd::new(open_dir(pfd.as_fd(), &name)?));
            let ust = fstat(fd.as_fd())?;
            (fd, ust)
        } else {
            let ust =
                nix::sys::stat::fstatat(pfd.as_fd(), os(&name), AtFlags::AT_SYMLINK_NOFOLLOW)?;
            (pfd.clone(), ust)
        };
        lock(&self.origins).insert((ust.st_dev, ust.st_ino), ino);
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(&ino) {
            n.top = Loc::Upper;
            n.data = meta_only.then_some(old_obj);
            if is_dir(mode) {
                n.obj = Obj::Fd(new_obj.clone());
                n.dirs = std::iter::once((Loc::Upper, new_obj))
                    .chain(n.dirs.iter().cloned())
                    .collect();
            } else {
                n.obj = Obj::At(new_obj, name.clone());
            }
        }
        Ok(())
    }

    /// Brings the data of a metacopy file up into its upper file (for a write), then drops
    /// the mark: until then a crash leaves the mark, and the data is still read from below.
    /// Must hold the write lock.
    fn copy_up_data(&self, ino: Ino) -> Result<(), Errno> {
        let up = self.upper()?;
        let (obj, data) = self.with_node(ino, |n| Ok((n.obj.fd()?, n.data.clone())))?;
        let Some(data) = data else { return Ok(()) };
        let lower = data.fd()?;
        let src = nix::fcntl::open(
            proc_path(&lower.as_raw_fd()).as_c_str(),
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let dst = nix::fcntl::open(
            proc_path(&obj.as_raw_fd()).as_c_str(),
            OFlag::O_WRONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let st = fstat(dst.as_fd())?;
        copy_data(&src, &dst, st.st_size as u64)?;
        // Writing the data is not a change of the file: its times stay.
        nix::sys::stat::futimens(
            dst.as_fd(),
            &TimeSpec::new(st.st_atime, st.st_atime_nsec),
            &TimeSpec::new(st.st_mtime, st.st_mtime_nsec),
        )?;
        if !self.volatile {
            nix::unistd::fsync(dst.as_fd())?;
        }
        for key in [
            format::TRUSTED_METACOPY,
            format::USER_METACOPY,
            format::TRUSTED_REDIRECT,
            format::USER_REDIRECT,
        ] {
            match sys::xremove(sys::XTarget::Fd(dst.as_fd()), OsStr::new(key)) {
                Ok(()) | Err(Errno::ENODATA) | Err(Errno::ENOTSUP) => {}
                Err(Errno::EPERM) if key.starts_with("trusted.") && up.ns == XattrNs::User => {}
                Err(e) => return Err(e),
            }
        }
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(&ino) {
            n.data = None;
        }
        Ok(())
    }

    /// Copies a directory and everything below it up, and marks it opaque (for the rename of
    /// a directory that lower layers contribute to). Must hold the write lock.
    fn copy_up_tree(&self, ino: Ino) -> Result<(), Errno> {
        self.copy_up(ino)?;
        for e in self.readdir(ino)? {
            let a = self.lookup_internal(ino, &e.name)?;
            if is_dir(a.st.st_mode) {
                self.copy_up_tree(a.ino)?;
            } else {
                self.copy_up(a.ino)?;
            }
            self.forget(a.ino, 1);
        }
        let up = self.upper()?;
        let fd = self.with_node(ino, |n| n.obj.fd())?;
        format::set_opaque_fd(fd.as_fd(), up.ns)?;
        // Whiteouts in an opaque directory hide nothing, and kernel overlayfs, which never
        // writes them there, lists them (then fails to stat them): remove them (regression
        // test: union_oracle.rs whiteouts_do_not_stay_in_a_dir_made_opaque).
        for (n, _, _) in read_names(fd.as_fd())? {
            if let Some(st) = stat_at(fd.as_fd(), &n)?
                && format::is_whiteout(st.st_mode, st.st_rdev)
            {
                unlinkat(fd.as_fd(), os(&n), UnlinkatFlags::NoRemoveDir)?;
            }
        }
        // Now opaque: no lower contributes to it any more.
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(&ino) {
            n.dirs = n
                .dirs
                .iter()
                .filter(|(l, _)| *l == Loc::Upper)
                .cloned()
                .collect();
        }
        Ok(())
    }

    /// The way to reach a node's object (see [`ObjRef`]).
    fn obj_ref(&self, ino: Ino) -> Result<ObjRef, Errno> {
        let (obj, mode, parent, name, top) = self.with_node(ino, |n| {
            Ok((n.obj.fd()?, n.mode, n.parent, n.name.clone(), n.top))
        })?;
        match fmt(mode) {
            libc::S_IFDIR => Ok(ObjRef::Dir(obj)),
            libc::S_IFLNK => {
                let dir = self.with_node(parent, |p| {
                    p.dirs
                        .iter()
                        .find(|(l, _)| *l == top)
                        .map(|(_, f)| f.clone())
                        .ok_or(Errno::ESTALE)
                })?;
                Ok(ObjRef::Named(dir, name))
            }
            _ => {
                let p = proc_path(&obj.as_raw_fd());
                Ok(ObjRef::Proc(obj, p))
            }
        }
    }

    fn lookup_internal(&self, parent: Ino, name: &[u8]) -> Result<Attr, Errno> {
        self.lookup(parent, name)
    }

    /// The upper directory fd of a directory node, if it has one.
    fn upper_fd_of(&self, ino: Ino) -> Option<Arc<LayerFd>> {
        self.with_node(ino, |n| {
            Ok(n.dirs
                .iter()
                .find(|(l, _)| *l == Loc::Upper)
                .map(|(_, f)| f.clone()))
        })
        .ok()
        .flatten()
    }

    /// Whether a lower layer below the upper has something visible at `name` of `dirs`.
    fn lower_has(&self, dirs: &[(Loc, Arc<LayerFd>)], name: &[u8]) -> Result<bool, Errno> {
        let lowers: Vec<_> = dirs
            .iter()
            .filter(|(l, _)| Self::layer_is_lower(*l))
            .cloned()
            .collect();
        Ok(self.probe(&lowers, name)?.is_some())
    }

    // ---- creating

    /// The group a new object gets: the parent's when it is setgid, else the caller's.
    fn new_gid(&self, parent_dir: BorrowedFd<'_>, caller: Caller) -> Result<(u32, bool), Errno> {
        let st = fstat(parent_dir)?;
        if st.st_mode & libc::S_ISGID != 0 {
            Ok((st.st_gid, true))
        } else {
            Ok((caller.gid, false))
        }
    }

    /// Creates a new object `name` in `parent` with `make(dir, name, inherit)`, owned by the
    /// caller, replacing a whiteout atomically, and interns it. `inherit` says that the new
    /// object takes its permissions from the parent's default ACL (so the caller's umask does
    /// not apply, and the mode must be left as the filesystem sets it).
    fn create_with(
        &self,
        parent: Ino,
        name: &[u8],
        caller: Caller,
        is_new_dir: bool,
        mode: Option<u32>,
        make: impl FnOnce(BorrowedFd<'_>, &[u8], bool) -> Result<(), Errno>,
    ) -> Result<Attr, Errno> {
        check_name(name)?;
        let up = self.upper()?;
        let _w = lock(&self.write);
        let dirs = self.dirs_of(parent)?;
        if self.probe(&dirs, name)?.is_some() {
            return Err(Errno::EEXIST);
        }
        let pfd = self.upper_dir(parent)?;
        let (gid, setgid) = self.new_gid(pfd.as_fd(), caller)?;
        // The parent's default ACL, which new objects inherit (the filesystem applies it to
        // what is made in the parent; by hand for what is built in the work dir).
        let parent_acl = default_acl(pfd.as_fd());
        let inherit = parent_acl.is_some();
        let over_whiteout = stat_at(pfd.as_fd(), name)?
            .is_some_and(|st| format::is_whiteout(st.st_mode, st.st_rdev));
        // The name was looked up through every layer above and found nothing: no lower layer
        // shows anything at it (a lower whiteout, or nothing at all), so only an upper
        // whiteout needs replacing.
        if over_whiteout {
            // Built in the work dir, then swapped with the whiteout in one rename.
            let tmp = self.tmp_name();
            let work = up.work.as_fd();
            let r = (|| {
                // The work directory has no default ACL to inherit from: what the parent's
                // would give is set by hand.
                let acl = parent_acl.filter(|_| mode.is_some());
                make(work, &tmp, acl.is_some())?;
                if let (Some(default), Some(mode)) = (&acl, mode)
                    && let Some((new_mode, access)) = acl::inherit(default, mode & 0o7777)
                {
                    if let Some(a) = access {
                        sys::lsetxattr_at(work, os(&tmp), OsStr::new(acl::ACCESS_XATTR), &a)?;
                    }
                    if is_new_dir {
                        sys::lsetxattr_at(work, os(&tmp), OsStr::new(acl::DEFAULT_XATTR), default)?;
                    }
                    set_perm(work, &tmp, new_mode)?;
                }
                fchownat(
                    work,
                    os(&tmp),
                    Some(Uid::from_raw(caller.uid)),
                    Some(Gid::from_raw(gid)),
                    AtFlags::AT_SYMLINK_NOFOLLOW,
                )?;
                if is_new_dir {
                    if setgid {
                        let st =
                            nix::sys::stat::fstatat(work, os(&tmp), AtFlags::AT_SYMLINK_NOFOLLOW)?;
                        nix::sys::stat::fchmodat(
                            work,
                            os(&tmp),
                            Mode::from_bits_truncate((st.st_mode & 0o7777) | libc::S_ISGID),
                            nix::sys::stat::FchmodatFlags::FollowSymlink,
                        )?;
                    }
                    let fd = open_dir(work, &tmp)?;
                    format::set_opaque_fd(fd.as_fd(), up.ns)?;
                }
                renameat2(
                    work,
                    os(&tmp),
                    pfd.as_fd(),
                    os(name),
                    RenameFlags::RENAME_EXCHANGE,
                )?;
                unlinkat(work, os(&tmp), UnlinkatFlags::NoRemoveDir)?;
                Ok(())
            })();
            if let Err(e) = r {
                let _ = remove_tree_at(work, &tmp);
                return Err(e);
            }
        } else {
            make(pfd.as_fd(), name, inherit)?;
            let r = fchownat(
                pfd.as_fd(),
                os(name),
                Some(Uid::from_raw(caller.uid)),
                Some(Gid::from_raw(gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .and_then(|_| {
                if is_new_dir && setgid {
                    let st = nix::sys::stat::fstatat(
                        pfd.as_fd(),
                        os(name),
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )?;
                    nix::sys::stat::fchmodat(
                        pfd.as_fd(),
                        os(name),
                        Mode::from_bits_truncate((st.st_mode & 0o7777) | libc::S_ISGID),
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )?;
                }
                Ok(())
            });
            if let Err(e) = r {
                let _ = remove_tree_at(pfd.as_fd(), name);
                return Err(e);
            }
        }
        let p = self
            .probe(&dirs_with_upper(&dirs, &pfd), name)?
            .ok_or(Errno::EIO)?;
        let a = self.intern(parent, name, p, 1);
        self.set_no_caps(a.ino, true);
        Ok(a)
    }

    fn set_no_caps(&self, ino: Ino, v: bool) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(&ino) {
            n.no_caps = v;
        }
    }

    /// `mkdir`.
    pub fn mkdir(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        umask: u32,
        caller: Caller,
    ) -> Result<Attr, Errno> {
        self.create_with(parent, name, caller, true, Some(mode), |d, n, inherit| {
            let perm = masked(mode, umask, inherit);
            mkdirat(d, os(n), Mode::from_bits_truncate(perm))?;
            if inherit {
                Ok(())
            } else {
                set_perm(d, n, perm)
            }
        })
    }

    /// `mknod` (regular files, fifos, sockets, devices).
    pub fn mknod(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        umask: u32,
        rdev: u64,
        caller: Caller,
    ) -> Result<Attr, Errno> {
        let kind = SFlag::from_bits_truncate(fmt(mode));
        if fmt(mode) == libc::S_IFCHR && rdev == 0 {
            return Err(Errno::EPERM); // the whiteout device cannot be an object of the view
        }
        self.create_with(parent, name, caller, false, Some(mode), |d, n, inherit| {
            let perm = masked(mode, umask, inherit);
            mknodat(d, os(n), kind, Mode::from_bits_truncate(perm), rdev)?;
            if inherit {
                Ok(())
            } else {
                set_perm(d, n, perm)
            }
        })
    }

    /// `symlink`.
    pub fn symlink(
        &self,
        parent: Ino,
        name: &[u8],
        target: &[u8],
        caller: Caller,
    ) -> Result<Attr, Errno> {
        self.create_with(parent, name, caller, false, None, |d, n, _| {
            symlinkat(os(target), d, os(n))
        })
    }

    /// `create`: a new regular file, opened with `flags`.
    pub fn create(
        &self,
        parent: Ino,
        name: &[u8],
        mode: u32,
        umask: u32,
        flags: i32,
        caller: Caller,
    ) -> Result<(Attr, OwnedFd), Errno> {
        // The file is opened as the caller asked while it is created: no second open.
        let keep = flags
            & !(libc::O_CREAT
                | libc::O_EXCL
                | libc::O_TRUNC
                | libc::O_NOCTTY
                | libc::O_NOFOLLOW
                | libc::O_DIRECTORY);
        let mut opened = None;
        let a = self.create_with(parent, name, caller, false, Some(mode), |d, n, inherit| {
            let perm = masked(mode, umask, inherit);
            let fd = openat(
                d,
                os(n),
                OFlag::from_bits_truncate(keep)
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_CLOEXEC
                    | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(perm),
            )?;
            if !inherit {
                fchmod(fd.as_fd(), Mode::from_bits_truncate(perm))?;
            }
            opened = Some(fd);
            Ok(())
        })?;
        let fd = match opened {
            Some(fd) => fd,
            None => self.open(a.ino, keep)?,
        };
        Ok((a, fd))
    }

    /// `link`: a new name for an existing object.
    pub fn link(&self, ino: Ino, newparent: Ino, newname: &[u8]) -> Result<Attr, Errno> {
        check_name(newname)?;
        let up = self.upper()?;
        let _w = lock(&self.write);
        if is_dir(self.with_node(ino, |n| Ok(n.mode))?) {
            return Err(Errno::EPERM);
        }
        let dirs = self.dirs_of(newparent)?;
        if self.probe(&dirs, newname)?.is_some() {
            return Err(Errno::EEXIST);
        }
        self.copy_up(ino)?;
        let pfd = self.upper_dir(newparent)?;
        let obj = self.with_node(ino, |n| n.obj.fd())?;
        let src = proc_path(&obj.as_raw_fd());
        let over_whiteout = stat_at(pfd.as_fd(), newname)?
            .is_some_and(|st| format::is_whiteout(st.st_mode, st.st_rdev));
        // As in create_with: nothing of a lower layer shows at a name the probe did not find.
        if over_whiteout {
            let tmp = self.tmp_name();
            let work = up.work.as_fd();
            linkat(
                nix::fcntl::AT_FDCWD,
                src.as_c_str(),
                work,
                os(&tmp),
                AtFlags::AT_SYMLINK_FOLLOW,
            )?;
            let r = renameat2(
                work,
                os(&tmp),
                pfd.as_fd(),
                os(newname),
                RenameFlags::RENAME_EXCHANGE,
            );
            let _ = unlinkat(work, os(&tmp), UnlinkatFlags::NoRemoveDir);
            r?;
        } else {
            linkat(
                nix::fcntl::AT_FDCWD,
                src.as_c_str(),
                pfd.as_fd(),
                os(newname),
                AtFlags::AT_SYMLINK_FOLLOW,
            )?;
        }
        let p = self
            .probe(&dirs_with_upper(&dirs, &pfd), newname)?
            .ok_or(Errno::EIO)?;
        Ok(self.intern(newparent, newname, p, 1))
    }

    // ---- removing

    /// Holds an upper file's node by an `O_PATH` descriptor instead of by its name, before that
    /// name goes (unlink, rename over it): fstat/fchmod/ftruncate of an open unlinked file and
    /// the other hard links the kernel has cached still reach the object, not ENOENT.
    fn pin(&self, ino: Ino) {
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(&ino)
            && n.top == Loc::Upper
            && matches!(n.obj, Obj::At(..))
            && let Ok(fd) = n.obj.fd()
        {
            n.obj = Obj::Fd(fd);
        }
    }

    fn mark_removed(&self, parent: Ino, name: &[u8], victim: &Probe) {
        let key = (victim.st.st_dev, victim.st.st_ino);
        let ino = if self.is_lower_link(victim.top, &victim.st) {
            lock(&self.lower_links)
                .get(&(parent, name.to_vec(), key.0, key.1))
                .copied()
        } else {
            lock(&self.origins).get(&key).copied()
        };
        if let Some(ino) = ino {
            let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = nodes.get_mut(&ino)
                && (victim.st.st_nlink <= 1 || Self::layer_is_lower(victim.top))
            {
                n.unlinked = true;
            }
        }
        // An upper inode number may be reused by the filesystem for a new file: forget it.
        if victim.top == Loc::Upper && (victim.st.st_nlink <= 1 || is_dir(victim.st.st_mode)) {
            lock(&self.origins).remove(&key);
        }
    }

    /// Removes `name` from upper directory `pfd`, leaving a whiteout if a lower layer has it.
    fn remove_upper_entry(
        &self,
        pfd: BorrowedFd<'_>,
        name: &[u8],
        is_dir_entry: bool,
        whiteout: bool,
    ) -> Result<(), Errno> {
        let up = self.upper()?;
        if whiteout {
            let tmp = self.tmp_name();
            match renameat2(
                pfd,
                os(name),
                up.work.as_fd(),
                os(&tmp),
                RenameFlags::RENAME_WHITEOUT,
            ) {
                Ok(()) => {
                    let _ = remove_tree_at(up.work.as_fd(), &tmp);
                    return Ok(());
                }
                Err(Errno::EINVAL) => {} // no RENAME_WHITEOUT here: two steps
                Err(e) => return Err(e),
            }
        }
        if is_dir_entry {
            clear_whiteouts(pfd, name)?;
        }
        let flags = if is_dir_entry {
            UnlinkatFlags::RemoveDir
        } else {
            UnlinkatFlags::NoRemoveDir
        };
        unlinkat(pfd, os(name), flags)?;
        if whiteout {
            format::write_whiteout(pfd, os(name))?;
        }
        Ok(())
    }

    /// `unlink`.
    pub fn unlink(&self, parent: Ino, name: &[u8]) -> Result<(), Errno> {
        self.remove(parent, name, false)
    }

    /// `rmdir`.
    pub fn rmdir(&self, parent: Ino, name: &[u8]) -> Result<(), Errno> {
        self.remove(parent, name, true)
    }

    fn remove(&self, parent: Ino, name: &[u8], want_dir: bool) -> Result<(), Errno> {
        check_name(name)?;
        self.upper()?;
        let _w = lock(&self.write);
        let dirs = self.dirs_of(parent)?;
        let victim = self.probe(&dirs, name)?.ok_or(Errno::ENOENT)?;
        let vdir = is_dir(victim.st.st_mode);
        if want_dir && !vdir {
            return Err(Errno::ENOTDIR);
        }
        if !want_dir && vdir {
            return Err(Errno::EISDIR);
        }
        if vdir && !self.merged_is_empty(&victim.dirs)? {
            return Err(Errno::ENOTEMPTY);
        }
        let pfd = self.upper_dir(parent)?;
        let dirs = dirs_with_upper(&dirs, &pfd);
        let whiteout = self.lower_has(&dirs, name)?;
        if victim.top == Loc::Upper {
            // Open files and other names of it must still reach it once this name is gone.
            let ino = lock(&self.origins)
                .get(&(victim.st.st_dev, victim.st.st_ino))
                .copied();
            if let Some(i) = ino {
                self.pin(i);
            }
            self.remove_upper_entry(pfd.as_fd(), name, vdir, whiteout)?;
        } else {
            format::write_whiteout(pfd.as_fd(), os(name))?;
        }
        self.mark_removed(parent, name, &victim);
        Ok(())
    }

    fn merged_is_empty(&self, dirs: &[(Loc, Arc<LayerFd>)]) -> Result<bool, Errno> {
        Ok(merge_dir(dirs)?.is_empty())
    }

    // ---- rename

    /// `rename` with `RENAME_NOREPLACE` and `RENAME_EXCHANGE`; directories that lower layers
    /// contribute to are copied up whole (and made opaque) rather than refused with EXDEV.
    pub fn rename(
        &self,
        parent: Ino,
        name: &[u8],
        newparent: Ino,
        newname: &[u8],
        flags: u32,
    ) -> Result<(), Errno> {
        check_name(name)?;
        check_name(newname)?;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        if flags & !(libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE) != 0 || (noreplace && exchange)
        {
            return Err(Errno::EINVAL);
        }
        self.upper()?;
        let _w = lock(&self.write);
        let sdirs = self.dirs_of(parent)?;
        let ddirs = self.dirs_of(newparent)?;
        let src = self.probe(&sdirs, name)?.ok_or(Errno::ENOENT)?;
        let dst = self.probe(&ddirs, newname)?;
        let sdir = is_dir(src.st.st_mode);
        if let Some(d) = &dst {
            if (d.st.st_dev, d.st.st_ino) == (src.st.st_dev, src.st.st_ino) {
                return Ok(()); // the same object: nothing to do
            }
            if noreplace {
                return Err(Errno::EEXIST);
            }
            let ddir = is_dir(d.st.st_mode);
            if !exchange {
                if sdir && !ddir {
                    return Err(Errno::ENOTDIR);
                }
                if !sdir && ddir {
                    return Err(Errno::EISDIR);
                }
                if ddir && !self.merged_is_empty(&d.dirs)? {
                    return Err(Errno::ENOTEMPTY);
                }
            }
        } else if exchange {
            return Err(Errno::ENOENT);
        }
        // A directory may not move below itself.
        if sdir {
            let sino = self.lookup_internal(parent, name)?.ino;
            let mut cur = newparent;
            let moved_into_self = loop {
                if cur == sino {
                    break true;
                }
                if cur == ROOT_INO {
                    break false;
                }
                cur = self.with_node(cur, |n| Ok(n.parent))?;
            };
            self.forget(sino, 1);
            if moved_into_self {
                return Err(Errno::EINVAL);
            }
        }
        // Bring both objects (and both parents) up.
        let sino = self.lookup_internal(parent, name)?.ino;
        let sres = if sdir && src.dirs.iter().any(|(l, _)| Self::layer_is_lower(*l)) {
            self.copy_up_tree(sino)
        } else {
            self.copy_up(sino)
        };
        let dino = match &dst {
            Some(_) => Some(self.lookup_internal(newparent, newname)?.ino),
            None => None,
        };
        let dres = match (dino, exchange) {
            (Some(d), true) => {
                let dd = self.with_node(d, |n| {
                    Ok((
                        is_dir(n.mode),
                        n.dirs.iter().any(|(l, _)| Self::layer_is_lower(*l)),
                    ))
                })?;
                if dd.0 && dd.1 {
                    self.copy_up_tree(d)
                } else {
                    self.copy_up(d)
                }
            }
            _ => Ok(()),
        };
        if let (Some(d), false) = (dino, exchange) {
            self.pin(d); // the replaced object: open files and other names still reach it
        }
        let result = (|| {
            sres?;
            dres?;
            let spfd = self.upper_dir(parent)?;
            let dpfd = self.upper_dir(newparent)?;
            let sdirs = dirs_with_upper(&sdirs, &spfd);
            let ddirs = dirs_with_upper(&ddirs, &dpfd);
            let src_lower = self.lower_has(&sdirs, name)?;
            let dst_lower = self.lower_has(&ddirs, newname)?;
            let up = self.upper()?;
            // A directory landing where a lower layer has the name must hide it.
            if sdir && dst_lower {
                let fd = self.with_node(sino, |n| n.obj.fd())?;
                format::set_opaque_fd(fd.as_fd(), up.ns)?;
            }
            if exchange {
                if let Some(d) = dino
                    && self.with_node(d, |n| Ok(is_dir(n.mode)))?
                    && src_lower
                {
                    let fd = self.with_node(d, |n| n.obj.fd())?;
                    format::set_opaque_fd(fd.as_fd(), up.ns)?;
                }
                return renameat2(
                    spfd.as_fd(),
                    os(name),
                    dpfd.as_fd(),
                    os(newname),
                    RenameFlags::RENAME_EXCHANGE,
                );
            }
            let dst_upper = stat_at(dpfd.as_fd(), newname)?;
            let dst_is_whiteout =
                dst_upper.is_some_and(|st| format::is_whiteout(st.st_mode, st.st_rdev));
            if let Some(st) = dst_upper
                && is_dir(st.st_mode)
            {
                clear_whiteouts(dpfd.as_fd(), newname)?;
            }
            if sdir && dst_is_whiteout {
                // A directory cannot replace a device node: swap them, then the whiteout left
                // at the old name stays if a lower layer has that name.
                renameat2(
                    spfd.as_fd(),
                    os(name),
                    dpfd.as_fd(),
                    os(newname),
                    RenameFlags::RENAME_EXCHANGE,
                )?;
                if !src_lower {
                    unlinkat(spfd.as_fd(), os(name), UnlinkatFlags::NoRemoveDir)?;
                }
                return Ok(());
            }
            let mut rflags = RenameFlags::empty();
            // A whiteout at the new name is not an object of the view (checked above, under
            // the write lock): it is replaced, so RENAME_NOREPLACE must not reach the upper
            // (regression test: union_oracle.rs rename_noreplace_onto_whiteout).
            if noreplace && !dst_is_whiteout {
                rflags |= RenameFlags::RENAME_NOREPLACE;
            }
            if src_lower {
                match renameat2(
                    spfd.as_fd(),
                    os(name),
                    dpfd.as_fd(),
                    os(newname),
                    rflags | RenameFlags::RENAME_WHITEOUT,
                ) {
                    Err(Errno::EINVAL) => {
                        renameat2(spfd.as_fd(), os(name), dpfd.as_fd(), os(newname), rflags)?;
                        format::write_whiteout(spfd.as_fd(), os(name))
                    }
                    r => r,
                }
            } else {
                renameat2(spfd.as_fd(), os(name), dpfd.as_fd(), os(newname), rflags)
            }
        })();
        self.forget(sino, 1);
        if let Some(d) = dino {
            self.forget(d, 1);
        }
        result?;
        // Names moved: update the nodes.
        let spfd = self.upper_fd_of(parent);
        let dpfd = self.upper_fd_of(newparent);
        let mut nodes = self.nodes.write().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = nodes.get_mut(&sino) {
            n.parent = newparent;
            n.name = newname.to_vec();
            if let (Obj::At(..), Some(d)) = (&n.obj, &dpfd) {
                n.obj = Obj::At(d.clone(), newname.to_vec());
            }
        }
        if let Some(d) = dino
            && let Some(n) = nodes.get_mut(&d)
        {
            if exchange {
                n.parent = parent;
                n.name = name.to_vec();
                if let (Obj::At(..), Some(s)) = (&n.obj, &spfd) {
                    n.obj = Obj::At(s.clone(), name.to_vec());
                }
            } else {
                n.unlinked = true;
            }
        }
        Ok(())
    }

    // ---- attributes

    /// `setattr`: copies the object up, then changes it. `fd` is an open file of it, if any.
    pub fn setattr(
        &self,
        ino: Ino,
        s: &SetAttr,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Attr, Errno> {
        self.upper()?;
        {
            let _w = lock(&self.write);
            if s.size.is_some() {
                self.copy_up(ino)?;
            } else {
                self.copy_up_meta(ino)?;
            }
        }
        let r = self.obj_ref(ino)?;
        let owner = (s.uid.map(Uid::from_raw), s.gid.map(Gid::from_raw));
        let conv = |t: Option<Option<TimeSpec>>| match t {
            None => TimeSpec::UTIME_OMIT,
            Some(None) => TimeSpec::UTIME_NOW,
            Some(Some(t)) => t,
        };
        let times = s.atime.is_some() || s.mtime.is_some();
        match &r {
            ObjRef::Dir(d) => {
                if s.uid.is_some() || s.gid.is_some() {
                    nix::unistd::fchown(d.as_fd(), owner.0, owner.1)?;
                }
                if let Some(m) = s.mode {
                    fchmod(d.as_fd(), Mode::from_bits_truncate(m & 0o7777))?;
                }
                if s.size.is_some() {
                    return Err(Errno::EISDIR);
                }
                if times {
                    nix::sys::stat::futimens(d.as_fd(), &conv(s.atime), &conv(s.mtime))?;
                }
            }
            ObjRef::Named(dir, name) => {
                if s.uid.is_some() || s.gid.is_some() {
                    fchownat(
                        dir.as_fd(),
                        os(name),
                        owner.0,
                        owner.1,
                        AtFlags::AT_SYMLINK_NOFOLLOW,
                    )?;
                }
                if s.mode.is_some() {
                    return Err(Errno::EOPNOTSUPP);
                }
                if s.size.is_some() {
                    return Err(Errno::EINVAL);
                }
                if times {
                    utimensat(
                        dir.as_fd(),
                        os(name),
                        &conv(s.atime),
                        &conv(s.mtime),
                        UtimensatFlags::NoFollowSymlink,
                    )?;
                }
            }
            ObjRef::Proc(_, path) => {
                if s.uid.is_some() || s.gid.is_some() {
                    fchownat(
                        nix::fcntl::AT_FDCWD,
                        path.as_c_str(),
                        owner.0,
                        owner.1,
                        AtFlags::empty(),
                    )?;
                }
                if let Some(m) = s.mode {
                    nix::sys::stat::fchmodat(
                        nix::fcntl::AT_FDCWD,
                        path.as_c_str(),
                        Mode::from_bits_truncate(m & 0o7777),
                        nix::sys::stat::FchmodatFlags::FollowSymlink,
                    )?;
                }
                if let Some(size) = s.size {
                    match fd {
                        Some(fd) => nix::unistd::ftruncate(fd, size as i64)?,
                        None => {
                            let f = nix::fcntl::open(
                                path.as_c_str(),
                                OFlag::O_WRONLY | OFlag::O_CLOEXEC,
                                Mode::empty(),
                            )?;
                            nix::unistd::ftruncate(f.as_fd(), size as i64)?;
                        }
                    }
                }
                if times {
                    utimensat(
                        nix::fcntl::AT_FDCWD,
                        path.as_c_str(),
                        &conv(s.atime),
                        &conv(s.mtime),
                        UtimensatFlags::FollowSymlink,
                    )?;
                }
            }
        }
        self.getattr(ino)
    }

    // ---- files

    /// Opens a file of the view (`O_CREAT`/`O_EXCL` are handled by `create`). A write open of a
    /// lower file copies it up first.
    pub fn open(&self, ino: Ino, flags: i32) -> Result<OwnedFd, Errno> {
        let acc = flags & libc::O_ACCMODE;
        let writes = acc != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        let (top, metacopy) = self.with_node(ino, |n| Ok((n.top, n.data.is_some())))?;
        if writes && (top != Loc::Upper || metacopy) {
            self.upper()?;
            let _w = lock(&self.write);
            self.copy_up(ino)?;
        }
        // A metacopy file's data is read from below.
        let obj = self.with_node(ino, |n| n.data.as_ref().unwrap_or(&n.obj).fd())?;
        let keep = flags & !(libc::O_CREAT | libc::O_EXCL | libc::O_NOCTTY | libc::O_NOFOLLOW);
        nix::fcntl::open(
            proc_path(&obj.as_raw_fd()).as_c_str(),
            OFlag::from_bits_truncate(keep) | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
    }

    /// A descriptor for the inode-flag ioctls of a regular file or directory (anything else
    /// has no such flags here: ENOTTY, as for a device or fifo opened without its driver).
    fn ioctl_fd(&self, ino: Ino) -> Result<Arc<LayerFd>, Errno> {
        let (obj, mode) = self.with_node(ino, |n| Ok((n.obj.fd()?, n.mode)))?;
        match fmt(mode) {
            libc::S_IFDIR => Ok(obj),
            libc::S_IFREG => Ok(Arc::new(LayerFd::new(nix::fcntl::open(
                proc_path(&obj.as_raw_fd()).as_c_str(),
                OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                Mode::empty(),
            )?))),
            _ => Err(Errno::ENOTTY),
        }
    }

    /// The inode flags of an object (`FS_IOC_GETFLAGS`, what `lsattr` shows), from the layer
    /// it lives in.
    pub fn inode_flags(&self, ino: Ino) -> Result<u32, Errno> {
        sys::get_inode_flags(self.ioctl_fd(ino)?.as_fd())
    }

    /// Sets the inode flags of an object (`FS_IOC_SETFLAGS`, `chattr`), copying it up first.
    pub fn set_inode_flags(&self, ino: Ino, flags: u32) -> Result<(), Errno> {
        self.upper()?;
        let _w = lock(&self.write);
        self.copy_up_meta(ino)?;
        sys::set_inode_flags(self.ioctl_fd(ino)?.as_fd(), flags)
    }

    /// The extended inode flags of an object (`FS_IOC_FSGETXATTR`), raw `struct fsxattr`.
    pub fn fsxattr(&self, ino: Ino) -> Result<[u8; sys::FSXATTR_SIZE], Errno> {
        sys::get_fsxattr(self.ioctl_fd(ino)?.as_fd())
    }

    /// Sets the extended inode flags of an object (`FS_IOC_FSSETXATTR`), copying it up first.
    pub fn set_fsxattr(&self, ino: Ino, value: &[u8; sys::FSXATTR_SIZE]) -> Result<(), Errno> {
        self.upper()?;
        let _w = lock(&self.write);
        self.copy_up_meta(ino)?;
        sys::set_fsxattr(self.ioctl_fd(ino)?.as_fd(), value)
    }

    /// `fsync` of a directory: its upper directory's entries reach the disk (a directory
    /// only in lower layers has nothing of this mount to sync).
    pub fn fsyncdir(&self, ino: Ino, datasync: bool) -> Result<(), Errno> {
        match self.upper_fd_of(ino) {
            Some(fd) if datasync => nix::unistd::fdatasync(fd.as_fd()),
            Some(fd) => nix::unistd::fsync(fd.as_fd()),
            None => Ok(()),
        }
    }

    /// Whether a change of an inode (or a write open) would copy something up first: it lives
    /// in a lower layer, or is a metacopy file whose data is still below.
    pub fn needs_copy_up(&self, ino: Ino) -> bool {
        self.upper.is_some()
            && self
                .with_node(ino, |n| Ok(n.top != Loc::Upper || n.data.is_some()))
                .unwrap_or(false)
    }

    /// Whether an inode's data lives only in read-only layers (it can be cached for long).
    pub fn is_lower(&self, ino: Ino) -> bool {
        self.with_node(ino, |n| Ok(n.top != Loc::Upper))
            .unwrap_or(false)
    }

    /// A listing of a merged directory (without `.` and `..`): the union of the names of its
    /// contributing layers, less whiteouts and OCI whiteout files, top layer first.
    pub fn readdir(&self, ino: Ino) -> Result<Vec<DirEntry>, Errno> {
        let dirs = self.dirs_of(ino)?;
        let merged = merge_dir(&dirs)?;
        let mut out = Vec::with_capacity(merged.len());
        let links = lock(&self.lower_links);
        let mut origins = lock(&self.origins);
        for (name, kind, dev, dino) in merged {
            // A lower hard link looked up before has a number of its own (`lower_links`).
            let linked = if links.is_empty() {
                None
            } else {
                links.get(&(ino, name.clone(), dev, dino)).copied()
            };
            let ino = match linked {
                Some(i) => i,
                None => *origins
                    .entry((dev, dino))
                    .or_insert_with(|| self.next_ino.fetch_add(1, Ordering::Relaxed)),
            };
            out.push(DirEntry { name, ino, kind });
        }
        Ok(out)
    }

    /// The parent of a directory (for `..`).
    pub fn parent_of(&self, ino: Ino) -> Ino {
        self.with_node(ino, |n| Ok(n.parent)).unwrap_or(ROOT_INO)
    }

    // ---- xattrs

    /// Reads an extended attribute (the overlay's own are hidden).
    pub fn getxattr(&self, ino: Ino, key: &[u8]) -> Result<Vec<u8>, Errno> {
        if format::is_private_xattr(key) {
            return Err(Errno::ENODATA);
        }
        let caps = key == CAPS_XATTR;
        if caps && self.with_node(ino, |n| Ok(n.no_caps))? {
            return Err(Errno::ENODATA);
        }
        let r = self.obj_ref(ino)?;
        let v = sys::xget(r.target(), os(key))?;
        if caps && v.is_none() {
            self.set_no_caps(ino, true);
        }
        v.ok_or(Errno::ENODATA)
    }

    /// Lists extended attributes (the overlay's own are hidden).
    pub fn listxattr(&self, ino: Ino) -> Result<Vec<Vec<u8>>, Errno> {
        let r = self.obj_ref(ino)?;
        Ok(sys::xlist(r.target())?
            .into_iter()
            .map(|n| n.as_bytes().to_vec())
            .filter(|n| !format::is_private_xattr(n))
            .collect())
    }

    /// Sets an extended attribute (copying the object up first).
    pub fn setxattr(&self, ino: Ino, key: &[u8], value: &[u8], flags: i32) -> Result<(), Errno> {
        if format::is_private_xattr(key) {
            return Err(Errno::EPERM);
        }
        self.upper()?;
        {
            let _w = lock(&self.write);
            self.copy_up_meta(ino)?;
        }
        if key == CAPS_XATTR {
            self.set_no_caps(ino, false);
        }
        let r = self.obj_ref(ino)?;
        sys::xset(r.target(), os(key), value, flags)
    }

    /// Removes an extended attribute (copying the object up first).
    pub fn removexattr(&self, ino: Ino, key: &[u8]) -> Result<(), Errno> {
        if format::is_private_xattr(key) {
            return Err(Errno::ENODATA);
        }
        self.upper()?;
        if self.getxattr(ino, key).is_err() {
            return Err(Errno::ENODATA);
        }
        {
            let _w = lock(&self.write);
            self.copy_up_meta(ino)?;
        }
        let r = self.obj_ref(ino)?;
        sys::xremove(r.target(), os(key))
    }

    /// Filesystem statistics (of the upper layer, or the top lower).
    pub fn statfs(&self) -> Result<nix::sys::statvfs::Statvfs, Errno> {
        match &self.upper {
            Some(u) => nix::sys::statvfs::fstatvfs(u.dir.as_fd()),
            None => nix::sys::statvfs::fstatvfs(self.lowers[0].as_fd()),
        }
    }
}

/// How a node's object is reached by calls that cannot use its `O_PATH` descriptor.
enum ObjRef {
    /// A directory: its open descriptor.
    Dir(Arc<LayerFd>),
    /// A symlink: its name in its parent directory (in the object's layer).
    Named(Arc<LayerFd>, Vec<u8>),
    /// Anything else: `/proc/self/fd/N` of its `O_PATH` descriptor, followed.
    #[allow(dead_code)] // the Arc keeps the descriptor open while its path is in use
    Proc(Arc<LayerFd>, CString),
}

impl ObjRef {
    fn target(&self) -> sys::XTarget<'_> {
        match self {
            ObjRef::Dir(fd) => sys::XTarget::Fd(fd.as_fd()),
            ObjRef::Named(dir, name) => sys::XTarget::At(dir.as_fd(), os(name)),
            ObjRef::Proc(_, p) => sys::XTarget::Follow(p.as_c_str()),
        }
    }
}

/// Sets the exact mode of a just-created object (`mkdir` and `mknod` filter it through the
/// daemon's own umask). It was created here, in a directory only the union writes: not a symlink.
/// A new file only this process can open (mode 0600), for building a copy-up in the work dir.
fn new_private_file(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    openat(
        dir,
        os(name),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )
}

/// The permissions of a new object: `mode` less the caller's umask, unless they come from
/// the parent's default ACL (`inherit`), which then decides instead of the umask.
fn masked(mode: u32, umask: u32, inherit: bool) -> u32 {
    if inherit {
        mode & 0o7777
    } else {
        mode & 0o7777 & !umask
    }
}

/// A directory's default ACL (new objects in it inherit from it), if it has one.
fn default_acl(dir: BorrowedFd<'_>) -> Option<Vec<u8>> {
    sys::fgetxattr(dir, OsStr::new(acl::DEFAULT_XATTR))
        .ok()
        .flatten()
}

fn set_perm(dir: BorrowedFd<'_>, name: &[u8], perm: u32) -> Result<(), Errno> {
    nix::sys::stat::fchmodat(
        dir,
        os(name),
        Mode::from_bits_truncate(perm),
        nix::sys::stat::FchmodatFlags::FollowSymlink,
    )
}

/// `dirs` with the upper fd in front (after a copy-up of the directory).
fn dirs_with_upper(dirs: &[(Loc, Arc<LayerFd>)], upper: &Arc<LayerFd>) -> Vec<(Loc, Arc<LayerFd>)> {
    let mut v = vec![(Loc::Upper, upper.clone())];
    v.extend(dirs.iter().filter(|(l, _)| *l != Loc::Upper).cloned());
    v
}

/// Reads a whole directory: (name, file type, device, inode).
/// A merged directory entry: name, type bits, device, inode of its top object.
type MergedEntry = (Vec<u8>, u32, u64, u64);

fn read_names(dir: BorrowedFd<'_>) -> Result<Vec<RawEntry>, Errno> {
    super::layer::read_entries(dir)
}

/// Merges the listings of contributing layers: (name, type bits, device, inode) of the top
/// object of each visible name.
fn merge_dir(dirs: &[(Loc, Arc<LayerFd>)]) -> Result<Vec<MergedEntry>, Errno> {
    // Names already decided by a higher layer; a directory of one layer (most of them) needs
    // no such set.
    let merging = dirs.len() > 1;
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    let mut out = Vec::new();
    for (loc, fd) in dirs {
        let lower = matches!(loc, Loc::Lower(_));
        // A lower directory's listing is read once per mount; an upper one each time.
        let fresh;
        let (dev, names): (u64, &[RawEntry]) = match if lower { fd.listing() } else { None } {
            Some(l) => (l.dev, &l.entries),
            None => {
                fresh = read_names(fd.as_fd())?;
                (fstat(fd.as_fd())?.st_dev, &fresh)
            }
        };
        let mut hidden_here: Vec<Vec<u8>> = Vec::new();
        for (name, t, ino) in names {
            let (t, ino) = (*t, *ino);
            if lower && name.starts_with(format::OCI_WHITEOUT_PREFIX.as_bytes()) {
                if let Some(target) = format::oci_whiteout_target(name) {
                    hidden_here.push(target.to_vec());
                }
                continue;
            }
            if merging && seen.contains(name) {
                continue;
            }
            let (kind, is_wh) = match t {
                Some(nix::dir::Type::Directory) => (libc::S_IFDIR, false),
                Some(nix::dir::Type::File) => (libc::S_IFREG, false),
                Some(nix::dir::Type::Symlink) => (libc::S_IFLNK, false),
                Some(nix::dir::Type::Fifo) => (libc::S_IFIFO, false),
                Some(nix::dir::Type::Socket) => (libc::S_IFSOCK, false),
                Some(nix::dir::Type::BlockDevice) => (libc::S_IFBLK, false),
                _ => match stat_at(fd.as_fd(), name)? {
                    Some(st) => (fmt(st.st_mode), format::is_whiteout(st.st_mode, st.st_rdev)),
                    None => continue,
                },
            };
            if merging {
                seen.insert(name.clone());
            }
            if !is_wh {
                out.push((name.clone(), kind, dev, ino));
            }
        }
        for h in hidden_here {
            seen.insert(h);
        }
    }
    Ok(out)
}

/// Removes the whiteouts inside upper directory `name` (which the view shows empty), so that
/// the directory itself can be removed or replaced.
fn clear_whiteouts(parent: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let d = open_dir(parent, name)?;
    for (n, _, _) in read_names(d.as_fd())? {
        if let Some(st) = stat_at(d.as_fd(), &n)?
            && format::is_whiteout(st.st_mode, st.st_rdev)
        {
            unlinkat(d.as_fd(), os(&n), UnlinkatFlags::NoRemoveDir)?;
        }
    }
    Ok(())
}

/// Removes `name` in `dir`, recursively if it is a directory.
fn remove_tree_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    match stat_at(dir, name)? {
        None => Ok(()),
        Some(st) if is_dir(st.st_mode) => {
            let d = open_dir(dir, name)?;
            for (n, _, _) in read_names(d.as_fd())? {
                remove_tree_at(d.as_fd(), &n)?;
            }
            unlinkat(dir, os(name), UnlinkatFlags::RemoveDir)
        }
        Some(_) => unlinkat(dir, os(name), UnlinkatFlags::NoRemoveDir),
    }
}

/// Copies file data, skipping holes, with `copy_file_range` (reflinks where the filesystem
/// has them) and a read/write fallback.
fn copy_data(src: &OwnedFd, dst: &OwnedFd, size: u64) -> Result<(), Errno> {
    let mut pos: i64 = 0;
    let end = size as i64;
    while pos < end {
        let data = match nix::unistd::lseek(src.as_fd(), pos, nix::unistd::Whence::SeekData) {
            Ok(d) => d,
            Err(Errno::ENXIO) => break, // only a hole is left
            Err(_) => pos,
        };
        let hole = nix::unistd::lseek(src.as_fd(), data, nix::unistd::Whence::SeekHole)
            .unwrap_or(end)
            .min(end);
        let mut off_in = data;
        let mut off_out = data;
        while off_in < hole {
            let want = (hole - off_in) as usize;
            match nix::fcntl::copy_file_range(
                src.as_fd(),
                Some(&mut off_in),
                dst.as_fd(),
                Some(&mut off_out),
                want,
            ) {
                Ok(0) => break,
                Ok(_) => {}
                Err(Errno::EXDEV)
                | Err(Errno::EINVAL)
                | Err(Errno::EOPNOTSUPP)
                | Err(Errno::ENOSYS) => {
                    let mut buf = vec![0u8; want.min(1 << 20)];
                    let n = nix::sys::uio::pread(src.as_fd(), &mut buf, off_in)?;
                    if n == 0 {
                        break;
                    }
                    let mut w = 0;
                    while w < n {
                        w += nix::sys::uio::pwrite(dst.as_fd(), &buf[w..n], off_out + w as i64)?;
                    }
                    off_in += n as i64;
                    off_out += n as i64;
                }
                Err(e) => return Err(e),
            }
        }
        pos = hole.max(off_in);
    }
    nix::unistd::ftruncate(dst.as_fd(), end)?;
    Ok(())
}

/// Owner, xattrs, mode and times of a copied-up object `work/name` from the lower `obj`.
fn copy_meta(
    source: sys::XTarget<'_>,
    st: &FileStat,
    work: BorrowedFd<'_>,
    name: &[u8],
) -> Result<(), Errno> {
    fchownat(
        work,
        os(name),
        Some(Uid::from_raw(st.st_uid)),
        Some(Gid::from_raw(st.st_gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    )?;
    let keys = match sys::xlist(source) {
        Ok(k) => k,
        Err(Errno::ENOTSUP) => Vec::new(),
        Err(e) => return Err(e),
    };
    for k in keys {
        if format::is_private_xattr(k.as_bytes()) {
            continue;
        }
        if let Some(v) = sys::xget(source, &k)? {
            match sys::lsetxattr_at(work, os(name), &k, &v) {
                Ok(()) | Err(Errno::EPERM) | Err(Errno::ENOTSUP) => {}
                Err(e) => return Err(e),
            }
        }
    }
    if fmt(st.st_mode) != libc::S_IFLNK {
        nix::sys::stat::fchmodat(
            work,
            os(name),
            Mode::from_bits_truncate(st.st_mode & 0o7777),
            nix::sys::stat::FchmodatFlags::FollowSymlink,
        )?;
    }
    let at = TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mt = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    utimensat(work, os(name), &at, &mt, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}
