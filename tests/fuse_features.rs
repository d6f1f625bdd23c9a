//! FUSE features beyond plain file operations, with kernel overlayfs as the oracle: inode flags
//! (`lsattr`/`chattr`, the FS_IOC_GETFLAGS/SETFLAGS ioctls), other ioctls (ENOTTY), POSIX ACLs
//! (`getfacl`/`setfacl`, inheritance, enforcement), file capabilities and setuid bits killed by
//! a write, and the xattrs of a new file.
//!
//! Every test builds one set of lower layers and mounts it twice: with strata
//! (`strata overlay -f`) and with kernel overlayfs (`common::mounts::KERNEL_OPTS`), each with its
//! own fresh upper and work directory, all in one temporary directory (so on one filesystem:
//! ext4 where the target directory or the system's temporary directory is ext4). The same
//! scenario runs on both; what each observes (outputs with the paths stripped, errnos, modes)
//! must be equal, and must also be the concrete expected value, so no test passes because both
//! sides did nothing.
//!
//! Needs root, /dev/fuse, kernel overlayfs and the tools lsattr/chattr (e2fsprogs),
//! getfacl/setfacl (acl), getcap/setcap (libcap2-bin), getfattr (attr) and setpriv
//! (util-linux). Skipped with a message without root, /dev/fuse or overlayfs; a missing tool
//! fails the test (scripts/install-deps.sh installs them all).

mod common;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::io::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::mounts::{
    KernelOverlay, Layer, StrataMount, URING_PARAM, UringParam, have_fuse, have_kernel_overlay,
    lgetxattr, llistxattr, lsetxattr, mount_type,
};

/// The unprivileged user of the permission scenarios (no entry in /etc/passwd needed).
const USER: u32 = 1234;

// ---------------------------------------------------------------------------------------------
// The fixture

/// Clears the immutable and append-only flags below a directory when dropped: a file left
/// immutable (by a test that failed half way) cannot be deleted, and neither can its directory.
struct Unimmutable(PathBuf);

impl Drop for Unimmutable {
    fn drop(&mut self) {
        let _ = Command::new(tool("chattr"))
            .args(["-R", "-ia"])
            .arg(&self.0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A temporary directory with one lower layer (`lower`) and, per side, an upper, a work
/// directory and a mount point. The flag guard is declared first, so it runs before the
/// directory is deleted; the mounts are locals of the test, declared after the fixture, so
/// they are gone before both.
struct Fx {
    _unimmutable: Unimmutable,
    tmp: tempfile::TempDir,
    lower: PathBuf,
}

/// Upper, work and mount point of one side.
struct Side {
    upper: PathBuf,
    work: PathBuf,
    mnt: PathBuf,
}

const EXT4: nix::sys::statfs::FsType = nix::sys::statfs::EXT4_SUPER_MAGIC;

fn is_ext4(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == EXT4)
}

/// The tools the tests run, and the package each comes from.
const TOOLS: &[(&str, &str)] = &[
    ("lsattr", "e2fsprogs"),
    ("chattr", "e2fsprogs"),
    ("getfacl", "acl"),
    ("setfacl", "acl"),
    ("getcap", "libcap2-bin"),
    ("setcap", "libcap2-bin"),
    ("getfattr", "attr"),
    ("setpriv", "util-linux"),
];

/// Where `name` is: on PATH, or in the sbin directories (root's PATH may lack them).
fn tool_path(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The path of a tool the tests need (checked by `Fx::new`).
fn tool(name: &str) -> PathBuf {
    tool_path(name).unwrap_or_else(|| PathBuf::from(name))
}

impl Fx {
    /// The fixture, or `None` (after saying why) when the machine cannot run the tests.
    fn new() -> Option<Fx> {
        if !(have_fuse() && have_kernel_overlay()) {
            eprintln!("skipped: needs root, /dev/fuse and kernel overlayfs");
            return None;
        }
        // Not a reason to skip: where the mounts work the tools must be there too, else the
        // tests would pass without testing anything.
        let missing: Vec<String> = TOOLS
            .iter()
            .filter(|(t, _)| tool_path(t).is_none())
            .map(|(t, p)| format!("{t} (Debian package {p})"))
            .collect();
        assert!(
            missing.is_empty(),
            "missing tools {}: run scripts/install-deps.sh",
            missing.join(", ")
        );
        // Every file and directory the tests create gets exactly the mode it asks for, or the
        // mode masked by 022 (the same for all tests of this process).
        // SAFETY: umask has no memory effects.
        unsafe { libc::umask(0o022) };
        // Prefer an ext4 directory (the inode flags are then ext4's, `e` among them).
        let target_tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let base = if is_ext4(&target_tmp) {
            target_tmp
        } else {
            std::env::temp_dir()
        };
        let tmp = tempfile::Builder::new()
            .prefix("strata-features-")
            .tempdir_in(&base)
            .expect("tempdir");
        // The unprivileged user must reach the mount points.
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let lower = tmp.path().join("lower");
        fs::create_dir(&lower).unwrap();
        Some(Fx {
            _unimmutable: Unimmutable(tmp.path().to_path_buf()),
            lower,
            tmp,
        })
    }

    fn layer(&self) -> Layer {
        Layer::new(&self.lower)
    }

    fn on_ext4(&self) -> bool {
        is_ext4(self.tmp.path())
    }

    /// Fresh upper, work and mount point named `name`.
    fn side(&self, name: &str) -> Side {
        let d = self.tmp.path().join(name);
        let s = Side {
            upper: d.join("upper"),
            work: d.join("work"),
            mnt: d.join("mnt"),
        };
        for p in [&s.upper, &s.work, &s.mnt] {
            fs::create_dir_all(p).unwrap();
        }
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
        s
    }

    fn strata(&self, s: &Side) -> StrataMount {
        StrataMount::new(&[&self.lower], &s.upper, &s.work, &s.mnt)
    }

    fn kernel(&self, s: &Side) -> KernelOverlay {
        KernelOverlay::new(&[&self.lower], &s.upper, &s.work, &s.mnt)
    }

    /// Both mounts of the lower layer, each over its own new upper.
    fn pair(&self) -> Pair {
        let ks = self.side("kernel");
        let ss = self.side("strata");
        let kernel = self.kernel(&ks);
        let strata = self.strata(&ss);
        Pair {
            strata,
            kernel,
            ss,
            ks,
        }
    }
}

/// A strata mount and a kernel overlayfs mount of the same lower layer.
struct Pair {
    strata: StrataMount,
    kernel: KernelOverlay,
    ss: Side,
    ks: Side,
}

impl Pair {
    /// Runs `scenario` on the kernel's side, then on strata's; returns (strata, kernel).
    fn run<T>(&self, scenario: impl Fn(&Side) -> T) -> (T, T) {
        assert_eq!(self.kernel.path(), self.ks.mnt);
        assert_eq!(self.strata.path(), self.ss.mnt);
        let k = scenario(&self.ks);
        let s = scenario(&self.ss);
        (s, k)
    }
}

// ---------------------------------------------------------------------------------------------
// Observations

/// What a scenario saw, step by step: (step, result).
#[derive(Default, PartialEq, Eq)]
struct Obs(BTreeMap<String, String>);

impl Obs {
    fn put(&mut self, step: &str, value: impl Into<String>) {
        let old = self.0.insert(step.to_string(), value.into());
        assert!(old.is_none(), "step {step:?} recorded twice");
    }

    fn get(&self, step: &str) -> &str {
        self.0
            .get(step)
            .unwrap_or_else(|| panic!("no step {step:?}"))
    }
}

impl std::fmt::Debug for Obs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (k, v) in &self.0 {
            writeln!(f, "  {k}: {v:?}")?;
        }
        Ok(())
    }
}

/// Asserts strata saw what the kernel saw, listing the steps that differ.
fn assert_same(what: &str, strata: &Obs, kernel: &Obs) {
    if strata == kernel {
        return;
    }
    let mut diff = String::new();
    for k in strata.0.keys().chain(kernel.0.keys()) {
        let (s, kv) = (strata.0.get(k), kernel.0.get(k));
        if s != kv && !diff.contains(&format!("  {k}\n")) {
            let _ = writeln!(diff, "  {k}\n    strata: {s:?}\n    kernel: {kv:?}");
        }
    }
    panic!("{what}: strata differs from kernel overlayfs:\n{diff}");
}

/// Asserts a step's concrete value on both sides.
fn expect_both(strata: &Obs, kernel: &Obs, step: &str, want: &str) {
    for (name, o) in [("kernel", kernel), ("strata", strata)] {
        assert_eq!(o.get(step), want, "{name}: step {step}\nall steps:\n{o:?}");
    }
}

/// "ok", or the errno's name.
fn res<T>(r: std::io::Result<T>) -> String {
    match r {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e.raw_os_error().unwrap_or(0)),
    }
}

fn errno_name(n: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(n))
}

/// A command's exit status and outputs.
struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `prog args` in `dir` (so that outputs name paths relative to it), in the C locale.
fn run_in(dir: &Path, prog: &str, args: &[&str]) -> Out {
    let o = Command::new(tool(prog))
        .arg0(prog)
        .args(args)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {prog}: {e}"));
    Out {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// Runs `prog args` in `dir` and asserts success; returns stdout.
fn ok_in(dir: &Path, prog: &str, args: &[&str]) -> String {
    let o = run_in(dir, prog, args);
    assert!(
        o.ok,
        "{prog} {args:?} in {} failed:\n{}{}",
        dir.display(),
        o.stdout,
        o.stderr
    );
    o.stdout
}

/// Runs `prog args` in `dir` as uid and gid `USER`, without supplementary groups.
fn run_as_user(dir: &Path, prog: &str, args: &[&str]) -> Out {
    let id = USER.to_string();
    let mut a = vec!["--reuid", &id, "--regid", &id, "--clear-groups", "--", prog];
    a.extend_from_slice(args);
    run_in(dir, "setpriv", &a)
}

/// What a command run as `USER` did: "ok: STDOUT" or "failed: STDERR" with `dir` stripped.
fn user_result(dir: &Path, prog: &str, args: &[&str]) -> String {
    let o = run_as_user(dir, prog, args);
    if o.ok {
        format!("ok: {}", o.stdout)
    } else {
        format!("failed: {}", o.stderr.trim_end())
    }
}

/// The flags column of `lsattr [-d] name` run in `dir`.
fn lsattr(dir: &Path, name: &str) -> String {
    let out = ok_in(dir, "lsattr", &["-d", name]);
    let mut f = out.split_whitespace();
    let flags = f.next().unwrap_or_default().to_string();
    assert_eq!(f.next(), Some(name), "lsattr output: {out:?}");
    flags
}

/// `getfacl -n name` run in `dir` (numeric ids; the `# file:` line names `name`).
fn getfacl(dir: &Path, name: &str) -> String {
    ok_in(dir, "getfacl", &["-n", name])
}

/// `open(O_WRONLY|O_APPEND)` and write `data`.
fn append(p: &Path, data: &[u8]) -> std::io::Result<()> {
    fs::OpenOptions::new().append(true).open(p)?.write_all(data)
}

fn mode(p: &Path) -> String {
    format!("{:04o}", fs::symlink_metadata(p).unwrap().mode() & 0o7777)
}

fn content(p: &Path) -> String {
    match fs::read(p) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) => format!("<{}>", errno_name(e.raw_os_error().unwrap_or(0))),
    }
}

/// The names of all xattrs of `p`, sorted, comma separated.
fn xattr_names(p: &Path) -> String {
    let mut v = common::mounts::llistxattr(p).expect("llistxattr");
    v.sort();
    v.join(",")
}

// ---------------------------------------------------------------------------------------------
// 1. Inode flags: lsattr / chattr

#[test]
fn lsattr_of_lower_file_and_dir_matches_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer()
        .file("f", b"a lower file\n", 0o644)
        .dir("d", 0o755)
        .file("d/inner", b"inner\n", 0o644);
    let want_file = lsattr(&fx.lower, "f");
    let want_dir = lsattr(&fx.lower, "d");
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let mut o = Obs::default();
        o.put("lsattr f", lsattr(&side.mnt, "f"));
        o.put("lsattr -d d", lsattr(&side.mnt, "d"));
        o.put("lsattr d/inner", lsattr(&side.mnt, "d/inner"));
        // Reading flags copies nothing up.
        o.put("upper entries", upper_entries(&side.upper));
        o
    });
    assert_same("lsattr of lower objects", &s, &k);
    expect_both(&s, &k, "lsattr f", &want_file);
    expect_both(&s, &k, "lsattr -d d", &want_dir);
    expect_both(&s, &k, "upper entries", "");
    if fx.on_ext4() {
        assert!(want_file.contains('e'), "ext4 file flags {want_file}");
        assert!(want_dir.contains('e'), "ext4 dir flags {want_dir}");
    } else {
        eprintln!("note: not on ext4, the `e` flag is not checked");
    }
    assert!(!want_file.contains('i'), "lower file flags {want_file}");
}

/// The names below an upper directory (recursively), sorted, comma separated.
fn upper_entries(upper: &Path) -> String {
    let mut out = Vec::new();
    fn walk(d: &Path, rel: &str, out: &mut Vec<String>) {
        for e in fs::read_dir(d).unwrap() {
            let e = e.unwrap();
            let r = format!("{rel}{}", e.file_name().to_string_lossy());
            if e.file_type().unwrap().is_dir() {
                walk(&e.path(), &format!("{r}/"), out);
            }
            out.push(r);
        }
    }
    walk(upper, "", &mut out);
    out.sort();
    out.join(",")
}

/// `chattr +i` on a lower file: copy-up, then the file can be neither written nor unlinked
/// (EPERM), `lsattr` shows `i`; `chattr -i` makes it writable again. What the mount shows.
#[test]
fn chattr_immutable_copies_up_and_blocks_writes_like_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer()
        .file("g", b"golf\n", 0o644)
        .dir("d", 0o755)
        .file("d/x", b"x\n", 0o644);
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let (m, u) = (&side.mnt, &side.upper);
        let mut o = Obs::default();
        let before = lsattr(m, "g");
        o.put("1 lsattr before has i", before.contains('i').to_string());
        o.put("2 chattr +i", run_ok_text(m, "chattr", &["+i", "g"]));
        let after = lsattr(m, "g");
        o.put("3 lsattr after", after.clone());
        o.put("3 lsattr after has i", after.contains('i').to_string());
        o.put(
            "3 lsattr after = before + i",
            (after == add_flag(&before, 'i')).to_string(),
        );
        o.put("4 copied up", u.join("g").exists().to_string());
        o.put("4 upper content", content(&u.join("g")));
        o.put("5 append", res(append(&m.join("g"), b"more\n")));
        o.put(
            "5 open O_TRUNC",
            res(fs::OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(m.join("g"))),
        );
        o.put("5 unlink", res(fs::remove_file(m.join("g"))));
        o.put("5 rename", res(fs::rename(m.join("g"), m.join("g2"))));
        o.put(
            "5 chmod",
            res(fs::set_permissions(
                m.join("g"),
                fs::Permissions::from_mode(0o600),
            )),
        );
        o.put("5 content", content(&m.join("g")));
        o.put("6 chattr -i", run_ok_text(m, "chattr", &["-i", "g"]));
        o.put("6 lsattr cleared", (lsattr(m, "g") == before).to_string());
        o.put("7 append", res(append(&m.join("g"), b"more\n")));
        o.put("7 content", content(&m.join("g")));
        o.put("7 upper content", content(&u.join("g")));
        // A directory: +i forbids creating in it.
        o.put("8 chattr +i d", run_ok_text(m, "chattr", &["+i", "d"]));
        o.put(
            "8 lsattr -d d has i",
            lsattr(m, "d").contains('i').to_string(),
        );
        o.put("8 create in d", res(fs::write(m.join("d/new"), b"n")));
        o.put("8 unlink in d", res(fs::remove_file(m.join("d/x"))));
        o.put("8 chattr -i d", run_ok_text(m, "chattr", &["-i", "d"]));
        o.put("8 create in d after", res(fs::write(m.join("d/new"), b"n")));
        o
    });
    assert_same("chattr +i / -i through the mount", &s, &k);
    for (step, want) in [
        ("1 lsattr before has i", "false"),
        ("2 chattr +i", "ok"),
        ("3 lsattr after has i", "true"),
        ("3 lsattr after = before + i", "true"),
        ("4 copied up", "true"),
        ("4 upper content", "golf\n"),
        ("5 append", "EPERM"),
        ("5 open O_TRUNC", "EPERM"),
        ("5 unlink", "EPERM"),
        ("5 rename", "EPERM"),
        ("5 chmod", "EPERM"),
        ("5 content", "golf\n"),
        ("6 chattr -i", "ok"),
        ("6 lsattr cleared", "true"),
        ("7 append", "ok"),
        ("7 content", "golf\nmore\n"),
        ("7 upper content", "golf\nmore\n"),
        ("8 chattr +i d", "ok"),
        ("8 lsattr -d d has i", "true"),
        ("8 create in d", "EPERM"),
        ("8 unlink in d", "EPERM"),
        ("8 chattr -i d", "ok"),
        ("8 create in d after", "ok"),
    ] {
        expect_both(&s, &k, step, want);
    }
}

/// "ok", or the command's stderr.
fn run_ok_text(dir: &Path, prog: &str, args: &[&str]) -> String {
    let o = run_in(dir, prog, args);
    if o.ok {
        "ok".into()
    } else {
        format!("failed: {}", o.stderr.trim_end())
    }
}

/// lsattr's flag string with `flag` set (lsattr prints each flag at its own column).
fn add_flag(flags: &str, flag: char) -> String {
    // e2fsprogs' column order: s u S D i a d A c E j I t T e C x F N P V m
    const ORDER: &str = "suSDiadAcEjItTeCxFNPVm";
    let col = ORDER.find(flag).expect("known flag");
    flags
        .chars()
        .enumerate()
        .map(|(i, c)| if i == col { flag } else { c })
        .collect()
}

/// What `chattr +i` leaves in the upper directory: kernel overlayfs keeps the `i` (and `a`)
/// flags of an overlay file in the xattr `trusted.overlay.protattr` and does not set them on
/// the upper file itself; strata's upper must be in the same format (an upper is meant to be
/// mountable by either).
#[test]
#[ignore = "known deviation: strata sets i/a on the upper file itself; the kernel keeps them in \
            trusted.overlay.protattr (see README, union filesystem deviations)"]
fn chattr_immutable_upper_format_matches_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer().file("g", b"golf\n", 0o644);
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let (m, u) = (&side.mnt, &side.upper);
        let mut o = Obs::default();
        o.put("chattr +i", run_ok_text(m, "chattr", &["+i", "g"]));
        o.put(
            "lsattr mount has i",
            lsattr(m, "g").contains('i').to_string(),
        );
        o.put(
            "lsattr upper has i",
            lsattr(u, "g").contains('i').to_string(),
        );
        o.put(
            "upper trusted.overlay.protattr",
            match common::mounts::lgetxattr(&u.join("g"), "trusted.overlay.protattr") {
                Ok(Some(v)) => String::from_utf8_lossy(&v).into_owned(),
                Ok(None) => "<absent>".into(),
                Err(e) => format!("<{e}>"),
            },
        );
        o.put("chattr -i", run_ok_text(m, "chattr", &["-i", "g"]));
        o.put(
            "lsattr upper has i after -i",
            lsattr(u, "g").contains('i').to_string(),
        );
        o
    });
    expect_both(&s, &k, "chattr +i", "ok");
    expect_both(&s, &k, "lsattr mount has i", "true");
    expect_both(&s, &k, "chattr -i", "ok");
    expect_both(&s, &k, "lsattr upper has i after -i", "false");
    assert_same("upper after chattr +i", &s, &k);
    // The kernel's format, concretely.
    expect_both(&s, &k, "lsattr upper has i", "false");
    expect_both(&s, &k, "upper trusted.overlay.protattr", "i");
}

/// An immutable file in an upper written by one implementation stays immutable when the other
/// mounts that upper.
#[test]
#[ignore = "known deviation: overlay.protattr is neither written nor read by strata (see README)"]
fn chattr_immutable_survives_remount_by_the_other_implementation() {
    let Some(fx) = Fx::new() else { return };
    fx.layer().file("g", b"golf\n", 0o644);
    // Set by each, then unmounted.
    let ks = fx.side("kernel");
    let ss = fx.side("strata");
    {
        let k = fx.kernel(&ks);
        assert_eq!(run_ok_text(k.path(), "chattr", &["+i", "g"]), "ok");
        let s = fx.strata(&ss);
        assert_eq!(run_ok_text(s.path(), "chattr", &["+i", "g"]), "ok");
    }
    // Each upper mounted by the other.
    let mut obs = Vec::new();
    for (label, upper, by_strata) in [
        ("kernel's upper mounted by strata", &ks.upper, true),
        ("strata's upper mounted by kernel", &ss.upper, false),
    ] {
        let side = fx.side(&format!("cross-{by_strata}"));
        let mut o = Obs::default();
        let check = |mnt: &Path, o: &mut Obs| {
            o.put("lsattr has i", lsattr(mnt, "g").contains('i').to_string());
            o.put("append", res(append(&mnt.join("g"), b"more\n")));
            o.put("unlink", res(fs::remove_file(mnt.join("g"))));
            o.put("content", content(&mnt.join("g")));
            o.put("chattr -i", run_ok_text(mnt, "chattr", &["-i", "g"]));
            o.put("append after -i", res(append(&mnt.join("g"), b"more\n")));
        };
        if by_strata {
            let m = StrataMount::new(&[&fx.lower], upper, &side.work, &side.mnt);
            check(m.path(), &mut o);
        } else {
            let m = KernelOverlay::new(&[&fx.lower], upper, &side.work, &side.mnt);
            check(m.path(), &mut o);
        }
        obs.push((label, o));
    }
    let mut failures = String::new();
    for (label, o) in &obs {
        for (step, want) in [
            ("lsattr has i", "true"),
            ("append", "EPERM"),
            ("unlink", "EPERM"),
            ("content", "golf\n"),
            ("chattr -i", "ok"),
            ("append after -i", "ok"),
        ] {
            if o.get(step) != want {
                let _ = writeln!(
                    failures,
                    "  {label}: {step}: got {:?}, want {want:?}",
                    o.get(step)
                );
            }
        }
    }
    assert!(
        failures.is_empty(),
        "immutable flag across implementations:\n{failures}"
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Other ioctls: ENOTTY, quietly

/// `ioctl(fd, TCGETS)`: the errno's name ("ok" if it succeeded).
fn tcgets(f: &fs::File) -> String {
    // SAFETY: an all-zero termios is a valid value, and TCGETS writes one termios.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::TCGETS, &mut t) };
    if r == 0 {
        "ok".into()
    } else {
        errno_name(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

#[test]
fn tcgets_gets_enotty_without_log_noise_like_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer().file("f", b"lower\n", 0o644).dir("d", 0o755);
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let m = &side.mnt;
        fs::write(m.join("new"), b"upper\n").unwrap();
        let mut o = Obs::default();
        for (name, dir) in [("f", false), ("new", false), ("d", true), (".", true)] {
            let f = fs::File::open(m.join(name)).unwrap();
            assert_eq!(f.metadata().unwrap().is_dir(), dir, "{name}");
            let mut seen = BTreeMap::<String, usize>::new();
            for _ in 0..100 {
                *seen.entry(tcgets(&f)).or_default() += 1;
            }
            o.put(&format!("TCGETS {name} x100"), format!("{seen:?}"));
        }
        // A write-opened file too (a copy-up of the lower file).
        let f = fs::OpenOptions::new()
            .append(true)
            .open(m.join("f"))
            .unwrap();
        o.put("TCGETS f opened for append", tcgets(&f));
        o
    });
    assert_same("TCGETS", &s, &k);
    for name in ["f", "new", "d", "."] {
        expect_both(&s, &k, &format!("TCGETS {name} x100"), "{\"ENOTTY\": 100}");
    }
    expect_both(&s, &k, "TCGETS f opened for append", "ENOTTY");
    let log = p.strata.log();
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.to_ascii_lowercase().contains("not implemented"))
        .collect();
    assert!(
        noisy.is_empty(),
        "strata logged {} 'Not Implemented' lines, e.g. {:?}\nfull log:\n{log}",
        noisy.len(),
        noisy.first()
    );
}

// ---------------------------------------------------------------------------------------------
// 3. POSIX ACLs

/// `setfacl -m u:1234:rw` on a lower file copies it up with its content and the ACL.
#[test]
fn setfacl_on_lower_file_copies_up_like_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer().file("a", b"acl content\n", 0o644);
    let lower_acl = getfacl(&fx.lower, "a");
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let (m, u) = (&side.mnt, &side.upper);
        let mut o = Obs::default();
        o.put("getfacl before", getfacl(m, "a"));
        o.put(
            "setfacl",
            run_ok_text(m, "setfacl", &["-m", "u:1234:rw", "a"]),
        );
        o.put("getfacl", getfacl(m, "a"));
        o.put("content", content(&m.join("a")));
        o.put("mode", mode(&m.join("a")));
        o.put("upper getfacl", getfacl(u, "a"));
        o.put("upper content", content(&u.join("a")));
        o.put("upper mode", mode(&u.join("a")));
        o
    });
    assert_same("setfacl on a lower file", &s, &k);
    let want = "# file: a\n# owner: 0\n# group: 0\nuser::rw-\nuser:1234:rw-\ngroup::r--\n\
                mask::rw-\nother::r--\n\n";
    expect_both(&s, &k, "getfacl before", &lower_acl);
    expect_both(&s, &k, "setfacl", "ok");
    expect_both(&s, &k, "getfacl", want);
    expect_both(&s, &k, "upper getfacl", want);
    expect_both(&s, &k, "content", "acl content\n");
    expect_both(&s, &k, "upper content", "acl content\n");
    expect_both(&s, &k, "mode", "0664");
    expect_both(&s, &k, "upper mode", "0664");
    // The lower file is untouched.
    assert_eq!(getfacl(&fx.lower, "a"), lower_acl);
    assert!(!lower_acl.contains("1234"), "{lower_acl}");
}

/// A default ACL on a new directory is inherited by a file and a directory created in it
/// (created with modes 0666 and 0777: with a default ACL the umask does not apply, the mode
/// masks the inherited entries).
#[test]
fn default_acl_is_inherited_like_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer().dir("lowerdir", 0o755);
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let (m, u) = (&side.mnt, &side.upper);
        let mut o = Obs::default();
        for dir in ["dd", "lowerdir"] {
            if dir == "dd" {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(m.join(dir))
                    .unwrap();
            }
            o.put(
                &format!("{dir}: setfacl -d"),
                run_ok_text(m, "setfacl", &["-d", "-m", "u:1234:rwx", dir]),
            );
            o.put(&format!("{dir}: getfacl dir"), getfacl(m, dir));
            let file = format!("{dir}/file");
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o666)
                .open(m.join(&file))
                .unwrap()
                .write_all(b"inherits\n")
                .unwrap();
            let sub = format!("{dir}/sub");
            fs::DirBuilder::new()
                .mode(0o777)
                .create(m.join(&sub))
                .unwrap();
            let subfile = format!("{sub}/file");
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(m.join(&subfile))
                .unwrap();
            for name in [&file, &sub, &subfile] {
                o.put(&format!("{name}: getfacl"), getfacl(m, name));
                o.put(&format!("{name}: mode"), mode(&m.join(name)));
                o.put(&format!("{name}: upper getfacl"), getfacl(u, name));
            }
        }
        o
    });
    assert_same("default ACL inheritance", &s, &k);
    let file_acl = "# file: dd/file\n# owner: 0\n# group: 0\nuser::rw-\n\
                    user:1234:rwx\t#effective:rw-\ngroup::r-x\t#effective:r--\nmask::rw-\n\
                    other::r--\n\n";
    let sub_acl = "# file: dd/sub\n# owner: 0\n# group: 0\nuser::rwx\nuser:1234:rwx\n\
                   group::r-x\nmask::rwx\nother::r-x\ndefault:user::rwx\n\
                   default:user:1234:rwx\ndefault:group::r-x\ndefault:mask::rwx\n\
                   default:other::r-x\n\n";
    let subfile_acl = "# file: dd/sub/file\n# owner: 0\n# group: 0\nuser::rw-\n\
                       user:1234:rwx\t#effective:r--\ngroup::r-x\t#effective:r--\nmask::r--\n\
                       other::---\n\n";
    for dir in ["dd", "lowerdir"] {
        let at = |t: &str| t.replace("dd/", &format!("{dir}/"));
        expect_both(&s, &k, &format!("{dir}: setfacl -d"), "ok");
        expect_both(&s, &k, &format!("{dir}/file: getfacl"), &at(file_acl));
        expect_both(&s, &k, &format!("{dir}/file: upper getfacl"), &at(file_acl));
        expect_both(&s, &k, &format!("{dir}/file: mode"), "0664");
        expect_both(&s, &k, &format!("{dir}/sub: getfacl"), &at(sub_acl));
        expect_both(&s, &k, &format!("{dir}/sub: upper getfacl"), &at(sub_acl));
        expect_both(&s, &k, &format!("{dir}/sub: mode"), "0775");
        expect_both(
            &s,
            &k,
            &format!("{dir}/sub/file: getfacl"),
            &at(subfile_acl),
        );
        expect_both(&s, &k, &format!("{dir}/sub/file: mode"), "0640");
    }
}

/// A name deleted from a lower layer (an upper whiteout) and created again is built in the
/// work directory, which has no default ACL: it must still inherit its parent's, as on the
/// kernel (regression: strata applied the umask and gave no ACL there).
#[test]
fn default_acl_is_inherited_over_a_whiteout_like_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer()
        .dir("wd", 0o755)
        .file("wd/file", b"lower\n", 0o644)
        .dir("wd/sub", 0o755);
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let m = &side.mnt;
        let mut o = Obs::default();
        o.put(
            "setfacl -d",
            run_ok_text(m, "setfacl", &["-d", "-m", "u:1234:rwx", "wd"]),
        );
        fs::remove_file(m.join("wd/file")).unwrap();
        fs::remove_dir(m.join("wd/sub")).unwrap();
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o666)
            .open(m.join("wd/file"))
            .unwrap()
            .write_all(b"again\n")
            .unwrap();
        fs::DirBuilder::new()
            .mode(0o777)
            .create(m.join("wd/sub"))
            .unwrap();
        for name in ["wd/file", "wd/sub"] {
            o.put(&format!("{name}: getfacl"), getfacl(m, name));
            o.put(&format!("{name}: mode"), mode(&m.join(name)));
        }
        o
    });
    assert_same("default ACL inheritance over a whiteout", &s, &k);
    expect_both(&s, &k, "wd/file: mode", "0664");
    expect_both(&s, &k, "wd/sub: mode", "0775");
}

/// An ACL that a lower file already has shows through the mount (no copy-up).
#[test]
fn acl_of_lower_file_is_visible_like_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer()
        .file("shared", b"shared\n", 0o640)
        .dir("ddir", 0o750);
    ok_in(
        &fx.lower,
        "setfacl",
        &["-m", "u:1234:r,g:4321:rw", "shared"],
    );
    ok_in(
        &fx.lower,
        "setfacl",
        &["-m", "u:1234:rx", "-d", "-m", "u:1234:rwx", "ddir"],
    );
    let lower_file = getfacl(&fx.lower, "shared");
    let lower_dir = getfacl(&fx.lower, "ddir");
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let mut o = Obs::default();
        o.put("getfacl shared", getfacl(&side.mnt, "shared"));
        o.put("getfacl ddir", getfacl(&side.mnt, "ddir"));
        o.put("mode shared", mode(&side.mnt.join("shared")));
        o.put("upper entries", upper_entries(&side.upper));
        o
    });
    assert_same("ACLs of lower objects", &s, &k);
    assert_eq!(
        lower_file,
        "# file: shared\n# owner: 0\n# group: 0\nuser::rw-\nuser:1234:r--\ngroup::r--\n\
         group:4321:rw-\nmask::rw-\nother::---\n\n"
    );
    assert!(lower_dir.contains("default:user:1234:rwx\n"), "{lower_dir}");
    expect_both(&s, &k, "getfacl shared", &lower_file);
    expect_both(&s, &k, "getfacl ddir", &lower_dir);
    expect_both(&s, &k, "mode shared", "0660");
    expect_both(&s, &k, "upper entries", "");
}

/// As uid 1234: a 0600 root file is readable with an ACL entry granting u:1234:r, and not
/// without one (EACCES) — for an ACL from the lower layer, and one set and removed through the
/// mount.
#[test]
fn acl_enforcement_like_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer()
        .file("granted", b"granted secret\n", 0o600)
        .file("plain", b"plain secret\n", 0o600)
        .file("later", b"later secret\n", 0o600)
        .file("dir/inside", b"inside\n", 0o644);
    fs::set_permissions(fx.lower.join("dir"), fs::Permissions::from_mode(0o700)).unwrap();
    ok_in(&fx.lower, "setfacl", &["-m", "u:1234:r", "granted"]);
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let m = &side.mnt;
        let mut o = Obs::default();
        o.put("1 cat granted", user_result(m, "cat", &["granted"]));
        o.put("1 cat plain", user_result(m, "cat", &["plain"]));
        o.put("1 cat later", user_result(m, "cat", &["later"]));
        o.put(
            "1 write granted",
            user_result(m, "sh", &["-c", "echo x >> granted"]),
        );
        o.put("1 cat dir/inside", user_result(m, "cat", &["dir/inside"]));
        // Grant through the mount.
        o.put(
            "2 setfacl later",
            run_ok_text(m, "setfacl", &["-m", "u:1234:rw", "later"]),
        );
        o.put(
            "2 setfacl dir",
            run_ok_text(m, "setfacl", &["-m", "u:1234:x", "dir"]),
        );
        o.put("2 cat later", user_result(m, "cat", &["later"]));
        o.put(
            "2 append later",
            user_result(m, "sh", &["-c", "echo x >> later"]),
        );
        o.put("2 cat dir/inside", user_result(m, "cat", &["dir/inside"]));
        o.put("2 ls dir", user_result(m, "ls", &["dir"]));
        // And take it away again.
        o.put(
            "3 setfacl -b later",
            run_ok_text(m, "setfacl", &["-b", "later"]),
        );
        o.put(
            "3 setfacl -x dir",
            run_ok_text(m, "setfacl", &["-x", "u:1234", "dir"]),
        );
        o.put("3 cat later", user_result(m, "cat", &["later"]));
        o.put("3 cat dir/inside", user_result(m, "cat", &["dir/inside"]));
        o.put("3 mode later", mode(&m.join("later")));
        o
    });
    assert_same("ACL enforcement", &s, &k);
    let denied = |f: &str| format!("failed: cat: {f}: Permission denied");
    for (step, want) in [
        ("1 cat granted", "ok: granted secret\n".to_string()),
        ("1 cat plain", denied("plain")),
        ("1 cat later", denied("later")),
        (
            "1 write granted",
            "failed: sh: 1: cannot create granted: Permission denied".into(),
        ),
        ("1 cat dir/inside", denied("dir/inside")),
        ("2 setfacl later", "ok".into()),
        ("2 setfacl dir", "ok".into()),
        ("2 cat later", "ok: later secret\n".into()),
        ("2 append later", "ok: ".into()),
        ("2 cat dir/inside", "ok: inside\n".into()),
        (
            "2 ls dir",
            "failed: ls: cannot open directory 'dir': Permission denied".into(),
        ),
        ("3 setfacl -b later", "ok".into()),
        ("3 setfacl -x dir", "ok".into()),
        ("3 cat later", denied("later")),
        ("3 cat dir/inside", denied("dir/inside")),
        ("3 mode later", "0600".into()),
    ] {
        expect_both(&s, &k, step, &want);
    }
}

// ---------------------------------------------------------------------------------------------
// 4. Capabilities and set-id bits killed by a write

/// `setcap cap_net_raw+ep` on a file of the mount (a lower file, copied up by it, and a copy
/// made in the mount): `getcap` shows it; appending to the file as root removes it.
#[test]
fn write_clears_file_capability_like_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer().file("c", b"#!/bin/sh\necho cap\n", 0o755);
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let (m, u) = (&side.mnt, &side.upper);
        let mut o = Obs::default();
        ok_in(m, "cp", &["c", "c2"]);
        for f in ["c", "c2"] {
            o.put(&format!("{f}: 1 getcap"), ok_in(m, "getcap", &[f]));
            o.put(
                &format!("{f}: 2 setcap"),
                run_ok_text(m, "setcap", &["cap_net_raw+ep", f]),
            );
            o.put(&format!("{f}: 3 getcap"), ok_in(m, "getcap", &[f]));
            o.put(&format!("{f}: 3 upper getcap"), ok_in(u, "getcap", &[f]));
            o.put(
                &format!("{f}: 4 append"),
                res(append(&m.join(f), b"# more\n")),
            );
            o.put(&format!("{f}: 5 getcap"), ok_in(m, "getcap", &[f]));
            o.put(&format!("{f}: 5 upper getcap"), ok_in(u, "getcap", &[f]));
            o.put(&format!("{f}: 5 xattrs"), xattr_names(&m.join(f)));
            o.put(&format!("{f}: 5 content"), content(&m.join(f)));
            o.put(&format!("{f}: 5 mode"), mode(&m.join(f)));
        }
        o
    });
    assert_same("capabilities killed by a write", &s, &k);
    for f in ["c", "c2"] {
        let step = |n: &str| format!("{f}: {n}");
        expect_both(&s, &k, &step("1 getcap"), "");
        expect_both(&s, &k, &step("2 setcap"), "ok");
        expect_both(&s, &k, &step("3 getcap"), &format!("{f} cap_net_raw=ep\n"));
        expect_both(
            &s,
            &k,
            &step("3 upper getcap"),
            &format!("{f} cap_net_raw=ep\n"),
        );
        expect_both(&s, &k, &step("4 append"), "ok");
        expect_both(&s, &k, &step("5 getcap"), "");
        expect_both(&s, &k, &step("5 upper getcap"), "");
        expect_both(&s, &k, &step("5 xattrs"), "");
        expect_both(&s, &k, &step("5 content"), "#!/bin/sh\necho cap\n# more\n");
        expect_both(&s, &k, &step("5 mode"), "0755");
    }
}

/// A write by a user who may write the file (not root) clears its setuid bit, and its setgid
/// bit when group-executable — for a file made in the mount and for a lower file (copy-up).
#[test]
fn unprivileged_write_clears_setuid_like_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer().file("lower-suid", b"lower\n", 0o4777);
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let (m, u) = (&side.mnt, &side.upper);
        let mut o = Obs::default();
        for (f, bits) in [("suid", 0o4777), ("sgid", 0o6777), ("root-written", 0o4777)] {
            fs::write(m.join(f), b"made\n").unwrap();
            fs::set_permissions(m.join(f), fs::Permissions::from_mode(bits)).unwrap();
        }
        for f in ["suid", "sgid", "root-written", "lower-suid"] {
            o.put(&format!("{f}: 1 mode"), mode(&m.join(f)));
        }
        for f in ["suid", "sgid", "lower-suid"] {
            o.put(
                &format!("{f}: 2 user append"),
                user_result(m, "sh", &["-c", &format!("echo w >> {f}")]),
            );
        }
        o.put(
            "root-written: 2 root append",
            res(append(&m.join("root-written"), b"w\n")),
        );
        for f in ["suid", "sgid", "root-written", "lower-suid"] {
            o.put(&format!("{f}: 3 mode"), mode(&m.join(f)));
            o.put(&format!("{f}: 3 upper mode"), mode(&u.join(f)));
            o.put(&format!("{f}: 3 content"), content(&m.join(f)));
        }
        o
    });
    assert_same("set-id bits killed by a write", &s, &k);
    for (f, before, after, was) in [
        ("suid", "4777", "0777", "made\n"),
        ("sgid", "6777", "0777", "made\n"),
        ("lower-suid", "4777", "0777", "lower\n"),
        // Root's write keeps them (root has CAP_FSETID).
        ("root-written", "4777", "4777", "made\n"),
    ] {
        expect_both(&s, &k, &format!("{f}: 1 mode"), before);
        expect_both(&s, &k, &format!("{f}: 3 mode"), after);
        expect_both(&s, &k, &format!("{f}: 3 upper mode"), after);
        expect_both(&s, &k, &format!("{f}: 3 content"), &format!("{was}w\n"));
    }
    for f in ["suid", "sgid", "lower-suid"] {
        expect_both(&s, &k, &format!("{f}: 2 user append"), "ok: ");
    }
    expect_both(&s, &k, "root-written: 2 root append", "ok");
}

/// Every other way a file's set-id bits go, for lower files (copied up by the change) as the
/// kernel does them: truncate, fallocate, open with O_TRUNC, ftruncate and a write through
/// `dd` by a user; setgid without group execute kept for a writer in the file's group and
/// dropped for one outside it; chgrp by an owner outside the file's group; chown(f, -1, -1) and chown by root (which
/// drop setuid even for root); a write by root to a setuid file with a capability (the
/// capability goes, setuid stays). strata handles these itself (FUSE_HANDLE_KILLPRIV_V2): a
/// regression test for each signal the kernel sends it.
#[test]
fn setid_bits_dropped_like_kernel() {
    let Some(fx) = Fx::new() else { return };
    let lower = &fx.lower;
    let user = USER;
    // (name, owner uid, owner gid, mode)
    let files: &[(&str, u32, u32, u32)] = &[
        ("trunc", 0, 0, 0o6777),
        ("falloc", 0, 0, 0o6777),
        ("otrunc", 0, 0, 0o6777),
        ("ftrunc", 0, 0, 0o6777),
        ("dd", 0, 0, 0o6777),
        ("sgid-nox-out", 0, 0, 0o2767),
        ("sgid-nox-in", 0, user, 0o2767),
        ("chgrp-nox", user, 0, 0o2745),
        ("chgrp-x", user, 0, 0o6755),
        ("root-chown-same", 0, 0, 0o6755),
        ("root-chown-nox", 0, 0, 0o6745),
        ("root-trunc", 0, 0, 0o6777),
        ("cap-suid", 0, 0, 0o4755),
    ];
    for (name, uid, gid, mode) in files {
        let p = lower.join(name);
        fs::write(&p, b"data\n").unwrap();
        std::os::unix::fs::chown(&p, Some(*uid), Some(*gid)).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(*mode)).unwrap();
    }
    ok_in(lower, "setcap", &["cap_net_raw+ep", "cap-suid"]);
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let m = &side.mnt;
        let mut o = Obs::default();
        let g = user.to_string();
        let as_user = |prog: &str, args: &[&str]| user_result(m, prog, args);
        o.put("trunc: run", as_user("truncate", &["-s", "2", "trunc"]));
        o.put(
            "falloc: run",
            as_user("fallocate", &["-l", "100", "falloc"]),
        );
        o.put("otrunc: run", as_user("sh", &["-c", ": > otrunc"]));
        o.put(
            "ftrunc: run",
            as_user(
                "perl",
                &["-e", "open F, '+<', 'ftrunc' or die; truncate F, 1 or die"],
            ),
        );
        o.put(
            "dd: run",
            as_user(
                "dd",
                &[
                    "if=/dev/zero",
                    "of=dd",
                    "bs=1",
                    "count=1",
                    "conv=notrunc",
                    "status=none",
                ],
            ),
        );
        o.put(
            "sgid-nox-out: run",
            as_user("sh", &["-c", "echo x >> sgid-nox-out"]),
        );
        // The user in the file's group: setpriv with that group as its own.
        o.put(
            "sgid-nox-in: run",
            user_result(m, "sh", &["-c", "echo x >> sgid-nox-in"]),
        );
        o.put("chgrp-nox: run", as_user("chgrp", &[&g, "chgrp-nox"]));
        o.put("chgrp-x: run", as_user("chgrp", &[&g, "chgrp-x"]));
        o.put(
            "root-chown-same: run",
            res(std::os::unix::fs::chown(
                m.join("root-chown-same"),
                None,
                None,
            )),
        );
        o.put(
            "root-chown-nox: run",
            res(std::os::unix::fs::chown(
                m.join("root-chown-nox"),
                Some(5),
                None,
            )),
        );
        o.put(
            "root-trunc: run",
            res(fs::OpenOptions::new()
                .write(true)
                .open(m.join("root-trunc"))
                .and_then(|f| f.set_len(1))),
        );
        o.put("cap-suid: run", res(append(&m.join("cap-suid"), b"x\n")));
        o.put("cap-suid: getcap", ok_in(m, "getcap", &["cap-suid"]));
        for (name, ..) in files {
            o.put(&format!("{name}: mode"), mode(&m.join(name)));
            o.put(&format!("{name}: upper mode"), mode(&side.upper.join(name)));
        }
        o
    });
    assert_same("set-id bits dropped", &s, &k);
    for (name, want) in [
        ("trunc", "0777"),
        ("falloc", "0777"),
        ("otrunc", "0777"),
        ("ftrunc", "0777"),
        ("dd", "0777"),
        ("sgid-nox-out", "0767"),
        ("sgid-nox-in", "2767"),
        ("chgrp-nox", "0745"),
        ("chgrp-x", "0755"),
        ("root-chown-same", "0755"),
        ("root-chown-nox", "2745"),
        ("root-trunc", "6777"),
        ("cap-suid", "4755"),
    ] {
        expect_both(&s, &k, &format!("{name}: mode"), want);
        expect_both(&s, &k, &format!("{name}: upper mode"), want);
    }
    expect_both(&s, &k, "cap-suid: getcap", "");
}

// ---------------------------------------------------------------------------------------------
// 5. A new file has no xattrs

#[test]
fn new_file_has_no_xattrs_like_kernel() {
    let Some(fx) = Fx::new() else { return };
    fx.layer().dir("d", 0o755).file("d/old", b"old\n", 0o644);
    let p = fx.pair();
    let (s, k) = p.run(|side| {
        let (m, u) = (&side.mnt, &side.upper);
        let mut o = Obs::default();
        for f in ["new", "d/new"] {
            let mut h = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(m.join(f))
                .unwrap();
            h.write_all(b"first\n").unwrap();
            h.write_all(&vec![b'x'; 200_000]).unwrap();
            drop(h);
            append(&m.join(f), b"appended\n").unwrap();
            let o2 = run_in(m, "getfattr", &["-d", "-m", "-", f]);
            o.put(&format!("{f}: getfattr ok"), o2.ok.to_string());
            o.put(&format!("{f}: getfattr"), o2.stdout);
            o.put(&format!("{f}: xattrs"), xattr_names(&m.join(f)));
            o.put(&format!("{f}: upper xattrs"), xattr_names(&u.join(f)));
            o.put(
                &format!("{f}: size"),
                fs::metadata(m.join(f)).unwrap().len().to_string(),
            );
        }
        o
    });
    assert_same("xattrs of a new file", &s, &k);
    for f in ["new", "d/new"] {
        expect_both(&s, &k, &format!("{f}: getfattr ok"), "true");
        expect_both(&s, &k, &format!("{f}: getfattr"), "");
        expect_both(&s, &k, &format!("{f}: xattrs"), "");
        expect_both(&s, &k, &format!("{f}: upper xattrs"), "");
        expect_both(&s, &k, &format!("{f}: size"), "200015");
    }
}

// ---------------------------------------------------------------------------------------------
// 6. Requests the kernel sends

/// A large lower directory on a fresh mount, listed whole and then each entry stat'ed (as `du`
/// and `find -size` do, through fts): every entry's attributes came with the listing
/// (READDIRPLUS all the way), so no entry is looked up again. With FUSE_READDIRPLUS_AUTO the
/// kernel asked for attributes in the first 32 KiB of the listing only, and each later entry
/// cost a LOOKUP (`du` of the benchmark fixture sent 10,348).
#[test]
fn large_listing_with_attributes_sends_no_lookups() {
    let Some(fx) = Fx::new() else { return };
    let layer = fx.layer();
    layer.dir("big", 0o755);
    for i in 0..1000 {
        layer.file(&format!("big/file-with-a-longish-name-{i:04}"), b"x", 0o644);
    }
    let side = fx.side("strata");
    let m = StrataMount::with_log(
        &[&fx.lower],
        &side.upper,
        &side.work,
        &side.mnt,
        "",
        "warn,fuser::request=debug,strata::request=debug",
    );
    let big = side.mnt.join("big");
    let names: Vec<PathBuf> = fs::read_dir(&big)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(names.len(), 1000);
    for p in &names {
        assert_eq!(fs::symlink_metadata(p).unwrap().len(), 1);
    }
    let log = m.log();
    let lookups: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" LOOKUP ") && l.contains("file-with-a-longish-name"))
        .collect();
    assert!(
        log.contains("READDIRPLUS"),
        "the listing was not logged: is the request log on?"
    );
    assert!(
        lookups.is_empty(),
        "{} entries looked up again after the listing, e.g. {:?}",
        lookups.len(),
        lookups.first()
    );
}

// ---------------------------------------------------------------------------------------------
// 7. Mount life cycle

/// A server whose mount was unmounted leaves alone the new mount made at the same place
/// before it exited. fuser 0.18 unmounted the path once more when its session ended (it takes
/// an ended connection for a live one), which took a container's root away when the container
/// started right after its `strata mount` was unmounted (seen once in CI: pivot_root EBUSY).
/// The first server is stopped while the mounts change hands, so that it ends last.
#[test]
fn an_ended_server_leaves_the_next_mount_at_its_place_alone() {
    let Some(fx) = Fx::new() else { return };
    fx.layer().file("f", b"first\n", 0o644);
    let second = fx.tmp.path().join("second-lower");
    Layer::new(&second).file("f", b"second\n", 0o644);
    let a = fx.side("a");
    let b = fx.side("b");
    let mnt = fx.tmp.path().join("mnt");
    fs::create_dir(&mnt).unwrap();
    let mut first = StrataMount::new(&[&fx.lower], &a.upper, &a.work, &mnt);
    assert_eq!(content(&mnt.join("f")), "first\n");
    let pid = first.pid().to_string();
    ok_in(fx.tmp.path(), "kill", &["-STOP", &pid]);
    // umount(8) would stat the mount point and wait for the stopped server. umount2 itself
    // may wait too: over io_uring a request the kernel handed to a stopped queue thread (the
    // RELEASE of the read above, say) keeps the connection alive until that thread runs again,
    // and the kernel waits for it after it has taken the mount away. So the unmount runs on its
    // own thread, and the next mount is made as soon as the place is free.
    let unmounting = {
        let mnt = mnt.clone();
        std::thread::spawn(move || nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while mount_type(&mnt).is_some() {
        assert!(Instant::now() < deadline, "the first mount is still there");
        std::thread::sleep(Duration::from_millis(5));
    }
    let next = StrataMount::new(&[&second], &b.upper, &b.work, &mnt);
    assert_eq!(content(&mnt.join("f")), "second\n");
    ok_in(fx.tmp.path(), "kill", &["-CONT", &pid]);
    unmounting
        .join()
        .expect("the unmounting thread")
        .expect("umount2");
    assert!(first.wait_exit(), "the first server did not exit");
    assert_eq!(
        content(&mnt.join("f")),
        "second\n",
        "the first server took the next mount away"
    );
    drop(next);
}

// ---------------------------------------------------------------------------------------------
// 8. Transports

/// Runs the same small workload on `mnt`: reads, writes (large ones too), creates, renames,
/// links, xattrs, a listing longer than one reply, statfs; returns nothing, asserts all.
fn transport_workload(mnt: &Path) {
    assert_eq!(
        content(&mnt.join("dir/lower.txt")),
        "from the lower layer\n"
    );
    // A write larger than one request, read back.
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(mnt.join("big"), &big).unwrap();
    assert!(
        fs::read(mnt.join("big")).unwrap() == big,
        "big file differs"
    );
    // Copy-up of the lower file by an append.
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(mnt.join("dir/lower.txt"))
        .unwrap();
    f.write_all(b"appended\n").unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert_eq!(
        content(&mnt.join("dir/lower.txt")),
        "from the lower layer\nappended\n"
    );
    fs::create_dir(mnt.join("new")).unwrap();
    for i in 0..300 {
        fs::write(mnt.join(format!("new/entry-with-a-long-name-{i:03}")), b"e").unwrap();
    }
    let mut names: Vec<String> = fs::read_dir(mnt.join("new"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 300);
    assert_eq!(names[299], "entry-with-a-long-name-299");
    fs::rename(
        mnt.join("new/entry-with-a-long-name-000"),
        mnt.join("moved"),
    )
    .unwrap();
    fs::hard_link(mnt.join("moved"), mnt.join("linked")).unwrap();
    assert_eq!(fs::metadata(mnt.join("linked")).unwrap().nlink(), 2);
    std::os::unix::fs::symlink("moved", mnt.join("sym")).unwrap();
    assert_eq!(fs::read_link(mnt.join("sym")).unwrap(), Path::new("moved"));
    fs::remove_file(mnt.join("linked")).unwrap();
    fs::remove_file(mnt.join("dir/gone.txt")).unwrap();
    assert!(!mnt.join("dir/gone.txt").exists());
    fs::set_permissions(mnt.join("moved"), fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(
        fs::metadata(mnt.join("moved")).unwrap().mode() & 0o777,
        0o600
    );
    lsetxattr(&mnt.join("moved"), "user.k", b"v").unwrap();
    assert_eq!(
        lgetxattr(&mnt.join("moved"), "user.k").unwrap().as_deref(),
        Some(&b"v"[..])
    );
    assert!(
        llistxattr(&mnt.join("moved"))
            .unwrap()
            .contains(&"user.k".to_string())
    );
    for _ in 0..300 {
        assert_eq!(lgetxattr(&mnt.join("big"), "user.missing").unwrap(), None);
    }
    let st = nix::sys::statvfs::statvfs(mnt).unwrap();
    assert!(st.blocks() > 0);
    fs::remove_dir_all(mnt.join("new")).unwrap();
}

/// With the kernel's `enable_uring` on, strata (as root) takes every request but INIT, FORGET
/// and INTERRUPT over io_uring, one queue per CPU; with `STRATA_NO_IO_URING` it keeps to
/// `/dev/fuse`. Both serve the same union, with file data by passthrough or through the
/// server. The request logs tell which way the requests came.
#[test]
fn requests_take_io_uring_when_the_kernel_offers_it() {
    let Some(fx) = Fx::new() else { return };
    if !Path::new(URING_PARAM).exists() {
        eprintln!("skipped: no {URING_PARAM} (kernel without FUSE over io_uring)");
        return;
    }
    let _on = UringParam::set(true);
    let layer = fx.layer();
    layer.dir("dir", 0o755);
    layer.file("dir/lower.txt", b"from the lower layer\n", 0o644);
    layer.file("dir/gone.txt", b"x", 0o644);
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, Env, bool); 3] = [
        ("ring", &[], true),
        ("ring-userspace-io", &[("STRATA_NO_PASSTHROUGH", "1")], true),
        ("dev-fuse", &[("STRATA_NO_IO_URING", "1")], false),
    ];
    for (name, env, ring) in cases {
        let side = fx.side(name);
        let m = StrataMount::with_env(
            &[&fx.lower],
            &side.upper,
            &side.work,
            &side.mnt,
            "",
            "info,fuser::request=debug,strata::request=debug",
            env,
        );
        transport_workload(&side.mnt);
        let log = m.stop();
        let over_ring = log
            .lines()
            .filter(|l| l.contains("ring unique:") && l.contains("GETXATTR"))
            .count();
        let over_dev = log
            .lines()
            .filter(|l| !l.contains("ring unique:") && l.contains("GETXATTR"))
            .count();
        let served = log
            .lines()
            .find_map(|l| {
                l.split("io_uring: ")
                    .nth(1)?
                    .strip_suffix(" requests served over the ring")
            })
            .and_then(|n| n.trim().parse::<u64>().ok());
        if ring {
            assert!(log.contains("requests: io_uring"), "{name}: {log}");
            assert!(
                over_ring >= 300,
                "{name}: {over_ring} GETXATTRs over the ring"
            );
            assert_eq!(over_dev, 0, "{name}: GETXATTRs came over /dev/fuse");
            assert!(
                served.is_some_and(|n| n >= 1000),
                "{name}: served {served:?}"
            );
        } else {
            assert!(!log.contains("requests: io_uring"), "{name}: {log}");
            assert_eq!(over_ring, 0, "{name}: requests came over the ring");
            assert!(
                over_dev >= 300,
                "{name}: {over_dev} GETXATTRs over /dev/fuse"
            );
            assert_eq!(served, None, "{name}: a ring served requests");
        }
    }
}
