//! What a container changed, and copies in and out of it: `diff` (A/C/D from its upper layer),
//! `commit` (the upper layer as an OCI layer tarball with `.wh.` whiteouts, added to the store
//! as a new image), `export` (the merged tree as a tarball) and `cp`.
//!
//! Reads of the merged tree go through an in-process [`Union`] over the container's layers
//! (descriptor-relative, so no symlink of the container can lead outside it); a copy into
//! the container goes through its FUSE mount (its running one, or one mounted for the copy).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{FileStat, Mode, fstatat};
use serde_json::{Value, json};

use super::monitor::Server;
use super::{Container, Error, Paths, Result};
use crate::cow::format as cowfmt;
use crate::cow::{ROOT_INO, Union, UnionSpec};
use crate::store::images::{LayerInput, NewImage};
use crate::store::layer::{Compression, Expect};
use crate::store::reference::Reference;
use crate::store::{self, Digest, Store, image};

fn sys(context: impl Into<String>, e: impl Into<std::io::Error>) -> Error {
    Error::Sys {
        context: context.into(),
        source: e.into(),
    }
}

fn errno(context: impl Into<String>) -> impl FnOnce(Errno) -> Error {
    let c = context.into();
    move |e| sys(c, e)
}

/// One change of a container, as `docker diff` prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// `A`, `C` or `D`.
    pub kind: char,
    pub path: String,
}

/// Lists the entries of a directory (without `.` and `..`), sorted by name.
fn list_dir(fd: BorrowedFd<'_>) -> Result<Vec<Vec<u8>>> {
    let dup = openat(
        fd,
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno("open directory"))?;
    let mut d = Dir::from_fd(dup).map_err(errno("read directory"))?;
    let mut names: Vec<Vec<u8>> = d
        .iter()
        .flatten()
        .map(|e| e.file_name().to_bytes().to_vec())
        .filter(|n| n != b"." && n != b"..")
        .collect();
    names.sort();
    Ok(names)
}

fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd> {
    openat(
        dir,
        OsStr::from_bytes(name),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno(format!("open {}", String::from_utf8_lossy(name))))
}

fn open_path_dir(p: &Path) -> Result<OwnedFd> {
    nix::fcntl::open(
        p,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno(format!("open {}", p.display())))
}

fn fmt(mode: u32) -> u32 {
    mode & libc::S_IFMT
}

/// The image's view (init layer and image layers), to tell a change from an addition.
fn image_union(store: &Store, c: &Container) -> Result<Union> {
    let spec = super::union_spec(store, c)?;
    Union::new(&UnionSpec {
        lowers: spec.lowers,
        ..UnionSpec::default()
    })
    .map_err(|e| sys("open the image's layers", e))
}

/// The container's merged view, for reading (its upper layer on top, metacopy files read
/// from below). The work directory is a private empty one: nothing is written.
struct MergedView {
    union: Union,
    work: PathBuf,
}

impl MergedView {
    fn open(store: &Store, c: &Container) -> Result<MergedView> {
        let paths = Paths::new(store, c.id());
        let work = paths.dir.join(format!("work-read-{}", std::process::id()));
        std::fs::create_dir_all(&work).map_err(|e| sys(format!("mkdir {}", work.display()), e))?;
        let mut spec = super::union_spec(store, c)?;
        spec.work = Some(work.clone());
        let union = Union::new(&spec).map_err(|e| sys("open the container's layers", e))?;
        Ok(MergedView { union, work })
    }
}

impl Drop for MergedView {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.work);
    }
}

/// Looks `path` up in a union from its root; `None` when it does not exist.
fn lookup_path(u: &Union, path: &[Vec<u8>]) -> Option<crate::cow::Attr> {
    let mut attr = u.getattr(ROOT_INO).ok()?;
    for c in path {
        attr = u.lookup(attr.ino, c).ok()?;
    }
    Some(attr)
}

/// Resolves a path of the container in a union: `..` and symlinks stay inside the root;
/// the last component's symlink is followed only with `follow_last`.
fn resolve_in_union(u: &Union, path: &str, follow_last: bool) -> Result<crate::cow::Attr> {
    let not_found = || Error::Invalid(format!("Could not find the file {path} in container"));
    let mut todo: Vec<Vec<u8>> = path
        .split('/')
        .filter(|c| !c.is_empty())
        .map(|c| c.as_bytes().to_vec())
        .rev()
        .collect();
    let mut stack: Vec<crate::cow::Attr> = vec![u.getattr(ROOT_INO).map_err(|_| not_found())?];
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c == b"." {
            continue;
        }
        if c == b".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let cur = stack.last().expect("the root stays").ino;
        let a = u.lookup(cur, &c).map_err(|_| not_found())?;
        if fmt(a.st.st_mode) == libc::S_IFLNK && (follow_last || !todo.is_empty()) {
            hops += 1;
            if hops > 40 {
                return Err(Error::Invalid(format!(
                    "{path}: too many levels of symbolic links"
                )));
            }
            let target = u.readlink(a.ino).map_err(|_| not_found())?;
            if target.starts_with(b"/") {
                stack.truncate(1);
            }
            for t in target.split(|b| *b == b'/').rev().filter(|t| !t.is_empty()) {
                todo.push(t.to_vec());
            }
            continue;
        }
        stack.push(a);
    }
    Ok(*stack.last().expect("the root stays"))
}

/// `diff`: the changes of a container's upper layer, sorted by path.
pub fn diff(store: &Store, c: &Container) -> Result<Vec<Change>> {
    let paths = Paths::new(store, c.id());
    let image = image_union(store, c)?;
    let upper = open_path_dir(&paths.upper())?;
    let mut out = Vec::new();
    diff_dir(&image, upper.as_fd(), &mut Vec::new(), &mut out)?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn join(path: &[Vec<u8>]) -> String {
    let mut s = String::new();
    for c in path {
        s.push('/');
        s.push_str(&String::from_utf8_lossy(c));
    }
    s
}

fn diff_dir(
    image: &Union,
    dir: BorrowedFd<'_>,
    path: &mut Vec<Vec<u8>>,
    out: &mut Vec<Change>,
) -> Result<()> {
    for name in list_dir(dir)? {
        let st = fstatat(dir, OsStr::from_bytes(&name), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(errno("stat"))?;
        path.push(name.clone());
        let p = join(path);
        if cowfmt::is_whiteout(st.st_mode, st.st_rdev) {
            if lookup_path(image, path).is_some() {
                out.push(Change { kind: 'D', path: p });
            }
        } else {
            let existed = lookup_path(image, path).is_some();
            out.push(Change {
                kind: if existed { 'C' } else { 'A' },
                path: p,
            });
            if fmt(st.st_mode) == libc::S_IFDIR {
                let sub = open_dir_at(dir, &name)?;
                diff_dir(image, sub.as_fd(), path, out)?;
            }
        }
        path.pop();
    }
    Ok(())
}

/// A tar header from a stat.
fn header(st: &FileStat, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(st.st_mode & 0o7777);
    h.set_uid(st.st_uid as u64);
    h.set_gid(st.st_gid as u64);
    h.set_mtime(st.st_mtime.max(0) as u64);
    h.set_size(size);
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        let _ = h.set_device_major(nix::sys::stat::major(st.st_rdev) as u32);
        let _ = h.set_device_minor(nix::sys::stat::minor(st.st_rdev) as u32);
    }
    h
}

fn kind_of(mode: u32) -> Option<tar::EntryType> {
    Some(match fmt(mode) {
        libc::S_IFREG => tar::EntryType::Regular,
        libc::S_IFDIR => tar::EntryType::Directory,
        libc::S_IFLNK => tar::EntryType::Symlink,
        libc::S_IFCHR => tar::EntryType::Char,
        libc::S_IFBLK => tar::EntryType::Block,
        libc::S_IFIFO => tar::EntryType::Fifo,
        _ => return None, // sockets are not archived
    })
}

fn tar_err(e: std::io::Error) -> Error {
    sys("write the tarball", e)
}

/// Writes the upper layer of a container as an OCI layer tarball.
fn write_layer<W: Write>(store: &Store, c: &Container, w: W) -> Result<W> {
    let paths = Paths::new(store, c.id());
    let merged = MergedView::open(store, c)?;
    let upper = open_path_dir(&paths.upper())?;
    let mut b = tar::Builder::new(w);
    let mut links = HashMap::new();
    layer_dir(
        &merged.union,
        upper.as_fd(),
        &mut Vec::new(),
        &mut b,
        &mut links,
    )?;
    b.into_inner().map_err(tar_err)
}

fn rel(path: &[Vec<u8>]) -> PathBuf {
    let mut p = PathBuf::new();
    for c in path {
        p.push(OsStr::from_bytes(c));
    }
    p
}

fn layer_dir<W: Write>(
    merged: &Union,
    dir: BorrowedFd<'_>,
    path: &mut Vec<Vec<u8>>,
    b: &mut tar::Builder<W>,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<()> {
    for name in list_dir(dir)? {
        let st = fstatat(dir, OsStr::from_bytes(&name), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(errno("stat"))?;
        if cowfmt::is_whiteout(st.st_mode, st.st_rdev) {
            let mut wh = b".wh.".to_vec();
            wh.extend_from_slice(&name);
            path.push(wh);
            let mut h = header(&st, tar::EntryType::Regular, 0);
            h.set_mode(0o644);
            b.append_data(&mut h, rel(path), std::io::empty())
                .map_err(tar_err)?;
            path.pop();
            continue;
        }
        path.push(name.clone());
        let p = rel(path);
        let Some(kind) = kind_of(st.st_mode) else {
            path.pop();
            continue;
        };
        match kind {
            tar::EntryType::Directory => {
                let mut h = header(&st, kind, 0);
                b.append_data(&mut h, &p, std::io::empty())
                    .map_err(tar_err)?;
                let sub = open_dir_at(dir, &name)?;
                if cowfmt::dir_is_opaque(sub.as_fd()).unwrap_or(false) {
                    let mut h = header(&st, tar::EntryType::Regular, 0);
                    h.set_mode(0o644);
                    b.append_data(&mut h, p.join(cowfmt::OCI_OPAQUE_MARKER), std::io::empty())
                        .map_err(tar_err)?;
                }
                layer_dir(merged, sub.as_fd(), path, b, links)?;
            }
            tar::EntryType::Symlink => {
                let target = nix::fcntl::readlinkat(dir, OsStr::from_bytes(&name))
                    .map_err(errno("readlink"))?;
                let mut h = header(&st, kind, 0);
                b.append_link(&mut h, &p, Path::new(&target))
                    .map_err(tar_err)?;
            }
            tar::EntryType::Regular => {
                if st.st_nlink > 1 {
                    if let Some(first) = links.get(&(st.st_dev, st.st_ino)) {
                        let mut h = header(&st, tar::EntryType::Link, 0);
                        b.append_link(&mut h, &p, first).map_err(tar_err)?;
                        path.pop();
                        continue;
                    }
                    links.insert((st.st_dev, st.st_ino), p.clone());
                }
                let metacopy = cowfmt::metacopy_at(dir, &name).ok().flatten().is_some();
                let f: File = if metacopy {
                    // Its data is still in a lower layer: read it through the merged view.
                    let a = lookup_path(merged, path).ok_or_else(|| {
                        Error::Invalid(format!("{}: metacopy file without data", p.display()))
                    })?;
                    merged
                        .open(a.ino, libc::O_RDONLY)
                        .map_err(errno(format!("open {}", p.display())))?
                        .into()
                } else {
                    openat(
                        dir,
                        OsStr::from_bytes(&name),
                        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(errno(format!("open {}", p.display())))?
                    .into()
                };
                let size = f.metadata().map_err(|e| sys("stat", e))?.len();
                let mut h = header(&st, kind, size);
                b.append_data(&mut h, &p, f.take(size)).map_err(tar_err)?;
            }
            _ => {
                let mut h = header(&st, kind, 0);
                b.append_data(&mut h, &p, std::io::empty())
                    .map_err(tar_err)?;
            }
        }
        path.pop();
    }
    Ok(())
}

/// Writes a subtree of a union as a tarball, its top entry named `top` (empty: the tree's
/// own entries at the top, as `export`).
fn write_tree<W: Write>(
    u: &Union,
    start: crate::cow::Attr,
    top: &Path,
    b: &mut tar::Builder<W>,
) -> Result<()> {
    let mut links = HashMap::new();
    tree_entry(u, start, top, b, &mut links)
}

fn tree_entry<W: Write>(
    u: &Union,
    a: crate::cow::Attr,
    p: &Path,
    b: &mut tar::Builder<W>,
    links: &mut HashMap<u64, PathBuf>,
) -> Result<()> {
    let st = a.st;
    let Some(kind) = kind_of(st.st_mode) else {
        return Ok(());
    };
    let named = !p.as_os_str().is_empty();
    match kind {
        tar::EntryType::Directory => {
            if named {
                let mut h = header(&st, kind, 0);
                b.append_data(&mut h, p, std::io::empty())
                    .map_err(tar_err)?;
            }
            let mut entries = u
                .readdir(a.ino)
                .map_err(errno(format!("list {}", p.display())))?;
            entries.sort_by(|x, y| x.name.cmp(&y.name));
            for e in entries {
                let child = u
                    .lookup(a.ino, &e.name)
                    .map_err(errno(format!("look up {}", p.display())))?;
                tree_entry(u, child, &p.join(OsStr::from_bytes(&e.name)), b, links)?;
            }
        }
        tar::EntryType::Symlink => {
            let target = u.readlink(a.ino).map_err(errno("readlink"))?;
            let mut h = header(&st, kind, 0);
            b.append_link(&mut h, p, Path::new(OsStr::from_bytes(&target)))
                .map_err(tar_err)?;
        }
        tar::EntryType::Regular => {
            if st.st_nlink > 1 {
                if let Some(first) = links.get(&a.ino) {
                    let mut h = header(&st, tar::EntryType::Link, 0);
                    b.append_link(&mut h, p, first).map_err(tar_err)?;
                    return Ok(());
                }
                links.insert(a.ino, p.to_path_buf());
            }
            let f: File = u
                .open(a.ino, libc::O_RDONLY)
                .map_err(errno(format!("open {}", p.display())))?
                .into();
            let size = st.st_size as u64;
            let mut h = header(&st, kind, size);
            // A file that shrank meanwhile is padded, so the archive stays well-formed.
            let data = f.take(size).chain(std::io::repeat(0)).take(size);
            b.append_data(&mut h, p, data).map_err(tar_err)?;
        }
        _ => {
            let mut h = header(&st, kind, 0);
            b.append_data(&mut h, p, std::io::empty())
                .map_err(tar_err)?;
        }
    }
    Ok(())
}

/// `export`: the container's merged tree (its volumes and `/proc` not included) as a tarball.
pub fn export<W: Write>(store: &Store, c: &Container, w: W) -> Result<W> {
    let m = MergedView::open(store, c)?;
    let root = m.union.getattr(ROOT_INO).map_err(errno("stat the root"))?;
    let mut b = tar::Builder::new(w);
    write_tree(&m.union, root, Path::new(""), &mut b)?;
    b.into_inner().map_err(tar_err)
}

/// `commit`: the container's upper layer becomes a new layer on top of its image's, in a new
/// image with the container's config and a history entry; tagged `name` if given.
pub fn commit(
    store: &Store,
    c: &Container,
    name: Option<&str>,
    message: Option<&str>,
    author: Option<&str>,
) -> Result<Digest> {
    let tag = name
        .map(|n| Reference::parse_tagged(n).map_err(Error::Invalid))
        .transpose()?;
    let lease = store.lease()?;
    let tmp = lease.tmp_path("commit.tar");
    let f = File::create(&tmp).map_err(|e| sys(format!("create {}", tmp.display()), e))?;
    let f = write_layer(store, c, std::io::BufWriter::new(f))?;
    f.into_inner()
        .map_err(|e| sys("write the layer", e.into_error()))?
        .sync_all()
        .map_err(|e| sys("sync the layer", e))?;
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(tmp.clone());
    let diff_id = {
        let mut f = File::open(&tmp).map_err(|e| sys("open the layer", e))?;
        let mut h = crate::store::digest::Hasher::default();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = f.read(&mut buf).map_err(|e| sys("hash the layer", e))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        h.finish()
    };
    let parent = store
        .index()
        .image(&c.row.image_id)?
        .ok_or_else(|| Error::Invalid(format!("the image of {} is gone", c.row.name)))?;
    let mut config: Value = serde_json::from_slice(&store.read_blob(&parent.id)?)
        .map_err(|e| Error::Invalid(format!("image config: {e}")))?;
    let manifest = image::parse_manifest(
        &store.read_blob(&parent.manifest_digest)?,
        &parent.manifest_digest.to_string(),
    )?;
    let now = image::rfc3339_now();
    let cfg = &c.config;
    let mut ic = match cfg.image_config.clone() {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    let strings = |v: &[String]| json!(v);
    ic.insert("Env".into(), strings(&cfg.env));
    ic.insert("Cmd".into(), strings(&cfg.cmd));
    if cfg.entrypoint.is_empty() {
        ic.remove("Entrypoint");
    } else {
        ic.insert("Entrypoint".into(), strings(&cfg.entrypoint));
    }
    ic.insert("WorkingDir".into(), json!(cfg.workdir));
    ic.insert("User".into(), json!(cfg.user));
    if let Some(env) = ic.get_mut("Env").and_then(Value::as_array_mut) {
        env.retain(|e| !e.as_str().is_some_and(|s| s.starts_with("HOSTNAME=")));
    }
    config["config"] = Value::Object(ic);
    config["created"] = json!(now);
    if let Some(a) = author {
        config["author"] = json!(a);
    }
    let ids = config["rootfs"]["diff_ids"]
        .as_array_mut()
        .ok_or_else(|| Error::Invalid("image config without rootfs.diff_ids".into()))?;
    ids.push(json!(diff_id.to_string()));
    let mut h = json!({
        "created": now,
        "created_by": format!("strata commit {}", c.row.name),
    });
    if let Some(m) = message {
        h["comment"] = json!(m);
    }
    if let Some(a) = author {
        h["author"] = json!(a);
    }
    match config.get_mut("history").and_then(Value::as_array_mut) {
        Some(hist) => hist.push(h),
        None => config["history"] = json!([h]),
    }
    let config = serde_json::to_vec(&config).expect("JSON values serialize");
    let mut layers: Vec<LayerInput<'_>> = Vec::new();
    for d in &manifest.layers {
        let digest = d.digest.clone();
        let compression = Compression::from_media_type(&d.media_type).ok();
        layers.push(LayerInput {
            open: Box::new(move || Ok(Box::new(store.open_blob(&digest)?) as Box<dyn Read + Send>)),
            expect: Expect {
                blob: Some(d.digest.clone()),
                size: Some(d.size),
                diff_id: None,
                compression,
                media_type: Some(d.media_type.clone()),
            },
            label: d.digest.to_string(),
            size: Some(d.size),
        });
    }
    let tmp2 = tmp.clone();
    layers.push(LayerInput {
        open: Box::new(move || {
            Ok(Box::new(File::open(&tmp2).map_err(|e| store::Error::Io {
                context: "open the committed layer".into(),
                path: tmp2.clone(),
                source: e,
            })?) as Box<dyn Read + Send>)
        }),
        expect: Expect {
            compression: Some(Compression::None),
            ..Expect::default()
        },
        label: format!("container {}", c.row.name),
        size: None,
    });
    let id = store.add_image(
        NewImage {
            manifest: None,
            docker_manifest: false,
            config,
            layers,
            tags: tag.into_iter().collect(),
            repo_digests: Vec::new(),
            label: format!("commit of {}", c.row.name),
        },
        &lease,
        &crate::progress::Progress::hidden(),
    )?;
    Ok(id)
}

/// `cp CONTAINER:SRC DEST`: copies a file or tree out of the container (`-` writes a tarball to
/// standard output).
pub fn copy_out(store: &Store, c: &Container, src: &str, dest: &str) -> Result<()> {
    let m = MergedView::open(store, c)?;
    let a = resolve_in_union(&m.union, src, false)?;
    let base = Path::new(src)
        .file_name()
        .map(Path::new)
        .unwrap_or(Path::new("."))
        .to_path_buf();
    if dest == "-" {
        let mut b = tar::Builder::new(std::io::stdout().lock());
        write_tree(&m.union, a, &base, &mut b)?;
        b.into_inner().map_err(tar_err)?.flush().map_err(tar_err)?;
        return Ok(());
    }
    let dest = Path::new(dest);
    let is_dir = fmt(a.st.st_mode) == libc::S_IFDIR;
    let (parent, name): (PathBuf, PathBuf) = match std::fs::metadata(dest) {
        Ok(md) if md.is_dir() => {
            if is_dir && src.ends_with("/.") {
                (dest.to_path_buf(), PathBuf::new())
            } else {
                (dest.to_path_buf(), base)
            }
        }
        Ok(_) if is_dir => {
            return Err(Error::Invalid(format!(
                "cannot copy directory to existing file {}",
                dest.display()
            )));
        }
        _ => {
            let parent = dest
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            if !parent.is_dir() {
                return Err(Error::Invalid(format!(
                    "no such directory: {}",
                    parent.display()
                )));
            }
            let name = dest
                .file_name()
                .map(PathBuf::from)
                .ok_or_else(|| Error::Invalid(format!("bad destination {}", dest.display())))?;
            (parent.to_path_buf(), name)
        }
    };
    let tmp = tempfile_in(store)?;
    let f = File::create(&tmp).map_err(|e| sys("create a temporary file", e))?;
    let mut b = tar::Builder::new(std::io::BufWriter::new(f));
    write_tree(&m.union, a, &name, &mut b)?;
    b.into_inner()
        .map_err(tar_err)?
        .into_inner()
        .map_err(|e| sys("write", e.into_error()))?;
    let mut ar = tar::Archive::new(File::open(&tmp).map_err(|e| sys("open", e))?);
    ar.set_preserve_permissions(true);
    ar.set_preserve_mtime(true);
    ar.set_overwrite(true);
    let r = ar
        .unpack(&parent)
        .map_err(|e| sys(format!("copy into {}", parent.display()), e));
    let _ = std::fs::remove_file(&tmp);
    r
}

fn tempfile_in(store: &Store) -> Result<PathBuf> {
    let dir = store.tmp_dir();
    std::fs::create_dir_all(&dir).map_err(|e| sys(format!("mkdir {}", dir.display()), e))?;
    Ok(dir.join(format!("cp-{}-{}", std::process::id(), store::now())))
}

/// `cp SRC CONTAINER:DEST`: copies a host file or tree into the container, through its mount
/// (its running one, or one made for the copy). Copied files belong to root, as docker's.
pub fn copy_in(store: &Store, c: &Container, src: &Path, dest: &str) -> Result<()> {
    let md = std::fs::symlink_metadata(src)
        .map_err(|e| Error::Invalid(format!("could not find the file {}: {e}", src.display())))?;
    let paths = Paths::new(store, c.id());
    // Through the mount there is (the running container's, or one `strata mount` made).
    let live = crate::cli::mount::strata_mounts()
        .iter()
        .any(|(_, d)| *d == paths.merged());
    let server = if live {
        None
    } else {
        let spec = super::union_spec(store, c)?;
        Some(Server::spawn(
            &spec,
            &paths.merged(),
            format!("strata-container:{}", c.id()),
            None,
        )?)
    };
    let r = copy_in_mounted(&paths.merged(), src, &md, dest);
    if let Some(s) = server {
        s.stop();
    }
    r
}

fn copy_in_mounted(root: &Path, src: &Path, md: &std::fs::Metadata, dest: &str) -> Result<()> {
    let rootfd = nix::fcntl::open(
        root,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno(format!("open {}", root.display())))?;
    let base = src
        .file_name()
        .map(|n| n.as_bytes().to_vec())
        .unwrap_or_else(|| b".".to_vec());
    let open_dir = |fd: OwnedFd| -> Result<OwnedFd> {
        openat(
            fd.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(format!("{dest} is not a directory")))
    };
    let (dir, name) = match super::rootfs::resolve(rootfd.as_fd(), dest) {
        Ok(fd) => {
            let st = nix::sys::stat::fstat(fd.as_fd()).map_err(errno("stat"))?;
            if fmt(st.st_mode) == libc::S_IFDIR {
                (open_dir(fd)?, base)
            } else if md.is_dir() {
                return Err(Error::Invalid(format!(
                    "cannot copy directory to existing file {dest}"
                )));
            } else {
                let comps = super::spec::components(dest);
                let (last, parent) = comps
                    .split_last()
                    .ok_or_else(|| Error::Invalid(format!("bad destination {dest}")))?;
                let p = super::rootfs::resolve(rootfd.as_fd(), &parent.join("/"))
                    .map_err(errno(format!("resolve {dest}")))?;
                (open_dir(p)?, last.as_bytes().to_vec())
            }
        }
        Err(Errno::ENOENT) => {
            let comps = super::spec::components(dest);
            let (last, parent) = comps
                .split_last()
                .ok_or_else(|| Error::Invalid(format!("bad destination {dest}")))?;
            let p = super::rootfs::resolve(rootfd.as_fd(), &parent.join("/")).map_err(|_| {
                Error::Invalid(format!(
                    "Could not find the file {} in container",
                    parent.join("/")
                ))
            })?;
            (open_dir(p)?, last.as_bytes().to_vec())
        }
        Err(e) => return Err(sys(format!("resolve {dest}"), e)),
    };
    copy_host_entry(src, dir.as_fd(), &name)
}

fn copy_host_entry(src: &Path, dir: BorrowedFd<'_>, name: &[u8]) -> Result<()> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let md =
        std::fs::symlink_metadata(src).map_err(|e| sys(format!("stat {}", src.display()), e))?;
    let n = OsStr::from_bytes(name);
    let mode = Mode::from_bits_truncate(md.mode() & 0o7777);
    let ft = md.file_type();
    if ft.is_dir() {
        match nix::sys::stat::mkdirat(dir, n, mode) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(sys(format!("mkdir {}", n.to_string_lossy()), e)),
        }
        let sub = open_dir_at(dir, name)?;
        let _ = nix::sys::stat::fchmod(sub.as_fd(), mode);
        let mut entries: Vec<_> = std::fs::read_dir(src)
            .map_err(|e| sys(format!("list {}", src.display()), e))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            copy_host_entry(&e.path(), sub.as_fd(), e.file_name().as_bytes())?;
        }
    } else if ft.is_symlink() {
        let target = std::fs::read_link(src).map_err(|e| sys("readlink", e))?;
        let _ = nix::unistd::unlinkat(dir, n, nix::unistd::UnlinkatFlags::NoRemoveDir);
        nix::unistd::symlinkat(&target, dir, n).map_err(errno("symlink"))?;
    } else if ft.is_file() {
        let mut from = File::open(src).map_err(|e| sys(format!("open {}", src.display()), e))?;
        let to = openat(
            dir,
            n,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC,
            mode,
        )
        .map_err(errno(format!("create {}", n.to_string_lossy())))?;
        let mut to = File::from(to);
        std::io::copy(&mut from, &mut to).map_err(|e| sys("copy", e))?;
        let _ = nix::sys::stat::fchmod(to.as_fd(), mode);
    } else if ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
        let kind = if ft.is_fifo() {
            nix::sys::stat::SFlag::S_IFIFO
        } else if ft.is_char_device() {
            nix::sys::stat::SFlag::S_IFCHR
        } else {
            nix::sys::stat::SFlag::S_IFBLK
        };
        nix::sys::stat::mknodat(dir, n, kind, mode, md.rdev()).map_err(errno("mknod"))?;
    }
    Ok(())
}
