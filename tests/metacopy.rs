//! Metadata-only copy-up (`metacopy=on`, as kernel overlayfs `-o metacopy=on`).
//!
//! On a union with metacopy on, a change of the metadata of a lower regular file (chmod,
//! chown, utimes, setxattr, removexattr, chattr) copies up only its metadata: the upper file
//! has the lower's size but no data (a hole), every attribute, and the kernel's mark
//! `trusted.overlay.metacopy` (empty). Reads still come from the lower file and `stat` shows
//! the lower's `st_blocks`. Opening for writing or truncating copies the data up in place
//! (the file's times stay), then removes the mark (and a redirect). A rename or hard link of a
//! metacopy file copies its data up first. Kernel overlayfs mounted with
//! `metacopy=on,redirect_dir=on` reads what strata wrote, and strata reads what the kernel
//! wrote (also a renamed metacopy file, whose data a `trusted.overlay.redirect` points to).
//! With metacopy off (the default) a metadata change copies the whole file.
//!
//! Two kinds of tests: `union_*` drive `strata::cow::Union` directly on temporary
//! directories (no mount); `mount_*` run the real `strata overlay -f -o …,metacopy=on` and,
//! as the oracle, kernel overlayfs with `index=off,redirect_dir=on,metacopy=on,xino=off`.
//! `mount_random_ops_match_kernel` runs a seeded random sequence on both
//! (`METACOPY_SEED=N` picks another seed, `METACOPY_OPS=N` another length,
//! `METACOPY_TRACE=1` prints each operation with `--nocapture`).
//!
//! The temporary directories are made on ext4 (`/tmp` when it is ext4, else `/var/tmp`) so
//! that "no data" can be checked as `st_blocks == 0`. Needs root (trusted xattrs, owners);
//! the mount tests also /dev/fuse and kernel overlayfs; skipped otherwise.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::mounts::{
    KernelOverlay, Layer, StrataMount, have_fuse, have_kernel_overlay, lgetxattr, llistxattr,
    lsetxattr, tree, tree_diff, tree_text,
};
use nix::errno::Errno;
use nix::sys::time::TimeSpec;
use sha2::{Digest as _, Sha256};
use strata::cow::{Attr, ROOT_INO, SetAttr, Union, UnionSpec};

/// The kernel's metacopy mark (root writes the trusted namespace).
const METACOPY: &str = "trusted.overlay.metacopy";
/// The kernel's redirect (where a renamed metacopy file's data is).
const REDIRECT: &str = "trusted.overlay.redirect";
/// The options of the kernel oracle for metacopy.
const KERNEL_MC_OPTS: &str = "index=off,redirect_dir=on,metacopy=on,xino=off";
/// The mtime the fixture gives every lower file.
const LOWER_MTIME: i64 = 1_500_000_000;
/// `FS_NODUMP_FL` (`chattr +d`).
const FS_NODUMP_FL: u32 = 0x0000_0040;

// ---------------------------------------------------------------------------------------------
// Environment

fn is_ext4(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::EXT4_SUPER_MAGIC)
}

/// Where the temporary directories go: `/tmp` if it is ext4, else `/var/tmp`.
fn tmp_base() -> PathBuf {
    let tmp = std::env::temp_dir();
    if is_ext4(&tmp) {
        tmp
    } else {
        PathBuf::from("/var/tmp")
    }
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-metacopy-")
        .tempdir_in(tmp_base())
        .expect("tempdir")
}

fn skip_no_root() -> bool {
    if !common::is_root() {
        eprintln!("skipped: needs root (trusted xattrs, owners)");
        return true;
    }
    false
}

fn skip_no_mounts() -> bool {
    if !(have_fuse() && have_kernel_overlay()) {
        eprintln!("skipped: needs root, /dev/fuse and kernel overlayfs");
        return true;
    }
    false
}

// ---------------------------------------------------------------------------------------------
// The fixture: two lower layers (index 0 is the top one) and an upper, in kernel format

struct Side {
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Side {
    fn empty(base: &Path) -> Side {
        let side = Side {
            lowers: vec![base.join("lower0"), base.join("lower1")],
            upper: base.join("upper"),
            work: base.join("work"),
            mnt: base.join("mnt"),
        };
        for d in side
            .lowers
            .iter()
            .chain([&side.upper, &side.work, &side.mnt])
        {
            fs::create_dir_all(d).unwrap();
        }
        side
    }

    fn lower_refs(&self) -> Vec<&Path> {
        self.lowers.iter().map(|p| p.as_path()).collect()
    }

    fn strata(&self) -> StrataMount {
        strata_mount(self, "metacopy=on")
    }

    fn kernel(&self) -> KernelOverlay {
        kernel_mount(self)
    }

    fn union(&self, metacopy: bool) -> Union {
        Union::new(&UnionSpec {
            lowers: self.lowers.clone(),
            upper: Some(self.upper.clone()),
            work: Some(self.work.clone()),
            metacopy,
            ..Default::default()
        })
        .expect("open union")
    }

    fn up(&self, rel: &str) -> PathBuf {
        self.upper.join(rel)
    }

    fn m(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// The lower file `rel` as the view shows it (the top lower that has it).
    fn lower_file(&self, rel: &str) -> PathBuf {
        self.lowers
            .iter()
            .map(|l| l.join(rel))
            .find(|p| fs::symlink_metadata(p).is_ok())
            .unwrap_or_else(|| panic!("no lower has {rel}"))
    }
}

/// Deterministic bytes.
fn pattern(len: usize, salt: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i * 7 + i / 97 + salt) % 26) as u8)
        .collect()
}

/// A sparse file: a hole of 1 MiB, then data.
fn sparse_file(p: &Path) {
    use std::io::{Seek, SeekFrom};
    let mut f = fs::File::create(p).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(b"after the hole\n").unwrap();
}

/// Lower files of the fixture (relative path, layer index).
const LOWER_FILES: &[(&str, usize)] = &[
    ("a", 1),
    ("big", 1),
    ("x", 1),
    ("own", 1),
    ("empty", 1),
    ("sparse", 1),
    ("suid", 1),
    ("d1/f", 1),
    ("d1/g", 1),
    ("d2/h", 1),
    ("b", 0),
    ("d1/t", 0),
];

fn build(base: &Path) -> Side {
    let side = Side::empty(base);
    Layer::new(&side.lowers[1])
        .file("a", &pattern(10_000, 1), 0o644)
        .file("big", &pattern(300_000, 2), 0o644)
        .file("x", b"has an xattr\n", 0o640)
        .xattr("x", "user.color", b"red")
        .file("own", b"owned by 1000\n", 0o644)
        .chown("own", 1000, 1000)
        .file("empty", b"", 0o644)
        .file("suid", b"#!/bin/sh\necho hi\n", 0o4755)
        .file("d1/f", &pattern(20_000, 3), 0o644)
        .file("d1/g", b"gee\n", 0o600)
        .file("d2/h", &pattern(5000, 4), 0o644)
        .dir("d3", 0o755)
        .symlink("s", "a");
    sparse_file(&side.lowers[1].join("sparse"));
    Layer::new(&side.lowers[1]).xattr("sparse", "user.tag", b"holey");
    Layer::new(&side.lowers[0])
        .file("b", &pattern(7000, 5), 0o644)
        .file("d1/t", b"in the top lower\n", 0o644);
    Layer::new(&side.upper).file("c", b"charlie\n", 0o644);
    for (rel, i) in LOWER_FILES {
        Layer::new(&side.lowers[*i]).mtime(rel, LOWER_MTIME, 123_456_789);
    }
    side
}

// ---------------------------------------------------------------------------------------------
// Mounts (RAII)

/// strata with more `-o` options, on a side.
fn strata_mount(side: &Side, extra: &str) -> StrataMount {
    let lowers: Vec<&Path> = side.lowers.iter().map(|l| l.as_path()).collect();
    StrataMount::with_options(&lowers, &side.upper, &side.work, &side.mnt, extra)
}

/// Kernel overlayfs with `metacopy=on,redirect_dir=on`, on a side.
fn kernel_mount(side: &Side) -> KernelOverlay {
    let lowers: Vec<&Path> = side.lowers.iter().map(|l| l.as_path()).collect();
    KernelOverlay::with_options(&lowers, &side.upper, &side.work, &side.mnt, KERNEL_MC_OPTS)
}

/// The same fixture twice, in one temporary directory: `s` for strata, `k` for the kernel.
/// The mounts are fields before the directory, so they go first when dropped.
struct Duo {
    sm: Option<StrataMount>,
    km: Option<KernelOverlay>,
    s: Side,
    k: Side,
    base: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Duo {
    fn new() -> Duo {
        let tmp = tempdir();
        let base = tmp.path().to_path_buf();
        let s = build(&base.join("s"));
        let k = build(&base.join("k"));
        let sm = Some(s.strata());
        let km = Some(k.kernel());
        let d = Duo {
            sm,
            km,
            s,
            k,
            base,
            _tmp: tmp,
        };
        d.assert_same("the fixture as mounted");
        d
    }

    /// Runs `f` on the kernel's mount, then on strata's.
    fn both(&self, f: impl Fn(&Path)) {
        f(&self.k.mnt);
        f(&self.s.mnt);
    }

    fn assert_same(&self, when: &str) {
        assert_same_views(&self.s, &self.k, when);
    }

    fn unmount(&mut self) {
        self.sm.take();
        self.km.take();
    }
}

/// The normalized tree of a mount (see `common::mounts::tree`).
fn view(root: &Path) -> BTreeMap<String, String> {
    tree(root)
}

/// Whether the data of the regular file `rel` of a side's view is in a lower layer: its upper
/// directory has no file there, or a metacopy file.
fn data_below(side: &Side, rel: &str) -> bool {
    let p = side.upper.join(rel);
    match fs::symlink_metadata(&p) {
        Err(_) => true,
        Ok(md) => md.is_file() && lgetxattr(&p, METACOPY).ok().flatten().is_some(),
    }
}

/// The `st_blocks` each mount reports for its regular files: where the data is in a lower
/// layer on both sides, the same (the lower data's, as the kernel says for a metacopy file);
/// where a side has the data in its upper file, that file's. (Upper files with their own data
/// are not compared across sides: the kernel's carry an `overlay.origin` attribute that may
/// take a block of its own.)
fn blocks_problems(s: &Side, k: &Side, sv: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (rel, line) in sv {
        if !line.starts_with("f\t") {
            continue;
        }
        let rel = &rel[1..];
        let (Ok(smd), Ok(kmd)) = (
            fs::symlink_metadata(s.m(rel)),
            fs::symlink_metadata(k.m(rel)),
        ) else {
            continue;
        };
        let (sb, kb) = (data_below(s, rel), data_below(k, rel));
        if !sb {
            let own = fs::symlink_metadata(s.up(rel)).unwrap().blocks();
            if smd.blocks() != own {
                out.push_str(&format!(
                    "  {rel}: strata reports st_blocks {} for an upper file with {own}\n",
                    smd.blocks()
                ));
            }
        }
        if sb && kb && smd.blocks() != kmd.blocks() {
            out.push_str(&format!(
                "  {rel}: data below on both sides: strata reports st_blocks {}, kernel {}{}\n",
                smd.blocks(),
                kmd.blocks(),
                if fs::symlink_metadata(s.up(rel)).is_ok() {
                    " (strata's upper is a metacopy file)"
                } else {
                    ""
                }
            ));
        }
    }
    out
}

fn assert_same_views(s: &Side, k: &Side, when: &str) {
    let (st, kt) = (view(&s.mnt), view(&k.mnt));
    if let Some(d) = tree_diff("strata", &st, "kernel", &kt) {
        panic!(
            "views differ ({when}):\n{d}\nkernel view:\n{}",
            tree_text(&kt)
        );
    }
    let b = blocks_problems(s, k, &st);
    assert!(b.is_empty(), "st_blocks differ ({when}):\n{b}");
}

// ---------------------------------------------------------------------------------------------
// Checks of the upper directory

/// Whether a file has data anywhere (`SEEK_DATA` from 0 finds some).
fn has_data(p: &Path) -> bool {
    let f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    match nix::unistd::lseek(f.as_fd(), 0, nix::unistd::Whence::SeekData) {
        Ok(_) => true,
        Err(Errno::ENXIO) => false,
        Err(e) => panic!("lseek SEEK_DATA {}: {e}", p.display()),
    }
}

fn xattr(p: &Path, key: &str) -> Option<Vec<u8>> {
    lgetxattr(p, key).unwrap_or_else(|e| panic!("getxattr {key} {}: {e}", p.display()))
}

/// `p` (in an upper directory) is a metacopy file of `size` bytes: the empty mark, and no data.
fn assert_metacopy(p: &Path, size: u64) {
    let md = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
    assert!(md.is_file(), "{} is not a regular file", p.display());
    assert_eq!(
        xattr(p, METACOPY).as_deref(),
        Some(&b""[..]),
        "{}: {METACOPY} (xattrs {:?})",
        p.display(),
        llistxattr(p)
    );
    assert_eq!(
        md.size(),
        size,
        "{}: size of the metacopy file",
        p.display()
    );
    assert!(
        !has_data(p),
        "{}: a metacopy file must have no data (st_blocks {})",
        p.display(),
        md.blocks()
    );
}

/// Like [`assert_metacopy`], and `st_blocks == 0` (nothing but in-inode attributes on ext4).
fn assert_metacopy_no_blocks(p: &Path, size: u64) {
    assert_metacopy(p, size);
    if is_ext4(p.parent().unwrap()) {
        assert_eq!(
            fs::symlink_metadata(p).unwrap().blocks(),
            0,
            "{}: st_blocks of a metacopy file on ext4",
            p.display()
        );
    }
}

/// `p` (in an upper directory) is a complete copy with `content` and no overlay marks.
fn assert_full_copy(p: &Path, content: &[u8]) {
    assert_eq!(
        xattr(p, METACOPY),
        None,
        "{}: the metacopy mark must be gone once the data is up",
        p.display()
    );
    assert_eq!(
        xattr(p, REDIRECT),
        None,
        "{}: the redirect must be gone once the data is up",
        p.display()
    );
    let got = fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()));
    assert!(
        got == content,
        "{}: upper content differs ({} bytes, want {})",
        p.display(),
        got.len(),
        content.len()
    );
    if content.iter().any(|b| *b != 0) {
        assert!(has_data(p), "{}: a full copy has data", p.display());
    }
}

fn read(p: &Path) -> Vec<u8> {
    fs::read(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

fn assert_content(p: &Path, want: &[u8]) {
    let got = read(p);
    assert!(
        got == want,
        "{}: content differs ({} bytes, want {}; first difference at {:?})",
        p.display(),
        got.len(),
        want.len(),
        got.iter().zip(want).position(|(a, b)| a != b)
    );
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn mtime(p: &Path) -> (i64, i64) {
    let md = fs::symlink_metadata(p).unwrap();
    (md.mtime(), md.mtime_nsec())
}

fn chmod(p: &Path, m: u32) {
    fs::set_permissions(p, fs::Permissions::from_mode(m))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn set_times(p: &Path, sec: i64) {
    let t = TimeSpec::new(sec, 0);
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &t,
        &t,
        nix::sys::stat::UtimensatFlags::FollowSymlink,
    )
    .unwrap_or_else(|e| panic!("utimensat {}: {e}", p.display()));
}

fn append(p: &Path, data: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {} for appending: {e}", p.display()));
    f.write_all(data).unwrap();
}

fn run(cmd: &mut Command) {
    let o = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Snapshot of the lower layers (to check they never change).
fn lower_snapshot(side: &Side) -> Vec<BTreeMap<String, String>> {
    side.lowers.iter().map(|l| tree(l)).collect()
}

fn assert_lowers_unchanged(side: &Side, before: &[BTreeMap<String, String>]) {
    for (i, (l, b)) in side.lowers.iter().zip(before).enumerate() {
        if let Some(d) = tree_diff("before", b, "after", &tree(l)) {
            panic!("lower layer {i} changed:\n{d}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The Union API directly (no mount)

struct Fx {
    _tmp: tempfile::TempDir,
    side: Side,
}

fn fx() -> Option<Fx> {
    if skip_no_root() {
        return None;
    }
    let tmp = tempdir();
    let side = build(tmp.path());
    Some(Fx { _tmp: tmp, side })
}

fn resolve(u: &Union, path: &str) -> Result<Attr, Errno> {
    let mut a = u.getattr(ROOT_INO)?;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        a = u.lookup(a.ino, c.as_bytes())?;
    }
    Ok(a)
}

fn ino(u: &Union, path: &str) -> u64 {
    resolve(u, path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .ino
}

fn uread(u: &Union, path: &str) -> Vec<u8> {
    let fd = u
        .open(ino(u, path), libc::O_RDONLY)
        .unwrap_or_else(|e| panic!("open {path}: {e}"));
    let mut v = Vec::new();
    fs::File::from(fd).read_to_end(&mut v).unwrap();
    v
}

fn ustat(u: &Union, path: &str) -> libc::stat {
    resolve(u, path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .st
}

fn umode(u: &Union, path: &str, m: u32) {
    u.setattr(
        ino(u, path),
        &SetAttr {
            mode: Some(m),
            ..Default::default()
        },
        None,
    )
    .unwrap_or_else(|e| panic!("chmod {path}: {e}"));
}

#[test]
fn union_chmod_copies_metadata_only() {
    let Some(f) = fx() else { return };
    let s = &f.side;
    let before = lower_snapshot(s);
    let u = s.union(true);
    for rel in ["a", "d1/f", "b", "sparse"] {
        let lower = s.lower_file(rel);
        let lmd = fs::metadata(&lower).unwrap();
        umode(&u, rel, 0o600);
        assert_metacopy_no_blocks(&s.up(rel), lmd.size());
        // The rest of the metadata came up too.
        let umd = fs::metadata(s.up(rel)).unwrap();
        assert_eq!(umd.mode() & 0o7777, 0o600, "{rel}: upper mode");
        assert_eq!(
            (umd.uid(), umd.gid()),
            (lmd.uid(), lmd.gid()),
            "{rel}: owner"
        );
        assert_eq!(
            (umd.mtime(), umd.mtime_nsec()),
            (lmd.mtime(), lmd.mtime_nsec()),
            "{rel}: mtime"
        );
        // The view: the new mode, the lower's data and blocks.
        let st = ustat(&u, rel);
        assert_eq!(st.st_mode & 0o7777, 0o600, "{rel}: mode in the view");
        assert_eq!(st.st_size as u64, lmd.size(), "{rel}: size in the view");
        assert_eq!(
            st.st_blocks as u64,
            lmd.blocks(),
            "{rel}: st_blocks in the view must be the lower data's"
        );
        assert!(uread(&u, rel) == read(&lower), "{rel}: content in the view");
    }
    // The upper file of the sparse lower kept its xattr.
    assert_eq!(
        xattr(&s.up("sparse"), "user.tag").as_deref(),
        Some(&b"holey"[..])
    );
    assert_lowers_unchanged(s, &before);
    // A new union over the same directories (a remount) reads the data from below again.
    drop(u);
    let u = s.union(true);
    for rel in ["a", "d1/f", "b", "sparse"] {
        assert!(
            uread(&u, rel) == read(&s.lower_file(rel)),
            "{rel}: content after reopening"
        );
        assert_eq!(ustat(&u, rel).st_mode & 0o7777, 0o600);
        assert_eq!(
            ustat(&u, rel).st_blocks as u64,
            fs::metadata(s.lower_file(rel)).unwrap().blocks()
        );
    }
}

#[test]
fn union_chown_utimes_xattrs_chattr_copy_metadata_only() {
    let Some(f) = fx() else { return };
    let s = &f.side;
    let before = lower_snapshot(s);
    let u = s.union(true);
    // chown
    u.setattr(
        ino(&u, "a"),
        &SetAttr {
            uid: Some(1000),
            gid: Some(100),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_metacopy_no_blocks(&s.up("a"), 10_000);
    let st = ustat(&u, "a");
    assert_eq!((st.st_uid, st.st_gid), (1000, 100));
    // utimes
    let t = TimeSpec::new(1_234_567_890, 5);
    u.setattr(
        ino(&u, "big"),
        &SetAttr {
            atime: Some(Some(t)),
            mtime: Some(Some(t)),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_metacopy_no_blocks(&s.up("big"), 300_000);
    let st = ustat(&u, "big");
    assert_eq!((st.st_mtime, st.st_mtime_nsec), (1_234_567_890, 5));
    // setxattr
    u.setxattr(ino(&u, "d1/f"), b"user.x", b"1", 0).unwrap();
    assert_metacopy(&s.up("d1/f"), 20_000);
    assert_eq!(u.getxattr(ino(&u, "d1/f"), b"user.x").unwrap(), b"1");
    // removexattr (of the lower's attribute)
    u.removexattr(ino(&u, "x"), b"user.color").unwrap();
    assert_metacopy(&s.up("x"), 13);
    assert_eq!(xattr(&s.up("x"), "user.color"), None);
    assert_eq!(u.getxattr(ino(&u, "x"), b"user.color"), Err(Errno::ENODATA));
    // chattr +d
    let i = ino(&u, "d2/h");
    let flags = u.inode_flags(i).unwrap();
    u.set_inode_flags(i, flags | FS_NODUMP_FL).unwrap();
    assert_metacopy(&s.up("d2/h"), 5000);
    assert_ne!(u.inode_flags(i).unwrap() & FS_NODUMP_FL, 0, "chattr +d");
    // The overlay's own attributes never show.
    for rel in ["a", "big", "d1/f", "x", "d2/h"] {
        let names = u.listxattr(ino(&u, rel)).unwrap();
        assert!(
            !names.iter().any(|n| n.starts_with(b"trusted.overlay.")),
            "{rel}: listxattr shows {names:?}"
        );
        assert_eq!(
            u.getxattr(ino(&u, rel), METACOPY.as_bytes()),
            Err(Errno::ENODATA)
        );
        assert!(uread(&u, rel) == read(&s.lower_file(rel)), "{rel}: content");
        assert_eq!(
            ustat(&u, rel).st_blocks as u64,
            fs::metadata(s.lower_file(rel)).unwrap().blocks(),
            "{rel}: st_blocks"
        );
    }
    assert_lowers_unchanged(s, &before);
}

#[test]
fn union_open_for_write_copies_data_and_keeps_times() {
    let Some(f) = fx() else { return };
    let s = &f.side;
    let u = s.union(true);
    let lower = read(&s.lower_file("a"));
    umode(&u, "a", 0o600);
    assert_metacopy_no_blocks(&s.up("a"), 10_000);
    let st0 = ustat(&u, "a");
    let up0 = fs::metadata(s.up("a")).unwrap();
    // Opening for writing (no write) brings the data up: the times stay.
    drop(u.open(ino(&u, "a"), libc::O_WRONLY).unwrap());
    let up1 = fs::metadata(s.up("a")).unwrap();
    assert_eq!(
        (up1.mtime(), up1.mtime_nsec()),
        (up0.mtime(), up0.mtime_nsec()),
        "the data copy-up changed the upper mtime"
    );
    assert_eq!(
        (up1.atime(), up1.atime_nsec()),
        (up0.atime(), up0.atime_nsec()),
        "the data copy-up changed the upper atime"
    );
    assert_full_copy(&s.up("a"), &lower);
    let st1 = ustat(&u, "a");
    assert_eq!(
        (st1.st_mtime, st1.st_mtime_nsec),
        (st0.st_mtime, st0.st_mtime_nsec)
    );
    assert_eq!(st1.st_mode & 0o7777, 0o600);
    assert_eq!(
        st1.st_blocks,
        up1.blocks() as i64,
        "blocks are the upper's now"
    );
    // An append writes after the lower's data.
    umode(&u, "big", 0o640);
    let big = read(&s.lower_file("big"));
    let fd = u
        .open(ino(&u, "big"), libc::O_WRONLY | libc::O_APPEND)
        .unwrap();
    fs::File::from(fd).write_all(b"appended\n").unwrap();
    let mut want = big.clone();
    want.extend_from_slice(b"appended\n");
    assert_full_copy(&s.up("big"), &want);
    assert!(uread(&u, "big") == want);
    assert_eq!(ustat(&u, "big").st_mode & 0o7777, 0o640);
    // O_RDWR of a metacopy file in the top lower.
    umode(&u, "b", 0o604);
    let b = read(&s.lower_file("b"));
    let fd = u.open(ino(&u, "b"), libc::O_RDWR).unwrap();
    let mut file = fs::File::from(fd);
    let mut got = Vec::new();
    file.read_to_end(&mut got).unwrap();
    assert!(
        got == b,
        "read through an O_RDWR descriptor of a metacopy file"
    );
    assert_full_copy(&s.up("b"), &b);
}

#[test]
fn union_truncate_copies_data() {
    let Some(f) = fx() else { return };
    let s = &f.side;
    let u = s.union(true);
    let big = read(&s.lower_file("big"));
    umode(&u, "big", 0o600);
    assert_metacopy_no_blocks(&s.up("big"), 300_000);
    u.setattr(
        ino(&u, "big"),
        &SetAttr {
            size: Some(1000),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    assert_full_copy(&s.up("big"), &big[..1000]);
    assert!(uread(&u, "big") == big[..1000]);
    assert_eq!(ustat(&u, "big").st_mode & 0o7777, 0o600);
    // Growing: the lower's data, then zeros.
    let fz = read(&s.lower_file("d1/f"));
    umode(&u, "d1/f", 0o600);
    u.setattr(
        ino(&u, "d1/f"),
        &SetAttr {
            size: Some(30_000),
            ..Default::default()
        },
        None,
    )
    .unwrap();
    let mut want = fz.clone();
    want.resize(30_000, 0);
    assert_full_copy(&s.up("d1/f"), &want);
    assert!(uread(&u, "d1/f") == want);
}

#[test]
fn union_rename_and_link_copy_data_first() {
    let Some(f) = fx() else { return };
    let s = &f.side;
    let u = s.union(true);
    let a = read(&s.lower_file("a"));
    let df = read(&s.lower_file("d1/f"));
    let h = read(&s.lower_file("d2/h"));
    // rename between directories
    umode(&u, "a", 0o600);
    assert_metacopy(&s.up("a"), 10_000);
    u.rename(ROOT_INO, b"a", ino(&u, "d3"), b"a2", 0).unwrap();
    assert_full_copy(&s.up("d3/a2"), &a);
    assert!(uread(&u, "d3/a2") == a);
    assert_eq!(ustat(&u, "d3/a2").st_mode & 0o7777, 0o600);
    assert_eq!(resolve(&u, "a").unwrap_err(), Errno::ENOENT);
    // rename in the same directory
    umode(&u, "d2/h", 0o600);
    assert_metacopy(&s.up("d2/h"), 5000);
    let d2 = ino(&u, "d2");
    u.rename(d2, b"h", d2, b"h2", 0).unwrap();
    assert_full_copy(&s.up("d2/h2"), &h);
    assert!(uread(&u, "d2/h2") == h);
    // hard link
    umode(&u, "d1/f", 0o600);
    assert_metacopy(&s.up("d1/f"), 20_000);
    let fi = ino(&u, "d1/f");
    u.link(fi, ino(&u, "d3"), b"f2").unwrap();
    assert_full_copy(&s.up("d1/f"), &df);
    assert_full_copy(&s.up("d3/f2"), &df);
    assert_eq!(
        fs::metadata(s.up("d1/f")).unwrap().ino(),
        fs::metadata(s.up("d3/f2")).unwrap().ino(),
        "the upper names are one inode"
    );
    assert!(uread(&u, "d1/f") == df);
    assert!(uread(&u, "d3/f2") == df);
    assert_eq!(ustat(&u, "d3/f2").st_nlink, 2);
}

/// An empty lower file: its metacopy copy-up writes the mark on an empty upper file; a write
/// must still bring the (empty) data up and drop the mark, else the written data is hidden
/// behind whatever lower file has the same name.
#[test]
fn union_empty_file_metacopy_then_write() {
    let Some(f) = fx() else { return };
    let s = &f.side;
    let u = s.union(true);
    umode(&u, "empty", 0o600);
    let fd = u
        .open(ino(&u, "empty"), libc::O_WRONLY | libc::O_APPEND)
        .unwrap();
    fs::File::from(fd).write_all(b"now with data\n").unwrap();
    assert_eq!(uread(&u, "empty"), b"now with data\n");
    assert_full_copy(&s.up("empty"), b"now with data\n");
    drop(u);
    // A fresh union reads the data from the upper file.
    let u = s.union(true);
    assert_eq!(uread(&u, "empty"), b"now with data\n");
    // Renamed over a name where the lower has another file, then written (a fresh fixture).
    let f2 = fx().unwrap();
    let s2 = &f2.side;
    let u2 = s2.union(true);
    umode(&u2, "empty", 0o600);
    u2.rename(ROOT_INO, b"empty", ROOT_INO, b"sparse", 0)
        .unwrap();
    let fd = u2
        .open(ino(&u2, "sparse"), libc::O_WRONLY | libc::O_APPEND)
        .unwrap();
    fs::File::from(fd).write_all(b"mine").unwrap();
    assert_eq!(uread(&u2, "sparse"), b"mine");
    drop(u2);
    let u2 = s2.union(true);
    assert_eq!(
        uread(&u2, "sparse"),
        b"mine",
        "after reopening: the lower 'sparse' shows through the renamed empty file"
    );
    assert_eq!(xattr(&s2.up("sparse"), METACOPY), None);
}

#[test]
fn union_metacopy_off_copies_everything() {
    let Some(f) = fx() else { return };
    let s = &f.side;
    let u = s.union(false);
    let a = read(&s.lower_file("a"));
    umode(&u, "a", 0o600);
    assert_full_copy(&s.up("a"), &a);
    assert_eq!(mode(&s.up("a")), 0o600);
    u.setxattr(ino(&u, "d1/f"), b"user.x", b"1", 0).unwrap();
    assert_full_copy(&s.up("d1/f"), &read(&s.lower_file("d1/f")));
}

// ---------------------------------------------------------------------------------------------
// Through the mount, with the kernel as the oracle

#[test]
fn mount_chmod_copies_metadata_only() {
    if skip_no_mounts() {
        return;
    }
    let d = Duo::new();
    let before = lower_snapshot(&d.s);
    let files = ["a", "b", "d1/f", "big", "sparse", "suid"];
    d.both(|m| {
        for rel in files {
            chmod(&m.join(rel), 0o600);
        }
    });
    for rel in files {
        let lower = d.s.lower_file(rel);
        let lmd = fs::metadata(&lower).unwrap();
        assert_metacopy_no_blocks(&d.s.up(rel), lmd.size());
        let md = fs::metadata(d.s.m(rel)).unwrap();
        assert_eq!(md.mode() & 0o7777, 0o600, "{rel}: mode in the mount");
        assert_eq!(md.size(), lmd.size(), "{rel}: size in the mount");
        assert_eq!(
            md.blocks(),
            lmd.blocks(),
            "{rel}: st_blocks in the mount must be the lower data's"
        );
        assert_content(&d.s.m(rel), &read(&lower));
        // The kernel wrote a metacopy file too (the oracle agrees this is a metacopy case).
        assert_eq!(
            xattr(&d.k.up(rel), METACOPY).as_deref(),
            Some(&b""[..]),
            "{rel}: the kernel made no metacopy file"
        );
    }
    d.assert_same("chmod of lower files");
    assert_lowers_unchanged(&d.s, &before);
    // The overlay's marks do not show in the mount.
    assert_eq!(lgetxattr(&d.s.m("a"), METACOPY).unwrap(), None);
    assert!(
        !llistxattr(&d.s.m("a"))
            .unwrap()
            .iter()
            .any(|k| k.starts_with("trusted.overlay.")),
        "listxattr shows overlay attributes"
    );
}

#[test]
fn mount_chown_utimes_xattrs_chattr_copy_metadata_only() {
    if skip_no_mounts() {
        return;
    }
    let d = Duo::new();
    d.both(|m| {
        std::os::unix::fs::chown(m.join("a"), Some(1000), Some(100)).unwrap();
        // -h: utimensat on the name (without it touch opens the file for writing first).
        run(Command::new("touch")
            .args(["-h", "-m", "-d", "@1234567890"])
            .arg(m.join("big")));
        run(Command::new("touch")
            .args(["-d", "@1234567890"])
            .arg(m.join("b")));
        lsetxattr(&m.join("d1/f"), "user.x", b"1").unwrap();
        run(Command::new("setfattr")
            .args(["-x", "user.color"])
            .arg(m.join("x")));
        run(Command::new("chattr").arg("+d").arg(m.join("d2/h")));
        lsetxattr(&m.join("own"), "user.y", b"why").unwrap();
    });
    for (rel, size) in [
        ("a", 10_000),
        ("big", 300_000),
        ("d1/f", 20_000),
        ("x", 13),
        ("d2/h", 5000),
        ("own", 14),
    ] {
        assert_metacopy(&d.s.up(rel), size);
        assert_eq!(
            xattr(&d.k.up(rel), METACOPY).as_deref(),
            Some(&b""[..]),
            "{rel}: the kernel made no metacopy file"
        );
        assert_content(&d.s.m(rel), &read(&d.s.lower_file(rel)));
    }
    // Plain `touch` opened "b" for writing: whatever the kernel did, strata does.
    assert_eq!(
        xattr(&d.s.up("b"), METACOPY),
        xattr(&d.k.up("b"), METACOPY),
        "touch -d b: metacopy mark (strata, kernel)"
    );
    assert_eq!(mtime(&d.s.m("b")), (1_234_567_890, 0));
    let md = fs::metadata(d.s.m("a")).unwrap();
    assert_eq!((md.uid(), md.gid()), (1000, 100));
    assert_eq!(fs::metadata(d.s.m("big")).unwrap().mtime(), 1_234_567_890);
    assert_eq!(
        mtime(&d.s.m("big")),
        mtime(&d.k.m("big")),
        "mtime after touch -d"
    );
    let lsattr = |p: &Path| {
        let o = Command::new("lsattr").arg(p).output().unwrap();
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        lsattr(&d.s.m("d2/h")).contains('d'),
        "chattr +d: {}",
        lsattr(&d.s.m("d2/h"))
    );
    assert_eq!(lsattr(&d.s.m("d2/h")), lsattr(&d.k.m("d2/h")), "lsattr");
    d.assert_same("chown, touch, setxattr, removexattr, chattr");
}

#[test]
fn mount_write_open_copies_data_and_keeps_mtime() {
    if skip_no_mounts() {
        return;
    }
    let d = Duo::new();
    let s = &d.s;
    let a = read(&s.lower_file("a"));
    chmod(&s.m("a"), 0o600);
    assert_metacopy_no_blocks(&s.up("a"), 10_000);
    let m0 = mtime(&s.m("a"));
    assert_eq!(m0, (LOWER_MTIME, 123_456_789), "mtime of the metacopy file");
    // open(O_WRONLY) without a write: the data comes up, the mtime stays.
    drop(fs::OpenOptions::new().write(true).open(s.m("a")).unwrap());
    assert_full_copy(&s.up("a"), &a);
    assert_eq!(
        mtime(&s.m("a")),
        m0,
        "open(O_WRONLY) of a metacopy file changed its mtime in the mount"
    );
    assert_eq!(mtime(&s.up("a")), m0, "the upper file's mtime changed");
    assert_eq!(mode(&s.m("a")), 0o600);
    assert_content(&s.m("a"), &a);
    // Append after chmod, on both.
    d.both(|m| {
        chmod(&m.join("d1/f"), 0o640);
        chmod(&m.join("b"), 0o604);
        append(&m.join("d1/f"), b"appended\n");
        append(&m.join("b"), b"more\n");
    });
    for (rel, tail) in [("d1/f", &b"appended\n"[..]), ("b", b"more\n")] {
        let mut want = read(&s.lower_file(rel));
        want.extend_from_slice(tail);
        assert_full_copy(&s.up(rel), &want);
        assert_content(&s.m(rel), &want);
        assert_content(&d.k.m(rel), &want);
        assert!(
            mtime(&s.m(rel)).0 > LOWER_MTIME,
            "{rel}: an append sets the mtime"
        );
    }
    assert_eq!(mode(&s.m("d1/f")), 0o640);
    assert_eq!(mode(&s.m("b")), 0o604);
    // The kernel has written "a" too, to compare the trees.
    drop(fs::OpenOptions::new().write(true).open(d.k.m("a")).unwrap());
    chmod(&d.k.m("a"), 0o600);
    d.assert_same("open for writing and appends of metacopy files");
}

#[test]
fn mount_truncate_copies_data() {
    if skip_no_mounts() {
        return;
    }
    let d = Duo::new();
    let big = read(&d.s.lower_file("big"));
    let h = read(&d.s.lower_file("d2/h"));
    d.both(|m| {
        chmod(&m.join("big"), 0o600);
        chmod(&m.join("d2/h"), 0o600);
        chmod(&m.join("sparse"), 0o600);
    });
    assert_metacopy(&d.s.up("big"), 300_000);
    d.both(|m| {
        nix::unistd::truncate(&m.join("big"), 1000).unwrap();
        nix::unistd::truncate(&m.join("d2/h"), 9000).unwrap();
        nix::unistd::truncate(&m.join("sparse"), 10).unwrap();
    });
    assert_full_copy(&d.s.up("big"), &big[..1000]);
    assert_content(&d.s.m("big"), &big[..1000]);
    let mut want = h.clone();
    want.resize(9000, 0);
    assert_full_copy(&d.s.up("d2/h"), &want);
    assert_content(&d.s.m("d2/h"), &want);
    assert_full_copy(&d.s.up("sparse"), &[0; 10]);
    d.assert_same("truncate of metacopy files");
}

#[test]
fn mount_rename_and_link_copy_data_first() {
    if skip_no_mounts() {
        return;
    }
    let d = Duo::new();
    let a = read(&d.s.lower_file("a"));
    let df = read(&d.s.lower_file("d1/f"));
    let g = read(&d.s.lower_file("d1/g"));
    d.both(|m| {
        for rel in ["a", "d1/f", "d1/g"] {
            chmod(&m.join(rel), 0o600);
        }
        fs::rename(m.join("a"), m.join("d3/a2")).unwrap();
        fs::rename(m.join("d1/g"), m.join("d1/g2")).unwrap();
        fs::hard_link(m.join("d1/f"), m.join("d2/f2")).unwrap();
    });
    assert_full_copy(&d.s.up("d3/a2"), &a);
    assert_full_copy(&d.s.up("d1/g2"), &g);
    assert_full_copy(&d.s.up("d1/f"), &df);
    assert_full_copy(&d.s.up("d2/f2"), &df);
    assert_content(&d.s.m("d3/a2"), &a);
    assert_content(&d.s.m("d1/g2"), &g);
    assert_content(&d.s.m("d2/f2"), &df);
    let (m1, m2) = (
        fs::metadata(d.s.m("d1/f")).unwrap(),
        fs::metadata(d.s.m("d2/f2")).unwrap(),
    );
    assert_eq!(m1.ino(), m2.ino(), "the two names of the link");
    assert_eq!(m1.nlink(), 2);
    d.assert_same("rename and link of metacopy files");
    // Writing through one name shows through the other.
    d.both(|m| append(&m.join("d2/f2"), b"via f2\n"));
    let mut want = df.clone();
    want.extend_from_slice(b"via f2\n");
    assert_content(&d.s.m("d1/f"), &want);
    d.assert_same("an append through the second name");
}

#[test]
fn mount_metacopy_survives_remount() {
    if skip_no_mounts() {
        return;
    }
    let mut d = Duo::new();
    d.both(|m| {
        chmod(&m.join("a"), 0o600);
        chmod(&m.join("d1/f"), 0o700);
        std::os::unix::fs::chown(m.join("b"), Some(1000), Some(1000)).unwrap();
        lsetxattr(&m.join("big"), "user.k", b"v").unwrap();
        set_times(&m.join("d2/h"), 1_000_000_000);
    });
    let before = view(&d.s.mnt);
    d.assert_same("before the remount");
    d.unmount();
    for (rel, size) in [
        ("a", 10_000),
        ("d1/f", 20_000),
        ("b", 7000),
        ("big", 300_000),
        ("d2/h", 5000),
    ] {
        assert_metacopy(&d.s.up(rel), size);
    }
    d.sm = Some(d.s.strata());
    d.km = Some(d.k.kernel());
    if let Some(diff) = tree_diff("before", &before, "after", &view(&d.s.mnt)) {
        panic!("strata shows another tree after a remount:\n{diff}");
    }
    assert_eq!(mtime(&d.s.m("d2/h")), (1_000_000_000, 0));
    d.assert_same("after the remount");
}

#[test]
fn mount_kernel_reads_strata_metacopy_upper() {
    if skip_no_mounts() {
        return;
    }
    let tmp = tempdir();
    let s = build(tmp.path());
    let files = ["a", "b", "big", "sparse", "d1/f", "d1/t", "d2/h", "x"];
    let want = {
        let _m = s.strata();
        for rel in files {
            chmod(&s.m(rel), 0o640);
        }
        std::os::unix::fs::chown(s.m("own"), Some(0), Some(0)).unwrap();
        lsetxattr(&s.m("d1/g"), "user.k", b"v").unwrap();
        set_times(&s.m("suid"), 1_100_000_000);
        view(&s.mnt)
    };
    for rel in files {
        assert_metacopy(&s.up(rel), fs::metadata(s.lower_file(rel)).unwrap().size());
    }
    for rel in ["own", "d1/g", "suid"] {
        assert_metacopy(&s.up(rel), fs::metadata(s.lower_file(rel)).unwrap().size());
    }
    {
        let _k = s.kernel();
        let got = view(&s.mnt);
        if let Some(diff) = tree_diff("strata", &want, "kernel", &got) {
            panic!("the kernel reads strata's metacopy upper differently:\n{diff}");
        }
        for rel in files {
            assert_content(&s.m(rel), &read(&s.lower_file(rel)));
            assert_eq!(
                fs::metadata(s.m(rel)).unwrap().blocks(),
                fs::metadata(s.lower_file(rel)).unwrap().blocks(),
                "{rel}: st_blocks the kernel reports for strata's metacopy file"
            );
        }
        assert_eq!(mtime(&s.m("suid")), (1_100_000_000, 0));
        // The kernel also completes what strata started.
        append(&s.m("d1/f"), b"by the kernel\n");
    }
    let mut df = read(&s.lower_file("d1/f"));
    df.extend_from_slice(b"by the kernel\n");
    assert_eq!(read(&s.up("d1/f")), df);
    assert_eq!(xattr(&s.up("d1/f"), METACOPY), None);
    let _m = s.strata();
    assert_content(&s.m("d1/f"), &df);
    assert_eq!(mode(&s.m("d1/f")), 0o640);
}

#[test]
fn mount_strata_reads_kernel_metacopy_upper() {
    if skip_no_mounts() {
        return;
    }
    let tmp = tempdir();
    let s = build(tmp.path());
    let want = {
        let _k = s.kernel();
        for rel in ["a", "b", "d1/f", "sparse"] {
            chmod(&s.m(rel), 0o600);
        }
        // A lower file moved to another directory: a redirect with an absolute path.
        run(Command::new("mv").arg(s.m("d1/g")).arg(s.m("d2/g2")));
        // In the same directory: a relative redirect.
        run(Command::new("mv").arg(s.m("big")).arg(s.m("big2")));
        // A metacopy file, then moved from a subdirectory to the root.
        chmod(&s.m("d2/h"), 0o640);
        run(Command::new("mv").arg(s.m("d2/h")).arg(s.m("h3")));
        view(&s.mnt)
    };
    // What the kernel wrote is what this test means to read.
    assert_metacopy(&s.up("a"), 10_000);
    assert_metacopy(&s.up("d2/g2"), 4);
    assert_eq!(
        xattr(&s.up("d2/g2"), REDIRECT).as_deref(),
        Some(&b"/d1/g"[..])
    );
    assert_metacopy(&s.up("big2"), 300_000);
    assert!(
        xattr(&s.up("big2"), REDIRECT).is_some(),
        "the kernel wrote no redirect for big2"
    );
    assert_metacopy(&s.up("h3"), 5000);
    assert!(xattr(&s.up("h3"), REDIRECT).is_some());
    let g = read(&s.lowers[1].join("d1/g"));
    let big = read(&s.lowers[1].join("big"));
    let h = read(&s.lowers[1].join("d2/h"));
    let after = {
        let _m = s.strata();
        let got = view(&s.mnt);
        if let Some(diff) = tree_diff("kernel", &want, "strata", &got) {
            panic!("strata reads the kernel's metacopy upper differently:\n{diff}");
        }
        assert_content(&s.m("d2/g2"), &g);
        assert_content(&s.m("big2"), &big);
        assert_content(&s.m("h3"), &h);
        assert_content(&s.m("a"), &read(&s.lower_file("a")));
        assert_eq!(mode(&s.m("h3")), 0o640);
        for (rel, lower) in [
            ("d2/g2", "d1/g"),
            ("big2", "big"),
            ("h3", "d2/h"),
            ("a", "a"),
            ("sparse", "sparse"),
        ] {
            assert_eq!(
                fs::metadata(s.m(rel)).unwrap().blocks(),
                fs::metadata(s.lowers[1].join(lower)).unwrap().blocks(),
                "{rel}: st_blocks strata reports for the kernel's metacopy file"
            );
        }
        // Appends through strata to the redirected files.
        append(&s.m("d2/g2"), b"appended by strata\n");
        append(&s.m("big2"), b"tail\n");
        let mut g2 = g.clone();
        g2.extend_from_slice(b"appended by strata\n");
        assert_content(&s.m("d2/g2"), &g2);
        assert_full_copy(&s.up("d2/g2"), &g2);
        let mut big2 = big.clone();
        big2.extend_from_slice(b"tail\n");
        assert_content(&s.m("big2"), &big2);
        assert_full_copy(&s.up("big2"), &big2);
        // A truncate of the third.
        nix::unistd::truncate(&s.m("h3"), 100).unwrap();
        assert_full_copy(&s.up("h3"), &h[..100]);
        assert_content(&s.m("h3"), &h[..100]);
        view(&s.mnt)
    };
    // And back under the kernel: the same.
    let _k = s.kernel();
    if let Some(diff) = tree_diff("strata", &after, "kernel", &view(&s.mnt)) {
        panic!("the kernel reads the upper strata completed differently:\n{diff}");
    }
}

#[test]
fn mount_strata_reads_kernel_metacopy_hard_link() {
    if skip_no_mounts() {
        return;
    }
    let tmp = tempdir();
    let s = build(tmp.path());
    let want = {
        let _k = s.kernel();
        chmod(&s.m("a"), 0o600);
        // The kernel links a metacopy file by giving it a redirect to its lower path.
        fs::hard_link(s.m("a"), s.m("d3/a-link")).unwrap();
        fs::hard_link(s.m("d1/f"), s.m("f-link")).unwrap();
        view(&s.mnt)
    };
    assert_metacopy(&s.up("d3/a-link"), 10_000);
    let _m = s.strata();
    let got = view(&s.mnt);
    if let Some(diff) = tree_diff("kernel", &want, "strata", &got) {
        panic!("strata reads the kernel's linked metacopy files differently:\n{diff}");
    }
    assert_content(&s.m("d3/a-link"), &read(&s.lower_file("a")));
    assert_content(&s.m("f-link"), &read(&s.lower_file("d1/f")));
    assert_eq!(
        fs::metadata(s.m("f-link")).unwrap().blocks(),
        fs::metadata(s.lower_file("d1/f")).unwrap().blocks(),
        "f-link: st_blocks"
    );
    // A write through one name shows through the other, and completes the kernel's file.
    append(&s.m("f-link"), b"linked\n");
    let mut want = read(&s.lower_file("d1/f"));
    want.extend_from_slice(b"linked\n");
    assert_content(&s.m("d1/f"), &want);
    assert_full_copy(&s.up("d1/f"), &want);
}

/// The random oracle's first find, by hand: an empty lower file gets a metacopy copy-up
/// (chown), is renamed over a name where a lower layer has another file ("sparse"), and is
/// appended to. The kernel drops the mark on the write and reads the appended bytes; the
/// content must be those bytes, never the other lower file.
#[test]
fn mount_empty_file_metacopy_rename_then_append() {
    if skip_no_mounts() {
        return;
    }
    let d = Duo::new();
    d.both(|m| {
        std::os::unix::fs::chown(m.join("empty"), Some(1000), Some(1000)).unwrap();
    });
    assert_eq!(
        xattr(&d.k.up("empty"), METACOPY).as_deref(),
        Some(&b""[..]),
        "the kernel makes a metacopy copy-up of an empty file too"
    );
    d.assert_same("chown of an empty lower file");
    d.both(|m| {
        append(&m.join("empty"), b"1");
    });
    assert_content(&d.k.m("empty"), b"1");
    assert_content(&d.s.m("empty"), b"1");
    assert_full_copy(&d.s.up("empty"), b"1");
    d.assert_same("an append to it");
    d.both(|m| {
        fs::rename(m.join("empty"), m.join("sparse")).unwrap();
        append(&m.join("sparse"), b"2");
    });
    assert_content(&d.k.m("sparse"), b"12");
    assert_content(&d.s.m("sparse"), b"12");
    d.assert_same("rename over a lower name and append");
}

/// Like the above without the first append: chown, rename over "sparse", append.
#[test]
fn mount_empty_metacopy_file_renamed_over_lower_name() {
    if skip_no_mounts() {
        return;
    }
    let mut d = Duo::new();
    d.both(|m| {
        std::os::unix::fs::chown(m.join("empty"), Some(1000), Some(1000)).unwrap();
        fs::rename(m.join("empty"), m.join("d3/e")).unwrap();
        fs::rename(m.join("d3/e"), m.join("sparse")).unwrap();
        append(&m.join("sparse"), b"data");
    });
    assert_content(&d.k.m("sparse"), b"data");
    assert_content(&d.s.m("sparse"), b"data");
    d.assert_same("rename of an empty metacopy file over a lower name, then append");
    d.unmount();
    // What the kernel makes of strata's upper.
    {
        let _k = d.s.kernel();
        assert_content(&d.s.m("sparse"), b"data");
    }
    assert_eq!(
        xattr(&d.s.up("sparse"), METACOPY),
        None,
        "strata left the metacopy mark on a file with data of its own"
    );
}

#[test]
fn mount_metacopy_off_copies_everything() {
    if skip_no_mounts() {
        return;
    }
    let tmp = tempdir();
    let s = build(tmp.path());
    let _m = StrataMount::new(&s.lower_refs(), &s.upper, &s.work, &s.mnt);
    let a = read(&s.lower_file("a"));
    chmod(&s.m("a"), 0o600);
    assert_full_copy(&s.up("a"), &a);
    assert_eq!(mode(&s.up("a")), 0o600);
    lsetxattr(&s.m("d1/f"), "user.k", b"v").unwrap();
    assert_full_copy(&s.up("d1/f"), &read(&s.lower_file("d1/f")));
    assert_content(&s.m("a"), &a);
    // `metacopy=off` spelled out is the same.
    drop(_m);
    let s2 = build(&tmp.path().join("off"));
    let _m2 = strata_mount(&s2, "metacopy=off");
    chmod(&s2.m("a"), 0o600);
    assert_full_copy(&s2.up("a"), &a);
    assert_eq!(mode(&s2.up("a")), 0o600);
}

// ---------------------------------------------------------------------------------------------
// A random sequence on both

/// xorshift64.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.below(v.len())]
    }
}

#[derive(Clone, Debug)]
enum Op {
    Chmod {
        path: String,
        mode: u32,
    },
    Chown {
        path: String,
        uid: u32,
        gid: u32,
    },
    TouchM {
        path: String,
        sec: i64,
    },
    SetX {
        path: String,
        key: String,
        value: String,
    },
    RemoveX {
        path: String,
        key: String,
    },
    Append {
        path: String,
        len: usize,
    },
    /// open(O_WRONLY|O_CREAT|O_TRUNC) and write.
    Write {
        path: String,
        len: usize,
    },
    Truncate {
        path: String,
        len: i64,
    },
    Rename {
        from: String,
        to: String,
    },
    Link {
        from: String,
        to: String,
    },
    Unlink {
        path: String,
    },
    /// The sha256 of the content.
    Read {
        path: String,
    },
}

const ROOT_NAMES: &[&str] = &[
    "a", "b", "big", "x", "own", "empty", "sparse", "suid", "c", "s", "n1", "n2",
];
const DIRS: &[&str] = &["d1", "d2", "d3"];
const SUB_NAMES: &[&str] = &["f", "g", "h", "t", "m1", "m2"];

fn random_path(r: &mut Rng, files: &[String]) -> String {
    if !files.is_empty() && r.below(100) < 60 {
        return r.pick(files).clone();
    }
    if r.below(100) < 50 {
        r.pick(ROOT_NAMES).to_string()
    } else {
        format!("{}/{}", r.pick(DIRS), r.pick(SUB_NAMES))
    }
}

fn random_target(r: &mut Rng, files: &[String]) -> String {
    if r.below(100) < 8 {
        return r.pick(DIRS).to_string();
    }
    if r.below(100) < 50 {
        return r.pick(ROOT_NAMES).to_string();
    }
    if r.below(100) < 30 {
        return random_path(r, files);
    }
    format!("{}/{}", r.pick(DIRS), r.pick(SUB_NAMES))
}

fn random_op(r: &mut Rng, files: &[String]) -> Op {
    let path = random_path(r, files);
    match r.below(100) {
        0..=12 => Op::Chmod {
            path,
            mode: *r.pick(&[0o600, 0o640, 0o644, 0o755, 0o4755, 0o2711]),
        },
        13..=20 => Op::Chown {
            path,
            uid: *r.pick(&[0, 1000, 65534]),
            gid: *r.pick(&[0, 100, 65534]),
        },
        21..=27 => Op::TouchM {
            path,
            sec: *r.pick(&[1_000_000_000, 1_600_000_000]),
        },
        28..=35 => Op::SetX {
            path,
            key: r.pick(&["user.k", "user.color"]).to_string(),
            value: r.pick(&["v", "blue", ""]).to_string(),
        },
        36..=38 => Op::RemoveX {
            path,
            key: r.pick(&["user.k", "user.color", "user.tag"]).to_string(),
        },
        39..=48 => Op::Append {
            path,
            len: *r.pick(&[1, 100, 5000]),
        },
        49..=52 => Op::Write {
            path,
            len: *r.pick(&[0, 10, 6000]),
        },
        53..=60 => Op::Truncate {
            path,
            len: *r.pick(&[0, 3, 1000, 12_000]),
        },
        61..=74 => Op::Rename {
            from: path,
            to: random_target(r, files),
        },
        75..=82 => Op::Link {
            from: path,
            to: random_target(r, files),
        },
        83..=88 => Op::Unlink { path },
        _ => Op::Read { path },
    }
}

fn cpath(root: &Path, rel: &str) -> CString {
    CString::new(root.join(rel).as_os_str().as_bytes()).unwrap()
}

fn check(r: libc::c_int) -> Result<String, i32> {
    if r < 0 {
        Err(Errno::last_raw())
    } else {
        Ok(String::new())
    }
}

fn io_errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn write_with(p: &Path, opts: &mut fs::OpenOptions, data: &[u8]) -> Result<String, i32> {
    let mut f = opts.open(p).map_err(io_errno)?;
    f.write_all(data).map_err(io_errno)?;
    Ok(String::new())
}

/// Runs `op` below `root`: what it read (for `Read`), or the errno.
fn apply(root: &Path, op: &Op, salt: usize) -> Result<String, i32> {
    use std::os::unix::fs::OpenOptionsExt;
    // SAFETY (the libc calls): NUL-terminated paths, buffers valid for their lengths.
    unsafe {
        match op {
            Op::Chmod { path, mode } => check(libc::chmod(cpath(root, path).as_ptr(), *mode)),
            Op::Chown { path, uid, gid } => {
                check(libc::chown(cpath(root, path).as_ptr(), *uid, *gid))
            }
            Op::TouchM { path, sec } => {
                let ts = [
                    libc::timespec {
                        tv_sec: 0,
                        tv_nsec: libc::UTIME_OMIT,
                    },
                    libc::timespec {
                        tv_sec: *sec,
                        tv_nsec: 0,
                    },
                ];
                check(libc::utimensat(
                    libc::AT_FDCWD,
                    cpath(root, path).as_ptr(),
                    ts.as_ptr(),
                    0,
                ))
            }
            Op::SetX { path, key, value } => {
                let k = CString::new(key.as_str()).unwrap();
                check(libc::setxattr(
                    cpath(root, path).as_ptr(),
                    k.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                ))
            }
            Op::RemoveX { path, key } => {
                let k = CString::new(key.as_str()).unwrap();
                check(libc::removexattr(cpath(root, path).as_ptr(), k.as_ptr()))
            }
            Op::Append { path, len } => write_with(
                &root.join(path),
                fs::OpenOptions::new().append(true),
                &pattern(*len, salt),
            ),
            Op::Write { path, len } => write_with(
                &root.join(path),
                fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o644),
                &pattern(*len, salt),
            ),
            Op::Truncate { path, len } => check(libc::truncate(cpath(root, path).as_ptr(), *len)),
            Op::Rename { from, to } => check(libc::rename(
                cpath(root, from).as_ptr(),
                cpath(root, to).as_ptr(),
            )),
            Op::Link { from, to } => check(libc::link(
                cpath(root, from).as_ptr(),
                cpath(root, to).as_ptr(),
            )),
            Op::Unlink { path } => check(libc::unlink(cpath(root, path).as_ptr())),
            Op::Read { path } => {
                let mut f = fs::File::open(root.join(path)).map_err(io_errno)?;
                let mut v = Vec::new();
                f.read_to_end(&mut v).map_err(io_errno)?;
                Ok(format!(
                    "{} bytes sha256 {}",
                    v.len(),
                    hex::encode(Sha256::digest(&v))
                ))
            }
        }
    }
}

fn op_paths(op: &Op) -> Vec<&str> {
    match op {
        Op::Chmod { path, .. }
        | Op::Chown { path, .. }
        | Op::TouchM { path, .. }
        | Op::SetX { path, .. }
        | Op::RemoveX { path, .. }
        | Op::Append { path, .. }
        | Op::Write { path, .. }
        | Op::Truncate { path, .. }
        | Op::Unlink { path }
        | Op::Read { path } => vec![path],
        Op::Rename { from, to } | Op::Link { from, to } => vec![from, to],
    }
}

/// What a side shows at `rel` (the mount's lstat) and has in its upper directory there.
fn describe(side: &Side, rel: &str) -> String {
    let st = |p: &Path| match fs::symlink_metadata(p) {
        Ok(m) => format!(
            "ino {} mode {:o} size {} blocks {} nlink {}",
            m.ino(),
            m.mode(),
            m.size(),
            m.blocks(),
            m.nlink()
        ),
        Err(e) => format!("{e}"),
    };
    let up = side.up(rel);
    let marks: Vec<String> = llistxattr(&up)
        .unwrap_or_default()
        .into_iter()
        .filter(|k| k.starts_with("trusted.overlay."))
        .map(|k| {
            let v = xattr(&up, &k).unwrap_or_default();
            format!("{k}={}", String::from_utf8_lossy(&v))
        })
        .collect();
    format!("mount: {}; upper: {} {marks:?}", st(&side.m(rel)), st(&up))
}

fn outcome(r: &Result<String, i32>) -> String {
    match r {
        Ok(s) if s.is_empty() => "Ok".into(),
        Ok(s) => format!("Ok {s}"),
        Err(e) => format!("{} ({e})", Errno::from_raw(*e)),
    }
}

/// Regular files of a view (relative paths).
fn files_of(v: &BTreeMap<String, String>) -> Vec<String> {
    v.iter()
        .filter(|(_, l)| l.starts_with("f\t"))
        .map(|(k, _)| k[1..].to_string())
        .collect()
}

fn env_num(key: &str) -> Option<u64> {
    std::env::var(key).ok().and_then(|v| v.trim().parse().ok())
}

#[test]
fn mount_random_ops_match_kernel() {
    if skip_no_mounts() {
        return;
    }
    let seed = env_num("METACOPY_SEED").unwrap_or(20_250_601);
    let n_ops = env_num("METACOPY_OPS").unwrap_or(200) as usize;
    eprintln!("metacopy oracle: seed {seed}, {n_ops} ops (METACOPY_SEED={seed} repeats it)");
    let trace = std::env::var_os("METACOPY_TRACE").is_some();
    let mut d = Duo::new();
    let mut r = Rng::new(seed);
    let mut history: Vec<String> = Vec::new();
    let mut kview = view(&d.k.mnt);
    let mut files = files_of(&kview);
    for i in 0..n_ops {
        let op = random_op(&mut r, &files);
        let kr = apply(&d.k.mnt, &op, i);
        let sr = apply(&d.s.mnt, &op, i);
        history.push(format!(
            "#{i} {op:?}: kernel {} strata {}",
            outcome(&kr),
            outcome(&sr)
        ));
        if trace {
            eprintln!("{}", history.last().unwrap());
        }
        assert!(
            kr == sr,
            "seed {seed}: outcome of op #{i} `{op:?}` differs: strata {}, kernel {}\n\
             {}history:\n{}",
            outcome(&sr),
            outcome(&kr),
            op_paths(&op)
                .iter()
                .map(|p| format!(
                    "{p}:\n  strata: {}\n  kernel: {}\n",
                    describe(&d.s, p),
                    describe(&d.k, p)
                ))
                .collect::<String>(),
            history.join("\n")
        );
        if (i + 1) % 20 == 0 || i + 1 == n_ops {
            let (sv, kv) = (view(&d.s.mnt), view(&d.k.mnt));
            if let Some(diff) = tree_diff("strata", &sv, "kernel", &kv) {
                panic!(
                    "seed {seed}: views differ after op #{i}:\n{diff}\nhistory:\n{}\nkernel view:\n{}",
                    history.join("\n"),
                    tree_text(&kv)
                );
            }
            let b = blocks_problems(&d.s, &d.k, &sv);
            assert!(
                b.is_empty(),
                "seed {seed}: st_blocks differ after op #{i}:\n{b}\nhistory:\n{}",
                history.join("\n")
            );
            kview = kv;
            files = files_of(&kview);
        } else if matches!(
            op,
            Op::Rename { .. } | Op::Link { .. } | Op::Unlink { .. } | Op::Write { .. }
        ) {
            // Keep aiming at names that exist.
            files = files_of(&tree(&d.k.mnt));
        }
    }
    // Each upper read by the other implementation shows the same.
    d.unmount();
    let cross_k = Side {
        lowers: d.s.lowers.clone(),
        upper: d.s.upper.clone(),
        work: d.s.work.clone(),
        mnt: d.base.join("cross-k"),
    };
    let cross_s = Side {
        lowers: d.k.lowers.clone(),
        upper: d.k.upper.clone(),
        work: d.k.work.clone(),
        mnt: d.base.join("cross-s"),
    };
    fs::create_dir_all(&cross_k.mnt).unwrap();
    fs::create_dir_all(&cross_s.mnt).unwrap();
    let _k = cross_k.kernel();
    let _s = cross_s.strata();
    for (who, got) in [
        ("the kernel on strata's upper", view(&cross_k.mnt)),
        ("strata on the kernel's upper", view(&cross_s.mnt)),
    ] {
        if let Some(diff) = tree_diff("before", &kview, who, &got) {
            panic!(
                "seed {seed}: {who} shows another tree:\n{diff}\nhistory:\n{}",
                history.join("\n")
            );
        }
    }
}
