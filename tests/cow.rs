//! The union rules of `strata::cow::Union`, one test per rule, driven directly on temporary
//! directories (no mount): layers are written in kernel overlayfs format by
//! `common::mounts::Layer`, and after each change the test reads both the merged view (through
//! `Union`) and the upper directory itself (which must be in kernel overlayfs format).
//!
//! Needs root (device whiteouts, `trusted.*` xattrs, owners); skipped otherwise.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::mounts::{Layer, lgetxattr};
use nix::errno::Errno;
use strata::cow::{Attr, Caller, ROOT_INO, SetAttr, Union, UnionSpec};

const ROOT: Caller = Caller { uid: 0, gid: 0 };

/// Lower layers (top first), an upper and a work directory in one temporary directory.
struct Fx {
    _tmp: tempfile::TempDir,
    lowers: Vec<PathBuf>,
    upper: PathBuf,
    work: PathBuf,
}

fn fx(n_lowers: usize) -> Option<Fx> {
    if !common::is_root() {
        eprintln!("skipped: needs root (device whiteouts, trusted xattrs)");
        return None;
    }
    let tmp = tempfile::Builder::new()
        .prefix("strata-cow-")
        .tempdir()
        .unwrap();
    let lowers: Vec<PathBuf> = (0..n_lowers)
        .map(|i| tmp.path().join(format!("lower{i}")))
        .collect();
    for l in &lowers {
        fs::create_dir(l).unwrap();
    }
    let upper = tmp.path().join("upper");
    let work = tmp.path().join("work");
    fs::create_dir(&upper).unwrap();
    fs::create_dir(&work).unwrap();
    Some(Fx {
        _tmp: tmp,
        lowers,
        upper,
        work,
    })
}

impl Fx {
    /// Lower layer `i` (0 is the top one).
    fn lower(&self, i: usize) -> Layer {
        Layer::new(&self.lowers[i])
    }
    fn up(&self) -> Layer {
        Layer::new(&self.upper)
    }
    fn union(&self) -> Union {
        Union::new(&UnionSpec {
            lowers: self.lowers.clone(),
            upper: Some(self.upper.clone()),
            work: Some(self.work.clone()),
            volatile: false,
            metacopy: false,
        })
        .expect("open union")
    }
    fn upper_path(&self, rel: &str) -> PathBuf {
        self.upper.join(rel)
    }
}

/// Resolves a `/`-separated path of the view, from the root.
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

/// (parent inode, last name) of a path of the view.
fn split(u: &Union, path: &str) -> (u64, Vec<u8>) {
    let (dir, name) = match path.rsplit_once('/') {
        Some((d, n)) => (d, n),
        None => ("", path),
    };
    (ino(u, dir), name.as_bytes().to_vec())
}

/// The sorted names of a directory of the view.
fn names(u: &Union, path: &str) -> Vec<String> {
    let mut v: Vec<String> = u
        .readdir(ino(u, path))
        .unwrap_or_else(|e| panic!("readdir {path}: {e}"))
        .into_iter()
        .map(|e| String::from_utf8(e.name).unwrap())
        .collect();
    v.sort();
    v
}

fn read(u: &Union, path: &str) -> Vec<u8> {
    let fd = u.open(ino(u, path), libc::O_RDONLY).expect("open");
    let mut v = Vec::new();
    fs::File::from(fd).read_to_end(&mut v).unwrap();
    v
}

fn write(u: &Union, path: &str, data: &[u8]) {
    let fd = u
        .open(ino(u, path), libc::O_WRONLY | libc::O_TRUNC)
        .expect("open for writing");
    let mut f = fs::File::from(fd);
    f.set_len(0).unwrap();
    f.write_all(data).unwrap();
}

fn is_kernel_whiteout(p: &Path) -> bool {
    fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_char_device() && m.rdev() == 0)
}

fn is_opaque(p: &Path) -> bool {
    lgetxattr(p, "trusted.overlay.opaque")
        .ok()
        .flatten()
        .is_some_and(|v| v == b"y")
}

// ---------------------------------------------------------------------------------------------
// Lookup through the layers

#[test]
fn top_layer_wins() {
    let Some(f) = fx(2) else { return };
    f.lower(1)
        .file("a", b"bottom", 0o644)
        .file("b", b"bottom", 0o644);
    f.lower(0).file("a", b"top", 0o600).file("b", b"top", 0o644);
    f.up().file("b", b"upper", 0o640);
    let u = f.union();
    assert_eq!(read(&u, "a"), b"top");
    assert_eq!(resolve(&u, "a").unwrap().st.st_mode & 0o7777, 0o600);
    assert_eq!(read(&u, "b"), b"upper");
    assert_eq!(resolve(&u, "b").unwrap().st.st_mode & 0o7777, 0o640);
}

#[test]
fn kernel_whiteout_hides() {
    let Some(f) = fx(2) else { return };
    f.lower(1).file("a", b"a", 0o644).file("d/x", b"x", 0o644);
    f.lower(0).whiteout("a").whiteout("d");
    let u = f.union();
    assert_eq!(resolve(&u, "a").unwrap_err(), Errno::ENOENT);
    assert_eq!(resolve(&u, "d").unwrap_err(), Errno::ENOENT);
    assert!(names(&u, "").is_empty(), "{:?}", names(&u, ""));
}

#[test]
fn upper_whiteout_hides() {
    let Some(f) = fx(1) else { return };
    f.lower(0).file("a", b"a", 0o644).file("b", b"b", 0o644);
    f.up().whiteout("a");
    let u = f.union();
    assert_eq!(resolve(&u, "a").unwrap_err(), Errno::ENOENT);
    assert_eq!(names(&u, ""), ["b"]);
}

#[test]
fn oci_whiteout_hides() {
    let Some(f) = fx(2) else { return };
    f.lower(1)
        .file("a", b"a", 0o644)
        .file("d/x", b"x", 0o644)
        .file("keep", b"k", 0o644);
    f.lower(0).oci_whiteout("a").oci_whiteout("d/x");
    let u = f.union();
    assert_eq!(resolve(&u, "a").unwrap_err(), Errno::ENOENT);
    assert_eq!(resolve(&u, "d/x").unwrap_err(), Errno::ENOENT);
    // The whiteout files themselves never show.
    assert_eq!(resolve(&u, ".wh.a").unwrap_err(), Errno::ENOENT);
    assert_eq!(names(&u, ""), ["d", "keep"]);
    assert!(names(&u, "d").is_empty());
}

/// In a directory merged from many lower layers, lookups that strata answers through its index
/// of the layers' listings (after the first few) give what asking each layer gives: OCI and
/// kernel whiteouts hide, an OCI-marked opaque directory stops, a dir below a file is ignored.
#[test]
fn deep_lookups_through_the_merged_index_follow_the_rules() {
    let Some(f) = fx(7) else { return };
    f.lower(6)
        .file("d/oci-hidden", b"6", 0o644)
        .file("d/kernel-hidden", b"6", 0o644)
        .file("d/deep", b"deep", 0o644)
        .file("d/sub/below-opaque", b"6", 0o644)
        .dir("d/file-above", 0o755);
    f.lower(5).file("d/file-above", b"5", 0o644);
    f.lower(4)
        .oci_opaque_dir("d/sub", 0o755)
        .file("d/sub/in-opaque", b"4", 0o644)
        .file("d/twice", b"4", 0o644);
    f.lower(3).oci_whiteout("d/oci-hidden");
    f.lower(2).whiteout("d/kernel-hidden");
    f.lower(1).file("d/twice", b"1", 0o644).dir("d/sub", 0o755);
    f.lower(0).file("d/top", b"0", 0o644);
    let u = f.union();
    let expect: &[(&str, Result<&[u8], Errno>)] = &[
        ("d/oci-hidden", Err(Errno::ENOENT)),
        ("d/kernel-hidden", Err(Errno::ENOENT)),
        ("d/.wh.oci-hidden", Err(Errno::ENOENT)),
        ("d/deep", Ok(b"deep")),
        ("d/file-above", Ok(b"5")),
        ("d/twice", Ok(b"1")),
        ("d/top", Ok(b"0")),
        ("d/missing", Err(Errno::ENOENT)),
    ];
    // Twice as many lookups as the index waits for, all rules each time.
    for _ in 0..2 * strata::cow::layer::MERGED_INDEX_AFTER {
        for (path, want) in expect {
            match want {
                Ok(data) => assert_eq!(read(&u, path), *data, "{path}"),
                Err(e) => assert_eq!(resolve(&u, path).unwrap_err(), *e, "{path}"),
            }
        }
        assert_eq!(
            resolve(&u, "d/sub/below-opaque").unwrap_err(),
            Errno::ENOENT
        );
        assert_eq!(read(&u, "d/sub/in-opaque"), b"4");
    }
    assert_eq!(
        names(&u, "d"),
        ["deep", "file-above", "sub", "top", "twice"]
    );
}

#[test]
fn opaque_dir_stops_trusted_xattr() {
    let Some(f) = fx(2) else { return };
    f.lower(1)
        .file("d/below", b"b", 0o644)
        .file("d/both", b"bottom", 0o644);
    f.lower(0).opaque_dir("d", 0o755).file("d/top", b"t", 0o644);
    let u = f.union();
    assert_eq!(names(&u, "d"), ["top"]);
    assert_eq!(resolve(&u, "d/below").unwrap_err(), Errno::ENOENT);
    assert_eq!(resolve(&u, "d/both").unwrap_err(), Errno::ENOENT);
    // The overlay's own attribute does not show.
    assert_eq!(
        u.getxattr(ino(&u, "d"), b"trusted.overlay.opaque")
            .unwrap_err(),
        Errno::ENODATA
    );
    assert!(u.listxattr(ino(&u, "d")).unwrap().is_empty());
}

#[test]
fn opaque_dir_stops_user_xattr() {
    let Some(f) = fx(2) else { return };
    f.lower(1).file("d/below", b"b", 0o644);
    f.lower(0)
        .dir("d", 0o755)
        .xattr("d", "user.overlay.opaque", b"y")
        .file("d/top", b"t", 0o644);
    let u = f.union();
    assert_eq!(names(&u, "d"), ["top"]);
}

#[test]
fn opaque_dir_stops_oci_marker() {
    let Some(f) = fx(2) else { return };
    f.lower(1).file("d/below", b"b", 0o644);
    f.lower(0)
        .oci_opaque_dir("d", 0o755)
        .file("d/top", b"t", 0o644);
    let u = f.union();
    assert_eq!(names(&u, "d"), ["top"]);
    assert_eq!(resolve(&u, "d/below").unwrap_err(), Errno::ENOENT);
    assert_eq!(resolve(&u, "d/.wh..wh..opq").unwrap_err(), Errno::ENOENT);
}

#[test]
fn non_dir_below_dir_is_ignored() {
    let Some(f) = fx(3) else { return };
    f.lower(2).file("d/deep", b"deep", 0o644);
    f.lower(1).file("d", b"a file", 0o644);
    f.lower(0).file("d/top", b"t", 0o644);
    let u = f.union();
    let a = resolve(&u, "d").unwrap();
    assert_eq!(a.st.st_mode & libc::S_IFMT, libc::S_IFDIR);
    // The file stops the merge: the directory below it does not contribute.
    assert_eq!(names(&u, "d"), ["top"]);
}

#[test]
fn dir_below_non_dir_is_hidden() {
    let Some(f) = fx(2) else { return };
    f.lower(1).file("d/x", b"x", 0o644);
    f.lower(0).file("d", b"a file", 0o644);
    let u = f.union();
    let a = resolve(&u, "d").unwrap();
    assert_eq!(a.st.st_mode & libc::S_IFMT, libc::S_IFREG);
    assert_eq!(read(&u, "d"), b"a file");
    assert_eq!(u.lookup(a.ino, b"x").unwrap_err(), Errno::ENOTDIR);
}

#[test]
fn readdir_merges_and_hides_whiteouts() {
    let Some(f) = fx(2) else { return };
    f.lower(1)
        .file("bottom", b"", 0o644)
        .file("both", b"", 0o644)
        .file("kwh", b"", 0o644)
        .file("ociwh", b"", 0o644)
        .file("upwh", b"", 0o644)
        .file("d/b", b"", 0o644);
    f.lower(0)
        .file("top", b"", 0o644)
        .file("both", b"", 0o644)
        .whiteout("kwh")
        .oci_whiteout("ociwh")
        .file("d/t", b"", 0o644)
        .oci_whiteout("d/nothing-below");
    f.up()
        .file("up", b"", 0o644)
        .whiteout("upwh")
        .file("d/u", b"", 0o644);
    let u = f.union();
    assert_eq!(names(&u, ""), ["both", "bottom", "d", "top", "up"]);
    assert_eq!(names(&u, "d"), ["b", "t", "u"]);
    // Each name once, and its inode number is the one lookup gives.
    let root = u.readdir(ROOT_INO).unwrap();
    for e in &root {
        let name = String::from_utf8(e.name.clone()).unwrap();
        assert_eq!(e.ino, ino(&u, &name), "inode of {name}");
    }
}

// ---------------------------------------------------------------------------------------------
// Copy-up

#[test]
fn copy_up_on_write_keeps_content_mode_owner_xattrs_mtime_and_ino() {
    let Some(f) = fx(1) else { return };
    f.lower(0)
        .dir("dir", 0o751)
        .chown("dir", 7, 8)
        .xattr("dir", "user.dirattr", b"d")
        .file("dir/f", b"lower content", 0o640)
        .chown("dir/f", 1234, 5678)
        .xattr("dir/f", "user.k", b"v")
        .mtime("dir/f", 1_000_000_000, 123_456_789)
        .mtime("dir", 1_100_000_000, 5);
    let u = f.union();
    let before = resolve(&u, "dir/f").unwrap();
    let fd = u.open(before.ino, libc::O_WRONLY).unwrap();
    let up = f.upper_path("dir/f");
    let md = fs::symlink_metadata(&up).expect("copied up");
    assert_eq!(fs::read(&up).unwrap(), b"lower content");
    assert_eq!(md.mode() & 0o7777, 0o640);
    assert_eq!((md.uid(), md.gid()), (1234, 5678));
    assert_eq!(
        lgetxattr(&up, "user.k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert_eq!((md.mtime(), md.mtime_nsec()), (1_000_000_000, 123_456_789));
    // The parent came up with its metadata too.
    let pmd = fs::symlink_metadata(f.upper_path("dir")).unwrap();
    assert_eq!(pmd.mode() & 0o7777, 0o751);
    assert_eq!((pmd.uid(), pmd.gid()), (7, 8));
    assert_eq!(
        lgetxattr(&f.upper_path("dir"), "user.dirattr")
            .unwrap()
            .as_deref(),
        Some(&b"d"[..])
    );
    // Same inode number after copy-up; writes go to the upper copy only.
    let mut w = fs::File::from(fd);
    w.write_all(b"NEW").unwrap();
    drop(w);
    assert_eq!(u.getattr(before.ino).unwrap().ino, before.ino);
    assert_eq!(resolve(&u, "dir/f").unwrap().ino, before.ino);
    assert_eq!(read(&u, "dir/f"), b"NEWer content");
    assert_eq!(
        fs::read(f.lowers[0].join("dir/f")).unwrap(),
        b"lower content"
    );
    // Nothing is left behind in the work directory.
    assert_eq!(fs::read_dir(&f.work).unwrap().count(), 0);
}

#[test]
fn chmod_of_lower_file_copies_up() {
    let Some(f) = fx(1) else { return };
    f.lower(0).file("f", b"data", 0o644);
    let u = f.union();
    let i = ino(&u, "f");
    let a = u
        .setattr(
            i,
            &SetAttr {
                mode: Some(0o600),
                ..SetAttr::default()
            },
            None,
        )
        .unwrap();
    assert_eq!(a.st.st_mode & 0o7777, 0o600);
    let up = f.upper_path("f");
    assert_eq!(
        fs::metadata(&up).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    assert_eq!(fs::read(&up).unwrap(), b"data");
    assert_eq!(
        fs::metadata(f.lowers[0].join("f"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o644
    );
}

// ---------------------------------------------------------------------------------------------
// Removing and creating

#[test]
fn unlink_of_lower_file_leaves_kernel_whiteout() {
    let Some(f) = fx(1) else { return };
    f.lower(0)
        .file("f", b"data", 0o644)
        .file("d/g", b"g", 0o644);
    let u = f.union();
    u.unlink(ROOT_INO, b"f").unwrap();
    let (d, g) = split(&u, "d/g");
    u.unlink(d, &g).unwrap();
    assert!(is_kernel_whiteout(&f.upper_path("f")));
    assert!(is_kernel_whiteout(&f.upper_path("d/g")));
    assert_eq!(resolve(&u, "f").unwrap_err(), Errno::ENOENT);
    assert_eq!(names(&u, ""), ["d"]);
    assert!(names(&u, "d").is_empty());
    assert!(f.lowers[0].join("f").exists());
    assert_eq!(u.unlink(ROOT_INO, b"f").unwrap_err(), Errno::ENOENT);
}

#[test]
fn unlink_of_upper_only_file_leaves_nothing() {
    let Some(f) = fx(1) else { return };
    f.up().file("f", b"data", 0o644);
    let u = f.union();
    u.unlink(ROOT_INO, b"f").unwrap();
    assert!(fs::symlink_metadata(f.upper_path("f")).is_err());
}

#[test]
fn rmdir_of_merged_dir() {
    let Some(f) = fx(1) else { return };
    f.lower(0)
        .file("d/x", b"x", 0o644)
        .file("full/y", b"y", 0o644);
    f.up().dir("d", 0o755).file("d/u", b"u", 0o644);
    let u = f.union();
    assert_eq!(u.rmdir(ROOT_INO, b"d").unwrap_err(), Errno::ENOTEMPTY);
    assert_eq!(u.rmdir(ROOT_INO, b"full").unwrap_err(), Errno::ENOTEMPTY);
    let d = ino(&u, "d");
    u.unlink(d, b"x").unwrap();
    u.unlink(d, b"u").unwrap();
    assert!(names(&u, "d").is_empty());
    u.rmdir(ROOT_INO, b"d").unwrap();
    assert!(is_kernel_whiteout(&f.upper_path("d")));
    assert_eq!(resolve(&u, "d").unwrap_err(), Errno::ENOENT);
    assert_eq!(names(&u, ""), ["full"]);
}

#[test]
fn mkdir_over_whiteout_makes_opaque_dir() {
    let Some(f) = fx(1) else { return };
    f.lower(0).file("d/x", b"x", 0o644);
    f.up().whiteout("d");
    let u = f.union();
    assert_eq!(resolve(&u, "d").unwrap_err(), Errno::ENOENT);
    let a = u.mkdir(ROOT_INO, b"d", 0o750, 0o022, ROOT).unwrap();
    assert_eq!(a.st.st_mode & 0o7777, 0o750);
    let up = f.upper_path("d");
    assert!(fs::symlink_metadata(&up).unwrap().is_dir());
    assert!(
        is_opaque(&up),
        "no trusted.overlay.opaque=y on {}",
        up.display()
    );
    assert!(names(&u, "d").is_empty());
    assert_eq!(resolve(&u, "d/x").unwrap_err(), Errno::ENOENT);
    assert_eq!(fs::read_dir(&f.work).unwrap().count(), 0);
}

#[test]
fn mkdir_after_rmdir_of_lower_dir_makes_opaque_dir() {
    let Some(f) = fx(1) else { return };
    f.lower(0).file("d/x", b"x", 0o644);
    let u = f.union();
    u.unlink(ino(&u, "d"), b"x").unwrap();
    u.rmdir(ROOT_INO, b"d").unwrap();
    u.mkdir(ROOT_INO, b"d", 0o755, 0, ROOT).unwrap();
    assert!(is_opaque(&f.upper_path("d")));
    assert!(names(&u, "d").is_empty());
}

#[test]
fn create_over_lower_whiteout_hides_lower() {
    let Some(f) = fx(2) else { return };
    f.lower(1).file("f", b"old", 0o644);
    f.lower(0).whiteout("f");
    let u = f.union();
    let (a, fd) = u
        .create(ROOT_INO, b"f", 0o644, 0, libc::O_WRONLY, ROOT)
        .unwrap();
    fs::File::from(fd).write_all(b"new").unwrap();
    assert_eq!(read(&u, "f"), b"new");
    assert_eq!(resolve(&u, "f").unwrap().ino, a.ino);
}

// ---------------------------------------------------------------------------------------------
// Rename

#[test]
fn rename_of_lower_file_leaves_whiteout() {
    let Some(f) = fx(1) else { return };
    f.lower(0).file("a", b"content", 0o644);
    let u = f.union();
    let i = ino(&u, "a");
    u.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0).unwrap();
    assert!(is_kernel_whiteout(&f.upper_path("a")));
    assert_eq!(fs::read(f.upper_path("b")).unwrap(), b"content");
    assert_eq!(resolve(&u, "a").unwrap_err(), Errno::ENOENT);
    assert_eq!(read(&u, "b"), b"content");
    assert_eq!(ino(&u, "b"), i);
    assert_eq!(names(&u, ""), ["b"]);
}

#[test]
fn rename_of_lower_dir_works_and_keeps_content() {
    // Kernel overlayfs answers EXDEV here (without redirect_dir); strata moves the directory.
    let Some(f) = fx(2) else { return };
    f.lower(1)
        .file("d/x", b"x", 0o644)
        .file("d/sub/y", b"y", 0o600)
        .symlink("d/link", "x")
        .file("d/gone", b"gone", 0o644)
        .file("e/below", b"below", 0o644);
    f.lower(0).file("d/top", b"t", 0o644).whiteout("d/gone");
    let u = f.union();
    let d = ino(&u, "d");
    let x = ino(&u, "d/x");
    u.rename(ROOT_INO, b"d", ROOT_INO, b"moved", 0).unwrap();
    assert_eq!(resolve(&u, "d").unwrap_err(), Errno::ENOENT);
    assert_eq!(names(&u, "moved"), ["link", "sub", "top", "x"]);
    assert_eq!(read(&u, "moved/x"), b"x");
    assert_eq!(read(&u, "moved/sub/y"), b"y");
    assert_eq!(u.readlink(ino(&u, "moved/link")).unwrap(), b"x");
    assert_eq!(ino(&u, "moved"), d);
    assert_eq!(ino(&u, "moved/x"), x);
    assert!(is_kernel_whiteout(&f.upper_path("d")));
    // Onto an empty merged directory whose lower has names: they stay hidden.
    let e = ino(&u, "e");
    u.unlink(e, b"below").unwrap();
    u.rename(ROOT_INO, b"moved", ROOT_INO, b"e", 0).unwrap();
    assert_eq!(names(&u, "e"), ["link", "sub", "top", "x"]);
    assert_eq!(names(&u, ""), ["e"]);
    // A fresh union over the same upper shows the same (the upper says it all).
    drop(u);
    let u = f.union();
    assert_eq!(names(&u, ""), ["e"]);
    assert_eq!(names(&u, "e"), ["link", "sub", "top", "x"]);
    assert_eq!(read(&u, "e/sub/y"), b"y");
}

#[test]
fn rename_noreplace_refuses_existing() {
    let Some(f) = fx(1) else { return };
    f.lower(0).file("a", b"a", 0o644).file("b", b"b", 0o644);
    f.up().file("c", b"c", 0o644);
    let u = f.union();
    let nr = libc::RENAME_NOREPLACE;
    assert_eq!(
        u.rename(ROOT_INO, b"a", ROOT_INO, b"b", nr).unwrap_err(),
        Errno::EEXIST
    );
    assert_eq!(
        u.rename(ROOT_INO, b"c", ROOT_INO, b"a", nr).unwrap_err(),
        Errno::EEXIST
    );
    assert_eq!(read(&u, "a"), b"a");
    assert_eq!(read(&u, "b"), b"b");
    u.rename(ROOT_INO, b"a", ROOT_INO, b"new", nr).unwrap();
    assert_eq!(read(&u, "new"), b"a");
}

#[test]
fn rename_exchange_swaps() {
    let Some(f) = fx(1) else { return };
    f.lower(0)
        .file("a", b"lower a", 0o644)
        .file("d/x", b"x", 0o644);
    f.up().file("b", b"upper b", 0o600);
    let u = f.union();
    let (ia, ib) = (ino(&u, "a"), ino(&u, "b"));
    u.rename(ROOT_INO, b"a", ROOT_INO, b"b", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(read(&u, "a"), b"upper b");
    assert_eq!(read(&u, "b"), b"lower a");
    assert_eq!((ino(&u, "a"), ino(&u, "b")), (ib, ia));
    // A file and a lower directory.
    u.rename(ROOT_INO, b"a", ROOT_INO, b"d", libc::RENAME_EXCHANGE)
        .unwrap();
    assert_eq!(read(&u, "d"), b"upper b");
    assert_eq!(names(&u, "a"), ["x"]);
    assert_eq!(read(&u, "a/x"), b"x");
    // Exchange with a missing name: ENOENT.
    assert_eq!(
        u.rename(ROOT_INO, b"a", ROOT_INO, b"nope", libc::RENAME_EXCHANGE)
            .unwrap_err(),
        Errno::ENOENT
    );
    drop(u);
    let u = f.union();
    assert_eq!(read(&u, "d"), b"upper b");
    assert_eq!(names(&u, "a"), ["x"]);
    assert_eq!(read(&u, "b"), b"lower a");
}

// ---------------------------------------------------------------------------------------------
// Links, names, inode numbers

#[test]
fn hard_link_of_lower_file() {
    let Some(f) = fx(1) else { return };
    f.lower(0).file("f", b"shared", 0o644);
    let u = f.union();
    let i = ino(&u, "f");
    let a = u.link(i, ROOT_INO, b"g").unwrap();
    assert_eq!(a.ino, i);
    assert_eq!(a.st.st_nlink, 2);
    let (mf, mg) = (
        fs::symlink_metadata(f.upper_path("f")).unwrap(),
        fs::symlink_metadata(f.upper_path("g")).unwrap(),
    );
    assert_eq!(mf.ino(), mg.ino(), "upper f and g are one inode");
    assert_eq!(ino(&u, "g"), i);
    write(&u, "g", b"changed");
    assert_eq!(read(&u, "f"), b"changed");
    assert_eq!(fs::read(f.lowers[0].join("f")).unwrap(), b"shared");
}

#[test]
fn names_longer_than_255_bytes_are_enametoolong() {
    let Some(f) = fx(1) else { return };
    f.lower(0).file("f", b"f", 0o644);
    let u = f.union();
    let long = vec![b'n'; 256];
    let ok = vec![b'n'; 255];
    assert_eq!(u.lookup(ROOT_INO, &long).unwrap_err(), Errno::ENAMETOOLONG);
    assert_eq!(
        u.mkdir(ROOT_INO, &long, 0o755, 0, ROOT).unwrap_err(),
        Errno::ENAMETOOLONG
    );
    assert_eq!(
        u.create(ROOT_INO, &long, 0o644, 0, libc::O_WRONLY, ROOT)
            .unwrap_err(),
        Errno::ENAMETOOLONG
    );
    assert_eq!(
        u.symlink(ROOT_INO, &long, b"f", ROOT).unwrap_err(),
        Errno::ENAMETOOLONG
    );
    assert_eq!(
        u.rename(ROOT_INO, b"f", ROOT_INO, &long, 0).unwrap_err(),
        Errno::ENAMETOOLONG
    );
    assert_eq!(
        u.link(ino(&u, "f"), ROOT_INO, &long).unwrap_err(),
        Errno::ENAMETOOLONG
    );
    assert_eq!(u.unlink(ROOT_INO, &long).unwrap_err(), Errno::ENAMETOOLONG);
    u.create(ROOT_INO, &ok, 0o644, 0, libc::O_WRONLY, ROOT)
        .unwrap();
    assert_eq!(u.lookup(ROOT_INO, &ok).unwrap().st.st_size, 0);
}

#[test]
fn inode_numbers_stable_across_rename_and_copy_up() {
    let Some(f) = fx(1) else { return };
    f.lower(0).file("a", b"a", 0o644).file("d/x", b"x", 0o644);
    let u = f.union();
    let (a, d, x) = (ino(&u, "a"), ino(&u, "d"), ino(&u, "d/x"));
    // Copy-up by a metadata change.
    u.setattr(
        a,
        &SetAttr {
            uid: Some(42),
            ..SetAttr::default()
        },
        None,
    )
    .unwrap();
    assert_eq!(ino(&u, "a"), a);
    assert_eq!(u.getattr(a).unwrap().st.st_uid, 42);
    // Rename of the file, then of the lower directory (whole tree copied up).
    u.rename(ROOT_INO, b"a", ROOT_INO, b"b", 0).unwrap();
    assert_eq!(ino(&u, "b"), a);
    u.rename(ROOT_INO, b"d", ROOT_INO, b"e", 0).unwrap();
    assert_eq!(ino(&u, "e"), d);
    assert_eq!(ino(&u, "e/x"), x);
    // readdir reports the same numbers.
    for e in u.readdir(ROOT_INO).unwrap() {
        let n = String::from_utf8(e.name).unwrap();
        assert_eq!(e.ino, ino(&u, &n), "readdir inode of {n}");
    }
    // A new object never gets a number already in use.
    let (c, _) = u
        .create(ROOT_INO, b"c", 0o644, 0, libc::O_WRONLY, ROOT)
        .unwrap();
    assert!(![a, d, x].contains(&c.ino));
}

/// Regression: a name of 252 to 255 bytes could not be looked up or created over a lower
/// layer, because the probe for its OCI whiteout `.wh.NAME` (over 255 bytes) failed with
/// ENAMETOOLONG.
#[test]
fn names_of_252_to_255_bytes_work_over_lowers() {
    let Some(f) = fx(2) else { return };
    let n252 = "b".repeat(252);
    let n255 = "c".repeat(255);
    f.lower(1).file(&n252, b"lower", 0o644);
    let u = f.union();
    assert_eq!(read(&u, &n252), b"lower");
    assert_eq!(
        u.lookup(ROOT_INO, n255.as_bytes()).unwrap_err(),
        Errno::ENOENT
    );
    u.mkdir(ROOT_INO, n255.as_bytes(), 0o755, 0, ROOT).unwrap();
    u.unlink(ROOT_INO, n252.as_bytes()).unwrap();
    assert!(is_kernel_whiteout(&f.upper_path(&n252)));
    assert_eq!(names(&u, ""), [n255]);
}

/// Regression: lower hard links shared one node, so a change through one name (here chmod
/// through `h2` after `h1` was looked up... and the reverse) copied up whichever name had
/// been looked up last. As in kernel overlayfs without `index`, each name is its own object
/// in a writable union and a copy-up breaks the link.
#[test]
fn lower_hard_links_are_separate_names_in_a_writable_union() {
    let Some(f) = fx(1) else { return };
    f.lower(0).file("h1", b"hard", 0o644).hardlink("h1", "h2");
    let u = f.union();
    let h2 = ino(&u, "h2");
    let h1 = ino(&u, "h1"); // looked up last
    assert_ne!(h1, h2);
    u.setattr(
        h2,
        &SetAttr {
            mode: Some(0o600),
            ..SetAttr::default()
        },
        None,
    )
    .unwrap();
    assert!(f.upper_path("h2").exists(), "h2 was not the name copied up");
    assert!(
        !f.upper_path("h1").exists(),
        "h1 was copied up instead of h2"
    );
    assert_eq!(resolve(&u, "h1").unwrap().st.st_mode & 0o7777, 0o644);
    assert_eq!(resolve(&u, "h2").unwrap().st.st_mode & 0o7777, 0o600);
    assert_eq!(ino(&u, "h2"), h2);
    assert_eq!(ino(&u, "h1"), h1);
    write(&u, "h1", b"changed");
    assert_eq!(read(&u, "h2"), b"hard");
    // Without an upper (a read-only image), the names stay one inode.
    let ro = Union::new(&UnionSpec {
        lowers: f.lowers.clone(),
        ..UnionSpec::default()
    })
    .unwrap();
    assert_eq!(ino(&ro, "h1"), ino(&ro, "h2"));
}
