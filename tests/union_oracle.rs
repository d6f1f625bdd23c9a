//! Kernel overlayfs as the oracle of strata's FUSE union.
//!
//! The same fixture (two lower layers and an upper directory in kernel overlayfs format, with
//! whiteouts, opaque directories, a dir over a file and a file over a dir, symlinks, hard links,
//! a fifo, a device, a sparse file, setuid and xattrs) is built twice; strata
//! (`strata overlay -f`) mounts one copy, kernel overlayfs
//! (`index=off,redirect_dir=off,metacopy=off,xino=off`) the other. A seeded pseudo-random
//! sequence of operations over a small set of colliding names (half of them aimed at paths that
//! exist) runs on both through plain syscalls, the kernel first; after every operation the
//! errno and the normalized trees (`common::mounts::tree`) must be equal. Now and then both are
//! unmounted and mounted again (strata's view must come from its upper, not from memory).
//! At the end each upper is mounted by the other implementation (round trip) and must show
//! the same tree again.
//!
//! Where the kernel differs by design — EXDEV for renaming a directory that a lower layer
//! contributes to (no `redirect_dir`) — strata must perform the rename, and the kernel's side
//! then does what `mv` does (copy with `cp -a`, delete), so the trees stay comparable
//! (`Pair::dir_rename_step`; the named test
//! `rename_of_lower_dir_strata_succeeds_where_kernel_says_exdev` does it by hand). Other known
//! deviations have named tests that say so.
//!
//! Needs root, /dev/fuse and the overlay filesystem; skipped otherwise. Environment:
//! `ORACLE_SEEDS=4,5,6` (for the ignored `oracle_more_seeds`) and `ORACLE_OPS=150` change the
//! sequences, `ORACLE_TRACE=1` prints each operation (with `--nocapture`), `ORACLE_KEEP=1`
//! keeps the directories of a failed test.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::mounts::{
    KernelOverlay, Layer, StrataMount, fuse_mounts_under, have_fuse, have_kernel_overlay, tree,
    tree_diff, tree_text,
};

// ---------------------------------------------------------------------------------------------
// The fixture

/// Lower layers (top first), upper, work and mount point of one side.
struct Side {
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

impl Side {
    fn lower_refs(&self) -> Vec<&Path> {
        self.lowers.iter().map(|p| p.as_path()).collect()
    }
    fn strata(&self) -> StrataMount {
        StrataMount::new(&self.lower_refs(), &self.upper, &self.work, &self.mnt)
    }
    fn kernel(&self) -> KernelOverlay {
        KernelOverlay::new(&self.lower_refs(), &self.upper, &self.work, &self.mnt)
    }
}

/// Builds the standard fixture under `base`.
fn build_fixture(base: &Path) -> Side {
    let side = empty_side(base);
    // The bottom layer.
    Layer::new(&side.lowers[1])
        .file("a", b"alpha\n", 0o644)
        .xattr("a", "user.color", b"red")
        .file("b", b"bravo bottom\n", 0o600)
        .chown("b", 1000, 1000)
        .file("d1/x", b"x1\n", 0o644)
        .file("d1/y", b"y1\n", 0o644)
        .file("d1/sub/deep", b"deep\n", 0o644)
        .dir("d2", 0o750)
        .file("d2/p", b"p\n", 0o644)
        .file("dd/q", b"q\n", 0o644)
        .file("g", b"golf\n", 0o644)
        .file("o/gone", b"gone\n", 0o644)
        .symlink("s", "a")
        .file("e/old", b"old\n", 0o644)
        .fifo("pipe", 0o644)
        .dir("d1", 0o755)
        .xattr("d1", "user.dir", b"bottom")
        .file("fod", b"a file under a dir\n", 0o644)
        .file("suid", b"#!/bin/sh\n", 0o4755)
        .file("usr/own", b"owned by 1000\n", 0o644)
        .chown("usr/own", 1000, 1000)
        .file("usr/rootfile", b"root's\n", 0o666);
    mknod_char(&side.lowers[1].join("null"), 1, 3);
    sparse_file(&side.lowers[1].join("sparse"));
    // The top lower layer.
    Layer::new(&side.lowers[0])
        .file("b", b"bravo top\n", 0o644)
        .file("d1/z", b"z1\n", 0o644)
        .whiteout("d1/y")
        .opaque_dir("d2", 0o755)
        .file("d2/r", b"r\n", 0o644)
        .file("dd", b"a file over a dir\n", 0o644)
        .opaque_dir("e", 0o755)
        .file("e/new", b"new\n", 0o644)
        .file("n1/m", b"m\n", 0o644)
        .symlink("s2", "d1")
        .file("fod/w", b"w\n", 0o644);
    // The upper layer, as kernel overlayfs would have left it.
    Layer::new(&side.upper)
        .file("c", b"charlie\n", 0o644)
        .dir("d1", 0o755)
        .file("d1/u", b"u\n", 0o644)
        .whiteout("g")
        .opaque_dir("o", 0o755)
        .file("o/kept", b"kept\n", 0o644)
        .file("h1", b"hard\n", 0o644)
        .hardlink("h1", "h2");
    side
}

/// Adds hard links to the bottom layer: kernel overlayfs (without `index`) shows them with one
/// inode number until one name is copied up, strata gives each name its own from the start
/// (a FUSE node id is the inode number; sharing one node made operations reach the wrong name).
fn add_lower_hard_links(side: &Side) {
    Layer::new(&side.lowers[1])
        .file("hl/h1", b"lower hard\n", 0o644)
        .hardlink("hl/h1", "hl/h2")
        .hardlink("hl/h1", "hl/h3");
}

/// A character device (copy-up must make the same device).
fn mknod_char(p: &Path, major: u32, minor: u32) {
    let c = CString::new(p.as_os_str().as_bytes()).unwrap();
    // SAFETY: a NUL-terminated path.
    let r = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFCHR | 0o640,
            libc::makedev(major, minor),
        )
    };
    assert_eq!(r, 0, "mknod {}", p.display());
}

/// A sparse file: a hole of 1 MiB, then data (copy-up must keep the content).
fn sparse_file(p: &Path) {
    use std::io::{Seek, SeekFrom, Write};
    let mut f = fs::File::create(p).unwrap();
    f.seek(SeekFrom::Start(1 << 20)).unwrap();
    f.write_all(b"after the hole\n").unwrap();
}

fn empty_side(base: &Path) -> Side {
    let side = Side {
        lowers: vec![base.join("lower1"), base.join("lower2")],
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

fn skip() -> bool {
    if !(have_fuse() && have_kernel_overlay()) {
        eprintln!("skipped: needs root, /dev/fuse and kernel overlayfs");
        return true;
    }
    false
}

fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("strata-oracle-")
        .tempdir()
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Operations

#[derive(Clone, Debug)]
enum Op {
    /// open(O_WRONLY|O_CREAT|O_TRUNC, mode) and write `len` bytes.
    Write {
        path: String,
        mode: u32,
        len: usize,
    },
    /// open(O_WRONLY|O_APPEND) and write `len` bytes.
    Append {
        path: String,
        len: usize,
    },
    Truncate {
        path: String,
        len: i64,
    },
    Chmod {
        path: String,
        mode: u32,
    },
    Lchown {
        path: String,
        uid: u32,
        gid: u32,
    },
    Unlink {
        path: String,
    },
    Rmdir {
        path: String,
    },
    Mkdir {
        path: String,
        mode: u32,
    },
    Rename {
        from: String,
        to: String,
        flags: u32,
    },
    Link {
        from: String,
        to: String,
    },
    Symlink {
        target: String,
        path: String,
    },
    SetXattr {
        path: String,
        key: String,
        value: String,
    },
    RemoveXattr {
        path: String,
        key: String,
    },
    Mkfifo {
        path: String,
    },
    /// mknod of a character device (0/0 is the whiteout format).
    Mknod {
        path: String,
        major: u32,
        minor: u32,
    },
    /// `rm -rf`: depth first, names sorted; the first error.
    RemoveTree {
        path: String,
    },
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Rename { from, to, flags } => {
                let fl = match *flags {
                    0 => "",
                    libc::RENAME_NOREPLACE => " NOREPLACE",
                    libc::RENAME_EXCHANGE => " EXCHANGE",
                    _ => " ?",
                };
                write!(f, "rename{fl} {from} -> {to}")
            }
            Op::Chmod { path, mode } => write!(f, "chmod {mode:o} {path}"),
            Op::Mkdir { path, mode } => write!(f, "mkdir {mode:o} {path}"),
            Op::Write { path, mode, len } => write!(f, "write {path} mode {mode:o} len {len}"),
            other => write!(f, "{other:?}"),
        }
    }
}

fn c(root: &Path, rel: &str) -> CString {
    CString::new(root.join(rel).as_os_str().as_bytes()).unwrap()
}

fn data(len: usize, salt: usize) -> Vec<u8> {
    (0..len)
        .map(|i| b'a' + ((i * 7 + salt) % 26) as u8)
        .collect()
}

fn check(r: libc::c_int) -> Result<(), i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1))
    } else {
        Ok(())
    }
}

fn write_all(fd: libc::c_int, buf: &[u8]) -> Result<(), i32> {
    let mut done = 0;
    while done < buf.len() {
        // SAFETY: a valid fd and a buffer valid for the given length.
        let n = unsafe { libc::write(fd, buf[done..].as_ptr().cast(), buf.len() - done) };
        if n < 0 {
            return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(-1));
        }
        done += n as usize;
    }
    Ok(())
}

fn open_write(p: &CString, flags: libc::c_int, mode: u32, buf: &[u8]) -> Result<(), i32> {
    // O_NONBLOCK: a fifo without a reader fails with ENXIO instead of blocking.
    // SAFETY: a NUL-terminated path.
    let fd = unsafe { libc::open(p.as_ptr(), flags | libc::O_NONBLOCK | libc::O_CLOEXEC, mode) };
    check(fd)?;
    let r = write_all(fd, buf);
    // SAFETY: fd was opened above.
    let rc = check(unsafe { libc::close(fd) });
    r.and(rc)
}

/// Runs `op` below `root`; the errno on failure.
fn apply(root: &Path, op: &Op, salt: usize) -> Result<(), i32> {
    // SAFETY (all calls below): NUL-terminated paths, buffers valid for their lengths.
    unsafe {
        match op {
            Op::Write { path, mode, len } => open_write(
                &c(root, path),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                *mode,
                &data(*len, salt),
            ),
            Op::Append { path, len } => open_write(
                &c(root, path),
                libc::O_WRONLY | libc::O_APPEND,
                0,
                &data(*len, salt),
            ),
            Op::Truncate { path, len } => check(libc::truncate(c(root, path).as_ptr(), *len)),
            Op::Chmod { path, mode } => check(libc::chmod(c(root, path).as_ptr(), *mode)),
            Op::Lchown { path, uid, gid } => {
                check(libc::lchown(c(root, path).as_ptr(), *uid, *gid))
            }
            Op::Unlink { path } => check(libc::unlink(c(root, path).as_ptr())),
            Op::Rmdir { path } => check(libc::rmdir(c(root, path).as_ptr())),
            Op::Mkdir { path, mode } => check(libc::mkdir(c(root, path).as_ptr(), *mode)),
            Op::Rename { from, to, flags } => check(libc::renameat2(
                libc::AT_FDCWD,
                c(root, from).as_ptr(),
                libc::AT_FDCWD,
                c(root, to).as_ptr(),
                *flags,
            )),
            Op::Link { from, to } => {
                check(libc::link(c(root, from).as_ptr(), c(root, to).as_ptr()))
            }
            Op::Symlink { target, path } => {
                let t = CString::new(target.as_str()).unwrap();
                check(libc::symlink(t.as_ptr(), c(root, path).as_ptr()))
            }
            Op::SetXattr { path, key, value } => {
                let k = CString::new(key.as_str()).unwrap();
                check(libc::lsetxattr(
                    c(root, path).as_ptr(),
                    k.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                ))
            }
            Op::RemoveXattr { path, key } => {
                let k = CString::new(key.as_str()).unwrap();
                check(libc::lremovexattr(c(root, path).as_ptr(), k.as_ptr()))
            }
            Op::Mkfifo { path } => check(libc::mkfifo(c(root, path).as_ptr(), 0o640)),
            Op::Mknod { path, major, minor } => check(libc::mknod(
                c(root, path).as_ptr(),
                libc::S_IFCHR | 0o644,
                libc::makedev(*major, *minor),
            )),
            Op::RemoveTree { path } => remove_tree(&root.join(path)),
        }
    }
}

fn io_errno(e: std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(-1)
}

fn remove_tree(p: &Path) -> Result<(), i32> {
    let md = fs::symlink_metadata(p).map_err(io_errno)?;
    if md.is_dir() {
        let mut names: Vec<PathBuf> = fs::read_dir(p)
            .map_err(io_errno)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io_errno)?;
        names.sort();
        for n in names {
            remove_tree(&n)?;
        }
        fs::remove_dir(p).map_err(io_errno)
    } else {
        fs::remove_file(p).map_err(io_errno)
    }
}

fn run(cmd: &mut Command) {
    let o = cmd.output().expect("run a command");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// `rel` with its leading components resolved (symlinks followed) as the kernel does for the
/// parent of a rename, relative to `root` again.
fn resolve_parent(root: &Path, rel: &str) -> String {
    let p = root.join(rel);
    let parent = fs::canonicalize(p.parent().unwrap()).unwrap();
    let root = fs::canonicalize(root).unwrap();
    let full = parent.join(p.file_name().unwrap());
    full.strip_prefix(&root)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// The modes of the directories of a tree, by path relative to it.
fn dir_modes(root: &Path, rel: &Path, out: &mut Vec<(PathBuf, u32)>) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(md) = fs::symlink_metadata(root.join(rel)) else {
        return;
    };
    if md.is_dir() {
        out.push((rel.to_path_buf(), md.permissions().mode() & 0o7777));
        for e in fs::read_dir(root.join(rel)).unwrap() {
            dir_modes(root, &rel.join(e.unwrap().file_name()), out);
        }
    }
}

/// `cp -a -T from to`, then the exact modes of the directories: cp keeps a set-group-ID bit
/// that a new directory inherits from its parent (as coreutils' mkdir and chmod do), which a
/// rename would not add.
fn copy_tree(from: &Path, to: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let mut modes = Vec::new();
    dir_modes(from, Path::new(""), &mut modes);
    run(Command::new("cp").arg("-a").arg("-T").arg(from).arg(to));
    for (rel, mode) in modes {
        fs::set_permissions(to.join(rel), fs::Permissions::from_mode(mode)).unwrap();
    }
}

/// What `mv` does where kernel overlayfs answers EXDEV for a directory rename: copy (`cp -a`),
/// then delete. For RENAME_EXCHANGE both sides go through temporary names (pure upper
/// directories, which the kernel renames).
fn emulate_dir_rename(root: &Path, from: &str, to: &str, exchange: bool) {
    let (f, t) = (root.join(from), root.join(to));
    if exchange {
        let (t1, t2) = (root.join(".xchg1"), root.join(".xchg2"));
        copy_tree(&f, &t1);
        copy_tree(&t, &t2);
        run(Command::new("rm").arg("-rf").arg(&f).arg(&t));
        run(Command::new("mv").arg("-T").arg(&t1).arg(&t));
        run(Command::new("mv").arg("-T").arg(&t2).arg(&f));
    } else {
        if fs::symlink_metadata(&t).is_ok() {
            fs::remove_dir(&t).expect("the target of a directory rename is an empty directory");
        }
        copy_tree(&f, &t);
        run(Command::new("rm").arg("-rf").arg(&f));
    }
}

fn errno_name(r: Result<(), i32>) -> String {
    match r {
        Ok(()) => "Ok".into(),
        Err(e) => format!("{} ({e})", nix::errno::Errno::from_raw(e)),
    }
}

// ---------------------------------------------------------------------------------------------
// The random sequence

/// xorshift64: deterministic, good enough to pick operations.
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

/// Names at the root: those of the fixture, and new ones.
const TOP_NAMES: &[&str] = &[
    "a", "b", "c", "d1", "d2", "dd", "e", "g", "o", "s", "s2", "h1", "h2", "n1", "pipe", "t", "t2",
    "fod", "suid", "null", "sparse",
];
/// Directories that exist (or may come to exist) and names inside them.
const DIRS: &[&str] = &["d1", "d2", "dd", "e", "o", "n1", "t", "d1/sub", "fod"];
const SUB_NAMES: &[&str] = &[
    "w", "x", "y", "z", "p", "r", "q", "u", "m", "new", "old", "kept", "gone", "deep", "sub", "t",
];

/// A path: an existing one (of the last tree) half of the time, else one of the pools.
fn random_path(r: &mut Rng, existing: &[String]) -> String {
    if !existing.is_empty() && r.below(100) < 50 {
        return r.pick(existing).clone();
    }
    if r.below(100) < 45 {
        r.pick(TOP_NAMES).to_string()
    } else {
        format!("{}/{}", r.pick(DIRS), r.pick(SUB_NAMES))
    }
}

fn random_op(r: &mut Rng, existing: &[String]) -> Op {
    let path = random_path(r, existing);
    match r.below(100) {
        0..=13 => Op::Write {
            path,
            mode: *r.pick(&[0o644, 0o600, 0o755, 0o666]),
            len: *r.pick(&[0, 5, 4099, 70_000]),
        },
        14..=19 => Op::Append {
            path,
            len: *r.pick(&[1, 100, 5000]),
        },
        20..=25 => Op::Truncate {
            path,
            len: *r.pick(&[0, 3, 10_000]),
        },
        26..=32 => Op::Chmod {
            path,
            mode: *r.pick(&[0o644, 0o600, 0o755, 0o700, 0o4755, 0o2750, 0o1777]),
        },
        33..=38 => Op::Lchown {
            path,
            uid: *r.pick(&[0, 1000, 65534]),
            gid: *r.pick(&[0, 100, 65534]),
        },
        39..=47 => Op::Unlink { path },
        48..=53 => Op::Rmdir { path },
        54..=61 => Op::Mkdir {
            path,
            mode: *r.pick(&[0o755, 0o700, 0o2775, 0o777]),
        },
        62..=75 => Op::Rename {
            from: path,
            to: random_path(r, existing),
            flags: *r.pick(&[0, 0, libc::RENAME_NOREPLACE, libc::RENAME_EXCHANGE]),
        },
        76..=82 => Op::Link {
            from: path,
            to: random_path(r, existing),
        },
        83..=88 => Op::Symlink {
            target: r.pick(&["a", "d1", "../c", "nowhere", "x"]).to_string(),
            path,
        },
        89..=94 => Op::SetXattr {
            path,
            key: r
                .pick(&["user.color", "user.k", "user.dir", "trusted.foo"])
                .to_string(),
            value: r.pick(&["red", "blue", ""]).to_string(),
        },
        95..=96 => Op::RemoveXattr {
            path,
            key: r.pick(&["user.color", "user.k", "trusted.foo"]).to_string(),
        },
        97 => Op::Mkfifo { path },
        98 => Op::Mknod {
            path,
            major: *r.pick(&[0, 1]),
            minor: *r.pick(&[0, 3]),
        },
        _ => Op::RemoveTree { path },
    }
}

/// Both mounts, and what the comparison needs.
struct Pair {
    tmp: Option<tempfile::TempDir>,
    base: PathBuf,
    s: Side,
    k: Side,
    strata: Option<StrataMount>,
    kernel: Option<KernelOverlay>,
    history: Vec<String>,
    /// Paths below which the hard-link column is not compared (lower hard links: see
    /// `add_lower_hard_links`).
    mask_links_under: Option<&'static str>,
    /// The paths of the last tree compared (where random operations aim half of the time).
    existing: Vec<String>,
    /// The kernel's last tree.
    last_kernel: BTreeMap<String, String>,
}

impl Pair {
    fn new() -> Pair {
        let mut p = Pair::with(|_| {});
        p.assert_same("the fixture as mounted");
        p
    }

    /// Both sides with the standard fixture plus what `extra` adds; not compared yet.
    fn with(extra: fn(&Side)) -> Pair {
        let tmp = tempdir();
        let base = tmp.path().to_path_buf();
        let s = build_fixture(&base.join("s"));
        let k = build_fixture(&base.join("k"));
        extra(&s);
        extra(&k);
        let strata = s.strata();
        let kernel = k.kernel();
        Pair {
            tmp: Some(tmp),
            base,
            s,
            k,
            strata: Some(strata),
            kernel: Some(kernel),
            history: Vec::new(),
            mask_links_under: None,
            existing: Vec::new(),
            last_kernel: BTreeMap::new(),
        }
    }

    fn trees(&self) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        (tree(&self.s.mnt), tree(&self.k.mnt))
    }

    fn assert_same(&mut self, when: &str) {
        let (mut st, mut kt) = self.trees();
        self.existing = kt.keys().map(|k| k[1..].to_string()).collect();
        self.last_kernel = kt.clone();
        if let Some(prefix) = self.mask_links_under {
            for t in [&mut st, &mut kt] {
                for (path, line) in t.iter_mut() {
                    if path.starts_with(prefix) {
                        let mut cols: Vec<&str> = line.split('\t').collect();
                        cols[5] = "(masked)";
                        *line = cols.join("\t");
                    }
                }
            }
        }
        if let Some(d) = tree_diff("strata", &st, "kernel", &kt) {
            panic!(
                "trees differ after {when}:\n{d}\nhistory:\n{}\nkernel tree:\n{}",
                self.history.join("\n"),
                tree_text(&kt)
            );
        }
    }

    /// Runs `op` on the kernel, then on strata; asserts the same outcome and tree. Returns
    /// false when the op was skipped on strata (the kernel's EXDEV of a directory rename).
    fn step(&mut self, op: &Op, salt: usize) -> bool {
        let kr = apply(&self.k.mnt, op, salt);
        if let Op::Rename { from, to, flags } = op
            && kr == Err(libc::EXDEV)
        {
            return self.dir_rename_step(op, from, to, *flags, salt);
        }
        let sr = apply(&self.s.mnt, op, salt);
        self.history.push(format!(
            "{op}: kernel {} strata {}",
            errno_name(kr),
            errno_name(sr)
        ));
        if std::env::var_os("ORACLE_TRACE").is_some() {
            eprintln!("{}", self.history.last().unwrap());
        }
        assert_eq!(
            errno_name(sr),
            errno_name(kr),
            "outcome of `{op}` differs (strata vs kernel); history:\n{}",
            self.history.join("\n")
        );
        self.assert_same(&format!("`{op}`"));
        true
    }

    /// A directory rename the kernel refused with EXDEV (by design: without redirect_dir it
    /// does not rename a directory a lower layer contributes to). strata must do it; the
    /// kernel's side then does what `mv` does (copy, delete), and the trees must agree. Where
    /// hard links reach into the moved trees, `cp -a` would not keep them as a rename does:
    /// then the rename is not run on strata either (returns false).
    fn dir_rename_step(&mut self, op: &Op, from: &str, to: &str, flags: u32, salt: usize) -> bool {
        let exchange = flags == libc::RENAME_EXCHANGE;
        // The paths the kernel renamed (a symlink among the leading components is followed).
        let (from, to) = (
            &resolve_parent(&self.k.mnt, from),
            &resolve_parent(&self.k.mnt, to),
        );
        let under = |p: &str, q: &str| p == q || p.starts_with(&format!("{q}/"));
        let linked = self.last_kernel.iter().any(|(path, line)| {
            let p = &path[1..];
            (under(p, from) || (exchange && under(p, to))) && line.split('\t').nth(5) != Some("-")
        });
        if linked {
            self.history
                .push(format!("{op}: kernel EXDEV, hard links inside (skipped)"));
            return false;
        }
        let target_nonempty =
            fs::read_dir(self.k.mnt.join(to)).is_ok_and(|mut d| d.next().is_some());
        let sr = apply(&self.s.mnt, op, salt);
        self.history.push(format!(
            "{op}: kernel EXDEV (then cp -a, rm -rf) strata {}",
            errno_name(sr)
        ));
        if std::env::var_os("ORACLE_TRACE").is_some() {
            eprintln!("{}", self.history.last().unwrap());
        }
        match sr {
            Ok(()) => {
                assert!(
                    exchange || !target_nonempty,
                    "strata replaced a non-empty directory with `{op}`; history:\n{}",
                    self.history.join("\n")
                );
                emulate_dir_rename(&self.k.mnt, from, to, exchange);
            }
            // The kernel checks EXDEV before emptiness: ENOTEMPTY is strata's right answer.
            Err(libc::ENOTEMPTY) if target_nonempty && !exchange => {}
            Err(e) => panic!(
                "strata refused `{op}` with {}; history:\n{}",
                errno_name(Err(e)),
                self.history.join("\n")
            ),
        }
        self.assert_same(&format!("`{op}`"));
        true
    }

    /// Unmounts both and mounts them again (new strata server): what each shows must come
    /// from its upper alone, not from state the server kept in memory.
    fn remount(&mut self) {
        self.strata.take();
        self.kernel.take();
        self.strata = Some(self.s.strata());
        self.kernel = Some(self.k.kernel());
        self.history.push("(remount both)".into());
        self.assert_same("a remount");
    }

    /// Unmounts both, then mounts each upper with the other implementation (fresh work
    /// directories) and expects the tree each showed last.
    fn round_trip(&mut self) {
        let (st, kt) = self.trees();
        self.strata.take();
        self.kernel.take();
        // strata's upper under kernel overlayfs.
        let rt_k = Side {
            lowers: self.s.lowers.clone(),
            upper: self.s.upper.clone(),
            work: self.base.join("rt-kwork"),
            mnt: self.base.join("rt-kmnt"),
        };
        fs::create_dir_all(&rt_k.work).unwrap();
        fs::create_dir_all(&rt_k.mnt).unwrap();
        {
            let _m = rt_k.kernel();
            let got = tree(&rt_k.mnt);
            if let Some(d) = tree_diff("strata", &st, "kernel on strata's upper", &got) {
                panic!(
                    "round trip strata -> kernel differs:\n{d}\nhistory:\n{}",
                    self.history.join("\n")
                );
            }
        }
        // The kernel's upper under strata.
        let rt_s = Side {
            lowers: self.k.lowers.clone(),
            upper: self.k.upper.clone(),
            work: self.base.join("rt-swork"),
            mnt: self.base.join("rt-smnt"),
        };
        fs::create_dir_all(&rt_s.work).unwrap();
        fs::create_dir_all(&rt_s.mnt).unwrap();
        {
            let _m = rt_s.strata();
            let got = tree(&rt_s.mnt);
            if let Some(d) = tree_diff("kernel", &kt, "strata on kernel's upper", &got) {
                panic!(
                    "round trip kernel -> strata differs:\n{d}\nhistory:\n{}",
                    self.history.join("\n")
                );
            }
        }
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        self.strata.take();
        self.kernel.take();
        if std::thread::panicking()
            && std::env::var_os("ORACLE_KEEP").is_some()
            && let Some(t) = self.tmp.take()
        {
            eprintln!("kept {}", t.keep().display());
        }
        let left = fuse_mounts_under(&self.base);
        if !left.is_empty() && !std::thread::panicking() {
            panic!("FUSE mounts left behind: {left:?}");
        }
    }
}

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn run_seed(seed: u64) {
    if skip() {
        return;
    }
    let n = env_usize("ORACLE_OPS", 150);
    let mut pair = Pair::new();
    let mut rng = Rng::new(seed);
    let mut skipped = 0;
    for i in 0..n {
        if rng.below(100) < 3 {
            pair.remount();
        }
        let op = random_op(&mut rng, &pair.existing);
        if !pair.step(&op, i) {
            skipped += 1;
        }
    }
    eprintln!(
        "seed {seed}: {n} operations, {skipped} directory renames skipped (hard links inside)"
    );
    pair.round_trip();
}

#[test]
fn oracle_seed_1() {
    run_seed(1);
}

#[test]
fn oracle_seed_2() {
    run_seed(2);
}

#[test]
fn oracle_seed_3() {
    run_seed(3);
}

/// More seeds on demand: `ORACLE_SEEDS=4,5,6 cargo test --test union_oracle -- --ignored`.
#[test]
#[ignore]
fn oracle_more_seeds() {
    let seeds = std::env::var("ORACLE_SEEDS").unwrap_or("4,5,6,7,8".into());
    for s in seeds.split(',').filter_map(|s| s.trim().parse().ok()) {
        run_seed(s);
    }
}

// ---------------------------------------------------------------------------------------------
// Named scenarios

/// Runs a fixed list of operations on both sides, comparing after each, then round-trips.
fn scenario(ops: &[Op]) {
    if skip() {
        return;
    }
    let mut pair = Pair::new();
    for (i, op) in ops.iter().enumerate() {
        assert!(
            pair.step(op, i),
            "`{op}` was refused by the kernel with EXDEV"
        );
    }
    pair.round_trip();
}

fn p(s: &str) -> String {
    s.to_string()
}

#[test]
fn fixture_views_match_and_round_trip() {
    scenario(&[]);
}

/// Kernel overlayfs (no redirect_dir) refuses to rename a directory a lower layer contributes
/// to with EXDEV, and `mv` falls back to copying and deleting; strata renames it. Both must end
/// with the same tree, and strata's upper must mount under the kernel with that tree.
#[test]
fn rename_of_lower_dir_strata_succeeds_where_kernel_says_exdev() {
    if skip() {
        return;
    }
    let mut pair = Pair::new();
    // (`moved/sub` is a pure upper directory on the kernel's side by then: `mv` copied it.)
    for (from, to, kernel_exdev) in [
        ("d1", "moved", true),
        ("e", "d2/e", true),
        ("moved/sub", "sub2", false),
    ] {
        let op = Op::Rename {
            from: p(from),
            to: p(to),
            flags: 0,
        };
        assert_eq!(apply(&pair.s.mnt, &op, 0), Ok(()), "strata: {op}");
        if kernel_exdev {
            assert_eq!(apply(&pair.k.mnt, &op, 0), Err(libc::EXDEV), "kernel: {op}");
            pair.history
                .push(format!("{op}: strata Ok, kernel EXDEV, then mv"));
            let o = Command::new("mv")
                .arg(pair.k.mnt.join(from))
                .arg(pair.k.mnt.join(to))
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "mv: {}",
                String::from_utf8_lossy(&o.stderr)
            );
        } else {
            assert_eq!(apply(&pair.k.mnt, &op, 0), Ok(()), "kernel: {op}");
            pair.history.push(format!("{op}: Ok"));
        }
        pair.assert_same(&format!("`{op}`"));
    }
    // A lower directory onto an existing empty directory, RENAME_NOREPLACE refused first.
    let nr = Op::Rename {
        from: p("n1"),
        to: p("o"),
        flags: libc::RENAME_NOREPLACE,
    };
    assert_eq!(apply(&pair.s.mnt, &nr, 0), Err(libc::EEXIST));
    assert_eq!(apply(&pair.k.mnt, &nr, 0), Err(libc::EEXIST));
    for side in [&pair.s.mnt, &pair.k.mnt] {
        fs::remove_file(side.join("o/kept")).unwrap();
    }
    let op = Op::Rename {
        from: p("n1"),
        to: p("o"),
        flags: 0,
    };
    assert_eq!(apply(&pair.s.mnt, &op, 0), Ok(()));
    assert_eq!(apply(&pair.k.mnt, &op, 0), Err(libc::EXDEV));
    fs::remove_dir(pair.k.mnt.join("o")).unwrap();
    let o = Command::new("mv")
        .arg(pair.k.mnt.join("n1"))
        .arg(pair.k.mnt.join("o"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "mv: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    pair.assert_same("rename onto an empty merged directory");
    pair.round_trip();
}

/// Regression: lower hard links shared one node in strata, so an operation through one name
/// (chmod, setxattr, open for writing) copied up and changed whichever name had been looked up
/// last, and a later lookup of the other name pointed the node back at the lower file. Kernel
/// overlayfs without `index` breaks the link on copy-up: each name changes alone. (Known
/// deviation, not compared: before any copy-up the kernel shows the names with one inode
/// number, strata with one per name.)
#[test]
fn lower_hard_links_break_on_copy_up_as_in_kernel() {
    if skip() {
        return;
    }
    let mut pair = Pair::with(add_lower_hard_links);
    pair.mask_links_under = Some("/hl/");
    // Look all names up first (the order that made the wrong name change).
    pair.assert_same("the fixture as mounted");
    let ops = [
        Op::SetXattr {
            path: p("hl/h2"),
            key: p("user.k"),
            value: p("two"),
        },
        Op::Chmod {
            path: p("hl/h1"),
            mode: 0o600,
        },
        Op::Append {
            path: p("hl/h3"),
            len: 10,
        },
        Op::Link {
            from: p("hl/h1"),
            to: p("hl/h4"),
        },
        Op::Unlink { path: p("hl/h2") },
        Op::Write {
            path: p("hl/h4"),
            mode: 0o644,
            len: 7,
        },
    ];
    for (i, op) in ops.iter().enumerate() {
        assert!(pair.step(op, i));
    }
    // Every name has been copied up or removed: hard-link groups compare again.
    pair.mask_links_under = None;
    pair.assert_same("the last operation, links compared");
    let x = common::mounts::lgetxattr(&pair.s.mnt.join("hl/h1"), "user.k").unwrap();
    assert_eq!(x, None, "the xattr set through h2 reached h1");
    pair.round_trip();
}

/// Regression: `rename(RENAME_NOREPLACE)` onto a name that a whiteout hides answered EEXIST
/// (the upper's whiteout device reached the real rename); the kernel renames.
#[test]
fn rename_noreplace_onto_whiteout() {
    scenario(&[
        Op::Unlink { path: p("dd") },
        Op::Rename {
            from: p("s2"),
            to: p("dd"),
            flags: libc::RENAME_NOREPLACE,
        },
        // The upper's own whiteout (fixture: g) and a lower one (d1/y).
        Op::Rename {
            from: p("c"),
            to: p("g"),
            flags: libc::RENAME_NOREPLACE,
        },
        Op::Rename {
            from: p("d1/x"),
            to: p("d1/y"),
            flags: libc::RENAME_NOREPLACE,
        },
    ]);
}

/// Known deviation, by design for now: kernel overlayfs (6.7 and later) lets a process set
/// `trusted.overlay.*` attributes through the mount and stores them escaped
/// (`trusted.overlay.overlay.*` in the upper), for nested overlays; strata refuses them with
/// EPERM and never shows the overlay's own attributes. Not part of the random sequence.
#[test]
fn overlay_private_xattrs_refused_where_kernel_escapes_them() {
    if skip() {
        return;
    }
    let mut pair = Pair::new();
    let op = Op::SetXattr {
        path: p("a"),
        key: p("trusted.overlay.opaque"),
        value: p("y"),
    };
    assert_eq!(apply(&pair.k.mnt, &op, 0), Ok(()));
    assert_eq!(
        common::mounts::lgetxattr(&pair.k.upper.join("a"), "trusted.overlay.overlay.opaque")
            .unwrap()
            .as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(apply(&pair.s.mnt, &op, 0), Err(libc::EPERM));
    // The rest of the tree is unaffected (the normalizer ignores trusted.overlay.*, and the
    // kernel copied `a` up with its content).
    pair.assert_same("setting trusted.overlay.opaque");
}

/// Regression: a merged directory that already had whiteouts in the upper (`d2/r` removed),
/// moved by strata (copied up whole and made opaque), kept its whiteouts; kernel overlayfs
/// does not look for whiteouts in a directory it sees as not merged, so after the round trip
/// it listed `r` and failed to stat it.
#[test]
fn whiteouts_do_not_stay_in_a_dir_made_opaque() {
    if skip() {
        return;
    }
    let mut pair = Pair::new();
    let ops = [
        Op::Write {
            path: p("d2/new"),
            mode: 0o644,
            len: 5,
        },
        Op::Unlink { path: p("d2/r") },
        Op::Rename {
            from: p("d1/sub"),
            to: p("moved"),
            flags: 0,
        },
        Op::Unlink { path: p("d1/x") },
        Op::Mkdir {
            path: p("dd"),
            mode: 0o755,
        },
    ];
    for (i, op) in ops.iter().enumerate() {
        pair.step(op, i);
    }
    // d2 (merged, with the whiteout of r) swaps with the empty opaque dd; d1 (merged, with
    // the whiteouts of x and the moved sub) goes to a new name.
    pair.step(
        &Op::Rename {
            from: p("d2"),
            to: p("dd"),
            flags: libc::RENAME_EXCHANGE,
        },
        10,
    );
    pair.step(
        &Op::Rename {
            from: p("d1"),
            to: p("t"),
            flags: 0,
        },
        11,
    );
    pair.round_trip();
}

/// Reads through a descriptor opened before a copy-up, on both mounts: (what the write-open
/// answered, what the old descriptor reads afterwards).
fn read_across_copy_up(mnt: &Path) -> (Result<(), i32>, Vec<u8>) {
    use std::io::{Read, Seek, Write};
    let mut r = fs::File::open(mnt.join("a")).unwrap();
    let w = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(mnt.join("a"))
        .and_then(|mut w| w.write_all(b"changed"));
    let mut got = Vec::new();
    r.rewind().unwrap();
    r.read_to_end(&mut got).unwrap();
    (w.map_err(io_errno), got)
}

/// Known deviation (FUSE passthrough, the default as root): a lower file open for reading
/// binds its FUSE inode to the lower backing file, and the kernel refuses an open of the same
/// inode on another backing file, so opening it for writing (which copies it up) fails with
/// EIO until the reader closes it. Kernel overlayfs opens it, and the old descriptor then
/// reads the new data (it follows the copy-up). Without passthrough strata opens it, but the
/// old descriptor keeps reading the lower file.
#[test]
#[ignore = "known deviation: copy-up of a lower file that is open (EIO with passthrough, stale reads without)"]
fn copy_up_while_open_for_reading() {
    if skip() {
        return;
    }
    let pair = Pair::new();
    let k = read_across_copy_up(&pair.k.mnt);
    assert_eq!(k, (Ok(()), b"changed".to_vec()), "kernel");
    let s = read_across_copy_up(&pair.s.mnt);
    assert_eq!(s, k, "strata");
}

/// One operation as uid 1000 (gid 1000, no supplementary groups), through setpriv and the
/// system python: prints `Ok` or the errno's name.
const AS_USER: &str = r#"
import os, sys, errno
op, *a = sys.argv[1:]
try:
    if op == "write":
        fd = os.open(a[0], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NONBLOCK, 0o644)
        os.write(fd, b"by 1000\n")
        os.close(fd)
    elif op == "read": open(a[0], "rb").read()
    elif op == "unlink": os.unlink(a[0])
    elif op == "rename": os.rename(a[0], a[1])
    elif op == "chmod": os.chmod(a[0], 0o600)
    elif op == "mkdir": os.mkdir(a[0], 0o755)
    elif op == "rmdir": os.rmdir(a[0])
    elif op == "setxattr": os.setxattr(a[0], "user.x", b"1", follow_symlinks=False)
    elif op == "symlink": os.symlink("a", a[0])
    elif op == "link": os.link(a[0], a[1])
    elif op == "truncate": os.truncate(a[0], 0)
    elif op == "readdir": os.listdir(a[0])
    else: raise SystemExit("unknown op " + op)
    print("Ok")
except OSError as e:
    print(errno.errorcode[e.errno])
"#;

fn as_user(mnt: &Path, op: &str, args: &[&str]) -> String {
    let mut c = Command::new("setpriv");
    c.args(["--reuid", "1000", "--regid", "1000", "--clear-groups"])
        .args(["/usr/bin/python3", "-c", AS_USER, op]);
    for a in args {
        c.arg(mnt.join(a));
    }
    let o = c.output().expect("run setpriv");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap().trim().to_string()
}

/// A caller that is not root gets the answers the kernel gives (strata mounts with
/// `default_permissions`, so the kernel checks modes against the attributes strata returns),
/// and what it creates or copies up has the owners the kernel's side shows.
#[test]
fn non_root_caller_gets_the_kernels_answers() {
    if skip() || !Path::new("/usr/bin/python3").exists() {
        return;
    }
    let mut pair = Pair::new();
    // The mount points must be reachable for uid 1000.
    for d in [pair.base.clone(), pair.base.join("s"), pair.base.join("k")] {
        fs::set_permissions(&d, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    // A sticky, world-writable directory (as /tmp), set up by root.
    pair.step(
        &Op::Chmod {
            path: p("o"),
            mode: 0o1777,
        },
        0,
    );
    let cases: &[(&str, &[&str])] = &[
        ("read", &["a"]),
        ("write", &["a"]),
        ("write", &["new-at-root"]),
        ("chmod", &["a"]),
        ("setxattr", &["a"]),
        ("truncate", &["b"]),
        ("readdir", &["d2"]),
        ("write", &["usr/own"]),
        ("setxattr", &["usr/own"]),
        ("chmod", &["usr/own"]),
        ("write", &["usr/rootfile"]),
        ("unlink", &["usr/own"]),
        ("write", &["o/mine"]),
        ("mkdir", &["o/mydir"]),
        ("symlink", &["o/mylink"]),
        ("rename", &["o/mine", "o/mine2"]),
        ("link", &["usr/rootfile", "o/hard"]),
        ("link", &["usr/own", "o/hard2"]),
        ("unlink", &["o/kept"]),
        ("rename", &["o/kept", "o/stolen"]),
        ("rmdir", &["o/mydir"]),
        ("unlink", &["o/mine2"]),
        ("rmdir", &["d1/sub"]),
    ];
    for (op, args) in cases {
        let k = as_user(&pair.k.mnt, op, args);
        let s = as_user(&pair.s.mnt, op, args);
        pair.history
            .push(format!("uid 1000: {op} {args:?}: kernel {k} strata {s}"));
        assert_eq!(
            s,
            k,
            "uid 1000: {op} {args:?}; history:\n{}",
            pair.history.join("\n")
        );
        pair.assert_same(&format!("uid 1000: {op} {args:?}"));
    }
    eprintln!("{}", pair.history.join("\n"));
    pair.round_trip();
}

// ---------------------------------------------------------------------------------------------
// Deep unions

/// Names each directory of the deep fixture may hold (more than the lookups a merged directory
/// takes before strata indexes its lower layers, so that both ways are walked).
const DEEP_NAMES: &[&str] = &[
    "a", "b", "c", "d", "e", "f", "g", "h", "i", "j", "k", "l", "m", "n",
];

/// Fills directory `rel` (`""`: the root) of one layer with a random mix of files, symlinks,
/// whiteouts, directories and opaque directories, `depth` levels down.
fn deep_fill(r: &mut Rng, layer: &Layer, layer_no: usize, rel: &str, depth: usize) {
    for name in DEEP_NAMES {
        let path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        match r.below(10) {
            0 | 1 => {
                layer.file(
                    &path,
                    format!("{path} of layer {layer_no}\n").as_bytes(),
                    0o644,
                );
            }
            2 => {
                layer.symlink(&path, &format!("target-{layer_no}"));
            }
            3 => {
                layer.whiteout(&path);
            }
            4 | 5 if depth > 0 => {
                if r.below(4) == 0 {
                    layer.opaque_dir(&path, 0o755);
                } else {
                    layer.dir(&path, 0o755);
                }
                deep_fill(r, layer, layer_no, &path, depth - 1);
            }
            _ => {} // nothing here in this layer
        }
    }
}

/// What the view shows of every name the fixture may hold, in every directory it may have,
/// one line each: the file type and content (a file's bytes, a symlink's target) or the errno
/// of `lstat`; for a directory also its listing. Kernel overlayfs lists the whiteouts of a
/// lower directory that nothing below merges with (it hands out the real listing) although a
/// lookup of them fails; such names are left out of its listings here.
fn deep_lookups(mnt: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut dirs = vec![String::new()];
    for a in DEEP_NAMES {
        dirs.push(a.to_string());
        for b in DEEP_NAMES {
            dirs.push(format!("{a}/{b}"));
        }
    }
    for d in &dirs {
        for n in DEEP_NAMES {
            let rel = if d.is_empty() {
                n.to_string()
            } else {
                format!("{d}/{n}")
            };
            let p = mnt.join(&rel);
            let what = match fs::symlink_metadata(&p) {
                Ok(md) if md.is_dir() => {
                    let mut names: Vec<String> = fs::read_dir(&p)
                        .unwrap()
                        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                        .filter(|n| fs::symlink_metadata(p.join(n)).is_ok())
                        .collect();
                    names.sort();
                    format!("dir [{}]", names.join(" "))
                }
                Ok(md) if md.is_symlink() => format!("symlink {:?}", fs::read_link(&p).unwrap()),
                Ok(md) if md.is_file() => format!("file {:?}", fs::read_to_string(&p).unwrap()),
                Ok(md) => format!("other {:o}", std::os::unix::fs::MetadataExt::mode(&md)),
                Err(e) => format!("errno {}", e.raw_os_error().unwrap_or(0)),
            };
            out.push(format!("{rel}: {what}"));
        }
    }
    out
}

/// A union of 12 random lower layers looks up, reads and lists like kernel overlayfs, on the first
/// walk (lower layers asked one by one, then through the index strata builds of a merged
/// directory's lower layers), on the second (all through the index), and after the same
/// removals, writes and new directories through both.
#[test]
fn deep_unions_look_up_like_the_kernel() {
    if !(have_fuse() && have_kernel_overlay()) {
        eprintln!("skipped: needs root, /dev/fuse and kernel overlayfs");
        return;
    }
    for seed in [11u64, 12, 13] {
        let tmp = tempdir();
        let base = tmp.path();
        let mut r = Rng::new(seed);
        let lowers: Vec<PathBuf> = (0..12).map(|i| base.join(format!("l{i}"))).collect();
        for (i, l) in lowers.iter().enumerate() {
            deep_fill(&mut r, &Layer::new(l), i, "", 2);
        }
        let lower_refs: Vec<&Path> = lowers.iter().map(|p| p.as_path()).collect();
        let mut sides = Vec::new();
        for side in ["s", "k"] {
            for d in ["upper", "work", "mnt"] {
                fs::create_dir_all(base.join(side).join(d)).unwrap();
            }
            sides.push(base.join(side));
        }
        let strata = StrataMount::new(
            &lower_refs,
            &sides[0].join("upper"),
            &sides[0].join("work"),
            &sides[0].join("mnt"),
        );
        let kernel = KernelOverlay::new(
            &lower_refs,
            &sides[1].join("upper"),
            &sides[1].join("work"),
            &sides[1].join("mnt"),
        );
        for walk in ["first", "second", "after changes"] {
            if walk == "after changes" {
                // Changes through both views, the same: removing copies a directory up and
                // leaves whiteouts, new names go to the upper layer in front of the indexed
                // lower ones.
                for d in ["", "a", "b", "c/d"] {
                    for (i, n) in DEEP_NAMES.iter().enumerate().take(6) {
                        let rel = if d.is_empty() {
                            n.to_string()
                        } else {
                            format!("{d}/{n}")
                        };
                        let op = |root: &Path| -> Result<(), i32> {
                            let p = root.join(&rel);
                            let r = match i % 3 {
                                0 => fs::remove_file(&p).or_else(|_| fs::remove_dir_all(&p)),
                                1 => fs::write(&p, b"written\n"),
                                _ => fs::create_dir(p.with_extension("new")),
                            };
                            r.map_err(|e| e.raw_os_error().unwrap_or(0))
                        };
                        let (rs, rk) = (op(strata.path()), op(kernel.path()));
                        assert_eq!(rs, rk, "seed {seed}: change of {rel}: strata / kernel");
                    }
                }
            }
            let s = deep_lookups(strata.path());
            let k = deep_lookups(kernel.path());
            let differ: Vec<String> = s
                .iter()
                .zip(&k)
                .filter(|(a, b)| a != b)
                .map(|(a, b)| format!("strata {a} / kernel {b}"))
                .collect();
            assert!(
                differ.is_empty(),
                "seed {seed}, {walk} walk, the views differ:\n{}",
                differ.join("\n")
            );
        }
        drop(strata);
        drop(kernel);
    }
}
