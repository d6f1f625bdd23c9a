//! Hostile layer archives: a corpus of bad tarballs, built here byte by byte, that `strata import`
//! must refuse. For every case the test checks that
//! 1. the import fails with `Error: layer <label>: entry "<path>": <reason>`, naming the entry;
//! 2. nothing outside the store was created or changed (a snapshot of the test's own temporary
//!    directory, with ctimes, link counts and contents, plus explicit absent paths);
//! 3. nothing half-imported remains (`layers/`, `tmp/`, `trash/` and `blobs/` as before, no new
//!    image);
//! 4. `strata fsck` is clean;
//!
//! first in an empty store, then again in a store that holds a good image, which must survive
//! untouched. A positive control checks that legitimate but unusual archives (symlinks pointing
//! outside, hard links, fifos, xattrs, setuid files, whiteouts, devices as root) still import.

mod common;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::TempStore;

// ---------------------------------------------------------------------------------------------
// Building archives, including what `tar::Builder`'s safe API refuses to write.
// ---------------------------------------------------------------------------------------------

const MTIME: u64 = 1_700_000_000;

/// A tar stream written header by header, with raw names and link names.
struct Tar(tar::Builder<Vec<u8>>);

impl Tar {
    fn new() -> Tar {
        Tar(tar::Builder::new(Vec::new()))
    }

    /// A GNU header with a raw `name` (any bytes, `..` and absolute paths included).
    fn header(kind: tar::EntryType, name: &[u8], size: u64, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(MTIME);
        set_raw(&mut h.as_old_mut().name, name);
        h
    }

    /// Appends `h` verbatim (checksum recomputed) with `data`.
    fn raw(&mut self, mut h: tar::Header, data: &[u8]) -> &mut Tar {
        h.set_cksum();
        self.0.append(&h, data).expect("append to tar");
        self
    }

    fn file_mode(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Tar {
        let h = Tar::header(
            tar::EntryType::Regular,
            path.as_bytes(),
            data.len() as u64,
            mode,
        );
        self.raw(h, data)
    }

    fn file(&mut self, path: &str, data: &[u8]) -> &mut Tar {
        self.file_mode(path, data, 0o644)
    }

    fn dir(&mut self, path: &str) -> &mut Tar {
        self.dir_mode(path, 0o755)
    }

    fn dir_mode(&mut self, path: &str, mode: u32) -> &mut Tar {
        let h = Tar::header(tar::EntryType::Directory, path.as_bytes(), 0, mode);
        self.raw(h, &[])
    }

    fn link(&mut self, kind: tar::EntryType, path: &str, target: &str) -> &mut Tar {
        let mut h = Tar::header(kind, path.as_bytes(), 0, 0o777);
        set_raw(&mut h.as_old_mut().linkname, target.as_bytes());
        self.raw(h, &[])
    }

    fn symlink(&mut self, path: &str, target: &str) -> &mut Tar {
        self.link(tar::EntryType::Symlink, path, target)
    }

    fn hardlink(&mut self, path: &str, target: &str) -> &mut Tar {
        self.link(tar::EntryType::Link, path, target)
    }

    fn device(&mut self, kind: tar::EntryType, path: &str, major: u32, minor: u32) -> &mut Tar {
        let mut h = Tar::header(kind, path.as_bytes(), 0, 0o666);
        h.set_device_major(major).expect("GNU header has devices");
        h.set_device_minor(minor).expect("GNU header has devices");
        self.raw(h, &[])
    }

    fn fifo(&mut self, path: &str) -> &mut Tar {
        self.device(tar::EntryType::Fifo, path, 0, 0)
    }

    /// A PAX extended header ('x') that applies to the next entry.
    fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Tar {
        let mut data = Vec::new();
        for (k, v) in records {
            data.extend_from_slice(&pax_record(k, v));
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(MTIME);
        set_raw(&mut h.as_old_mut().name, b"./PaxHeaders/entry");
        self.raw(h, &data)
    }

    /// A GNU long name ('L') record that names the next entry.
    fn gnu_long_name(&mut self, name: &[u8]) -> &mut Tar {
        let mut data = name.to_vec();
        data.push(0);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::GNULongName);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        set_raw(&mut h.as_old_mut().name, b"././@LongLink");
        self.raw(h, &data)
    }

    /// The archive, with its end-of-archive blocks.
    fn bytes(&mut self) -> Vec<u8> {
        let b = std::mem::replace(&mut self.0, tar::Builder::new(Vec::new()));
        b.into_inner().expect("finish tar")
    }
}

/// Writes `value` into a NUL-padded header field, refusing what does not fit.
fn set_raw(field: &mut [u8], value: &[u8]) {
    assert!(value.len() <= field.len(), "{value:?} does not fit");
    field.fill(0);
    field[..value.len()].copy_from_slice(value);
}

/// One PAX record, `"<len> <key>=<value>\n"`, its length counting itself.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len != rest + len.to_string().len() {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    assert_eq!(r.len(), len);
    r
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).expect("gzip");
    e.finish().expect("gzip")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

/// Incompressible bytes (xorshift), so that a cut in a compressed stream lands in a known file.
fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// `path` as a string for an archive (the test directories have UTF-8 names).
fn s(path: &Path) -> String {
    path.to_str().expect("UTF-8 temporary path").to_string()
}

// ---------------------------------------------------------------------------------------------
// The environment of one case: a store, a victim file and sentinel directories beside it.
// ---------------------------------------------------------------------------------------------

const VICTIM: &[u8] = b"victim: original content\n";
const NOBODY: u32 = 65534;

/// A temporary directory `T` holding the store `T/store`, the victim file `T/victim`, the
/// directories `T/outside` and `T/sentinel` (each with a `keep` file) and the inputs `T/input/`.
/// Archives aim at these: `../../../../victim` from a layer directory (`T/store/tmp/X/diff` or
/// `T/store/layers/X/diff`) is `T/victim`.
struct Env {
    store: TempStore,
    /// Run strata as uid/gid 65534 (with the whole of `T` chowned to it).
    nobody: bool,
}

impl Env {
    fn new(nobody: bool) -> Env {
        let env = Env {
            store: TempStore::new(),
            nobody,
        };
        let t = env.t();
        fs::write(t.join("victim"), VICTIM).unwrap();
        for d in ["outside", "sentinel", "input"] {
            fs::create_dir(t.join(d)).unwrap();
        }
        fs::write(t.join("outside/keep"), b"keep\n").unwrap();
        fs::write(t.join("sentinel/keep"), b"keep\n").unwrap();
        if nobody {
            chown_tree(t, NOBODY);
        }
        // Creates the store now, so that creating it does not show in the snapshots of `T`.
        assert_eq!(env.ok(&["images", "-q"]), "");
        env
    }

    /// The test's temporary directory `T`.
    fn t(&self) -> &Path {
        self.store.dir.path()
    }

    fn root(&self) -> PathBuf {
        self.store.root()
    }

    fn victim(&self) -> PathBuf {
        self.t().join("victim")
    }

    /// Writes an input file under `T/input/`.
    fn input(&self, name: &str, data: &[u8]) -> PathBuf {
        let p = self.t().join("input").join(name);
        fs::write(&p, data).unwrap();
        if self.nobody {
            std::os::unix::fs::lchown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
        p
    }

    fn run(&self, args: &[&str]) -> Output {
        if !self.nobody {
            return self.store.run(args);
        }
        Command::new("setpriv")
            .arg(format!("--reuid={NOBODY}"))
            .arg(format!("--regid={NOBODY}"))
            .arg("--clear-groups")
            .arg(common::strata_bin())
            .arg("--root")
            .arg(self.root())
            .args(args)
            .current_dir(self.t())
            .env_remove("STRATA_ROOT")
            .stdin(Stdio::null())
            .output()
            .expect("run setpriv strata")
    }

    fn ok(&self, args: &[&str]) -> String {
        if !self.nobody {
            return self.store.ok(args);
        }
        let o = self.run(args);
        assert!(
            o.status.success(),
            "strata {args:?} (as nobody) failed ({}):\nstdout: {}\nstderr: {}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).expect("utf-8 output")
    }

    fn fails(&self, args: &[&str]) -> String {
        if !self.nobody {
            return self.store.fails(args);
        }
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "strata {args:?} (as nobody) succeeded but should have failed:\nstdout: {}",
            String::from_utf8_lossy(&o.stdout)
        );
        String::from_utf8(o.stderr).expect("utf-8 output")
    }

    fn assert_fsck_clean(&self) {
        if !self.nobody {
            return self.store.assert_fsck_clean();
        }
        let o = self.run(&["fsck"]);
        assert!(
            o.status.success(),
            "fsck (as nobody) found problems:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// Names in a directory of the store, sorted.
    fn store_dir(&self, rel: &str) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.root().join(rel))
            .unwrap_or_else(|e| panic!("read {rel}: {e}"))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// The one extracted layer directory (`layers/<hex>/diff`) of the store.
    fn only_layer_diff(&self) -> PathBuf {
        let layers = self.store_dir("layers");
        assert_eq!(layers.len(), 1, "expected one layer, found {layers:?}");
        self.root().join("layers").join(&layers[0]).join("diff")
    }
}

fn chown_tree(p: &Path, id: u32) {
    std::os::unix::fs::lchown(p, Some(id), Some(id)).unwrap();
    if fs::symlink_metadata(p).unwrap().is_dir() {
        for e in fs::read_dir(p).unwrap() {
            chown_tree(&e.unwrap().path(), id);
        }
    }
}

/// Everything observable about a tree but access times: type, mode, owner, link count, size,
/// mtime, ctime (which any chmod, chown, xattr change, link or write moves), content and
/// symlink target; `skip` (the store) is left out.
type Snapshot = BTreeMap<PathBuf, String>;

fn snapshot(top: &Path, skip: Option<&Path>) -> Snapshot {
    fn walk(p: &Path, skip: Option<&Path>, out: &mut Snapshot) {
        if Some(p) == skip {
            return;
        }
        let m = fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        let ft = m.file_type();
        let what = if ft.is_file() {
            format!("file {:?}", fs::read(p).unwrap())
        } else if ft.is_symlink() {
            format!("symlink -> {:?}", fs::read_link(p).unwrap())
        } else if ft.is_dir() {
            "dir".to_string()
        } else {
            format!("special rdev={}", m.rdev())
        };
        out.insert(
            p.to_path_buf(),
            format!(
                "{what} mode={:o} uid={} gid={} nlink={} size={} mtime={}.{} ctime={}.{}",
                m.mode(),
                m.uid(),
                m.gid(),
                m.nlink(),
                m.size(),
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec()
            ),
        );
        if ft.is_dir() {
            for e in fs::read_dir(p).unwrap() {
                walk(&e.unwrap().path(), skip, out);
            }
        }
    }
    let mut out = Snapshot::new();
    walk(top, skip, &mut out);
    out
}

fn assert_same(before: &Snapshot, after: &Snapshot, what: &str) {
    if before == after {
        return;
    }
    let mut diff = String::new();
    for (k, v) in before {
        match after.get(k) {
            None => diff += &format!("  removed {}: {v}\n", k.display()),
            Some(w) if w != v => {
                diff += &format!("  changed {}: {v}\n       -> {w}\n", k.display())
            }
            _ => {}
        }
    }
    for (k, v) in after {
        if !before.contains_key(k) {
            diff += &format!("  created {}: {v}\n", k.display());
        }
    }
    panic!("{what} changed:\n{diff}");
}

// ---------------------------------------------------------------------------------------------
// The good image that every failed import must leave alone.
// ---------------------------------------------------------------------------------------------

fn good_tarball() -> Vec<u8> {
    gzip(
        &Tar::new()
            .dir("./")
            .dir("etc/")
            .file("etc/hostname", b"good\n")
            .dir("bin/")
            .file_mode("bin/tool", b"#!/bin/sh\necho good\n", 0o755)
            .symlink("bin/alias", "tool")
            .hardlink("bin/tool2", "bin/tool")
            .bytes(),
    )
}

// ---------------------------------------------------------------------------------------------
// The check every hostile case goes through.
// ---------------------------------------------------------------------------------------------

/// One hostile archive, built for a given `T`.
struct Bad {
    /// The bytes given to `strata import` (compressed or not).
    data: Vec<u8>,
    /// The entry the error must name; `None` when the input has no entry to name.
    entry: Option<String>,
    /// A piece of the reason the error must give.
    reason: &'static str,
    /// Paths that must not exist afterwards (targets the archive aims at).
    absent: Vec<PathBuf>,
}

/// Imports the archive `make` builds and checks that it is refused cleanly: first in an empty
/// store, then in a store holding a good image. Returns the error messages.
fn refused(name: &str, nobody: bool, make: impl Fn(&Path) -> Bad) -> String {
    let env = Env::new(nobody);
    let bad = make(env.t());
    let input = env.input(name, &bad.data);
    for a in &bad.absent {
        assert!(!a.exists(), "{} exists before the import", a.display());
    }

    // 1. In an empty store.
    let err = import_refused(&env, &bad, &input);
    for d in ["layers", "tmp", "trash", "blobs/sha256"] {
        assert_eq!(
            env.store_dir(d),
            Vec::<String>::new(),
            "{name}: {d}/ not empty"
        );
    }
    assert_eq!(env.ok(&["images", "-q"]), "", "{name}: an image remained");
    env.assert_fsck_clean();

    // 2. In a store holding a good image, which must survive.
    let good = env.input("good.tar.gz", &good_tarball());
    let id = env.ok(&["import", good.to_str().unwrap(), "good:1"]);
    assert!(id.trim().starts_with("sha256:"), "import printed {id:?}");
    let listed = env.ok(&["images", "-q"]);
    assert_eq!(listed.lines().count(), 1);
    let layers = env.store_dir("layers");
    let blobs = env.store_dir("blobs/sha256");
    let good_layer = env.only_layer_diff();
    let good_before = snapshot(&good_layer, None);
    assert_eq!(
        fs::read(good_layer.join("etc/hostname")).unwrap(),
        b"good\n"
    );

    let err2 = import_refused(&env, &bad, &input);
    assert_eq!(env.store_dir("layers"), layers, "{name}: layers/ changed");
    assert_eq!(
        env.store_dir("blobs/sha256"),
        blobs,
        "{name}: blobs/ changed"
    );
    for d in ["tmp", "trash"] {
        assert_eq!(
            env.store_dir(d),
            Vec::<String>::new(),
            "{name}: {d}/ not empty"
        );
    }
    assert_eq!(env.ok(&["images", "-q"]), listed, "{name}: images changed");
    assert_same(&good_before, &snapshot(&good_layer, None), "the good layer");
    env.ok(&["inspect", "good:1"]);
    env.assert_fsck_clean();
    format!("{err}{err2}")
}

/// Runs the refused import once and checks its message and that nothing outside changed.
fn import_refused(env: &Env, bad: &Bad, input: &Path) -> String {
    let outside = snapshot(env.t(), Some(&env.root()));
    let label = s(input);
    let err = env.fails(&["import", &label, "bad:1"]);
    assert_same(
        &outside,
        &snapshot(env.t(), Some(&env.root())),
        "the directory around the store",
    );
    for a in &bad.absent {
        assert!(
            fs::symlink_metadata(a).is_err(),
            "{} was created by a refused import",
            a.display()
        );
    }
    assert_eq!(fs::read(env.victim()).unwrap(), VICTIM);
    assert_eq!(fs::metadata(env.victim()).unwrap().nlink(), 1);

    let prefix = match &bad.entry {
        Some(e) => format!("Error: layer {label}: entry {e:?}: "),
        None => format!("Error: layer {label}: "),
    };
    assert!(
        err.starts_with(&prefix),
        "the error does not start with {prefix:?}:\n{err}"
    );
    assert!(
        err.contains(bad.reason),
        "the error does not say {:?}:\n{err}",
        bad.reason
    );
    // Hostile bytes are escaped: one line, no escape sequences for the terminal.
    assert_eq!(err.lines().count(), 1, "one line of error expected:\n{err}");
    assert!(
        !err.trim_end_matches('\n').chars().any(char::is_control),
        "control characters in the error: {err:?}"
    );
    eprintln!("{err}");
    err
}

/// A case whose archive is plain tar, with `absent` paths relative to `T`.
fn plain(
    t: &Path,
    entry: &str,
    reason: &'static str,
    absent: &[&str],
    build: impl FnOnce(&mut Tar),
) -> Bad {
    let mut tar = Tar::new();
    build(&mut tar);
    Bad {
        data: tar.bytes(),
        entry: Some(entry.to_string()),
        reason,
        absent: absent.iter().map(|a| t.join(a)).collect(),
    }
}

const OUTSIDE_LAYER: &str = "must stay inside the layer";
const THROUGH: &str = "refusing to write through it";

// ---------------------------------------------------------------------------------------------
// Paths that leave the layer.
// ---------------------------------------------------------------------------------------------

#[test]
fn dotdot_path() {
    refused("dotdot.tar", false, |t| {
        plain(t, "../../x", OUTSIDE_LAYER, &[], |a| {
            a.file("ok", b"fine\n").file("../../x", b"pwned\n");
        })
    });
    // Deep enough to reach `T`, and a `..` hidden in the middle.
    refused("dotdot-deep.tar", false, |t| {
        plain(
            t,
            "a/../../../../../escaped",
            OUTSIDE_LAYER,
            &["escaped", "../escaped"],
            |a| {
                a.dir("a/").file("a/../../../../../escaped", b"pwned\n");
            },
        )
    });
}

#[test]
fn dotdot_overwrites_victim() {
    refused("dotdot-victim.tar", false, |t| {
        plain(t, "../../../../victim", OUTSIDE_LAYER, &[], |a| {
            a.file("../../../../victim", b"pwned\n");
        })
    });
}

#[test]
fn absolute_path() {
    refused("absolute.tar", false, |t| {
        let abs = s(&t.join("abs"));
        plain(t, &abs, "absolute path", &["abs"], |a| {
            a.file(&abs, b"pwned\n");
        })
    });
    // An absolute directory, then a file inside it.
    refused("absolute-dir.tar", false, |t| {
        let dir = format!("{}/", s(&t.join("sentinel/absdir")));
        plain(t, &dir, "absolute path", &["sentinel/absdir"], |a| {
            a.dir(&dir).file("sentinel/absdir/x", b"x");
        })
    });
}

#[test]
fn ustar_prefix_with_dotdot() {
    refused("ustar-prefix.tar", false, |t| {
        plain(
            t,
            "../../../../prefix-escape",
            OUTSIDE_LAYER,
            &["prefix-escape"],
            |a| {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(6);
                h.set_mode(0o644);
                h.set_mtime(MTIME);
                set_raw(&mut h.as_old_mut().name, b"prefix-escape");
                set_raw(&mut h.as_ustar_mut().unwrap().prefix, b"../../../..");
                a.raw(h, b"pwned\n");
            },
        )
    });
}

#[test]
fn pax_path_with_dotdot() {
    refused("pax-path.tar", false, |t| {
        plain(
            t,
            "../../../../pax-escape",
            OUTSIDE_LAYER,
            &["pax-escape"],
            |a| {
                a.file("ok", b"fine\n")
                    .pax(&[("path", b"../../../../pax-escape")])
                    .file("innocent", b"pwned\n");
            },
        )
    });
    // PAX `path` absolute.
    refused("pax-abs.tar", false, |t| {
        let abs = s(&t.join("pax-abs"));
        plain(t, &abs, "absolute path", &["pax-abs"], |a| {
            a.pax(&[("path", abs.as_bytes())])
                .file("innocent", b"pwned\n");
        })
    });
}

#[test]
fn pax_linkpath_with_dotdot() {
    refused("pax-linkpath.tar", false, |t| {
        plain(t, "innocent", OUTSIDE_LAYER, &[], |a| {
            a.pax(&[("linkpath", b"../../../../victim")])
                .hardlink("innocent", "harmless");
        })
    });
}

#[test]
fn gnu_long_name_with_dotdot() {
    refused("gnu-long.tar", false, |t| {
        let long = format!("../../../../{}/gnu-escape", "d".repeat(120));
        let mut absent = vec![t.join("d".repeat(120))];
        absent.push(t.join("gnu-escape"));
        let mut tar = Tar::new();
        tar.file("ok", b"fine\n")
            .gnu_long_name(long.as_bytes())
            .file("truncated-name", b"pwned\n");
        Bad {
            data: tar.bytes(),
            entry: Some(long.clone()),
            reason: OUTSIDE_LAYER,
            absent,
        }
    });
}

#[test]
fn gnu_long_link_name_outside() {
    refused("gnu-longlink.tar", false, |t| {
        let target = format!("../../../../{}/../victim", "d".repeat(120));
        let mut data = target.clone().into_bytes();
        data.push(0);
        plain(t, "innocent", OUTSIDE_LAYER, &[], move |a| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::GNULongLink);
            h.set_size(data.len() as u64);
            set_raw(&mut h.as_old_mut().name, b"././@LongLink");
            a.raw(h, &data).hardlink("innocent", "short");
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Writing through symlinks.
// ---------------------------------------------------------------------------------------------

#[test]
fn write_through_absolute_symlink() {
    refused("symlink-abs.tar", false, |t| {
        let target = s(&t.join("outside"));
        plain(t, "link/pwned", THROUGH, &["outside/pwned"], |a| {
            a.symlink("link", &target).file("link/pwned", b"pwned\n");
        })
    });
}

#[test]
fn write_through_relative_symlink() {
    // `../../..` from a layer's `diff/` is the store root itself.
    refused("symlink-rel.tar", false, |t| {
        plain(t, "link2/pwned", THROUGH, &["store/pwned"], |a| {
            a.symlink("link2", "../../..")
                .file("link2/pwned", b"pwned\n");
        })
    });
    // `../../../..` is `T`.
    refused("symlink-rel-t.tar", false, |t| {
        plain(t, "link3/sub/", THROUGH, &["pwned", "sub"], |a| {
            a.symlink("link3", "../../../..")
                .dir("link3/sub/")
                .file("link3/sub/pwned", b"pwned\n");
        })
    });
}

#[test]
fn write_through_nested_symlink() {
    // The symlink is a parent two levels up; the entry also creates a directory through it.
    refused("symlink-nested.tar", false, |t| {
        let target = s(&t.join("sentinel"));
        plain(t, "a/link/new/file", THROUGH, &["sentinel/new"], |a| {
            a.dir("a/")
                .symlink("a/link", &target)
                .file("a/link/new/file", b"pwned\n");
        })
    });
}

#[test]
fn overwrite_victim_through_symlink() {
    // A symlink to the victim, then a regular file of the same name.
    refused("symlink-victim.tar", false, |t| {
        let victim = s(&t.join("victim"));
        plain(t, "v", "duplicate entry", &[], |a| {
            a.symlink("v", &victim).file("v", b"pwned\n");
        })
    });
    // A file, replaced by a symlink to the victim, then written again.
    refused("symlink-replace.tar", false, |t| {
        let victim = s(&t.join("victim"));
        plain(t, "v", "duplicate entry", &[], |a| {
            a.file("v", b"first\n")
                .symlink("v", &victim)
                .file("v", b"pwned\n");
        })
    });
}

#[test]
fn whiteout_through_symlink() {
    refused("whiteout-symlink.tar", false, |t| {
        let target = s(&t.join("outside"));
        plain(t, "link/.wh.keep", THROUGH, &[], |a| {
            a.symlink("link", &target).file("link/.wh.keep", b"");
        })
    });
    refused("opaque-symlink.tar", false, |t| {
        let target = s(&t.join("outside"));
        plain(t, "link/.wh..wh..opq", THROUGH, &[], |a| {
            a.symlink("link", &target).file("link/.wh..wh..opq", b"");
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Hard links.
// ---------------------------------------------------------------------------------------------

#[test]
fn hardlink_dotdot() {
    refused("hardlink-dotdot.tar", false, |t| {
        plain(t, "evil", OUTSIDE_LAYER, &[], |a| {
            a.hardlink("evil", "../../../../victim");
        })
    });
    refused("hardlink-dotdot-short.tar", false, |t| {
        plain(t, "evil", OUTSIDE_LAYER, &[], |a| {
            a.hardlink("evil", "../../victim");
        })
    });
}

#[test]
fn hardlink_absolute() {
    refused("hardlink-abs.tar", false, |t| {
        let victim = s(&t.join("victim"));
        plain(t, "evil", "absolute path", &[], |a| {
            a.hardlink("evil", &victim);
        })
    });
}

#[test]
fn hardlink_through_symlink() {
    refused("hardlink-symlink.tar", false, |t| {
        let target = s(t);
        plain(t, "evil", "not (yet) in this layer", &[], |a| {
            a.symlink("link", &target).hardlink("evil", "link/victim");
        })
    });
}

#[test]
fn hardlink_then_write() {
    // A hard link (even a legitimate one) must not let a later entry write the shared inode.
    refused("hardlink-write.tar", false, |t| {
        plain(t, "h", "duplicate entry", &[], |a| {
            a.file("f", b"one\n")
                .hardlink("h", "f")
                .file("h", b"pwned\n");
        })
    });
}

#[test]
fn hardlink_before_target() {
    refused("hardlink-forward.tar", false, |t| {
        plain(t, "early", "not (yet) in this layer", &[], |a| {
            a.hardlink("early", "later").file("later", b"data\n");
        })
    });
}

#[test]
fn hardlink_to_directory() {
    refused("hardlink-dir.tar", false, |t| {
        plain(t, "h", "hard link to directory", &[], |a| {
            a.dir("d/").hardlink("h", "d");
        })
    });
}

// ---------------------------------------------------------------------------------------------
// Duplicates, whiteouts, parents that are not directories.
// ---------------------------------------------------------------------------------------------

#[test]
fn duplicate_regular_file() {
    refused("duplicate.tar", false, |t| {
        plain(t, "etc/passwd", "duplicate entry", &[], |a| {
            a.dir("etc/")
                .file("etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
                .file("etc/passwd", b"pwned\n");
        })
    });
    // The same path spelled differently.
    refused("duplicate-spelling.tar", false, |t| {
        plain(t, "./etc//passwd", "duplicate entry", &[], |a| {
            a.file("etc/passwd", b"one\n")
                .file("./etc//passwd", b"two\n");
        })
    });
}

#[test]
fn duplicate_file_and_directory() {
    refused("file-then-dir.tar", false, |t| {
        plain(t, "x/", "duplicate entry", &[], |a| {
            a.file("x", b"file\n").dir("x/");
        })
    });
    refused("dir-then-file.tar", false, |t| {
        plain(t, "x", "duplicate entry", &[], |a| {
            a.dir("x/").file("x", b"file\n");
        })
    });
}

#[test]
fn whiteout_of_dotdot() {
    refused("whiteout-dotdot.tar", false, |t| {
        plain(t, ".wh...", "whiteout of '.', '..'", &[], |a| {
            a.file(".wh...", b"");
        })
    });
    refused("whiteout-dot.tar", false, |t| {
        plain(t, "dir/.wh..", "whiteout of '.', '..'", &[], |a| {
            a.dir("dir/").file("dir/.wh..", b"");
        })
    });
    refused("whiteout-empty.tar", false, |t| {
        plain(t, "dir/.wh.", "whiteout of '.', '..'", &[], |a| {
            a.file("dir/.wh.", b"");
        })
    });
}

#[test]
fn whiteout_of_own_entry() {
    refused("whiteout-own.tar", false, |t| {
        plain(t, ".wh.f", "duplicate entry", &[], |a| {
            a.file("f", b"data\n").file(".wh.f", b"");
        })
    });
}

#[test]
fn parent_is_a_file() {
    refused("parent-file.tar", false, |t| {
        plain(t, "f/x", THROUGH, &[], |a| {
            a.file("f", b"file\n").file("f/x", b"pwned\n");
        })
    });
}

#[test]
fn layer_root_not_a_directory() {
    refused("root-symlink.tar", false, |t| {
        let target = s(&t.join("outside"));
        plain(t, "./", "the layer root must be a directory", &[], |a| {
            a.symlink("./", &target).file("pwned", b"pwned\n");
        })
    });
}

#[test]
fn control_characters_in_names() {
    // A name and a link target made to break the message and drive the terminal.
    refused("control-chars.tar", false, |t| {
        plain(
            t,
            "evil\x1b[31m\nname",
            "not (yet) in this layer",
            &[],
            |a| {
                a.hardlink("evil\x1b[31m\nname", "nowhere\n\x1b[2J\x07");
            },
        )
    });
}

#[test]
fn huge_names() {
    // A 1 MiB GNU long name and a 1 MiB PAX path and link path: refused, and the error does
    // not echo all of it.
    let long = "n/".repeat(512 << 10);
    let check = |err: String| {
        assert!(err.len() < 3 * 8192, "an error of {} bytes", err.len());
        assert!(err.contains("(1048576 bytes in all)"), "{err}");
    };
    check(refused("huge-gnu.tar", false, |_| {
        let mut tar = Tar::new();
        tar.gnu_long_name(long.as_bytes()).file("short", b"x");
        Bad {
            data: gzip(&tar.bytes()),
            entry: None,
            reason: "path longer than 4096 bytes",
            absent: Vec::new(),
        }
    }));
    check(refused("huge-pax.tar", false, |_| {
        let mut tar = Tar::new();
        tar.pax(&[("path", long.as_bytes())]).file("short", b"x");
        Bad {
            data: tar.bytes(),
            entry: None,
            reason: "path longer than 4096 bytes",
            absent: Vec::new(),
        }
    }));
    check(refused("huge-linkpath.tar", false, |_| {
        let mut tar = Tar::new();
        tar.pax(&[("linkpath", long.as_bytes())])
            .hardlink("h", "short");
        Bad {
            data: tar.bytes(),
            entry: Some("h".into()),
            reason: "path longer than 4096 bytes",
            absent: Vec::new(),
        }
    }));
}

// ---------------------------------------------------------------------------------------------
// Device nodes.
// ---------------------------------------------------------------------------------------------

fn devices_tarball() -> Vec<u8> {
    Tar::new()
        .dir("dev/")
        .device(tar::EntryType::Char, "dev/null", 1, 3)
        .file("after", b"after\n")
        .bytes()
}

fn have_setpriv() -> bool {
    Command::new("which")
        .arg("setpriv")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn device_node_unprivileged() {
    if !common::is_root() || !have_setpriv() {
        eprintln!("skipped: needs root (to switch to uid 65534) and setpriv (util-linux)");
        return;
    }
    refused("devices.tar", true, |_| Bad {
        data: devices_tarball(),
        entry: Some("dev/null".into()),
        reason: "character device 1:3: creating device nodes needs root",
        absent: Vec::new(),
    });
    // A block device too.
    refused("blockdev.tar", true, |_| Bad {
        data: Tar::new()
            .device(tar::EntryType::Block, "sda", 8, 0)
            .bytes(),
        entry: Some("sda".into()),
        reason: "block device 8:0: creating device nodes needs root",
        absent: Vec::new(),
    });
}

#[test]
fn device_node_as_root() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let env = Env::new(false);
    let input = env.input("devices.tar", &devices_tarball());
    env.ok(&["import", input.to_str().unwrap(), "devices:1"]);
    let diff = env.only_layer_diff();
    let m = fs::symlink_metadata(diff.join("dev/null")).unwrap();
    assert!(m.file_type().is_char_device(), "dev/null: {m:?}");
    assert_eq!(m.rdev(), libc::makedev(1, 3));
    assert_eq!(m.mode() & 0o7777, 0o666);
    assert_eq!(fs::read(diff.join("after")).unwrap(), b"after\n");
    env.assert_fsck_clean();
}

/// A layer with a 0000 directory and a 0000 file, imported by a non-root user who cannot read
/// them back. Regressions: the import failed after the blob was stored, leaving the blob
/// behind; then the tree scan could not open the 0000 directory. Now it imports, the layer
/// keeps its 0000 modes, and fsck (which scans again) is clean.
#[test]
fn unreadable_directory_unprivileged() {
    if !common::is_root() || !have_setpriv() {
        eprintln!("skipped: needs root (to switch to uid 65534) and setpriv (util-linux)");
        return;
    }
    let env = Env::new(true);
    let good = env.input("good.tar.gz", &good_tarball());
    env.ok(&["import", good.to_str().unwrap(), "good:1"]);
    let layers = env.store_dir("layers");
    let blobs = env.store_dir("blobs/sha256");
    let images = env.ok(&["images", "-q"]);
    let input = env.input(
        "locked.tar",
        &Tar::new()
            .dir_mode("locked/", 0)
            .file("locked/f", b"inside\n")
            .file_mode("secret", b"secret\n", 0)
            .bytes(),
    );
    let outside = snapshot(env.t(), Some(&env.root()));
    let o = env.run(&["import", input.to_str().unwrap(), "locked:1"]);
    let err = String::from_utf8_lossy(&o.stderr);
    eprintln!("{err}");
    assert_same(
        &outside,
        &snapshot(env.t(), Some(&env.root())),
        "the directory around the store",
    );
    assert!(o.status.success(), "import failed:\n{err}");
    assert_eq!(env.store_dir("layers").len(), layers.len() + 1);
    assert!(env.store_dir("blobs/sha256").len() > blobs.len());
    assert_ne!(env.ok(&["images", "-q"]), images, "no new image");
    let locked_dirs: Vec<_> = std::fs::read_dir(env.root().join("layers"))
        .unwrap()
        .map(|e| e.unwrap().path().join("diff/locked"))
        .filter(|p| p.exists())
        .collect();
    assert_eq!(locked_dirs.len(), 1);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::symlink_metadata(&locked_dirs[0])
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o7777, 0, "the scan must put the 0000 mode back");
    for d in ["tmp", "trash"] {
        assert_eq!(env.store_dir(d), Vec::<String>::new(), "{d}/ not empty");
    }
    env.assert_fsck_clean();
}

// ---------------------------------------------------------------------------------------------
// Broken streams.
// ---------------------------------------------------------------------------------------------

/// A tar whose second file, `big`, is 512 KiB of noise: a cut in the middle of the (compressed)
/// stream lands in its data.
fn big_tarball() -> Vec<u8> {
    Tar::new()
        .file("small", b"small\n")
        .file("big", &noise(512 << 10, 0x9e37_79b9_7f4a_7c15))
        .file("tail", b"tail\n")
        .bytes()
}

#[test]
fn truncated_gzip() {
    refused("truncated.tar.gz", false, |_| {
        let mut data = gzip(&big_tarball());
        data.truncate(data.len() / 2);
        plain_data(data, "big", "read file data: incomplete deflate stream")
    });
}

#[test]
fn truncated_zstd() {
    refused("truncated.tar.zst", false, |_| {
        let mut data = zstd(&big_tarball());
        data.truncate(data.len() / 2);
        plain_data(data, "big", "read file data: incomplete frame")
    });
}

#[test]
fn truncated_plain_tar() {
    refused("truncated.tar", false, |_| {
        let mut data = big_tarball();
        // Header of `small`, its data block, header of `big`, then 100 KiB of its data.
        data.truncate(512 * 3 + (100 << 10));
        plain_data(
            data,
            "big",
            "archive truncated in this file's data (102400 of 524288 bytes)",
        )
    });
}

#[test]
fn corrupt_gzip() {
    // Flipped bytes in the middle of the deflate stream (a stored block: the noise does not
    // compress), so that only the gzip checksum at the end notices. No entry is to blame: the
    // error names the stream.
    refused("corrupt.tar.gz", false, |_| {
        let mut data = gzip(&big_tarball());
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        data[mid + 1] ^= 0x55;
        Bad {
            data,
            entry: None,
            reason: "corrupt or truncated Gzip stream",
            absent: Vec::new(),
        }
    });
}

#[test]
fn garbage() {
    refused("garbage.tar", false, |_| {
        let mut data = noise(8192, 42);
        data[0] = b'x'; // not a gzip or zstd magic
        Bad {
            data,
            entry: Some("(start of archive)".into()),
            reason: "malformed tar",
            absent: Vec::new(),
        }
    });
    // Short garbage: less than one tar block.
    refused("garbage-short.tar", false, |_| Bad {
        data: b"this is not a tarball\n".to_vec(),
        entry: Some("(start of archive)".into()),
        reason: "malformed tar",
        absent: Vec::new(),
    });
}

fn plain_data(data: Vec<u8>, entry: &str, reason: &'static str) -> Bad {
    Bad {
        data,
        entry: Some(entry.to_string()),
        reason,
        absent: Vec::new(),
    }
}

// ---------------------------------------------------------------------------------------------
// Positive control: unusual but legitimate archives import, and nothing is followed.
// ---------------------------------------------------------------------------------------------

fn lgetxattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let path = CString::new(p.as_os_str().as_bytes()).unwrap();
    let name = CString::new(name).unwrap();
    let mut buf = vec![0u8; 4096];
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return None;
    }
    buf.truncate(n as usize);
    Some(buf)
}

#[test]
fn positive_control() {
    let env = Env::new(false);
    let t = env.t().to_path_buf();
    let abs_target = s(&t.join("outside/target-abs"));
    let mut tar = Tar::new();
    tar.dir("./")
        .dir("./etc/")
        .file("./etc/passwd", b"root:x:0:0::/root:/bin/sh\n")
        .pax(&[("SCHILY.xattr.user.foo", b"bar")])
        .file("etc/with-xattr", b"xattr\n")
        .dir("bin/")
        .file_mode("bin/sh", b"#!shell\n", 0o755)
        .hardlink("bin/sh-hard", "bin/sh")
        .hardlink("./bin/sh-hard2", "./bin/sh")
        .file_mode("usr/bin/su", b"setuid\n", 0o4755)
        .symlink("escape-abs", &abs_target)
        .symlink("escape-rel", "../../../../victim")
        .symlink("escape-up", "../../..")
        .hardlink("escape-hard", "escape-rel")
        .fifo("run/fifo")
        .file("gone/.wh.old", b"")
        .dir("opaque/")
        .file("opaque/.wh..wh..opq", b"")
        .file("opaque/new", b"new\n")
        .dir_mode("ro/", 0o555)
        .file("ro/file", b"read-only dir\n");
    let input = env.input("good-unusual.tar.zst", &zstd(&tar.bytes()));

    let outside = snapshot(&t, Some(&env.root()));
    env.ok(&["import", input.to_str().unwrap(), "unusual:1"]);
    assert_same(
        &outside,
        &snapshot(&t, Some(&env.root())),
        "the directory around the store",
    );
    assert_eq!(env.ok(&["images", "-q"]).lines().count(), 1);
    assert!(env.store_dir("tmp").is_empty());

    let d = env.only_layer_diff();
    let meta = |p: &str| fs::symlink_metadata(d.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    assert_eq!(
        fs::read(d.join("etc/passwd")).unwrap(),
        b"root:x:0:0::/root:/bin/sh\n"
    );
    assert_eq!(
        lgetxattr(&d.join("etc/with-xattr"), "user.foo").as_deref(),
        Some(&b"bar"[..])
    );
    assert_eq!(meta("bin/sh").mode() & 0o7777, 0o755);
    assert_eq!(meta("bin/sh").nlink(), 3);
    assert_eq!(meta("bin/sh").ino(), meta("bin/sh-hard").ino());
    assert_eq!(meta("bin/sh").ino(), meta("bin/sh-hard2").ino());
    if common::is_root() {
        assert_eq!(meta("usr/bin/su").mode() & 0o7777, 0o4755);
    }
    for (link, target) in [
        ("escape-abs", abs_target.as_str()),
        ("escape-rel", "../../../../victim"),
        ("escape-up", "../../.."),
        ("escape-hard", "../../../../victim"),
    ] {
        assert!(meta(link).file_type().is_symlink(), "{link}");
        assert_eq!(
            fs::read_link(d.join(link)).unwrap(),
            Path::new(target),
            "{link}"
        );
    }
    assert_eq!(meta("escape-hard").ino(), meta("escape-rel").ino());
    assert!(!t.join("outside/target-abs").exists());
    assert!(meta("run/fifo").file_type().is_fifo());
    let wh = meta("gone/old");
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0, "{wh:?}");
    let opaque = ["trusted.overlay.opaque", "user.overlay.opaque"]
        .iter()
        .any(|k| lgetxattr(&d.join("opaque"), k).as_deref() == Some(b"y"));
    assert!(opaque, "opaque/ is not marked opaque");
    assert_eq!(fs::read(d.join("opaque/new")).unwrap(), b"new\n");
    assert_eq!(meta("ro").mode() & 0o7777, 0o555);
    assert_eq!(fs::read(d.join("ro/file")).unwrap(), b"read-only dir\n");
    assert_eq!(fs::read(env.victim()).unwrap(), VICTIM);
    assert_eq!(fs::metadata(env.victim()).unwrap().nlink(), 1);
    env.assert_fsck_clean();

    // The same content, gzip and plain, is one layer (the diff_id) with three blobs... and all
    // import cleanly.
    let plain_input = env.input("good-unusual.tar", &tar_again(&input));
    env.ok(&["import", plain_input.to_str().unwrap(), "unusual:plain"]);
    let gz_input = env.input("good-unusual.tar.gz", &gzip(&tar_again(&input)));
    env.ok(&["import", gz_input.to_str().unwrap(), "unusual:gz"]);
    assert_eq!(env.store_dir("layers").len(), 1);
    env.assert_fsck_clean();
}

/// Owner, times and xattrs of a symlink that points outside go to the symlink itself, never to
/// its target.
#[test]
fn symlink_metadata_not_followed() {
    if !common::is_root() {
        eprintln!("skipped: needs root (owners and trusted.* xattrs)");
        return;
    }
    let env = Env::new(false);
    let t = env.t().to_path_buf();
    let victim = s(&env.victim());
    let records: &[(&str, &[u8])] = &[
        ("uid", b"4242"),
        ("gid", b"4243"),
        ("mtime", b"1000.5"),
        ("SCHILY.xattr.trusted.strata-test", b"1"),
    ];
    let mut tar = Tar::new();
    tar.pax(records)
        .symlink("rel", "../../../../victim")
        .pax(records)
        .symlink("abs", &victim)
        .pax(records)
        .symlink("dir", &s(&t.join("outside")));
    let input = env.input("symlink-meta.tar", &tar.bytes());
    let outside = snapshot(&t, Some(&env.root()));
    env.ok(&["import", input.to_str().unwrap(), "meta:1"]);
    assert_same(
        &outside,
        &snapshot(&t, Some(&env.root())),
        "the directory around the store",
    );
    assert_eq!(lgetxattr(&env.victim(), "trusted.strata-test"), None);
    assert_eq!(lgetxattr(&t.join("outside"), "trusted.strata-test"), None);
    let d = env.only_layer_diff();
    for l in ["rel", "abs", "dir"] {
        let m = fs::symlink_metadata(d.join(l)).unwrap();
        assert!(m.file_type().is_symlink(), "{l}");
        assert_eq!((m.uid(), m.gid()), (4242, 4243), "{l}");
        assert_eq!((m.mtime(), m.mtime_nsec()), (1000, 500_000_000), "{l}");
        assert_eq!(
            lgetxattr(&d.join(l), "trusted.strata-test").as_deref(),
            Some(&b"1"[..]),
            "{l}"
        );
    }
    env.assert_fsck_clean();
}

/// The overlay's private xattrs (redirects, opaque marks, metacopy) are never taken from an
/// archive: they would change what the kernel's overlay shows.
#[test]
fn overlay_private_xattrs_dropped() {
    let env = Env::new(false);
    let mut tar = Tar::new();
    tar.pax(&[
        ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
        ("SCHILY.xattr.user.overlay.redirect", b"/etc"),
        ("SCHILY.xattr.user.kept", b"yes"),
    ])
    .dir("d/")
    .pax(&[
        ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
        ("SCHILY.xattr.user.overlay.opaque", b"y"),
    ])
    .dir("e/")
    .file("e/x", b"x\n")
    .pax(&[
        ("SCHILY.xattr.trusted.overlay.metacopy", b""),
        ("SCHILY.xattr.trusted.overlay.origin", b"x"),
    ])
    .file("f", b"f\n");
    let input = env.input("overlay-xattrs.tar", &tar.bytes());
    env.ok(&["import", input.to_str().unwrap(), "ovl:1"]);
    let d = env.only_layer_diff();
    for (p, k) in [
        ("d", "trusted.overlay.redirect"),
        ("d", "user.overlay.redirect"),
        ("e", "trusted.overlay.opaque"),
        ("e", "user.overlay.opaque"),
        ("f", "trusted.overlay.metacopy"),
        ("f", "trusted.overlay.origin"),
    ] {
        assert_eq!(lgetxattr(&d.join(p), k), None, "{p}: {k} was kept");
    }
    assert_eq!(
        lgetxattr(&d.join("d"), "user.kept").as_deref(),
        Some(&b"yes"[..])
    );
    env.assert_fsck_clean();
}

/// The plain tar inside a zstd file.
fn tar_again(zst: &Path) -> Vec<u8> {
    zstd::decode_all(&fs::read(zst).unwrap()[..]).unwrap()
}

#[test]
fn good_tarball_imports() {
    let env = Env::new(false);
    let input = env.input("good.tar.gz", &good_tarball());
    env.ok(&["import", input.to_str().unwrap(), "good:1"]);
    let d = env.only_layer_diff();
    assert_eq!(fs::read(d.join("etc/hostname")).unwrap(), b"good\n");
    assert_eq!(
        fs::symlink_metadata(d.join("bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777,
        0o755
    );
    env.assert_fsck_clean();
}
