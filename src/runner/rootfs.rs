//! Inside the new namespaces, before the command runs: the container's mounts on its union
//! view (a fresh `/proc`, a minimal `/dev`, `/sys` read-only, `/etc/hosts` and friends, the
//! `-v` binds, docker's masked and read-only paths), then `pivot_root` into it.
//!
//! Every path inside the container is resolved with `openat2(RESOLVE_IN_ROOT)` from a
//! descriptor of the container's root, so a symlink in the image (`/etc/x -> /../../host`)
//! resolves inside the container, and mounts go onto the resolved object through
//! `/proc/self/fd/N`: no host path outside the root is ever named.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag, openat, openat2};
use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sys::stat::{Mode, SFlag, makedev, mkdirat, mknodat};

use super::spec::{ContainerConfig, components};

/// A step's failure, with what was being done.
pub type StepResult<T> = Result<T, String>;

fn ctx<T>(r: nix::Result<T>, what: impl FnOnce() -> String) -> StepResult<T> {
    r.map_err(|e| format!("{}: {e}", what()))
}

/// Opens `path` (inside the container) as an `O_PATH` descriptor, resolving every symlink and
/// `..` as if the root were `/`.
pub fn resolve(root: BorrowedFd<'_>, path: &str) -> nix::Result<OwnedFd> {
    let rel = components(path).join("/");
    let rel = if rel.is_empty() { ".".to_string() } else { rel };
    openat2(
        root,
        rel.as_str(),
        OpenHow::new()
            .flags(OFlag::O_PATH | OFlag::O_CLOEXEC)
            .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
    )
}

/// Like [`resolve`], creating what is missing (directories on the way, and the last
/// component as a directory with `dir`, else an empty file), by a careful walk: one component
/// at a time from a descriptor, every symlink read and followed by hand with the container's
/// root as `/` (so `..` and absolute targets stay inside), never more than 40 of them.
pub fn ensure(root: BorrowedFd<'_>, path: &str, dir: bool) -> StepResult<OwnedFd> {
    let open_path = |at: BorrowedFd<'_>, name: &str, flags: OFlag| {
        openat(
            at,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | flags,
            Mode::empty(),
        )
    };
    let mut stack: Vec<OwnedFd> = vec![ctx(open_path(root, ".", OFlag::O_DIRECTORY), || {
        "open the container root".into()
    })?];
    let mut todo: Vec<String> = path.split('/').rev().map(str::to_string).collect();
    let mut hops = 0;
    while let Some(c) = todo.pop() {
        if c.is_empty() || c == "." {
            continue;
        }
        if c == ".." {
            if stack.len() > 1 {
                stack.pop();
            }
            continue;
        }
        let last = todo.iter().all(|t| t.is_empty() || t == ".");
        let cur = stack.last().expect("the root stays").as_fd();
        match nix::sys::stat::fstatat(cur, c.as_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFLNK => {
                hops += 1;
                if hops > 40 {
                    return Err(format!("{path}: too many levels of symbolic links"));
                }
                let target = ctx(nix::fcntl::readlinkat(cur, c.as_str()), || {
                    format!("readlink {c} in {path}")
                })?;
                let target = target.to_string_lossy().into_owned();
                if target.starts_with('/') {
                    stack.truncate(1);
                }
                todo.extend(target.split('/').rev().map(str::to_string));
            }
            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFDIR => {
                let fd = ctx(open_path(cur, &c, OFlag::O_DIRECTORY), || {
                    format!("open {c} in {path}")
                })?;
                stack.push(fd);
            }
            Ok(_) if last => {
                return ctx(open_path(cur, &c, OFlag::empty()), || {
                    format!("open {path} in the container")
                });
            }
            Ok(_) => return Err(format!("{path}: {c} is not a directory")),
            Err(Errno::ENOENT) => {
                // An O_PATH descriptor cannot be written through: open the directory.
                let parent = ctx(
                    openat(
                        cur,
                        ".",
                        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                        Mode::empty(),
                    ),
                    || format!("open the parent of {c} in {path}"),
                )?;
                let r = if last && !dir {
                    openat(
                        parent.as_fd(),
                        c.as_str(),
                        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                        Mode::from_bits_truncate(0o644),
                    )
                    .map(drop)
                } else {
                    mkdirat(parent.as_fd(), c.as_str(), Mode::from_bits_truncate(0o755))
                };
                match r {
                    Ok(()) | Err(Errno::EEXIST) => todo.push(c),
                    Err(e) => return Err(format!("create {c} of {path} in the container: {e}")),
                }
            }
            Err(e) => return Err(format!("stat {c} of {path} in the container: {e}")),
        }
    }
    // A directory (or the root) was the last thing reached.
    Ok(stack.pop().expect("the root stays"))
}

/// `/proc/self/fd/N`: the object a descriptor holds, as a mount source or target.
fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn mount_at(
    source: Option<&Path>,
    target: &OwnedFd,
    fstype: Option<&str>,
    flags: MsFlags,
    data: Option<&str>,
    what: &str,
) -> StepResult<()> {
    ctx(mount(source, &fd_path(target), fstype, flags, data), || {
        format!("mount {what}")
    })
}

/// Makes a bind mount (at `target`) read-only.
fn remount_ro(target: &OwnedFd, extra: MsFlags, what: &str) -> StepResult<()> {
    mount_at(
        None,
        target,
        None,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | extra,
        None,
        what,
    )
}

/// The host files the container sees as `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`.
pub struct EtcFiles {
    pub hosts: PathBuf,
    pub hostname: PathBuf,
    pub resolv_conf: PathBuf,
}

/// Paths docker masks (an empty file or directory is mounted over them).
const MASKED: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths docker makes read-only.
const READ_ONLY: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// Sets up the container's mounts on the union view at `rootfs` (in the container's new mount
/// namespace) and pivots into it. With a `console` request, a terminal is made in the
/// container's own devpts, shown as `/dev/console`, its master side sent over the request's
/// socket; its slave side is returned (for the command's streams).
pub fn setup(
    cfg: &ContainerConfig,
    rootfs: &Path,
    etc: &EtcFiles,
    console: Option<&ConsoleRequest<'_>>,
) -> StepResult<Option<OwnedFd>> {
    // Nothing done here may reach the host's mounts.
    ctx(
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_SLAVE | MsFlags::MS_REC,
            None::<&str>,
        ),
        || "make / a slave mount".into(),
    )?;
    let root = ctx(
        nix::fcntl::open(
            rootfs,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || format!("open the container root {}", rootfs.display()),
    )?;
    let root = root.as_fd();
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    let proc_dir = ensure(root, "/proc", true)?;
    mount_at(
        Some(Path::new("proc")),
        &proc_dir,
        Some("proc"),
        nosuid_nodev_noexec,
        None,
        "/proc",
    )?;

    let dev = ensure(root, "/dev", true)?;
    mount_at(
        Some(Path::new("tmpfs")),
        &dev,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        Some("mode=755,size=65536k"),
        "/dev",
    )?;
    let tty = setup_dev(root, console)?;

    let sys = ensure(root, "/sys", true)?;
    let ro = MsFlags::MS_RDONLY;
    if let Err(e) = mount_at(
        Some(Path::new("sysfs")),
        &sys,
        Some("sysfs"),
        nosuid_nodev_noexec | ro,
        None,
        "/sys",
    ) {
        // sysfs may refuse a new instance (another network namespace's): bind the host's.
        log::info!("{e}; binding the host's /sys read-only");
        // Not recursive: the host's mounts below /sys (cgroup, debugfs, fuse connections,
        // configfs) stay out of the container.
        mount_at(
            Some(Path::new("/sys")),
            &sys,
            None,
            MsFlags::MS_BIND,
            None,
            "/sys (bind)",
        )?;
        let sys = ensure(root, "/sys", true)?;
        remount_ro(&sys, nosuid_nodev_noexec, "/sys read-only")?;
    }

    for (src, dst) in [
        (&etc.hosts, "/etc/hosts"),
        (&etc.hostname, "/etc/hostname"),
        (&etc.resolv_conf, "/etc/resolv.conf"),
    ] {
        let t = ensure(root, dst, false)?;
        mount_at(Some(src), &t, None, MsFlags::MS_BIND, None, dst)?;
    }

    for v in &cfg.volumes {
        let is_dir = v.source.is_dir();
        let t = ensure(root, &v.target, is_dir)?;
        mount_at(
            Some(&v.source),
            &t,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            &format!("{} on {}", v.source.display(), v.target),
        )?;
        if v.read_only {
            let t = ensure(root, &v.target, is_dir)?;
            remount_ro(&t, MsFlags::empty(), &format!("{} read-only", v.target))?;
            // The mounts below the volume's top too (a bind remount reaches one mount only).
            ctx(crate::sys::make_tree_read_only(t.as_fd()), || {
                format!("{} read-only (recursively)", v.target)
            })?;
        }
    }

    for p in MASKED {
        let t = match resolve(root, p) {
            Ok(t) => t,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(format!("resolve {p}: {e}")),
        };
        let st = ctx(nix::sys::stat::fstat(t.as_fd()), || format!("stat {p}"))?;
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            mount_at(
                Some(Path::new("tmpfs")),
                &t,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None,
                &format!("{p} (masked)"),
            )?;
        } else {
            mount_at(
                Some(Path::new("/dev/null")),
                &t,
                None,
                MsFlags::MS_BIND,
                None,
                &format!("{p} (masked)"),
            )?;
        }
    }
    for p in READ_ONLY {
        let t = match resolve(root, p) {
            Ok(t) => t,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(format!("resolve {p}: {e}")),
        };
        mount_at(
            Some(&fd_path(&t)),
            &t,
            None,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None,
            &format!("{p} (bind)"),
        )?;
        let t = ctx(resolve(root, p), || format!("resolve {p}"))?;
        remount_ro(&t, MsFlags::MS_REC, &format!("{p} read-only"))?;
    }

    ctx(nix::unistd::sethostname(&cfg.hostname), || {
        format!("set the hostname {:?}", cfg.hostname)
    })?;

    pivot(rootfs)?;
    if cfg.read_only {
        ctx(
            mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            ),
            || "make the root read-only".into(),
        )?;
    }
    Ok(tty)
}

/// A terminal the container's process asks its parent to copy: the socket to send the master
/// side on, and the window size to give it.
pub struct ConsoleRequest<'a> {
    pub socket: &'a OwnedFd,
    pub size: Option<libc::winsize>,
}

/// Makes a new pseudo-terminal in the devpts at `pts` (the container's), sized as asked,
/// sends its master side over the request's socket and returns its slave side.
pub fn new_pty(pts: BorrowedFd<'_>, req: &ConsoleRequest<'_>) -> StepResult<OwnedFd> {
    let master = ctx(
        openat(
            pts,
            "ptmx",
            OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || "open /dev/pts/ptmx".into(),
    )?;
    let slave = ctx(crate::sys::pty_peer(master.as_fd()), || {
        "open the terminal's slave side".into()
    })?;
    if let Some(ws) = &req.size {
        let _ = crate::sys::set_window_size(master.as_fd(), ws);
    }
    ctx(crate::sys::send_fd(req.socket, master.as_fd()), || {
        "hand the terminal to the monitor".into()
    })?;
    Ok(slave)
}

/// The minimal `/dev` on the fresh tmpfs.
fn setup_dev(
    root: BorrowedFd<'_>,
    console: Option<&ConsoleRequest<'_>>,
) -> StepResult<Option<OwnedFd>> {
    let dev = ctx(resolve(root, "/dev"), || "resolve /dev".into())?;
    let dev = ctx(
        openat(
            dev.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || "open /dev".into(),
    )?;
    let rw = Mode::from_bits_truncate(0o666);
    for (name, major, minor) in [
        ("null", 1, 3),
        ("zero", 1, 5),
        ("full", 1, 7),
        ("random", 1, 8),
        ("urandom", 1, 9),
        ("tty", 5, 0),
    ] {
        ctx(
            mknodat(dev.as_fd(), name, SFlag::S_IFCHR, rw, makedev(major, minor)),
            || format!("mknod /dev/{name}"),
        )?;
        // The umask took bits away.
        ctx(
            nix::sys::stat::fchmodat(
                dev.as_fd(),
                name,
                rw,
                nix::sys::stat::FchmodatFlags::FollowSymlink,
            ),
            || format!("chmod /dev/{name}"),
        )?;
    }
    for (dir, mode) in [("pts", 0o755), ("shm", 0o1777)] {
        ctx(
            mkdirat(dev.as_fd(), dir, Mode::from_bits_truncate(mode)),
            || format!("mkdir /dev/{dir}"),
        )?;
    }
    let pts = ctx(resolve(root, "/dev/pts"), || "resolve /dev/pts".into())?;
    mount_at(
        Some(Path::new("devpts")),
        &pts,
        Some("devpts"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some("newinstance,ptmxmode=0666,mode=0620,gid=5"),
        "/dev/pts",
    )?;
    let shm = ctx(resolve(root, "/dev/shm"), || "resolve /dev/shm".into())?;
    mount_at(
        Some(Path::new("shm")),
        &shm,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
        "/dev/shm",
    )?;
    for (target, name) in [
        ("pts/ptmx", "ptmx"),
        ("/proc/self/fd", "fd"),
        ("/proc/self/fd/0", "stdin"),
        ("/proc/self/fd/1", "stdout"),
        ("/proc/self/fd/2", "stderr"),
        ("/proc/kcore", "core"),
    ] {
        ctx(nix::unistd::symlinkat(target, dev.as_fd(), name), || {
            format!("symlink /dev/{name}")
        })?;
    }
    let Some(req) = console else {
        return Ok(None);
    };
    let pts = ctx(resolve(root, "/dev/pts"), || "resolve /dev/pts".into())?;
    let tty = new_pty(pts.as_fd(), req)?;
    let c = ctx(
        openat(
            dev.as_fd(),
            "console",
            OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ),
        || "create /dev/console".into(),
    )?;
    drop(c);
    let c = ctx(resolve(root, "/dev/console"), || {
        "resolve /dev/console".into()
    })?;
    // The terminal by its name in this mount namespace (a descriptor's mount belongs to the
    // namespace it was opened in, which a bind refuses).
    let name = ctx(nix::fcntl::readlink(&fd_path(&tty)), || {
        "name the terminal".into()
    })?;
    mount_at(
        Some(Path::new(&name)),
        &c,
        None,
        MsFlags::MS_BIND,
        None,
        "/dev/console",
    )?;
    Ok(Some(tty))
}

/// `pivot_root` into `rootfs` (youki's sequence: the old root is stacked under the new one,
/// made a slave and detached); chroot only where pivot_root cannot work (an initramfs root).
fn pivot(rootfs: &Path) -> StepResult<()> {
    let new_root = ctx(
        nix::fcntl::open(
            rootfs,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ),
        || format!("open {}", rootfs.display()),
    )?;
    ctx(nix::unistd::fchdir(new_root.as_fd()), || {
        "chdir into the root".into()
    })?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            ctx(
                mount(
                    None::<&str>,
                    ".",
                    None::<&str>,
                    MsFlags::MS_SLAVE | MsFlags::MS_REC,
                    None::<&str>,
                ),
                || "make the old root a slave".into(),
            )?;
            ctx(umount2(".", MntFlags::MNT_DETACH), || {
                "detach the old root".into()
            })?;
        }
        Err(e) => {
            log::warn!(
                "pivot_root into {} failed ({e}): falling back to chroot (the host root stays \
                 mounted underneath)",
                rootfs.display()
            );
            ctx(
                mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>),
                || "move the root onto /".into(),
            )?;
            ctx(nix::unistd::chroot("."), || "chroot".into())?;
        }
    }
    ctx(nix::unistd::chdir("/"), || "chdir /".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The path an `O_PATH` descriptor names (through /proc).
    fn path_of(fd: &OwnedFd) -> PathBuf {
        std::fs::read_link(fd_path(fd)).unwrap()
    }

    #[test]
    fn ensure_keeps_symlinks_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        // Absolute and relative escapes, and a loop.
        std::os::unix::fs::symlink(
            format!("/../../..{}", outside.display()),
            root.join("etc/x"),
        )
        .unwrap();
        std::os::unix::fs::symlink("../../../../outside", root.join("etc/y")).unwrap();
        std::os::unix::fs::symlink("/etc/loop", root.join("etc/loop")).unwrap();
        let rootfd = nix::fcntl::open(
            &root,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .unwrap();
        let fd = ensure(rootfd.as_fd(), "/etc/x", true).unwrap();
        let inside = root.join(outside.strip_prefix("/").unwrap());
        assert_eq!(path_of(&fd), inside);
        assert!(inside.is_dir());
        let fd = ensure(rootfd.as_fd(), "/etc/y/file", false).unwrap();
        assert_eq!(path_of(&fd), root.join("outside/file"));
        assert!(ensure(rootfd.as_fd(), "/etc/loop/z", true).is_err());
        // Nothing was made outside the root.
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        // `..` stops at the root.
        let fd = ensure(rootfd.as_fd(), "/../../proc", true).unwrap();
        assert_eq!(path_of(&fd), root.join("proc"));
        let fd = resolve(rootfd.as_fd(), "/etc/x").unwrap();
        assert_eq!(path_of(&fd), inside);
    }
}
