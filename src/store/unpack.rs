//! Tar → layer directory, in kernel overlayfs format. This is hostile-input code: every entry is
//! applied through directory file descriptors, one path component at a time with `O_NOFOLLOW`,
//! so that no name in an archive can read or write outside the layer. It refuses absolute paths,
//! `..`, entries written through a symlink or a non-directory, hard links to anything that is
//! not already a non-directory of this layer, duplicate entries, and whiteouts of `.` or `..`.
//!
//! OCI whiteouts (`.wh.NAME`) become character devices 0/0 and `.wh..wh..opq` becomes the
//! opaque attribute of its directory, so kernel overlayfs can mount the result as a lower layer.
//! Directory modes and times are applied last (deepest first), so that a read-only directory
//! in the archive does not stop the extraction of its own contents.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{
    FchmodatFlags, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, fchown, fchownat};

use super::error::{Error, Result};
use crate::cow::format::{self, XattrNs};
use crate::sys;

/// The longest path accepted in an archive.
const MAX_PATH: usize = 4096;
/// The largest single xattr value accepted (the kernel's own limit).
const MAX_XATTR: usize = 65536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// A directory created because an entry below it needed it.
    ImplicitDir,
    /// A directory entry of the archive.
    Dir,
    /// A whiteout of the archive.
    Whiteout,
    /// Any other object of the archive (file, symlink, device, fifo, hard link).
    Other,
}

/// What the archive says of an entry's metadata, PAX records applied.
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: TimeSpec,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

struct DirFix {
    path: Vec<Vec<u8>>,
    mode: u32,
    mtime: TimeSpec,
}

/// Extracts one layer archive into an empty directory.
pub struct Unpacker {
    root: OwnedFd,
    label: String,
    ns: XattrNs,
    privileged: bool,
    seen: HashMap<Vec<u8>, Seen>,
    dirs: Vec<DirFix>,
    cache: Option<(Vec<u8>, OwnedFd)>,
    buf: Vec<u8>,
    entry: String,
}

/// A refusal of the current entry.
fn refuse(reason: impl Into<String>) -> String {
    reason.into()
}

fn join(comps: &[Vec<u8>]) -> Vec<u8> {
    comps.join(&b'/')
}

/// Splits an archive path into its components: no absolute path, no `..`, `.` and empty parts
/// dropped. The empty vector is the layer's root.
pub fn clean_path(raw: &[u8]) -> std::result::Result<Vec<Vec<u8>>, String> {
    if raw.len() > MAX_PATH {
        return Err(format!("path longer than {MAX_PATH} bytes"));
    }
    if raw.first() == Some(&b'/') {
        return Err("absolute path: entries must stay inside the layer".into());
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err("path contains '..': entries must stay inside the layer".into()),
            c if c.len() > 255 => return Err("a path component is longer than 255 bytes".into()),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

/// Archive bytes (a name, a link target) for a message: at most [`MAX_PATH`] of them, since a
/// GNU long name or a PAX path may be gigabytes long and an error must not echo all of it.
fn show(b: &[u8]) -> String {
    if b.len() <= MAX_PATH {
        return String::from_utf8_lossy(b).into_owned();
    }
    format!(
        "{}… ({} bytes in all)",
        String::from_utf8_lossy(&b[..MAX_PATH]),
        b.len()
    )
}

/// `s` with control characters escaped (`\n`, `\u{1b}`…): text from an archive must neither
/// break an error message over several lines nor send escape sequences to a terminal.
fn printable(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_string();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

impl Unpacker {
    /// An unpacker into the empty directory `dir`; `label` names the layer in errors.
    pub fn new(dir: &Path, label: &str, ns: XattrNs) -> Result<Unpacker> {
        let root = nix::fcntl::open(
            dir,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::errno("open layer directory", dir, e))?;
        Ok(Unpacker {
            root,
            label: label.to_string(),
            ns,
            privileged: sys::euid() == 0,
            seen: HashMap::new(),
            dirs: Vec::new(),
            cache: None,
            buf: vec![0; 1 << 20],
            entry: String::new(),
        })
    }

    fn bad(&self, reason: impl Into<String>) -> Error {
        Error::BadEntry {
            layer: self.label.clone(),
            entry: self.entry.clone(),
            // The entry is shown quoted ({:?}), but reasons quote hostile bytes too (link
            // targets, the tar crate's errors, which echo raw header fields): escape them.
            reason: printable(&reason.into()),
        }
    }

    /// Applies every entry of the tar stream `reader`, then the directory modes and times.
    pub fn unpack<R: Read>(&mut self, reader: R) -> Result<()> {
        let mut ar = tar::Archive::new(reader);
        let entries = ar
            .entries()
            .map_err(|e| self.bad(format!("not a tar archive: {e}")))?;
        let mut any = false;
        // Named in an error before the first header is read (input that is not tar at all).
        self.entry = String::from("(start of archive)");
        for entry in entries {
            let mut entry = entry.map_err(|e| {
                let after = if any {
                    format!("malformed tar after this entry: {e}")
                } else {
                    format!("malformed tar: {e}")
                };
                self.bad(after)
            })?;
            any = true;
            self.entry = show(&entry.path_bytes());
            self.apply(&mut entry).map_err(|r| self.bad(r))?;
        }
        self.entry = String::from("(end of archive)");
        self.finish().map_err(|r| self.bad(r))
    }

    fn meta<R: Read>(&self, entry: &mut tar::Entry<'_, R>) -> std::result::Result<Meta, String> {
        let h = entry.header();
        let mode = h.mode().map_err(|e| format!("bad mode field: {e}"))? & 0o7777;
        let mut uid = h.uid().map_err(|e| format!("bad uid field: {e}"))?;
        let mut gid = h.gid().map_err(|e| format!("bad gid field: {e}"))?;
        let secs = h.mtime().map_err(|e| format!("bad mtime field: {e}"))?;
        let mut mtime = TimeSpec::new(secs.min(i64::MAX as u64) as i64, 0);
        let mut xattrs = Vec::new();
        if let Some(exts) = entry
            .pax_extensions()
            .map_err(|e| format!("bad PAX header: {e}"))?
        {
            for ext in exts {
                let ext = ext.map_err(|e| format!("bad PAX record: {e}"))?;
                let key = ext.key_bytes();
                let value = ext.value_bytes();
                match key {
                    b"uid" => uid = parse_num(value).ok_or("bad PAX uid")?,
                    b"gid" => gid = parse_num(value).ok_or("bad PAX gid")?,
                    b"mtime" => mtime = parse_time(value).ok_or("bad PAX mtime")?,
                    k if k.starts_with(b"SCHILY.xattr.") => {
                        let name = &k[b"SCHILY.xattr.".len()..];
                        if name.is_empty() || value.len() > MAX_XATTR {
                            return Err("bad xattr record".into());
                        }
                        if format::is_private_xattr(name) {
                            log::warn!(
                                "layer {}: {}: dropping overlay-private xattr {}",
                                self.label,
                                self.entry,
                                show(name)
                            );
                            continue;
                        }
                        xattrs.push((name.to_vec(), value.to_vec()));
                    }
                    _ => {}
                }
            }
        }
        if uid > u32::MAX as u64 - 1 || gid > u32::MAX as u64 - 1 {
            return Err("uid or gid out of range".into());
        }
        Ok(Meta {
            mode,
            uid: uid as u32,
            gid: gid as u32,
            mtime,
            xattrs,
        })
    }

    /// Opens the directory `comps` of the layer, creating missing directories when `create`.
    /// Never follows a symlink: a symlink or a non-directory on the way is refused.
    fn open_dir(
        &mut self,
        comps: &[Vec<u8>],
        create: bool,
    ) -> std::result::Result<BorrowedFd<'_>, String> {
        let key = join(comps);
        if self.cache.as_ref().is_some_and(|(k, _)| *k == key) {
            return Ok(self.cache.as_ref().expect("checked").1.as_fd());
        }
        let mut cur: Option<OwnedFd> = None;
        for (i, c) in comps.iter().enumerate() {
            let name = OsStr::from_bytes(c);
            let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let parent: BorrowedFd<'_> = match &cur {
                Some(fd) => fd.as_fd(),
                None => self.root.as_fd(),
            };
            let fd = match openat(parent, name, flags, Mode::empty()) {
                Ok(fd) => fd,
                Err(Errno::ENOENT) if create => {
                    mkdirat(parent, name, Mode::from_bits_truncate(0o755)).map_err(|e| {
                        format!("create parent directory {}: {e}", show(&join(&comps[..=i])))
                    })?;
                    self.seen.insert(join(&comps[..=i]), Seen::ImplicitDir);
                    openat(parent, name, flags, Mode::empty()).map_err(|e| {
                        format!("open parent directory {}: {e}", show(&join(&comps[..=i])))
                    })?
                }
                Err(Errno::ENOENT) => {
                    return Err(format!("{} is not in the layer", show(&join(&comps[..=i]))));
                }
                Err(Errno::ELOOP) | Err(Errno::ENOTDIR) => {
                    return Err(format!(
                        "{} is not a directory (a symlink or a file): refusing to write through it",
                        show(&join(&comps[..=i]))
                    ));
                }
                Err(e) => return Err(format!("open {}: {e}", show(&join(&comps[..=i])))),
            };
            cur = Some(fd);
        }
        let fd = match cur {
            Some(fd) => fd,
            None => self
                .root
                .try_clone()
                .map_err(|e| format!("dup layer root: {e}"))?,
        };
        self.cache = Some((key, fd));
        Ok(self.cache.as_ref().expect("just set").1.as_fd())
    }

    fn apply<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> std::result::Result<(), String> {
        let kind = entry.header().entry_type();
        if matches!(kind, tar::EntryType::XGlobalHeader) {
            return Ok(());
        }
        let comps = clean_path(&entry.path_bytes())?;
        let meta = self.meta(entry)?;
        let Some((name, parent)) = comps.split_last() else {
            // The layer's root itself ("." or "./").
            if !kind.is_dir() {
                return Err(refuse("the layer root must be a directory"));
            }
            self.dirs.push(DirFix {
                path: Vec::new(),
                mode: meta.mode,
                mtime: meta.mtime,
            });
            let root = self.root.try_clone().map_err(|e| e.to_string())?;
            return self.own_and_xattrs_fd(root.as_fd(), &meta);
        };
        let path = join(&comps);

        // OCI whiteouts.
        if name.as_slice() == format::OCI_OPAQUE_MARKER.as_bytes() {
            let ns = self.ns;
            let dir = self.open_dir(parent, true)?;
            return format::set_opaque_fd(dir, ns)
                .map_err(|e| format!("mark directory opaque: {e}"));
        }
        if let Some(target) = format::oci_whiteout_target(name) {
            if target.is_empty() || target == b"." || target == b".." {
                return Err(refuse("whiteout of '.', '..' or of nothing"));
            }
            let mut tpath = parent.to_vec();
            tpath.push(target.to_vec());
            let tkey = join(&tpath);
            if let Some(s) = self.seen.get(&tkey) {
                return Err(format!(
                    "duplicate entry: whiteout of {} which this layer also holds ({s:?})",
                    show(&tkey)
                ));
            }
            let dir = self.open_dir(parent, true)?;
            format::write_whiteout(dir, OsStr::from_bytes(target))
                .map_err(|e| format!("create whiteout: {e}"))?;
            self.seen.insert(tkey, Seen::Whiteout);
            return Ok(());
        }

        let before = self.seen.get(&path).copied();
        match (before, kind.is_dir()) {
            (None, _) | (Some(Seen::ImplicitDir), true) | (Some(Seen::Dir), true) => {}
            (Some(s), _) => {
                return Err(format!(
                    "duplicate entry (this layer already holds it as {s:?})"
                ));
            }
        }
        let privileged = self.privileged;
        let cname = OsStr::from_bytes(name).to_os_string();
        match kind {
            tar::EntryType::Directory => {
                let dir = self.open_dir(parent, true)?;
                match mkdirat(dir, cname.as_os_str(), Mode::from_bits_truncate(0o700)) {
                    Ok(()) | Err(Errno::EEXIST) if before.is_some() => {}
                    Ok(()) => {}
                    Err(e) => return Err(format!("create directory: {e}")),
                }
                let fd = openat(
                    dir,
                    cname.as_os_str(),
                    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| format!("open directory: {e}"))?;
                self.own_and_xattrs_fd(fd.as_fd(), &meta)?;
                self.dirs.push(DirFix {
                    path: comps.clone(),
                    mode: meta.mode,
                    mtime: meta.mtime,
                });
                self.seen.insert(path, Seen::Dir);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                let dir = self.open_dir(parent, true)?;
                let fd = openat(
                    dir,
                    cname.as_os_str(),
                    OFlag::O_WRONLY
                        | OFlag::O_CREAT
                        | OFlag::O_EXCL
                        | OFlag::O_NOFOLLOW
                        | OFlag::O_CLOEXEC,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|e| format!("create file: {e}"))?;
                let mut f = File::from(fd);
                let mut buf = std::mem::take(&mut self.buf);
                let copied = copy_data(entry, &mut f, &mut buf);
                self.buf = buf;
                let copied = copied?;
                // A stream that ends inside this file's data is named here, rather than later
                // as a failure to find the next header. (Sparse entries expand their holes.)
                if kind != tar::EntryType::GNUSparse && copied != entry.size() {
                    return Err(format!(
                        "archive truncated in this file's data ({copied} of {} bytes)",
                        entry.size()
                    ));
                }
                self.own_and_xattrs_fd(f.as_fd(), &meta)?;
                fchmod(f.as_fd(), Mode::from_bits_truncate(meta.mode))
                    .map_err(|e| format!("chmod: {e}"))?;
                nix::sys::stat::futimens(f.as_fd(), &meta.mtime, &meta.mtime)
                    .map_err(|e| format!("set times: {e}"))?;
                self.seen.insert(path, Seen::Other);
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or("symlink without a target")?
                    .into_owned();
                if target.is_empty() || target.len() > MAX_PATH {
                    return Err("symlink target empty or too long".into());
                }
                let dir = self.open_dir(parent, true)?;
                nix::unistd::symlinkat(OsStr::from_bytes(&target), dir, cname.as_os_str())
                    .map_err(|e| format!("create symlink: {e}"))?;
                self.own_at(&comps, &meta, false)?;
                self.seen.insert(path, Seen::Other);
            }
            tar::EntryType::Link => {
                let raw = entry
                    .link_name_bytes()
                    .ok_or("hard link without a target")?
                    .into_owned();
                let tcomps = clean_path(&raw)
                    .map_err(|r| format!("hard link target {}: {r}", show(&raw)))?;
                let tkey = join(&tcomps);
                match self.seen.get(&tkey) {
                    Some(Seen::Other) => {}
                    Some(Seen::Dir) | Some(Seen::ImplicitDir) => {
                        return Err(format!("hard link to directory {}", show(&raw)));
                    }
                    Some(Seen::Whiteout) | None => {
                        return Err(format!(
                            "hard link to {} which is not (yet) in this layer",
                            show(&raw)
                        ));
                    }
                }
                let (tname, tparent) = tcomps.split_last().ok_or("hard link to the layer root")?;
                let tdir = self
                    .open_dir(tparent, false)?
                    .try_clone_to_owned()
                    .map_err(|e| e.to_string())?;
                let dir = self.open_dir(parent, true)?;
                nix::unistd::linkat(
                    tdir.as_fd(),
                    OsStr::from_bytes(tname),
                    dir,
                    cname.as_os_str(),
                    AtFlags::empty(),
                )
                .map_err(|e| format!("create hard link to {}: {e}", show(&raw)))?;
                self.seen.insert(path, Seen::Other);
            }
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                let (sflag, what) = match kind {
                    tar::EntryType::Char => (SFlag::S_IFCHR, "character device"),
                    tar::EntryType::Block => (SFlag::S_IFBLK, "block device"),
                    _ => (SFlag::S_IFIFO, "fifo"),
                };
                // Device numbers only mean something for devices: writers leave them empty
                // (NUL) for fifos, which GNU tar accepts too.
                let (major, minor) = if sflag == SFlag::S_IFIFO {
                    (0, 0)
                } else {
                    let h = entry.header();
                    let field = |r: std::io::Result<Option<u32>>| {
                        r.map(|v| v.unwrap_or(0))
                            .map_err(|e| format!("bad device field: {e}"))
                    };
                    (field(h.device_major())?, field(h.device_minor())?)
                };
                let rdev = if sflag == SFlag::S_IFIFO {
                    0
                } else {
                    nix::sys::stat::makedev(major as u64, minor as u64)
                };
                let whiteout_dev = sflag == SFlag::S_IFCHR && rdev == 0;
                if sflag != SFlag::S_IFIFO && !whiteout_dev && !privileged {
                    return Err(format!(
                        "{what} {major}:{minor}: creating device nodes needs root (CAP_MKNOD), and strata is not running as root"
                    ));
                }
                let dir = self.open_dir(parent, true)?;
                mknodat(
                    dir,
                    cname.as_os_str(),
                    sflag,
                    Mode::from_bits_truncate(0o600),
                    rdev,
                )
                .map_err(|e| format!("create {what}: {e}"))?;
                self.own_at(&comps, &meta, true)?;
                self.seen.insert(
                    path,
                    if whiteout_dev {
                        Seen::Whiteout
                    } else {
                        Seen::Other
                    },
                );
            }
            other => return Err(format!("unsupported tar entry type {other:?}")),
        }
        Ok(())
    }

    /// Owner and xattrs of an open file or directory.
    fn own_and_xattrs_fd(
        &self,
        fd: BorrowedFd<'_>,
        meta: &Meta,
    ) -> std::result::Result<(), String> {
        if self.privileged {
            fchown(
                fd,
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
            )
            .map_err(|e| format!("chown {}:{}: {e}", meta.uid, meta.gid))?;
        }
        for (k, v) in &meta.xattrs {
            if !self.xattr_allowed(k) {
                continue;
            }
            sys::fsetxattr(fd, OsStr::from_bytes(k), v)
                .map_err(|e| format!("set xattr {}: {e}", show(k)))?;
        }
        Ok(())
    }

    /// Owner, mode (unless a symlink), xattrs and times of a non-regular leaf, by name.
    fn own_at(
        &mut self,
        comps: &[Vec<u8>],
        meta: &Meta,
        chmod: bool,
    ) -> std::result::Result<(), String> {
        let (name, parent) = comps.split_last().expect("not the root");
        let name = OsStr::from_bytes(name).to_os_string();
        let privileged = self.privileged;
        let allowed: Vec<&(Vec<u8>, Vec<u8>)> = meta
            .xattrs
            .iter()
            .filter(|(k, _)| self.xattr_allowed(k))
            .collect();
        let dir = self.open_dir(parent, false)?;
        if privileged {
            fchownat(
                dir,
                name.as_os_str(),
                Some(Uid::from_raw(meta.uid)),
                Some(Gid::from_raw(meta.gid)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| format!("chown {}:{}: {e}", meta.uid, meta.gid))?;
        }
        if chmod {
            // The object was just created by us in a directory only we write: not a symlink.
            fchmodat(
                dir,
                name.as_os_str(),
                Mode::from_bits_truncate(meta.mode),
                FchmodatFlags::FollowSymlink,
            )
            .map_err(|e| format!("chmod: {e}"))?;
        }
        for (k, v) in allowed {
            sys::lsetxattr_at(dir, &name, OsStr::from_bytes(k), v)
                .map_err(|e| format!("set xattr {}: {e}", show(k)))?;
        }
        utimensat(
            dir,
            name.as_os_str(),
            &meta.mtime,
            &meta.mtime,
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(|e| format!("set times: {e}"))
    }

    /// Unprivileged processes may only set `user.*` attributes; others are skipped for them.
    fn xattr_allowed(&self, key: &[u8]) -> bool {
        if self.privileged || key.starts_with(b"user.") {
            return true;
        }
        log::warn!(
            "layer {}: {}: skipping xattr {} (needs root)",
            self.label,
            self.entry,
            show(key)
        );
        false
    }

    /// Directory modes and times, deepest first.
    fn finish(&mut self) -> std::result::Result<(), String> {
        self.cache = None;
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.path.len()));
        for d in &dirs {
            let fd = self
                .open_dir(&d.path, false)?
                .try_clone_to_owned()
                .map_err(|e| e.to_string())?;
            self.cache = None;
            fchmod(fd.as_fd(), Mode::from_bits_truncate(d.mode))
                .map_err(|e| format!("chmod {}: {e}", show(&join(&d.path))))?;
            nix::sys::stat::futimens(fd.as_fd(), &d.mtime, &d.mtime)
                .map_err(|e| format!("set times of {}: {e}", show(&join(&d.path))))?;
        }
        Ok(())
    }
}

/// Copies `src` to `dst`; returns the number of bytes copied.
fn copy_data<R: Read>(
    src: &mut R,
    dst: &mut File,
    buf: &mut [u8],
) -> std::result::Result<u64, String> {
    let mut total = 0u64;
    loop {
        let n = match src.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read file data: {e}")),
        };
        dst.write_all(&buf[..n])
            .map_err(|e| format!("write file data: {e}"))?;
        total += n as u64;
    }
}

fn parse_num(v: &[u8]) -> Option<u64> {
    std::str::from_utf8(v).ok()?.trim().parse().ok()
}

fn parse_time(v: &[u8]) -> Option<TimeSpec> {
    let s = std::str::from_utf8(v).ok()?.trim();
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = 0i64;
    if !frac.is_empty() {
        let digits: String = frac.chars().take(9).collect();
        if !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        nanos = format!("{digits:0<9}").parse().ok()?;
    }
    if secs < 0 {
        return Some(TimeSpec::new(secs, 0));
    }
    Some(TimeSpec::new(secs, nanos))
}

/// A path for messages.
pub fn display_path(p: &Path) -> PathBuf {
    p.to_path_buf()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        assert_eq!(
            clean_path(b"./a/b/").unwrap(),
            vec![b"a".to_vec(), b"b".to_vec()]
        );
        assert!(clean_path(b"./").unwrap().is_empty());
        assert!(clean_path(b"/etc/passwd").is_err());
        assert!(clean_path(b"a/../../x").is_err());
        assert!(clean_path(b"..").is_err());
        assert_eq!(clean_path(b"a//b/./c").unwrap().len(), 3);
    }

    #[test]
    fn pax_time() {
        let t = parse_time(b"1700000000.5").unwrap();
        assert_eq!((t.tv_sec(), t.tv_nsec()), (1700000000, 500_000_000));
        assert!(parse_time(b"x").is_none());
    }
}
