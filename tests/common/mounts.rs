//! Mounts for the union tests, and what they compare: RAII guards for a strata FUSE mount
//! ([`StrataMount`], the real `strata overlay -f` binary) and a kernel overlayfs mount
//! ([`KernelOverlay`], the oracle), both unmounted in `Drop` (also when a test panics); a builder
//! of layer directories in kernel overlayfs format ([`Layer`]); and a tree normalizer
//! ([`tree`]) that lists what a mount shows in a form two mounts can be compared by.

use std::collections::{BTreeMap, HashMap};
use std::ffi::CString;
use std::fs;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

use super::strata_bin;

/// The options kernel overlayfs is mounted with as the oracle: the features strata does not
/// emulate are off, so both write the same upper format.
pub const KERNEL_OPTS: &str = "index=off,redirect_dir=off,metacopy=off,xino=off";

/// The filesystem type of `mnt` in /proc/self/mounts, if it is a mount point.
pub fn mount_type(mnt: &Path) -> Option<String> {
    let text = fs::read_to_string("/proc/self/mounts").ok()?;
    let want = mnt.as_os_str().as_bytes();
    // The last matching line is the mount on top.
    text.lines().rev().find_map(|l| {
        let mut f = l.split(' ');
        let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
        (unescape_mount_field(dir) == want).then(|| kind.to_string())
    })
}

fn unescape_mount_field(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                out.push((oct[0] - b'0') * 64 + (oct[1] - b'0') * 8 + (oct[2] - b'0'));
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn lowerdir_opt(lowers: &[&Path]) -> String {
    lowers
        .iter()
        .map(|l| l.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Unmounts `mnt`, lazily when a plain unmount fails (busy, or its server gone).
fn umount_quietly(mnt: &Path) {
    if mount_type(mnt).is_none() {
        return;
    }
    let ok = Command::new("umount")
        .arg(mnt)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount")
            .arg("-l")
            .arg(mnt)
            .stderr(Stdio::null())
            .status();
    }
}

/// A strata FUSE mount served by `strata overlay -f` in a child process.
pub struct StrataMount {
    child: Option<Child>,
    mnt: PathBuf,
    log: PathBuf,
}

impl StrataMount {
    /// Mounts `lowers` (top first), `upper` and `work` at `mnt` and waits until the mount is
    /// there. Panics (after cleaning up) when the server exits or the mount does not appear.
    pub fn new(lowers: &[&Path], upper: &Path, work: &Path, mnt: &Path) -> StrataMount {
        StrataMount::with_options(lowers, upper, work, mnt, "")
    }

    /// [`StrataMount::new`] with more `-o` options (`extra`, comma separated; may be empty).
    pub fn with_options(
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        mnt: &Path,
        extra: &str,
    ) -> StrataMount {
        StrataMount::with_log(lowers, upper, work, mnt, extra, "warn")
    }

    /// [`StrataMount::with_options`] with the server's log filter (`--log-level`, e.g.
    /// `warn,fuser::request=debug,strata::request=debug` to log every request, whichever way
    /// it came; read it with [`StrataMount::log`]).
    pub fn with_log(
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        mnt: &Path,
        extra: &str,
        log_filter: &str,
    ) -> StrataMount {
        StrataMount::with_env(lowers, upper, work, mnt, extra, log_filter, &[])
    }

    /// [`StrataMount::with_log`] with more environment for the server (e.g.
    /// `STRATA_NO_IO_URING=1`).
    pub fn with_env(
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        mnt: &Path,
        extra: &str,
        log_filter: &str,
        env: &[(&str, &str)],
    ) -> StrataMount {
        let mut opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir_opt(lowers),
            upper.display(),
            work.display()
        );
        if !extra.is_empty() {
            opts.push(',');
            opts.push_str(extra);
        }
        let log = mnt.with_extension("strata.log");
        let logf = fs::File::create(&log).expect("create the server's log");
        let child = Command::new(strata_bin())
            .args(["--log-level", log_filter, "overlay", "-f", "-o", &opts])
            .arg(mnt)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or("warn".into()),
            )
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()
            .expect("spawn strata overlay -f");
        let mut m = StrataMount {
            child: Some(child),
            mnt: mnt.to_path_buf(),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            // strata asks for the subtype `strata`; fuser's own mount(2) (no fusermount) passes
            // the type "fuse" without it, so both spellings are a strata mount here.
            if let Some(t) = mount_type(mnt)
                && (t == "fuse.strata" || t == "fuse")
            {
                return m;
            }
            if let Some(st) = m.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = fs::read_to_string(&m.log).unwrap_or_default();
                panic!("strata overlay exited ({st}) before mounting {opts}:\n{log}");
            }
            if Instant::now() > deadline {
                let log = fs::read_to_string(&m.log).unwrap_or_default();
                drop(m);
                panic!(
                    "strata overlay did not mount {} in time:\n{log}",
                    mnt.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// What the server wrote to stderr.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Unmounts now (the same as dropping the guard).
    pub fn unmount(self) {}

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).expect("server running")
    }

    /// Waits up to 10 s for the server to exit by itself; whether it did.
    pub fn wait_exit(&mut self) -> bool {
        let Some(c) = self.child.as_mut() else {
            return true;
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                self.child = None;
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Kills the server with SIGKILL and reaps it, leaving its mount stale.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl StrataMount {
    /// Unmounts, waits for the server to exit and returns its whole log.
    pub fn stop(mut self) -> String {
        self.end();
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn end(&mut self) {
        umount_quietly(&self.mnt);
        if let Some(mut c) = self.child.take() {
            // The server exits by itself once the mount is gone; kill it if it does not.
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        // A lazy unmount may leave it listed until the last user goes: make sure it is gone.
        umount_quietly(&self.mnt);
    }
}

impl Drop for StrataMount {
    fn drop(&mut self) {
        self.end();
        let _ = fs::remove_file(&self.log);
    }
}

/// A kernel overlayfs mount (the oracle), unmounted when dropped.
pub struct KernelOverlay {
    mnt: PathBuf,
}

impl KernelOverlay {
    /// `mount -t overlay overlay -o lowerdir=…,upperdir=…,workdir=…,KERNEL_OPTS MNT`.
    pub fn new(lowers: &[&Path], upper: &Path, work: &Path, mnt: &Path) -> KernelOverlay {
        KernelOverlay::with_options(lowers, upper, work, mnt, KERNEL_OPTS)
    }

    /// [`KernelOverlay::new`] with other feature options than [`KERNEL_OPTS`].
    pub fn with_options(
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        mnt: &Path,
        features: &str,
    ) -> KernelOverlay {
        let opts = format!(
            "lowerdir={},upperdir={},workdir={},{features}",
            lowerdir_opt(lowers),
            upper.display(),
            work.display()
        );
        let o = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &opts])
            .arg(mnt)
            .stdin(Stdio::null())
            .output()
            .expect("run mount");
        assert!(
            o.status.success(),
            "mount -t overlay -o {opts} {}: {}",
            mnt.display(),
            String::from_utf8_lossy(&o.stderr)
        );
        KernelOverlay {
            mnt: mnt.to_path_buf(),
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// Unmounts now (the same as dropping the guard).
    pub fn unmount(self) {}
}

impl Drop for KernelOverlay {
    fn drop(&mut self) {
        umount_quietly(&self.mnt);
    }
}

/// Whether kernel overlayfs can be mounted here (root and the `overlay` filesystem).
pub fn have_kernel_overlay() -> bool {
    super::is_root()
        && (fs::read_to_string("/proc/filesystems").is_ok_and(|s| s.contains("\toverlay\n"))
            || Command::new("modprobe")
                .arg("overlay")
                .status()
                .is_ok_and(|s| s.success()))
}

/// Whether FUSE can be mounted here.
pub fn have_fuse() -> bool {
    super::is_root() && Path::new("/dev/fuse").exists()
}

// ---------------------------------------------------------------------------------------------
// xattrs by path (no following of symlinks)

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("no NUL in a path")
}

/// `lsetxattr`.
pub fn lsetxattr(p: &Path, key: &str, value: &[u8]) -> std::io::Result<()> {
    let (p, k) = (cpath(p), CString::new(key).unwrap());
    // SAFETY: NUL-terminated strings and a value valid for its length.
    let r = unsafe {
        libc::lsetxattr(
            p.as_ptr(),
            k.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `lgetxattr`; `Ok(None)` when the attribute does not exist.
pub fn lgetxattr(p: &Path, key: &str) -> std::io::Result<Option<Vec<u8>>> {
    let (p, k) = (cpath(p), CString::new(key).unwrap());
    let mut buf = vec![0u8; 65536];
    // SAFETY: NUL-terminated strings and a buffer valid for its length.
    let r = unsafe { libc::lgetxattr(p.as_ptr(), k.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENODATA) => Ok(None),
            _ => Err(e),
        };
    }
    buf.truncate(r as usize);
    Ok(Some(buf))
}

/// `llistxattr`.
pub fn llistxattr(p: &Path) -> std::io::Result<Vec<String>> {
    let p = cpath(p);
    let mut buf = vec![0u8; 65536];
    // SAFETY: a NUL-terminated path and a buffer valid for its length.
    let r = unsafe { libc::llistxattr(p.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate(r as usize);
    Ok(buf
        .split(|b| *b == 0)
        .filter(|n| !n.is_empty())
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

// ---------------------------------------------------------------------------------------------
// Layer directories in kernel overlayfs format

/// Builds a layer directory: every method takes a path relative to the layer's root and
/// creates missing parents (mode 0755).
pub struct Layer {
    pub root: PathBuf,
}

impl Layer {
    /// A layer at `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> Layer {
        let root = root.into();
        fs::create_dir_all(&root).expect("create layer root");
        Layer { root }
    }

    fn at(&self, rel: &str) -> PathBuf {
        let p = self.root.join(rel);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).expect("create parents");
        }
        p
    }

    /// A regular file with `content` and `mode`.
    pub fn file(&self, rel: &str, content: &[u8], mode: u32) -> &Layer {
        let p = self.at(rel);
        fs::write(&p, content).expect("write file");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        self
    }

    /// A directory with `mode`.
    pub fn dir(&self, rel: &str, mode: u32) -> &Layer {
        let p = self.at(rel);
        fs::create_dir_all(&p).expect("mkdir");
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        self
    }

    /// A symlink to `target`.
    pub fn symlink(&self, rel: &str, target: &str) -> &Layer {
        std::os::unix::fs::symlink(target, self.at(rel)).expect("symlink");
        self
    }

    /// A second name `rel` for the existing `existing`.
    pub fn hardlink(&self, existing: &str, rel: &str) -> &Layer {
        fs::hard_link(self.root.join(existing), self.at(rel)).expect("link");
        self
    }

    /// A kernel whiteout: a character device 0/0.
    pub fn whiteout(&self, rel: &str) -> &Layer {
        let p = self.at(rel);
        nix::sys::stat::mknod(
            &p,
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            0,
        )
        .expect("mknod whiteout");
        self
    }

    /// An OCI whiteout (`.wh.NAME` beside where `rel` would be); kernel overlayfs does not read it.
    pub fn oci_whiteout(&self, rel: &str) -> &Layer {
        let p = self.at(rel);
        let name = format!(".wh.{}", p.file_name().unwrap().to_str().unwrap());
        fs::write(p.with_file_name(name), b"").expect("write .wh. file");
        self
    }

    /// An opaque directory (`trusted.overlay.opaque=y`).
    pub fn opaque_dir(&self, rel: &str, mode: u32) -> &Layer {
        self.dir(rel, mode);
        lsetxattr(&self.root.join(rel), "trusted.overlay.opaque", b"y").expect("set opaque");
        self
    }

    /// A directory made opaque by the OCI marker `.wh..wh..opq`.
    pub fn oci_opaque_dir(&self, rel: &str, mode: u32) -> &Layer {
        self.dir(rel, mode);
        fs::write(self.root.join(rel).join(".wh..wh..opq"), b"").expect("write opq marker");
        self
    }

    /// A named pipe.
    pub fn fifo(&self, rel: &str, mode: u32) -> &Layer {
        nix::unistd::mkfifo(
            &self.at(rel),
            nix::sys::stat::Mode::from_bits_truncate(mode),
        )
        .expect("mkfifo");
        self
    }

    /// An extended attribute.
    pub fn xattr(&self, rel: &str, key: &str, value: &[u8]) -> &Layer {
        lsetxattr(&self.root.join(rel), key, value).expect("setxattr");
        self
    }

    /// Owner (not following a symlink).
    pub fn chown(&self, rel: &str, uid: u32, gid: u32) -> &Layer {
        std::os::unix::fs::lchown(self.root.join(rel), Some(uid), Some(gid)).expect("lchown");
        self
    }

    /// Modification (and access) time, in seconds and nanoseconds.
    pub fn mtime(&self, rel: &str, sec: i64, nsec: i64) -> &Layer {
        let t = nix::sys::time::TimeSpec::new(sec, nsec);
        nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &self.root.join(rel),
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )
        .expect("utimensat");
        self
    }
}

// ---------------------------------------------------------------------------------------------
// The normalized tree

/// What a mount shows below `root`, one line per path (sorted), tab separated:
/// `type mode uid:gid size content hardlink-group xattrs`, where content is the sha256 of a
/// regular file, the target of a symlink or `major,minor` of a device; the hard-link group is
/// the first path (sorted) of the inode among the listed non-directories when more than one
/// path shows it, else `-`; xattrs are all but the overlay's own (`trusted.overlay.*`).
/// Inode numbers, times, link counts and directory sizes are not listed.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut paths: Vec<(String, PathBuf)> = Vec::new();
    walk(root, "", &mut paths);
    paths.sort();
    let mut groups: HashMap<(u64, u64), Vec<String>> = HashMap::new();
    let mut rows: Vec<(String, fs::Metadata, PathBuf)> = Vec::new();
    for (rel, p) in paths {
        let md = fs::symlink_metadata(&p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        if !md.is_dir() {
            groups
                .entry((md.dev(), md.ino()))
                .or_default()
                .push(rel.clone());
        }
        rows.push((rel, md, p));
    }
    let mut out = BTreeMap::new();
    for (rel, md, p) in rows {
        let ft = md.file_type();
        let (t, content) = if ft.is_file() {
            ("f", sha256_file(&p))
        } else if ft.is_dir() {
            ("d", "-".into())
        } else if ft.is_symlink() {
            (
                "l",
                String::from_utf8_lossy(fs::read_link(&p).unwrap().as_os_str().as_bytes())
                    .into_owned(),
            )
        } else if ft.is_fifo() {
            ("p", "-".into())
        } else if ft.is_char_device() {
            (
                "c",
                format!("{},{}", libc::major(md.rdev()), libc::minor(md.rdev())),
            )
        } else if ft.is_block_device() {
            (
                "b",
                format!("{},{}", libc::major(md.rdev()), libc::minor(md.rdev())),
            )
        } else if ft.is_socket() {
            ("s", "-".into())
        } else {
            ("?", "-".into())
        };
        let hl = match groups.get(&(md.dev(), md.ino())) {
            Some(g) if !md.is_dir() && g.len() > 1 => g[0].clone(),
            _ => "-".into(),
        };
        let mut xs: Vec<String> = llistxattr(&p)
            .unwrap_or_default()
            .into_iter()
            .filter(|k| !k.starts_with("trusted.overlay."))
            .collect();
        xs.sort();
        let xattrs = xs
            .iter()
            .map(|k| {
                let v = lgetxattr(&p, k).ok().flatten().unwrap_or_default();
                format!("{k}={}", hex::encode(v))
            })
            .collect::<Vec<_>>()
            .join(",");
        let size = if ft.is_file() { md.size() } else { 0 };
        out.insert(
            rel,
            format!(
                "{t}\t{:04o}\t{}:{}\t{size}\t{content}\t{hl}\t{}",
                md.mode() & 0o7777,
                md.uid(),
                md.gid(),
                if xattrs.is_empty() { "-" } else { &xattrs }
            ),
        );
    }
    out
}

fn walk(dir: &Path, rel: &str, out: &mut Vec<(String, PathBuf)>) {
    let rd = fs::read_dir(dir).unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
    for e in rd {
        let e = e.unwrap_or_else(|e| panic!("readdir {}: {e}", dir.display()));
        let name = e.file_name();
        let r = format!("{rel}/{}", String::from_utf8_lossy(name.as_bytes()));
        let p = e.path();
        let is_dir = e.file_type().is_ok_and(|t| t.is_dir());
        out.push((r.clone(), p.clone()));
        if is_dir {
            walk(&p, &r, out);
        }
    }
}

fn sha256_file(p: &Path) -> String {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    hex::encode(h.finalize())
}

/// The differences of two normalized trees (`None` when equal), labelled `a` and `b`.
pub fn tree_diff(
    a_name: &str,
    a: &BTreeMap<String, String>,
    b_name: &str,
    b: &BTreeMap<String, String>,
) -> Option<String> {
    let mut out = String::new();
    for (k, v) in a {
        match b.get(k) {
            None => out.push_str(&format!("  only in {a_name}: {k}\t{v}\n")),
            Some(w) if w != v => {
                out.push_str(&format!("  {k}\n    {a_name}: {v}\n    {b_name}: {w}\n"))
            }
            _ => {}
        }
    }
    for (k, v) in b {
        if !a.contains_key(k) {
            out.push_str(&format!("  only in {b_name}: {k}\t{v}\n"));
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A one-line-per-path rendering of a normalized tree (for messages).
pub fn tree_text(t: &BTreeMap<String, String>) -> String {
    t.iter().map(|(k, v)| format!("{k}\t{v}\n")).collect()
}

/// FUSE mounts under `prefix` (for a test to assert it left none).
pub fn fuse_mounts_under(prefix: &Path) -> Vec<String> {
    let text = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let want = prefix.as_os_str().as_bytes();
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let (_, dir, kind) = (f.next()?, f.next()?, f.next()?);
            (kind.starts_with("fuse") && unescape_mount_field(dir).starts_with(want))
                .then(|| dir.to_string())
        })
        .collect()
}

/// The kernel's switch for FUSE over io_uring (Linux 6.14+): the one strata reads.
pub const URING_PARAM: &str = strata::fuse::IO_URING_PARAM;

/// Sets `enable_uring` for a test and restores its old value when dropped.
pub struct UringParam {
    old: String,
}

impl UringParam {
    /// Panics when the kernel has no such switch (check [`URING_PARAM`] first).
    pub fn set(on: bool) -> UringParam {
        let old = fs::read_to_string(URING_PARAM).expect("read enable_uring");
        fs::write(URING_PARAM, if on { "1" } else { "0" }).expect("write enable_uring");
        UringParam {
            old: old.trim().to_string(),
        }
    }
}

impl Drop for UringParam {
    fn drop(&mut self) {
        if let Err(e) = fs::write(URING_PARAM, &self.old) {
            eprintln!("restoring {URING_PARAM} to {}: {e}", self.old);
        }
    }
}
