//! The tree index of a layer (`tree.bin`, bincode): every object of the layer directory with
//! its metadata, whiteouts and opaque marks, in breadth-first order with each directory's
//! children contiguous and sorted by name. A mount can merge these indexes and answer lookups,
//! getattr and readdir of lower objects from memory, without walking the layers; `fsck` rebuilds
//! it from disk and compares.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FchmodatFlags, Mode, fchmodat, fstatat};
use serde::{Deserialize, Serialize};

use super::digest::Digest;
use super::error::{Error, IoContext, Result};
use crate::cow::format;
use crate::sys;

/// What an object is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
    /// A kernel whiteout (character device 0/0): hides the name in lower layers.
    Whiteout,
}

/// One object of a layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// The name in its directory (empty for the root).
    pub name: Vec<u8>,
    /// Index of the parent directory's node (0 for the root itself).
    pub parent: u32,
    pub kind: Kind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes, for regular files and symlinks; 0 for directories.
    pub size: u64,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    pub rdev: u64,
    pub nlink: u32,
    /// For a hard-linked file, the index of the first node of its link group.
    pub link_group: Option<u32>,
    /// For a symlink, its target.
    pub target: Option<Vec<u8>>,
    /// Extended attributes other than the overlay's private ones.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    /// For a directory: opaque (hides everything below it in lower layers).
    pub opaque: bool,
    /// For a directory: the range of its children in `nodes` (start, count).
    pub children: (u32, u32),
}

/// The tree of one layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerTree {
    /// Format version of this index.
    pub version: u32,
    pub nodes: Vec<Node>,
}

/// The format version written now.
pub const TREE_VERSION: u32 = 1;

impl LayerTree {
    /// Walks the layer directory `dir` and builds its tree.
    pub fn scan(dir: &Path) -> Result<LayerTree> {
        let root = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .ctx("open layer directory", dir)?;
        let st = nix::sys::stat::fstat(root.as_fd()).ctx("stat layer directory", dir)?;
        let mut nodes = vec![node_from_stat(
            Vec::new(),
            0,
            &st,
            None,
            xattrs_fd(&root, dir)?,
        )];
        nodes[0].opaque = format::dir_is_opaque(root.as_fd()).ctx("read opaque mark", dir)?;
        let mut links: HashMap<(u64, u64), u32> = HashMap::new();
        let mut queue: std::collections::VecDeque<(u32, OwnedFd)> =
            std::collections::VecDeque::new();
        let mut restore: Vec<(OwnedFd, Vec<u8>, u32)> = Vec::new();
        queue.push_back((0, root));
        while let Some((idx, fd)) = queue.pop_front() {
            let mut names: Vec<Vec<u8>> = Vec::new();
            {
                let dupfd = fd.try_clone().ctx("dup directory fd", dir)?;
                let mut d = Dir::from_fd(dupfd).ctx("read directory", dir)?;
                for e in d.iter() {
                    let e = e.ctx("read directory", dir)?;
                    let n = e.file_name().to_bytes();
                    if n != b"." && n != b".." {
                        names.push(n.to_vec());
                    }
                }
            }
            names.sort();
            let start = nodes.len() as u32;
            for name in names {
                let os = OsStr::from_bytes(&name);
                let st = fstatat(fd.as_fd(), os, AtFlags::AT_SYMLINK_NOFOLLOW)
                    .ctx("stat layer entry", dir.join(os))?;
                let fmt = st.st_mode & libc::S_IFMT;
                let target = if fmt == libc::S_IFLNK {
                    Some(
                        nix::fcntl::readlinkat(fd.as_fd(), os)
                            .ctx("read symlink", dir.join(os))?
                            .as_bytes()
                            .to_vec(),
                    )
                } else {
                    None
                };
                let xattrs = xattrs_at(&fd, os, dir)?;
                let mut node = node_from_stat(name.clone(), idx, &st, target, xattrs);
                let this = nodes.len() as u32;
                if node.kind != Kind::Dir && st.st_nlink > 1 {
                    let first = *links.entry((st.st_dev, st.st_ino)).or_insert(this);
                    node.link_group = Some(first);
                }
                if node.kind == Kind::Dir {
                    let flags =
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
                    let sub = match openat(fd.as_fd(), os, flags, Mode::empty()) {
                        // Not root, and the archive made it unreadable (say 0000): open it
                        // with owner rwx for the scan and put the mode back at the end.
                        Err(Errno::EACCES) if st.st_uid == sys::euid() => {
                            let perm = Mode::from_bits_truncate(0o700 | (st.st_mode & 0o7777));
                            fchmodat(fd.as_fd(), os, perm, FchmodatFlags::FollowSymlink)
                                .ctx("open layer directory", dir.join(os))?;
                            let keep = fd.try_clone().ctx("dup directory fd", dir)?;
                            restore.push((keep, name.clone(), st.st_mode & 0o7777));
                            openat(fd.as_fd(), os, flags, Mode::empty())
                        }
                        r => r,
                    }
                    .ctx("open layer directory", dir.join(os))?;
                    node.opaque =
                        format::dir_is_opaque(sub.as_fd()).ctx("read opaque mark", dir.join(os))?;
                    queue.push_back((this, sub));
                }
                nodes.push(node);
            }
            let count = nodes.len() as u32 - start;
            nodes[idx as usize].children = (start, count);
        }
        for (parent, name, mode) in restore.iter().rev() {
            fchmodat(
                parent.as_fd(),
                OsStr::from_bytes(name),
                Mode::from_bits_truncate(*mode),
                FchmodatFlags::FollowSymlink,
            )
            .ctx("restore directory mode", dir.join(OsStr::from_bytes(name)))?;
        }
        Ok(LayerTree {
            version: TREE_VERSION,
            nodes,
        })
    }

    /// The serialized index.
    pub fn to_bytes(&self) -> Vec<u8> {
        bincode::serialize(self).expect("a layer tree always serializes")
    }

    /// Reads a serialized index.
    pub fn from_bytes(data: &[u8]) -> Result<LayerTree> {
        let t: LayerTree = bincode::deserialize(data)
            .map_err(|e| Error::BadInput(format!("corrupt layer tree index: {e}")))?;
        if t.version != TREE_VERSION {
            return Err(Error::BadInput(format!(
                "layer tree index version {} is not {TREE_VERSION}",
                t.version
            )));
        }
        Ok(t)
    }

    /// The digest of the serialized index.
    pub fn digest(&self) -> Digest {
        Digest::of(&self.to_bytes())
    }

    /// Number of objects (the root excluded).
    pub fn entries(&self) -> u64 {
        self.nodes.len().saturating_sub(1) as u64
    }

    /// Bytes of regular-file content, each hard-link group counted once.
    pub fn content_size(&self) -> u64 {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(i, n)| n.kind == Kind::File && n.link_group.is_none_or(|g| g as usize == *i))
            .map(|(_, n)| n.size)
            .sum()
    }

    /// The path of node `i`, from the layer root (`/` for the root).
    pub fn path(&self, i: usize) -> Vec<u8> {
        let mut parts: Vec<&[u8]> = Vec::new();
        let mut cur = i;
        while cur != 0 {
            parts.push(&self.nodes[cur].name);
            cur = self.nodes[cur].parent as usize;
        }
        let mut p = Vec::new();
        for part in parts.iter().rev() {
            p.push(b'/');
            p.extend_from_slice(part);
        }
        if p.is_empty() {
            p.push(b'/');
        }
        p
    }

    /// Finds the child `name` of directory node `dir` (binary search).
    pub fn child(&self, dir: usize, name: &[u8]) -> Option<usize> {
        let (start, count) = self.nodes.get(dir)?.children;
        let slice = &self.nodes[start as usize..(start + count) as usize];
        slice
            .binary_search_by(|n| n.name.as_slice().cmp(name))
            .ok()
            .map(|i| start as usize + i)
    }

    /// Finds the node of a path relative to the layer root.
    pub fn lookup(&self, path: &[u8]) -> Option<usize> {
        let mut cur = 0;
        for c in path
            .split(|b| *b == b'/')
            .filter(|c| !c.is_empty() && *c != b".")
        {
            cur = self.child(cur, c)?;
        }
        Some(cur)
    }
}

fn node_from_stat(
    name: Vec<u8>,
    parent: u32,
    st: &nix::sys::stat::FileStat,
    target: Option<Vec<u8>>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
) -> Node {
    let fmt = st.st_mode & libc::S_IFMT;
    let kind = match fmt {
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFSOCK => Kind::Socket,
        libc::S_IFCHR if format::is_whiteout(st.st_mode, st.st_rdev) => Kind::Whiteout,
        libc::S_IFCHR => Kind::CharDev,
        libc::S_IFBLK => Kind::BlockDev,
        _ => Kind::File,
    };
    Node {
        name,
        parent,
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        size: if kind == Kind::Dir {
            0
        } else {
            st.st_size as u64
        },
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            st.st_rdev
        } else {
            0
        },
        nlink: if kind == Kind::Dir {
            0
        } else {
            st.st_nlink as u32
        },
        link_group: None,
        target,
        xattrs,
        opaque: false,
        children: (0, 0),
    }
}

fn keep(mut list: Vec<(Vec<u8>, Vec<u8>)>) -> Vec<(Vec<u8>, Vec<u8>)> {
    list.retain(|(k, _)| !format::is_private_xattr(k));
    list.sort();
    list
}

fn xattrs_fd(fd: &OwnedFd, dir: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match sys::flistxattr(fd) {
        Ok(n) => n,
        Err(Errno::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(Error::errno("list xattrs", dir, e)),
    };
    let mut out = Vec::new();
    for n in names {
        if let Some(v) = sys::fgetxattr(fd, &n).ctx("read xattr", dir)? {
            out.push((n.as_bytes().to_vec(), v));
        }
    }
    Ok(keep(out))
}

fn xattrs_at(dirfd: &OwnedFd, name: &OsStr, dir: &Path) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let names = match sys::llistxattr_at(dirfd, name) {
        Ok(n) => n,
        Err(Errno::ENOTSUP) => return Ok(Vec::new()),
        Err(e) => return Err(Error::errno("list xattrs", dir.join(name), e)),
    };
    let mut out = Vec::new();
    for n in names {
        if let Some(v) = sys::lgetxattr_at(dirfd, name, &n).ctx("read xattr", dir.join(name))? {
            out.push((n.as_bytes().to_vec(), v));
        }
    }
    Ok(keep(out))
}
